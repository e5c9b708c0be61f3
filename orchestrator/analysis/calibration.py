"""Calibration of the analysis by simulation: type-I error of fixed-effect tests, interval coverage.

The scenarios are the designs the orchestrator's studies produce. The test suite runs them
at a small size (``tests/test_analysis_calibration.py``), ``bench/bench_calibration.py`` at
the size of issue #10 (1000 datasets per type-I scenario, 400 for coverage), and the figures
are recorded in bench/RESULTS.md.

Example:
    >>> from orchestrator.analysis.calibration import type_one_error
    >>> rate = type_one_error("a", sims=5, seed=0)["rate"]
    >>> 0.0 <= rate <= 1.0
    True
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import pandas as pd

__all__ = ["SCENARIOS", "simulate", "type_one_error", "coverage", "COVERAGE_TRUTH", "COVERAGE_SCENARIOS"]

#: Type-I scenarios of issue #10; the fixed factor ``A`` has no effect in each.
SCENARIOS = {
    "a": "two crossed seed streams (5 init x 4 data seeds), one trial per seed pair and level of A (3 levels); "
         "seed_init:A variance 1, residual 0.09",
    "b": "one seed stream (8 seeds), one trial per seed x cell of A (3 levels) x B (2 levels, effect 1); "
         "seed:A variance 0.5, seed:B 0.3, residual 0.2",
    "c": "scenario a with 10% of the trials lost at random (unbalanced: Satterthwaite df)",
}


def simulate(scenario: str, rng: np.random.Generator) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One dataset of a type-I scenario, and the ``analyze`` arguments for it."""
    if scenario in ("a", "c"):
        si, sd, a = 5, 4, 3
        u_i, u_d = rng.normal(0, 1.0, si), rng.normal(0, math.sqrt(0.5), sd)
        w = rng.normal(0, 1.0, (si, a))
        rows = [(lv, i, j, u_i[i] + u_d[j] + w[i, lv] + rng.normal(0, 0.3)) for lv in range(a) for i in range(si)
                for j in range(sd)]
        df = pd.DataFrame(rows, columns=["A", "seed_init", "seed_data", "loss"])
        if scenario == "c":
            df = df.sample(frac=0.9, random_state=int(rng.integers(2**31))).reset_index(drop=True)
        return df, {"fixed": ["A"], "random": ["seed_init", "seed_data"]}
    if scenario == "b":
        s, a, b = 8, 3, 2
        u = rng.normal(0, 1.0, s)
        wa, wb = rng.normal(0, math.sqrt(0.5), (s, a)), rng.normal(0, math.sqrt(0.3), (s, b))
        rows = [(i, j, k, 1.0 * j + u[k] + wa[k, i] + wb[k, j] + rng.normal(0, math.sqrt(0.2)))
                for i in range(a) for j in range(b) for k in range(s)]
        return pd.DataFrame(rows, columns=["A", "B", "seed", "loss"]), {"fixed": ["A", "B"], "random": ["seed"]}
    raise ValueError(f"unknown scenario {scenario!r}; expected one of {', '.join(SCENARIOS)}")


def type_one_error(scenario: str, sims: int, seed: int = 0, alpha: float = 0.05,
                   seed_interactions: str = "main", progress: Callable[[dict[str, Any]], None] | None = None,
                   every: int = 50) -> dict[str, Any]:
    """Fraction of ``sims`` datasets in which the test of the null factor ``A`` rejects at ``alpha``.

    ``progress`` (if given) receives the running figures every ``every`` datasets.
    """
    from orchestrator.analysis.core import analyze

    rng = np.random.default_rng(seed)
    rejections, used, shares = 0, 0, []
    for _ in range(sims):
        df, kw = simulate(scenario, rng)
        res = analyze(df, "loss", bootstrap=0, seed_interactions=seed_interactions, **kw)
        row = next(r for r in res.anova if r["term"] == "A")
        shares.append(next(s["share"] for s in res.shares if s["source"] == "A"))
        if row["p"] is None:
            continue
        used += 1
        rejections += row["p"] < alpha
        if progress is not None and used % every == 0:
            progress(_rate(scenario, used, rejections, shares))
    return {**_rate(scenario, used, rejections, shares), "sims": sims}


def _rate(scenario: str, used: int, rejections: int, shares: list[float]) -> dict[str, Any]:
    rate = rejections / used if used else float("nan")
    return {"scenario": scenario, "tested": used, "rejections": rejections, "rate": rate,
            "se": math.sqrt(rate * (1 - rate) / used) if used else float("nan"),
            "mean_share_A": float(np.mean(shares)) if shares else float("nan")}


#: Coverage scenarios: A (3 levels, effects -0.5, 0, 0.5) x seed x 2 replicates, seed variance 1,
#: seed:A 0.3, residual 0.5; ``seeds`` levels of the seed, ``lost`` a fraction of trials lost at random.
COVERAGE_TRUTH = {"seed": 1.0, "seed:A": 0.3, "Residual": 0.5, "A": 1 / 6}
COVERAGE_SCENARIOS: dict[str, dict[str, Any]] = {
    "20 seeds": {"seeds": 20},
    "12 seeds": {"seeds": 12},
    "8 seeds": {"seeds": 8},
    "5 seeds": {"seeds": 5},
    "20 seeds, 10% lost": {"seeds": 20, "lost": 0.1},
    "12 seeds, 10% lost": {"seeds": 12, "lost": 0.1},
    "8 seeds, 10% lost": {"seeds": 8, "lost": 0.1},
    "20 seeds, small seed:A": {"seeds": 20, "truth": {"seed:A": 0.05}},
}


def coverage(sims: int, seed: int = 0, seeds: int = 20, lost: float = 0.0, truth: dict[str, float] | None = None,
             withheld: bool = False,
             progress: Callable[[dict[str, Any]], None] | None = None, every: int = 50) -> dict[str, Any]:
    """Fraction of 95% intervals (variance components and shares) that contain the truth.

    Args:
        sims: simulated datasets.
        seed: seed of the simulation.
        seeds: levels of the random factor ``seed``.
        lost: fraction of the trials dropped at random (0: balanced).
        truth: variances that replace those of ``COVERAGE_TRUTH`` (e.g. ``{"seed:A": 0.05}``).
        withheld: also measure the intervals ``analyze`` withholds (seed x factor terms,
            few levels), to see whether they could be shown.
        progress: receives the running figures every ``every`` datasets.
        every: how often ``progress`` is called.

    Returns:
        ``coverage`` (interval -> fraction), ``counted`` (interval -> datasets where it was
        formed), ``sims``, ``seeds``, ``lost``.
    """
    from orchestrator.analysis.core import analyze, showing_every_interval

    rng = np.random.default_rng(seed)
    truth = {**COVERAGE_TRUTH, **(truth or {})}
    total = sum(truth.values())
    true_share = {k: v / total for k, v in truth.items()}
    hits: dict[str, int] = {}
    counted: dict[str, int] = {}
    effects = np.array([-0.5, 0.0, 0.5])
    for done in range(1, sims + 1):
        u = rng.normal(0, math.sqrt(truth["seed"]), seeds)
        w = rng.normal(0, math.sqrt(truth["seed:A"]), (seeds, 3))
        rows = [(a, s, effects[a] + u[s] + w[s, a] + rng.normal(0, math.sqrt(truth["Residual"])))
                for a in range(3) for s in range(seeds) for _ in range(2)]
        df = pd.DataFrame(rows, columns=["A", "seed", "loss"])
        if lost:
            df = df.sample(frac=1 - lost, random_state=int(rng.integers(2**31))).reset_index(drop=True)
        with showing_every_interval(withheld):
            res = analyze(df, "loss", fixed=["A"], random=["seed"], seed=int(rng.integers(2**31)))
        pairs = [(f"variance {v['component']}", v["ci"], truth[v["component"]]) for v in res.variance_components]
        pairs += [(f"share {s['source']}", s["ci"], true_share[s["source"]]) for s in res.shares]
        for key, ci, true in pairs:
            if ci is not None:
                counted[key] = counted.get(key, 0) + 1
                hits[key] = hits.get(key, 0) + (ci[0] <= true <= ci[1])
        if progress is not None and done % every == 0:
            progress({"done": done, "coverage": {k: hits[k] / counted[k] for k in counted}})
    return {"sims": sims, "seeds": seeds, "lost": lost, "truth": truth,
            "coverage": {k: hits[k] / counted[k] for k in counted}, "counted": counted}
