"""``analyze``: attribute the variance of a response to fixed factors, random factors and noise."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import product
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from orchestrator.analysis._engine import Engine, Term, _independent
from orchestrator.analysis._prepare import Prepared, level_label, prepare

if TYPE_CHECKING:
    from orchestrator.analysis.power import ReplicatePlan

__all__ = ["AnalysisResult", "analyze", "SCHEMA_VERSION", "SHARES_DEFINITION"]

SCHEMA_VERSION = 1
CI_LEVEL = 0.95
SHARES_DEFINITION = (
    "share = component / total, total = sum of all components. A fixed term's component is the variance of its "
    "fitted contribution, estimated without bias as (SS - df * MS_residual) / n and floored at 0 (the omega-squared "
    "numerator); a random factor's component is its REML variance; the residual component is the REML residual "
    "variance. Intervals are percentiles of a parametric bootstrap that refits the same model."
)
_MAX_LISTED = 12


def _f(x: Any) -> float | None:
    """A JSON-safe float: None for NaN/inf/None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _usable(samples: np.ndarray | None) -> np.ndarray | None:
    """The finite bootstrap replicates, or None when fewer than 10 are left to form an interval."""
    if samples is None:
        return None
    s = np.asarray(samples, float)
    s = s[np.isfinite(s)]
    return s if len(s) >= 10 else None


def _ci(samples: np.ndarray | None) -> list[float] | None:
    s = _usable(samples)
    if s is None:
        return None
    lo, hi = np.percentile(s, [50 * (1 - CI_LEVEL), 100 - 50 * (1 - CI_LEVEL)])
    return [float(lo), float(hi)]


def _ci_pivot(estimate: float, samples: np.ndarray | None, scale: str) -> list[float] | None:
    """Basic (pivotal) bootstrap interval on the log or logit scale, else the percentile interval.

    For a variance, ``estimate / truth`` is close to pivotal on the log scale (exactly so for
    the residual variance), where the percentile interval of a skewed estimator covers
    poorly. A share is treated the same way on the logit scale. When the estimate sits at a
    boundary (0) or too many replicates do, the percentile interval is used, starting at 0.
    """
    s = _usable(samples)
    if s is None:
        return None
    a = 50 * (1 - CI_LEVEL)
    lo, hi = np.percentile(s, [a, 100 - a])
    upper_ok = scale == "log" or hi < 1
    if estimate <= 0 or lo <= 0 or not upper_ok or (scale == "logit" and estimate >= 1):
        return [float(max(lo, 0.0)) if estimate > 0 else 0.0, float(hi)]
    if scale == "log":
        f, inv = np.log, np.exp
    else:
        f, inv = (lambda x: np.log(x / (1 - x))), (lambda x: 1 / (1 + np.exp(-x)))
    return [float(inv(2 * f(estimate) - f(hi))), float(inv(2 * f(estimate) - f(lo)))]


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
    bootstrap: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    power: dict[str, Any] | None = None
    prepared: Prepared | None = field(default=None, repr=False, compare=False)

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
            "bootstrap": self.bootstrap,
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
        return True, f"balanced: every cell of {grid} has {lo} trial(s), so Type II sums of squares are used", [], counts
    why = []
    if missing:
        shown = "; ".join(", ".join(f"{k}={v}" for k, v in c.items()) for c in missing[:_MAX_LISTED])
        more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
        why.append(f"{len(missing)} missing cell(s): {shown}{more}")
    if lo != hi:
        why.append(f"cells have {lo} to {hi} trial(s)")
    return False, ("unbalanced (" + "; ".join(why) + "), so Type III sums of squares with sum-to-zero contrasts "
                   "are used"), missing, counts


def _group(prep: Prepared, factors: list[str]) -> tuple[dict[str, np.ndarray], dict[str, int], np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, float]:
    """Aggregate trials sharing every level: codes per group, counts, sums, sums of squares."""
    y = prep.data["_y"].to_numpy(float)
    centre = float(y.mean())
    scale = float(y.std()) or 1.0
    z = (y - centre) / scale
    codes = {}
    for f in factors:
        lv = prep.levels[f]
        codes[f] = pd.Categorical(prep.data[f], categories=lv).codes.astype(np.int64)
    frame = pd.DataFrame({f: codes[f] for f in factors})
    frame["_z"] = z
    frame["_z2"] = z * z
    g = frame.groupby(factors, sort=False, observed=True)
    agg = g.agg(n=("_z", "size"), s=("_z", "sum"), ss=("_z2", "sum"))
    idx = agg.index.to_frame(index=False) if len(factors) > 1 else pd.DataFrame({factors[0]: agg.index})
    gcodes = {f: idx[f].to_numpy(np.int64) for f in factors}
    row_group = g.ngroup().to_numpy()
    return (gcodes, {f: len(prep.levels[f]) for f in factors}, agg["n"].to_numpy(float), agg["s"].to_numpy(float),
            agg["ss"].to_numpy(float), row_group, centre, scale)


def _empty_result(prep: Prepared, notes: list[str], failures: dict[str, Any], reason: str) -> AnalysisResult:
    return AnalysisResult(
        response=prep.response, transform=prep.transform, n=prep.n, n_total=len(prep.everything), ss_type=None,
        ss_type_reason=reason, balanced=False, missing_cells=[], factors=_factor_info(prep), anova=[],
        variance_components=[], vc_method="none", shares=[], spread=[], failures=failures, diagnostics={},
        rank_based=[], aliases=prep.aliases, bootstrap={"replicates": 0}, notes=notes, warnings=[], prepared=prep)


def _factor_info(prep: Prepared) -> dict[str, dict[str, Any]]:
    out = {}
    for f in prep.fixed + prep.random + prep.dropped_factors:
        kind = "random" if f in prep.random else ("fixed" if f in prep.fixed else "dropped")
        out[f] = {"kind": kind, "levels": [level_label(v) for v in prep.levels.get(f, [])]}
    return out


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
) -> AnalysisResult:
    """Attribute the variance of ``response`` to each factor, interaction, random factor and the residual.

    Args:
        df: one row per trial. Optional columns ``state`` (rows other than "FINISHED" are
            failures) and ``diverged_column`` (non-zero: diverged) feed the failure analysis;
            failed and diverged trials are excluded from the response analysis, never silently.
        response: the numeric column to explain, e.g. ``"final_loss"``.
        fixed: fixed factors; categorical even when their values are numbers.
        random: random factors (seed streams, batches): variance components by REML.
        interactions: highest interaction order among fixed factors (1 = main effects).
        log: analyse ``log(response)`` (losses); the response must be positive.
        diverged_column: the 0/1 divergence column, or None.
        aliases: for fractional designs, estimable effect -> its aliases
            (``{"A": ["B:D"], ...}``); only those effects are analysed.
        bootstrap: parametric-bootstrap replicates for the intervals (0: no intervals).
        seed: seed of the bootstrap (results are reproducible).
        spread_by: fixed factor(s) within whose levels variance components are estimated.

    Returns:
        An ``AnalysisResult``.

    Raises:
        AnalysisError: a column is unknown, the response is not numeric, a factor is both
            fixed and random, or no factor has two levels.

    Example:
        >>> import pandas as pd
        >>> from orchestrator.analysis import analyze
        >>> df = pd.DataFrame({"dtype": ["fp32", "bf16"] * 4, "loss": [1.0, 1.5, 1.1, 1.4, 0.9, 1.6, 1.0, 1.5]})
        >>> res = analyze(df, "loss", fixed=["dtype"], bootstrap=0)
        >>> res.anova[0]["term"], res.ss_type
        ('dtype', 2)
    """
    from orchestrator.analysis import extras

    prep = prepare(df, response, fixed, random, interactions, log, diverged_column, aliases)
    notes = list(prep.notes)
    spread_factors = [spread_by] if isinstance(spread_by, str) else list(spread_by or [])
    for f in spread_factors:
        if f not in prep.fixed:
            from orchestrator.analysis.errors import AnalysisError
            from orchestrator.errors import did_you_mean

            raise AnalysisError(f'spread_by must name a fixed factor with 2+ levels, found "{f}". '
                                f"{did_you_mean(f, prep.fixed)}")
    failures = extras.failure_analysis(prep, seed=seed)
    if prep.n == 0:
        notes.append(f"all {len(prep.everything)} trials failed or diverged: there is no response to analyse. "
                     "See failures for the rates per level and per cell.")
        return _empty_result(prep, notes, failures, "no analysed trials")
    if prep.n < 3 or float(np.ptp(prep.data["_y"].to_numpy())) == 0.0:
        value = prep.data["_y"].iloc[0]
        if prep.n >= 3:
            notes.append(f"{prep.response} is constant ({value:g}) across all {prep.n} analysed trials: there is no "
                         "variance to attribute, so no ANOVA, components or shares are reported.")
        else:
            notes.append(f"only {prep.n} analysed trial(s): too few to estimate any variance.")
        return _empty_result(prep, notes, failures, "no variance to analyse")

    balanced, reason, missing, _ = _design_cells(prep)
    ss_type = 2 if balanced else 3
    factors = prep.fixed + prep.random
    gcodes, nlev, counts, sums, sumsq, row_group, centre, scale = _group(prep, factors)
    eng = Engine(gcodes, nlev, prep.terms, prep.random, counts, sums, sumsq)
    s2 = scale * scale
    n = eng.n

    # Estimability: fixed terms in order (lower order first), then random factors.
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
            notes.append(f'random factor "{t.name}" is confounded with the fixed effects (no level varies within '
                         "them): its variance cannot be estimated and it is left out.")
            continue
        reml_terms.append(t)
    # A fixed term confounded with random factors is estimated only from differences between
    # their levels; the residual is the wrong error term for it (npk: N:P:K with blocks).
    between: dict[str, str] = {}
    if reml_terms:
        rcols = np.concatenate([t.columns for t in reml_terms])
        for t in estimable_fixed:
            others = np.concatenate([rcols] + [s.columns for s in estimable_fixed if s is not t])
            gain = len(_independent(eng.G, np.concatenate([others, t.columns]))) - len(_independent(eng.G, others))
            if gain < len(t.kept):
                names = [r.name for r in reml_terms]
                between[t.name] = ", ".join(names)
                notes.append(f"{t.name} is confounded with random factor(s) {', '.join(names)}: it is estimated from "
                             "differences between their levels, so its F test against the residual is not valid and "
                             "is not reported.")
    crossed = reml_terms
    model += reml_terms
    fixed_cols = eng.columns([eng.terms[0]] + estimable_fixed)
    model_cols = eng.columns(model)
    df_res = int(round(n)) - len(model_cols)

    # Sums of squares and the ANOVA table.
    ss, rss = eng.sums_of_squares(model, ss_type)
    if between:  # sequential, as R's Error() strata: the confounded term before the random factors
        ss_fixed, _ = eng.sums_of_squares([t for t in model if t.kind != "random"], ss_type)
        ss.update({k: ss_fixed[k] for k in between})
    rss = float(rss[0])
    ss_total = eng.yy - eng.c[0] ** 2 / n
    ms_res = rss / df_res if df_res > 0 else float("nan")
    if df_res <= 0:
        notes.append("no residual degrees of freedom (one trial per cell with every interaction in the model): F tests, "
                     "p-values and the residual variance cannot be estimated. Add replicates or lower --interactions.")

    # Variance components.
    mixed = eng.mixed_parts(reml_terms)
    if df_res > 0:
        comp, sigma2, beta, theta = mixed.fit()
    else:
        comp, sigma2, beta, theta = np.zeros(len(reml_terms)), float("nan"), None, np.zeros(len(reml_terms))
    mom: dict[str, float] = {}
    if reml_terms and df_res > 0:
        mom, _ = eng.moments(reml_terms, fixed_cols)
    if reml_terms:
        vc_method = "REML (profiled deviance from cross-products, as lme4)"
        if balanced:
            vc_method += "; method of moments (expected mean squares, Henderson III) as a cross-check"
    else:
        vc_method = "residual mean square (no random factors)"

    # Bootstrap.
    rng = np.random.default_rng(seed)
    boot = _bootstrap(eng, model, ss_type, mixed, reml_terms, beta, comp, sigma2, theta, estimable_fixed + crossed,
                      df_res, bootstrap, rng, between) if bootstrap and df_res > 0 else None

    anova_rows: list[dict[str, Any]] = []
    for t in model[1:]:
        sst = float(ss[t.name][0])
        dft = len(t.kept)
        F = (sst / dft) / ms_res if df_res > 0 else float("nan")
        row = {
            "term": t.name, "kind": t.kind, "df": dft, "sum_sq": _f(sst * s2), "mean_sq": _f(sst / dft * s2),
            "F": _f(F) if t.name not in between else None,
            "p": _f(stats.f.sf(F, dft, df_res)) if df_res > 0 and t.name not in between else None,
            "eta_sq": _f(sst / ss_total), "partial_eta_sq": _f(sst / (sst + rss)) if df_res > 0 else None,
            "omega_sq": _f((sst - dft * ms_res) / (ss_total + ms_res)) if df_res > 0 else None,
            "eta_sq_ci": _ci(boot["eta"][t.name]) if boot else None,
            "partial_eta_sq_ci": _ci(boot["peta"][t.name]) if boot else None,
            "omega_sq_ci": _ci(boot["omega"][t.name]) if boot else None,
        }
        if prep.aliases is not None and t.kind == "fixed":
            row["aliases"] = prep.aliases.get(t.name, [])
        anova_rows.append(row)
    anova_rows.append({"term": "Residual", "kind": "residual", "df": df_res, "sum_sq": _f(rss * s2),
                       "mean_sq": _f(ms_res * s2), "F": None, "p": None, "eta_sq": _f(rss / ss_total),
                       "partial_eta_sq": None, "omega_sq": None, "eta_sq_ci": None, "partial_eta_sq_ci": None,
                       "omega_sq_ci": None})

    vc_rows: list[dict[str, Any]] = []
    total_var = 0.0
    for j, t in enumerate(reml_terms):
        v = float(comp[j])
        boundary = bool(df_res > 0 and v <= 1e-8 * max(sigma2, 1e-300))
        if boundary:
            notes.append(f'the variance of random factor "{t.name}" is estimated at zero (a boundary estimate): the '
                         "data show no spread between its levels beyond the residual; its interval starts at 0.")
        vc_rows.append({"component": t.name, "variance": _f(v * s2), "sd": _f(math.sqrt(max(v, 0)) * scale),
                        "ci": _ci_pivot(v * s2, boot["comp"][t.name] * s2, "log") if boot else None,
                        "boundary": boundary,
                        "levels": nlev[t.name], "method": "REML",
                        "mom_variance": _f(mom[t.name] * s2) if t.name in mom else None})
    vc_rows.append({"component": "Residual", "variance": _f(sigma2 * s2), "sd": _f(math.sqrt(sigma2) * scale)
                    if df_res > 0 else None, "ci": _ci_pivot(sigma2 * s2, boot["sigma2"] * s2, "log") if boot else None,
                    "boundary": False,
                    "levels": None, "method": "REML" if reml_terms else "residual mean square", "mom_variance": None})

    share_rows: list[dict[str, Any]] = []
    if df_res > 0:
        parts: list[tuple[str, str, float]] = []
        for t in estimable_fixed:
            parts.append((t.name, "fixed", max(0.0, (float(ss[t.name][0]) - len(t.kept) * ms_res) / n)))
        for j, t in enumerate(reml_terms):
            parts.append((t.name, "random", float(comp[j])))
        parts.append(("Residual", "residual", sigma2))
        total_var = sum(p[2] for p in parts)
        for name, kind, v in parts:
            share_rows.append({"source": name, "kind": kind, "variance": _f(v * s2), "share": _f(v / total_var),
                               "ci": _ci_pivot(v / total_var, boot["share"][name], "logit") if boot else None})

    result = AnalysisResult(
        response=prep.response, transform=prep.transform, n=prep.n, n_total=len(prep.everything), ss_type=ss_type,
        ss_type_reason=reason, balanced=balanced, missing_cells=missing, factors=_factor_info(prep), anova=anova_rows,
        variance_components=vc_rows, vc_method=vc_method, shares=share_rows, spread=[], failures=failures,
        diagnostics={}, rank_based=[], aliases=prep.aliases,
        bootstrap={"replicates": int(bootstrap) if boot else 0, "seed": seed, "method": "parametric",
                   "failed_refits": boot["failed"] if boot else 0},
        notes=notes, warnings=[], prepared=prep)
    if boot is None and bootstrap and df_res > 0:
        result.notes.append("bootstrap intervals could not be computed.")

    # Fitted values of the ANOVA model for diagnostics and plots.
    fitted_z = _fitted(eng, model_cols, gcodes, row_group)
    residuals = (prep.data["_y"].to_numpy(float) - centre) / scale - fitted_z
    extras.add_diagnostics(result, prep, residuals * scale, df_res)
    # Spread is judged on residuals from the fixed effects alone, so it includes the seed streams.
    fixed_resid = (prep.data["_y"].to_numpy(float) - centre) / scale - _fitted(eng, fixed_cols, gcodes, row_group)
    extras.add_spread(result, prep, fixed_resid * scale, spread_factors, seed=seed)
    return result


def _fitted(eng: Engine, cols: np.ndarray, gcodes: dict[str, np.ndarray], row_group: np.ndarray) -> np.ndarray:
    from scipy import linalg

    Gs = eng.G[np.ix_(cols, cols)]
    coef = linalg.solve(Gs, eng.c[cols], assume_a="pos")
    return (eng.U[:, cols] @ coef)[row_group]


def _bootstrap(eng: Engine, model: list[Term], ss_type: int, mixed, reml_terms: list[Term], beta, comp, sigma2: float,
               theta, terms: list[Term], df_res: int, B: int, rng: np.random.Generator,
               between: Mapping[str, str] = {}) -> dict[str, Any] | None:
    """Parametric bootstrap on sufficient statistics.

    Simulate ``y* = X beta + sum Z_k u_k + e`` with ``u_k ~ N(0, sigma_k^2)`` and
    ``e ~ N(0, sigma^2)``: ``U'y*`` and ``y*'y*`` are drawn from their exact joint
    distribution, then every statistic is recomputed from them.
    """
    from scipy import linalg

    G = eng.G
    P = G.shape[0]
    w, V = linalg.eigh(G)
    keep = w > 1e-10 * w.max()
    root = V[:, keep] * np.sqrt(w[keep])
    rank = int(keep.sum())
    n = eng.n
    mean_b = np.zeros(P)
    mean_b[mixed.x] = beta
    b = np.repeat(mean_b[:, None], B, axis=1)
    for j, t in enumerate(reml_terms):
        b[t.columns] = rng.normal(0.0, math.sqrt(max(comp[j], 0.0)), size=(len(t.columns), B))
    zq = rng.standard_normal((rank, B))
    eps = math.sqrt(sigma2) * (root @ zq)
    ee = sigma2 * (np.sum(zq * zq, axis=0) + (rng.chisquare(n - rank, size=B) if n > rank else 0.0))
    c = G @ b + eps
    yy = np.einsum("ij,ij->j", b, G @ b) + 2 * np.einsum("ij,ij->j", b, eps) + ee
    ss, rss = eng.sums_of_squares(model, ss_type, c, yy)
    if between:
        ss_fixed, _ = eng.sums_of_squares([t for t in model if t.kind != "random"], ss_type, c, yy)
        ss.update({k: ss_fixed[k] for k in between})
    ss_total = yy - c[0] ** 2 / n
    ms_res = rss / df_res
    out: dict[str, Any] = {"eta": {}, "peta": {}, "omega": {}, "comp": {}, "share": {}, "failed": 0}
    for t in terms:
        s = ss[t.name]
        out["eta"][t.name] = s / ss_total
        out["peta"][t.name] = s / (s + rss)
        out["omega"][t.name] = (s - len(t.kept) * ms_res) / (ss_total + ms_res)
    comps = np.zeros((len(reml_terms), B))
    sig = np.array(ms_res, float)
    if reml_terms:
        idx = np.concatenate([mixed.z, mixed.x])
        for r in range(B):
            try:
                v, s2r, _, _ = mixed.fit(c[idx, r], float(yy[r]), start=theta, quick=True)
                comps[:, r], sig[r] = v, s2r
            except Exception:  # a refit that fails is counted and reported, never silently used
                comps[:, r], sig[r] = np.nan, np.nan
                out["failed"] += 1
    out["sigma2"] = sig
    fixed_terms = [t for t in terms if t.kind == "fixed"]
    parts = {t.name: np.maximum(0.0, (ss[t.name] - len(t.kept) * ms_res) / n) for t in fixed_terms}
    for j, t in enumerate(reml_terms):
        out["comp"][t.name] = comps[j]
        parts[t.name] = comps[j]
    parts["Residual"] = sig
    total = sum(parts.values())
    for k, v in parts.items():
        out["share"][k] = v / total
    return out
