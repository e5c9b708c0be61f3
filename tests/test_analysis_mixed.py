"""Mixed models: published examples, REML at any ratio, the random terms chosen, the smaller fixes.

Sources of the data and of every reference number: tests/data/analysis/README.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import linalg, optimize

from orchestrator.analysis import AnalysisError, analyze

DATA = Path(__file__).parent / "data" / "analysis"


def sig(value: float, ref: float, digits: int = 3) -> bool:
    """``value`` equals ``ref`` to ``digits`` significant digits."""
    return float(f"{value:.{digits}g}") == float(f"{ref:.{digits}g}")


def rows(res):
    return {r["term"]: r for r in res.anova}


def comps(res):
    return {v["component"]: v["variance"] for v in res.variance_components}


# ----------------------------------------------------------------------------- published examples
def test_machines_fixed_crossed_with_random_and_their_interaction():
    # nlme::Machines (Milliken & Johnson 1992; Pinheiro & Bates 2000, sec. 1.3).
    # R: summary(aov(score ~ Machine + Error(Worker/Machine))) -> Machine F 20.57608 on (2, 10),
    #    p 0.00028555; lmer REML: Worker 22.85844, Worker:Machine 13.90946, Residual 0.9246296.
    df = pd.read_csv(DATA / "machines.csv")
    res = analyze(df, "score", fixed=["Machine"], random=["Worker"], bootstrap=0)
    assert [r["term"] for r in res.model["random_terms"]] == ["Worker", "Worker:Machine"]
    assert res.model["random_terms"][1]["origin"] == "seed_interactions=main"
    m = rows(res)["Machine"]
    assert sig(m["F"], 20.57608) and m["den_df"] == 10 and sig(m["p"], 0.00028555)
    assert m["error_term"] == "Worker:Machine"
    vc = comps(res)
    assert sig(vc["Worker"], 22.85844) and sig(vc["Worker:Machine"], 13.90946) and sig(vc["Residual"], 0.9246296)
    assert "den df" in res.summary() and "Random terms in the model: Worker, Worker:Machine" in res.summary()
    # The additive model the analysis used before (seed_interactions="none") tests Machine
    # against the pooled residual: an F several times too large on the wrong df.
    additive = analyze(df, "score", fixed=["Machine"], random=["Worker"], bootstrap=0, seed_interactions="none")
    wrong = rows(additive)["Machine"]
    assert wrong["den_df"] == 46 and wrong["F"] > 4 * m["F"]
    # The same model written out: --random Worker,Worker:Machine gives the same test.
    explicit = analyze(df, "score", fixed=["Machine"], random="Worker,Worker:Machine", bootstrap=0,
                       seed_interactions="none")
    assert rows(explicit)["Machine"]["F"] == pytest.approx(m["F"], rel=1e-10)


def test_machines_with_lost_trials_matches_lmertest_satterthwaite():
    # R (tests/data/analysis/reference.R): Machines without rows 2, 5, 17, 30, 41 ->
    # anova(lmer(...)): Machine F 19.06273, DenDF 10.008364, p 0.00038611;
    # REML: Worker 21.42534, Worker:Machine 14.75663, Residual 0.8612440.
    df = pd.read_csv(DATA / "machines.csv").drop(index=[1, 4, 16, 29, 40])
    res = analyze(df, "score", fixed=["Machine"], random=["Worker"], bootstrap=0)
    m = rows(res)["Machine"]
    assert "Satterthwaite" in res.model["tests"]
    assert sig(m["F"], 19.06273) and sig(m["den_df"], 10.008364) and sig(m["p"], 0.00038611)
    vc = comps(res)
    assert sig(vc["Worker"], 21.42534) and sig(vc["Worker:Machine"], 14.75663) and sig(vc["Residual"], 0.8612440)


def test_penicillin_crossed_random_factors():
    # lme4::Penicillin (Davies & Goldsmith 1972; Bates 2010, ch. 2): plate 0.7169, sample 3.7311,
    # residual 0.3024 (R 4.2.2, lme4 1.1-31).
    df = pd.read_csv(DATA / "penicillin.csv")
    res = analyze(df, "diameter", random=["plate", "sample"], bootstrap=0)
    vc = comps(res)
    assert sig(vc["plate"], 0.7169051) and sig(vc["sample"], 3.7311318) and sig(vc["Residual"], 0.3024150)
    # Balanced with positive components: REML is the ANOVA estimator, exactly.
    mom = {v["component"]: v["mom_variance"] for v in res.variance_components}
    assert vc["sample"] == pytest.approx(mom["sample"], rel=1e-8)
    assert vc["plate"] == pytest.approx(mom["plate"], rel=1e-8)


def test_ham_unbalanced_matches_lmertest_type3_satterthwaite():
    # lmerTest::ham (Kuznetsova et al. 2017, JSS 82(13)); lmerTest 3.1-3 anova() of
    # lmer(Informed.liking ~ Product*Information*Gender + (1|Consumer) + (1|Consumer:Product)
    #      + (1|Consumer:Information)).
    expected = {  # term: (F, DenDF, p)
        "Product": (3.81928, 236.999805, 0.010628),
        "Information": (3.29103, 79.000006, 0.073456),
        "Gender": (0.87894, 78.999998, 0.351350),
        "Product:Information": (2.21925, 237.000130, 0.086570),
        "Product:Gender": (0.34837, 236.999805, 0.790360),
        "Information:Gender": (0.71875, 79.000006, 0.399116),
        "Product:Information:Gender": (1.27412, 237.000130, 0.283904),
    }
    df = pd.read_csv(DATA / "ham.csv")
    res = analyze(df, "Informed.liking", fixed=["Product", "Information", "Gender"], random=["Consumer"],
                  interactions=3, bootstrap=0)
    # Gender is constant within a consumer: no Consumer:Gender term is proposed.
    assert [r["term"] for r in res.model["random_terms"]] == ["Consumer", "Consumer:Product", "Consumer:Information"]
    got = rows(res)
    for term, (F, den, p) in expected.items():
        assert sig(got[term]["F"], F) and sig(got[term]["den_df"], den) and sig(got[term]["p"], p), term
    vc = comps(res)
    assert sig(vc["Consumer"], 0.3186037) and sig(vc["Consumer:Product"], 3.2450461)
    assert sig(vc["Consumer:Information"], 0.09767585) and sig(vc["Residual"], 1.5674932)


# ----------------------------------------------------------------------------- REML at any ratio
@pytest.mark.parametrize("ratio", [1e-3, 1.0, 1e3])
def test_reml_equals_anova_estimator_on_balanced_one_way_at_any_sd_ratio(ratio):
    rng = np.random.default_rng(11)
    groups, per = 20, 5
    u = rng.normal(0, ratio, groups)
    df = pd.DataFrame({"seed": np.repeat(np.arange(groups), per)})
    df["y"] = 3.0 + u[df.seed] + rng.normal(0, 1.0, len(df))
    res = analyze(df, "y", random=["seed"], bootstrap=0)
    means = df.groupby("seed")["y"].mean()
    msw = float(((df.y - df.seed.map(means)) ** 2).sum() / (len(df) - groups))
    msb = float(per * ((means - df.y.mean()) ** 2).sum() / (groups - 1))
    vc = comps(res)
    assert vc["Residual"] == pytest.approx(msw, rel=1e-6)
    if msb > msw:
        assert vc["seed"] == pytest.approx((msb - msw) / per, rel=1e-6)
    else:
        assert vc["seed"] == 0.0 and any("boundary" in n for n in res.notes)


def dense_reml(y: np.ndarray, X: np.ndarray, Zs: list[np.ndarray], start: np.ndarray) -> np.ndarray:
    """REML by brute force on n x n matrices (log variances, BFGS): an independent check."""
    n, p = X.shape

    def nll(logv):
        v = np.exp(logv)
        V = v[-1] * np.eye(n) + sum(vk * Z @ Z.T for vk, Z in zip(v[:-1], Zs))
        Lv = linalg.cholesky(V, lower=True)
        Vi_X = linalg.cho_solve((Lv, True), X)
        Vi_y = linalg.cho_solve((Lv, True), y)
        XVX = X.T @ Vi_X
        b = linalg.solve(XVX, X.T @ Vi_y)
        r = y - X @ b
        return (2 * np.sum(np.log(np.diag(Lv))) + np.linalg.slogdet(XVX)[1]
                + r @ linalg.cho_solve((Lv, True), r))

    res = optimize.minimize(nll, np.log(start), method="BFGS", options={"gtol": 1e-10, "maxiter": 2000})
    res = optimize.minimize(nll, res.x, method="Nelder-Mead",
                            options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 20000, "maxfev": 20000})
    return np.exp(res.x)


def test_reml_equals_dense_direct_reml_on_unbalanced_crossed_data():
    rng = np.random.default_rng(4)
    a, b = rng.normal(0, 1.0, 6), rng.normal(0, 0.6, 5)
    rows_ = [(i, j, d, 1.0 * d + a[i] + b[j] + rng.normal(0, 0.5)) for i in range(6) for j in range(5)
             for d in (0, 1) for _ in range(2)]
    df = pd.DataFrame(rows_, columns=["ra", "rb", "d", "y"]).sample(frac=0.75, random_state=2).reset_index(drop=True)
    res = analyze(df, "y", fixed=["d"], random=["ra", "rb"], bootstrap=0, seed_interactions="none")
    vc = comps(res)
    X = np.column_stack([np.ones(len(df)), np.where(df.d == 0, 1.0, -1.0)])
    Zs = [np.eye(6)[df.ra], np.eye(5)[df.rb]]
    dense = dense_reml(df.y.to_numpy(), X, Zs, np.array([0.5, 0.5, 0.5]))
    assert vc["ra"] == pytest.approx(dense[0], rel=1e-6)
    assert vc["rb"] == pytest.approx(dense[1], rel=1e-6)
    assert vc["Residual"] == pytest.approx(dense[2], rel=1e-6)


def test_reml_gradient_is_the_derivative_of_the_deviance():
    from orchestrator.analysis._engine import Engine

    rng = np.random.default_rng(8)
    n = 90
    codes = {"A": rng.integers(0, 3, n), "s": rng.integers(0, 7, n), "t": rng.integers(0, 4, n)}
    y = rng.normal(size=n) + codes["s"] * 0.3
    from orchestrator.analysis._engine import group_trials

    g = group_trials(y, codes)
    eng = Engine(g["codes"], {"A": 3, "s": 7, "t": 4}, [("A",)], [("s",), ("t",), ("s", "A")], g["counts"],
                 g["sums"], g["sumsq"])
    mixed = eng.mixed_parts([t for t in eng.terms if t.kind == "random"])
    c, yy = mixed.data(None, None)
    theta = np.array([0.7, 0.3, 1.2])
    grad = mixed.evaluate(theta, c, yy)["grad"]
    for j in range(3):
        h = 1e-6
        tp, tm = theta.copy(), theta.copy()
        tp[j] += h
        tm[j] -= h
        numeric = (mixed.deviance(tp, c, yy) - mixed.deviance(tm, c, yy)) / (2 * h)
        assert grad[j] == pytest.approx(numeric, rel=1e-5, abs=1e-7)


# ----------------------------------------------------------------------------- which random terms
def crossed(seed: int, seeds: int = 6, reps: int = 2, var_int: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    u = rng.normal(0, 1, seeds)
    w = rng.normal(0, math.sqrt(var_int), (seeds, 3)) if var_int else np.zeros((seeds, 3))
    rows_ = [(a, s, u[s] + w[s, a] + rng.normal(0, 0.3)) for a in range(3) for s in range(seeds) for _ in range(reps)]
    return pd.DataFrame(rows_, columns=["opt", "seed_init", "loss"])


def test_seed_interaction_is_added_only_when_the_design_can_estimate_it():
    two = analyze(crossed(0, reps=2), "loss", fixed=["opt"], random=["seed_init"], bootstrap=0)
    assert [r["term"] for r in two.model["random_terms"]] == ["seed_init", "seed_init:opt"]
    one = analyze(crossed(0, reps=1), "loss", fixed=["opt"], random=["seed_init"], bootstrap=0)
    assert [r["term"] for r in one.model["random_terms"]] == ["seed_init"]
    assert any("seed_init:opt cannot be told apart from the residual" in n for n in one.notes)
    # One trial per seed x cell but a second fixed factor: seed:A is estimable (repeated measures).
    df = crossed(1, reps=1)
    noise = np.random.default_rng(9).normal(0, 0.3, (2, len(df)))
    df = pd.concat([df.assign(bs=b, loss=df.loss + 0.1 * b + noise[b]) for b in range(2)], ignore_index=True)
    two_f = analyze(df, "loss", fixed=["opt", "bs"], random=["seed_init"], bootstrap=0)
    assert [r["term"] for r in two_f.model["random_terms"]] == ["seed_init", "seed_init:opt", "seed_init:bs"]
    # npk's blocks hold half of the cells each: not crossed, no block x treatment terms.
    npk = pd.read_csv(DATA / "npk.csv")
    res = analyze(npk, "yield", fixed=["N", "P", "K"], random=["block"], bootstrap=0)
    assert [r["term"] for r in res.model["random_terms"]] == ["block"]
    assert any('"block" is not crossed with the cells of N x P x K (only 50%' in n for n in res.notes)
    off = analyze(crossed(0), "loss", fixed=["opt"], random=["seed_init"], bootstrap=0, seed_interactions="none")
    assert off.model["seed_interactions"] == "none" and len(off.model["random_terms"]) == 1


def test_random_interaction_terms_are_validated():
    df = crossed(0)
    with pytest.raises(AnalysisError, match=r'random term "seed_init:optt": its column "optt" is not in the table. '
                                             r'Did you mean "opt"\?'):
        analyze(df, "loss", fixed=["opt"], random=["seed_init", "seed_init:optt"])
    with pytest.raises(AnalysisError, match=r'random term "opt:opt" is not of the form A:B with distinct'):
        analyze(df, "loss", fixed=["opt"], random=["opt:opt"])
    with pytest.raises(AnalysisError, match=r"seed_interactions must be one of none, main, found 'mian'. "
                                             r'Did you mean "main"\?'):
        analyze(df, "loss", fixed=["opt"], random=["seed_init"], seed_interactions="mian")
    df2 = df.assign(dtype=np.tile(["a", "b"], len(df) // 2))
    with pytest.raises(AnalysisError, match=r'random term "opt:dtype" has only fixed factors'):
        analyze(df2, "loss", fixed=["opt", "dtype"], random=["opt:dtype"])


def test_interaction_variance_moves_the_test_of_the_factor_and_its_share():
    df = crossed(3, seeds=8, reps=3, var_int=1.0)
    res = analyze(df, "loss", fixed=["opt"], random=["seed_init"], bootstrap=0)
    vc = comps(res)
    assert vc["seed_init:opt"] > 0.3
    assert rows(res)["opt"]["error_term"] == "seed_init:opt" and rows(res)["opt"]["den_df"] == 14
    shares = {s["source"]: s["share"] for s in res.shares}
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["seed_init:opt"] > shares["opt"]


# ----------------------------------------------------------------------------- smaller fixes
def test_missing_response_is_its_own_outcome_not_divergence():
    rows_ = []
    for dose in ("lo", "hi"):
        for i in range(20):
            rows_.append({"dose": dose, "loss": np.nan if (dose == "hi" and i < 8) else 1.0 + 0.01 * i,
                          "diverged": 0, "state": "FINISHED"})
    res = analyze(pd.DataFrame(rows_), "loss", fixed=["dose"], bootstrap=0)
    f = res.failures
    assert f["missing"] == 8 and f["diverged"] == 0
    by = {r["dose"]: r for r in f["by_factor"]["dose"]["levels"]}
    assert by["hi"]["missing"] == 8 and by["hi"]["divergence_rate"] == 0
    assert f["by_factor"]["dose"]["tests"]["diverged"]["p"] == 1.0
    assert any("8 finished trial(s) have no value (missing or NaN) of loss: they are counted as missing (not as "
               "diverged)" in n for n in res.notes)
    assert res.n == 32
    inf_rows = pd.DataFrame(rows_).fillna(np.inf)
    assert analyze(inf_rows, "loss", fixed=["dose"], bootstrap=0).failures["diverged"] == 8


def test_spread_tests_need_groups_of_three():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"A": ["x", "x", "y", "y", "z", "z"] * 1, "B": ["p", "q"] * 3, "loss": rng.normal(size=6)})
    res = analyze(df, "loss", fixed=["A"], bootstrap=0)
    assert all("brown_forsythe" not in s for s in res.spread)
    assert not any("spread of loss depends" in n for n in res.notes)


@pytest.mark.parametrize("scale", [1e-300, 1e-150, 1e150, 1e300])
def test_tiny_and_huge_response_scales(scale):
    df = crossed(2, reps=2)
    base = analyze(df, "loss", fixed=["opt"], random=["seed_init"], bootstrap=0)
    res = analyze(df.assign(loss=df.loss * scale + (scale if scale < 1e300 else 0)), "loss", fixed=["opt"],
                  random=["seed_init"], bootstrap=0)
    assert rows(res)["opt"]["F"] == pytest.approx(rows(base)["opt"]["F"], rel=1e-6)
    for a, b in zip(res.shares, base.shares):
        assert a["share"] == pytest.approx(b["share"], rel=1e-6, abs=1e-9)
    json.dumps(res.to_dict(), allow_nan=False)


def test_one_lost_trial_keeps_the_hypotheses_and_says_which_tests_would_differ():
    df = pd.read_csv(DATA / "warpbreaks.csv")
    full = analyze(df, "breaks", fixed=["wool", "tension"], bootstrap=0)
    lost = analyze(df.drop(index=[5]), "breaks", fixed=["wool", "tension"], bootstrap=0)
    assert full.ss_type == 2 and "equal Type III" in full.ss_type_reason
    assert lost.ss_type == 3 and "same hypotheses as on the balanced design" in lost.ss_type_reason
    assert "only those of wool, tension (terms contained in an interaction) would differ under Type II" \
        in lost.ss_type_reason
    # The hypotheses are the same: the F of each term changes only a little.
    for term in ("wool", "tension", "wool:tension"):
        assert rows(lost)[term]["F"] == pytest.approx(rows(full)[term]["F"], rel=0.25)


def test_no_eta_squared_intervals_are_shown():
    res = analyze(crossed(0), "loss", fixed=["opt"], random=["seed_init"], bootstrap=20)
    for r in res.anova:
        assert r["eta_sq_ci"] is None and r["partial_eta_sq_ci"] is None and r["omega_sq_ci"] is None
    ci = {s["source"]: s["ci"] for s in res.shares}
    assert ci["Residual"] is not None and ci["opt"] is None  # fixed shares' intervals under-covered: withheld
