"""`run` streams trials: the executor draws them from the plan's TrialTable as its window has room (#16)."""

from __future__ import annotations

import threading

from orchestrator import Factor, Study, Variant, load_study, make_plan
from orchestrator.execution import run_study
from orchestrator.execution.executor import InProcessExecutor

VARIANTS = {"smoke": Variant(), "full": Variant()}


def test_the_executor_draws_trials_only_as_its_window_has_room():
    study = Study(name="stream", workload="synthetic", factors=[Factor("A", [0, 1, 2, 3])], replicates=3,
                  params={"duration_s": 0.0}, metrics={"response": "minimize"}, variants=VARIANTS).with_variant("full")
    plan = make_plan(study)
    drawn, done, most_ahead = [], [], [0]

    def source():
        for trial in plan.trials:
            drawn.append(trial.trial_id)
            most_ahead[0] = max(most_ahead[0], len(drawn) - len(done))
            yield trial

    def on_done(outcome):
        done.append(outcome.trial.trial_id)

    stopped = InProcessExecutor().run(source(), retries=0, window=2, on_done=on_done, on_killed=lambda t, a: None, stop=threading.Event())
    assert not stopped
    assert done == list(plan.trials.trial_ids()) and len(done) == 12
    assert most_ahead[0] <= 2, f"{most_ahead[0]} trials were drawn ahead of the results (window 2)"


def test_resume_runs_the_plan_less_what_is_recorded(write_study, tracking_uri):
    path = write_study("streamed", {"A": [0, 1, 2]}, {"duration_s": 0.0}, replicates=2)
    study = load_study(path, "full")
    first = run_study(study, tracking_uri=tracking_uri, in_process=True, progress=False)
    assert (first.planned, first.finished, first.exit_code) == (6, 6, 0)
    again = run_study(study, tracking_uri=tracking_uri, in_process=True, progress=False)
    assert (again.skipped, again.ran) == (6, 0)
    bigger = load_study(write_study("streamed", {"A": [0, 1, 2, 3]}, {"duration_s": 0.0}, replicates=2), "full")
    grown = run_study(bigger, tracking_uri=tracking_uri, in_process=True, progress=False)
    assert (grown.skipped, grown.finished) == (6, 2)
    new = [t for t in make_plan(bigger).trials if t.levels["A"] == 3]
    assert sorted(r.trial_id for r in grown.results) == sorted(t.trial_id for t in new)
