"""Execution on a real local Ray and in-process, recorded in a real MLflow store.

The contract tests run against both executors (Ray tasks and in-process).
"""

from __future__ import annotations

import collections
import json
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator import load_study
from orchestrator.cli import main
from orchestrator.errors import OrchestratorError
from orchestrator.execution import run_study
from orchestrator.records import TrackingStoreError, list_executions, load_curves, load_results, open_store

pytestmark = pytest.mark.usefixtures("ray_session")


def trial_runs(uri: str, study: str) -> list:
    store = open_store(uri, check=False)
    experiment = store.experiment_id(study)
    return store.search(experiment, "tags.run_kind = 'trial'") if experiment else []


def finished_per_lineage(uri: str, study: str) -> dict[str, collections.Counter]:
    """lineage -> Counter(trial_id -> number of FINISHED runs)."""
    out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for run in trial_runs(uri, study):
        if run.info.status == "FINISHED":
            out[run.data.tags["lineage"]][run.data.tags["trial_id"]] += 1
    return out


CONTRACT_PARAMS = {
    "effects": {"A": {"1": 1.0}},
    "residual_sd": 0.1,
    "duration_s": 0.01,
    "metric_points": 4,
    "fail_when": {"A": 2, "opt": "adam"},
    "diverge_when": {"A": 1, "opt": "sgd"},
}


@pytest.mark.parametrize("in_process", [True, False], ids=["in-process", "ray"])
def test_executor_contract(in_process, write_study, tracking_uri):
    """Same trial code, same records, whichever executor runs it."""
    name = f"contract_{'inproc' if in_process else 'ray'}"
    path = write_study(name, {"A": [0, 1, 2], "opt": ["sgd", "adam"], "lr": [0.1, 0.5]}, CONTRACT_PARAMS, replicates=1, retries=1)
    study = load_study(path, "full")
    summary = run_study(study, tracking_uri=tracking_uri, in_process=in_process, progress=False)
    assert (summary.planned, summary.finished, summary.failed, summary.diverged) == (12, 10, 2, 2)
    assert summary.exit_code == 1
    failed = [r for r in summary.results if r.state.value == "FAILED"]
    assert all(r.attempts == 2 for r in failed), "a raising trial is retried study.retries times"
    assert all("synthetic failure planted" in r.error for r in failed)

    df, meta = load_results(study, tracking_uri=tracking_uri)
    assert len(df) == 12 and df.trial_id.is_unique
    assert sorted(df.state.unique()) == ["FAILED", "FINISHED"]
    # typed back per the study definition: numbers stay numbers, strings stay strings
    assert df["A"].dtype.kind == "i" and df["lr"].dtype.kind == "f" and set(df["opt"]) == {"sgd", "adam"}
    assert df["seed_init"].dtype.kind == "i" and df["seed_index_init"].dtype.kind == "i"
    finished = df[df.state == "FINISHED"]
    assert finished["diverged"].sum() == 2 and finished["wall_time_s"].notna().all()
    assert meta["execution_id"] == summary.execution_id and meta["study_hash"] == study.definition_hash
    assert meta["environment"]["python"] and "ray" in meta["environment"]

    client = open_store(tracking_uri, check=False).client
    run = client.get_run(df.loc[df.state == "FAILED", "run_id"].iloc[0])
    local = client.download_artifacts(run.info.run_id, "traceback.txt")
    assert "RuntimeError: synthetic failure planted" in Path(local).read_text()
    tags = run.data.tags
    for key in ("trial_id", "cell_id", "replicate", "study", "study_hash", "variant", "code_version", "execution_id", "env.python", "env.cpu_model"):
        assert tags.get(key), key
    assert tags["mlflow.parentRunId"] == meta["parent_run_id"]
    assert {"A", "opt", "lr", "seed_init", "seed_data", "seed_reduction", "residual_sd"} <= set(run.data.params)
    parent_files = {a.path for a in client.list_artifacts(meta["parent_run_id"])}
    assert {"design.csv", "study.json", "environment.json", "study"} <= parent_files
    # the study's source is kept as text: an embedded store under mlflow/ must never hold a .py file
    assert [a.path for a in client.list_artifacts(meta["parent_run_id"], "study")] == [f"study/{Path(path).name}.txt"]
    design = Path(client.download_artifacts(meta["parent_run_id"], "design.csv")).read_text()
    assert design.splitlines()[0].startswith("order,trial_id,cell_id,replicate,A,opt,lr")

    curves = load_curves(study, tracking_uri=tracking_uri)
    per_trial = curves[curves.metric == "loss"].groupby("trial_id").step.apply(list)
    assert all(steps == [0, 1, 2, 3] for steps in per_trial), "final metrics are not mixed into the curves"


def test_fifty_trials_on_two_cores_and_resume_after_adding_a_level(write_study, tracking_uri):
    path = write_study("fifty", {"A": [0, 1, 2, 3, 4], "B": ["x", "y", "z", "w", "v"]}, {"duration_s": 0.02, "sleep": True}, replicates=2)
    study = load_study(path, "full")
    summary = run_study(study, tracking_uri=tracking_uri, progress=False)
    assert (summary.planned, summary.finished, summary.exit_code) == (50, 50, 0)

    again = run_study(study, tracking_uri=tracking_uri, progress=False)
    assert (again.skipped, again.ran) == (50, 0), "a resume runs nothing when every trial has a FINISHED run"

    bigger = load_study(write_study("fifty", {"A": [0, 1, 2, 3, 4, 5], "B": ["x", "y", "z", "w", "v"]}, {"duration_s": 0.02, "sleep": True}, replicates=2), "full")
    grown = run_study(bigger, tracking_uri=tracking_uri, progress=False)
    assert (grown.skipped, grown.finished) == (50, 10), "adding a level runs only the new cells"
    assert {r.trial_id for r in grown.results} == {t.trial_id for t in __import__("orchestrator").make_plan(bigger).trials if t.levels["A"] == 5}
    counts = finished_per_lineage(tracking_uri, "fifty")
    assert len(counts) == 1 and set(next(iter(counts.values())).values()) == {1}
    df, meta = load_results(bigger, tracking_uri=tracking_uri)
    assert len(df) == 60 and df.state.eq("FINISHED").all() and len(meta["executions"]) == 3


def test_rerun_mode_is_a_new_execution_with_one_finished_run_per_trial(write_study, tracking_uri):
    study = load_study(write_study("reruns", {"A": [0, 1], "B": [0.5, 1.5]}, {"residual_sd": 1.0}), "smoke")
    first = run_study(study, tracking_uri=tracking_uri, in_process=True, progress=False)
    second = run_study(study, tracking_uri=tracking_uri, in_process=True, progress=False, mode="rerun")
    assert second.finished == 4 and second.skipped == 0
    counts = finished_per_lineage(tracking_uri, "reruns")
    assert len(counts) == 2 and all(set(c.values()) == {1} for c in counts.values())
    old, _ = load_results(study, tracking_uri=tracking_uri, execution=first.execution_id)
    new, meta = load_results(study, tracking_uri=tracking_uri)
    assert meta["execution_id"] == second.execution_id
    assert set(old.run_id).isdisjoint(new.run_id)
    assert old.set_index("trial_id").response.equals(new.set_index("trial_id").response.loc[old.trial_id]), "deterministic workload"
    modes = [e["mode"] for e in list_executions(study, tracking_uri=tracking_uri)]
    assert modes == ["resume", "rerun"]
    with pytest.raises(OrchestratorError, match=r"mode: expected 'resume' or 'rerun', found 'again'"):
        run_study(study, tracking_uri=tracking_uri, in_process=True, mode="again")


def test_retries_override_and_failed_trials_exit_status(write_study, tracking_uri):
    path = write_study("retrying", {"A": [0, 1]}, {"fail_when": {"A": 1}}, retries=2)
    result = CliRunner().invoke(main, ["run", str(path), "--variant", "smoke", "--tracking-uri", tracking_uri, "--retries", "0", "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "1 trial(s) failed" in result.output
    df, _ = load_results(load_study(path, "smoke"), tracking_uri=tracking_uri)
    failed = trial_runs(tracking_uri, "retrying")
    assert [r.data.tags["attempts"] for r in failed if r.info.status == "FAILED"] == ["1"]
    # resume retries the failed trial (it still fails: a new FAILED run, still no FINISHED one)
    again = run_study(load_study(path, "smoke"), tracking_uri=tracking_uri, in_process=True, progress=False)
    assert (again.skipped, again.failed) == (1, 1)
    assert again.results[0].attempts == 3


def test_unreachable_or_unwritable_store_is_refused_before_any_trial(write_study, tmp_path):
    path = write_study("nostore")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(TrackingStoreError, match=r"is unwritable: expected a folder for the database, but cannot create"):
        run_study(load_study(path), tracking_uri=f"sqlite:///{blocker}/mlflow/mlflow.db", in_process=True)
    from conftest import free_port

    port = free_port()
    with pytest.raises(TrackingStoreError, match=rf"tracking server http://127.0.0.1:{port} is unreachable .*expected an MLflow server"):
        run_study(load_study(path), tracking_uri=f"http://127.0.0.1:{port}", in_process=True)
    result = CliRunner().invoke(main, ["run", str(path), "--tracking-uri", f"http://127.0.0.1:{port}"])
    assert result.exit_code == 2 and "is unreachable" in result.output and "Traceback" not in result.output


def test_live_curves_reach_the_store_while_a_long_trial_runs(write_study, tracking_uri):
    study = load_study(write_study("live", {"A": [0]}, {"duration_s": 3.0, "sleep": True, "metric_points": 30}), "smoke")
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("summary", run_study(study, tracking_uri=tracking_uri, progress=False)))
    thread.start()
    client = open_store(tracking_uri, check=False).client
    seen_running = []
    deadline = time.time() + 180  # Ray's start on a loaded machine can take most of a minute
    while thread.is_alive() and time.time() < deadline:
        runs = [r for r in trial_runs(tracking_uri, "live") if r.info.status == "RUNNING"]
        if runs:
            points = client.get_metric_history(runs[0].info.run_id, "loss")
            if points:
                seen_running.append(len(points))
        time.sleep(0.3)
    thread.join()
    assert seen_running, "a RUNNING child run with a live loss curve was visible while the trial ran"
    assert box["summary"].finished == 1
    curves = load_curves(study, tracking_uri=tracking_uri)
    assert sorted(curves.step) == list(range(30))


def test_status_and_executions_commands(write_study, tracking_uri):
    path = write_study("statuses", {"A": [0, 1, 2]}, {"fail_when": {"A": 2}})
    runner = CliRunner()
    before = runner.invoke(main, ["status", str(path), "--tracking-uri", tracking_uri, "--format", "json"])
    assert before.exit_code == 0, before.output
    assert json.loads(before.output)["totals"]["missing"] == 3
    run = runner.invoke(main, ["run", str(path), "--tracking-uri", tracking_uri, "--in-process", "--no-progress"])
    assert run.exit_code == 1
    report = json.loads(runner.invoke(main, ["status", str(path), "--tracking-uri", tracking_uri, "--format", "json"]).output)
    assert report["totals"] == {"finished": 2, "failed": 1, "killed": 0, "running": 0, "missing": 0, "trials": 3}
    assert {c["levels"]["A"]: c["failed"] for c in report["cells"]} == {0: 0, 1: 0, 2: 1}
    table = runner.invoke(main, ["status", str(path), "--tracking-uri", tracking_uri])
    assert "total" in table.output and table.exit_code == 0
    listed = json.loads(runner.invoke(main, ["executions", str(path), "--tracking-uri", tracking_uri, "--format", "json"]).output)
    assert len(listed) == 1
    entry = listed[0]
    assert entry["mode"] == "resume" and entry["variant"] == "full" and entry["counts"]["failed"] == 1 and entry["code_version"]
    assert "python" in entry["environment"] and entry["start_time"]
    ui = runner.invoke(main, ["ui", str(path), "--tracking-uri", tracking_uri, "--dry-run"])
    assert ui.exit_code == 0 and "MLflow UI: http://127.0.0.1:5000/#/experiments/" in ui.output and "--host 127.0.0.1" in ui.output


def test_bad_study_and_options_are_one_line_errors(write_study, tracking_uri):
    runner = CliRunner()
    missing = runner.invoke(main, ["run", "no_such_study_here", "--tracking-uri", tracking_uri])
    assert missing.exit_code == 2 and "no study named 'no_such_study_here'" in missing.output
    path = write_study("opts")
    bad = runner.invoke(main, ["run", str(path), "--tracking-uri", tracking_uri, "--max-concurrent", "0"])
    assert bad.exit_code == 2 and "--max-concurrent: expected a positive number of trials, found 0" in bad.output


def test_resources_that_the_embedded_ray_cannot_hold_are_refused(tmp_path, tracking_uri):
    from orchestrator import Study, Variant
    from orchestrator.execution.ray_backend import slots_for
    from orchestrator.definition import Resources

    assert slots_for(Resources(cpus=1, gpus=0.25), {"CPU": 8, "GPU": 1}) == 4, "fractional GPUs share one GPU"
    assert slots_for(Resources(cpus=2), {"CPU": 2}) == 1
    study = Study(name="gpu_study", workload="synthetic", factors={"A": [0, 1]}, resources={"cpus": 1, "gpus": 0.5},
                  metrics={"response": "minimize"}, variants={"smoke": Variant(), "full": Variant()}).with_variant("smoke")
    with pytest.raises(OrchestratorError, match=r"each trial asks for 0.5 GPU \(cluster has 0\): expected the embedded Ray to have that much"):
        run_study(study, tracking_uri=tracking_uri, progress=False)


def test_unreachable_ray_address_is_exit_2_with_one_line(write_study, tracking_uri, subprocess_env):
    import subprocess
    import sys

    from conftest import free_port

    path = write_study("noray")
    done = subprocess.run([sys.executable, "-m", "orchestrator", "run", str(path), "--tracking-uri", tracking_uri, "--address", f"127.0.0.1:{free_port()}"],
                          env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "is unreachable" in done.stderr and "expected a Ray head's GCS port there" in done.stderr and "Traceback" not in done.stderr


def test_max_concurrent_limits_trials_in_flight(write_study, tracking_uri):
    study = load_study(write_study("one_at_a_time", {"A": [0, 1, 2, 3]}, {"duration_s": 0.3, "sleep": True}), "smoke")
    summary = run_study(study, tracking_uri=tracking_uri, max_concurrent=1, progress=False)
    assert summary.finished == 4
    spans = sorted((r.info.start_time, r.info.end_time) for r in trial_runs(tracking_uri, "one_at_a_time"))
    assert all(end <= next_start + 5 for (_, end), (next_start, _) in zip(spans, spans[1:])), spans


LEAN_START = """
import json, os
from pathlib import Path
import ray
from orchestrator.execution.ray_backend import connect

connection = connect(num_cpus=1)
session = connection.node.get_session_dir_path()
assert ray.get(ray.remote(lambda: os.getpid()).remote()) != os.getpid()  # a task ran, in a worker of its own
commands = []
for entry in Path("/proc").iterdir():
    try:
        words = (entry / "cmdline").read_bytes().decode(errors="replace").split("\\0")
    except OSError:
        continue
    if entry.name.isdigit() and any(session in w for w in words):
        commands.append(words)
connection.close()
print(json.dumps({"session": session, "commands": commands}))
"""


def test_the_embedded_ray_starts_without_its_api_server_on_free_ports_and_stops_every_process(subprocess_env):
    """The embedded node (ray_backend._start_embedded): no dashboard head process (ray.init waits for
    it: 1.5-2 s of every start), the agent on a port the system picks instead of Ray's fixed 52365 (which a
    second Ray on the machine - this session's - already holds), and nothing left after close()."""
    import subprocess
    import sys

    subprocess_env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", LEAN_START], env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    programs = [" ".join(words) for words in report["commands"]]
    assert any("raylet/raylet" in p for p in programs) and any("gcs_server" in p for p in programs)
    assert not any("dashboard/dashboard.py" in p for p in programs), programs
    agent = next(p for p in programs if "dashboard/agent.py" in p)
    assert "--listen-port=0" in agent.split()
    left = [pid for pid in Path("/proc").iterdir() if pid.name.isdigit() and report["session"] in _cmdline(pid)]
    assert not left, [_cmdline(pid) for pid in left]


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
    except OSError:
        return ""


def test_where_rays_internals_differ_the_embedded_start_falls_back_to_ray_init(monkeypatch):
    """_start_embedded leans on Ray's internal Node/RayParams (pinned Ray 2.60): a changed signature
    makes it return None before anything starts, and connect() then uses a plain ray.init."""
    import ray._private.parameter

    from orchestrator.execution import ray_backend

    def changed(*args, **kwargs):
        raise TypeError("__init__() got an unexpected keyword argument 'dashboard_agent_listen_port'")

    monkeypatch.setattr(ray._private.parameter, "RayParams", changed)
    assert ray_backend._start_embedded(1) is None
