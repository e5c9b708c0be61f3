"""Cluster: ``cluster.yaml`` validates against Ray's own schema, and a study submitted as a
Ray job (``ray job submit --working-dir . -- python studies/x.py``) runs for real on a
separate local Ray head this test starts and stops (by the pids under its own temp dir)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, free_port


def test_cluster_yaml_validates_against_the_schema_ray_ships():
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    gpu_types = [name for name, spec in types.items() if spec.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu_types, "a GPU worker type"
    assert any("pip install" in c and "-e ~/numerics-orchestrator" in c for c in config["setup_commands"])
    assert config["file_mounts"] == {"~/numerics-orchestrator": "."}
    assert "**/.venv" in config["rsync_exclude"] and "**/mlflow/*" in config["rsync_exclude"]


def test_rayignore_keeps_the_virtualenv_and_records_out_of_job_uploads():
    lines = (REPO / ".rayignore").read_text().split()
    assert ".venv/" in lines and "mlflow/" in lines


def _tree_under(marker: str) -> list[int]:
    """Pids whose command line names ``marker`` (our head's temp dir), and all their descendants."""
    parents: dict[int, int] = {}
    roots = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents[int(entry.name)] = ppid
        if marker in cmdline:
            roots.append(int(entry.name))
    found = set(roots)
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                changed = True
    return sorted(found)


def _stop_head(temp_dir: str) -> None:
    pids = _tree_under(temp_dir)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(2)
        pids = _tree_under(temp_dir)
        if not pids:
            return


@pytest.fixture
def ray_head():
    """A local Ray head on 127.0.0.1 (free ports, its own temp dir), stopped by its pids at the end."""
    temp_dir = tempfile.mkdtemp(prefix="rayhead", dir="/tmp")
    port, dashboard = free_port(), free_port()
    ray_bin = str(Path(sys.executable).parent / "ray")
    command = [
        ray_bin, "start", "--head", "--port", str(port), "--num-cpus", "2", "--temp-dir", temp_dir,
        "--node-ip-address", "127.0.0.1", "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
        "--dashboard-port", str(dashboard), "--dashboard-agent-listen-port", str(free_port()),
        "--dashboard-agent-grpc-port", str(free_port()), "--ray-client-server-port", str(free_port()),
        "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
        "--disable-usage-stats",
    ]
    # Ray 2.6x enables token authentication for heads started with `ray start --head`;
    # clients (the Jobs API, `ray job submit`) need RAY_AUTH_MODE=token to send the token.
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    try:
        started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stdout + started.stderr
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        _stop_head(temp_dir)


JOB_CLIENT = """
import json, sys, time
from ray.job_submission import JobStatus, JobSubmissionClient

address, working_dir, entrypoint = sys.argv[1:4]
client = JobSubmissionClient(address)
job = client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": working_dir})
deadline = time.time() + 300
status = client.get_job_status(job)
while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED} and time.time() < deadline:
    time.sleep(1)
    status = client.get_job_status(job)
print(json.dumps({"status": str(status.value), "logs": client.get_job_logs(job)}))
"""


def test_study_submitted_as_a_ray_job_records_its_runs(ray_head, tmp_path):
    from orchestrator import load_study
    from orchestrator.records import load_results

    uri = f"sqlite:///{tmp_path / 'records' / 'mlflow.db'}"  # absolute: the job's cwd is its uploaded working dir
    entrypoint = (
        "test ! -e .venv && test ! -e mlflow/mlflow.db && "  # the upload left the virtualenv and records out
        f"{sys.executable} studies/screening_demo.py --variant smoke --tracking-uri {uri} --no-progress"
    )
    # The Jobs client runs in a process started with RAY_AUTH_MODE=token: Ray reads the mode
    # once, when it is imported, so setting it later in this process would not reach the client.
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    done = subprocess.run([sys.executable, "-c", JOB_CLIENT, ray_head, str(REPO), entrypoint], env=env, capture_output=True, text=True, timeout=360)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["status"] == "SUCCEEDED", report["logs"][-4000:]
    assert "8 finished" in report["logs"]
    df, meta = load_results(load_study(REPO / "studies" / "screening_demo.py", "smoke"), tracking_uri=uri)
    assert len(df) == 8 and df.state.eq("FINISHED").all()
    assert df["A"].isin([-1, 1]).all() and df["A"].dtype.kind == "i"
