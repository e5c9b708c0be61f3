"""The environment fingerprint recorded with every execution and every trial run.

A fingerprint names what can change a numerical result without a change of the study:
library versions, CPU and GPU model, CUDA version, determinism flags and thread counts.
It holds no secrets and no arbitrary environment variables: only the few variables in
:data:`RECORDED_VARIABLES`, which change numerics (thread counts, cuBLAS workspace, TF32).

Example:
    >>> from orchestrator.records.environment import fingerprint
    >>> sorted(fingerprint())[:3]
    ['cpu_count', 'cpu_model', 'cublas_workspace_config']
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["RECORDED_VARIABLES", "code_version", "fingerprint", "summary"]

# Environment variables that change numerics; nothing else from os.environ is recorded.
RECORDED_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "CUBLAS_WORKSPACE_CONFIG",
    "NVIDIA_TF32_OVERRIDE",
    "PYTHONHASHSEED",
)


@functools.lru_cache(maxsize=None)
def _version(package: str) -> str | None:
    # cached: reading a package's metadata takes ~10 ms, and every trial's fingerprint asks for torch's
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _torch_facts() -> dict[str, Any]:
    """Torch facts, only when torch is already imported (a fingerprint never imports torch)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {"torch": _version("torch")}
    facts: dict[str, Any] = {
        "torch": getattr(torch, "__version__", None),
        "torch_threads": torch.get_num_threads(),
        "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
        "cuda": getattr(torch.version, "cuda", None),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
    }
    try:
        if torch.cuda.is_available():
            facts["gpu_model"] = torch.cuda.get_device_name(0)
            facts["gpu_count"] = torch.cuda.device_count()
            facts["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
            facts["cudnn"] = torch.backends.cudnn.version()
    except Exception:  # noqa: BLE001 - a broken driver must not stop a fingerprint
        facts["gpu_model"] = "unavailable"
    return facts


def _nvidia_smi() -> dict[str, Any]:
    """GPU model and driver from nvidia-smi, when there is one (no torch import needed)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return {}
    if not out:
        return {}
    name, _, driver = out[0].partition(",")
    return {"gpu_model": name.strip(), "gpu_count": len(out), "gpu_driver": driver.strip()}


@functools.lru_cache(maxsize=1)
def _static() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "ray": _version("ray"),
        "mlflow": _version("mlflow"),
        "numpy": _version("numpy"),
        "orchestrator": _version("numerics-orchestrator"),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        **_nvidia_smi(),
    }


def fingerprint() -> dict[str, Any]:
    """The environment of this process as a flat dict of JSON values (no secrets).

    Keys: ``python``, ``platform``, ``torch``, ``ray``, ``mlflow``, ``numpy``, ``cpu_model``,
    ``cpu_count``, ``gpu_model`` / ``gpu_count`` / ``cuda`` (where there is a GPU),
    determinism flags and thread counts (where torch is loaded), and the variables of
    :data:`RECORDED_VARIABLES` in lower case (``None`` when unset).
    """
    facts = dict(_static())
    facts.setdefault("gpu_model", None)
    facts.update(_torch_facts())
    facts.setdefault("cuda", None)
    for name in RECORDED_VARIABLES:
        facts[name.lower()] = os.environ.get(name)
    return facts


def summary(facts: dict[str, Any]) -> str:
    """One line for listings: ``python 3.11.9, torch 2.13.0, ray 2.60.0, 2 x Intel ..., no GPU``."""
    gpu = facts.get("gpu_model") or "no GPU"
    return (
        f"python {facts.get('python')}, torch {facts.get('torch')}, ray {facts.get('ray')}, "
        f"mlflow {facts.get('mlflow')}, {facts.get('cpu_count')} x {facts.get('cpu_model')}, {gpu}"
    )


@functools.lru_cache(maxsize=8)
def code_version(where: str | None = None) -> str:
    """The git commit of the code (``<sha>`` plus ``-dirty`` with local changes), or ``unknown``."""
    cwd = where or str(Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("ORCHESTRATOR_CODE_VERSION", "unknown")
    return f"{sha}-dirty" if dirty else sha
