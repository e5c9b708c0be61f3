"""95% intervals for variance components and shares, computed from the fit without refitting.

* **Residual variance**: the exact chi-square interval ``[RSS / chi2_{0.975}(df), RSS /
  chi2_{0.025}(df)]`` on the residual sum of squares of the model with every term as
  columns: under normality ``RSS / sigma^2 ~ chi2(df)`` whatever the random terms are, so the
  coverage is exact in balanced and unbalanced designs.
* **Random components and shares**: generalized confidence intervals (Weerahandi 1993;
  Burdick, Borror & Montgomery 2005, *Design and Analysis of Gauge R&R Studies*, ch. 2-3) on
  the mean squares of the random terms, ``E[MS] = E sigma`` (``E`` the expected-mean-squares
  matrix). Each ``E[MS_q]`` is replaced by its generalized pivot ``df_q MS_q / W_q`` (``W_q ~
  chi2(df_q)``), the components by ``E^-1`` of those (floored at 0), and a share by ``R_k /
  sum R``; the interval is the 2.5% and 97.5% quantiles over ``draws`` draws. Every component
  and share is a function of the same pivots, so their dependence is kept. In balanced
  designs the mean squares are the classical ones (independent, exactly scaled chi-squares);
  otherwise Henderson's method III (``_inference.mean_squares``), where the pivots are an
  approximation whose coverage was measured (``calibration.coverage``).
* **Fallback** (a random term without a mean square of its own): the Satterthwaite interval
  of a component (Satterthwaite 1946; SAS PROC MIXED's ``CL``), ``nu = 2 v^2 / Var(v)`` with
  ``Var`` from the inverse Hessian of the REML deviance, and the delta-method interval of a
  share on the logit scale from the same covariance.

A component estimated at 0 gets no interval. Fixed terms enter the shares' total with the
normal approximation of their estimated variance (floored at 0); the shares of fixed terms
get no interval here (a fixed share of 0 cannot be covered by a pivot that is positive).
Which of these intervals are shown is decided by the caller from measured coverage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["Intervals", "MeanSquares", "residual_interval", "satterthwaite_interval", "intervals"]

LEVEL = 0.95


def residual_interval(rss: float, df: float, level: float = LEVEL) -> list[float] | None:
    """Exact interval of the residual variance from ``RSS ~ sigma^2 chi2(df)``."""
    if not (df > 0 and rss > 0 and math.isfinite(rss)):
        return None
    a = 1 - level
    return [float(rss / stats.chi2.ppf(1 - a / 2, df)), float(rss / stats.chi2.ppf(a / 2, df))]


def satterthwaite_interval(v: float, var_v: float, level: float = LEVEL) -> list[float] | None:
    """Satterthwaite interval of a variance ``v`` whose estimate has sampling variance ``var_v``.

    None when the estimate is at 0 or its variance is not positive (no interval is formed).
    """
    if not (v > 0 and var_v > 0 and math.isfinite(var_v)):
        return None
    nu = 2 * v * v / var_v
    a = 1 - level
    with np.errstate(divide="ignore", over="ignore"):
        ci = [float(nu * v / stats.chi2.ppf(1 - a / 2, nu)), float(nu * v / stats.chi2.ppf(a / 2, nu))]
    return ci if all(math.isfinite(x) for x in ci) else None  # nu near 0: no finite upper end


@dataclass(frozen=True)
class MeanSquares:
    """The mean squares the generalized pivots are built from.

    Attributes:
        ems: ``E[MS_q] = sum_j ems[q, j] sigma_j^2``; rows and columns are the random terms
            in the caller's order, then the residual.
        ms: the mean squares, same order.
        df: their degrees of freedom.
        exact: balanced design (independent scaled chi-squares); else Henderson III mean
            squares, for which the pivots are an approximation.
    """

    ems: np.ndarray
    ms: np.ndarray
    df: np.ndarray
    exact: bool


@dataclass(frozen=True)
class Intervals:
    """Intervals on the standardised scale (callers multiply variances by ``scale**2``).

    Attributes:
        components: random term -> interval of its variance (None: not formed).
        residual: interval of the residual variance.
        shares: random term or "Residual" -> interval of its share (None: not formed).
        method: "generalized pivots (balanced)", "generalized pivots (Henderson III mean squares)",
            "Satterthwaite / delta method" or "none".
    """

    components: dict[str, list[float] | None]
    residual: list[float] | None
    shares: dict[str, list[float] | None]
    method: str


def _quantiles(x: np.ndarray, level: float) -> list[float]:
    a = 50 * (1 - level)
    lo, hi = np.percentile(x, [a, 100 - a])
    return [float(lo), float(hi)]


def _fixed_draws(fixed_parts: dict[str, float], fixed_sd: dict[str, float], draws: int,
                 rng: np.random.Generator) -> np.ndarray:
    total = np.zeros(draws)
    for f, v in fixed_parts.items():
        total += np.maximum(0.0, v + fixed_sd.get(f, 0.0) * rng.standard_normal(draws))
    return total


def intervals(names: list[str], comp: np.ndarray, sigma2: float, cov: np.ndarray | None, active: np.ndarray,
              rss: float, df_res: int, fixed_parts: dict[str, float], fixed_sd: dict[str, float], draws: int,
              rng: np.random.Generator, mean_squares: MeanSquares | None = None, level: float = LEVEL) -> Intervals:
    """Component, residual and share intervals of one fit.

    Args:
        names: the random terms, in the order of ``comp``.
        comp: their REML variances.
        sigma2: the REML residual variance.
        cov: asymptotic covariance of (the active components' variances, the residual
            variance): twice the inverse Hessian of the REML deviance; None without random terms.
        active: indices (into ``names``) of the components estimated above 0, the order of
            ``cov``'s rows.
        rss: residual sum of squares of the model with every term as columns.
        df_res: its degrees of freedom.
        fixed_parts: fixed term -> its estimated variance component.
        fixed_sd: fixed term -> the standard error of that estimate.
        draws: Monte Carlo draws of the generalized pivots.
        rng: the generator of those draws.
        mean_squares: the mean squares for the generalized pivots; None: Satterthwaite and delta method.
        level: the confidence level.
    """
    comps: dict[str, list[float] | None] = {n: None for n in names}
    shares: dict[str, list[float] | None] = {n: None for n in names + ["Residual"]}
    res_ci = residual_interval(rss, df_res, level)
    if res_ci is None:
        return Intervals(comps, res_ci, shares, "none")
    act = [int(j) for j in active]
    mss = mean_squares
    if mss is not None and draws > 0:
        try:
            inv = np.linalg.inv(mss.ems)
        except np.linalg.LinAlgError:
            inv = None
        if inv is not None:
            W = rng.chisquare(mss.df[None, :], (draws, len(mss.df)))
            R = np.maximum((mss.df * mss.ms / W) @ inv.T, 0.0)
            total = R.sum(axis=1) + _fixed_draws(fixed_parts, fixed_sd, draws, rng)
            for j in act:
                comps[names[j]] = _quantiles(R[:, j], level)
                shares[names[j]] = _quantiles(R[:, j] / total, level)
            shares["Residual"] = _quantiles(R[:, -1] / total, level)
            return Intervals(comps, res_ci, shares, "generalized pivots (balanced)" if mss.exact
                             else "generalized pivots (Henderson III mean squares)")
    if cov is None and names:  # random terms without their covariance: no share interval can be formed
        return Intervals(comps, res_ci, shares, "Satterthwaite / delta method")
    for i, j in enumerate(act):
        if cov is not None:
            comps[names[j]] = satterthwaite_interval(float(comp[j]), float(cov[i, i]), level)
    vals = np.array([float(comp[j]) for j in act] + [sigma2] + list(fixed_parts.values()))
    m = len(act) + 1
    S = np.zeros((len(vals), len(vals)))
    if cov is not None:
        S[:m, :m] = cov
    else:  # no random terms: the residual mean square has variance 2 sigma^4 / df
        S[0, 0] = 2 * sigma2**2 / df_res
    for i, f in enumerate(fixed_parts):
        S[m + i, m + i] = fixed_sd.get(f, 0.0) ** 2
    total = float(vals.sum())
    z = float(stats.norm.ppf(0.5 + level / 2))
    for i, n in enumerate([names[j] for j in act] + ["Residual"]):
        v, rest = vals[i], total - vals[i]
        if v <= 0 or rest <= 0:
            continue
        g = np.full(len(vals), -1.0 / rest)
        g[i] = 1.0 / v
        var = float(g @ S @ g)
        if not (var >= 0 and math.isfinite(var)):
            continue
        logit, half = math.log(v / rest), z * math.sqrt(var)
        shares[n] = [1 / (1 + math.exp(-(logit - half))), 1 / (1 + math.exp(-(logit + half)))]
    return Intervals(comps, res_ci, shares, "Satterthwaite / delta method")
