"""``analyze``: attribute the variance of a response to fixed factors, random factors and noise."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import product
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from orchestrator.analysis import _inference as inf
from orchestrator.analysis import _intervals as _iv
from orchestrator.analysis._engine import Engine, Term, _independent, basis
from orchestrator.analysis._prepare import Prepared, SeedInteractions, group, level_label, prepare, term_tuple
from orchestrator.analysis.errors import AnalysisError
from orchestrator.analysis.extras import add_diagnostics, add_spread, failure_analysis
from orchestrator.errors import did_you_mean

if TYPE_CHECKING:
    from orchestrator.analysis.power import ReplicatePlan

__all__ = ["AnalysisResult", "analyze", "SCHEMA_VERSION", "SHARES_DEFINITION"]

SCHEMA_VERSION = 1
CI_LEVEL = 0.95
SHARES_DEFINITION = (
    "share = component / total, total = sum of all components = the variance of one trial in a cell drawn at random "
    "from the design, with new levels of every random factor. A fixed term's component is the variance of its "
    "contribution over the design's cells, b' S b with S the mean of x x' over the cells, estimated without bias as "
    "b_hat' S b_hat - tr(S cov(b_hat)) from the mixed-model fit and floored at 0 (the subtracted trace is the noise "
    "in b_hat, including every random term it depends on, so no variance is counted twice); a random term's "
    "component is its REML variance; the residual component is the REML residual variance. Intervals: basic "
    "generalized confidence intervals (each variance replaced by its chi-square pivot), see docs/analysis.md."
)
#: The fill rate of (random level x design cell) above which a random factor counts as crossed with the design.
CROSSED_FILL = 0.75
_MAX_LISTED = 12


def _f(x: Any) -> float | None:
    """A JSON-safe float: None for NaN/inf/None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


CI_MIN_LEVELS = 12
"""Fewest sampled levels of a random term for its intervals to be shown (see ``_interval_shown``).
Measured (bench/RESULTS.md, "Analysis calibration", 400 datasets per scenario): with 12 and 20
seeds, balanced or with 10% of trials lost, every variance and share interval of the seed and
seed x factor terms covered 0.94-0.98; with 8 seeds the seed:A share covered 0.99 and with 5
seeds the seed's 0.98-0.995 (too wide), so those are withheld."""
SHARE_DRAWS = 20_000
"""Monte Carlo draws of the pivots behind the share intervals (the 2.5% quantile's SE is ~0.1% of its value)."""
INTERVALS_SHOWN = (f"the residual variance, the residual's share (with random terms), and every random term (main "
                   f"or seed x factor) estimated above 0 whose random factor has at least {CI_MIN_LEVELS} levels: "
                   "its variance and its share")


_SHOW_EVERY_INTERVAL = False


def _interval_shown(levels: int) -> bool:
    """Whether a random term's intervals (variance and share) are shown: only where coverage was measured.

    ``levels`` is the number of sampled levels behind the term: the levels of its random
    factor (for ``seed:A``, the seeds), the fewest of them for a term of several random factors.
    """
    return _SHOW_EVERY_INTERVAL or levels >= CI_MIN_LEVELS


def _sampled_levels(t: Term, prep: Prepared, levels: Mapping[str, int]) -> int:
    """The levels of the term's random factor(s): its factors that are not fixed (the fewest)."""
    sampled = [f for f in t.factors if f not in prep.fixed] or list(t.factors)
    return min(int(levels[f]) for f in sampled)


@contextmanager
def showing_every_interval(on: bool = True) -> Iterator[None]:
    """Within this block ``analyze`` shows the intervals it would withhold (for calibration only)."""
    global _SHOW_EVERY_INTERVAL
    before, _SHOW_EVERY_INTERVAL = _SHOW_EVERY_INTERVAL, on
    try:
        yield
    finally:
        _SHOW_EVERY_INTERVAL = before


def _scaled(ci: list[float] | None, s2: float) -> list[float] | None:
    """An interval in the response's units; None when an end is not a finite number."""
    if ci is None:
        return None
    lo, hi = _f(ci[0] * s2), _f(ci[1] * s2)
    return None if lo is None or hi is None else [lo, hi]


@dataclass
class AnalysisResult:
    """What ``analyze`` found. ``to_dict()`` is the documented JSON; ``summary()`` the terminal text.

    Every list is a list of plain dicts (the JSON rows), so a result can be inspected,
    compared or serialised without this class.
    """

    response: str
    transform: str | None
    n: int
    n_total: int
    ss_type: int | None
    ss_type_reason: str
    balanced: bool
    missing_cells: list[dict[str, str]]
    factors: dict[str, dict[str, Any]]
    anova: list[dict[str, Any]]
    variance_components: list[dict[str, Any]]
    vc_method: str
    shares: list[dict[str, Any]]
    spread: list[dict[str, Any]]
    failures: dict[str, Any]
    diagnostics: dict[str, Any]
    rank_based: list[dict[str, Any]]
    aliases: dict[str, list[str]] | None
    intervals: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    power: dict[str, Any] | None = None
    prepared: Prepared | None = field(default=None, repr=False, compare=False)
    model: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document described in docs/analysis.md (schema_version 1)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "response": self.response,
            "transform": self.transform,
            "n": self.n,
            "n_total": self.n_total,
            "ss_type": self.ss_type,
            "ss_type_reason": self.ss_type_reason,
            "model": self.model,
            "balanced": self.balanced,
            "missing_cells": self.missing_cells,
            "factors": self.factors,
            "anova": self.anova,
            "variance_components": self.variance_components,
            "vc_method": self.vc_method,
            "shares": self.shares,
            "shares_definition": SHARES_DEFINITION,
            "spread": self.spread,
            "failures": self.failures,
            "diagnostics": self.diagnostics,
            "rank_based": self.rank_based,
            "aliases": self.aliases,
            "power": self.power,
            "intervals": self.intervals,
            "ci_level": CI_LEVEL,
            "notes": self.notes,
            "warnings": self.warnings,
        }

    def summary(self, width: int = 110) -> str:
        """The terminal summary as text (rich tables, no colour codes)."""
        from orchestrator.analysis.render import summary_text

        return summary_text(self, width=width)

    def plan_replicates(self, effect_size: float, power: float = 0.8, alpha: float = 0.05) -> "ReplicatePlan":
        """Replicates per cell needed to detect ``effect_size`` (see ``plan_replicates``)."""
        from orchestrator.analysis.power import plan_from_result

        return plan_from_result(self, effect_size=effect_size, power=power, alpha=alpha)


# --------------------------------------------------------------------------------------- helpers
def _design_cells(prep: Prepared) -> tuple[bool, str, list[dict[str, str]], pd.Series]:
    """Whether fixed cells are balanced, why, and which cells are missing (named)."""
    if not prep.fixed or not prep.n:
        return True, "no fixed factors", [], pd.Series(dtype=int)
    counts = prep.data.groupby(prep.fixed, sort=False, observed=True).size()
    if prep.aliases is not None:
        design = prep.everything.groupby(prep.fixed, sort=False, observed=True).size().index
        expected = [k if isinstance(k, tuple) else (k,) for k in design]
    else:
        expected = list(product(*[prep.levels[f] for f in prep.fixed]))
    present = {k if isinstance(k, tuple) else (k,) for k in counts.index}
    missing = [dict(zip(prep.fixed, map(level_label, cell))) for cell in expected if tuple(cell) not in present]
    lo, hi = int(counts.min()), int(counts.max())
    grid = " x ".join(prep.fixed)
    if not missing and lo == hi:
        return True, (f"balanced: every cell of {grid} has {lo} trial(s), so Type II sums of squares are used (here they "
                      "equal Type III: both test equal unweighted level means)"), [], counts
    why = []
    if missing:
        shown = "; ".join(", ".join(f"{k}={v}" for k, v in c.items()) for c in missing[:_MAX_LISTED])
        more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
        why.append(f"{len(missing)} missing cell(s): {shown}{more}")
    if lo != hi:
        why.append(f"cells have {lo} to {hi} trial(s)")
    return False, ("unbalanced (" + "; ".join(why) + "), so Type III sums of squares with sum-to-zero contrasts "
                   "are used: they test the same hypotheses as on the balanced design (equal unweighted level means), "
                   "where Type II would weight the levels by their counts"), missing, counts


def _empty_result(prep: Prepared, notes: list[str], failures: dict[str, Any], reason: str) -> AnalysisResult:
    return AnalysisResult(
        response=prep.response, transform=prep.transform, n=prep.n, n_total=len(prep.everything), ss_type=None,
        ss_type_reason=reason, balanced=False, missing_cells=[], factors=_factor_info(prep), anova=[],
        variance_components=[], vc_method="none", shares=[], spread=[], failures=failures, diagnostics={},
        rank_based=[], aliases=prep.aliases, intervals={"level": CI_LEVEL, "method": "none", "draws": 0}, notes=notes, warnings=[], prepared=prep)


def _factor_info(prep: Prepared) -> dict[str, dict[str, Any]]:
    out = {}
    for f in prep.fixed + prep.random + prep.dropped_factors:
        kind = "random" if f in prep.random else ("fixed" if f in prep.fixed else "dropped")
        out[f] = {"kind": kind, "levels": [level_label(v) for v in prep.levels.get(f, [])]}
    return out


def _candidate_interactions(prep: Prepared, mode: SeedInteractions) -> tuple[list[str], list[str]]:
    """Random-factor x fixed-factor interactions to try, and notes on those the design cannot hold.

    For a random factor R, the fixed factors that vary within its levels (in most of them)
    are its "within" factors; R:A is a candidate for each within factor A when R is crossed
    with the grid of within factors: at least ``CROSSED_FILL`` of the (R level x within
    cell) combinations occur. A factor constant within R's levels (R nested in it) has no
    interaction with R; an incomplete block (each block holds a fraction of the cells, as
    npk) is not crossed, and its block x treatment interaction stays in the residual, as in
    the classical randomised-block analysis.
    """
    if mode is SeedInteractions.NONE or not prep.fixed or not prep.n:
        return [], []
    given = {frozenset(term_tuple(r)) for r in prep.random}
    mains = [r for r in prep.random if ":" not in r]
    out, notes = [], []
    for r in mains:
        per_level = prep.data.groupby(r, observed=True)[prep.fixed].nunique()
        within = [f for f in prep.fixed if float((per_level[f] >= 2).mean()) >= 0.5]
        if not within:
            continue
        cells = prep.data.groupby(within, observed=True).ngroups
        combos = prep.data.groupby([r] + within, observed=True).ngroups
        fill = combos / (len(prep.levels[r]) * cells)
        if fill < CROSSED_FILL:
            notes.append(f'random factor "{r}" is not crossed with the cells of {" x ".join(within)} (only '
                         f"{100 * fill:.0f}% of its level x cell combinations occur), so no {r} x factor interaction "
                         "is estimated; any such interaction is part of the residual.")
            continue
        out.extend(f"{r}:{f}" for f in within if frozenset((r, f)) not in given)
    return out, notes


def _build(prep: Prepared, random_names: list[str]) -> tuple[Engine, dict[str, Any]]:
    factors = list(dict.fromkeys(prep.fixed + [p for r in random_names for p in term_tuple(r)]))
    gcodes, nlev, counts, sums, sumsq, row_group, centre, scale = group(prep, factors)
    eng = Engine(gcodes, nlev, prep.terms, [term_tuple(r) for r in random_names], counts, sums, sumsq)
    return eng, {"codes": gcodes, "levels": nlev, "counts": counts, "row_group": row_group, "centre": centre,
                 "scale": scale}


def _design_codes(prep: Prepared, eng: Engine) -> dict[str, np.ndarray] | None:
    """Codes of a fractional design's points (None: the full grid of levels is the design)."""
    if prep.aliases is None or not prep.fixed:
        return None
    pts = prep.everything[prep.fixed].drop_duplicates()
    pts = pts[np.all([pts[f].isin(prep.levels[f]) for f in prep.fixed], axis=0)]
    return {f: pd.Categorical(pts[f], categories=prep.levels[f]).codes.astype(np.int64) for f in prep.fixed}


# --------------------------------------------------------------------------------------- analyze
def analyze(
    df: pd.DataFrame,
    response: str,
    fixed: str | Sequence[str] = (),
    random: str | Sequence[str] = (),
    interactions: int = 2,
    log: bool = False,
    diverged_column: str | None = "diverged",
    aliases: Mapping[str, Sequence[str]] | None = None,
    bootstrap: int = 200,
    seed: int = 0,
    spread_by: str | Sequence[str] | None = None,
    seed_interactions: SeedInteractions | str | None = None,
) -> AnalysisResult:
    """Attribute the variance of ``response`` to each factor, interaction, random term and the residual.

    Args:
        df: one row per trial. Optional columns ``state`` (rows other than "FINISHED" are
            failures) and ``diverged_column`` (non-zero: diverged) feed the failure analysis;
            failed, diverged and missing-response trials are excluded from the response
            analysis, never silently.
        response: the numeric column to explain, e.g. ``"final_loss"``.
        fixed: fixed factors; categorical even when their values are numbers.
        random: random factors (seed streams, batches) and random interactions
            (``"seed_init:optimizer"``, ``"batch:cask"``): variance components by REML.
        interactions: highest interaction order among fixed factors (1 = main effects).
        log: analyse ``log(response)`` (losses); the response must be positive.
        diverged_column: the 0/1 divergence column, or None.
        aliases: for fractional designs, estimable effect -> its aliases
            (``{"A": ["B:D"], ...}``); only those effects are analysed.
        bootstrap: 0 skips the 95% intervals; any other value computes them. The name is kept
            from the parametric bootstrap earlier versions ran: the intervals are now computed
            from the fit (chi-square pivots, Satterthwaite, delta method; docs/analysis.md,
            "Intervals"), with no refits, so the value no longer sets a number of replicates.
        seed: seed of the Monte Carlo draws behind the generalized pivots (reproducible).
        spread_by: fixed factor(s) within whose levels variance components are estimated.
        seed_interactions: ``"main"`` (default): add each random factor x fixed factor
            interaction the design can estimate; ``"none"``: only the random terms given.

    Returns:
        An ``AnalysisResult``; ``model["random_terms"]`` lists the random terms fitted.

    Raises:
        AnalysisError: a column is unknown, the response is not numeric, a factor is both
            fixed and random, no factor has two levels, or an option is not valid.

    Example:
        >>> import pandas as pd
        >>> from orchestrator.analysis import analyze
        >>> df = pd.DataFrame({"dtype": ["fp32", "bf16"] * 4, "loss": [1.0, 1.5, 1.1, 1.4, 0.9, 1.6, 1.0, 1.5]})
        >>> res = analyze(df, "loss", fixed=["dtype"], bootstrap=0)
        >>> res.anova[0]["term"], res.ss_type, res.anova[0]["den_df"], res.anova[0]["error_term"]
        ('dtype', 2, 6.0, 'Residual')
    """
    mode = SeedInteractions.parse(seed_interactions)
    prep = prepare(df, response, fixed, random, interactions, log, diverged_column, aliases)
    notes = list(prep.notes)
    spread_factors = [spread_by] if isinstance(spread_by, str) else list(spread_by or [])
    for f in spread_factors:
        if f not in prep.fixed:
            raise AnalysisError(f'spread_by must name a fixed factor with 2+ levels, found "{f}". '
                                f"{did_you_mean(f, prep.fixed)}")
    failures = failure_analysis(prep, seed=seed)
    if prep.n == 0:
        notes.append(f"all {len(prep.everything)} trials failed, diverged or have no {prep.response}: there is no "
                     "response to analyse. See failures for the rates per level and per cell.")
        return _empty_result(prep, notes, failures, "no analysed trials")
    yv = prep.data["_y"].to_numpy(float)
    if prep.n < 3 or float(np.max(yv)) == float(np.min(yv)):
        if prep.n >= 3:
            notes.append(f"{prep.response} is constant ({yv[0]:g}) across all {prep.n} analysed trials: there is no "
                         "variance to attribute, so no ANOVA, components or shares are reported.")
        else:
            notes.append(f"only {prep.n} analysed trial(s): too few to estimate any variance.")
        return _empty_result(prep, notes, failures, "no variance to analyse")

    balanced, reason, missing, _ = _design_cells(prep)
    ss_type = 2 if balanced else 3
    if not balanced and any(len(t) > 1 for t in prep.terms):
        marginal = [":".join(t) for t in prep.terms if any(set(t) < set(s) for s in prep.terms)]
        if marginal:
            reason += (f"; of the tests, only those of {', '.join(marginal)} (terms contained in an interaction) would "
                       "differ under Type II")

    # Random terms: the ones given, then the random x fixed interactions the design can estimate.
    candidates, cand_notes = _candidate_interactions(prep, mode)
    notes += cand_notes
    random_names = list(prep.random) + candidates
    eng, g = _build(prep, random_names)
    if candidates:
        fixed_and_given = [t for t in eng.terms if t.kind != "random" or t.name in prep.random]
        base_rank = len(eng.columns(fixed_and_given))
        accepted, rank = [], base_rank
        for name in candidates:
            t = eng.term(name)
            gain = len(t.kept)
            if gain == 0:
                notes.append(f"{name} is not estimable (confounded with other terms) and is left out of the model.")
                continue
            if eng.n - (rank + gain) < 1:
                notes.append(f"{name} cannot be told apart from the residual (one trial per {name.replace(':', ' x ')} "
                             "combination and nothing else varying), so it is part of the residual.")
                continue
            accepted.append(name)
            rank += gain
        if accepted != candidates:
            random_names = list(prep.random) + accepted
            eng, g = _build(prep, random_names)
        candidates = accepted
    with np.errstate(over="ignore", under="ignore"):
        s2 = float(np.float64(g["scale"]) ** 2)  # inf or 0 for responses near 1e300 or 1e-300: variances say so
    n = eng.n

    # Estimability: fixed terms in order (lower order first), then random terms.
    model: list[Term] = [eng.terms[0]]
    estimable_fixed: list[Term] = []
    for t in eng.terms[1:]:
        if t.kind != "fixed":
            continue
        if len(t.kept) == 0:
            earlier = [s for s in eng.terms if s.kind != "random" and eng.terms.index(s) < eng.terms.index(t)]
            with_ = eng.aliased_with(t, earlier)
            notes.append(f"{t.name} is not estimable: it is aliased with {', '.join(with_) or 'earlier terms'} "
                         "and is left out of the model.")
            continue
        if len(t.kept) < t.nominal_df:
            notes.append(f"{t.name} is only partly estimable ({len(t.kept)} of {t.nominal_df} df), because of missing "
                         "cells; its test uses the estimable part.")
        model.append(t)
        estimable_fixed.append(t)
    reml_terms: list[Term] = []
    for t in eng.terms:
        if t.kind != "random":
            continue
        if len(t.kept) == 0:
            notes.append(f'random term "{t.name}" is confounded with the fixed effects (no level varies within '
                         "them): its variance cannot be estimated and it is left out.")
            continue
        reml_terms.append(t)
    # A fixed term confounded with random terms is estimated from differences between their
    # levels (npk: N:P:K with blocks): its sum of squares is the sequential one, before them.
    between: dict[str, str] = {}
    for t in estimable_fixed:
        # random terms that contain t (seed:A for A) vary within t's levels by construction: not confounding
        others = [r for r in reml_terms if not set(t.factors) <= set(r.factors)]
        if not others:
            continue
        earlier = [s for s in estimable_fixed if s is not t and not set(t.factors) <= set(s.factors)]
        base = basis(eng.G, np.concatenate([r.columns for r in others] + [s.kept for s in earlier]))
        if len(_independent(eng.G, t.kept, base)) < len(t.kept):
            between[t.name] = ", ".join(r.name for r in others)
    model += reml_terms
    fixed_cols = eng.columns([eng.terms[0]] + estimable_fixed)
    model_cols = eng.columns(model)
    df_res = int(round(n)) - len(model_cols)
    random_info = [{"term": t.name, "origin": "seed_interactions=main" if t.name in candidates else "given",
                    "columns": len(t.columns)} for t in reml_terms]
    model_info = {"fixed": [t.name for t in estimable_fixed], "random_terms": random_info,
                  "seed_interactions": mode.value}

    # Sums of squares and the ANOVA table.
    ss, rss = eng.sums_of_squares(model, ss_type)
    if between:
        ss_fixed, _ = eng.sums_of_squares([t for t in model if t.kind != "random"], ss_type)
        ss.update({k: ss_fixed[k] for k in between})
    rss = float(rss[0])
    ss_total = eng.yy - eng.c[0] ** 2 / n
    ms_res = rss / df_res if df_res > 0 else float("nan")
    if df_res <= 0:
        notes.append("no residual degrees of freedom (one trial per cell with every interaction in the model): F tests, "
                     "p-values and the residual variance cannot be estimated. Add replicates or lower --interactions.")

    # Variance components (REML from moment starting values).
    mixed = eng.mixed_parts(reml_terms)
    mom: dict[str, float] = {}
    if df_res > 0:
        start = None
        if reml_terms:
            mom, s2_mom = eng.moments(reml_terms, fixed_cols)
            start = np.sqrt(np.maximum([mom[t.name] for t in reml_terms], 0.0) / max(s2_mom, 1e-300))
        try:
            comp, sigma2, beta, theta = mixed.fit(start=start)
        except np.linalg.LinAlgError:
            raise AnalysisError(f"the mixed model cannot be fitted: {prep.response} is fitted exactly by the terms "
                                f"{', '.join(t.name for t in model[1:])} (no residual variance left). Expected noise "
                                "between replicates; drop a random term (--seed-interactions none) or lower "
                                "--interactions.") from None
    else:
        comp, sigma2, beta, theta = np.zeros(len(reml_terms)), float("nan"), None, np.zeros(len(reml_terms))
    if reml_terms:
        vc_method = ("REML (profiled deviance and its analytic gradient from cross-products, as lme4); method of "
                     "moments (Henderson III) as a cross-check")
    else:
        vc_method = "residual mean square (no random terms)"

    # Tests of each term against its error term.
    exact = inf.fully_balanced(g["counts"], g["codes"], g["levels"])
    tests: dict[str, dict[str, Any]] = {}
    parts = None
    if df_res > 0:
        dfs = {t.name: len(t.kept) for t in model[1:]}
        ms = {t.name: float(ss[t.name][0]) / dfs[t.name] for t in model[1:]}
        if not reml_terms:
            for t in estimable_fixed:
                tests[t.name] = {"F": ms[t.name] / ms_res, "den_df": float(df_res), "error_term": "Residual",
                                 "test": "F against the residual"}
        elif exact:
            tests = inf.ems_tests(model[1:], reml_terms, ms, dfs, ms_res, df_res, g["levels"], n)
        else:
            parts = mixed.satterthwaite_parts(theta, sigma2)
            tests = inf.satterthwaite_tests(estimable_fixed, mixed, beta, parts)
            for t in reml_terms:
                tests[t.name] = {"F": None, "den_df": None, "error_term": None,
                                 "test": "none (unbalanced: judge a random term by its variance and interval)"}
    test_method = ("F against the residual" if not reml_terms else
                   "expected mean squares (balanced design, as aov with Error strata)" if exact else
                   "Wald F with Satterthwaite denominator df (REML, as lmerTest)")
    model_info["tests"] = test_method

    # Shares: fixed contributions from the mixed-model coefficients.
    V = None
    if df_res > 0:
        V = parts["V"] if parts is not None else sigma2 * mixed.evaluate(theta, *mixed.data(None, None))["Txx"]
    design_codes = _design_codes(prep, eng)
    weights = {t.name: inf.term_weights(t, eng, design_codes) for t in estimable_fixed}
    pos = {int(j): i for i, j in enumerate(mixed.x)}

    def fixed_parts(b: np.ndarray, Vb: np.ndarray) -> dict[str, float]:
        out = {}
        for t in estimable_fixed:
            ix = [pos[int(j)] for j in t.kept]
            out[t.name] = inf.fixed_variance(b[ix], Vb[np.ix_(ix, ix)], weights[t.name])
        return out

    # Intervals: computed from the fit (no refits): chi-square pivots, Satterthwaite, delta method.
    ivs: _iv.Intervals | None = None
    if bootstrap and df_res > 0:
        if reml_terms and parts is None and not exact:
            parts = mixed.satterthwaite_parts(theta, sigma2)
        fp0 = fixed_parts(beta, V)
        fsd = {}
        for t in estimable_fixed:
            ix = [pos[int(j)] for j in t.kept]
            fsd[t.name] = inf.fixed_variance_se(beta[ix], V[np.ix_(ix, ix)], weights[t.name])
        mss = None
        if reml_terms and exact:
            ems = np.array([inf.ems_row(t, reml_terms, g["levels"], n) for t in reml_terms]
                           + [np.eye(len(reml_terms) + 1)[-1]])
            mss = _iv.MeanSquares(ems, np.array([ms[t.name] for t in reml_terms] + [ms_res]),
                                  np.array([dfs[t.name] for t in reml_terms] + [df_res], float), exact=True)
        elif reml_terms:
            found = inf.mean_squares(eng, model, reml_terms, ms_res, df_res)
            mss = _iv.MeanSquares(*found, exact=False) if found is not None else None
        ivs = _iv.intervals([t.name for t in reml_terms], comp, sigma2, parts["A"] if parts is not None else None,
                            np.flatnonzero(np.asarray(theta) > 0), rss, df_res, fp0, fsd, SHARE_DRAWS,
                            np.random.default_rng(seed), mean_squares=mss)

    anova_rows: list[dict[str, Any]] = []
    for t in model[1:]:
        sst = float(ss[t.name][0])
        dft = len(t.kept)
        tst = tests.get(t.name, {})
        F = tst.get("F")
        den = tst.get("den_df")
        if t.name in between and (exact or not reml_terms):
            F, den = None, None
        row = {
            "term": t.name, "kind": t.kind, "df": dft, "sum_sq": _f(sst * s2), "mean_sq": _f(sst / dft * s2),
            "F": _f(F), "p": _f(inf.p_value(F, dft, den)), "den_df": _f(den),
            "error_term": tst.get("error_term") if F is not None else None,
            "eta_sq": _f(sst / ss_total), "partial_eta_sq": _f(sst / (sst + rss)) if df_res > 0 else None,
            "omega_sq": _f((sst - dft * ms_res) / (ss_total + ms_res)) if df_res > 0 else None,
            "eta_sq_ci": None, "partial_eta_sq_ci": None, "omega_sq_ci": None,
        }
        if prep.aliases is not None and t.kind == "fixed":
            row["aliases"] = prep.aliases.get(t.name, [])
        anova_rows.append(row)
    anova_rows.append({"term": "Residual", "kind": "residual", "df": df_res, "sum_sq": _f(rss * s2),
                       "mean_sq": _f(ms_res * s2), "F": None, "p": None, "den_df": None, "error_term": None,
                       "eta_sq": _f(rss / ss_total), "partial_eta_sq": None, "omega_sq": None, "eta_sq_ci": None,
                       "partial_eta_sq_ci": None, "omega_sq_ci": None})
    for name in between:
        row = next(r for r in anova_rows if r["term"] == name)
        if row["F"] is None:
            notes.append(f"{name} is confounded with random term(s) {between[name]}: it is estimated from differences "
                         "between their levels, so its F test against the residual is not valid and is not reported.")
        else:
            notes.append(f"{name} is confounded with random term(s) {between[name]}: it is tested against them "
                         f"({row['den_df']:.3g} denominator df), not against the residual.")

    sampled = {t.name: _sampled_levels(t, prep, g["levels"]) for t in reml_terms}
    # the fallback (Satterthwaite / delta method) was not measured in the designs where it runs
    measured = ivs is not None and ivs.method.startswith("generalized pivots")
    shown = {t.name: measured and _interval_shown(sampled[t.name]) for t in reml_terms}
    withheld = [f"{t.name} ({sampled[t.name]} sampled levels, fewer than {CI_MIN_LEVELS})" if measured else
                f"{t.name} (no mean square of its own: the fallback interval's coverage was not measured)"
                for t in reml_terms if not shown[t.name] and comp[reml_terms.index(t)] > 0]
    if ivs and (withheld or estimable_fixed):
        notes.append(
            "95% intervals are shown only where their coverage was measured to hold (docs/analysis.md, "
            f"'Intervals'): {INTERVALS_SHOWN}. Withheld: "
            + ", ".join(["shares of fixed terms"] * bool(estimable_fixed)
                        + ["the residual's share (delta method, coverage not measured)"] * (not measured)
                        + withheld) + ".")
    vc_rows: list[dict[str, Any]] = []
    for j, t in enumerate(reml_terms):
        v = float(comp[j])
        boundary = bool(df_res > 0 and v <= 1e-8 * max(sigma2, 1e-300))
        if boundary:
            notes.append(f'the variance of random term "{t.name}" is estimated at zero (a boundary estimate): the '
                         "data show no spread between its levels beyond the other terms; no interval is formed for it.")
        vc_rows.append({"component": t.name, "variance": _f(v * s2), "sd": _f(math.sqrt(max(v, 0)) * g["scale"]),
                        "ci": _scaled(ivs.components[t.name], s2) if ivs and shown[t.name] else None,
                        "boundary": boundary, "levels": len(t.columns), "method": "REML",
                        "mom_variance": _f(mom[t.name] * s2) if t.name in mom else None,
                        "origin": random_info[j]["origin"]})
    vc_rows.append({"component": "Residual", "variance": _f(sigma2 * s2),
                    "sd": _f(math.sqrt(sigma2) * g["scale"]) if df_res > 0 else None,
                    "ci": _scaled(ivs.residual, s2) if ivs else None,
                    "boundary": False, "levels": None, "method": "REML" if reml_terms else "residual mean square",
                    "mom_variance": None, "origin": "residual"})
    if df_res > 0 and sigma2 > 0 and not (0.0 < sigma2 * s2 < math.inf):
        notes.append("the variances of this response are outside the range of floating-point numbers (the response "
                     "is near 1e-300 or 1e300), so they are reported as null; shares, tests and standard deviations "
                     "are computed on the standardised response and are exact.")

    share_rows: list[dict[str, Any]] = []
    if df_res > 0:
        fp = fixed_parts(beta, V)
        shares_src: list[tuple[str, str, float]] = [(t.name, "fixed", fp[t.name]) for t in estimable_fixed]
        shares_src += [(t.name, "random", float(comp[j])) for j, t in enumerate(reml_terms)]
        shares_src.append(("Residual", "residual", sigma2))
        total_var = sum(p[2] for p in shares_src)
        share_shown = {n for n, ok in shown.items() if ok} | ({"Residual"} if measured else set())
        for name, kind, v in shares_src:
            share_rows.append({"source": name, "kind": kind, "variance": _f(v * s2), "share": _f(v / total_var),
                               "ci": ivs.shares.get(name) if ivs and name in share_shown else None})

    result = AnalysisResult(
        response=prep.response, transform=prep.transform, n=prep.n, n_total=len(prep.everything), ss_type=ss_type,
        ss_type_reason=reason, balanced=balanced, missing_cells=missing, factors=_factor_info(prep), anova=anova_rows,
        variance_components=vc_rows, vc_method=vc_method, shares=share_rows, spread=[], failures=failures,
        diagnostics={}, rank_based=[], aliases=prep.aliases,
        intervals={"level": CI_LEVEL, "method": ivs.method if ivs else "none", "shown": INTERVALS_SHOWN,
                   "draws": SHARE_DRAWS if ivs else 0, "seed": seed},
        notes=notes, warnings=[], prepared=prep, model=model_info)

    z = (prep.data["_y"].to_numpy(float) - g["centre"]) / g["scale"]
    residuals = z - eng.fitted(model_cols)[g["row_group"]]
    add_diagnostics(result, prep, residuals, df_res)  # scale-free tests on standardised residuals
    # Spread is judged on residuals from the fixed effects alone, so it includes the seed streams.
    fixed_resid = z - eng.fitted(fixed_cols)[g["row_group"]]
    add_spread(result, prep, fixed_resid * g["scale"], spread_factors, seed=seed)
    return result

