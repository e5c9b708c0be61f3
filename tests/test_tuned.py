"""Tuned studies end to end: plan -> search on Ray Tune -> reruns -> records -> analysis; resume; refusals."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from orchestrator import load_study, make_plan
from orchestrator.errors import StudyError
from orchestrator.execution import run_study
from orchestrator.records import Records, open_store

# -- tuned studies end to end: plan -> search on Ray Tune -> reruns -> records -> analysis ----------------------------

TUNED_STUDY = '''
from orchestrator import Factor, Study, Variant
from orchestrator.tuning import Budget, LogUniform, PerLevel, Tuning, Uniform

study = Study(
    name={name!r},
    workload="landscape",
    factors=[Factor("optimizer", ["sgd", "momentum"]), Factor("budget", {budgets!r})],
    params={{"optimum_by": "optimizer", "optimum": {{"sgd": {{"lr": 0.1}}, "momentum": {{"lr": 0.03, "momentum": 0.9}}}},
            "floor": {{"sgd": 0.3, "momentum": 0.2}}, "noise": 0.05, "epochs": 2, "duration_s": {duration!r}}},
    tuning=Tuning(
        space=PerLevel("optimizer", {{"sgd": {{"lr": LogUniform(1e-3, 1.0)}}, "momentum": {{"lr": LogUniform(1e-3, 1.0), "momentum": Uniform(0.5, 0.99)}}}}),
        select="val_loss", budget=Budget(factor="budget", epochs=2), searches={searches}, reruns=2,
    ),
    metrics={{"test_loss": "minimize", "val_loss": "minimize"}},
    seed=5,
    run_order="standard",
    analysis={{"ranking": "optimizer"}},
    variants={{"smoke": Variant(tuning={{"reruns": 1}}), "full": Variant()}},
)

if __name__ == "__main__":
    from orchestrator.cli import study_script_main

    study_script_main(study)
'''


def tuned_study_file(tmp_path, name, budgets=(2, 3), duration=0.0, searches=2):
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(TUNED_STUDY.format(name=name, budgets=list(budgets), duration=duration, searches=searches)))
    return path


def runs_of(uri, study, kind):
    store = open_store(uri, check=False)
    experiment = store.experiment_id(study)
    return store.search(experiment, f"tags.run_kind = '{kind}'") if experiment else []


def test_a_tuned_study_refuses_a_test_metric_and_a_second_replicate_count():
    source = TUNED_STUDY.format(name="bad", budgets=[2], duration=0.0, searches=1).replace('select="val_loss"', 'select="test_loss"')
    source = source.replace("seed=5,", "seed=5, replicates=4,")
    namespace: dict = {}
    with pytest.raises(StudyError) as info:
        exec(compile(source, "bad.py", "exec"), namespace)
    text = str(info.value)
    assert "tuning.select: expected a validation metric" in text and "found 'test_loss', a test metric" in text
    assert "replicates: expected no replicates in a tuned study (its trials are the 2 reruns of each search's selection), found 4 (int). Set tuning=Tuning(..., reruns=4) instead." in text


def test_the_plan_of_a_tuned_study_crosses_searches_and_reruns(tmp_path):
    study = load_study(tuned_study_file(tmp_path, "planned"), "full")
    plan = make_plan(study)
    assert study.replicates == 2 and study.seed_streams["search"] == 2
    assert plan.counts["trials"] == 4 * 2 * 2  # cells x searches x reruns
    per_cell = collections.defaultdict(set)
    for trial in plan.trials:
        per_cell[trial.cell_id].add((trial.seed_index["search"], trial.seeds["search"]))
    assert all(len(v) == 2 for v in per_cell.values())
    assert len({seed for v in per_cell.values() for _, seed in v}) == 8  # every (cell, search) its own seed
    smoke = load_study(tuned_study_file(tmp_path, "planned"), "smoke")
    assert smoke.replicates == 1 and smoke.tuning.reruns == 1


@pytest.mark.slow
def test_search_reruns_records_and_ranking_end_to_end(tmp_path, ray_session, tracking_uri):
    from orchestrator.analysis.ranking import ranking_stability

    study = load_study(tuned_study_file(tmp_path, "tuned_e2e"), "full")
    summary = run_study(study, tracking_uri=tracking_uri, progress=False)
    assert summary.exit_code == 0, summary.line()
    assert summary.finished == 16
    searches = runs_of(tracking_uri, study.name, "search")
    assert len(searches) == 8 and {r.info.status for r in searches} == {"FINISHED"}
    configurations = runs_of(tracking_uri, study.name, "search_trial")
    assert len(configurations) == (2 + 3) * 2 * 2
    by_run = {r.info.run_id: r for r in searches}
    assert {c.data.tags["mlflow.parentRunId"] for c in configurations} == set(by_run)  # nested under their search
    assert {r.data.tags["mlflow.parentRunId"] for r in searches} == {summary.parent_run_id}
    selected = {r.data.tags["search_id"]: json.loads(r.data.tags["orchestrator.selection"])["configuration"] for r in searches}
    assert all("lr" in c and ("momentum" in c) == (len(c) == 2) for c in selected.values())
    # the reruns run the selected configuration: their lr is one of the selections of their cell
    reruns = runs_of(tracking_uri, study.name, "trial")
    lrs = {float(c["lr"]) for c in selected.values()}
    assert all(float(r.data.params["lr"]) in lrs for r in reruns)
    df, _ = Records.open(study, tracking_uri=tracking_uri).results()
    assert set(df["seed_index_search"]) == {0, 1} and df["test_loss"].notna().all()
    ranking = ranking_stability(df, "optimizer", "test_loss", by=["budget"], replicates=200)
    assert len(ranking.pairs) == 2 and ranking.pairs["p_mean"].between(0, 1).all()
    # the report shows the ranking the study asks for: its table and the plot of rank against budget
    from click.testing import CliRunner

    from orchestrator.cli import main

    out = tmp_path / "report"
    res = CliRunner().invoke(main, ["report", str(tuned_study_file(tmp_path, "tuned_e2e")), "--variant", "full",
                                    "--tracking-uri", tracking_uri, "--bootstrap", "0", "--no-record", "--out", str(out)])
    assert res.exit_code == 0, res.output
    text = (out / "report.md").read_text()
    assert "## Ranking of optimizer under resampling of seeds" in text and "| budget | a | b | mean_a | mean_b | p_single | p_mean |" in text
    assert "![ranking_optimizer](ranking_optimizer.png)" in text and (out / "ranking_optimizer.png").stat().st_size > 1000
    assert "Ranking of optimizer under resampling of seeds" in (out / "report.html").read_text()
    # resume: nothing left to do, no search redone
    again = run_study(study, tracking_uri=tracking_uri, progress=False)
    assert again.skipped == 16 and again.ran == 0
    assert len(runs_of(tracking_uri, study.name, "search")) == 8


@pytest.mark.slow
def test_the_in_process_search_selects_what_ray_tune_selects(tmp_path, ray_session, tracking_uri):
    from orchestrator.tuning.phase import run_in_process, searches_of
    from orchestrator.tuning.ray_tune import run_searches

    study = load_study(tuned_study_file(tmp_path, "contract"), "full")
    searches = list(searches_of(study, make_plan(study)).values())
    here = run_in_process(searches, lambda run: None)
    tune = run_searches(searches)
    assert {k: r.selection for k, r in here.items()} == {k: r.selection for k, r in tune.items()}


@pytest.mark.slow
def test_killing_the_driver_mid_search_resumes_without_redoing_finished_searches(tmp_path, ray_session, tracking_uri, subprocess_env):
    import ray

    # budget 1 ends its search at once; budget 8 keeps the search phase busy for seconds
    path = tuned_study_file(tmp_path, "killed_search", budgets=(1, 8), duration=0.3, searches=1)
    study = load_study(path, "full")
    address = ray.get_runtime_context().gcs_address
    command = [sys.executable, "-m", "orchestrator", "run", str(path), "--tracking-uri", tracking_uri, "--address", address, "--no-progress"]
    driver = subprocess.Popen(command, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not any(r.info.status == "FINISHED" for r in runs_of(tracking_uri, study.name, "search")):
            assert time.time() < deadline and driver.poll() is None, "no search finished before the deadline (or the driver ended)"
            time.sleep(0.2)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    first = [r for r in runs_of(tracking_uri, study.name, "search") if r.info.status == "FINISHED"]
    assert 1 <= len(first) < 4, "killed mid-search: some searches finished, not all"
    assert not runs_of(tracking_uri, study.name, "trial"), "no rerun ran before the search phase ended"
    time.sleep(1.0)  # let Ray reap the dead driver's actors
    summary = run_study(study, tracking_uri=tracking_uri, progress=False)
    assert summary.exit_code == 0 and summary.finished == 8, summary.line()
    finished = collections.Counter(r.data.tags["search_id"] for r in runs_of(tracking_uri, study.name, "search") if r.info.status == "FINISHED")
    assert set(finished.values()) == {1} and len(finished) == 4, finished  # each search once: the finished ones were not redone
    for run in first:
        again = open_store(tracking_uri, check=False).client.get_run(run.info.run_id)
        assert again.data.tags["execution_id"] != summary.execution_id
