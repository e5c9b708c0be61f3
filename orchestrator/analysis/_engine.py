"""Linear and linear-mixed models computed from sufficient statistics.

Every quantity the analysis reports (sums of squares, REML variance components, fixed-effect
tests with Satterthwaite degrees of freedom and the intervals) is a function of the
cross-product matrix ``U'U`` of the model's columns, ``U'y`` and ``y'y``. Trials that share
every factor level share a design row, so these are built from one row per distinct
combination of levels (a "group"), weighted by its count: the cost grows with the number of
model columns, not with the number of trials. The random-effect blocks of ``U'U`` are
contingency tables, built with sparse indicator matrices (never a dense one-hot matrix).

The response is centred and scaled before anything is computed (it conditions the
matrices); callers multiply variances back by ``scale**2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
from scipy import linalg, optimize, sparse

__all__ = ["Term", "Engine", "Mixed", "interaction_terms", "group_trials"]

_TOL = 1e-9


@dataclass
class Term:
    """A block of model columns: the intercept, a fixed term (``A``, ``A:B``) or a random term (``s``, ``s:A``)."""

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


def contrast_rows(codes: dict[str, np.ndarray], levels: dict[str, int], factors: tuple[str, ...]) -> np.ndarray:
    """The sum-to-zero coded columns of a fixed term, one row per entry of ``codes``."""
    first = next(iter(codes.values()))
    cols = np.ones((len(first), 1))
    for f in factors:
        c = _contr_sum(levels[f])[codes[f]]
        cols = (cols[:, :, None] * c[:, None, :]).reshape(len(first), -1)
    return cols


def _rank(S: np.ndarray) -> int:
    """Numerical rank of a cross-product matrix (scaled to unit diagonal first)."""
    if S.shape[0] == 0:
        return 0
    d = np.sqrt(np.clip(np.diag(S), 0, None))
    ok = d > 0
    if not ok.any():
        return 0
    Sn = S[np.ix_(ok, ok)] / np.outer(d[ok], d[ok])
    w = linalg.eigvalsh(Sn, check_finite=False)
    return int(np.sum(w > _TOL * max(w.max(), 1.0) * len(w)))


def _independent(S: np.ndarray, order: np.ndarray, kept: np.ndarray | None = None) -> np.ndarray:
    """Columns (in ``order``) that are linearly independent of ``kept`` and of the ones kept before them.

    Gram-Schmidt in the metric of the cross-product matrix ``S``, one block at a time: the
    block's Gram matrix is first reduced by the kept columns (a Schur complement), then its
    columns are kept when their squared distance from the span is above a relative tolerance.
    """
    kept_list = [] if kept is None else [int(j) for j in kept]
    order = np.asarray(order, int)
    if len(order) == 0:
        return np.zeros(0, int)
    block = S[np.ix_(order, order)].copy()
    if kept_list:
        K = np.array(kept_list)
        Lk = linalg.cholesky(S[np.ix_(K, K)], lower=True, check_finite=False)
        V = linalg.solve_triangular(Lk, S[np.ix_(K, order)], lower=True, check_finite=False)
        block -= V.T @ V
    diag0 = np.diag(S)[order]
    out: list[int] = []
    m = len(order)
    L = np.zeros((m, m))
    idx: list[int] = []
    for i in range(m):
        d0 = diag0[i]
        if d0 <= 0:
            continue
        if idx:
            k = len(idx)
            v = linalg.solve_triangular(L[:k, :k], block[idx, i], lower=True, check_finite=False)
            r = block[i, i] - v @ v
        else:
            v, r = np.zeros(0), block[i, i]
        if r > _TOL * d0:
            k = len(idx)
            L[k, :k] = v
            L[k, k] = math.sqrt(r)
            idx.append(i)
            out.append(int(order[i]))
    return np.array(out, dtype=int)


def combine_codes(columns: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of integer code columns: (the distinct rows, the index of each row's one).

    Codes are folded into one integer (mixed radix) so the sort is one-dimensional: ``np.unique``
    on rows (``axis=0``) sorts structured records and is several times slower.
    """
    stacked = np.stack(columns, axis=1).astype(np.int64)
    radix = stacked.max(axis=0) + 1
    if float(np.prod(radix.astype(float))) < 2**62:
        mult = np.concatenate([np.cumprod(radix[::-1])[::-1][1:], [1]]).astype(np.int64)
        key = stacked @ mult
        _, first, inv = np.unique(key, return_index=True, return_inverse=True)
        return stacked[first], inv.ravel()
    uniq, inv = np.unique(stacked, axis=0, return_inverse=True)
    return uniq, inv.ravel()


def basis(S: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Some linearly independent subset of ``cols`` spanning the same space (pivoted Cholesky)."""
    cols = np.asarray(cols, int)
    if len(cols) == 0:
        return cols
    sub = S[np.ix_(cols, cols)]
    d = np.sqrt(np.clip(np.diag(sub), 0, None))
    ok = d > 0
    cols, sub, d = cols[ok], sub[np.ix_(ok, ok)], d[ok]
    if len(cols) == 0:
        return cols
    _, piv, rank, _ = linalg.lapack.dpstrf(sub / np.outer(d, d), lower=1, tol=_TOL)
    return np.sort(cols[piv[:rank] - 1])


def group_trials(y: np.ndarray, codes: dict[str, np.ndarray]) -> dict[str, Any]:
    """Standardise the response and aggregate trials that share every level.

    The response is divided by its largest magnitude before its mean and SD are taken, so
    values around 1e-300 or 1e300 neither underflow nor overflow when squared.

    Returns:
        ``codes`` and ``counts``/``sums``/``sumsq`` per group, ``row_group`` (the group of
        each trial), ``centre`` and ``scale`` (``y = centre + scale * z``).
    """
    y = np.asarray(y, float)
    big = float(np.max(np.abs(y))) if len(y) else 1.0
    big = big if big > 0 and math.isfinite(big) else 1.0
    y1 = y / big
    c1 = float(y1.mean())
    s1 = float(np.sqrt(np.mean((y1 - c1) ** 2))) or 1.0
    z = (y1 - c1) / s1
    names = list(codes)
    if names:
        uniq, row_group = combine_codes([codes[f] for f in names])
    else:
        uniq, row_group = np.zeros((1, 0), np.int64), np.zeros(len(y), np.int64)
    g = len(uniq)
    counts = np.bincount(row_group, minlength=g).astype(float)
    sums = np.bincount(row_group, weights=z, minlength=g)
    sumsq = np.bincount(row_group, weights=z * z, minlength=g)
    return {"codes": {f: uniq[:, i].astype(np.int64) for i, f in enumerate(names)}, "counts": counts, "sums": sums,
            "sumsq": sumsq, "row_group": row_group, "centre": c1 * big, "scale": s1 * big}


class Engine:
    """Columns, cross-products and least-squares fits of one model.

    Args:
        codes: integer level codes (0..levels-1) of each factor, one entry per group.
        levels: number of levels of each factor.
        fixed_terms: fixed terms as tuples of factor names, lower order first.
        random_terms: random terms as tuples of column names (``("seed",)``, ``("seed", "A")``);
            a term's columns are the indicators of the level combinations that occur.
        counts, sums, sumsq: per group, the number of trials, the sum of the standardised
            response and the sum of its squares.
    """

    def __init__(self, codes: dict[str, np.ndarray], levels: dict[str, int], fixed_terms: list[tuple[str, ...]],
                 random_terms: list[tuple[str, ...]], counts: np.ndarray, sums: np.ndarray, sumsq: np.ndarray):
        self.n = float(counts.sum())
        self.codes = codes
        self.levels = levels
        ng = len(counts)
        blocks = [np.ones((ng, 1))]
        self.terms: list[Term] = [Term("(Intercept)", (), "intercept")]
        for factors in fixed_terms:
            blocks.append(contrast_rows(codes, levels, factors))
            self.terms.append(Term(":".join(factors), tuple(factors), "fixed"))
        X = np.hstack(blocks)
        p = X.shape[1]
        start = 0
        for term, block in zip(self.terms, blocks):
            term.columns = np.arange(start, start + block.shape[1])
            start += block.shape[1]
        self.X = X
        z_index: list[np.ndarray] = []
        q = 0
        for factors in random_terms:
            _, inv = combine_codes([codes[f] for f in factors])
            width = int(inv.max()) + 1
            z_index.append(inv + q)
            self.terms.append(Term(":".join(factors), tuple(factors), "random", np.arange(p + q, p + q + width)))
            q += width
        self.p, self.q = p, q
        if q:
            rows = np.repeat(np.arange(ng), len(z_index))
            colidx = np.stack(z_index, axis=1).ravel()
            self.Z = sparse.csr_matrix((np.ones(len(rows)), (rows, colidx)), shape=(ng, q))
        else:
            self.Z = sparse.csr_matrix((ng, 0))
        W = counts[:, None]
        G = np.empty((p + q, p + q))
        G[:p, :p] = X.T @ (X * W)
        if q:
            ZtWX = np.asarray(self.Z.T @ (X * W))
            G[p:, :p] = ZtWX
            G[:p, p:] = ZtWX.T
            G[p:, p:] = (self.Z.T @ sparse.diags(counts) @ self.Z).toarray()
        self.G = G
        self.c = np.concatenate([X.T @ sums, np.asarray(self.Z.T @ sums).ravel()])
        self.yy = float(sumsq.sum())
        kept: list[int] = []
        for term in self.terms:
            new = _independent(G, term.columns, np.array(kept, int))
            term.kept = new
            kept.extend(new.tolist())
        self.rank = len(kept)

    # ----------------------------------------------------------------------------- helpers
    def term(self, name: str) -> Term:
        return next(t for t in self.terms if t.name == name)

    def columns(self, terms: list[Term]) -> np.ndarray:
        return np.concatenate([t.kept for t in terms]) if terms else np.zeros(0, int)

    def rank_of(self, cols: np.ndarray) -> int:
        return _rank(self.G[np.ix_(cols, cols)])

    def rss(self, cols: np.ndarray, c: np.ndarray | None = None, yy: np.ndarray | float | None = None) -> np.ndarray:
        """Residual sum of squares of the least-squares fit on ``cols`` (one per column of ``c``)."""
        c = self.c[:, None] if c is None else c
        yy = self.yy if yy is None else yy
        if len(cols) == 0:
            return np.asarray(yy, float) * np.ones(c.shape[1])
        Lc = linalg.cholesky(self.G[np.ix_(cols, cols)], lower=True, check_finite=False)
        v = linalg.solve_triangular(Lc, c[cols], lower=True, check_finite=False)
        return yy - np.einsum("ij,ij->j", v, v)

    def fitted(self, cols: np.ndarray) -> np.ndarray:
        """Least-squares fitted values per group on the columns ``cols``."""
        coef = linalg.solve(self.G[np.ix_(cols, cols)], self.c[cols], assume_a="pos")
        full = np.zeros(self.p + self.q)
        full[cols] = coef
        return self.X @ full[: self.p] + (self.Z @ full[self.p:] if self.q else 0.0)

    def aliased_with(self, term: Term, earlier: list[Term]) -> list[str]:
        """Earlier terms whose removal would let ``term`` add columns (what it is aliased with)."""
        names = []
        base = np.concatenate([t.columns for t in earlier])
        r_base = self.rank_of(base)
        r_base_t = self.rank_of(np.concatenate([base, term.columns]))
        for s in earlier:
            if s.kind == "intercept":
                continue
            others = np.concatenate([t.columns for t in earlier if t is not s])
            if self.rank_of(np.concatenate([others, term.columns])) > self.rank_of(others) and r_base == r_base_t:
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
        """Henderson's method III: each random term's sum of squares adjusted for all else.

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
            df_k = len(_independent(self.G, t.columns, rest))
            Gz = self.G[np.ix_(t.columns, t.columns)]
            B = self.G[np.ix_(rest, t.columns)]
            Lc = linalg.cholesky(self.G[np.ix_(rest, rest)], lower=True, check_finite=False)
            V = linalg.solve_triangular(Lc, B, lower=True, check_finite=False)
            trace = float(np.trace(Gz) - np.sum(V * V))
            out[t.name] = (r_k - df_k * sigma2) / trace if trace > 0 else 0.0
        return out, sigma2


class Mixed:
    """REML for ``y = X b + sum_k Z_k u_k + e`` with independent random terms.

    The profiled REML deviance is computed as in lme4 from one Cholesky factorisation of
    the augmented matrix ``[[Lam Z'Z Lam + I, Lam Z'X, Lam Z'y], [., X'X, X'y], [., ., y'y]]``
    where ``Lam`` holds the relative standard deviations ``theta_k = sigma_k / sigma``. Its
    gradient is analytic (``tr(P Z_k Z_k')`` and ``|Z_k' P y|^2`` from the same
    factorisation), so the optimiser needs no bounded search and works at any ratio of
    components; the optimum is polished by Newton steps on ``log theta``.
    """

    def __init__(self, engine: Engine, fixed_cols: np.ndarray, random_terms: list[Term]):
        self.e = engine
        self.x = fixed_cols
        self.terms = random_terms
        self.z = np.concatenate([t.columns for t in random_terms]) if random_terms else np.zeros(0, int)
        self.sizes = np.array([len(t.columns) for t in random_terms], int)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        idx = np.concatenate([self.z, self.x])
        self.idx = idx
        self.G = engine.G[np.ix_(idx, idx)]
        self.q = len(self.z)
        self.p = len(self.x)
        self.n = engine.n
        self._cache: dict[bytes, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}

    def data(self, c: np.ndarray | None, yy: float | None) -> tuple[np.ndarray, float]:
        return (self.e.c[self.idx] if c is None else c), (self.e.yy if yy is None else yy)

    def _active(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Active terms (theta > 0), the positions of their columns and of X within ``idx``, and the
        cross-product blocks on those positions (cached per active set: the optimiser revisits them).

        A term with ``theta_k = 0`` contributes an identity block with no coupling to the rest
        of the coefficient matrix, so it is left out of the factorisation: exact, and much
        cheaper when many seed x factor terms sit at the boundary.
        """
        act = np.flatnonzero(theta > 0)
        key = act.tobytes()
        cached = self._cache.get(key)
        if cached is None:
            zpos = [np.arange(self.offsets[j], self.offsets[j + 1]) for j in act]
            pos = np.concatenate(zpos + [np.arange(self.q, self.q + self.p)]) if len(zpos) else np.arange(self.q, self.q + self.p)
            cached = (act, pos, self.G[np.ix_(pos, pos)], self.G[: self.q, pos[: int(self.sizes[act].sum())]])
            if len(self._cache) >= 32:  # bounded: each entry holds a block of G (up to a few MB)
                self._cache.clear()
            self._cache[key] = cached
        return cached

    def evaluate(self, theta: np.ndarray, c: np.ndarray, yy: float, grad: bool = True) -> dict[str, Any]:
        """Profiled REML deviance at ``theta`` and, with ``grad``, its gradient and the pieces for inference.

        The gradient uses ``Lam Z' P Z Lam = I - T_zz`` (``T`` the inverse of the mixed-model
        coefficient matrix) and ``Z' P y = Z'(y - X b - Z u)``; terms at ``theta_k = 0`` have a
        zero gradient and are left out of the factorisation.
        """
        theta = np.abs(np.asarray(theta, float))
        q, p, k = self.q, self.p, len(self.terms)
        act, pos, Ga, Gza = self._active(theta)
        sizes = self.sizes[act]
        qa = int(sizes.sum())
        ca = c[pos]
        lam = np.repeat(theta[act], sizes)
        M = np.empty((qa + p + 1, qa + p + 1))
        M[: qa + p, : qa + p] = Ga
        M[: qa + p, -1] = ca
        M[-1, : qa + p] = ca
        M[-1, -1] = yy
        M[:qa, :] *= lam[:, None]
        M[:, :qa] *= lam[None, :]
        M[np.arange(qa), np.arange(qa)] += 1.0
        L = linalg.cholesky(M, lower=True, check_finite=False)
        d = np.diag(L)
        pwrss = float(d[-1] ** 2)
        nu = self.n - p
        out: dict[str, Any] = {"pwrss": pwrss, "sigma2": pwrss / nu}
        if pwrss <= 0:
            out["dev"] = np.inf
            return out
        out["dev"] = float(2 * np.sum(np.log(d[:-1])) + nu * (1 + np.log(2 * np.pi * pwrss / nu)))
        L1 = L[:-1, :-1]
        s = linalg.solve_triangular(L1.T, L[-1, :-1], lower=False, check_finite=False)
        u_a = lam * s[:qa]
        beta = s[qa:]
        u = np.zeros(q)
        u[pos[:qa]] = u_a
        out["beta"], out["u"] = beta, u
        if not grad:
            # T_xx = (L_xx^-1)' L_xx^-1: the x block of the inverse of a block-triangular factor.
            Lx, info = linalg.lapack.dtrtri(L1[qa:, qa:], lower=1)
            if info != 0:
                raise linalg.LinAlgError("singular mixed-model coefficient matrix")
            out["Txx"] = Lx.T @ Lx
            return out
        Linv, info = linalg.lapack.dtrtri(L1, lower=1)
        if info != 0:
            raise linalg.LinAlgError("singular mixed-model coefficient matrix")
        Lx = Linv[qa:, qa:]
        out["Txx"] = Lx.T @ Lx
        out["Linv"], out["pos"], out["lam"] = Linv, pos, lam
        zr = c[:q] - Gza @ u_a - self.G[:q, q:] @ beta
        tr_k, zr2 = np.zeros(k), np.zeros(k)
        if k:
            zr2 = np.add.reduceat(zr * zr, self.offsets[:-1])
            if qa:
                tdiag = np.einsum("ij,ij->j", Linv[:, :qa], Linv[:, :qa])
                off = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
                tr_k[act] = np.add.reduceat(1.0 - tdiag, off)
        out["trace"] = tr_k  # q_k - tr(T_kk) = theta_k^2 tr(Z_k' P Z_k)
        out["zr2"] = zr2  # |Z_k' P y|^2 in units where P = sigma^2 V^-1
        g = np.zeros(k)
        on = theta > 0
        g[on] = 2 * tr_k[on] / theta[on] - 2 * theta[on] * zr2[on] / out["sigma2"]
        out["grad"] = g
        return out

    def boundary_scores(self, theta: np.ndarray, c: np.ndarray, yy: float) -> np.ndarray:
        """``d dev / d sigma_k^2 * sigma^2`` at ``theta`` for the terms at 0 (NaN for the others).

        A negative score means the deviance falls as the term leaves 0: it belongs inside.
        Computed from the active factorisation: ``tr(Z_k' P Z_k) = tr(Z_k'Z_k) -
        tr(B_k' T B_k)`` with ``B_k`` the cross-products of the active columns with Z_k.
        """
        theta = np.abs(np.asarray(theta, float))
        ev = self.evaluate(theta, c, yy)
        Linv, pos, lam = ev["Linv"], ev["pos"], ev["lam"]
        qa = len(lam)
        out = np.full(len(self.terms), np.nan)
        for j in np.flatnonzero(theta == 0):
            cols = np.arange(self.offsets[j], self.offsets[j + 1])
            B = self.G[np.ix_(pos, cols)].copy()
            B[:qa] *= lam[:, None]
            W = Linv @ B
            tr = float(np.trace(self.G[np.ix_(cols, cols)]) - np.sum(W * W))
            out[j] = tr - ev["zr2"][j] / ev["sigma2"]
        return out

    def deviance(self, theta: np.ndarray, c: np.ndarray, yy: float) -> float:
        try:
            return self.evaluate(theta, c, yy, grad=False)["dev"]
        except linalg.LinAlgError:
            return np.inf

    def _fun(self, x: np.ndarray, scale: np.ndarray, c: np.ndarray, yy: float) -> tuple[float, np.ndarray]:
        try:
            ev = self.evaluate(x * scale, c, yy)
        except linalg.LinAlgError:
            return np.inf, np.zeros_like(x)
        if not np.isfinite(ev["dev"]):
            return np.inf, np.zeros_like(x)
        return ev["dev"], ev["grad"] * scale

    def _polish(self, theta: np.ndarray, c: np.ndarray, yy: float, steps: int = 20) -> np.ndarray:
        """Newton steps on ``log theta`` of the interior components (finite-difference Hessian of the analytic gradient)."""
        try:
            return self._newton(theta.copy(), c, yy, steps)
        except linalg.LinAlgError:
            return theta

    def _newton(self, theta: np.ndarray, c: np.ndarray, yy: float, steps: int) -> np.ndarray:
        for _ in range(steps):
            act = np.flatnonzero(theta > 0)
            if len(act) == 0:
                return theta
            ev = self.evaluate(theta, c, yy)
            g = ev["grad"][act] * theta[act]
            H = np.empty((len(act), len(act)))
            for i, j in enumerate(act):
                h = 1e-5
                tp, tm = theta.copy(), theta.copy()
                tp[j] *= math.exp(h)
                tm[j] *= math.exp(-h)
                gp = self.evaluate(tp, c, yy)["grad"][act] * tp[act]
                gm = self.evaluate(tm, c, yy)["grad"][act] * tm[act]
                H[:, i] = (gp - gm) / (2 * h)
            H = (H + H.T) / 2
            try:
                w, V = linalg.eigh(H)
            except linalg.LinAlgError:
                return theta
            w = np.maximum(np.abs(w), 1e-8 * max(1.0, np.abs(w).max()))
            step = -(V @ ((V.T @ g) / w))
            step = np.clip(step, -5, 5)
            f0 = ev["dev"]
            t = 1.0
            while t > 1e-6:
                new = theta.copy()
                new[act] = theta[act] * np.exp(t * step)
                if self.deviance(new, c, yy) <= f0 + 1e-12 * abs(f0):
                    break
                t /= 2
            else:
                return theta
            theta = new
            if np.max(np.abs(t * step)) < 1e-10:
                break
        return theta

    def _minimise(self, start: np.ndarray, scale: np.ndarray, c: np.ndarray, yy: float, quick: bool) -> np.ndarray:
        res = optimize.minimize(self._fun, start / scale, args=(scale, c, yy), jac=True, method="L-BFGS-B",
                                bounds=[(0.0, None)] * len(start),
                                options={"ftol": 1e-12 if quick else 1e-15, "gtol": 1e-9, "maxiter": 500})
        return np.abs(res.x) * scale

    def _snap(self, theta: np.ndarray, c: np.ndarray, yy: float) -> np.ndarray:
        """Set a component near 0 to exactly 0 when that does not raise the deviance."""
        base = None
        for j in range(len(theta)):
            if 0 < theta[j] < 1e-2 * max(1.0, float(np.max(theta))):
                t0 = theta.copy()
                t0[j] = 0.0
                base = self.deviance(theta, c, yy) if base is None else base
                d0 = self.deviance(t0, c, yy)
                if d0 <= base + 1e-10:
                    theta, base = t0, d0
        return theta

    def fit(self, c: np.ndarray | None = None, yy: float | None = None, start: np.ndarray | None = None,
            quick: bool = False, scale: np.ndarray | None = None) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
        """REML estimates: (component variances, residual variance, fixed coefficients, theta).

        ``start`` (relative SDs, e.g. from the method of moments) sets the scale of each
        component for the optimiser, so components that differ by a factor 1e6 in variance
        are found as easily as equal ones. A component is set to exactly 0 (the boundary)
        when that does not increase the deviance.
        """
        c, yy = self.data(c, yy)
        k = len(self.terms)
        if k:
            s0 = np.ones(k) if start is None else np.asarray(start, float).copy()
            if scale is None:
                scale = np.where(s0 > 1e-3, s0, 1e-1)
                s0 = np.where(s0 > 1e-3, s0, 0.5 * scale)
            theta = self._minimise(s0, scale, c, yy, quick)
            if not quick:
                theta = self._polish(theta, c, yy)
            theta = self._snap(theta, c, yy)
            # A term at 0 whose score says the deviance falls as it leaves 0 is let back in.
            if np.any(theta == 0):
                scores = self.boundary_scores(theta, c, yy)
                enter = np.flatnonzero(scores < -1e-8 * max(1.0, abs(self.deviance(theta, c, yy))))
                if len(enter):
                    t2 = theta.copy()
                    t2[enter] = 0.3 * scale[enter]
                    theta = self._minimise(t2, scale, c, yy, quick)
                    if not quick:
                        theta = self._polish(theta, c, yy)
                    theta = self._snap(theta, c, yy)
        else:
            theta = np.zeros(0)
        ev = self.evaluate(theta, c, yy, grad=False)
        sigma2 = ev["sigma2"]
        return theta**2 * sigma2, float(sigma2), ev["beta"], theta

    # ----------------------------------------------------------------------------- inference
    def _unprofiled_grad(self, gamma: np.ndarray, sigma2: float, active: np.ndarray, c: np.ndarray,
                         yy: float) -> tuple[np.ndarray, np.ndarray]:
        """Gradient of the REML deviance in (gamma_active, sigma2), and ``T_xx`` at ``gamma``."""
        theta = np.sqrt(np.maximum(gamma, 0))
        ev = self.evaluate(theta, c, yy)
        g = np.empty(len(active) + 1)
        for i, j in enumerate(active):
            g[i] = ev["trace"][j] / gamma[j] - ev["zr2"][j] / sigma2
        nu = self.n - self.p
        g[-1] = nu / sigma2 - ev["pwrss"] / sigma2**2
        return g, ev["Txx"]

    def satterthwaite_parts(self, theta: np.ndarray, sigma2: float, c: np.ndarray | None = None,
                            yy: float | None = None) -> dict[str, Any]:
        """``cov(beta)``, its derivatives in the variance parameters and their asymptotic covariance.

        As lmerTest: the variance parameters' covariance is twice the inverse Hessian of the
        REML deviance at the optimum; components at the boundary are held at 0 (their
        derivative is zero in lme4's ``theta`` parameterisation). The Hessian is taken in
        ``(sigma_k^2, sigma^2)``, which gives the same degrees of freedom at the optimum.
        """
        c, yy = self.data(c, yy)
        gamma = np.asarray(theta, float) ** 2
        active = np.flatnonzero(gamma > 0)
        phi = np.concatenate([gamma[active] * sigma2, [sigma2]])  # component variances, residual variance
        m = len(phi)
        H = np.empty((m, m))
        dV: list[np.ndarray] = []
        _, Txx = self._unprofiled_grad(gamma, sigma2, active, c, yy)
        for i in range(m):
            h = 1e-4 * phi[i]
            grads, txs = [], []
            for sgn in (1, -1):
                ph = phi.copy()
                ph[i] += sgn * h
                s2 = ph[-1]
                gam = gamma.copy()
                gam[active] = ph[:-1] / s2
                g, tx = self._unprofiled_grad(gam, s2, active, c, yy)
                # chain rule from (gamma, sigma2) to (variances, sigma2)
                gv = g.copy()
                gv[:-1] = g[:-1] / s2
                gv[-1] = g[-1] - np.sum(g[:-1] * gam[active]) / s2
                grads.append(gv)
                txs.append(s2 * tx)
            H[:, i] = (grads[0] - grads[1]) / (2 * h)
            dV.append((txs[0] - txs[1]) / (2 * h))
        H = (H + H.T) / 2
        try:
            A = 2 * linalg.inv(H)
        except linalg.LinAlgError:
            A = 2 * linalg.pinv(H)
        return {"V": sigma2 * Txx, "dV": dV, "A": A}


def satterthwaite_test(beta: np.ndarray, parts: dict[str, Any], Lmat: np.ndarray) -> tuple[float, int, float]:
    """lmerTest's F test of ``L beta = 0``: (F, numerator df, Satterthwaite denominator df)."""
    V, dV, A = parts["V"], parts["dV"], parts["A"]
    VL = Lmat @ V @ Lmat.T
    w, P = linalg.eigh((VL + VL.T) / 2)
    keep = w > 1e-12 * max(w.max(), 1e-300)
    w, P = w[keep], P[:, keep]
    qd = len(w)
    if qd == 0:
        return float("nan"), 0, float("nan")
    PL = P.T @ Lmat
    t2 = (PL @ beta) ** 2 / w
    nus = []
    for m in range(qd):
        lm = PL[m]
        g = np.array([lm @ D @ lm for D in dV])
        var = float(g @ A @ g)
        nus.append(2 * w[m] ** 2 / var if var > 0 else float("inf"))
    F = float(t2.sum() / qd)
    nus_a = np.array(nus)
    if qd == 1:
        den = float(nus_a[0])
    elif np.all(np.abs(nus_a - nus_a[0]) < 1e-8):
        den = float(nus_a[0])
    elif np.any(nus_a <= 2):
        den = 2.0
    else:
        E = float(np.sum(nus_a / (nus_a - 2)))
        den = 2 * E / (E - qd)
    return F, qd, den


def interaction_terms(factors: list[str], order: int) -> list[tuple[str, ...]]:
    """Main effects and interactions up to ``order``, lower order first."""
    out: list[tuple[str, ...]] = []
    for k in range(1, min(order, len(factors)) + 1):
        out.extend(combinations(factors, k))
    return out
