"""Interruptions for real: SIGKILL of a worker, SIGINT and SIGKILL of the driver, then reruns.

The driver runs as a subprocess (``python -m orchestrator run``) that joins the session's
Ray; every signal goes to one pid this test started or found by its exact task name.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path
import signal
import subprocess
import sys
import threading
import time

import pytest

from orchestrator import load_study, make_plan
from orchestrator.execution import run_study
from orchestrator.records import open_store

pytestmark = pytest.mark.usefixtures("ray_session")

LONG = {"duration_s": 2.0, "sleep": True, "metric_points": 20}


def runs_of(uri: str, study: str, kind: str = "trial") -> list:
    store = open_store(uri, check=False)
    experiment = store.experiment_id(study)
    return store.search(experiment, f"tags.run_kind = '{kind}'") if experiment else []


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def process_titled(prefix: str) -> list[int]:
    """Pids of processes whose title (argv[0]) starts with ``prefix`` (from /proc; Linux)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if title.startswith(prefix):
                pids.append(int(entry.name))
    return pids


def assert_one_finished_run_per_trial(uri: str, study) -> None:
    counts = collections.Counter(r.data.tags["trial_id"] for r in runs_of(uri, study.name) if r.info.status == "FINISHED")
    assert set(counts) == {t.trial_id for t in make_plan(study).trials}
    assert set(counts.values()) == {1}, counts


def start_driver(path, uri, env) -> subprocess.Popen:
    import ray

    address = ray.get_runtime_context().gcs_address
    command = [sys.executable, "-m", "orchestrator", "run", str(path), "--tracking-uri", uri, "--address", address, "--no-progress"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkill_of_a_worker_mid_trial_is_retried_without_a_duplicate(write_study, tracking_uri):
    study = load_study(write_study("worker_kill", {"A": [0, 1]}, LONG), "smoke")
    victim = make_plan(study).trials[0].trial_id
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("summary", run_study(study, tracking_uri=tracking_uri, progress=False)))
    thread.start()
    killed = []

    def kill_worker() -> bool:
        # Ray titles a worker process after the task it runs: ray::trial-<trial_id prefix>
        for pid in process_titled(f"ray::trial-{victim[:12]}"):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return True
        return False

    wait_for(kill_worker, 30, "the worker running the victim trial")
    thread.join(timeout=60)
    summary = box["summary"]
    assert killed and summary.finished == 2 and summary.failed == 0
    assert {r.trial_id: r.attempts for r in summary.results}[victim] == 2, "the killed attempt was retried"
    assert_one_finished_run_per_trial(tracking_uri, study)


@pytest.mark.parametrize("sig, code, says", [(signal.SIGINT, 130, "interrupted - run again to resume"),
                                             (signal.SIGTERM, 143, "stopped by SIGTERM - run again to resume")], ids=["sigint", "sigterm"])
def test_sigint_stops_cleanly_and_the_next_run_resumes(sig, code, says, write_study, tracking_uri, subprocess_env):
    """Ctrl-C, and SIGTERM (what a scheduler evicting the driver sends; Ray's own handler would abort the driver)."""
    path = write_study(f"interrupted_{sig.name.lower()}", {"A": [0, 1, 2], "B": [0, 1]}, LONG)
    study = load_study(path, "full")
    driver = start_driver(path, tracking_uri, subprocess_env)
    try:
        wait_for(lambda: any(r.info.status == "FINISHED" for r in runs_of(tracking_uri, study.name)), 60, "a first finished trial")
        driver.send_signal(sig)
        output, _ = driver.communicate(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == code, output
    assert says in output and "SIGTERM received" not in output
    statuses = collections.Counter(r.info.status for r in runs_of(tracking_uri, study.name))
    assert statuses["KILLED"] >= 1 and statuses["RUNNING"] == 0, statuses
    assert [r.info.status for r in runs_of(tracking_uri, study.name, "execution")] == ["KILLED"]
    finished_before = statuses["FINISHED"]

    summary = run_study(study, tracking_uri=tracking_uri, progress=False)
    assert summary.skipped == finished_before and summary.finished == 6 - finished_before
    assert_one_finished_run_per_trial(tracking_uri, study)


def test_sigkill_of_the_driver_leaves_stale_runs_that_the_rerun_closes(write_study, tracking_uri, subprocess_env):
    path = write_study("crashed", {"A": [0, 1, 2], "B": [0, 1]}, LONG)
    study = load_study(path, "full")
    driver = start_driver(path, tracking_uri, subprocess_env)
    try:
        wait_for(lambda: any(r.info.status == "RUNNING" for r in runs_of(tracking_uri, study.name)), 60, "a live (RUNNING) trial run")
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    stale = [r for r in runs_of(tracking_uri, study.name) if r.info.status == "RUNNING"]
    assert stale, "a crashed driver leaves its live runs RUNNING"
    time.sleep(1.0)  # let Ray reap the dead driver's tasks
    summary = run_study(study, tracking_uri=tracking_uri, progress=False)
    assert summary.stale_closed >= len(stale)
    assert all(open_store(tracking_uri, check=False).client.get_run(r.info.run_id).info.status == "KILLED" for r in stale)
    assert not [r for r in runs_of(tracking_uri, study.name, "execution") if r.info.status == "RUNNING"]
    assert_one_finished_run_per_trial(tracking_uri, study)


def test_sigint_of_an_in_process_run_kills_the_running_trial_and_resumes(write_study, tracking_uri, subprocess_env):
    path = write_study("interrupted_inproc", {"A": [0, 1, 2]}, LONG)
    study = load_study(path, "full")
    command = [sys.executable, "-m", "orchestrator", "run", str(path), "--tracking-uri", tracking_uri, "--in-process", "--no-progress"]
    driver = subprocess.Popen(command, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: any(r.info.status == "FINISHED" for r in runs_of(tracking_uri, study.name)), 60, "a first finished trial")
        driver.send_signal(signal.SIGINT)
        output, _ = driver.communicate(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, output
    statuses = collections.Counter(r.info.status for r in runs_of(tracking_uri, study.name))
    assert statuses["KILLED"] == 1 and statuses["RUNNING"] == 0, statuses
    summary = run_study(study, tracking_uri=tracking_uri, in_process=True, progress=False)
    assert summary.finished == 3 - statuses["FINISHED"]
    assert_one_finished_run_per_trial(tracking_uri, study)
