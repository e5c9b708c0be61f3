"""Per-cell child runs (issue #16): very large studies record one run per design cell.

Real parts only: SQLite stores, the session's local Ray, a real driver process killed
with SIGKILL. The threshold of ``--trial-runs auto`` is lowered so a 12-trial study counts
as "very large".
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import REPO
from orchestrator import load_study
from orchestrator.errors import OrchestratorError
from orchestrator.execution.runner import run_study
from orchestrator.records import Records, open_store
from orchestrator.records.cellruns import PER_CELL_ENV, TrialRuns

FACTORS = {"A": [0, 1], "B": ["x", "y"]}
PARAMS = {"effects": {"A": {"1": 2.0}, "B": {"y": -1.0}}, "noise": {"init": 0.5}, "metric_points": 3}


def _runs(uri: str, study: str, kind: str) -> list:
    store = open_store(uri, check=False)
    experiment = store.experiment_id(study)
    return store.search(experiment, f"tags.run_kind = '{kind}'") if experiment else []


def _drop_ids(df):
    """What must not differ between two recordings of the same trials (not run ids, not wall times)."""
    return df.drop(columns=["run_id", "execution_id", "wall_time_s"]).reset_index(drop=True)


def test_trial_runs_mode_and_threshold(monkeypatch):
    monkeypatch.delenv(PER_CELL_ENV, raising=False)
    assert TrialRuns.parse("auto").resolve(10_000) is TrialRuns.PER_TRIAL
    assert TrialRuns.parse("auto").resolve(10_001) is TrialRuns.PER_CELL
    assert TrialRuns.parse("per-trial").resolve(10**6) is TrialRuns.PER_TRIAL
    monkeypatch.setenv(PER_CELL_ENV, "5")
    assert TrialRuns.AUTO.resolve(6) is TrialRuns.PER_CELL and TrialRuns.AUTO.resolve(5) is TrialRuns.PER_TRIAL
    with pytest.raises(OrchestratorError, match=r"trial runs: expected one of per-trial, per-cell, auto, found 'per_cell'.*Did you mean"):
        TrialRuns.parse("per_cell")
    monkeypatch.setenv(PER_CELL_ENV, "many")
    with pytest.raises(OrchestratorError, match=r"ORCHESTRATOR_PER_CELL_ABOVE: expected a whole number of trials .* found 'many'"):
        TrialRuns.AUTO.resolve(6)


@pytest.mark.slow
def test_per_cell_runs_hold_the_aggregates_and_every_reader_sees_what_per_trial_runs_give(ray_session, write_study, tmp_path, monkeypatch):
    """The same 12 trials recorded per trial (in-process) and per cell (auto above 5 trials, on Ray):
    the cell runs hold the right aggregates, and results, curves, status and the analysis are equal."""
    monkeypatch.setenv("ORCHESTRATOR_JOURNAL_DIR", str(tmp_path / "journal"))
    monkeypatch.setenv(PER_CELL_ENV, "5")
    study_file = write_study("cells_eq", factors=FACTORS, params=PARAMS, replicates=3)
    study = load_study(str(study_file), "full")
    per_trial, per_cell = f"sqlite:///{tmp_path / 'trials.db'}", f"sqlite:///{tmp_path / 'cells.db'}"
    a = run_study(study, tracking_uri=per_trial, in_process=True, progress=False, trial_runs="per-trial")
    b = run_study(study, tracking_uri=per_cell, progress=False)  # auto: 12 > 5 trials
    assert a.exit_code == 0 and b.exit_code == 0 and b.finished == 12 and b.pending == 0, b.line()

    assert len(_runs(per_trial, "cells_eq", "trial")) == 12 and not _runs(per_trial, "cells_eq", "cell")
    assert not _runs(per_cell, "cells_eq", "trial")
    cells = {run.data.tags["cell_id"]: run for run in _runs(per_cell, "cells_eq", "cell")}
    assert len(cells) == 4

    records = Records.open(study, tracking_uri=per_cell)
    df, meta = records.results()
    assert meta["source"] == "table" and len(df) == 12
    parent = records.resolve(None)
    assert parent.data.tags["orchestrator.trial_runs"] == "per-cell"
    for cell_id, rows in df.groupby("cell_id"):
        run = cells[cell_id]
        m = run.data.metrics
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert (m["n"], m["n_finished"], m["n_failed"], m["n_diverged"], m["n_killed"]) == (3, 3, 0, 0, 0)
        assert m["response_mean"] == pytest.approx(rows["response"].mean())
        assert m["response_sd"] == pytest.approx(rows["response"].std(ddof=1))
        assert (m["response_min"], m["response_max"]) == (pytest.approx(rows["response"].min()), pytest.approx(rows["response"].max()))
        assert run.data.params == {"A": str(rows["A"].iloc[0]), "B": rows["B"].iloc[0]}
        assert set(rows["run_id"]) == {run.info.run_id}  # each trial points at its cell's run

    other = Records.open(study, tracking_uri=per_trial)
    import pandas as pd

    pd.testing.assert_frame_equal(_drop_ids(df), _drop_ids(other.results()[0]), check_dtype=False)
    pd.testing.assert_frame_equal(records.curves(), other.curves(), check_dtype=False)
    assert len(records.curves()) == 12 * 3
    assert records.status()["totals"] == other.status()["totals"] == {**records.status()["totals"], "finished": 12, "missing": 0}

    from orchestrator.cli import main

    outputs = []
    for uri in (per_trial, per_cell):
        result = CliRunner().invoke(main, ["analyze", str(study_file), "--variant", "full", "--tracking-uri", uri, "--format", "json", "--bootstrap", "0"])
        assert result.exit_code == 0, result.output
        outputs.append(json.loads(result.output))
    assert outputs[0] == outputs[1]


def test_per_cell_counts_failed_and_diverged_trials(write_study, tracking_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_JOURNAL_DIR", str(tmp_path / "journal"))
    params = {**PARAMS, "fail_when": {"A": 1, "B": "y"}, "diverge_when": {"A": 0, "B": "y"}}
    study = load_study(str(write_study("cells_fail", factors=FACTORS, params=params, replicates=2)), "full")
    summary = run_study(study, tracking_uri=tracking_uri, in_process=True, progress=False, trial_runs="per-cell")
    assert summary.failed == 2 and summary.pending == 0 and summary.exit_code == 1
    cells = {(json.loads(r.data.tags["orchestrator.levels"])["A"], json.loads(r.data.tags["orchestrator.levels"])["B"]): r for r in _runs(tracking_uri, "cells_fail", "cell")}
    failed, diverged = cells[(1, "y")], cells[(0, "y")]
    assert failed.info.status == "FAILED" and failed.data.metrics["n_failed"] == 2 and "response_mean" not in failed.data.metrics
    assert diverged.info.status == "FINISHED" and diverged.data.metrics["n_diverged"] == 2 and diverged.data.metrics["n_finished"] == 2
    assert cells[(0, "x")].data.tags["mlflow.runName"] == "A=0 x (cell)"


WORKLOAD = '''
import time
from pathlib import Path

def work(ctx):
    """Trial `block_at` waits while the file `block` exists; every trial notes that it ran."""
    folder = Path(ctx.config["folder"])
    i = int(ctx.levels["i"])
    if i == ctx.config.get("block_at", -1):
        deadline = time.time() + 600
        while (folder / "block").exists() and time.time() < deadline:
            time.sleep(0.05)
    for step in range(2):
        ctx.log(step, loss=1.0 / (step + 1 + i))
    with open(folder / "executed.txt", "a") as handle:
        handle.write(ctx.trial_id + "\\n")
    return {"response": float(i % 3) + 0.1 * ctx.trial.replicate}
'''

STUDY = '''
from orchestrator import Factor, Study, Variant

study = Study(name="cells_kill", workload="cellwork:work", factors=[Factor("i", list(range(4)))], replicates=2,
              params={{"folder": {folder!r}, "block_at": 3}}, metrics={{"response": "minimize"}}, run_order="standard",
              variants={{"smoke": Variant(), "full": Variant()}})
'''


@pytest.mark.slow
def test_per_cell_resume_after_a_killed_driver_replays_the_journal_and_runs_no_trial_twice(tmp_path, monkeypatch):
    """A driver recording per cell is killed (SIGKILL) with 6 of 8 trials journaled and nothing in the store; the next run
    rebuilds the killed execution's table and cell runs from its journal, runs only the 2 missing trials, and its cell
    runs aggregate the whole lineage."""
    (tmp_path / "cellwork.py").write_text(WORKLOAD)
    (tmp_path / "study.py").write_text(textwrap.dedent(STUDY.format(folder=str(tmp_path))))
    (tmp_path / "block").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("ORCHESTRATOR_JOURNAL_DIR", str(tmp_path / "journal"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    driver = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", str(tmp_path / "study.py"), "--variant", "full", "--tracking-uri", uri,
         "--in-process", "--no-progress", "--trial-runs", "per-cell"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.time() + 300
        while _journaled(tmp_path) < 6:  # trials 0-2 of both replicates; the first trial with i == 3 blocks
            assert driver.poll() is None and time.time() < deadline, driver.stdout.read().decode() if driver.poll() is not None else "timed out"
            time.sleep(0.05)
        os.killpg(driver.pid, signal.SIGKILL)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert len(_executed(tmp_path)) == 6
    assert not _runs(uri, "cells_kill", "cell"), "nothing in the store before the replay"

    (tmp_path / "block").unlink()
    study = load_study(str(tmp_path / "study.py"), "full")
    summary = run_study(study, tracking_uri=uri, in_process=True, progress=False, trial_runs="per-cell")
    assert summary.exit_code == 0 and summary.skipped == 6 and summary.finished == 2, summary.line()
    done = _executed(tmp_path)
    assert len(done) == 8 and len(set(done)) == 8, "no trial executed twice"

    records = Records.open(study, tracking_uri=uri)
    assert sorted(e["status"] for e in records.executions()) == ["FINISHED", "KILLED"]
    df, meta = records.results()
    assert meta["source"] == "table" and len(df) == 8 and set(df["state"]) == {"FINISHED"}
    latest = {r.data.tags["cell_id"]: r for r in _runs(uri, "cells_kill", "cell") if r.data.tags["execution_id"] == summary.execution_id}
    assert len(latest) == 4 and all(r.data.metrics["n_finished"] == 2 for r in latest.values())
    killed = [r for r in _runs(uri, "cells_kill", "cell") if r.data.tags["execution_id"] != summary.execution_id]
    assert len(killed) == 3, "the killed execution's cells with a journaled trial, written once by the replay"
    assert records.status()["totals"]["finished"] == 8


def _journaled(folder: Path) -> int:
    from orchestrator.records.journal import read_journal

    return sum(len(read_journal(p).trials) for p in (folder / "journal").rglob("*.jsonl"))


def _executed(folder: Path) -> list[str]:
    path = folder / "executed.txt"
    return path.read_text().split() if path.exists() else []
