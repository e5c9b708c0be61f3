"""Linear and linear-mixed models computed from sufficient statistics.

Every quantity the analysis reports (sums of squares, REML and method-of-moments variance
components, the parametric bootstrap) is a function of the cross-product matrix
``U'U`` of the model's columns, ``U'y`` and ``y'y``. Trials that share every factor level
share a design row, so these are built from one row per distinct combination of levels,
weighted by its count: the cost grows with the number of distinct combinations, not with
the number of trials. The parametric bootstrap draws ``U'y*`` and ``y*'y*`` directly from
their exact distribution under the fitted model, so a bootstrap replicate costs the same
for 30 trials as for 100,000.

The response is centred and scaled before anything is computed (it conditions the
matrices); callers multiply variances back by ``scale**2``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
from scipy import linalg, optimize

__all__ = ["Term", "Engine"]

_TOL = 1e-9


@dataclass
class Term:
    """A block of model columns: the intercept, a fixed term (``A`` or ``A:B``) or a random factor."""

    name: str
    factors: tuple[str, ...]
    kind: str  # "intercept" | "fixed" | "random"
    columns: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    kept: np.ndarray = field(default_factory=lambda: np.zeros(0, int))

    @property
    def nominal_df(self) -> int:
        return len(self.columns) - (1 if self.kind == "random" else 0)


def _contr_sum(levels: int) -> np.ndarray:
    """R's ``contr.sum``: identity on the first levels-1 rows, -1 on the last."""
    return np.vstack([np.eye(levels - 1), -np.ones((1, levels - 1))])


def _independent(S: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Columns (in ``order``) that are linearly independent of the ones kept before them.

    Gram-Schmidt in the metric of the cross-product matrix ``S``: a column is kept when its
    squared distance from the span of the kept ones is more than a relative tolerance.
    """
    keep: list[int] = []
    L = np.zeros((len(order), len(order)))
    for j in order:
        d = S[j, j]
        if d <= 0:
            continue
        if keep:
            k = len(keep)
            v = linalg.solve_triangular(L[:k, :k], S[keep, j], lower=True, check_finite=False)
            r = d - v @ v
        else:
            v, r = np.zeros(0), d
        if r > _TOL * d:
            k = len(keep)
            L[k, :k] = v
            L[k, k] = np.sqrt(r)
            keep.append(int(j))
    return np.array(keep, dtype=int)


class Engine:
    """Columns, cross-products and fits of one model.

    Args:
        codes: integer level codes (0..levels-1) of each factor, one entry per distinct
            combination of levels (a "group").
        levels: number of levels of each factor.
        fixed_terms: fixed terms as tuples of factor names, lower order first.
        random: random factor names.
        counts, sums, sumsq: per group, the number of trials, the sum of the standardised
            response and the sum of its squares.
    """

    def __init__(self, codes: dict[str, np.ndarray], levels: dict[str, int],
                 fixed_terms: list[tuple[str, ...]], random: list[str],
                 counts: np.ndarray, sums: np.ndarray, sumsq: np.ndarray):
        self.n = float(counts.sum())
        blocks: list[np.ndarray] = [np.ones((len(counts), 1))]
        self.terms: list[Term] = [Term("(Intercept)", (), "intercept")]
        for factors in fixed_terms:
            cols = np.ones((len(counts), 1))
            for f in factors:
                c = _contr_sum(levels[f])[codes[f]]
                cols = (cols[:, :, None] * c[:, None, :]).reshape(len(counts), -1)
            blocks.append(cols)
            self.terms.append(Term(":".join(factors), factors, "fixed"))
        for f in random:
            blocks.append(np.eye(levels[f])[codes[f]])
            self.terms.append(Term(f, (f,), "random"))
        start = 0
        for term, block in zip(self.terms, blocks):
            term.columns = np.arange(start, start + block.shape[1])
            start += block.shape[1]
        U = np.hstack(blocks)
        self.U = U
        Uw = U * counts[:, None]
        self.G = U.T @ Uw
        self.c = U.T @ sums
        self.yy = float(sumsq.sum())
        kept = _independent(self.G, np.arange(U.shape[1]))
        kept_set = set(kept.tolist())
        for term in self.terms:
            term.kept = np.array([j for j in term.columns if j in kept_set], dtype=int)
        self.rank = len(kept)

    # ----------------------------------------------------------------------------- helpers
    def term(self, name: str) -> Term:
        return next(t for t in self.terms if t.name == name)

    def columns(self, terms: list[Term]) -> np.ndarray:
        return np.concatenate([t.kept for t in terms]) if terms else np.zeros(0, int)

    def rss(self, cols: np.ndarray, c: np.ndarray | None = None, yy: np.ndarray | float | None = None) -> np.ndarray:
        """Residual sum of squares of the least-squares fit on ``cols`` (one per column of ``c``)."""
        c = self.c[:, None] if c is None else c
        yy = self.yy if yy is None else yy
        if len(cols) == 0:
            return np.asarray(yy, float) * np.ones(c.shape[1])
        Lc = linalg.cholesky(self.G[np.ix_(cols, cols)], lower=True, check_finite=False)
        v = linalg.solve_triangular(Lc, c[cols], lower=True, check_finite=False)
        return yy - np.einsum("ij,ij->j", v, v)

    def aliased_with(self, term: Term, earlier: list[Term]) -> list[str]:
        """Earlier terms whose removal would let ``term`` add columns (what it is aliased with)."""
        names = []
        base = np.concatenate([t.columns for t in earlier])
        for s in earlier:
            if s.kind == "intercept":
                continue
            others = np.concatenate([t.columns for t in earlier if t is not s]) if len(earlier) > 1 else np.zeros(0, int)
            rank_without = len(_independent(self.G, others))
            rank_with = len(_independent(self.G, np.concatenate([others, term.columns])))
            if rank_with > rank_without and len(_independent(self.G, base)) == len(_independent(self.G, np.concatenate([base, term.columns]))):
                names.append(s.name)
        return names

    # ----------------------------------------------------------------------------- ANOVA
    def sums_of_squares(self, model: list[Term], ss_type: int, c: np.ndarray | None = None,
                        yy: np.ndarray | float | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Type II or III sums of squares of every non-intercept term of ``model``, and the RSS.

        Type III drops the term's (sum-to-zero coded) columns from the full model. Type II
        compares the models with and without the term, both holding every term that does not
        contain it (marginality).
        """
        full = self.columns(model)
        rss_full = self.rss(full, c, yy)
        out: dict[str, np.ndarray] = {}
        for t in model:
            if t.kind == "intercept" or len(t.kept) == 0:
                continue
            if ss_type == 3:
                reduced = self.columns([s for s in model if s is not t])
                out[t.name] = self.rss(reduced, c, yy) - rss_full
            else:
                marg = [s for s in model if s is not t and not set(t.factors) <= set(s.factors)]
                out[t.name] = self.rss(self.columns(marg), c, yy) - self.rss(self.columns(marg + [t]), c, yy)
        return out, rss_full

    # ----------------------------------------------------------------------------- mixed model
    def mixed_parts(self, random_terms: list[Term]) -> "Mixed":
        fixed = [t for t in self.terms if t.kind in ("intercept", "fixed")]
        return Mixed(self, self.columns(fixed), random_terms)

    def moments(self, random_terms: list[Term], fixed_cols: np.ndarray) -> tuple[dict[str, float], float]:
        """Henderson's method III: each random factor's sum of squares adjusted for all else.

        ``E[R(k | rest)] = df_k * sigma2 + tr(Z_k' M_rest Z_k) * sigma2_k``; on balanced
        crossed data these are the classical expected-mean-squares (ANOVA) estimators.
        """
        all_cols = np.concatenate([fixed_cols] + [t.kept for t in random_terms])
        rss_full = float(self.rss(all_cols)[0])
        sigma2 = rss_full / (self.n - len(all_cols))
        out = {}
        for t in random_terms:
            rest = np.concatenate([fixed_cols] + [s.kept for s in random_terms if s is not t])
            r_k = float(self.rss(rest)[0]) - rss_full
            Gz = self.G[np.ix_(t.columns, t.columns)]
            B = self.G[np.ix_(rest, t.columns)]
            Lc = linalg.cholesky(self.G[np.ix_(rest, rest)], lower=True, check_finite=False)
            V = linalg.solve_triangular(Lc, B, lower=True, check_finite=False)
            trace = float(np.trace(Gz) - np.sum(V * V))
            out[t.name] = (r_k - len(t.kept) * sigma2) / trace
        return out, sigma2


class Mixed:
    """REML for ``y = X b + sum_k Z_k u_k + e`` with independent random intercepts.

    The profiled REML deviance is computed as in lme4 from one Cholesky factorisation of
    the augmented matrix ``[[Lam Z'Z Lam + I, Lam Z'X, Lam Z'y], [., X'X, X'y], [., ., y'y]]``
    where ``Lam`` holds the relative standard deviations ``theta_k = sigma_k / sigma``.
    """

    def __init__(self, engine: Engine, fixed_cols: np.ndarray, random_terms: list[Term]):
        self.e = engine
        self.x = fixed_cols
        self.terms = random_terms
        self.z = np.concatenate([t.columns for t in random_terms]) if random_terms else np.zeros(0, int)
        self.sizes = [len(t.columns) for t in random_terms]
        idx = np.concatenate([self.z, self.x])
        self.G = engine.G[np.ix_(idx, idx)]
        self.q = len(self.z)
        self.p = len(self.x)
        self.n = engine.n

    def _factor(self, theta: np.ndarray, c: np.ndarray, yy: float):
        q, p = self.q, self.p
        lam = np.repeat(theta, self.sizes)
        M = np.empty((q + p + 1, q + p + 1))
        M[: q + p, : q + p] = self.G
        M[: q + p, -1] = c
        M[-1, : q + p] = c
        M[-1, -1] = yy
        M[:q, :] *= lam[:, None]
        M[:, :q] *= lam[None, :]
        M[np.arange(q), np.arange(q)] += 1.0
        return linalg.cholesky(M, lower=True, check_finite=False)

    def deviance(self, theta: np.ndarray, c: np.ndarray, yy: float) -> float:
        try:
            L = self._factor(np.abs(theta), c, yy)
        except linalg.LinAlgError:
            return np.inf
        d = np.diag(L)
        pwrss = d[-1] ** 2
        nu = self.n - self.p
        if pwrss <= 0:
            return np.inf
        return float(2 * np.sum(np.log(d[:-1])) + nu * (1 + np.log(2 * np.pi * pwrss / nu)))

    def fit(self, c: np.ndarray | None = None, yy: float | None = None, start: np.ndarray | None = None,
            quick: bool = False):
        """REML estimates: (component variances, residual variance, fixed coefficients)."""
        idx = np.concatenate([self.z, self.x])
        c = self.e.c[idx] if c is None else c
        yy = self.e.yy if yy is None else yy
        k = len(self.terms)
        if k == 1:
            # One component: a bounded scalar search is several times cheaper than L-BFGS-B.
            s0 = 1.0 if start is None else float(np.asarray(start).ravel()[0])
            hi = max(10.0, 10.0 * s0)
            res = optimize.minimize_scalar(lambda t: self.deviance(np.array([t]), c, yy), bounds=(0.0, hi),
                                           method="bounded", options={"xatol": 1e-7 * max(1.0, s0)})
            theta = np.array([res.x])
            if self.deviance(np.zeros(1), c, yy) <= res.fun:
                theta = np.zeros(1)
        elif k:
            starts = [np.ones(k)] if start is None else [np.asarray(start, float)]
            if start is not None and not quick:
                starts.append(np.ones(k))
            best = None
            for s in starts:
                res = optimize.minimize(self.deviance, np.maximum(s, 0.05), args=(c, yy), method="L-BFGS-B",
                                        bounds=[(0.0, None)] * k)
                if best is None or res.fun < best.fun:
                    best = res
            theta = np.abs(best.x)
            # Probe the boundary: L-BFGS-B can stall just above zero on a flat profile.
            for j in range(k):
                if 0 < theta[j] < 1e-2:
                    t0 = theta.copy()
                    t0[j] = 0.0
                    if self.deviance(t0, c, yy) <= self.deviance(theta, c, yy):
                        theta = t0
        else:
            theta = np.zeros(0)
        L = self._factor(theta, c, yy)
        q, p = self.q, self.p
        d_last = L[-1, -1]
        sigma2 = d_last**2 / (self.n - p)
        l32 = L[-1, q : q + p]
        beta = linalg.solve_triangular(L[q : q + p, q : q + p].T, l32, lower=False, check_finite=False)
        return theta**2 * sigma2, float(sigma2), beta, theta


def interaction_terms(factors: list[str], order: int) -> list[tuple[str, ...]]:
    """Main effects and interactions up to ``order``, lower order first."""
    out: list[tuple[str, ...]] = []
    for k in range(1, min(order, len(factors)) + 1):
        out.extend(combinations(factors, k))
    return out
