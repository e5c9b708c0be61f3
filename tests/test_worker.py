"""The in-process trial runner: failures and divergence are recorded outcomes."""

from __future__ import annotations

import pytest

from orchestrator import Factor, Study, TrialState, Variant, make_plan
from orchestrator.execution.worker import execute_trial


def plan(**params):
    return make_plan(
        Study(
            name="w", workload="synthetic", factors=[Factor("opt", ["a", "b", "c"])],
            params={"effects": {"opt": {"a": 1.0, "b": 2.0, "c": 3.0}}, **params},
            metrics=["response"], variants={"smoke": Variant(), "full": Variant()}, run_order="standard",
        ).with_variant("full")
    )


def test_a_raising_trial_fails_with_its_traceback_and_others_carry_on():
    results = [execute_trial(t) for t in plan(fail_when={"opt": "b"}).trials]
    states = [r.state for r in results]
    assert states == [TrialState.FINISHED, TrialState.FAILED, TrialState.FINISHED]
    assert "synthetic failure planted" in results[1].error and "Traceback" in results[1].error
    assert [r.metrics["response"] for r in (results[0], results[2])] == [1.0, 3.0]


def test_divergence_is_a_finished_trial_with_diverged_set():
    results = [execute_trial(t) for t in plan(diverge_when={"opt": "c"}, metric_points=5).trials]
    diverged = results[2]
    assert diverged.state is TrialState.FINISHED
    assert diverged.metrics["diverged"] == 1.0 and diverged.metrics["diverged_step"] == 4.0
    assert diverged.info["divergence"] == "loss is nan (planted)"
    assert results[0].metrics["diverged"] == 0.0


def test_metric_sink_receives_every_step():
    seen = []
    execute_trial(plan(metric_points=4).trials[0], sink=lambda tid, step, m: seen.append((step, m["loss"])))
    assert [s for s, _ in seen] == [0, 1, 2, 3]


def test_a_workload_returning_a_non_mapping_fails_with_a_clear_message(tmp_path, monkeypatch):
    (tmp_path / "badwork.py").write_text("def f(ctx):\n    return 3.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    study = Study(name="w", workload="badwork:f", factors=[Factor("a", [1])], metrics=["r"], variants={"smoke": Variant(), "full": Variant()})
    result = execute_trial(make_plan(study.with_variant("full")).trials[0])
    assert result.state is TrialState.FAILED
    assert "a workload must return a dict of final metrics (name -> number), but it returned a float" in result.error


def test_an_unimportable_workload_fails_the_trial_not_the_study(tmp_path):
    study = Study(name="w", workload="no_such_pkg.mod:f", factors=[Factor("a", [1])], metrics=["r"], variants={"smoke": Variant(), "full": Variant()})
    result = execute_trial(make_plan(study.with_variant("full")).trials[0])
    assert result.state is TrialState.FAILED
    assert "cannot import module 'no_such_pkg.mod'" in result.error


def test_unknown_seed_stream_is_named():
    trial = plan().trials[0]
    from orchestrator.execution.context import TrialContext

    with pytest.raises(KeyError, match=r"seed stream 'dropout', but the study declares only: data, init, reduction"):
        TrialContext(trial).seed("dropout")
