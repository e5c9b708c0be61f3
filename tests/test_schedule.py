"""`orchestrator schedule`: manifests validate against the KubeRay CRD schemas (offline)."""

from __future__ import annotations

import functools
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.operations.schedule import ScheduleError, check_cron

ROOT = Path(__file__).resolve().parents[1]
CRDS = Path(__file__).parent / "data" / "kuberay-crds"
STUDY = str(ROOT / "studies" / "screening_demo.py")
URI = "http://mlflow.example.svc:5000"


@functools.lru_cache(maxsize=None)
def crd_schema(name: str) -> dict:
    crd = yaml.safe_load((CRDS / name).read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return version["schema"]["openAPIV3Schema"]


def schedule(*args: str) -> str:
    result = CliRunner().invoke(main, ["schedule", STUDY, *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_raycronjob_validates_against_the_crd_and_runs_the_study_cli():
    manifest = yaml.safe_load(schedule("--cron", "0 3 * * *", "--tracking-uri", URI, "--variant", "smoke", "--image", "reg/orch:1"))
    jsonschema.validate(manifest, crd_schema("ray.io_raycronjobs.yaml"))
    assert manifest["kind"] == "RayCronJob" and manifest["apiVersion"] == "ray.io/v1"
    job = manifest["spec"]["jobTemplate"]
    assert manifest["spec"]["schedule"] == "0 3 * * *"
    assert job["entrypoint"] == (
        "orchestrator run studies/screening_demo.py --variant smoke --mode rerun && "
        "orchestrator compare studies/screening_demo.py --variant smoke --baseline previous --candidate latest"
    )
    assert yaml.safe_load(job["runtimeEnvYAML"]) == {"working_dir": "/app", "env_vars": {"MLFLOW_TRACKING_URI": URI}}
    assert job["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_rayjob_with_cron_wrapper_validates_and_wraps_the_same_job():
    documents = list(yaml.safe_load_all(schedule("--cron", "@daily", "--format", "rayjob", "--tracking-uri", URI)))
    kinds = [d["kind"] for d in documents]
    assert kinds == ["ConfigMap", "ServiceAccount", "Role", "RoleBinding", "CronJob"]
    rayjob = yaml.safe_load(documents[0]["data"]["rayjob.yaml"])
    jsonschema.validate(rayjob, crd_schema("ray.io_rayjobs.yaml"))
    assert rayjob["metadata"]["generateName"] == "screening-demo-full-"
    assert yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])["env_vars"] == {"MLFLOW_TRACKING_URI": URI}
    cron = documents[-1]["spec"]
    assert cron["schedule"] == "@daily"
    assert cron["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"] == ["kubectl", "create", "-f", "/manifests/rayjob.yaml"]


def test_a_broken_manifest_is_caught_by_the_schema():
    manifest = yaml.safe_load(schedule("--cron", "0 3 * * *", "--tracking-uri", URI))
    del manifest["spec"]["jobTemplate"]["rayClusterSpec"]["headGroupSpec"]["template"]
    with pytest.raises(jsonschema.ValidationError, match="'template' is a required property"):
        jsonschema.validate(manifest, crd_schema("ray.io_raycronjobs.yaml"))


def test_crontab_line_wraps_ray_job_submit_with_the_uri_in_the_runtime_env(monkeypatch, tmp_path):
    import json
    import shlex
    import sys

    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    line = schedule("--cron", "30 2 * * 1-5", "--format", "crontab").strip()
    assert line.startswith(f"30 2 * * 1-5 cd {ROOT} && RAY_AUTH_MODE=token {Path(sys.executable).with_name('ray')} job submit ")
    words = shlex.split(line.split(" && ", 1)[1].split(" >> ")[0])
    assert words[words.index("--address") + 1] == "http://127.0.0.1:8265" and words[words.index("--working-dir") + 1] == "."
    # the submitting shell's environment never reaches a job: the URI rides in its runtime env
    runtime = json.loads(words[words.index("--runtime-env-json") + 1])
    assert runtime == {"env_vars": {"MLFLOW_TRACKING_URI": f"sqlite:///{ROOT}/mlflow/mlflow.db"}}
    assert "MLFLOW_TRACKING_URI=" not in line
    assert words[-3:-1] == ["sh", "-c"] and words[-1].startswith("orchestrator run studies/screening_demo.py --variant full --mode rerun && ")
    assert line.endswith(">> mlflow/schedule-screening-demo-full.log 2>&1")


def test_crontab_line_makes_a_relative_store_absolute_and_escapes_percent(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    line = schedule("--cron", "@daily", "--format", "crontab", "--tracking-uri", "sqlite:///records/m.db").strip()
    assert f'"MLFLOW_TRACKING_URI": "sqlite:///{tmp_path.resolve()}/records/m.db"' in line
    line = schedule("--cron", "@daily", "--format", "crontab", "--tracking-uri", "postgresql://u:p%40ss@db/mlflow").strip()
    assert "postgresql://u:p\\%40ss@db/mlflow" in line and "p%40" not in line  # % is a newline to cron


@pytest.mark.parametrize("fmt", ["raycronjob", "rayjob"])
def test_kubernetes_formats_refuse_a_file_store(fmt):
    result = CliRunner().invoke(main, ["schedule", STUDY, "--cron", "@daily", "--format", fmt, "--tracking-uri", "sqlite:////data/mlflow.db"])
    assert result.exit_code == 2
    assert "--tracking-uri sqlite:////data/mlflow.db: a Kubernetes job runs in pods that are deleted afterwards, with their disks" in result.output


def test_kubernetes_formats_need_a_tracking_server(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(main, ["schedule", STUDY, "--cron", "@daily"])
    assert result.exit_code == 2
    assert "records need an MLflow server the cluster can reach" in result.output


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("0 3 * *", r"expected five fields .* found 4"),
        ("61 3 * * *", r"the minute field '61' is not valid"),
        ("0 3 * foo *", r"the month field 'foo' is not valid"),
        ("0 5-2 * * *", r"the hour field '5-2' is not valid"),
        ("*/0 * * * *", r"the minute field '\*/0' is not valid"),
    ],
)
def test_bad_cron_expressions_are_named(expr, message):
    with pytest.raises(ScheduleError, match=message):
        check_cron(expr)


def test_good_cron_expressions_pass():
    for expr in ("0 3 * * *", "*/15 * * * *", "0 0 1,15 * mon-fri", "@weekly", "0 0 * jan,jul sun"):
        assert check_cron(expr) == expr
