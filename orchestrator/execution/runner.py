"""Execute a study: resume logic, retries, progress, Ctrl-C, on Ray or in this process.

:func:`run_study` is the one entry point (the CLI's ``run`` calls it). It checks the
tracking store, opens an execution (one MLflow parent run), works out which trials still
need a FINISHED run, and hands them to an :class:`Executor`:

* :class:`RayExecutor` - one Ray task per trial attempt (see :mod:`orchestrator.ray_backend`);
* :class:`InProcessExecutor` - the same worker code, serially, in this process, for
  debugging with ``pdb`` (``--in-process``; submitit's ``DebugExecutor`` idea).

Both share :meth:`Executor.run`, written once: a window of trials in flight, retries of
trials that raise or whose worker died, live metric batches to the recorder, and a clean
stop on Ctrl-C (in-flight trials are cancelled and recorded KILLED; a rerun resumes).

Example:
    >>> from orchestrator import load_study
    >>> from orchestrator.execution import run_study
    >>> summary = run_study(load_study("screening_demo", "smoke"), in_process=True, progress=False)  # doctest: +SKIP
    >>> summary.finished, summary.failed                                                        # doctest: +SKIP
    (8, 0)
"""

from __future__ import annotations

import abc
import collections
import enum
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from .errors import OrchestratorError, did_you_mean
from .trial import Resources, Trial, TrialResult, TrialState

if TYPE_CHECKING:
    from .study import Study
    from .tracking import ExecutionRecorder

__all__ = [
    "BatchingSink",
    "ExecutionSummary",
    "Executor",
    "InProcessExecutor",
    "Mode",
    "RayExecutor",
    "run_study",
]

Curve = list  # [(step, {metric: value}, timestamp_ms), ...]


class Mode(str, enum.Enum):
    """What an execution runs."""

    RESUME = "resume"
    """Only trials without a FINISHED run in the latest lineage (missing, failed, killed)."""
    RERUN = "rerun"
    """Every trial again, as a new lineage (scheduled reruns, drift detection)."""

    @classmethod
    def parse(cls, value: "Mode | str") -> "Mode":
        try:
            return cls(value)
        except ValueError:
            raise OrchestratorError(f"mode: expected 'resume' or 'rerun', found {value!r}. {did_you_mean(str(value), [m.value for m in cls])}") from None


class BatchingSink:
    """A worker-side metric sink: keeps per-step metrics and pushes a batch about every ``interval_s``.

    A trial shorter than ``interval_s`` pushes nothing; its curve travels back with its
    result (:meth:`remaining`), so short trials cost no extra messages.
    """

    def __init__(self, push: Callable[[str, list], None] | None, interval_s: float = 1.0):
        self._push = push
        self._interval = interval_s
        self._buffer: list[tuple[int, dict[str, float], int]] = []
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

    def remaining(self) -> list[tuple[int, dict[str, float], int]]:
        """What has not been pushed yet (sent back with the result)."""
        batch, self._buffer = self._buffer, []
        return batch


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
    """Runs trial attempts somewhere. Subclasses implement three small hooks; :meth:`run` is shared.

    Hooks: :meth:`_submit` (start one attempt), :meth:`_poll` (outcomes that are ready) and
    :meth:`_cancel` (stop everything in flight, return those trials).
    """

    name = "executor"

    def __init__(self) -> None:
        self.on_metrics: Callable[[Trial, list], None] = lambda trial, batch: None
        self._in_flight: dict[str, tuple[Trial, int]] = {}

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def slots(self, resources: Resources) -> int:
        """How many trials run at once."""
        return 1

    @abc.abstractmethod
    def _submit(self, trial: Trial, attempt: int) -> None: ...

    @abc.abstractmethod
    def _poll(self, timeout: float) -> list[Outcome]: ...

    @abc.abstractmethod
    def _cancel(self) -> list[tuple[Trial, int]]: ...

    def _live_metrics(self) -> list[tuple[str, list]]:
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

    def __init__(self, flush_s: float = 1.0):
        super().__init__()
        self._flush_s = flush_s
        self._done: list[Outcome] = []
        self._interrupted: tuple[Trial, int] | None = None

    def _submit(self, trial: Trial, attempt: int) -> None:
        from .environment import fingerprint
        from .worker import execute_trial

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


class RayExecutor(Executor):
    """One Ray task per trial attempt, with the study's resources (see :mod:`orchestrator.ray_backend`)."""

    name = "ray"

    def __init__(self, address: str | None = None, resources: Resources | None = None, flush_s: float = 1.0):
        from . import ray_backend

        super().__init__()
        self.connection = ray_backend.connect(address)
        self.resources = resources or Resources()
        self._check_feasible(ray_backend.cluster_resources())
        self._runner = ray_backend.RayRunner(flush_s=flush_s)
        self._refs: dict[Any, tuple[Trial, int]] = {}

    def _check_feasible(self, available: Mapping[str, float]) -> None:
        wanted = {"CPU": self.resources.cpus, "GPU": self.resources.gpus, **self.resources.custom}
        missing = [f"{amount:g} {name} (cluster has {available.get(name, 0):g})" for name, amount in wanted.items() if amount > available.get(name, 0)]
        if missing and not self.connection.address:
            self.close()
            raise OrchestratorError(
                f"each trial asks for {', '.join(missing)}: expected the embedded Ray to have that much. "
                "Lower the study's resources, or join a cluster that has them with --address."
            )
        if missing:
            print(f"warning: each trial asks for {', '.join(missing)}; trials wait until the cluster scales up", file=sys.stderr)

    def slots(self, resources: Resources) -> int:
        from .ray_backend import slots_for

        return slots_for(resources)

    def _submit(self, trial: Trial, attempt: int) -> None:
        ref = self._runner.submit(trial.to_dict(), attempt, self.resources)
        self._refs[ref] = (trial, attempt)

    def _poll(self, timeout: float) -> list[Outcome]:
        out = []
        for ref, payload, crash in self._runner.wait(list(self._refs), timeout):
            trial, attempt = self._refs.pop(ref)
            if payload is None:
                out.append(Outcome(trial, attempt, None, crash=crash))
                continue
            result = TrialResult.from_dict(payload["result"])
            out.append(Outcome(trial, attempt, result, payload["curve"], payload["started_ms"], payload["last_step"], environment=payload.get("environment")))
        return out

    def _live_metrics(self) -> list[tuple[str, list]]:
        return self._runner.metrics()

    def _cancel(self) -> list[tuple[Trial, int]]:
        self._runner.cancel(list(self._refs))
        cancelled = list(self._refs.values())
        self._refs.clear()
        return cancelled

    def close(self) -> None:
        runner = getattr(self, "_runner", None)
        if runner is not None:
            runner.close()
        self.connection.close()


@dataclass
class ExecutionSummary:
    """What an execution did.

    Attributes:
        study, variant, mode: what ran.
        execution_id, parent_run_id, experiment_id, tracking_uri: where it is recorded.
        planned: trials in the plan; skipped: already FINISHED in the lineage (resume).
        finished, failed, diverged, killed: outcomes of the trials run now
            (diverged trials are also counted as finished).
        interrupted: stopped early by Ctrl-C.
        wall_s: seconds from the first submission to the last record.
        results: the final result of every trial run now.
        errors: records that could not be written.
    """

    study: str
    variant: str | None
    mode: str
    execution_id: str
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    planned: int = 0
    skipped: int = 0
    finished: int = 0
    failed: int = 0
    diverged: int = 0
    killed: int = 0
    interrupted: bool = False
    wall_s: float = 0.0
    stale_closed: int = 0
    results: list[TrialResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ran(self) -> int:
        return self.finished + self.failed + self.killed

    @property
    def exit_code(self) -> int:
        """0 all good, 1 some trials failed or records are missing, 130 interrupted by Ctrl-C."""
        if self.interrupted:
            return 130
        return 1 if self.failed or self.errors else 0

    def counts(self) -> dict[str, int]:
        return {
            "trials_planned": self.planned,
            "trials_skipped": self.skipped,
            "trials_ran": self.ran,
            "trials_finished": self.finished,
            "trials_failed": self.failed,
            "trials_diverged": self.diverged,
            "trials_killed": self.killed,
        }

    def line(self) -> str:
        text = (
            f"{self.study} ({self.variant}), execution {self.execution_id}: {self.finished} finished "
            f"({self.diverged} diverged), {self.failed} failed, {self.killed} killed, {self.skipped} already done, "
            f"of {self.planned} planned, in {self.wall_s:.1f} s"
        )
        if self.interrupted:
            text += "; interrupted - run again to resume"
        return text


# -- progress ----------------------------------------------------------------------------


class _Progress:
    """Plain log lines (not a terminal): one every few seconds and one at the end."""

    def __init__(self, total: int, title: str, every_s: float = 5.0):
        self.total, self.title, self.every_s = total, title, every_s
        self.start = time.monotonic()
        self._last = 0.0

    def text(self, c: Mapping[str, int], running: int) -> str:
        done = c["finished"] + c["failed"]
        elapsed = time.monotonic() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        eta_text = f"{eta:.0f} s" if eta == eta else "?"
        return (
            f"{self.title}: {done}/{self.total} done, {running} running, {c['failed']} failed, "
            f"{c['diverged']} diverged, {rate:.1f} trials/s, ETA {eta_text}"
        )

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def update(self, c: Mapping[str, int], running: int, final: bool = False) -> None:
        now = time.monotonic()
        if final or now - self._last >= self.every_s:
            self._last = now
            print(self.text(c, running), file=sys.stderr, flush=True)


class _RichProgress(_Progress):
    """A live display on a terminal (rich)."""

    def __enter__(self) -> "_RichProgress":
        from rich.live import Live

        self._live = Live("", refresh_per_second=4, transient=False)
        self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._live.__exit__(*exc)

    def update(self, c: Mapping[str, int], running: int, final: bool = False) -> None:
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        grid = Table.grid(padding=(0, 1))
        done = c["finished"] + c["failed"]
        grid.add_row(ProgressBar(total=max(self.total, 1), completed=done, width=24), self.text(c, running))
        self._live.update(grid)


# -- the entry point -----------------------------------------------------------------------


def _with_overrides(study: "Study", overrides: Mapping[str, Any] | None) -> "Study":
    if not overrides:
        return study
    from .study import Study

    raw = dict(study._raw)
    raw["params"] = {**(raw.get("params") or {}), **dict(overrides)}
    resolved = Study(**raw)
    object.__setattr__(resolved, "source_file", study.source_file)
    return resolved.with_variant(study.variant)


def run_study(
    study: "Study",
    *,
    address: str | None = None,
    tracking_uri: str | None = None,
    max_concurrent: int | None = None,
    retries: int | None = None,
    mode: Mode | str = Mode.RESUME,
    in_process: bool = False,
    progress: bool | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ExecutionSummary:
    """Execute a study and record it in MLflow; returns what happened.

    Args:
        study: the study (a variant applied, or ``full`` is used).
        address: Ray address (``None``: ``$RAY_ADDRESS`` or an embedded Ray; ``"auto"``; ``host:port``).
            An already-initialised Ray is used as it is.
        tracking_uri: MLflow store (default ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow/mlflow.db``).
        max_concurrent: at most this many trials in flight (default: what the cluster holds).
        retries: retries of a trial that raises (default: the study's ``retries``).
        mode: ``resume`` (only trials without a FINISHED run) or ``rerun`` (all, as a new lineage).
        in_process: run trials in this process, serially, without Ray (debugging).
        progress: live display (``None``: when stderr is a terminal, else log lines; False: quiet).
        overrides: fixed parameters to override for this execution (changes trial ids).

    Raises:
        TrackingStoreError: the store is unreachable or unwritable (before any trial runs).
        RayAddressError: the Ray cluster cannot be joined.
        ExecutionInProgressError: another live driver here is executing this study.

    Example:
        >>> summary = run_study(study, in_process=True, progress=False)   # doctest: +SKIP
        >>> summary.exit_code                                             # doctest: +SKIP
        0
    """
    from .design import make_plan
    from .tracking import ExecutionRecorder, open_store

    mode = Mode.parse(mode)
    if study.variant is None:
        study = study.with_variant(None)
    study = _with_overrides(study, overrides)
    if max_concurrent is not None and max_concurrent < 1:
        raise OrchestratorError(f"--max-concurrent: expected a positive number of trials, found {max_concurrent}")
    if retries is not None and retries < 0:
        raise OrchestratorError(f"--retries: expected 0 or more, found {retries}")
    retries = study.retries if retries is None else retries
    plan = make_plan(study)
    store = open_store(tracking_uri)  # unreachable / unwritable: fail before any trial
    executor: Executor = InProcessExecutor() if in_process else RayExecutor(address, study.resources)
    try:
        recorder = ExecutionRecorder(store, plan, mode=mode.value)
        to_run = recorder.begin()
        if recorder.info is None:  # pragma: no cover - begin() always sets it
            raise RuntimeError("the execution recorder did not start an execution")
        info = recorder.info
        summary = ExecutionSummary(
            study=study.name, variant=study.variant, mode=mode.value, execution_id=info.execution_id,
            parent_run_id=info.parent_run_id, experiment_id=info.experiment_id, tracking_uri=store.uri,
            planned=len(plan.trials), skipped=len(plan.trials) - len(to_run), stale_closed=recorder.stale_closed,
        )
        _execute(executor, recorder, to_run, summary, retries=retries, max_concurrent=max_concurrent, progress=progress, resources=study.resources)
    finally:
        executor.close()
    return summary


def _execute(
    executor: Executor,
    recorder: "ExecutionRecorder",
    trials: Sequence[Trial],
    summary: ExecutionSummary,
    *,
    retries: int,
    max_concurrent: int | None,
    progress: bool | None,
    resources: Resources,
) -> None:
    stop = threading.Event()
    counts = {"finished": 0, "failed": 0, "diverged": 0, "killed": 0}

    def on_done(outcome: Outcome) -> None:
        result = outcome.result
        if result is None:  # pragma: no cover - outcomes always carry a result
            raise RuntimeError("an outcome arrived without a trial result")
        if result.state is TrialState.FAILED:
            counts["failed"] += 1
        else:
            counts["finished"] += 1
            counts["diverged"] += int(result.metrics.get("diverged", 0.0) >= 1.0)
        summary.results.append(result)
        recorder.trial_done(outcome.trial, result, outcome.curve, outcome.started_ms, outcome.last_step, outcome.environment)

    def on_killed(trial: Trial, attempt: int) -> None:
        counts["killed"] += 1
        result = TrialResult(trial_id=trial.trial_id, state=TrialState.KILLED, attempts=attempt, error=None)
        summary.results.append(result)
        recorder.trial_done(trial, result)

    executor.on_metrics = recorder.trial_metrics
    slots = executor.slots(resources)
    window = max_concurrent or (slots * 4 + 8 if executor.name == "ray" else 1)
    display: _Progress
    if progress is None:
        progress = True
        display = _RichProgress(len(trials), summary.study) if sys.stderr.isatty() else _Progress(len(trials), summary.study)
    else:
        display = _RichProgress(len(trials), summary.study) if progress and sys.stderr.isatty() else _Progress(len(trials), summary.study)

    previous = None
    interrupts = {"count": 0}

    def on_sigint(signum: int, frame: Any) -> None:
        interrupts["count"] += 1
        stop.set()
        if interrupts["count"] > 1 or executor.name == "in-process":
            raise KeyboardInterrupt  # in-process: interrupt the trial itself; twice: stop now

    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, on_sigint)
    start = time.monotonic()
    try:
        with display:
            tick = (lambda running: display.update(counts, min(running, slots))) if progress else (lambda running: None)
            interrupted = executor.run(trials, retries=retries, window=window, on_done=on_done, on_killed=on_killed, stop=stop, tick=tick)
            if progress:
                display.update(counts, 0, final=True)
    except KeyboardInterrupt:
        interrupted = True
        for outcome in executor._poll(0):  # results that came back while the interrupt landed
            if outcome.result is not None and outcome.result.state is not TrialState.KILLED:
                on_done(outcome)
            else:
                on_killed(outcome.trial, outcome.attempt)
        for trial, attempt in executor._cancel():
            on_killed(trial, attempt)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if isinstance(executor, RayExecutor):
        by_id = {t.trial_id: t for t in trials}
        for trial_id, batch in executor._runner.final_metrics():
            if trial_id in by_id:
                recorder.trial_metrics(by_id[trial_id], batch)
    summary.interrupted = bool(interrupted or stop.is_set())
    summary.finished, summary.failed, summary.diverged, summary.killed = counts["finished"], counts["failed"], counts["diverged"], counts["killed"]
    recorder.close("KILLED" if summary.interrupted else ("FAILED" if summary.failed else "FINISHED"), summary.counts())
    summary.wall_s = time.monotonic() - start
    summary.errors = list(recorder.errors)
    run_ids = recorder.run_ids
    for result in summary.results:
        result.run_id = run_ids.get(result.trial_id, result.run_id)
