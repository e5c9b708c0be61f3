"""The executor contract and the in-process executor.

An :class:`Executor` runs trial attempts somewhere. Subclasses implement three small hooks;
:meth:`Executor.run` (a window of trials in flight, retries of trials that raise or whose
worker died, live metric batches, a clean stop) is written once on the base. Callers use
only its public methods. Two implementations share one contract test:

* :class:`InProcessExecutor` (here) - the same worker code, serially, in this process, for
  debugging with ``pdb`` (``--in-process``; submitit's ``DebugExecutor`` idea);
* :class:`~orchestrator.execution.ray_backend.RayExecutor` - one Ray task per trial attempt.
"""

from __future__ import annotations

import abc
import collections
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..design.trial import Resources, Trial, TrialResult, TrialState
from .worker import Batch

__all__ = ["Curve", "Executor", "InProcessExecutor", "Outcome"]

Curve = Batch
"""A trial's per-step metrics: ``[(step, {metric: value}, timestamp_ms), ...]``."""


@dataclass
class Outcome:
    """What came back for one trial attempt: a result (with its curve) or why the worker died."""

    trial: Trial
    attempt: int
    result: TrialResult | None
    curve: Curve = field(default_factory=list)
    started_ms: int | None = None
    last_step: int = -1
    crash: str | None = None
    environment: Mapping[str, Any] | None = None


class Executor(abc.ABC):
    """Runs trial attempts somewhere. Subclasses implement three small hooks; the rest is shared.

    Hooks (for subclasses only): :meth:`_submit` (start one attempt), :meth:`_poll`
    (outcomes that are ready) and :meth:`_cancel` (stop everything in flight, return those
    trials). Callers use only the public methods: :meth:`run`, :meth:`slots`,
    :meth:`window`, :meth:`collect`, :meth:`cancel`, :meth:`final_metrics`, :meth:`close`
    and the attribute :attr:`interrupts_trial`.
    """

    name = "executor"
    interrupts_trial = False
    """Whether the first Ctrl-C must interrupt the running trial itself (it runs in the
    driver's own thread); otherwise the first Ctrl-C stops submitting and cancels."""

    def __init__(self) -> None:
        self.on_metrics: Callable[[Trial, Batch], None] = lambda trial, batch: None
        self._in_flight: dict[str, tuple[Trial, int]] = {}

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def slots(self, resources: Resources) -> int:
        """How many trials run at once."""
        return 1

    def window(self, slots: int) -> int:
        """How many trials to keep in flight by default, given :meth:`slots`."""
        return 1

    def collect(self, timeout: float = 0.0) -> list[Outcome]:
        """Outcomes that are ready now (e.g. results that came back while Ctrl-C landed)."""
        return self._poll(timeout)

    def cancel(self) -> list[tuple[Trial, int]]:
        """Stop every attempt in flight; returns those trials with their attempt numbers."""
        return self._cancel()

    def final_metrics(self) -> list[tuple[str, Batch]]:
        """Metric batches still on their way at the end of an execution, as ``(trial_id, batch)``."""
        return []

    @abc.abstractmethod
    def _submit(self, trial: Trial, attempt: int) -> None: ...

    @abc.abstractmethod
    def _poll(self, timeout: float) -> list[Outcome]: ...

    @abc.abstractmethod
    def _cancel(self) -> list[tuple[Trial, int]]: ...

    def _live_metrics(self) -> list[tuple[str, Batch]]:
        return []

    def close(self) -> None:
        """Release what the executor holds (Ray is shut down only if it was started here)."""

    def run(
        self,
        trials: Sequence[Trial],
        *,
        retries: int,
        window: int,
        on_done: Callable[[Outcome], None],
        on_killed: Callable[[Trial, int], None],
        stop: threading.Event,
        tick: Callable[[int], None] = lambda running: None,
    ) -> bool:
        """Run ``trials`` (retrying failures up to ``retries`` times); returns True if stopped early.

        A trial that raises is retried; a worker that died (killed, out of memory, node
        lost) is retried at least once. Each trial reaches ``on_done`` exactly once with
        its final outcome; trials cancelled by ``stop`` reach ``on_killed``.
        """
        pending = collections.deque(trials)
        by_id = {t.trial_id: t for t in trials}
        while pending or self._in_flight:
            if stop.is_set():
                break
            while pending and len(self._in_flight) < window and not stop.is_set():
                trial = pending.popleft()
                self._in_flight[trial.trial_id] = (trial, 1)
                self._submit(trial, 1)
            for outcome in self._poll(0.25):
                trial, attempt = outcome.trial, outcome.attempt
                self._in_flight.pop(trial.trial_id, None)
                cancelled = outcome.crash == "cancelled" or (outcome.result is None and stop.is_set())  # Ctrl-C may reach workers too
                if cancelled or (outcome.result is not None and outcome.result.state is TrialState.KILLED):
                    on_killed(trial, attempt)
                    continue
                failed = outcome.result is None or outcome.result.state is TrialState.FAILED
                budget = max(retries, 1) if outcome.result is None else retries
                if failed and attempt <= budget and not stop.is_set():
                    self._in_flight[trial.trial_id] = (trial, attempt + 1)
                    self._submit(trial, attempt + 1)
                    continue
                if outcome.result is None:
                    outcome.result = TrialResult(
                        trial_id=trial.trial_id,
                        state=TrialState.FAILED,
                        error=f"the worker running this trial died ({outcome.crash}) on attempt {attempt}; no result came back.",
                        attempts=attempt,
                    )
                on_done(outcome)
            for trial_id, batch in self._live_metrics():
                if trial_id in by_id:
                    self.on_metrics(by_id[trial_id], batch)
            tick(len(self._in_flight))
        if stop.is_set():
            for trial, attempt in self._cancel():
                on_killed(trial, attempt)
            self._in_flight.clear()
            return True
        return False


class InProcessExecutor(Executor):
    """Runs each trial here, one at a time, with the same worker code (``pdb`` works)."""

    name = "in-process"
    interrupts_trial = True

    def __init__(self, flush_s: float = 1.0):
        super().__init__()
        self._flush_s = flush_s
        self._done: list[Outcome] = []
        self._interrupted: tuple[Trial, int] | None = None

    def _submit(self, trial: Trial, attempt: int) -> None:
        from ..records.environment import fingerprint
        from .worker import BatchingSink, execute_trial

        sink = BatchingSink(lambda trial_id, batch: self.on_metrics(trial, batch), interval_s=self._flush_s)
        try:
            result = execute_trial(trial, sink=sink, device="cpu", attempt=attempt)
        except KeyboardInterrupt:
            result = TrialResult(trial_id=trial.trial_id, state=TrialState.KILLED, attempts=attempt)
        self._done.append(Outcome(trial, attempt, result, sink.remaining(), sink.started_ms, sink.last_step, environment=fingerprint()))

    def _poll(self, timeout: float) -> list[Outcome]:
        done, self._done = self._done, []
        return done

    def _cancel(self) -> list[tuple[Trial, int]]:
        return []
