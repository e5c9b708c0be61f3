"""Run one trial in the current process: the code every executor (Ray or in-process) calls.

A trial that raises becomes a FAILED result with its traceback; a trial that diverges
becomes a FINISHED result with ``diverged = 1``. Nothing here raises for a trial's sake.
"""

from __future__ import annotations

import importlib
import math
import time
import traceback
from typing import Any, Callable, Mapping

from ..definition.workloads import BUILTIN_WORKLOADS, WorkloadError, check_reference
from ..design.trial import Trial, TrialResult, TrialState
from ..errors import TrialDiverged, did_you_mean
from .context import MetricSink, TrialContext

__all__ = ["Batch", "BatchingSink", "MetricPoint", "execute_trial", "resolve"]

MetricPoint = tuple[int, dict[str, float], int]
"""One logged point of a trial's curve: ``(step, {metric: value}, timestamp_ms)``."""
Batch = list[MetricPoint]
"""Points logged by one trial, in order (a live batch, or the rest of a curve)."""


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
