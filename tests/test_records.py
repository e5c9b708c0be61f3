"""Records at scale (issue #16): the journal, replay exactly once, the results table, the writer pool.

The two fault scenarios use a real ``mlflow server`` that the test stops and restarts on the
same port and database, and a real driver process killed with SIGKILL. Trials of a small
workload defined here append their id to a file when they finish, so "no trial executed
twice" is checked from what actually ran, not from the records.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import REPO, free_port, wait_for_health
from orchestrator import load_study
from orchestrator.execution.runner import run_study
from orchestrator.records import Records, open_store
from orchestrator.records.journal import EntryKind, Journal, pending_journals, read_journal
from orchestrator.records.writers import WriterPool

WORKLOAD = '''
import os, time
from pathlib import Path

def work(ctx):
    """Sleeps briefly; trial `hold_at` waits for the file `go`; `block_at` blocks while `block` exists."""
    folder = Path(ctx.config["folder"])
    i = int(ctx.config["i"])
    if i == ctx.config.get("hold_at", -1):
        deadline = time.time() + 600  # never hang a test run: the test fails on its own checks instead
        while not (folder / "go").exists() and time.time() < deadline:
            time.sleep(0.05)
    if i == ctx.config.get("block_at", -1):
        while (folder / "block").exists():
            time.sleep(0.05)
    for step in range(3):
        ctx.log(step, loss=1.0 / (step + 1 + i))
    time.sleep(0.02)
    with open(folder / "executed.txt", "a") as handle:
        handle.write(ctx.trial_id + "\\n")
    return {"response": float(i)}
'''

STUDY = '''
from orchestrator import Factor, Study, Variant

study = Study(
    name={name!r},
    workload="recwork:work",
    factors=[Factor("i", list(range({n})))],
    params={params!r},
    metrics={{"response": "minimize"}},
    run_order="standard",
    variants={{"smoke": Variant(), "full": Variant()}},
)
'''


@pytest.fixture
def study_files(tmp_path, monkeypatch):
    """``make(name, n, **params)`` -> study file; the workload module importable here and in subprocesses."""
    (tmp_path / "recwork.py").write_text(WORKLOAD)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(REPO)]))
    monkeypatch.setenv("ORCHESTRATOR_JOURNAL_DIR", str(tmp_path / "journal"))

    def make(name: str, n: int, **params) -> Path:
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(STUDY.format(name=name, n=n, params={"folder": str(tmp_path), **params})))
        return path

    return make


class Server:
    """A real ``mlflow server`` on a SQLite database; stop() and start() keep its port and database."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        log = open(self.folder / "server.log", "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
             "--artifacts-destination", str(self.folder / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for_health(self.url, self.proc, self.folder / "server.log", timeout=300, every=0.3)  # a loaded 2-core machine takes a minute or more

    def stop(self) -> None:
        if self.proc is None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # the group this test started: the server and its workers
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module")
def _module_server(tmp_path_factory):
    """One server for the module's fault scenarios (distinct study names); each leaves it running."""
    srv = Server(tmp_path_factory.mktemp("server"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def server(_module_server):
    if _module_server.proc is None:  # an earlier test failed while it was stopped
        _module_server.start()
    return _module_server


def wait_for(condition, timeout: float = 300.0, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def executed(folder: Path) -> list[str]:
    path = folder / "executed.txt"
    return path.read_text().split() if path.exists() else []


def trial_runs(uri: str, study: str) -> dict[str, list[str]]:
    """trial_id -> statuses of every (not deleted) trial run of the study."""
    store = open_store(uri, check=False)
    experiment = store.experiment_id(study)
    out: dict[str, list[str]] = {}
    for run in store.search(experiment, "tags.run_kind = 'trial'"):
        out.setdefault(run.data.tags["trial_id"], []).append(run.info.status)
    return out


def journal_trials(folder: Path) -> int:
    paths = list((folder / "journal").rglob("*.jsonl"))
    return sum(len(read_journal(p).trials) for p in paths)


# -- the journal itself --------------------------------------------------------------------


def test_journal_is_append_only_fsyncd_and_ignores_a_torn_last_line(tmp_path):
    uri = "http://127.0.0.1:1"
    journal = Journal.create(tmp_path, "s", {"execution_id": "e1", "tracking_uri": uri})
    handed_on = []
    for i in range(5):
        journal.append({"kind": EntryKind.TRIAL.value, "trial": {"trial_id": f"t{i}"}, "result": {"state": "FINISHED"}}, then=lambda i=i: handed_on.append(i))
    journal.flush()
    assert handed_on == [0, 1, 2, 3, 4] and journal.fsyncs >= 1
    journal.append({"kind": EntryKind.RECORDED.value, "trial_id": "t0", "run_id": "r0"}, durable=False)
    journal.close()
    with open(journal.path, "ab") as handle:  # a driver killed mid-line
        handle.write(b'{"kind":"recorded","trial_id":"t1","run')
    state = read_journal(journal.path)
    assert [e["trial"]["trial_id"] for e in state.pending_trials] == ["t1", "t2", "t3", "t4"]
    assert state.recorded == {"t0": "r0"} and not state.is_synced
    other = tmp_path / "x.jsonl"
    other.write_text('{"kind":"trial"}\n')
    with pytest.raises(ValueError, match="expected an 'execution' entry first, found 'trial'"):
        read_journal(other)


def test_writer_pool_keeps_a_trials_jobs_in_order_and_gives_up_past_the_budget():
    pool = WriterPool(4, retry_budget_s=0.3)
    seen: dict[str, list[int]] = {}
    for i in range(40):
        key = f"t{i % 5}"
        pool.put(key, lambda key=key, i=i: seen.setdefault(key, []).append(i))
    pool.flush()
    assert all(v == sorted(v) for v in seen.values()) and sum(len(v) for v in seen.values()) == 40

    # one slow call holds up only its own key: the other writer takes every other trial meanwhile
    pair, order = WriterPool(2, retry_budget_s=1.0), []
    pair.put("slow", lambda: (time.sleep(0.5), order.append("slow")))
    for i in range(20):
        pair.put(f"k{i}", lambda i=i: order.append(f"k{i}"))
    pair.close()
    assert order[-1] == "slow" and len(order) == 21

    calls = {"n": 0}

    def down() -> None:
        calls["n"] += 1
        raise ConnectionError("connection refused")

    start = time.monotonic()
    for i in range(10):
        pool.put(f"d{i}", down)
    pool.close()
    assert pool.given_up == 10 and pool.store_down()
    assert time.monotonic() - start < 5, "jobs after the budget is spent are given up at once, not each after a full budget"
    assert "connection refused" in pool.errors[0]


# -- the fault scenarios -------------------------------------------------------------------


@pytest.mark.slow
def test_outage_longer_than_the_retry_budget_leaves_records_pending_then_sync_writes_each_once(server, study_files, tmp_path):
    """Server stopped mid-study for longer than the (shortened) retry budget: trials finish, N records pending, exit 1;
    `orchestrator sync` writes each exactly once; the next run executes nothing again."""
    study_file = study_files("outage", 8, hold_at=3)
    study = load_study(str(study_file), "full")

    problems: list[str] = []

    def stop_server_when_three_are_recorded() -> None:
        try:
            wait_for(lambda: _has_experiment(server.url, "outage") and sum(s == ["FINISHED"] for s in trial_runs(server.url, "outage").values()) >= 3, what="3 runs")
            server.stop()
        except BaseException as exc:  # noqa: BLE001 - reported below; the held trial must be released either way
            problems.append(repr(exc))
        finally:
            (tmp_path / "go").write_text("")

    import threading

    stopper = threading.Thread(target=stop_server_when_three_are_recorded, daemon=True)
    stopper.start()
    summary = run_study(study, tracking_uri=server.url, in_process=True, progress=False, record_retry_s=2.0)
    stopper.join(timeout=30)
    assert not problems, problems
    assert summary.finished == 8 and summary.pending >= 5, summary.line()
    assert summary.exit_code == 1 and f"{summary.pending} records pending" in summary.line()
    assert sorted(executed(tmp_path)) == sorted(t.trial_id for t in [*_plan(study)])
    assert len(pending_journals(server.url, "outage")) == 1

    server.start()  # same port, same database
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "sync", str(study_file), "--tracking-uri", server.url], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "trial runs written" in proc.stdout and "View run" not in proc.stdout
    runs = trial_runs(server.url, "outage")
    assert sorted(runs) == sorted(t.trial_id for t in _plan(study)) and all(states == ["FINISHED"] for states in runs.values()), runs
    assert pending_journals(server.url, "outage") == []

    again = run_study(study, tracking_uri=server.url, in_process=True, progress=False, record_retry_s=2.0)
    assert again.skipped == 8 and again.ran == 0 and again.exit_code == 0
    assert len(executed(tmp_path)) == 8, "no trial executed twice"
    records = Records.open(study, tracking_uri=server.url)
    table, _ = records.results()
    from_runs, _ = records.results(source="runs")
    _assert_same(table, from_runs)
    parent = records.resolve(summary.execution_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_finished"] == 8


@pytest.mark.slow
def test_driver_killed_between_journal_and_store_is_replayed_by_the_next_run_exactly_once(server, study_files, tmp_path):
    """A driver killed (SIGKILL) with trials in its journal but not in the store (the store is down, its writers
    retrying): the next `run` writes them from the journal, runs only the trial that never finished, and every trial
    ends with exactly one FINISHED run."""
    study_file = study_files("killed", 8, hold_at=2, block_at=5)
    (tmp_path / "block").write_text("")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]), "ORCHESTRATOR_RECORD_RETRY_S": "600"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", str(study_file), "--tracking-uri", server.url, "--in-process", "--no-progress"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for(lambda: _has_experiment(server.url, "killed") and sum(s == ["FINISHED"] for s in trial_runs(server.url, "killed").values()) >= 2, what="2 runs")
        server.stop()
        (tmp_path / "go").write_text("")
        wait_for(lambda: journal_trials(tmp_path) >= 5, what="5 journaled trials")  # 2 recorded + 3 only journaled; trial 5 blocks
        os.killpg(driver.pid, signal.SIGKILL)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    first = executed(tmp_path)
    assert len(first) == 5

    server.start()
    (tmp_path / "block").unlink()
    study = load_study(str(study_file), "full")
    summary = run_study(study, tracking_uri=server.url, in_process=True, progress=False, record_retry_s=10.0)
    assert summary.exit_code == 0, summary.line()
    assert summary.skipped == 5 and summary.finished == 3, summary.line()
    runs = trial_runs(server.url, "killed")
    assert sorted(runs) == sorted(t.trial_id for t in _plan(study)) and all(states == ["FINISHED"] for states in runs.values()), runs
    done = executed(tmp_path)
    assert len(done) == 8 and len(set(done)) == 8, "no trial executed twice"
    records = Records.open(study, tracking_uri=server.url)
    statuses = {r["execution_id"]: r["status"] for r in records.executions()}
    assert sorted(statuses.values()) == ["FINISHED", "KILLED"]


def test_results_table_equals_the_per_trial_runs(study_files, tracking_uri, tmp_path):
    study = load_study(str(study_files("table_eq", 6)), "full")
    summary = run_study(study, tracking_uri=tracking_uri, in_process=True, progress=False)
    assert summary.exit_code == 0 and summary.pending == 0
    records = Records.open(study, tracking_uri=tracking_uri)
    table, meta = records.results()
    from_runs, _ = records.results(source="runs")
    assert meta["source"] == "table"
    _assert_same(table, from_runs)


def _assert_same(a, b) -> None:
    import pandas as pd

    assert sorted(a.columns) == sorted(b.columns), (list(a.columns), list(b.columns))
    assert len(a) > 0
    columns = sorted(a.columns)
    pd.testing.assert_frame_equal(a[columns].reset_index(drop=True), b[columns].reset_index(drop=True), check_dtype=False)


def _has_experiment(uri: str, name: str) -> bool:
    try:
        return open_store(uri, check=False).experiment_id(name) is not None
    except Exception:  # noqa: BLE001 - the server may be between stop and start
        return False


def _plan(study):
    from orchestrator import make_plan

    return make_plan(study).trials
