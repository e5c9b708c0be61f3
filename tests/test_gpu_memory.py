"""A GPU with at least N GB free (``Resources(gpus=1, gpu_memory_gb=N)``): the study field,
what a node advertises (``python -m orchestrator.execution.node``, run for real against a
stand-in ``nvidia-smi`` on PATH), the worker's check at a trial's start (an injected probe,
the boundary to torch), and how a refusal is retried and charged. Placement by Ray on real
nodes that advertise the memory, and the refusal on one of them, are in tests/test_faults.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from conftest import REPO

GOOD = """
from orchestrator import Factor, Study, Variant
study = Study(name="gpu_mem", workload="synthetic", factors=[Factor("A", [0, 1])], metrics={{"response": "minimize"}},
              variants={{"smoke": Variant(replicates=1), "full": Variant()}}, resources={resources})
"""


def load(tmp_path, resources: str):
    from orchestrator import load_study

    path = tmp_path / "gpu_mem.py"
    path.write_text(GOOD.format(resources=resources))
    return load_study(path, "full")


# -- the study field ----------------------------------------------------------------------------


def test_a_study_asks_for_gpu_memory_and_it_travels_with_every_trial(tmp_path):
    from orchestrator import make_plan
    from orchestrator.design.trial import Resources, Trial

    study = load(tmp_path, "{'gpus': 1, 'gpu_memory_gb': 20}")
    assert study.resources == Resources(gpus=1.0, gpu_memory_gb=20.0)
    trial = make_plan(study).trials[0]
    assert Trial.from_dict(json.loads(json.dumps(trial.to_dict()))).resources.gpu_memory_gb == 20.0
    # a study that does not ask keeps its definition (and so its hash: resume finds its runs)
    assert "gpu_memory_gb" not in load(tmp_path, "{'gpus': 1}").to_dict()["resources"]


def test_every_problem_with_gpu_memory_is_named_at_once(tmp_path):
    from orchestrator.errors import StudyError

    with pytest.raises(StudyError) as raised:
        load(tmp_path, "{'gpu_memory_gb': 20, 'gpu_mem': 3, 'custom': {'gpu_memory_gb': 4}}")
    message = str(raised.value)
    assert "resources.gpu_memory_gb: expected gpus > 0 beside it (GPU memory is asked of the trial's GPUs), found gpu_memory_gb=20 with gpus=0.0. " \
           "Add gpus, e.g. resources={'gpus': 1, 'gpu_memory_gb': 20}" in message
    assert 'resources.gpu_mem: expected cpus, gpus, memory_mb, custom or gpu_memory_gb, found unknown key \'gpu_mem\'. Did you mean "gpu_memory_gb"?' in message
    assert "resources.custom: expected custom resources other than gpu_memory_gb, found 'gpu_memory_gb' among them" in message
    with pytest.raises(StudyError, match=r"resources\.gpu_memory_gb: expected a number of GB > 0 that must be free on each GPU of a trial, found '20' \(str\)\. e\.g\. gpu_memory_gb=20"):
        load(tmp_path, "{'gpus': 1, 'gpu_memory_gb': '20'}")


def test_a_trial_reserves_its_gpu_memory_per_gpu_as_the_resource_nodes_advertise():
    from orchestrator.design.trial import Resources
    from orchestrator.execution.ray_backend import custom_resources, slots_for, wanted

    assert custom_resources(Resources(gpus=0.25, gpu_memory_gb=5)) == {"gpu_memory_gb": 5.0}
    assert custom_resources(Resources(gpus=2, gpu_memory_gb=20, custom={"spot": 1})) == {"spot": 1, "gpu_memory_gb": 40.0}
    assert wanted(Resources(cpus=1, gpus=1, gpu_memory_gb=20)) == {"CPU": 1.0, "GPU": 1.0, "gpu_memory_gb": 20.0}
    # two 24 GB nodes: two 20 GB trials at once, not four, although four GPUs' quarters are free
    assert slots_for(Resources(cpus=0.5, gpus=0.25, gpu_memory_gb=20), {"CPU": 16, "GPU": 2, "gpu_memory_gb": 48}) == 2


# -- what a node advertises ------------------------------------------------------------------------


def node_resources(tmp_path, mib: str | None, exit_code: int = 0, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m orchestrator.execution.node`` with a stand-in ``nvidia-smi`` printing ``mib`` (None: no nvidia-smi)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if mib is not None:
        smi = bin_dir / "nvidia-smi"
        smi.write_text(f"#!/bin/sh\n[ \"$1\" = --query-gpu=memory.total ] || exit 9\nprintf '{mib}'\necho driver gone >&2\nexit {exit_code}\n")
        smi.chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if k != "RAY_OVERRIDE_RESOURCES"}
    return subprocess.run([sys.executable, "-m", "orchestrator.execution.node"], capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**clean, "PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": str(REPO), **env})


def test_a_node_advertises_the_sum_of_its_gpus_memory_for_ray_start(tmp_path):
    done = node_resources(tmp_path, "23028\\n23028\\n")  # two A10G (nvidia-smi: MiB)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"gpu_memory_gb": 44}


def test_the_measured_memory_overrides_the_node_types_declared_one_in_the_launchers_variable(tmp_path):
    launcher = json.dumps({"CPU": 8, "GPU": 1, "spot": 1, "gpu_memory_gb": 24})
    done = node_resources(tmp_path, "23028\\n", RAY_OVERRIDE_RESOURCES=launcher)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"CPU": 8, "GPU": 1, "spot": 1, "gpu_memory_gb": 22}
    assert "warning: the node type declares gpu_memory_gb=24 but its GPUs have 22 GB; advertising 22" in done.stderr


def test_a_node_without_gpus_advertises_none_and_a_broken_driver_is_named(tmp_path):
    bare = node_resources(tmp_path, None, RAY_OVERRIDE_RESOURCES='{"CPU": 4}')
    assert bare.returncode == 0 and json.loads(bare.stdout) == {"CPU": 4}
    broken = node_resources(tmp_path, "", exit_code=9)
    assert broken.returncode == 2 and broken.stdout == ""
    assert "--query-gpu=memory.total failed (exit 9: driver gone): expected it to list the node's GPUs. Check the NVIDIA driver" in broken.stderr
    garbled = node_resources(tmp_path, "23028\\n", RAY_OVERRIDE_RESOURCES="CPU=4")
    assert garbled.returncode == 2 and "RAY_OVERRIDE_RESOURCES='CPU=4': expected a JSON object of Ray resources" in garbled.stderr
    garbled = node_resources(tmp_path, "[N/A]\\n")
    assert garbled.returncode == 2 and "printed '[N/A]' for memory.total: expected a number of MiB per GPU" in garbled.stderr


# -- the worker's check at a trial's start -----------------------------------------------------------


def test_the_worker_names_how_much_is_free_and_how_much_is_needed():
    from orchestrator.execution.worker import gpu_memory_shortfall

    assert gpu_memory_shortfall(20, probe=lambda: [23.0]) is None
    assert gpu_memory_shortfall(20, probe=lambda: [12.34]) == "12.3 GB free, 20 GB needed"
    assert gpu_memory_shortfall(20, probe=lambda: [30.0, 3.25]) == "GPU 1: 3.2 GB free, 20 GB needed"
    assert gpu_memory_shortfall(20, probe=lambda: []).startswith("no GPU visible to the worker (CUDA_VISIBLE_DEVICES=")

    def broken() -> list[float]:
        raise RuntimeError("CUDA error: no CUDA-capable device is detected")

    assert gpu_memory_shortfall(1.5, probe=broken) == (
        "cannot read the GPUs' free memory (RuntimeError: CUDA error: no CUDA-capable device is detected), 1.5 GB needed")


def test_the_default_probe_is_torch_or_the_one_the_node_names(monkeypatch):
    from orchestrator.execution.worker import gpu_memory_shortfall

    monkeypatch.delenv("ORCHESTRATOR_GPU_PROBE", raising=False)
    import torch

    if not torch.cuda.is_available():  # this machine: torch sees no GPU
        assert gpu_memory_shortfall(1).startswith("no GPU visible to the worker")
    monkeypatch.setenv("ORCHESTRATOR_GPU_PROBE", "fractions:Fraction")  # any callable: Fraction() -> 0, not a list
    assert gpu_memory_shortfall(1).startswith("cannot read the GPUs' free memory (TypeError")
    monkeypatch.setenv("ORCHESTRATOR_GPU_PROBE", "os:getloadavg")  # three numbers: three "GPUs"
    assert gpu_memory_shortfall(1e6).startswith("GPU ") and gpu_memory_shortfall(1e6).endswith("GB free, 1e+06 GB needed")


# -- a refusal is a retried loss: free on a new node, charged on a node that refuses again -------------


def test_a_refusal_is_retried_on_other_nodes_free_and_charged_when_a_node_refuses_again(write_study):
    from test_faults import ScriptedExecutor

    from orchestrator import load_study, make_plan
    from orchestrator.execution.executor import Loss

    trials = make_plan(load_study(write_study("scripted_gpu", {"A": [0, 1]}), "full")).trials
    victim, other = trials[0].trial_id, trials[1].trial_id
    refused_by = {1: "node-a", 2: "node-b", 3: "node-a", 4: "node-a"}
    executor = ScriptedExecutor.make(lambda t, n: (Loss.GPU_MEMORY, refused_by[n]) if t.trial_id == victim else None)
    done = []
    executor.run(trials, retries=0, window=4, on_done=done.append, on_killed=lambda t, a: None, stop=threading.Event())
    outcome = next(o for o in done if o.trial.trial_id == victim)
    # attempts 1 and 2: first refusals by node-a and node-b (free); 3: node-a again (the one retry); 4: again -> used up
    assert outcome.result.state.value == "FAILED" and outcome.result.attempts == 4
    assert outcome.retry_reasons == ["gpu memory (GPU_MEMORY: scripted)"] * 3
    assert "attempt 4 of this trial was lost (gpu memory: GPU_MEMORY: scripted); no result came back and its retries are used up" in outcome.result.error
    assert executor.retried == {"gpu memory": 1} and executor.retries_used == 3
    assert next(o for o in done if o.trial.trial_id == other).result.state.value == "FINISHED"


def test_a_ray_without_the_advertised_memory_refuses_and_says_how_nodes_advertise_it(ray_session):
    from orchestrator.design.trial import Resources
    from orchestrator.errors import OrchestratorError
    from orchestrator.execution.ray_backend import RayExecutor

    with pytest.raises(OrchestratorError, match=(
        r"each trial asks for 1 GPU \(cluster has 0\), 20 gpu_memory_gb \(cluster has 0\): expected the embedded Ray to have that much\. "
        r".*Nodes advertise GPU memory as the resource gpu_memory_gb: start them with "
        r"ray start --resources=\"\$\(python -m orchestrator\.execution\.node\)\" \(cluster\.yaml does\)\.")):
        RayExecutor(resources=Resources(gpus=1, gpu_memory_gb=20))
