"""Run one trial in the current process: the code every executor (Ray or in-process) calls.

A trial that raises becomes a FAILED result with its traceback; a trial that diverges
becomes a FINISHED result with ``diverged = 1``. Nothing here raises for a trial's sake.
Before a trial that asks for GPU memory starts, :func:`gpu_memory_shortfall` says whether
its GPUs really have that much free.
"""

from __future__ import annotations

import importlib
import math
import os
import time
import traceback
from typing import Any, Callable, Mapping, Sequence

from ..definition.workloads import BUILTIN_WORKLOADS, WorkloadError, check_reference
from ..design.trial import Trial, TrialResult, TrialState
from ..errors import TrialDiverged, did_you_mean
from .context import MetricSink, TrialContext

__all__ = ["Batch", "BatchingSink", "GpuProbe", "MetricPoint", "execute_trial", "gpu_memory_shortfall", "resolve"]

MetricPoint = tuple[int, dict[str, float], int]
"""One logged point of a trial's curve: ``(step, {metric: value}, timestamp_ms)``."""
Batch = list[MetricPoint]
"""Points logged by one trial, in order (a live batch, or the rest of a curve)."""
GpuProbe = Callable[[], Sequence[float]]
"""Free memory (GB) of each GPU this process may use; ``[]`` when it sees none."""

GPU_PROBE_ENV = "ORCHESTRATOR_GPU_PROBE"
"""A ``package.module:function`` :data:`GpuProbe` that replaces torch's on a node (set in its
``ray start`` environment): for GPUs torch cannot report on, and for tests on CPU-only machines."""


class BatchingSink:
    """A worker-side metric sink: keeps per-step metrics and pushes a batch about every ``interval_s``.

    A trial shorter than ``interval_s`` pushes nothing; its curve travels back with its
    result (:meth:`remaining`), so short trials cost no extra messages.
    """

    def __init__(self, push: Callable[[str, Batch], None] | None, interval_s: float = 1.0):
        self._push = push
        self._interval = interval_s
        self._buffer: Batch = []
        self._last = time.monotonic()
        self.started_ms = int(time.time() * 1000)
        self.last_step = -1

    def __call__(self, trial_id: str, step: int, metrics: Mapping[str, float]) -> None:
        self._buffer.append((int(step), dict(metrics), int(time.time() * 1000)))
        self.last_step = max(self.last_step, int(step))
        now = time.monotonic()
        if self._push is not None and now - self._last >= self._interval:
            batch, self._buffer = self._buffer, []
            self._last = now
            self._push(trial_id, batch)

    def remaining(self) -> Batch:
        """What has not been pushed yet (sent back with the result)."""
        batch, self._buffer = self._buffer, []
        return batch


def _final_metrics(raw: Any) -> dict[str, float]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise TypeError(
            f"a workload must return a dict of final metrics (name -> number), but it returned a {type(raw).__name__}. "
            "Return e.g. {'final_loss': loss}."
        )
    metrics: dict[str, float] = {}
    for name, value in raw.items():
        try:
            metrics[str(name)] = float(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"final metric {name!r} must be a number, but the workload returned {value!r} "
                f"({type(value).__name__}). Record non-numeric facts with ctx.record()."
            ) from None
    return metrics


def execute_trial(
    trial: Trial | Mapping[str, Any],
    sink: MetricSink | None = None,
    device: str = "cpu",
    attempt: int = 1,
) -> TrialResult:
    """Run ``trial`` here and return its result; never raises for a failure of the trial.

    Example:
        >>> result = execute_trial(trial)            # doctest: +SKIP
        >>> result.state, result.metrics["diverged"]  # doctest: +SKIP
        (<TrialState.FINISHED: 'FINISHED'>, 0.0)
    """
    if not isinstance(trial, Trial):
        trial = Trial.from_dict(trial)
    ctx = TrialContext(trial, sink=sink, device=device)
    start = time.perf_counter()
    try:
        function = resolve(trial.workload)
        metrics = _final_metrics(function(ctx))
        metrics.setdefault("diverged", 0.0)
    except TrialDiverged as event:
        metrics = {**ctx.last_metrics, **_final_metrics(event.metrics)}
        metrics["diverged"] = 1.0
        metrics["diverged_step"] = float(event.step)
        ctx.record("divergence", event.reason)
    except BaseException as exc:  # noqa: BLE001 - a failed trial is a recorded outcome
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return TrialResult(
            trial_id=trial.trial_id,
            state=TrialState.FAILED,
            metrics={"wall_time_s": time.perf_counter() - start},
            info=ctx.info,
            error=traceback.format_exc(),
            attempts=attempt,
        )
    metrics["wall_time_s"] = time.perf_counter() - start
    for name, value in list(metrics.items()):
        if not math.isfinite(value) and name != "diverged":
            ctx.record(f"nonfinite_{name}", repr(value))
    return TrialResult(trial_id=trial.trial_id, state=TrialState.FINISHED, metrics=metrics, info=ctx.info, attempts=attempt)


def resolve(name: str) -> Callable[..., Any]:
    """The workload function for a built-in name or a ``"package.module:function"`` reference."""
    problem = check_reference(name)
    if problem:
        raise WorkloadError(f"workload: expected {problem}")
    target = BUILTIN_WORKLOADS.get(name, name)
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise WorkloadError(
            f"workload {name!r}: cannot import module {module_name!r} ({exc}). "
            "Install the package that provides it on every node, or fix the reference."
        ) from exc
    try:
        function: Callable[..., Any] = getattr(module, attr)
    except AttributeError:
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise WorkloadError(
            f"workload {name!r}: module {module_name!r} has no function {attr!r}. {did_you_mean(attr, names)}"
        ) from None
    if not callable(function):
        raise WorkloadError(f"workload {name!r}: {target} is a {type(function).__name__}, expected a function")
    return function


def _probe() -> GpuProbe:
    reference = os.environ.get(GPU_PROBE_ENV)
    if reference:
        probe: GpuProbe = resolve(reference)
        return probe
    from ..numerics.gpu import free_memory_gb

    return free_memory_gb


def gpu_memory_shortfall(needed_gb: float, probe: GpuProbe | None = None) -> str | None:
    """Why this process's GPUs cannot start a trial that needs ``needed_gb`` free on each, or ``None``.

    Args:
        needed_gb: GB (GiB) that must be free on every GPU the trial was given.
        probe: free GB per visible GPU; by default ``$ORCHESTRATOR_GPU_PROBE`` (a
            ``package.module:function``) if the node sets it, else ``torch.cuda.mem_get_info``.

    Returns:
        ``None`` when every visible GPU has enough free, else the reason, e.g.
        ``"12.3 GB free, 20 GB needed"`` (``"GPU 1: ..."`` when the trial has several).

    Example:
        >>> gpu_memory_shortfall(20, probe=lambda: [12.34])
        '12.3 GB free, 20 GB needed'
        >>> gpu_memory_shortfall(20, probe=lambda: [23.0]) is None
        True
    """
    try:
        free = [float(value) for value in (probe or _probe())()]
    except Exception as exc:  # noqa: BLE001 - a probe that cannot tell is a shortfall, with why
        return f"cannot read the GPUs' free memory ({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}), {needed_gb:g} GB needed"
    if not free:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return f"no GPU visible to the worker (CUDA_VISIBLE_DEVICES={visible!r}), {needed_gb:g} GB needed"
    short = [(index, value) for index, value in enumerate(free) if value < needed_gb]
    if not short:
        return None
    index, value = min(short, key=lambda item: item[1])
    where = f"GPU {index}: " if len(free) > 1 else ""
    return f"{where}{math.floor(value * 10) / 10:g} GB free, {needed_gb:g} GB needed"
