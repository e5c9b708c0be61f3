"""Simulation, degenerate inputs, errors, failures, spread and power of the analysis."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from orchestrator.analysis import AnalysisError, analyze, plan_replicates

DATA = Path(__file__).parent / "data" / "analysis"


def simulate(seed: int, seeds: int = 10, reps: int = 2, var_seed: float = 1.0, var_res: float = 1.0) -> pd.DataFrame:
    """Fixed factor A (effects -1, 0, 1) crossed with a random seed stream, plus noise."""
    rng = np.random.default_rng(seed)
    effects = {"a": -1.0, "b": 0.0, "c": 1.0}
    u = rng.normal(0, np.sqrt(var_seed), seeds)
    rows = [(a, j, e + u[j] + rng.normal(0, np.sqrt(var_res))) for a, e in effects.items() for j in range(seeds)
            for _ in range(reps)]
    return pd.DataFrame(rows, columns=["A", "seed_init", "loss"])


def json_clean(result) -> str:
    return json.dumps(result.to_dict(), allow_nan=False)  # raises on NaN/inf anywhere


# ----------------------------------------------------------------------------- simulation
def test_planted_effects_and_components_are_recovered():
    df = simulate(0, seeds=40, reps=5, var_seed=2.0, var_res=0.5)
    res = analyze(df, "loss", fixed=["A"], random=["seed_init"], bootstrap=100)
    vc = {v["component"]: v for v in res.variance_components}
    # 40 seed levels estimate the variance of the 40 effects actually drawn (1.271 here).
    realised = np.random.default_rng(0).normal(0, np.sqrt(2.0), 40).var(ddof=1)
    assert vc["seed_init"]["variance"] == pytest.approx(realised, rel=0.05)
    assert vc["seed_init"]["ci"][0] < realised < vc["seed_init"]["ci"][1]
    assert vc["Residual"]["variance"] == pytest.approx(0.5, rel=0.1)
    shares = {s["source"]: s for s in res.shares}
    # The fixed contribution of A is the variance of its effects over the design: 2/3.
    assert shares["A"]["variance"] == pytest.approx(2 / 3, rel=0.1)
    assert res.anova[0]["term"] == "A" and res.anova[0]["p"] < 1e-10
    assert sum(s["share"] for s in res.shares) == pytest.approx(1.0)
    json_clean(res)


def test_null_factor_gets_no_share_and_a_boundary_component_is_reported():
    rng = np.random.default_rng(5)
    df = pd.DataFrame({"A": np.repeat(["x", "y"], 40), "seed": np.tile(np.arange(8), 10),
                       "loss": rng.normal(0, 1, 80)})
    res = analyze(df, "loss", fixed=["A"], random=["seed"], bootstrap=50)
    vc = {v["component"]: v for v in res.variance_components}
    if vc["seed"]["variance"] == 0:
        assert vc["seed"]["boundary"] and vc["seed"]["ci"][0] == 0
        assert any("boundary" in n for n in res.notes)
    assert next(s for s in res.shares if s["source"] == "Residual")["share"] > 0.8


# ----------------------------------------------------------------------------- degenerate inputs
@pytest.fixture()
def warpbreaks():
    return pd.read_csv(DATA / "warpbreaks.csv")


def test_missing_cell_is_named_and_type3_is_used(warpbreaks):
    df = warpbreaks[~((warpbreaks.wool == "B") & (warpbreaks.tension == "H"))]
    res = analyze(df, "breaks", fixed=["wool", "tension"], bootstrap=20)
    assert res.ss_type == 3
    assert res.missing_cells == [{"wool": "B", "tension": "H"}]
    assert "1 missing cell(s): wool=B, tension=H" in res.ss_type_reason
    inter = next(r for r in res.anova if r["term"] == "wool:tension")
    assert inter["df"] == 1
    assert any("wool:tension is only partly estimable (1 of 2 df)" in n for n in res.notes)
    json_clean(res)


def test_factor_with_one_level_is_left_out_with_a_note(warpbreaks):
    df = warpbreaks.assign(machine="m1")
    res = analyze(df, "breaks", fixed=["wool", "tension", "machine"], bootstrap=0)
    assert [r["term"] for r in res.anova] == ["wool", "tension", "wool:tension", "Residual"]
    assert any('"machine" has a single level (m1)' in n for n in res.notes)


def test_constant_response_is_a_statement_not_a_nan_table(warpbreaks):
    res = analyze(warpbreaks.assign(breaks=3.0), "breaks", fixed=["wool", "tension"])
    assert res.anova == [] and res.shares == []
    assert any("constant (3)" in n for n in res.notes)
    json_clean(res)
    assert "constant" in res.summary()


def test_all_trials_diverged_gives_failure_table_and_a_note(warpbreaks):
    df = warpbreaks.assign(diverged=1)
    res = analyze(df, "breaks", fixed=["wool", "tension"])
    assert res.n == 0 and res.anova == []
    assert any("all 54 trials failed, diverged or have no breaks" in n for n in res.notes)
    assert res.failures["diverged"] == 54
    json_clean(res)


def test_no_residual_df_says_so(warpbreaks):
    one = warpbreaks.groupby(["wool", "tension"], as_index=False).first()
    res = analyze(one, "breaks", fixed=["wool", "tension"])
    assert any("no residual degrees of freedom" in n for n in res.notes)
    assert all(r["p"] is None for r in res.anova)
    json_clean(res)


def test_fractional_design_reports_aliases():
    # 2^(3-1) with C = A:B, 3 replicates: with aliases, only A, B, C are analysed.
    rng = np.random.default_rng(2)
    pts = [(-1, -1, 1), (1, -1, -1), (-1, 1, -1), (1, 1, 1)]
    df = pd.DataFrame([(a, b, c, 2 * a + c + rng.normal()) for a, b, c in pts for _ in range(3)],
                      columns=["A", "B", "C", "y"])
    aliases = {"A": ["B:C"], "B": ["A:C"], "C": ["A:B"]}
    res = analyze(df, "y", fixed=["A", "B", "C"], aliases=aliases, bootstrap=0)
    assert [r["term"] for r in res.anova] == ["A", "B", "C", "Residual"]
    assert res.anova[2]["aliases"] == ["A:B"] and res.ss_type == 2
    assert "C = A:B" in res.summary()
    # Without aliases the interactions are found to be aliased, not reported as effects.
    res2 = analyze(df, "y", fixed=["A", "B", "C"], bootstrap=0)
    assert any("A:B is not estimable: it is aliased with C" in n for n in res2.notes)


# ----------------------------------------------------------------------------- errors
def test_unknown_column_suggests_the_closest(warpbreaks):
    with pytest.raises(AnalysisError, match=r'fixed factor column "tensoin" is not in the table. Did you mean "tension"\?'):
        analyze(warpbreaks, "breaks", fixed=["wool", "tensoin"])


def test_every_problem_is_reported_at_once(warpbreaks):
    with pytest.raises(AnalysisError, match=r"3 problems") as err:
        analyze(warpbreaks, "wool", fixed=["wool", "tension"], random=["tension"])
    text = str(err.value)
    assert 'response "wool" must be numeric' in text
    assert '"tension" is declared both fixed and random' in text
    assert '"wool" is both the response and a factor' in text


def test_log_needs_positive_response(warpbreaks):
    with pytest.raises(AnalysisError, match=r"log transform needs a positive response, found 1 value"):
        analyze(warpbreaks.assign(breaks=warpbreaks.breaks - 10), "breaks", fixed=["wool"], log=True)


def test_no_factor_with_two_levels(warpbreaks):
    with pytest.raises(AnalysisError, match=r"every factor has fewer than 2 levels"):
        analyze(warpbreaks[warpbreaks.wool == "A"], "breaks", fixed=["wool"])
    with pytest.raises(AnalysisError, match=r"interactions must be a whole number >= 1"):
        analyze(warpbreaks, "breaks", fixed=["wool"], interactions=0)
    with pytest.raises(AnalysisError, match=r'spread_by must name a fixed factor.*Did you mean "wool"'):
        analyze(warpbreaks, "breaks", fixed=["wool"], spread_by="wol")


# ----------------------------------------------------------------------------- failures, spread, diagnostics
def test_divergence_rates_and_exact_tests():
    rows = []
    for dtype, p_div in (("fp32", 0.0), ("bf16", 0.3)):
        for lr in (0.1, 0.3):
            for i in range(20):
                div = int(dtype == "bf16" and i < 20 * p_div)
                rows.append({"dtype": dtype, "lr": lr, "state": "FINISHED", "diverged": div,
                             "final_loss": np.nan if div else 1.0 + 0.01 * i})
    rows[0]["state"] = "FAILED"
    df = pd.DataFrame(rows)
    res = analyze(df, "final_loss", fixed=["dtype", "lr"], bootstrap=0)
    f = res.failures
    assert f["failed"] == 1 and f["diverged"] == 12
    by = {r["dtype"]: r for r in f["by_factor"]["dtype"]["levels"]}
    assert by["bf16"]["divergence_rate"] == pytest.approx(12 / 40)
    expected = stats.fisher_exact([[0, 40], [12, 28]]).pvalue
    assert f["by_factor"]["dtype"]["tests"]["diverged"]["p"] == pytest.approx(expected)
    assert len(f["by_cell"]) == 4 and res.n == 80 - 13
    assert any("excluded from the response analysis" in n for n in res.notes)


def test_spread_by_level_detects_a_factor_that_changes_only_the_spread():
    rng = np.random.default_rng(7)
    rows = []
    for dtype, sd in (("fp32", 0.1), ("bf16", 0.4)):
        u = rng.normal(0, sd, 8)  # reduction-order seeds: spread depends on dtype
        for j in range(8):
            for _ in range(4):
                rows.append({"dtype": dtype, "seed_reduction": j, "loss": 2.0 + u[j] + rng.normal(0, sd / 2)})
    res = analyze(pd.DataFrame(rows), "loss", fixed=["dtype"], random=["seed_reduction"], bootstrap=0,
                  spread_by="dtype")
    entry = res.spread[0]
    assert entry["brown_forsythe"]["p"] < 0.01
    comp = {lv["level"]: lv["components"] for lv in entry["levels"]}
    assert comp["bf16"]["seed_reduction"] > 4 * comp["fp32"]["seed_reduction"]
    assert any("the spread of loss depends on dtype" in n for n in res.notes)
    assert "Spread by level of dtype" in res.summary()


def test_skewed_residuals_warn_and_offer_rank_tests():
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"A": np.repeat(["x", "y", "z"], 30), "loss": rng.lognormal(0, 1.2, 90)})
    res = analyze(df, "loss", fixed=["A"], bootstrap=0)
    assert res.diagnostics["assumptions_violated"]
    assert any("residuals do not look normal" in w and "--log" in w for w in res.warnings)
    assert {r["test"] for r in res.rank_based} == {"Kruskal-Wallis", "rank-transform ANOVA"}
    logged = analyze(df, "loss", fixed=["A"], bootstrap=0, log=True)
    assert not logged.diagnostics["assumptions_violated"]


# ----------------------------------------------------------------------------- power
def test_plan_replicates_matches_the_two_sample_t_test():
    # Two groups, difference 1 SD, power 0.8, alpha 0.05: 17 per group (textbook value).
    plan = plan_replicates(1.0, 1.0, {"dtype": 2})
    assert plan.rows[0]["replicates_per_cell"] == 17
    assert plan.rows[0]["achieved_power"] >= 0.8
    # Noise from a random component adds to the residual.
    assert plan_replicates(0.5, 1.0, {"dtype": 2}, components={"seed": 0.5}).rows[0]["replicates_per_cell"] == 17
    with pytest.raises(AnalysisError, match=r"effect_size must be a positive difference"):
        plan_replicates(1.0, 0.0, {"dtype": 2})


def test_plan_from_a_pilot_result():
    res = analyze(simulate(0), "loss", fixed=["A"], random=["seed_init"], bootstrap=0)
    plan = res.plan_replicates(effect_size=0.5)
    assert plan.rows[0]["term"] == "A" and plan.rows[0]["replicates_per_cell"] > 2
    assert plan.noise_variance == pytest.approx(sum(v["variance"] for v in res.variance_components))


def test_monte_carlo_exact_test_agrees_with_full_enumeration():
    from itertools import product as cartesian

    from scipy.special import comb

    from orchestrator.analysis.extras import exact_test

    table = np.array([[3, 17], [8, 12], [1, 19]])
    sizes, events = table.sum(axis=1), table[:, 0].sum()

    def prob(x):
        return np.prod([comb(n, k) for n, k in zip(sizes, x)]) / comb(sizes.sum(), events)

    observed = prob(table[:, 0])
    exact = sum(prob(x) for x in cartesian(*[range(n + 1) for n in sizes])
                if sum(x) == events and prob(x) <= observed * (1 + 1e-7))
    assert exact_test(table)["p"] == pytest.approx(exact, abs=0.006)
