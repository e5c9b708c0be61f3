"""Ranking stability: win probabilities checked against closed forms, the Mann-Whitney U, and planted effects."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from orchestrator.analysis.errors import AnalysisError
from orchestrator.analysis.ranking import plot_rank_against_budget, ranking_stability


def simulated(means: dict[str, float], *, budgets=(4, 16), searches=4, reruns=3, search_sd=0.3, rerun_sd=0.2, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for budget in budgets:
        for level, mean in means.items():
            for s in range(searches):
                tuned = mean + search_sd * rng.standard_normal() / math.sqrt(budget)
                for r in range(reruns):
                    rows.append({"optimizer": level, "budget": budget, "seed_index_search": s, "replicate": r, "test_loss": tuned + rerun_sd * rng.standard_normal()})
    return pd.DataFrame(rows)


def test_p_single_is_the_mann_whitney_u_over_all_pairs():
    from scipy.stats import mannwhitneyu

    df = simulated({"sgd": 1.0, "adam": 1.1}, budgets=(4,), searches=3, reruns=5, seed=3)
    result = ranking_stability(df, "optimizer", "test_loss", by=["budget"], replicates=50)
    a = df[df.optimizer == "sgd"].test_loss.to_numpy()
    b = df[df.optimizer == "adam"].test_loss.to_numpy()
    u = mannwhitneyu(b, a).statistic  # pairs in which sgd's loss is lower
    assert result.pairs.loc[0, "p_single"] == pytest.approx(u / (len(a) * len(b)), abs=1e-12)


def test_a_planted_gap_gives_the_normal_closed_form():
    # one search, many reruns: p_single -> Phi(gap / sqrt(2) / sd), p_mean -> Phi(gap / (sd * sqrt(2 / n)))
    gap, sd, n = 0.1, 0.2, 400
    df = simulated({"a": 1.0, "b": 1.0 + gap}, budgets=(4,), searches=1, reruns=n, search_sd=0.0, rerun_sd=sd, seed=1)
    result = ranking_stability(df, "optimizer", "test_loss", by=["budget"], replicates=4000, seed=2)
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))
    assert result.pairs.loc[0, "p_single"] == pytest.approx(phi(gap / (sd * math.sqrt(2))), abs=0.03)
    assert result.pairs.loc[0, "p_mean"] == pytest.approx(phi(gap / (sd * math.sqrt(2 / n))), abs=0.01)


def test_the_search_seeds_are_resampled_as_units():
    # reruns agree perfectly within a search; only the search varies: the bootstrap of means must see the few searches
    df = simulated({"a": 1.0, "b": 1.05}, budgets=(4,), searches=3, reruns=50, search_sd=0.2, rerun_sd=0.0, seed=4)
    result = ranking_stability(df, "optimizer", "test_loss", by=["budget"], replicates=3000)
    p = result.pairs.loc[0, "p_mean"]
    assert 0.05 < p < 0.95  # 3 searches per level cannot settle a 0.05 gap, however many reruns


def test_maximize_ranks_the_other_way_and_ranks_are_reported_per_budget(tmp_path):
    df = simulated({"sgd": 1.0, "momentum": 0.5, "adam": 2.0}, seed=5)
    result = ranking_stability(df, "optimizer", "test_loss", by=["budget"], replicates=500)
    first = result.ranks[result.ranks["rank"] == 1]
    assert list(first["level"]) == ["momentum", "momentum"] and list(first["budget"]) == [4, 16]
    assert set(result.pairs.columns) >= {"budget", "a", "b", "p_single", "p_mean"} and len(result.pairs) == 6
    flipped = ranking_stability(df, "optimizer", "test_loss", by=["budget"], goal="maximize", replicates=500)
    assert list(flipped.ranks[flipped.ranks["rank"] == 1]["level"]) == ["adam", "adam"]
    assert "| budget | a | b | mean_a | mean_b | p_single | p_mean |" in result.markdown()
    path = plot_rank_against_budget(result, "budget", str(tmp_path / "rank.png"))
    assert (tmp_path / "rank.png").stat().st_size > 1000 and path.endswith("rank.png")


def test_bad_input_names_the_problem():
    df = simulated({"sgd": 1.0, "adam": 1.1})
    with pytest.raises(AnalysisError, match=r"expected columns optimizer, test_loss, seed_index_search, rerun, budget, found no 'rerun'"):
        ranking_stability(df, "optimizer", "test_loss", by=["budget"], rerun="rerun")
    with pytest.raises(AnalysisError, match=r"group \{'budget': 4\} has 1 level\(s\) of 'optimizer'"):
        ranking_stability(df[df.optimizer == "sgd"], "optimizer", "test_loss", by=["budget"])
    with pytest.raises(AnalysisError, match=r"goal: expected 'minimize' or 'maximize', found 'min'"):
        ranking_stability(df, "optimizer", "test_loss", goal="min")


def test_a_tuned_study_asks_for_its_ranking_and_gets_the_rank_plot(tmp_path):
    from orchestrator import Factor, Study, Variant
    from orchestrator.analysis.ranking import study_ranking
    from orchestrator.tuning import LogUniform, Tuning

    study = Study(
        name="ranked", workload="orchestrator.workloads.tuned:landscape",
        factors=[Factor("optimizer", ["sgd", "momentum", "adam"]), Factor("budget", [4, 16])],
        tuning=Tuning(space={"lr": LogUniform(1e-3, 1.0)}, select="val_loss", budget="budget", searches=4, reruns=3),
        metrics={"test_loss": "minimize"}, analysis={"ranking": "optimizer"}, variants={"smoke": Variant(), "full": Variant()},
    )
    df = simulated({"sgd": 1.0, "momentum": 0.5, "adam": 2.0}, seed=6).assign(state="FINISHED", diverged=0.0)
    shuffled = df.sample(frac=1.0, random_state=1)  # rows in any order: the tables list the declared order
    result, plots = study_ranking(study, shuffled, "test_loss", str(tmp_path), replicates=300)
    assert list(result.pairs.loc[result.pairs["budget"] == 4, ["a", "b"]].itertuples(index=False, name=None)) == [
        ("sgd", "momentum"), ("sgd", "adam"), ("momentum", "adam")]
    assert list(result.ranks.loc[result.ranks["budget"] == 16, "level"]) == ["sgd", "momentum", "adam"]
    assert result.by == ("budget",) and list(result.ranks[result.ranks["rank"] == 1]["level"]) == ["momentum", "momentum"]
    assert plots == [str(tmp_path / "ranking_optimizer.png")] and (tmp_path / "ranking_optimizer.png").is_file()
    unranked = Study(name="plain", workload="synthetic", factors=[Factor("optimizer", ["a", "b"])], metrics={"response": "minimize"}, variants={"smoke": Variant(), "full": Variant()})
    assert study_ranking(unranked, df, "test_loss") is None
