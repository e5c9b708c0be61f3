"""Execute a study: resume, retries, progress, Ctrl-C, on Ray or in this process.

:func:`run_study` is the one entry point (the CLI's ``run`` calls it). It checks the
tracking store, opens an execution (one MLflow parent run; the recorder works out which
trials still need a FINISHED run in the lineage: resume), and hands them to an
:class:`~orchestrator.execution.executor.Executor` (in-process or Ray), through its public
methods only: a window of trials in flight, retries, live metric batches to the recorder,
and a clean stop on Ctrl-C (in-flight trials are cancelled and recorded KILLED; a rerun
resumes).

Example:
    >>> from orchestrator import load_study
    >>> from orchestrator.execution import run_study
    >>> summary = run_study(load_study("screening_demo", "smoke"), in_process=True, progress=False)  # doctest: +SKIP
    >>> summary.finished, summary.failed                                                        # doctest: +SKIP
    (8, 0)
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ..design.trial import Resources, Trial, TrialResult, TrialState
from ..errors import OrchestratorError
from ..records.recorder import Mode
from .executor import Executor, InProcessExecutor, Outcome, stop_signals

if TYPE_CHECKING:
    from ..definition.study import Study
    from ..records.recorder import ExecutionRecorder

__all__ = ["ExecutionSummary", "Mode", "run_study"]


@dataclass
class ExecutionSummary:
    """What an execution did.

    Attributes:
        study, variant, mode: what ran.
        execution_id, parent_run_id, experiment_id, tracking_uri: where it is recorded.
        planned: trials in the plan; skipped: already FINISHED in the lineage (resume).
        finished, failed, diverged, killed: outcomes of the trials run now
            (diverged trials are also counted as finished).
        interrupted: stopped early by Ctrl-C (SIGINT) or SIGTERM (a scheduler evicting the driver, ``kill``).
        stopped_by: the signal that stopped it (``SIGINT`` or ``SIGTERM``), when interrupted.
        wall_s: seconds from the first submission to the last record.
        results: the final result of every trial run now.
        errors: records that could not be written.
        retried: trials retried at least once, per reason (``node lost``, ``worker died``, ``failed``).
        retries_used: attempts run again, all reasons together.
        error: why the execution stopped early without a Ctrl-C (the driver lost its Ray
            cluster, or another driver took the execution over), else ``None``.
        pending: records the store did not take within the retry budget; they are in the
            execution's journal and ``orchestrator sync STUDY`` (or the next ``run``) writes them.
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
    stopped_by: str = "SIGINT"
    wall_s: float = 0.0
    stale_closed: int = 0
    results: list[TrialResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    retried: dict[str, int] = field(default_factory=dict)
    retries_used: int = 0
    error: str | None = None
    pending: int = 0

    @property
    def ran(self) -> int:
        return self.finished + self.failed + self.killed

    @property
    def exit_code(self) -> int:
        """0 all good, 1 some trials failed or records are pending, 130 interrupted by Ctrl-C, 143 stopped by SIGTERM."""
        if self.interrupted:
            return 143 if self.stopped_by == "SIGTERM" else 130
        if self.error:
            return 1
        return 1 if self.failed or self.errors or self.pending else 0

    def counts(self) -> dict[str, int]:
        return {
            "trials_planned": self.planned,
            "trials_skipped": self.skipped,
            "trials_ran": self.ran,
            "trials_finished": self.finished,
            "trials_failed": self.failed,
            "trials_diverged": self.diverged,
            "trials_killed": self.killed,
            "trials_retried_node_lost": self.retried.get("node lost", 0),
            "trials_retried_gpu_memory": self.retried.get("gpu memory", 0),
            "retries_used": self.retries_used,
        }

    def line(self) -> str:
        text = (
            f"{self.study} ({self.variant}), execution {self.execution_id}: {self.finished} finished "
            f"({self.diverged} diverged), {self.failed} failed, {self.killed} killed, {self.skipped} already done, "
            f"of {self.planned} planned, in {self.wall_s:.1f} s"
        )
        lost = self.retried.get("node lost", 0)
        if lost:
            text += f"; {lost} trial{'s' if lost != 1 else ''} retried because a node was lost"
        short = self.retried.get("gpu memory", 0)
        if short:
            text += f"; {short} trial{'s' if short != 1 else ''} retried because a node had too little free GPU memory"
        if self.interrupted:
            text += "; interrupted - run again to resume" if self.stopped_by == "SIGINT" else f"; stopped by {self.stopped_by} - run again to resume"
        if self.error:
            text += f"; stopped early: {self.error}"
        if self.pending:
            text += (
                f"; {self.pending} records pending: the store {self.tracking_uri} was unreachable for longer than the retry budget. "
                f"They are in the execution's journal; run `orchestrator sync {self.study}` (or `run` again) once the store answers"
            )
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
    return study.with_params(overrides) if overrides else study


class _Background:
    """Run ``work`` in a thread now; :meth:`result` waits for it and returns its value or raises its exception."""

    def __init__(self, work: Callable[[], "ExecutionRecorder"]):
        self._value: ExecutionRecorder | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), name="orchestrator-open-records", daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], "ExecutionRecorder"]) -> None:
        try:
            self._value = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by result()
            self._error = exc

    def wait(self) -> None:
        self._thread.join()

    def result(self) -> "ExecutionRecorder":
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._value is None:  # pragma: no cover - work returns a recorder or raises
            raise RuntimeError("opening the records returned nothing")
        return self._value


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
    record_retry_s: float | None = None,
    writers: int | None = None,
    trial_runs: str = "auto",
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
        record_retry_s: how long the store may keep failing before records are left pending in
            the journal (default ``$ORCHESTRATOR_RECORD_RETRY_S``, else 120 s).
        writers: threads writing per-trial runs (default ``$ORCHESTRATOR_RECORD_WRITERS``, else
            1 for SQLite and 16 for a server or database).
        trial_runs: ``per-trial``, ``per-cell`` (one run per design cell, aggregates over its
            replicates; every trial in the results table) or ``auto`` (per cell above
            ``$ORCHESTRATOR_PER_CELL_ABOVE`` trials, default 10,000): see :mod:`orchestrator.records.cellruns`.

    Raises:
        TrackingStoreError: the store is unreachable or unwritable (before any trial runs).
        RayAddressError: the Ray cluster cannot be joined.
        ExecutionInProgressError: another driver (any host) holds a fresh lease on this study and variant.

    Example:
        >>> summary = run_study(study, in_process=True, progress=False)   # doctest: +SKIP
        >>> summary.exit_code                                             # doctest: +SKIP
        0
    """
    from ..design.plan import make_plan
    from ..records.recorder import ExecutionRecorder
    from ..records.store import open_store
    from .placement import check_records, detect_placement

    mode = Mode.parse(mode)
    if study.variant is None:
        study = study.with_variant(None)
    study = _with_overrides(study, overrides)
    if max_concurrent is not None and max_concurrent < 1:
        raise OrchestratorError(f"--max-concurrent: expected a positive number of trials, found {max_concurrent}")
    if retries is not None and retries < 0:
        raise OrchestratorError(f"--retries: expected 0 or more, found {retries}")
    retries = study.retries if retries is None else retries
    check_records(detect_placement(), tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))  # a Ray job's temporary copy: refuse

    def open_records() -> "ExecutionRecorder":
        """Plan the study, open and check the store (a 1e6-trial plan takes seconds: it overlaps Ray's start too)."""
        return ExecutionRecorder(open_store(tracking_uri), make_plan(study), mode=mode, retry_budget_s=record_retry_s,
                                 writers=writers, trial_runs=trial_runs)

    executor: Executor
    if in_process:
        recorder = open_records()  # unreachable / unwritable store: fails before any trial
        executor = InProcessExecutor()
    else:
        from .ray_backend import RayExecutor

        # start-up: planning, importing mlflow, checking the store and fingerprinting the environment
        # overlap with Ray's start (mostly waiting for its processes); the store is checked before any
        # trial. The execution itself (parent run, lease) is opened only once Ray is up: a failed start
        # records nothing.
        opening = _Background(open_records)
        try:
            executor = RayExecutor(address, study.resources)
        except BaseException:
            opening.wait()
            raise
        try:
            recorder = opening.result()
        except BaseException:
            executor.close()
            raise
    store = recorder.store
    plan = recorder.plan
    try:
        to_run = recorder.begin()
        if recorder.info is None:  # pragma: no cover - begin() always sets it
            raise RuntimeError("the execution recorder did not start an execution")
        info = recorder.info
        summary = ExecutionSummary(
            study=study.name, variant=study.variant, mode=mode.value, execution_id=info.execution_id,
            parent_run_id=info.parent_run_id, experiment_id=info.experiment_id, tracking_uri=store.uri,
            planned=len(plan.trials), skipped=len(plan.trials) - len(to_run), stale_closed=recorder.stale_closed,
        )
        failed_before: list[tuple[Trial, str]] = []
        if study.tuning is not None:  # the search phase (orchestrator.tuning): each cell's configuration selected, then the reruns
            say = (lambda line: print(line, file=sys.stderr, flush=True)) if progress is not False else (lambda line: None)
            phase = study.tuning.search_phase(study, plan, recorder, to_run, in_process=in_process, max_concurrent=max_concurrent, log=say)
            to_run, failed_before = phase.trials, phase.failed
        _execute(executor, recorder, to_run, summary, retries=retries, max_concurrent=max_concurrent, progress=progress, resources=study.resources, failed_before=failed_before)
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
    failed_before: Sequence[tuple[Trial, str]] = (),
) -> None:
    stop = threading.Event()
    counts = {"finished": 0, "failed": len(failed_before), "diverged": 0, "killed": 0}
    for trial, reason in failed_before:  # trials that cannot run (their search selected nothing): recorded outcomes
        failure = TrialResult(trial_id=trial.trial_id, state=TrialState.FAILED, error=reason)
        summary.results.append(failure)
        recorder.trial_done(trial, failure)

    def on_done(outcome: Outcome) -> None:
        result = outcome.result
        if result is None:  # pragma: no cover - outcomes always carry a result
            raise RuntimeError("an outcome arrived without a trial result")
        if not recorder.lease.held():  # another driver may own these trials now: never a second FINISHED run
            on_killed(outcome.trial, outcome.attempt)
            return
        if result.state is TrialState.FAILED:
            counts["failed"] += 1
        else:
            counts["finished"] += 1
            counts["diverged"] += int(result.metrics.get("diverged", 0.0) >= 1.0)
        summary.results.append(result)
        recorder.trial_done(outcome.trial, result, outcome.curve, outcome.started_ms, outcome.last_step, outcome.environment, outcome.retry_reasons)

    def on_killed(trial: Trial, attempt: int) -> None:
        counts["killed"] += 1
        result = TrialResult(trial_id=trial.trial_id, state=TrialState.KILLED, attempts=attempt, error=None)
        summary.results.append(result)
        recorder.trial_done(trial, result)

    executor.on_metrics = recorder.trial_metrics
    executor.on_lost = recorder.attempt_lost
    recorder.lease.on_lost = lambda why: stop.set()  # another driver took over: stop, record in-flight trials KILLED
    slots = executor.slots(resources)
    window = max_concurrent or executor.window(slots)
    display: _Progress
    if progress is None:
        progress = True
        display = _RichProgress(len(trials), summary.study) if sys.stderr.isatty() else _Progress(len(trials), summary.study)
    else:
        display = _RichProgress(len(trials), summary.study) if progress and sys.stderr.isatty() else _Progress(len(trials), summary.study)

    interrupts: dict[str, Any] = {"count": 0, "by": "SIGINT"}

    def on_signal(signum: int, frame: Any) -> None:
        """Ctrl-C, or SIGTERM (a scheduler evicting the driver: Kubernetes, Slurm, ``kill``): stop
        dispatching, cancel what runs and record it KILLED, close the execution; a second one stops at once."""
        interrupts["count"] += 1
        interrupts["by"] = signal.Signals(signum).name
        stop.set()
        if interrupts["count"] > 1 or executor.interrupts_trial:
            raise KeyboardInterrupt  # in-process: interrupt the trial itself; twice: stop now

    start = time.monotonic()
    with stop_signals(on_signal):
        try:
            with display:
                tick = (lambda running: display.update(counts, min(running, slots))) if progress else (lambda running: None)
                interrupted = executor.run(trials, retries=retries, window=window, on_done=on_done, on_killed=on_killed, stop=stop, tick=tick)
                if progress:
                    display.update(counts, 0, final=True)
        except KeyboardInterrupt:
            interrupted = True
            for outcome in executor.collect(0):  # results that came back while the interrupt landed
                if outcome.result is not None and outcome.result.state is not TrialState.KILLED:
                    on_done(outcome)
                else:
                    on_killed(outcome.trial, outcome.attempt)
            for trial, attempt in executor.cancel():
                on_killed(trial, attempt)
    for trial, batch in executor.final_metrics():
        recorder.trial_metrics(trial, batch)
    summary.error = executor.error or recorder.lease.lost
    summary.interrupted = bool(interrupted or stop.is_set()) and summary.error is None
    summary.stopped_by = interrupts["by"]
    summary.finished, summary.failed, summary.diverged, summary.killed = counts["finished"], counts["failed"], counts["diverged"], counts["killed"]
    summary.retried, summary.retries_used = dict(executor.retried), executor.retries_used
    status = "KILLED" if summary.interrupted else ("FAILED" if summary.failed or summary.error else "FINISHED")
    summary.pending = recorder.close(status, summary.counts(), summary.error)
    summary.wall_s = time.monotonic() - start
    summary.errors = list(recorder.errors)
    run_ids = recorder.run_ids
    for result in summary.results:
        result.run_id = run_ids.get(result.trial_id, result.run_id)
