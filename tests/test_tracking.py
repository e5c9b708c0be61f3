"""The records: embedded default store, environment fingerprint, artifacts, error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator import load_study
from orchestrator.records.environment import code_version, fingerprint, summary
from orchestrator.execution import run_study
from orchestrator.records import (
    TrackingError,
    list_executions,
    load_results,
    log_artifacts,
    open_store,
    resolve_tracking_uri,
)


def test_embedded_default_store_is_sqlite_under_mlflow_here(tmp_path, monkeypatch, write_study):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    path = write_study("embedded")
    result = run_study(load_study(path), in_process=True, progress=False)
    assert result.finished == 2
    assert (tmp_path / "mlflow" / "mlflow.db").is_file()
    assert any((tmp_path / "mlflow" / "artifacts").rglob("design.csv")), "artifacts live in mlflow/artifacts"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path / 'elsewhere.db'}"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_fingerprint_names_versions_and_hardware_and_no_secrets(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2-secret")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    facts = fingerprint()
    for key in ("python", "torch", "ray", "mlflow", "cpu_model", "cpu_count", "gpu_model", "cuda", "omp_num_threads", "cublas_workspace_config"):
        assert key in facts, key
    assert facts["omp_num_threads"] == "2" and facts["ray"].startswith("2.")
    assert "hunter2-secret" not in json.dumps(facts) and not any("secret" in k.lower() for k in facts)
    assert summary(facts).startswith(f"python {facts['python']}, torch ")
    assert code_version() != ""


def test_log_artifacts_to_the_parent_run_and_clear_errors(write_study, tracking_uri, tmp_path):
    path = write_study("artifacts_demo")
    study = load_study(path, "smoke")
    with pytest.raises(TrackingError, match=r"no records of study 'artifacts_demo' in .*Run it first \(orchestrator run "):
        load_results(study, tracking_uri=tracking_uri)
    first = run_study(study, tracking_uri=tracking_uri, in_process=True, progress=False)
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.md").write_text("# Analysis\n")
    run_id = log_artifacts(study, report, tracking_uri=tracking_uri, artifact_path="analysis")
    assert run_id == first.parent_run_id
    client = open_store(tracking_uri, check=False).client
    assert [a.path for a in client.list_artifacts(run_id, "analysis")] == ["analysis/report.md"]
    with pytest.raises(TrackingError, match=r"execution '20990101T000000-zzzz' of study 'artifacts_demo' \(variant smoke\) not found; expected one of: "):
        load_results(study, tracking_uri=tracking_uri, execution="20990101T000000-zzzz")
    with pytest.raises(TrackingError, match=r"has no executions of variant 'full'.*--variant full"):
        load_results(load_study(path, "full"), tracking_uri=tracking_uri)
    # by name (a study file path) works as well as by Study
    df, meta = load_results(str(path), variant="smoke", tracking_uri=tracking_uri)
    assert len(df) == 2 and meta["parent_run_id"] == first.parent_run_id
    assert [e["execution_id"] for e in list_executions(str(path), tracking_uri=tracking_uri)] == [first.execution_id]


def test_study_script_runs_the_cli(write_study, tracking_uri, subprocess_env):
    import subprocess
    import sys

    path = write_study("scripted")
    done = subprocess.run([sys.executable, str(path), "--variant", "smoke", "--tracking-uri", tracking_uri, "--in-process", "--no-progress"],
                          env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 finished (0 diverged), 0 failed" in done.stdout
    status = subprocess.run([sys.executable, str(path), "status", "--variant", "smoke", "--tracking-uri", tracking_uri, "--format", "json"],
                            env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert json.loads(status.stdout)["totals"]["finished"] == 2
    assert Path(path).is_file()
