"""Run one trial in the current process: the code every executor (Ray or in-process) calls.

A trial that raises becomes a FAILED result with its traceback; a trial that diverges
becomes a FINISHED result with ``diverged = 1``. Nothing here raises for a trial's sake.
"""

from __future__ import annotations

import math
import time
import traceback
from typing import Any, Mapping

from .context import MetricSink, TrialContext
from .errors import TrialDiverged
from .trial import Trial, TrialResult, TrialState
from .workloads import resolve

__all__ = ["execute_trial"]


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
