"""Where a driver runs (a Ray job, a KubeRay pod, a ``ray up`` head, a laptop) and which
stores it accepts there; the Python-lacks-mlflow check, for real, with a Python built
without mlflow. The environments here are the ones Ray, KubeRay and the cluster launcher
set (read from a real job in tests/test_jobs.py and from Ray's and KubeRay's sources)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from orchestrator.execution.placement import (
    InstallationError,
    RecordsPlacementError,
    Site,
    check_installation,
    check_records,
    detect_placement,
)

VENV = Path(sys.executable).parent.parent


def job_env(**env_vars: str) -> dict[str, str]:
    """What Ray's job manager sets for a driver (RAY_JOB_CONFIG_JSON_ENV_VAR, as read from a real job)."""
    config = {"runtime_env": {"working_dir": "gcs://_ray_pkg_0f1e.zip", "env_vars": env_vars},
              "metadata": {"job_submission_id": "raysubmit_AbC123", "job_name": "raysubmit_AbC123"}}
    return {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(config), "RAY_ADDRESS": "10.0.0.1:6379"}


@pytest.fixture
def job_copy(tmp_path):
    """A job's working directory as Ray unpacks it under its --temp-dir."""
    copy = tmp_path / "raytmp" / "session_2026-11-27_12-00-00_000000_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0f1e"
    copy.mkdir(parents=True)
    return copy


def test_a_person_s_machine_takes_any_store_the_default_included(tmp_path):
    placement = detect_placement({}, cwd=tmp_path, home=tmp_path)
    assert placement.site is Site.LOCAL and not placement.site.on_a_cluster
    assert check_records(placement, None) is None and check_records(placement, "sqlite:///mlflow/mlflow.db") is None


def test_a_ray_job_without_a_tracking_uri_is_refused_with_how_to_pass_one(job_copy, tmp_path):
    placement = detect_placement(job_env(OTHER="1"), cwd=job_copy, home=tmp_path)
    assert placement.site is Site.RAY_JOB and placement.job_id == "raysubmit_AbC123" and placement.job_env_vars == ("OTHER",)
    assert job_copy.parents[3] in placement.ray_temp_dirs  # the head's --temp-dir, found from the job's working directory
    with pytest.raises(RecordsPlacementError) as refused:
        check_records(placement, None)
    message = str(refused.value)
    assert message.startswith("no tracking URI: this driver runs as a Ray job (raysubmit_AbC123), and the default store")
    assert f"{job_copy}/mlflow/mlflow.db, Ray's temporary copy of the working directory" in message
    assert "(the job's runtime environment sets OTHER)" in message
    assert """--runtime-env-json '{"env_vars": {"MLFLOW_TRACKING_URI": "http://HOST:5000"}}'""" in message
    assert "--tracking-uri in the entrypoint" in message and "start the head with MLFLOW_TRACKING_URI set" in message


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        ("sqlite:///mlflow/mlflow.db", r"a relative path resolves against its working directory .*Ray's temporary copy of your project"),
        ("relative/folder", r"a relative path resolves"),
        ("sqlite:///{copy}/records.db", r"lies in Ray's temporary folders \(.*raytmp"),
        ("file://{tmp}/raytmp/elsewhere", r"lies in Ray's temporary folders"),
    ],
)
def test_a_ray_job_refuses_stores_inside_its_temporary_copy(job_copy, tmp_path, uri, match):
    placement = detect_placement(job_env(MLFLOW_TRACKING_URI="x"), cwd=job_copy, home=tmp_path)
    with pytest.raises(RecordsPlacementError, match=match):
        check_records(placement, uri.format(copy=job_copy, tmp=tmp_path))


def test_a_ray_job_accepts_and_echoes_an_absolute_file_store_outside_rays_folders(job_copy, tmp_path):
    placement = detect_placement(job_env(MLFLOW_TRACKING_URI="x"), cwd=job_copy, home=tmp_path)
    line = check_records(placement, f"sqlite:///{tmp_path}/records/mlflow.db")
    assert line.startswith(f"this driver runs as a Ray job (raysubmit_AbC123); records: sqlite:///{tmp_path}/records/mlflow.db (a file on ")
    assert line.endswith("outside Ray's temporary folders)")
    assert check_records(placement, "postgresql://u@db:5432/mlflow").endswith("records: postgresql://u@db:5432/mlflow")


def test_a_server_that_does_not_answer_from_the_job_is_refused(job_copy, tmp_path):
    from conftest import free_port

    placement = detect_placement(job_env(), cwd=job_copy, home=tmp_path)
    with pytest.raises(RecordsPlacementError, match=r"does not answer .*/health .*where 127\.0\.0\.1 is the node the driver runs on \(the head\)"):
        check_records(placement, f"http://127.0.0.1:{free_port()}", timeout=2)


def test_a_kuberay_rayjob_pod_is_told_by_the_operators_variables(job_copy, tmp_path):
    env = {**job_env(), "KUBERAY_GEN_RAY_START_CMD": "ray start --head --block", "RAY_CLUSTER_NAME": "screening-full-x7k2",
           "RAY_USAGE_STATS_EXTRA_TAGS": "kuberay_version=v1.6.0;kuberay_crd=RayJob"}
    placement = detect_placement(env, cwd=job_copy, home=tmp_path)
    assert placement.site is Site.KUBERAY and placement.kuberay_kind == "RayJob"
    assert placement.describe() == "a KubeRay RayJob pod (cluster screening-full-x7k2), Ray job raysubmit_AbC123"
    with pytest.raises(RecordsPlacementError, match=r"the RayJob's runtimeEnvYAML env_vars \(`orchestrator schedule --tracking-uri"):
        check_records(placement, None)
    assert "the pod's disk goes with the pod" in check_records(placement, "/mnt/records/mlflow.db")


def test_a_ray_up_head_is_told_by_the_launchers_bootstrap_config(tmp_path):
    (tmp_path / "ray_bootstrap_config.yaml").write_text("cluster_name: x\n")
    placement = detect_placement({}, cwd=tmp_path, home=tmp_path)
    assert placement.site is Site.CLUSTER_HEAD
    with pytest.raises(RecordsPlacementError, match=r"the head's disk, deleted by `ray down`.*MLFLOW_TRACKING_URI=http://127\.0\.0\.1:5000 in ~/\.bashrc"):
        check_records(placement, None)
    assert "`ray down` deletes this disk" in check_records(placement, f"sqlite:///{tmp_path}/mlflow.db")


def test_the_project_s_python_passes_the_installation_check(tmp_path):
    check_installation(detect_placement({}, cwd=tmp_path, home=tmp_path))


def python_without_mlflow(folder: Path) -> Path:
    """A Python with every package of the project's environment except mlflow (a venv over symlinks)."""
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    site = next((folder / "lib").glob("python3*/site-packages"))
    ours = next((VENV / "lib").glob("python3*/site-packages"))
    for entry in ours.iterdir():
        if not entry.name.startswith("mlflow"):
            (site / entry.name).symlink_to(entry)
    return folder / "bin" / "python"


def test_a_python_without_mlflow_is_told_before_the_records_folder_shadows_it(tmp_path):
    python = python_without_mlflow(tmp_path / "bare")
    work = tmp_path / "work"
    (work / "mlflow").mkdir(parents=True)  # the project's records folder, on PYTHONPATH as in a Ray job
    (work / "mlflow" / "mlflow.db").write_bytes(b"")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(work), os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run([str(python), str(REPO / "studies" / "screening_demo.py"), "--variant", "smoke", "--in-process"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "mlflow is not installed; `import mlflow` finds only the plain folder" in done.stderr and f"{work / 'mlflow'}" in done.stderr
    assert "(the project's records folder, not the package)" in done.stderr
    assert f"Python: {python} (Python {sys.version.split()[0]})" in done.stderr
    assert "`. .venv/bin/activate`, then `orchestrator run ...`" in done.stderr
    assert "No module named" not in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in (work / "mlflow").iterdir()) == ["mlflow.db"]  # nothing written


def test_installation_check_names_a_missing_package_and_the_head_advice_in_a_job(job_copy, tmp_path):
    placement = detect_placement(job_env(), cwd=job_copy, home=tmp_path)
    with pytest.raises(InstallationError, match=r"no_such_package_xyz is not installed\. Python: .*`\. \.venv/bin/activate && ray start --head`"):
        check_installation(placement, names=("ray", "no_such_package_xyz"))
