"""Data-parallel trials on Ray Train: the only module that imports ``ray.train`` (it also asks
``ray.cluster_resources()`` whether all workers of a trial can ever be placed).

A trial whose ``world_size`` is above 1 runs as one Ray Train ``TorchTrainer`` run:
``world_size`` workers, each with the study's per-trial resources (so resources are *per
worker*), joined by ``torch.distributed`` (gloo on CPU, NCCL on GPU). Every worker runs the
whole trial through :func:`~orchestrator.execution.worker.execute_trial` inside
:func:`~orchestrator.numerics.parallel.use_collective`, so the numerics kit splits each global
batch across the workers and all-reduces the gradients (:mod:`orchestrator.numerics.parallel`).
Rank 0's result is the trial's result - one MLflow run - and every worker's details (node,
pid, device, final-parameter hash, wall time) come back with it: in the result's info
(``workers``) and as ``env.dp.rank<r>.<key>`` tags.

Resources, and why nothing deadlocks on a small machine: the Ray task that dispatches a
data-parallel trial holds **zero** CPUs and GPUs - it only waits on the trainer - and the
Train controller is a zero-CPU actor too; only the workers hold resources. A dispatch task
holding one of two CPUs would leave a two-worker trainer waiting forever for its second CPU.
While another trial holds the workers' resources, the trainer waits for them (the worker
group start timeout is raised to :data:`START_TIMEOUT_S`) instead of failing.

Storage: Ray Train persists the run (here only a small result file) under
``$ORCHESTRATOR_TRAIN_STORAGE`` or a temporary directory, removed afterwards; on a
multi-node cluster set it to storage every node can reach (NFS path, ``s3://...``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
import traceback
from typing import Any, Mapping

__all__ = ["START_TIMEOUT_S", "dispatch", "dispatch_options", "is_data_parallel", "run_data_parallel_trial"]

START_TIMEOUT_S = 3600.0
"""How long a data-parallel trial waits for its workers' resources (Ray Train's default is 60 s)."""

_PAYLOAD = "trial_payload.json"

_TRAIN_ENV = {
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": str(START_TIMEOUT_S),  # wait for busy workers' resources, do not fail
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",  # the controller notices a finished trial sooner (default 2 s)
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",  # one process less per trial; preemption is handled as a crash
    "RAY_TRAIN_METRICS_ENABLED": "0",
}
"""Ray Train settings for short trials on a busy cluster (a user's own values win)."""


def is_data_parallel(trial: Mapping[str, Any]) -> bool:
    """Whether ``trial`` (a trial dict) asks for more than one worker."""
    try:
        return int(_config(trial).get("world_size", 1)) > 1
    except (TypeError, ValueError):
        return False  # a bad value fails inside the trial, with the kit's message


def _config(trial: Mapping[str, Any]) -> dict[str, Any]:
    return {**dict(trial.get("params") or {}), **dict(trial.get("levels") or {})}


def dispatch_options(trial: Mapping[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """The Ray task options of a trial's dispatch task: unchanged for an ordinary trial; for
    a data-parallel one, zero CPUs and GPUs and no memory or custom resources (the workers
    hold them, see the module docstring)."""
    if not is_data_parallel(trial):
        return options
    return {k: v for k, v in options.items() if k not in ("memory", "resources")} | {"num_cpus": 0, "num_gpus": 0}


def dispatch(trial: Mapping[str, Any], attempt: int, resources: Any) -> dict[str, Any]:
    """Run a data-parallel trial from its zero-resource dispatch task, with ``resources``
    (the study's :class:`~orchestrator.design.trial.Resources`) per worker; the setting
    ``worker_gpus`` raises each worker's GPUs (a study whose CPU variants share one
    resources spec asks for GPUs in its cluster variant this way)."""
    from .node import custom_resources  # each worker reserves its GPU memory too

    gpus = max(float(resources.gpus), float(_config(trial).get("worker_gpus", 0) or 0))
    return run_data_parallel_trial(trial, attempt, cpus_per_worker=resources.cpus, gpus_per_worker=gpus,
                                   memory_mb_per_worker=resources.memory_mb, custom_per_worker=custom_resources(resources))


def _worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: run the whole trial as rank ``r`` of the process group."""
    import ray.train
    import ray.train.torch

    from ..numerics.parallel import TorchCollective, use_collective
    from ..records.environment import fingerprint
    from .worker import BatchingSink, execute_trial

    context = ray.train.get_context()
    collective = TorchCollective()
    device = str(ray.train.torch.get_device()) if config["use_gpu"] else "cpu"
    sink = BatchingSink(None, interval_s=float("inf"))  # the curve travels back with the result
    start = time.perf_counter()
    with use_collective(collective):
        result = execute_trial(config["trial"], sink=sink, device=device, attempt=config["attempt"])
    detail = {
        "rank": context.get_world_rank(),
        "local_rank": context.get_local_rank(),
        "node": socket.gethostname(),
        "pid": os.getpid(),
        "device": device,
        "backend": collective.backend,
        "state": result.state.value,
        "param_hash": result.info.get("param_hash"),
        "wall_time_s": round(time.perf_counter() - start, 3),
    }
    details = collective.gather(detail)
    if context.get_world_rank() != 0:
        ray.train.report({"rank": context.get_world_rank()})
        return
    result.info["workers"] = details
    hashes = {d["param_hash"] for d in details}
    result.info["workers_identical"] = len(hashes) == 1 and None not in hashes
    environment = dict(fingerprint())
    for d in details:
        for key in ("node", "pid", "device", "backend", "state", "param_hash", "wall_time_s"):
            environment[f"dp.rank{d['rank']}.{key}"] = d[key]
    payload = {"result": result.to_dict(), "curve": sink.remaining(), "started_ms": sink.started_ms, "last_step": sink.last_step,
               "pid": os.getpid(), "environment": environment}
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, _PAYLOAD), "w") as f:
            json.dump(payload, f, default=str)
        ray.train.report({"rank": 0}, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _failed(trial: Mapping[str, Any], attempt: int, error: str, started_ms: int) -> dict[str, Any]:
    from ..design.trial import TrialResult, TrialState

    result = TrialResult(trial_id=str(trial["trial_id"]), state=TrialState.FAILED, metrics={}, info={}, error=error, attempts=attempt)
    return {"result": result.to_dict(), "curve": [], "started_ms": started_ms, "last_step": -1, "pid": os.getpid(), "environment": {}}


def _short_of(per_worker: Mapping[str, float], world: int) -> str:
    """What the cluster lacks to place ``world`` workers of ``per_worker`` at once ('' if nothing)."""
    import ray

    total = ray.cluster_resources()
    missing = [f"{world} x {amount:g} {name} (the cluster has {total.get(name, 0.0):g})" for name, amount in per_worker.items()
               if amount > 0 and world * amount > total.get(name, 0.0) + 1e-9]
    return ", ".join(missing)


def run_data_parallel_trial(
    trial: Mapping[str, Any],
    attempt: int = 1,
    *,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    memory_mb_per_worker: int | None = None,
    custom_per_worker: Mapping[str, float] | None = None,
    storage_path: str | None = None,
    collective_timeout_s: int = 600,
) -> dict[str, Any]:
    """Run one data-parallel trial on Ray Train and return the payload a trial task returns
    (``result``, ``curve``, ``started_ms``, ``last_step``, ``pid``, ``environment``).

    Call it where Ray is initialised - in a zero-resource Ray task or on the driver. Never
    raises for a failure of the trial: a crashed worker or a failed start becomes a FAILED
    result with the reason.

    Args:
        trial: the trial as a dict (``Trial.to_dict()``); ``world_size`` workers are started.
        attempt: the attempt number.
        cpus_per_worker, gpus_per_worker, memory_mb_per_worker, custom_per_worker: each
            worker's resources (the study's per-trial resources). GPUs > 0 selects NCCL.
        storage_path: where Ray Train persists the run (default: a temporary directory).
        collective_timeout_s: how long a collective may wait for a silent worker.

    Example:
        >>> payload = run_data_parallel_trial(trial.to_dict())   # doctest: +SKIP
        >>> payload["result"]["info"]["workers_identical"]      # doctest: +SKIP
        True
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from ..numerics.parallel import NCCL_ALGO

    started_ms = int(time.time() * 1000)
    config = _config(trial)
    world = int(config.get("world_size", 1))
    use_gpu = gpus_per_worker > 0
    per_worker: dict[str, float] = {"CPU": float(cpus_per_worker)}
    if use_gpu:
        per_worker["GPU"] = float(gpus_per_worker)
    if memory_mb_per_worker:
        per_worker["memory"] = float(memory_mb_per_worker) * 1024 * 1024
    per_worker.update({k: float(v) for k, v in (custom_per_worker or {}).items()})
    short = _short_of(per_worker, world)
    if short:
        return _failed(
            trial, attempt,
            f"DataParallelError: world_size {world} needs {short}: expected the cluster to hold all workers of one trial at once. "
            "Lower world_size or the per-worker resources (the study's resources, e.g. Resources(cpus=0.5)), or join a larger cluster.",
            started_ms,
        )
    env_vars = {}
    algo = NCCL_ALGO.get(str(config.get("allreduce", "backend")))
    if algo and use_gpu:
        env_vars["NCCL_ALGO"] = algo
    for key, value in _TRAIN_ENV.items():  # read by the Train controller, which inherits them from here
        os.environ.setdefault(key, value)
    own_storage = storage_path is None and not os.environ.get("ORCHESTRATOR_TRAIN_STORAGE")
    storage = storage_path or os.environ.get("ORCHESTRATOR_TRAIN_STORAGE") or tempfile.mkdtemp(prefix="orchestrator-train-")
    name = f"trial-{str(trial['trial_id'])[:16]}-a{attempt}-{os.getpid()}-{started_ms}"
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"trial": dict(trial), "attempt": attempt, "use_gpu": use_gpu},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=collective_timeout_s),
        scaling_config=ScalingConfig(num_workers=world, use_gpu=use_gpu, resources_per_worker=per_worker),
        run_config=RunConfig(name=name, storage_path=storage, failure_config=FailureConfig(max_failures=0),
                             worker_runtime_env={"env_vars": env_vars} if env_vars else None),
    )
    try:
        result = trainer.fit()
        if result.checkpoint is None:
            return _failed(trial, attempt, f"data-parallel trial: Ray Train finished without rank 0's result ({result.error!r})", started_ms)
        with result.checkpoint.as_directory() as folder:
            with open(os.path.join(folder, _PAYLOAD)) as f:
                payload: dict[str, Any] = json.load(f)
                return payload
    except Exception as exc:  # noqa: BLE001 - a failed trial is a recorded outcome
        return _failed(trial, attempt, f"data-parallel trial with {world} workers failed in Ray Train: {type(exc).__name__}: {exc}\n{traceback.format_exc()}", started_ms)
    finally:
        shutil.rmtree(os.path.join(storage, name), ignore_errors=True)
        if own_storage:
            shutil.rmtree(storage, ignore_errors=True)
