"""What a node advertises to Ray: its GPU memory, as the custom resource ``gpu_memory_gb``.

A trial that needs a GPU with at least N GB free (``Resources(gpus=1, gpu_memory_gb=N)``)
reserves N of ``gpu_memory_gb`` per GPU, so Ray places it only on a node that advertises
enough. Ray does not measure GPU memory itself; each node says how much it has when it
starts, with the output of this module as ``ray start --resources``::

    ray start --address=HEAD:6379 --resources="$(python -m orchestrator.execution.node)"

It sums ``memory.total`` of the node's GPUs as ``nvidia-smi`` reports it (MiB, so GB here
are GiB: 1024**3 bytes, as torch reports them), each GPU's rounded down to whole GB (the
cluster launcher's node types take whole numbers, and the two should agree), and overlays it on
the resources the cluster launcher passes in ``RAY_OVERRIDE_RESOURCES`` (which otherwise
take precedence over ``--resources``): the measured amount wins over the node type's
declared one, with a warning on stderr when they differ. A node without GPUs (no
``nvidia-smi``) advertises none. No torch, no CUDA context: ``nvidia-smi`` only, so it runs
before Ray starts.

The advertised amount is a node total; which GPU a trial lands on is Ray's choice, and
another process may hold memory Ray knows nothing of. That is why the worker also checks,
at the trial's start, that the memory is actually free
(:func:`orchestrator.execution.worker.gpu_memory_shortfall`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from typing import Mapping, Sequence

from ..design.trial import Resources
from ..errors import OrchestratorError

__all__ = ["GPU_MEMORY", "NodeResourceError", "advertised", "custom_resources", "gpu_memory_totals_gb", "main"]

GPU_MEMORY = "gpu_memory_gb"
"""The Ray custom resource a node advertises its GPU memory as, and a trial reserves (GB)."""

OVERRIDE = "RAY_OVERRIDE_RESOURCES"
"""Where Ray's cluster launcher passes a node type's resources to ``ray start`` (they win over ``--resources``)."""


def custom_resources(resources: Resources) -> dict[str, float]:
    """The custom Ray resources one trial (or one data-parallel worker) reserves: the study's
    ``custom``, and its GPU memory per GPU as :data:`GPU_MEMORY`.

    Example:
        >>> custom_resources(Resources(gpus=2, gpu_memory_gb=20, custom={"spot": 1}))
        {'spot': 1, 'gpu_memory_gb': 40.0}
    """
    custom = dict(resources.custom)
    if resources.gpu_memory_gb:
        custom[GPU_MEMORY] = float(resources.gpu_memory_gb) * max(1.0, resources.gpus)
    return custom


class NodeResourceError(OrchestratorError):
    """The node's GPUs or the launcher's resources cannot be read."""


def gpu_memory_totals_gb(nvidia_smi: str | None = None) -> list[float]:
    """Total memory of each GPU of this node in GB (GiB), from ``nvidia-smi``; ``[]`` without one.

    Raises:
        NodeResourceError: ``nvidia-smi`` is there but fails or prints something else.
    """
    command = nvidia_smi or shutil.which("nvidia-smi")
    if command is None:
        return []
    try:
        done = subprocess.run([command, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NodeResourceError(f"cannot run {command} ({exc}): expected nvidia-smi to list the node's GPUs. Check the NVIDIA driver.") from None
    if done.returncode != 0:
        raise NodeResourceError(
            f"{command} --query-gpu=memory.total failed (exit {done.returncode}: {done.stderr.strip()[:200]}): "
            "expected it to list the node's GPUs. Check the NVIDIA driver, or start Ray without the GPU memory resource."
        )
    totals = []
    for line in done.stdout.split("\n"):
        if not line.strip():
            continue
        try:
            totals.append(float(line.strip()) / 1024)
        except ValueError:
            raise NodeResourceError(f"{command} printed {line.strip()!r} for memory.total: expected a number of MiB per GPU") from None
    return totals


def advertised(totals_gb: Sequence[float], launcher: Mapping[str, float] | None = None, *, warn: bool = True) -> dict[str, float]:
    """The node's Ray resources: the launcher's (if any) with ``gpu_memory_gb`` set to the measured sum.

    Example:
        >>> advertised([22.49], {"CPU": 8, "GPU": 1, "spot": 1})
        {'CPU': 8, 'GPU': 1, 'spot': 1, 'gpu_memory_gb': 22}
    """
    resources = dict(launcher or {})
    if totals_gb:
        measured = sum(math.floor(total + 1e-9) for total in totals_gb)
        declared = resources.get(GPU_MEMORY)
        if warn and declared is not None and float(declared) != measured:
            print(f"warning: the node type declares {GPU_MEMORY}={declared:g} but its GPUs have {measured:g} GB; advertising {measured:g} "
                  "(correct the node type in cluster.yaml, which the autoscaler plans with)", file=sys.stderr)
        resources[GPU_MEMORY] = measured
    return resources


def _launcher(environ: Mapping[str, str]) -> dict[str, float]:
    text = environ.get(OVERRIDE)
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise NodeResourceError(f"{OVERRIDE}={text!r}: expected a JSON object of Ray resources (what the cluster launcher sets)")
    return value


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Print this node's resources as JSON for ``ray start --resources``; exit 2 with one line on error."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args:
        print(f"usage: python -m orchestrator.execution.node (no arguments; found {' '.join(args)}). "
              "It prints this node's resources for ray start --resources.", file=sys.stderr)
        return 2
    environ = os.environ if environ is None else environ
    try:
        print(json.dumps(advertised(gpu_memory_totals_gb(), _launcher(environ))))
    except NodeResourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
