"""The tuned workload picks the best grid value with the trial's own seeds."""

from __future__ import annotations

from orchestrator import Factor, Study, TrialState, Variant, make_plan
from orchestrator.execution.worker import execute_trial


def trials(**params):
    study = Study(
        name="tuned", workload="tuned", factors=[Factor("grid", ["narrow", "wide"])],
        params={"base_workload": "synthetic", "tune": "base", "select_by": "response",
                "grids": {"narrow": [5.0], "wide": [3.0, 1.0, 2.0]}, "noise": {"init": 0.5}, **params},
        metrics=["response"], variants={"smoke": Variant(), "full": Variant()}, run_order="standard",
    )
    return make_plan(study.with_variant("full")).trials


def test_the_wide_grid_finds_the_better_value_and_reports_it():
    narrow, wide = (execute_trial(t) for t in trials())
    assert narrow.state is TrialState.FINISHED and wide.state is TrialState.FINISHED
    assert narrow.metrics["chosen_base"] == 5.0 and narrow.metrics["grid_size"] == 1.0
    assert wide.metrics["chosen_base"] == 1.0 and wide.metrics["grid_size"] == 3.0
    # same seeds in every grid run: the noise is common, only the tuned value differs
    assert wide.metrics["response"] - narrow.metrics["response"] == 1.0 - 5.0


def test_maximizing_picks_the_largest():
    wide = execute_trial(trials(select_goal="maximize")[1])
    assert wide.metrics["chosen_base"] == 3.0


def test_a_missing_grid_fails_the_trial_with_a_clear_message():
    result = execute_trial(trials(grids={"narrow": [1.0]})[1])
    assert result.state is TrialState.FAILED
    assert "no grid 'wide' for optimizer None: grids has ['narrow']" in result.error
