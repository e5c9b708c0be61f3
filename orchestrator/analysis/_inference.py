"""Tests of model terms against the right error term, and the variance shares.

Two routes, chosen by the design:

* **Balanced** (every combination of the levels of every factor in the model occurs, each
  with the same number of trials): the expected-mean-squares (EMS) error term, as R's
  ``aov`` with ``Error()`` strata. ``E[MS_t] = sigma^2 + sum_k c_tk sigma_k^2 (+ fixed
  part)`` with ``c_tk = n / (product of the levels of k's factors)`` when random term ``k``
  contains every factor of ``t``, else 0 (the unrestricted mixed model, as lme4). The error
  of ``t`` is the combination of other mean squares with the same expectation under the
  null; when that is not a single mean square its degrees of freedom are Satterthwaite's.
* **Otherwise**: the Wald F test of the term's (Type III) coefficients in the REML fit with
  Satterthwaite's denominator degrees of freedom, as lmerTest.

Without random terms both reduce to the classical F test against the residual.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import linalg, stats

from orchestrator.analysis._engine import Engine, Mixed, Term, _contr_sum, _independent, basis, satterthwaite_test

__all__ = ["fully_balanced", "ems_row", "ems_tests", "mean_squares", "satterthwaite_tests", "fixed_variance", "fixed_variance_se", "term_weights"]


def fully_balanced(counts: np.ndarray, codes: dict[str, np.ndarray], levels: dict[str, int]) -> bool:
    """Every combination of the levels of every model factor occurs with the same count."""
    full = math.prod(levels[f] for f in codes) if codes else 1
    return len(counts) == full and bool(np.all(counts == counts[0]))


def ems_row(t: Term, random_terms: list[Term], levels: dict[str, int], n: float) -> np.ndarray:
    """Coefficients of (each random component, residual) in ``E[MS_t]``."""
    row = np.zeros(len(random_terms) + 1)
    for j, k in enumerate(random_terms):
        if set(t.factors) <= set(k.factors):
            row[j] = n / math.prod(levels[f] for f in k.factors)
    row[-1] = 1.0
    return row


def _name_error(coef: np.ndarray, names: list[str]) -> str:
    parts = []
    for a, name in zip(coef, names):
        if abs(a) < 1e-9:
            continue
        sign = "-" if a < 0 else "+"
        mag = "" if abs(abs(a) - 1) < 1e-9 else f"{abs(a):.4g} "
        parts.append(f"{sign} {mag}{name}")
    text = " ".join(parts)
    return text[2:] if text.startswith("+ ") else text


def ems_tests(terms: list[Term], random_terms: list[Term], ms: dict[str, float], df: dict[str, int],
              ms_res: float, df_res: int, levels: dict[str, int], n: float) -> dict[str, dict[str, Any]]:
    """F tests of balanced designs against their expected-mean-squares error terms."""
    out: dict[str, dict[str, Any]] = {}
    rows = {k.name: ems_row(k, random_terms, levels, n) for k in random_terms}
    for t in terms:
        target = ems_row(t, random_terms, levels, n)
        basis = [k for k in random_terms if k is not t]
        if t.kind == "random":
            target[random_terms.index(t)] = 0.0
        names = [k.name for k in basis] + ["Residual"]
        M = np.array([rows[k.name] for k in basis] + [np.eye(len(random_terms) + 1)[-1]])
        coef, *_ = linalg.lstsq(M.T, target)
        if np.max(np.abs(M.T @ coef - target)) > 1e-8 * max(1.0, np.abs(target).max()):
            out[t.name] = {"F": None, "den_df": None, "error_term": None, "test": "no exact error term (EMS)"}
            continue
        coef[np.abs(coef) < 1e-10] = 0.0
        mss = np.array([ms[k.name] for k in basis] + [ms_res])
        dfs = np.array([df[k.name] for k in basis] + [df_res], float)
        err = float(coef @ mss)
        used = coef != 0
        if err <= 0 or not used.any() or np.any(dfs[used] <= 0):
            out[t.name] = {"F": None, "den_df": None, "error_term": _name_error(coef, names),
                           "test": "EMS error term not positive"}
            continue
        if used.sum() == 1 and abs(coef[used][0] - 1) < 1e-9:
            den = float(dfs[used][0])
        else:
            den = float(err**2 / np.sum((coef[used] * mss[used]) ** 2 / dfs[used]))
        F = ms[t.name] / err
        out[t.name] = {"F": F, "den_df": den, "error_term": _name_error(coef, names),
                       "test": "expected mean squares (balanced)"}
    return out


def term_weights(t: Term, engine: Engine, design_codes: dict[str, np.ndarray] | None) -> np.ndarray:
    """``S_t``: mean over the design's cells of ``x x'`` for the term's kept columns.

    For a full factorial the cells are the whole grid of levels, where sum-to-zero columns
    give the Kronecker product of ``C'C / levels`` per factor; for a fractional design
    (``design_codes`` given) the mean is over its design points.
    """
    if design_codes is not None:
        from orchestrator.analysis._engine import contrast_rows

        R = contrast_rows(design_codes, engine.levels, t.factors)
        S = R.T @ R / len(R)
    else:
        S = np.ones((1, 1))
        for f in t.factors:
            C = _contr_sum(engine.levels[f])
            S = np.kron(S, C.T @ C / engine.levels[f])
    rel = t.kept - t.columns[0]
    return S[np.ix_(rel, rel)]


def fixed_variance(beta: np.ndarray, V: np.ndarray, S: np.ndarray) -> float:
    """Unbiased variance of a term's contribution over the design cells, floored at 0.

    ``beta' S beta`` over-estimates ``b' S b`` by ``tr(S cov(beta))`` (the estimation noise,
    which includes every random term the estimate depends on); that is subtracted, so no
    variance is counted both here and in a random component.
    """
    return max(0.0, float(beta @ S @ beta - np.trace(S @ V)))


def _resid_traces(engine: Engine, cols: np.ndarray, terms: list[Term]) -> tuple[np.ndarray, float]:
    """``tr(Z_k' M Z_k)`` for each term and the residual sum of squares, ``M`` the residual maker of
    the linearly independent columns ``cols`` (one factorisation for all terms)."""
    G = engine.G
    z = np.concatenate([t.columns for t in terms])
    diag = np.diag(G)[z].copy()
    if len(cols):
        L = linalg.cholesky(G[np.ix_(cols, cols)], lower=True, check_finite=False)
        V = linalg.solve_triangular(L, np.column_stack([G[np.ix_(cols, z)], engine.c[cols]]), lower=True,
                                    check_finite=False)
        diag -= np.sum(V[:, :-1] ** 2, axis=0)
        rss = engine.yy - float(V[:, -1] @ V[:, -1])
    else:
        rss = engine.yy
    offsets = np.concatenate([[0], np.cumsum([len(t.columns) for t in terms])]).astype(int)
    return np.add.reduceat(diag, offsets[:-1]), rss


def mean_squares(engine: Engine, model: list[Term], random_terms: list[Term], ms_res: float,
                 df_res: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Mean squares of the random terms, their df and expected-mean-squares matrix, in any design.

    ``SS_q = R(q | terms not containing q)`` (Type II for random terms); its expectation is
    ``sum_k sigma_k^2 [tr(Z_k' M_a Z_k) - tr(Z_k' M_b Z_k)] + df_q sigma^2`` with ``M_a``,
    ``M_b`` the residual makers without and with ``q`` (Henderson's method III). On balanced
    data these are the classical mean squares and ``ems_row``'s coefficients. Returns
    ``(E, MS, df)`` with the residual last, or None when a term has no df of its own.
    """
    G = engine.G
    k = len(random_terms)
    E = np.zeros((k + 1, k + 1))
    ms = np.zeros(k + 1)
    dfs = np.zeros(k + 1)
    for i, q in enumerate(random_terms):
        marg = [t for t in model if t is not q and not set(q.factors) <= set(t.factors)]
        cols_a = basis(G, engine.columns(marg))
        own = _independent(G, q.columns, cols_a)
        if len(own) == 0:
            return None
        tr_a, rss_a = _resid_traces(engine, cols_a, random_terms)
        tr_b, rss_b = _resid_traces(engine, np.concatenate([cols_a, own]), random_terms)
        dfs[i], ms[i] = len(own), (rss_a - rss_b) / len(own)
        E[i, :k] = (tr_a - tr_b) / len(own)
        E[i, -1] = 1.0
    E[-1, -1], ms[-1], dfs[-1] = 1.0, ms_res, df_res
    return E, ms, dfs


def fixed_variance_se(beta: np.ndarray, V: np.ndarray, S: np.ndarray) -> float:
    """Standard error of ``fixed_variance`` (before the floor): for ``b ~ N(beta, V)``,
    ``Var(b' S b) = 4 beta' S V S beta + 2 tr((S V)^2)``."""
    SV = S @ V
    return math.sqrt(max(0.0, float(4 * beta @ SV @ S @ beta + 2 * np.trace(SV @ SV))))


def satterthwaite_tests(fixed_terms: list[Term], mixed: Mixed, beta: np.ndarray, parts: dict[str, Any]
                        ) -> dict[str, dict[str, Any]]:
    """lmerTest-style Type III F tests of the fixed terms with Satterthwaite denominator df."""
    out: dict[str, dict[str, Any]] = {}
    pos = {int(j): i for i, j in enumerate(mixed.x)}
    names = " + ".join(t.name for t in mixed.terms)
    for t in fixed_terms:
        L = np.zeros((len(t.kept), len(mixed.x)))
        for r, j in enumerate(t.kept):
            L[r, pos[int(j)]] = 1.0
        F, q, den = satterthwaite_test(beta, parts, L)
        out[t.name] = {"F": F, "den_df": den, "num_df": q,
                       "error_term": f"Satterthwaite ({names} + Residual)",
                       "test": "Wald F, Satterthwaite df (REML, as lmerTest)"}
    return out


def p_value(F: float | None, df1: float, df2: float | None) -> float | None:
    if F is None or df2 is None or not (math.isfinite(F) and math.isfinite(df2)) or df2 <= 0 or df1 <= 0:
        return None
    return float(stats.f.sf(F, df1, df2))
