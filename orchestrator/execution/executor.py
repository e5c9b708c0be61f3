"""The executor contract and the in-process executor.

An :class:`Executor` runs trial attempts somewhere. Subclasses implement three small hooks;
:meth:`Executor.run` (a window of trials in flight, retries of trials that raise, whose
worker died or whose node was lost, live metric batches, a clean stop) is written once on
the base. Callers use only its public methods. Two implementations share one contract test:

* :class:`InProcessExecutor` (here) - the same worker code, serially, in this process, for
  debugging with ``pdb`` (``--in-process``; submitit's ``DebugExecutor`` idea);
* :class:`~orchestrator.execution.ray_backend.RayExecutor` - one Ray task per trial attempt.

An attempt that comes back without a result carries a :class:`Loss`: why it was lost
(cancelled, its worker died, its node was lost). Losses are trial outcomes, never driver
crashes: the attempt is retried elsewhere within the retry budget, and the reason is kept
with the trial (``retry_reasons``). A failure of the cluster itself (the driver cannot talk
to Ray any more) surfaces as :class:`ClusterError`: a one-line message, and the execution
ends with its in-flight trials recorded as KILLED.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import enum
import signal
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

from ..design.trial import Resources, Trial, TrialResult, TrialState
from ..errors import OrchestratorError
from .worker import Batch

__all__ = ["ClusterError", "Curve", "Executor", "InProcessExecutor", "Loss", "Outcome", "STOP_SIGNALS", "stop_signals"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""What stops a driver cleanly: Ctrl-C, and SIGTERM (a scheduler evicting it - Kubernetes,
Slurm, ``ray job stop`` - or ``kill``; left to Ray, its handler aborts the driver)."""


@contextlib.contextmanager
def stop_signals(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """While the block runs, :data:`STOP_SIGNALS` call ``handler(signum, frame)``; the previous
    handlers come back after it. Only in the main thread (Python delivers signals there alone;
    elsewhere the block runs unchanged)."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)  # None: a handler not set from Python

Curve = Batch
"""A trial's per-step metrics: ``[(step, {metric: value}, timestamp_ms), ...]``."""


class ClusterError(OrchestratorError):
    """The driver lost its cluster (Ray stopped answering); the execution ends, recorded, with this one line."""


class Loss(str, enum.Enum):
    """Why an attempt came back without a result (its text is what the records keep)."""

    CANCELLED = "cancelled"
    """Cancelled by the driver (Ctrl-C, or the execution was taken over)."""
    WORKER_DIED = "worker died"
    """The worker process died mid-trial (killed, out of memory, a crash in native code)."""
    NODE_LOST = "node lost"
    """The node running the attempt died or was preempted."""
    GPU_MEMORY = "gpu memory"
    """The attempt's GPU had less memory free than the trial asks for (``gpu_memory_gb``); it did not start."""

    @property
    def retried(self) -> bool:
        """Whether a lost attempt is run again (at least once, even with ``retries = 0``)."""
        return self is not Loss.CANCELLED

    def charged(self, node: str | None, lost_on: set[str]) -> bool:
        """Whether this loss uses one of the trial's retries.

        A node loss is charged once per node: further attempts lost with a node already
        charged (``lost_on``) are free; a node we cannot name is always charged. A GPU
        memory refusal is the other way round: the first refusal by each node is free (a
        busy GPU is not the trial's fault, and the retry goes to another node), a node that
        refuses again is charged, so a trial no node can take ends after its retries.
        """
        if self is Loss.NODE_LOST and node is not None:
            return node not in lost_on
        if self is Loss.GPU_MEMORY and node is not None:
            return node in lost_on
        return True

    def reason(self, detail: str | None) -> str:
        """What the records keep for a retried attempt: the loss, with ``detail`` where it tells the user something to act on."""
        return f"{self.value} ({detail})" if self is Loss.GPU_MEMORY and detail else self.value


@dataclass
class Outcome:
    """What came back for one trial attempt: a result (with its curve) or why it was lost.

    Attributes:
        loss: why no result came back (``None`` when ``result`` is set).
        crash: the detail of the loss (the exception's first line).
        node: the node the attempt was lost with, when known (node loss).
        retry_reasons: why earlier attempts of this trial were retried (set by :meth:`Executor.run`).
    """

    trial: Trial
    attempt: int
    result: TrialResult | None
    curve: Curve = field(default_factory=list)
    started_ms: int | None = None
    last_step: int = -1
    crash: str | None = None
    environment: Mapping[str, Any] | None = None
    loss: Loss | None = None
    node: str | None = None
    retry_reasons: list[str] = field(default_factory=list)


def _point_key(point: Any) -> tuple[Any, ...]:
    step, values, timestamp = point
    return (int(step), int(timestamp), tuple(sorted(values)))


class Executor(abc.ABC):
    """Runs trial attempts somewhere. Subclasses implement three small hooks; the rest is shared.

    Hooks (for subclasses only): :meth:`_submit` (start one attempt), :meth:`_poll`
    (outcomes that are ready) and :meth:`_cancel` (stop everything in flight, return those
    trials); optionally :meth:`_live_metrics` and :meth:`_leftover_metrics`. Callers use
    only the public methods: :meth:`run`, :meth:`slots`, :meth:`window`, :meth:`collect`,
    :meth:`cancel`, :meth:`final_metrics`, :meth:`close` and the attributes
    :attr:`interrupts_trial`, :attr:`retried` and :attr:`error`.
    """

    name = "executor"
    interrupts_trial = False
    """Whether the first Ctrl-C must interrupt the running trial itself (it runs in the
    driver's own thread); otherwise the first Ctrl-C stops submitting and cancels."""

    def __init__(self) -> None:
        self.on_metrics: Callable[[Trial, Batch], None] = lambda trial, batch: None
        self.on_lost: Callable[[Trial, int, str], None] = lambda trial, attempt, reason: None
        """Called when an attempt is lost and will be retried (the recorder closes its live run)."""
        self.retried: collections.Counter[str] = collections.Counter()
        """Trials retried at least once, per reason (``"node lost"``, ``"worker died"``, ``"failed"``)."""
        self.retries_used = 0
        """Attempts run again, all reasons together."""
        self.error: str | None = None
        """Why the execution stopped early because of the cluster (a :class:`ClusterError`), else ``None``."""
        self._in_flight: dict[str, tuple[Trial, int]] = {}
        self._live_keys: dict[str, set[tuple[Any, ...]]] = {}
        self._killed: dict[str, tuple[Trial, int]] = {}  # trial id -> (trial, its cancelled attempt)

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
        try:
            ready = self._poll(timeout)
        except ClusterError:
            return []
        for outcome in ready:
            self._in_flight.pop(outcome.trial.trial_id, None)
        return ready

    def cancel(self) -> list[tuple[Trial, int]]:
        """Stop every attempt in flight; returns those trials with their attempt numbers."""
        try:
            self._cancel()
        except ClusterError:
            pass  # nothing to cancel with: what was in flight is reported all the same
        cancelled = list(self._in_flight.values())
        self._killed.update({trial.trial_id: (trial, attempt) for trial, attempt in cancelled})
        self._in_flight.clear()
        return cancelled

    def final_metrics(self) -> list[tuple[Trial, Batch]]:
        """Metric batches of killed trials still on their way at the end, as ``(trial, batch)``.

        Finished and failed trials carry their whole curve in their result, so nothing of
        theirs is left here; batches of an attempt that was lost and retried are dropped.
        """
        out = []
        for trial_id, attempt, batch in self._leftover_metrics():
            killed = self._killed.get(trial_id)
            if killed is not None and killed[1] == attempt:
                seen = self._live_keys.setdefault(trial_id, set())
                fresh = [p for p in batch if _point_key(p) not in seen]
                seen.update(_point_key(p) for p in fresh)
                if fresh:
                    out.append((killed[0], fresh))
        return out

    @abc.abstractmethod
    def _submit(self, trial: Trial, attempt: int) -> None: ...

    @abc.abstractmethod
    def _poll(self, timeout: float) -> list[Outcome]:
        """Outcomes that are ready; raises :class:`ClusterError` when the cluster stopped answering."""

    @abc.abstractmethod
    def _cancel(self) -> list[tuple[Trial, int]]:
        """Stop what runs (the base knows which trials were in flight and reports them)."""

    def _live_metrics(self) -> list[tuple[str, int, Batch]]:
        """Live batches that arrived, as ``(trial_id, attempt, batch)``; only for executors whose
        workers push batches (the whole curve then also comes back with the result)."""
        return []

    def _leftover_metrics(self) -> list[tuple[str, int, Batch]]:
        """Live batches still on their way at the end, as ``(trial_id, attempt, batch)``."""
        return []

    def close(self) -> None:
        """Release what the executor holds (Ray is shut down only if it was started here)."""

    def _deliver_live(self) -> None:
        for trial_id, attempt, batch in self._live_metrics():
            current = self._in_flight.get(trial_id)
            if current is None or current[1] != attempt:
                continue  # a lost attempt's late batch, or a trial already recorded: its result has the curve
            seen = self._live_keys.setdefault(trial_id, set())
            fresh = [p for p in batch if _point_key(p) not in seen]
            seen.update(_point_key(p) for p in fresh)
            if fresh:
                self.on_metrics(current[0], fresh)

    def _unlogged(self, outcome: Outcome) -> Curve:
        """The part of a result's curve that did not already go out live."""
        seen = self._live_keys.pop(outcome.trial.trial_id, set())
        return [p for p in outcome.curve if _point_key(p) not in seen] if seen else list(outcome.curve)

    def run(
        self,
        trials: Iterable[Trial],
        *,
        retries: int,
        window: int,
        on_done: Callable[[Outcome], None],
        on_killed: Callable[[Trial, int], None],
        stop: threading.Event,
        tick: Callable[[int], None] = lambda running: None,
    ) -> bool:
        """Run ``trials`` (retrying within ``retries``); returns True if stopped early.

        Trials are drawn from ``trials`` one at a time as the window has room (a plan's
        :class:`~orchestrator.design.plan.TrialTable` builds each trial then), so only the
        trials in flight are held here, whatever the size of the study.
        A trial that raises is retried up to ``retries`` times. An attempt lost with its
        worker or its node is retried too, at least once even with ``retries = 0``, and a
        node loss uses a retry only once per node. Each trial reaches ``on_done`` exactly
        once with its final outcome (``outcome.retry_reasons`` says why earlier attempts
        were retried); trials cancelled by ``stop`` reach ``on_killed``. If the cluster
        stops answering, :attr:`error` says why, in-flight trials reach ``on_killed`` and
        True is returned.
        """
        source = iter(trials)
        exhausted = False
        charged: dict[str, int] = collections.defaultdict(int)
        lost_on: dict[str, set[str]] = collections.defaultdict(set)
        reasons: dict[str, list[str]] = collections.defaultdict(list)
        kinds: dict[str, set[str]] = collections.defaultdict(set)
        try:
            while True:
                if stop.is_set():
                    break
                while not exhausted and len(self._in_flight) < window and not stop.is_set():
                    trial = next(source, None)
                    if trial is None:
                        exhausted = True
                        break
                    self._in_flight[trial.trial_id] = (trial, 1)
                    self._submit(trial, 1)
                if exhausted and not self._in_flight:
                    break
                for outcome in self._poll(0.25):
                    trial, attempt = outcome.trial, outcome.attempt
                    trial_id = trial.trial_id
                    self._in_flight.pop(trial_id, None)
                    cancelled = outcome.loss is Loss.CANCELLED or (outcome.result is None and stop.is_set())  # Ctrl-C may reach workers too
                    if cancelled or (outcome.result is not None and outcome.result.state is TrialState.KILLED):
                        self._killed[trial_id] = (trial, attempt)
                        on_killed(trial, attempt)
                        continue
                    if outcome.result is None:
                        loss = outcome.loss or Loss.WORKER_DIED
                        if loss.charged(outcome.node, lost_on[trial_id]):
                            charged[trial_id] += 1
                        if outcome.node is not None:
                            lost_on[trial_id].add(outcome.node)
                        retry = loss.retried and charged[trial_id] <= max(retries, 1)
                        kind, reason = loss.value, loss.reason(outcome.crash)
                    else:
                        failed = outcome.result.state is TrialState.FAILED
                        charged[trial_id] += int(failed)
                        retry = failed and charged[trial_id] <= retries
                        kind = reason = "failed"
                    if retry and not stop.is_set():
                        if outcome.result is None:
                            self._live_keys.pop(trial_id, None)  # the next attempt starts a fresh curve
                            self.on_lost(trial, attempt, reason)
                        if kind not in kinds[trial_id]:
                            self.retried[kind] += 1
                            kinds[trial_id].add(kind)
                        reasons[trial_id].append(reason)
                        self.retries_used += 1
                        self._in_flight[trial_id] = (trial, attempt + 1)
                        self._submit(trial, attempt + 1)
                        continue
                    if outcome.result is None:
                        where = f" with node {outcome.node[:12]}" if outcome.loss is Loss.NODE_LOST and outcome.node else ""
                        outcome.result = TrialResult(
                            trial_id=trial_id,
                            state=TrialState.FAILED,
                            error=(
                                f"attempt {attempt} of this trial was lost ({(outcome.loss or Loss.WORKER_DIED).value}{where}: "
                                f"{outcome.crash}); no result came back and its retries are used up."
                            ),
                            attempts=attempt,
                        )
                    outcome.curve = self._unlogged(outcome)
                    outcome.retry_reasons = list(reasons.pop(trial_id, []))
                    kinds.pop(trial_id, None)
                    on_done(outcome)
                self._deliver_live()
                tick(len(self._in_flight))
        except ClusterError as exc:
            self.error = str(exc)
            stop.set()
        if stop.is_set():
            for trial, attempt in self.cancel():
                on_killed(trial, attempt)
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
