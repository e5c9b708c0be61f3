"""Failures and divergence, residual diagnostics, rank-based tests and spread by level."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from orchestrator.analysis._engine import Engine
from orchestrator.analysis._prepare import Prepared, _levels, group, level_label, term_tuple

if TYPE_CHECKING:
    from orchestrator.analysis.core import AnalysisResult

__all__ = ["failure_analysis", "add_diagnostics", "add_spread", "exact_test"]

_ALPHA_WARN = 0.01
_MC_TABLES = 9999


def _f(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _sd(x: np.ndarray) -> float:
    """Sample SD without overflow or underflow for values near 1e300 or 1e-300."""
    big = float(np.max(np.abs(x))) if len(x) else 0.0
    return float(np.std(x / big, ddof=1) * big) if big > 0 else 0.0


def exact_test(table: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Exact test of equal event rates across the rows of a k x 2 table (events, non-events).

    2 x 2: Fisher's exact test. Larger tables: the Fisher-Freeman-Halton conditional test,
    its p-value estimated from 9999 random tables with the observed margins (seeded).
    """
    table = np.asarray(table, dtype=np.int64)
    table = table[table.sum(axis=1) > 0]
    if len(table) < 2:
        return {"method": None, "p": None, "reason": "fewer than two groups with trials"}
    events = table[:, 0].sum()
    if events == 0 or events == table.sum():
        return {"method": None, "p": 1.0, "reason": "every group has the same rate (all or none)"}
    if table.shape[0] == 2:
        return {"method": "Fisher exact", "p": _f(stats.fisher_exact(table).pvalue)}
    # Random tables with the observed margins: the events fall among the rows as a
    # multivariate hypergeometric draw; a table is as extreme when it is no more probable.
    from scipy.special import gammaln

    sizes = table.sum(axis=1)
    sims = np.random.default_rng(seed).multivariate_hypergeometric(sizes, int(events), size=_MC_TABLES)

    def logprob(x: np.ndarray) -> np.ndarray:
        return np.sum(gammaln(sizes + 1) - gammaln(x + 1) - gammaln(sizes - x + 1), axis=-1)

    observed = logprob(table[:, 0])
    p = (1 + np.sum(logprob(sims) <= observed + 1e-7)) / (_MC_TABLES + 1)
    return {"method": f"Fisher-Freeman-Halton (Monte Carlo, {_MC_TABLES} tables)", "p": _f(p)}


def _rates(frame: pd.DataFrame, by: list[str], seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    g = frame.groupby(by, sort=False, observed=True)
    agg = g.agg(n=("_failed", "size"), failed=("_failed", "sum"), diverged=("_diverged", "sum"),
                missing=("_missing", "sum")).reset_index()
    rows = []
    for _, r in agg.iterrows():
        n = int(r["n"])
        row = {f: level_label(r[f]) for f in by}
        row.update({"n": n, "failed": int(r["failed"]), "diverged": int(r["diverged"]), "missing": int(r["missing"]),
                    "failure_rate": r["failed"] / n, "divergence_rate": r["diverged"] / n,
                    "missing_rate": r["missing"] / n})
        rows.append(row)
    tests = {}
    for kind in ("failed", "diverged"):
        ev = agg[kind].to_numpy(np.int64)
        tests[kind] = exact_test(np.column_stack([ev, agg["n"].to_numpy(np.int64) - ev]), seed=seed)
    return rows, tests


def failure_analysis(prep: Prepared, seed: int = 0) -> dict[str, Any]:
    """Failure (state != FINISHED), divergence and missing-response rates per level of each fixed factor and per cell.

    A missing response (no value or NaN) is its own outcome: counted and reported, never
    tested as divergence.
    """
    ev = prep.everything
    out: dict[str, Any] = {
        "n_total": len(ev), "failed": int(ev["_failed"].sum()), "diverged": int(ev["_diverged"].sum()),
        "missing": int(ev["_missing"].sum()),
        "policy": "failed, diverged and missing-response trials are excluded from the response analysis and counted "
                  "here; failure and divergence rates are tested, a missing response is not divergence",
        "by_factor": {}, "by_cell": [], "cell_tests": {},
    }
    if not len(ev) or (out["failed"] == 0 and out["diverged"] == 0 and out["missing"] == 0):
        return out
    factors = [f for f in prep.declared_fixed if ev[f].nunique() > 1]
    for f in factors:
        rows, tests = _rates(ev, [f], seed)
        out["by_factor"][f] = {"levels": rows, "tests": tests}
    if len(factors) > 1:
        out["by_cell"], out["cell_tests"] = _rates(ev, factors, seed)
    return out


def _rank_anova(prep: Prepared, ss_type: int) -> list[dict[str, Any]]:
    """Rank-transform ANOVA (Conover & Iman): the same model on the ranks of the response."""
    ranked = Prepared(**{**prep.__dict__})
    ranked.data = prep.data.copy()
    ranked.data["_y"] = stats.rankdata(prep.data["_y"].to_numpy())
    rterms = [term_tuple(r) for r in prep.random]
    factors = list(dict.fromkeys(prep.fixed + [p for r in rterms for p in r]))
    gcodes, nlev, counts, sums, sumsq, _, _, _ = group(ranked, factors)
    eng = Engine(gcodes, nlev, prep.terms, rterms, counts, sums, sumsq)
    model = [t for t in eng.terms if t.kind == "intercept" or len(t.kept)]
    ss, rss = eng.sums_of_squares(model, ss_type)
    df_res = int(round(eng.n)) - len(eng.columns(model))
    if df_res <= 0:
        return []
    out = []
    for t in model[1:]:
        F = float(ss[t.name][0]) / len(t.kept) / (float(rss[0]) / df_res)
        out.append({"term": t.name, "test": "rank-transform ANOVA", "statistic": _f(F),
                    "p": _f(stats.f.sf(F, len(t.kept), df_res))})
    return out


def add_diagnostics(result: "AnalysisResult", prep: Prepared, residuals: np.ndarray, df_res: int) -> None:
    """Normality and equal-variance checks on residuals, with plain-language warnings."""
    diag: dict[str, Any] = {}
    if df_res <= 0 or len(residuals) < 8:
        diag["note"] = "too few residual degrees of freedom for diagnostics"
        result.diagnostics = diag
        return
    r = residuals - residuals.mean()
    skew, kurt = float(stats.skew(r)), float(stats.kurtosis(r))
    if len(r) <= 5000:
        stat, p = stats.shapiro(r)
        diag["normality"] = {"test": "Shapiro-Wilk", "statistic": _f(stat), "p": _f(p), "skew": _f(skew),
                             "excess_kurtosis": _f(kurt)}
    else:
        stat, p = stats.normaltest(r)
        diag["normality"] = {"test": "D'Agostino-Pearson", "statistic": _f(stat), "p": _f(p), "skew": _f(skew),
                             "excess_kurtosis": _f(kurt)}
    # With thousands of trials any deviation is "significant": also require a visible one.
    material = len(r) <= 5000 or abs(skew) > 0.5 or abs(kurt) > 1.0
    violated = False
    if p < _ALPHA_WARN and material:
        violated = True
        result.warnings.append(
            f"residuals do not look normal ({diag['normality']['test']} p={p:.2g}, skew {skew:.2f}, excess kurtosis "
            f"{kurt:.2f}): F tests and intervals may be off. "
            + ("Consider --log for a loss, or " if result.transform is None else "")
            + "see the rank-based tests.")
    if prep.fixed:
        cells = pd.Series(residuals).groupby([prep.data[f].to_numpy() for f in prep.fixed], sort=False)
        # Brown-Forsythe is degenerate with two values per group (|x - median| is equal within it)
        groups = [g.to_numpy() for _, g in cells if len(g) >= 3]
        if len(groups) >= 2:
            stat, p = stats.levene(*groups, center="median")
            diag["equal_variance"] = {"test": "Brown-Forsythe across cells", "statistic": _f(stat), "p": _f(p),
                                      "cells": len(groups)}
            sds = [float(np.std(g, ddof=1)) for g in groups]
            ratio = max(sds) / min(sds) if min(sds) > 0 else float("inf")
            diag["equal_variance"]["sd_ratio_max_min"] = _f(ratio)
            if p < _ALPHA_WARN and (len(r) <= 5000 or ratio > 1.5):
                violated = True
                result.warnings.append(
                    f"the spread differs between cells (Brown-Forsythe p={p:.2g}, largest/smallest SD {ratio:.2g}): "
                    "equal-variance F tests can mislead; see spread by level and the rank-based tests.")
    diag["assumptions_violated"] = violated
    result.diagnostics = diag
    ranks: list[dict[str, Any]] = []
    for f in prep.fixed:
        groups = [g.to_numpy() for _, g in prep.data.groupby(f, sort=False, observed=True)["_y"]]
        if len(groups) >= 2:
            h, p = stats.kruskal(*groups)
            ranks.append({"term": f, "test": "Kruskal-Wallis", "statistic": _f(h), "p": _f(p)})
    if result.ss_type:
        ranks += _rank_anova(prep, result.ss_type)
    result.rank_based = ranks


def _components_within(prep: Prepared, factor: str, level: Any) -> dict[str, float | None]:
    """REML variance components among the trials at one level of ``factor``."""
    sub = Prepared(**{**prep.__dict__})
    sub.data = prep.data.loc[prep.data[factor] == level]
    mains = [r for r in prep.random if ":" not in r]
    sub.levels = {f: _levels(sub.data[f]) for f in prep.fixed + mains}
    sub.fixed = [f for f in prep.fixed if f != factor and len(sub.levels[f]) > 1]
    sub.random = [f for f in mains if 1 < len(sub.levels[f]) < len(sub.data)]
    sub.terms = [t for t in prep.terms if set(t) <= set(sub.fixed)]
    if len(sub.data) < 3 or float(np.ptp(sub.data["_y"].to_numpy())) == 0:
        return {}
    gcodes, nlev, counts, sums, sumsq, _, _, scale = group(sub, sub.fixed + sub.random)
    eng = Engine(gcodes, nlev, sub.terms, [(r,) for r in sub.random], counts, sums, sumsq)
    rterms = [t for t in eng.terms if t.kind == "random" and len(t.kept)]
    fixed_terms = [t for t in eng.terms if t.kind != "random"]
    if int(eng.n) - len(eng.columns(fixed_terms + rterms)) <= 0:
        return {}
    comp, sigma2, _, _ = eng.mixed_parts(rterms).fit()
    out: dict[str, float | None] = {t.name: _f(v * scale**2) for t, v in zip(rterms, comp)}
    out["Residual"] = _f(sigma2 * scale**2)
    return out


def add_spread(result: "AnalysisResult", prep: Prepared, residuals: np.ndarray, spread_by: list[str],
               seed: int = 0) -> None:
    """Spread of the response within each level of each fixed factor, and a test of equal spread.

    The spread is that of the residuals from the fixed-effects fit, so it includes the
    random factors (seed streams); for the factors in ``spread_by`` the random components
    are also estimated within each level by REML.
    """
    out = []
    res = pd.Series(residuals, index=prep.data.index)
    # residuals at rounding level (an exact fit, e.g. no residual df) carry no spread to test
    y = prep.data["_y"].to_numpy(float)
    tol = 1e-9 * max(float(np.max(np.abs(y))) if len(y) else 0.0, 1e-300)
    for f in prep.fixed:
        levels = []
        groups = []
        for lv in prep.levels[f]:
            g = res[prep.data[f] == lv].to_numpy()
            groups.append(g)
            row: dict[str, Any] = {"level": level_label(lv), "n": len(g),
                                   "residual_sd": _f(_sd(g)) if len(g) > 1 else None}
            if f in spread_by and prep.random:
                row["components"] = _components_within(prep, f, lv)
            levels.append(row)
        entry: dict[str, Any] = {"factor": f, "levels": levels}
        # Brown-Forsythe is degenerate on groups of 2 (|x - median| is equal within them): 3 or more only
        usable = [g for g in groups if len(g) >= 3]
        if len(usable) >= 2 and any(np.ptp(g) > tol for g in usable):
            bf = stats.levene(*usable, center="median")
            lev = stats.levene(*usable, center="mean")
            entry["brown_forsythe"] = {"statistic": _f(bf.statistic), "p": _f(bf.pvalue)}
            entry["levene"] = {"statistic": _f(lev.statistic), "p": _f(lev.pvalue)}
            sds = [r["residual_sd"] for r in levels if r["residual_sd"] is not None]
            entry["groups_tested"] = len(usable)
            if bf.pvalue < 0.05 and len(sds) == len(levels) and min(sds) > 0:
                lo = min(levels, key=lambda r: r["residual_sd"] or np.inf)
                hi = max(levels, key=lambda r: r["residual_sd"] or -np.inf)
                result.notes.append(
                    f'the spread of {prep.response} depends on {f}: residual SD {lo["residual_sd"]:.3g} at '
                    f'{f}={lo["level"]} versus {hi["residual_sd"]:.3g} at {f}={hi["level"]} (Brown-Forsythe '
                    f"p={bf.pvalue:.2g}). A factor can change the spread without changing the mean.")
        out.append(entry)
    result.spread = out
