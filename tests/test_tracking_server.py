"""A real ``mlflow server`` on the study store: its REST API lists the parent run and its
nested trial runs, with typed levels recoverable; a study also runs through the server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from conftest import free_port, wait_for_health
from orchestrator import load_study
from orchestrator.execution import run_study
from orchestrator.records import load_results


def call(base: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"}, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def mlflow_server(tmp_path):
    """``mlflow server`` on a fresh SQLite store, 127.0.0.1, a free port; stopped by its pid (group) at the end."""
    db = tmp_path / "server" / "mlflow.db"
    db.parent.mkdir()
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination", str(tmp_path / "server" / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(base, proc, tmp_path / "server.log", timeout=90)
        yield base, f"sqlite:///{db}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the group this fixture started: the server and its workers
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_rest_api_lists_parent_and_nested_trial_runs_with_typed_levels(mlflow_server, write_study):
    base, db_uri = mlflow_server
    factors = {"lr": [0.1, 1.0], "width": [8, 16], "opt": ["sgd", "adam"], "bias": [True, False]}
    study = load_study(write_study("served", factors, {"metric_points": 3}), "smoke")
    # one run written straight to the SQLite file the server reads, one through the server's REST API
    first = run_study(study, tracking_uri=db_uri, in_process=True, progress=False)
    second = run_study(study, tracking_uri=base, in_process=True, progress=False, mode="rerun")
    assert first.finished == 16 and second.finished == 16 and second.errors == []

    experiment = call(base, "/api/2.0/mlflow/experiments/get-by-name?" + urllib.parse.urlencode({"experiment_name": "served"}))["experiment"]
    parents = call(base, "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]], "filter": "tags.run_kind = 'execution'"})["runs"]
    by_execution = {t["value"]: p for p in parents for t in p["data"]["tags"] if t["key"] == "execution_id"}
    assert set(by_execution) == {first.execution_id, second.execution_id}
    for summary in (first, second):
        parent_id = by_execution[summary.execution_id]["info"]["run_id"]
        children = call(base, "/api/2.0/mlflow/runs/search", {
            "experiment_ids": [experiment["experiment_id"]],
            "filter": f"tags.run_kind = 'trial' and tags.execution_id = '{summary.execution_id}'",
            "max_results": 1000,
        })["runs"]
        assert len(children) == 16
        for child in children:
            tags = {t["key"]: t["value"] for t in child["data"]["tags"]}
            assert tags["mlflow.parentRunId"] == parent_id and child["info"]["status"] == "FINISHED"
            levels = json.loads(tags["orchestrator.trial"])["levels"]
            assert type(levels["lr"]) is float and type(levels["width"]) is int and type(levels["opt"]) is str and type(levels["bias"]) is bool
            params = {p["key"]: p["value"] for p in child["data"]["params"]}
            assert params["lr"] == str(levels["lr"]) or float(params["lr"]) == levels["lr"]
    # the records read back through the server, typed per the study
    df, meta = load_results(study, tracking_uri=base)
    assert len(df) == 16 and meta["execution_id"] == second.execution_id
    assert df["bias"].map(type).eq(bool).all() and df["width"].dtype.kind == "i" and df["lr"].dtype.kind == "f"
    artifacts = call(base, "/api/2.0/mlflow/artifacts/list?" + urllib.parse.urlencode({"run_id": meta["parent_run_id"]}))
    assert "design.csv" in {f["path"] for f in artifacts.get("files", [])}


def test_orchestrator_ui_serves_the_study_store_on_localhost(write_study, tmp_path, subprocess_env):
    uri = f"sqlite:///{tmp_path / 'ui' / 'mlflow.db'}"
    path = write_study("with_ui")
    run_study(load_study(path, "smoke"), tracking_uri=uri, in_process=True, progress=False)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "ui", str(path), "--tracking-uri", uri, "--port", str(port)],
                            env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        first = proc.stdout.readline()
        assert first.startswith(f"MLflow UI: http://127.0.0.1:{port}/#/experiments/"), first
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while True:
            try:
                experiment = call(base, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=with_ui")["experiment"]
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, "mlflow ui did not start"
                time.sleep(0.5)
        assert f"/#/experiments/{experiment['experiment_id']}/runs?workflowType=machine_learning" in first  # its runs table
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the group this test started: orchestrator ui and the mlflow ui under it
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
