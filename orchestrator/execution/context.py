"""What a workload function receives: the trial, its settings and seeds, and helpers.

A workload is a plain function ``f(ctx: TrialContext) -> dict[str, float]`` returning
final metrics. It logs per-step metrics with :meth:`TrialContext.log`, records what
actually happened (effective dtypes, fallbacks) with :meth:`TrialContext.record`, and
signals divergence by raising :class:`~orchestrator.errors.TrialDiverged` (or by calling
:meth:`TrialContext.check_finite`). Numerics helpers (precision contexts, ordered
reductions, optimizers, models) live in :mod:`orchestrator.numerics` and take a context.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from ..errors import TrialDiverged
from ..design.trial import Trial

__all__ = ["MetricSink", "TrialContext"]

MetricSink = Callable[[str, int, Mapping[str, float]], None]
"""Receives ``(trial_id, step, metrics)`` for every logged step (the executor streams them)."""


class TrialContext:
    """The running trial, as a workload sees it.

    Example:
        >>> def my_workload(ctx):
        ...     lr = ctx.get("lr", 0.1)
        ...     for step in range(3):
        ...         ctx.log(step, loss=1.0 / (step + 1))
        ...     return {"final_loss": 1.0 / 3}
    """

    def __init__(self, trial: Trial, sink: MetricSink | None = None, device: str = "cpu"):
        self.trial = trial
        self.device = device
        self.info: dict[str, Any] = {}
        self.last_metrics: dict[str, float] = {}
        self.last_step: int = -1
        self._sink = sink

    @property
    def trial_id(self) -> str:
        return self.trial.trial_id

    @property
    def levels(self) -> Mapping[str, Any]:
        return self.trial.levels

    @property
    def params(self) -> Mapping[str, Any]:
        return self.trial.params

    @property
    def seeds(self) -> Mapping[str, int]:
        return self.trial.seeds

    @property
    def config(self) -> dict[str, Any]:
        """Fixed parameters overlaid by this trial's levels."""
        return self.trial.config

    def get(self, name: str, default: Any = None) -> Any:
        """A setting by name: the trial's level if ``name`` is a factor, else the parameter."""
        return self.config.get(name, default)

    def seed(self, stream: str) -> int:
        """The seed of one stream; a stream the study does not declare is an error, not a guess."""
        try:
            return int(self.trial.seeds[stream])
        except KeyError:
            known = ", ".join(sorted(self.trial.seeds)) or "(none)"
            raise KeyError(
                f"the workload asked for seed stream {stream!r}, but the study declares only: {known}. "
                f"Add {stream!r} to the study's seed_streams."
            ) from None

    def log(self, step: int, **metrics: float) -> None:
        """Record metrics of one step (streamed to the tracker while the trial runs)."""
        values = {k: float(v) for k, v in metrics.items()}
        self.last_step = int(step)
        self.last_metrics.update(values)
        if self._sink is not None:
            self._sink(self.trial.trial_id, int(step), values)

    def record(self, key: str, value: Any) -> None:
        """Record a fact about the run (an effective dtype, a fallback, a flag)."""
        self.info[key] = value

    def should_log(self, step: int, total: int | None = None) -> bool:
        """Whether ``step`` is a logging point: every ``log_every`` steps (setting, default 10),
        and the last step of ``total``. Keeps the number of logged points bounded."""
        every = max(int(self.get("log_every", 10)), 1)
        return step % every == 0 or (total is not None and step == total - 1)

    @property
    def numerics(self) -> Any:
        """The numerics kit bound to this trial (:class:`orchestrator.numerics.Kit`; imports
        torch on first use): precision, reduction order, seeded generators, models,
        optimizers, divergence guard. Created once per context."""
        kit = self.__dict__.get("_numerics")
        if kit is None:
            from ..numerics import Kit

            kit = self.__dict__["_numerics"] = Kit(self)
        return kit

    def check_finite(self, step: int, **values: float) -> None:
        """Divergence guard: raise :class:`TrialDiverged` when a value is NaN or infinite."""
        for name, value in values.items():
            if not math.isfinite(float(value)):
                raise TrialDiverged(step, f"{name} is {float(value)}")
