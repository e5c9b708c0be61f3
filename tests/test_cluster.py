"""``cluster.yaml``: valid against Ray's own schema; a head with an MLflow server on records
that outlive the cluster, whose URI reaches jobs, shells and workers; spot and on-demand GPU
node types. (Its ``mlflow server`` command runs for real in tests/test_jobs.py.)"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import yaml

from conftest import REPO

CONFIG = yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_validates_against_the_schema_ray_ships():
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(CONFIG, schema)
    assert CONFIG["head_node_type"] in CONFIG["available_node_types"]
    assert any("pip install" in c and "numerics-orchestrator[postgres]" in c for c in CONFIG["setup_commands"])
    assert CONFIG["file_mounts"]["~/numerics-orchestrator"] == "."
    assert "**/.venv" in CONFIG["rsync_exclude"] and "**/mlflow/*" in CONFIG["rsync_exclude"]


def test_every_node_runs_rays_image_for_the_pinned_ray_and_python():
    from orchestrator.operations.schedule import RAY_VERSION

    docker = CONFIG["docker"]
    for image in (docker["image"], docker["head_image"]):
        assert image.startswith(f"rayproject/ray:{RAY_VERSION}-py311-"), image


def test_spot_and_on_demand_gpu_node_types_carry_their_own_custom_resource():
    types = CONFIG["available_node_types"]
    spot, on_demand = types["gpu_spot"], types["gpu_on_demand"]
    assert spot["resources"]["GPU"] >= 1 and spot["resources"]["spot"] == 1 and "on_demand" not in spot["resources"]
    assert on_demand["resources"]["GPU"] >= 1 and on_demand["resources"]["on_demand"] == 1 and "spot" not in on_demand["resources"]
    assert spot["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert "InstanceMarketOptions" not in on_demand["node_config"]
    assert types["head"]["resources"] == {"CPU": 0}  # no trials on the head: it holds the driver and the server


def test_the_head_serves_records_that_outlive_the_cluster_and_every_driver_gets_the_uri():
    head = CONFIG["head_start_ray_commands"]
    server = next(c for c in head if "mlflow server" in c)
    words = shlex.split(server.split(">")[0])
    store = words[words.index("--backend-store-uri") + 1]
    artifacts = words[words.index("--artifacts-destination") + 1]
    assert store.startswith("postgresql://") and artifacts.startswith("s3://")  # outside the nodes: `ray down` keeps them
    assert store in (REPO / "cluster.yaml").read_text().split("head_start_ray_commands")[0]  # named in the header too
    start = next(c for c in head if "ray start --head" in c)
    assert head.index(server) < head.index(start)
    assert "MLFLOW_TRACKING_URI=http://127.0.0.1:5000 ray start --head" in start  # every job's driver inherits it
    assert any("MLFLOW_TRACKING_URI=http://127.0.0.1:5000" in c for c in CONFIG["head_setup_commands"])  # ray submit / attach shells
    workers = " ".join(CONFIG["worker_start_ray_commands"] + CONFIG["worker_setup_commands"])
    assert workers.count("MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5000") == 2


def test_rayignore_keeps_the_virtualenv_and_records_out_of_job_uploads():
    lines = (REPO / ".rayignore").read_text().split()
    assert ".venv/" in lines and "mlflow/" in lines


def test_gpu_nodes_advertise_the_gpu_memory_nvidia_smi_measures(tmp_path):
    """The worker start command, run for real up to ``ray start``: with the node type's resources in
    RAY_OVERRIDE_RESOURCES (as the launcher sets them) and a stand-in nvidia-smi for one A10G."""
    import os
    import subprocess
    import sys

    types = CONFIG["available_node_types"]
    for name in ("gpu_spot", "gpu_on_demand"):
        assert types[name]["resources"]["gpu_memory_gb"] == 22, name  # 23028 MiB, what the autoscaler plans with
    start = " ".join(c for c in CONFIG["worker_start_ray_commands"] if "ray start" in c)
    assignment = start.split("MLFLOW_TRACKING_URI=")[0].split(";", 1)[1].strip()
    assert assignment.startswith('RAY_OVERRIDE_RESOURCES="$(python -m orchestrator.execution.node || echo "$RAY_OVERRIDE_RESOURCES")"')
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 23028\n")
    smi.chmod(0o755)
    declared = json.dumps(types["gpu_spot"]["resources"])
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": os.environ.get("HOME", "/root"), "RAY_OVERRIDE_RESOURCES": declared}
    shown = subprocess.run(["sh", "-c", f'{assignment}; echo "$RAY_OVERRIDE_RESOURCES"'], env=env, capture_output=True, text=True, timeout=60)
    assert json.loads(shown.stdout) == {"CPU": 8, "GPU": 1, "gpu_memory_gb": 22, "spot": 1} and shown.stderr == ""
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")  # a broken driver: the node type's resources stand
    shown = subprocess.run(["sh", "-c", f'{assignment}; echo "$RAY_OVERRIDE_RESOURCES"'], env=env, capture_output=True, text=True, timeout=60)
    assert json.loads(shown.stdout) == json.loads(declared) and "NVIDIA-SMI has failed" in shown.stderr
