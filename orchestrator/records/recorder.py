"""The driver's writer: one :class:`ExecutionRecorder` per execution, the one writer of its records.

Workers never touch the store: they stream metric batches and results back to the driver,
where the recorder logs them from a background thread.

Example:
    >>> from orchestrator.records import ExecutionRecorder, open_store   # doctest: +SKIP
    >>> recorder = ExecutionRecorder(open_store(), plan, mode="resume")  # doctest: +SKIP
"""

from __future__ import annotations

import enum
import json
import os
import shutil
import socket
import tempfile
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ..design.plan import plan_csv
from ..design.trial import Trial, TrialResult
from ..errors import OrchestratorError, did_you_mean
from . import tags as T
from .environment import code_version as current_code_version
from .environment import fingerprint
from .cellruns import TrialRuns, cell_aggregates, write_cells
from .journal import JOURNAL_ENV, EntryKind, Journal, journal_root
from .lease import Lease
from .store import (
    BATCH_KEYS,
    BATCH_METRICS,
    TAG_MAX,
    TrackingStore,
    TrackingStoreError,
    chunks,
    clip,
    metric_entities,
    now_ms,
    param_entities,
    quiet_client,
    tag_entities,
)
from .table import (
    DEFAULT_ROWS_PER_PART,
    PART_FOLDER,
    RUN_IDS,
    curve_points,
    curves_name,
    download_table,
    one_row_per_trial,
    part_name,
    table_rows,
    write_curves,
    write_part,
    write_run_ids,
)
from .writers import WriterPool
from .trialruns import (
    default_retry_budget_s,
    default_writers,
    find_trial_runs,
    trial_params,
    trial_tags,
    trial_typed,
    write_trial_run,
)

if TYPE_CHECKING:
    from mlflow.entities import Run

    from ..design.plan import Plan
    from .replay import SyncReport

__all__ = [
    "ExecutionInfo",
    "ExecutionRecorder",
    "Mode",
    "default_retry_budget_s",
    "default_writers",
    "new_execution_id",
    "trial_params",
    "trial_typed",
    "write_trial_run",
]



class Mode(str, enum.Enum):
    """What an execution runs (``orchestrator run --mode``)."""

    RESUME = "resume"
    """Only trials without a FINISHED run in the latest lineage (missing, failed, killed)."""
    RERUN = "rerun"
    """Every trial again, as a new lineage (scheduled reruns, drift detection)."""

    @property
    def continues_lineage(self) -> bool:
        """Whether this execution continues the latest lineage of its variant (and skips its FINISHED trials)."""
        return self is Mode.RESUME

    @classmethod
    def parse(cls, value: "Mode | str") -> "Mode":
        """The mode named by ``value``; a clear error with the closest name otherwise."""
        try:
            return cls(value)
        except ValueError:
            raise OrchestratorError(f"mode: expected 'resume' or 'rerun', found {value!r}. {did_you_mean(str(value), [m.value for m in cls])}") from None








@dataclass(frozen=True)
class ExecutionInfo:
    """Identity of one execution (one parent run)."""

    execution_id: str
    lineage: str
    parent_run_id: str
    experiment_id: str
    mode: Mode


def new_execution_id() -> str:
    """A readable, sortable execution id: ``20261127T012233-1a2b``."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:4]
















class ExecutionRecorder:
    """The one writer of an execution's records, on the driver.

    :meth:`begin` runs synchronously: it replays what earlier executions of the study left
    pending in their journals, closes stale runs, decides what to run, opens the parent
    run and the execution's journal. After it, nothing waits for the store:

    * :meth:`trial_done` appends the trial to the journal (group-committed, fsync'd) and
      to the results table, and only then queues its MLflow run to a pool of writers
      (:class:`~orchestrator.records.writers.WriterPool`; one for SQLite, 16 for a server);
    * live metric batches go straight to the writers (same thread as their trial's record);
    * :meth:`close` waits for the writers (within the retry budget), uploads the last part
      of the results table and the run ids, and closes the parent run. What could not be
      written stays pending in the journal (:attr:`pending`), for ``orchestrator sync``.

    Recorded per cell (``trial_runs``, :mod:`.cellruns`), no trial gets a run: trials go to
    the journal and the results table only, and :meth:`close` writes one run per cell with
    aggregates over the lineage's replicates of it.

    Example:
        >>> recorder = ExecutionRecorder(open_store(), plan, mode="resume")   # doctest: +SKIP
        >>> to_run = recorder.begin()                                          # doctest: +SKIP
        >>> recorder.trial_done(trial, result, curve)                          # doctest: +SKIP
        >>> recorder.close("FINISHED", counts)                                 # doctest: +SKIP
        >>> recorder.pending                                                   # doctest: +SKIP
        0
    """

    def __init__(
        self,
        store: TrackingStore,
        plan: "Plan",
        *,
        mode: Mode | str = Mode.RESUME,
        environment: Mapping[str, Any] | None = None,
        code_version: str | None = None,
        writers: int | None = None,
        retry_budget_s: float | None = None,
        rows_per_part: int = DEFAULT_ROWS_PER_PART,
        trial_runs: TrialRuns | str = TrialRuns.AUTO,
    ):
        self.store = store
        self.plan = plan
        self.study = plan.study
        self.mode = Mode.parse(mode)
        self.environment = dict(environment or fingerprint())
        self.code_version = code_version or current_code_version()
        self.writers = writers or default_writers(store.uri)
        self.retry_budget_s = default_retry_budget_s() if retry_budget_s is None else float(retry_budget_s)
        self.rows_per_part = max(1, int(rows_per_part))
        self.trial_runs = TrialRuns.parse(trial_runs).resolve(len(plan.trials))
        """``PER_TRIAL`` or ``PER_CELL`` (``AUTO`` resolved by the plan's size)."""
        self.info: ExecutionInfo | None = None
        self.run_ids: dict[str, str] = {}
        self.errors: list[str] = []
        self.stale_closed = 0
        self.lease = Lease(store)
        """This driver's lease on the execution (:mod:`.lease`): a second driver refuses while it is fresh."""
        self.replayed: SyncReport | None = None
        self.pending = 0
        self.journal: Journal | None = None
        self._pool: WriterPool | None = None
        self._header: dict[str, Any] = {}
        self._live_latest: dict[str, dict[str, tuple[int, int, float]]] = {}
        self._rows: list[dict[str, Any]] = []
        self._points: list[list[tuple[str, int, str, float]]] = []  # per row of _rows: its curve points
        self._live: dict[str, list[tuple[int, dict[str, float], int]]] = {}
        self._earlier: Any = None  # per cell: the lineage's earlier table rows (a DataFrame), for the aggregates
        self._cells_written = False
        self._parts = 0
        self._lock = threading.Lock()
        self._spool = Path(tempfile.mkdtemp(prefix="orchestrator-results-"))
        self._tried: set[str] = set()
        self._journaled = 0
        self._recorded = 0
        self._parts_uploaded = 0
        self._parent_closed = False
        self._error: str | None = None

    # -- before any trial ---------------------------------------------------------------
    def begin(self, execution_id: str | None = None) -> Sequence[Trial]:
        """Replay pending journals, close stale runs, open the parent run; return the trials to run.

        Raises:
            ExecutionInProgressError: another driver (any host) holds a fresh lease on this study and variant.
            TrackingStoreError: the store refused a write.
        """
        client = self.store.client
        study = self.study
        quiet_client(self.store.uri, self.writers)
        try:
            experiment_id = self.store.create_experiment(study.name)
            parents = self.store.search(experiment_id, f"tags.{T.RUN_KIND} = '{T.KIND_EXECUTION}'")
        except Exception as exc:  # noqa: BLE001
            raise TrackingStoreError(f"tracking store {self.store.uri} refused to open experiment {study.name!r}: {exc}") from None
        stale, live = self.lease.check(parents, study.variant)
        from .replay import sync_study

        # before anything is decided: trials an earlier driver finished but could not record count as done
        self.replayed = sync_study(self.store, study.name, retry_budget_s=self.retry_budget_s)
        if self.replayed.left_pending:
            raise TrackingStoreError(
                f"{self.replayed.left_pending} records of earlier executions of {study.name!r} are still pending in "
                f"{journal_root(self.store.uri)} and the store {self.store.uri} refused them: {'; '.join(self.replayed.errors[:3])}. "
                "Expected them written before new trials run; fix the store, then run again (or orchestrator sync)."
            )
        # runs left RUNNING exist only under a parent left RUNNING (its driver died), or one a replay just closed
        if self.replayed.journals or any(p.info.status == "RUNNING" for p in parents):
            self.stale_closed = self._close_stale(experiment_id, stale, live)
        if self.replayed.journals or self.stale_closed:  # their parents' tags and states changed
            parents = self.store.search(experiment_id, f"tags.{T.RUN_KIND} = '{T.KIND_EXECUTION}'")
        execution_id = execution_id or new_execution_id()
        same_variant = sorted((r for r in parents if r.data.tags.get(T.VARIANT) == study.variant), key=lambda r: r.info.start_time)
        lineage = execution_id
        if self.mode.continues_lineage and same_variant:
            lineage = same_variant[-1].data.tags.get(T.LINEAGE, execution_id)
        done: set[str] = set()
        if lineage != execution_id:
            done = self._done_in_lineage(experiment_id, lineage, [r for r in same_variant if r.data.tags.get(T.LINEAGE) == lineage])
        to_run = self.plan.trials.without(done)  # a view of the plan: each trial is built when the executor draws it

        env_tags = {f"{T.ENV_PREFIX}{k}": clip(str(v), 250) for k, v in self.environment.items() if v is not None}
        base_tags = {
            T.STUDY: study.name,
            T.STUDY_HASH: study.definition_hash,
            T.VARIANT: str(study.variant),
            T.CODE_VERSION: self.code_version,
            T.EXECUTION_ID: execution_id,
            T.LINEAGE: lineage,
            **env_tags,
        }
        tags = {
            **base_tags,
            T.RUN_KIND: T.KIND_EXECUTION,
            T.MODE: self.mode.value,
            T.DRIVER: f"{socket.gethostname()}:{os.getpid()}",
            T.LEASE: self.lease.tag(),
            T.MLFLOW_RUN_NAME: f"execution {execution_id}",
            T.ENVIRONMENT: clip(json.dumps(self.environment, sort_keys=True, default=str), TAG_MAX),
            T.RESULTS_TABLE: PART_FOLDER,
            T.TRIAL_RUNS: self.trial_runs.value,
        }
        if study.source_file:
            tags[T.MLFLOW_SOURCE_NAME] = str(study.source_file)
        try:
            run = client.create_run(experiment_id, tags=tags)
            parent_id = run.info.run_id
            source = Path(study.source_file) if study.source_file and Path(study.source_file).is_file() else None
            writes: list[Callable[[], Any]] = [
                lambda: client.log_batch(
                    parent_id,
                    metrics=metric_entities({"trials_planned": len(self.plan.trials), "trials_skipped": len(self.plan.trials) - len(to_run)}, 0),
                    params=param_entities({T.MODE: self.mode.value, T.VARIANT: str(study.variant), "replicates": str(study.replicates), "workload": study.workload}),
                ),
                lambda: client.log_text(parent_id, plan_csv(self.plan), T.ARTIFACT_DESIGN),
                lambda: client.log_text(parent_id, json.dumps(study.to_dict(), indent=2, default=str), T.ARTIFACT_STUDY),
                lambda: client.log_text(parent_id, json.dumps(self.environment, indent=2, default=str), T.ARTIFACT_ENVIRONMENT),
            ]
            if source is not None:
                # stored as .py.txt: the embedded store lives in mlflow/, which must hold no .py file (it could
                # shadow the mlflow package when Python runs from the repository root)
                writes.append(lambda: client.log_text(parent_id, source.read_text(encoding="utf-8"), f"{T.ARTIFACT_STUDY_SOURCE_DIR}/{source.name}.txt"))
            # one round trip instead of five on a server (as many at once as there are writers; one at a time for SQLite)
            with ThreadPoolExecutor(max_workers=min(self.writers, len(writes)), thread_name_prefix="orchestrator-open") as opening:
                for future in [opening.submit(write) for write in writes]:
                    future.result()
        except Exception as exc:  # noqa: BLE001
            raise TrackingStoreError(f"tracking store {self.store.uri} refused to record execution of {study.name!r}: {type(exc).__name__}: {exc}") from None
        self.info = ExecutionInfo(execution_id, lineage, parent_id, experiment_id, self.mode)
        self._header = {
            "execution_id": execution_id,
            "tracking_uri": self.store.uri,
            "study": study.name,
            "variant": str(study.variant),
            "experiment_id": experiment_id,
            "parent_run_id": parent_id,
            "lineage": lineage,
            "rows_per_part": self.rows_per_part,
            "planned": len(self.plan.trials),
            "skipped": len(self.plan.trials) - len(to_run),
            "base_tags": base_tags,
            "driver": f"{socket.gethostname()}:{os.getpid()}",
            "trial_runs": self.trial_runs.value,
        }
        if not self.trial_runs.writes_trial_runs:
            self._header["cells_planned"] = self.plan.trials.cell_counts()  # from the plan's columns: no Trial built
        try:
            self.journal = Journal.create(journal_root(self.store.uri), study.name, self._header)
        except OSError as exc:
            raise TrackingStoreError(
                f"the results journal of {study.name!r} cannot be written under {journal_root(self.store.uri)} ({exc.strerror or exc}); "
                f"expected a writable folder. Set {JOURNAL_ENV} to one."
            ) from None
        self._pool = WriterPool(self.writers, self.retry_budget_s)
        self.lease.start(parent_id)
        return to_run

    def _done_in_lineage(self, experiment_id: str, lineage: str, parents: Sequence["Run"]) -> set[str]:
        """Trial ids with a FINISHED record in the lineage: a FINISHED row of an execution's results table, or a FINISHED trial run.

        The runs are searched only when an execution of the lineage has no complete table
        (recorded before tables existed); an execution recorded per cell has no trial runs.
        """
        import pandas as pd

        done: set[str] = set()
        frames = []
        complete = True
        for parent in parents:
            table, _ = download_table(self.store.client, parent)
            if table is None:
                complete = False
                continue
            frames.append(table)
            if not table.empty:
                done.update(table.loc[table["state"] == "FINISHED", "trial_id"])
        if not complete:
            for run in self.store.search(experiment_id, f"tags.{T.LINEAGE} = '{lineage}' and tags.{T.RUN_KIND} = '{T.KIND_TRIAL}' and attributes.status = 'FINISHED'"):
                done.add(run.data.tags.get(T.TRIAL_ID, ""))
        if not self.trial_runs.writes_trial_runs and frames:
            self._earlier = pd.concat(frames, ignore_index=True)
        return done

    def _close_stale(self, experiment_id: str, stale: Sequence["Run"], live: set[str]) -> int:
        """Close as KILLED the runs left RUNNING by drivers that are gone; returns how many.

        ``stale``: parent runs whose lease is stale (taken over). Every other RUNNING run is
        closed too unless it belongs to an execution in ``live`` (another variant's driver,
        holding a fresh lease).
        """
        client = self.store.client
        closed = 0
        why = {run.info.run_id: self.lease.describe_stale(run) for run in stale}
        for run in self.store.search(experiment_id, "attributes.status = 'RUNNING'"):
            if run.data.tags.get(T.EXECUTION_ID) in live:
                continue
            client.set_tag(run.info.run_id, T.CLOSED_BY, why.get(run.info.run_id, "stale: its driver is gone"))
            client.set_terminated(run.info.run_id, "KILLED")
            closed += 1
        return closed

    # -- while trials run ---------------------------------------------------------------
    def trial_metrics(self, trial: Trial, batch: Sequence[tuple[int, Mapping[str, float], int]]) -> None:
        """Log a live batch of per-step metrics ``(step, metrics, timestamp_ms)`` (creates the run if needed)."""
        batch = list(batch)
        latest = self._live_latest.setdefault(trial.trial_id, {})
        for step, values, ts in batch:
            for key, value in values.items():
                point = (int(step), int(ts), float(value))
                if key not in latest or point[:2] >= latest[key][:2]:
                    latest[key] = point
        with self._lock:
            self._live.setdefault(trial.trial_id, []).extend((int(s), dict(v), int(ts)) for s, v, ts in batch)
        if self.trial_runs.writes_trial_runs:
            self._writers().put(trial.trial_id, lambda: self._log_live(trial, batch))

    def trial_done(
        self,
        trial: Trial,
        result: TrialResult,
        curve: Sequence[tuple[int, Mapping[str, float], int]] = (),
        started_ms: int | None = None,
        last_step: int = -1,
        environment: Mapping[str, Any] | None = None,
        retry_reasons: Sequence[str] = (),
    ) -> None:
        """Record a trial's outcome (FINISHED, FAILED or KILLED) with the rest of its curve.

        The journal gets it first (fsync'd); its MLflow run is written after that, by a writer.
        ``last_step`` is the last step the trial logged (live batches included); final
        metrics are logged one step after it. ``environment`` is the worker's fingerprint;
        ``retry_reasons`` why earlier attempts were retried (``node lost``, ``worker died``, ``failed``).
        """
        curve = [(int(s), dict(v), int(ts)) for s, v, ts in curve]
        with self._lock:
            live = self._live.pop(trial.trial_id, [])
        entry = {
            "kind": EntryKind.TRIAL.value,
            "trial": trial.to_dict(),
            "result": result.to_dict(),
            "curve": curve,
            "started_ms": started_ms,
            "ended_ms": now_ms(),
            "final_step": max([last_step, *(step for step, _, _ in curve)]) + 1,
            "environment": dict(environment) if environment else None,
            "live_latest": {k: list(v) for k, v in self._live_latest.pop(trial.trial_id, {}).items()},
            "retry_reasons": list(retry_reasons),
            "live": live,
        }
        journal = self._journal()
        pool = self._writers()
        with self._lock:
            self._rows.extend(table_rows([entry], self._header["execution_id"]))
            self._points.append(curve_points([entry]))
            self._journaled += 1
            full = len(self._rows) >= self.rows_per_part
        if self.trial_runs.writes_trial_runs:
            journal.append(entry, then=lambda: pool.put(trial.trial_id, lambda: self._log_done(trial, result, entry)))
        else:  # per cell: recorded once its part of the results table is uploaded
            journal.append(entry)
        if full:
            self._cut_part()

    def attempt_lost(self, trial: Trial, attempt: int, reason: str) -> None:
        """An attempt came back without a result and is retried: close its live run (if any) as KILLED.

        The run is tagged with ``reason`` and ``attempts``; the next attempt gets a run of its
        own, so the curves of two attempts never mix.
        """
        self._live_latest.pop(trial.trial_id, None)
        with self._lock:
            self._live.pop(trial.trial_id, None)
        if self.trial_runs.writes_trial_runs:
            self._writers().put(trial.trial_id, lambda: self._close_lost(trial, attempt, reason))

    def _close_lost(self, trial: Trial, attempt: int, reason: str) -> None:
        run_id = self.run_ids.pop(trial.trial_id, None)
        if run_id is None:
            return
        self.store.client.log_batch(run_id, tags=tag_entities({T.ATTEMPTS: str(attempt), T.LOST: reason}))
        self.store.client.set_terminated(run_id, "KILLED")

    def flush(self) -> None:
        """Wait until everything recorded so far is journaled and written (or given up)."""
        if self.journal is not None:
            self.journal.flush()
        if self._pool is not None:
            self._pool.flush()

    def close(self, status: str, counts: Mapping[str, float], error: str | None = None) -> int:
        """Finish the records: writers drained, results table complete, parent run closed.

        ``error``: why the execution stopped early (tag ``orchestrator.error``). A driver that
        lost its lease leaves the parent run as the driver that took over closed it.

        Returns:
            how many records are left pending in the journal (0 when everything is in the store).
        """
        if self.info is None or self.journal is None or self._pool is None:
            return 0
        self.lease.stop()
        self._error = error
        journal, pool = self.journal, self._pool
        journal.append({"kind": EntryKind.CLOSED.value, "status": status, "counts": dict(counts)})
        journal.flush()
        self._cut_part(final=True)
        journal.flush()  # the parts' uploads are queued once their rows are on disk
        pool.flush()
        if not self.trial_runs.writes_trial_runs:
            self._write_cells()
        if self.run_ids:
            ids = dict(self.run_ids)
            path = write_run_ids(ids, self._spool / "ids" / RUN_IDS)
            pool.put("results-table", lambda: self.store.client.log_artifact(self.info.parent_run_id, str(path), PART_FOLDER))  # type: ignore[union-attr]
        pool.put("parent", lambda: self._close_parent(status, counts))
        pool.close()
        journal.flush()
        cells_pending = 0 if self._cells_written or self.trial_runs.writes_trial_runs or not self._journaled else 1
        self.pending = (self._journaled - self._recorded) + cells_pending + (0 if self._parent_closed else 1)
        self.errors.extend(pool.errors)
        journal.close(synced=self.pending == 0 and self._parts_uploaded == self._parts)
        shutil.rmtree(self._spool, ignore_errors=True)
        return self.pending

    def _close_parent(self, status: str, counts: Mapping[str, float]) -> None:
        client = self.store.client
        info = self.info
        if info is None:  # pragma: no cover - begin() runs first
            return
        with self._lock:
            pending = self._journaled - self._recorded
        client.log_batch(
            info.parent_run_id,
            metrics=metric_entities({**counts, T.RECORDS_PENDING: pending}, 0),
            tags=tag_entities({T.STATUS: status, T.RESULTS_PARTS: str(self._parts), **({T.ERROR: clip(self._error, TAG_MAX)} if self._error else {})}),
        )
        if self.lease.lost is None:  # else the driver that took over has closed it
            client.set_terminated(info.parent_run_id, status)
        self._journal().append({"kind": EntryKind.PARENT.value, "status": status})
        self._parent_closed = True

    def _journal(self) -> Journal:
        if self.journal is None:
            raise RuntimeError("ExecutionRecorder.begin() must be called before recording trials")
        return self.journal

    def _writers(self) -> WriterPool:
        if self._pool is None:
            raise RuntimeError("ExecutionRecorder.begin() must be called before recording trials")
        return self._pool

    def _cut_part(self, final: bool = False) -> None:
        """Write the rows gathered so far as the next part of the results table and queue its upload."""
        with self._lock:
            if not self._rows or (not final and len(self._rows) < self.rows_per_part):
                return
            rows, self._rows = self._rows[: self.rows_per_part], self._rows[self.rows_per_part:]
            points, self._points = self._points[: self.rows_per_part], self._points[self.rows_per_part:]
            index = self._parts
            self._parts += 1
        path = write_part(rows, self._spool / f"part{index}" / part_name(index))
        curves = write_curves([p for trial in points for p in trial], self._spool / f"part{index}" / curves_name(index))
        info, journal = self.info, self._journal()
        per_cell = not self.trial_runs.writes_trial_runs

        def upload() -> None:
            self.store.client.log_artifact(info.parent_run_id, str(curves), PART_FOLDER)  # type: ignore[union-attr]
            self.store.client.log_artifact(info.parent_run_id, str(path), PART_FOLDER)  # type: ignore[union-attr]
            journal.append({"kind": EntryKind.TABLE.value, "part": index}, durable=False)
            with self._lock:
                self._parts_uploaded += 1
                if per_cell:
                    self._recorded += len(rows)

        # queued once the records journaled so far are on disk: a part never holds a trial the journal lacks
        journal.then(lambda: self._writers().put(f"results-part-{index}", upload))
        if final and self._rows:
            self._cut_part(final=True)

    def _write_cells(self) -> None:
        """Per cell: one run per cell that has trials in the lineage, aggregates over them (see :mod:`.cellruns`)."""
        import pandas as pd
        import pyarrow.parquet as pq

        info = self.info
        if info is None or not self._journaled:
            return
        frames = [self._earlier] if self._earlier is not None else []
        frames += [pq.read_table(self._spool / f"part{k}" / part_name(k)).to_pandas() for k in range(self._parts)]
        frame = one_row_per_trial(pd.concat(frames, ignore_index=True))
        cells = cell_aggregates(frame, self._header.get("cells_planned", {}))
        cell_of = dict(zip(frame.loc[frame["execution_id"] == info.execution_id, "trial_id"], frame.loc[frame["execution_id"] == info.execution_id, "cell_id"]))
        written = write_cells(self.store.client, self._header, cells, self._writers(), {})
        self.run_ids.update({trial_id: written[cell] for trial_id, cell in cell_of.items() if cell in written})
        if len(written) == len(cells):
            self._journal().append({"kind": EntryKind.CELLS.value, "cells": len(cells)})
            self._cells_written = True

    def _log_live(self, trial: Trial, batch: list[tuple[int, Mapping[str, float], int]]) -> None:
        client = self.store.client
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None:
            run_id = self._existing(trial.trial_id)
        if run_id is None:
            info = self.info
            if info is None:  # pragma: no cover - begin() runs first
                raise RuntimeError("ExecutionRecorder.begin() must run before trials are recorded")
            run = client.create_run(info.experiment_id, start_time=batch[0][2] if batch else now_ms(), tags=trial_tags(self._header, trial))
            run_id = str(run.info.run_id)
            self.run_ids[trial.trial_id] = run_id
            for chunk in chunks(param_entities(trial_params(trial)), BATCH_KEYS):
                client.log_batch(run_id, params=chunk)
        metrics = [m for step, values, ts in batch for m in metric_entities(values, step, ts)]
        for chunk in chunks(metrics, BATCH_METRICS):
            client.log_batch(run_id, metrics=chunk)

    def _existing(self, trial_id: str) -> str | None:
        """After a failed attempt: the run an earlier try may have created (so a retry never makes a second one)."""
        if trial_id not in self._tried:
            return None  # first try: nothing can exist yet
        info = self.info
        found = find_trial_runs(self.store, info.experiment_id, info.execution_id, trial_id) if info else {}
        runs = found.get(trial_id, [])
        if runs:
            self.run_ids[trial_id] = str(runs[0].info.run_id)
            return self.run_ids[trial_id]
        return None

    def _log_done(self, trial: Trial, result: TrialResult, entry: Mapping[str, Any]) -> None:
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None:
            run_id = self._existing(trial.trial_id)
        self._tried.add(trial.trial_id)
        run_id = write_trial_run(self.store.client, self._header, entry, run_id, on_created=lambda rid: self.run_ids.__setitem__(trial.trial_id, rid))
        self.run_ids[trial.trial_id] = run_id
        result.run_id = run_id
        self._journal().append({"kind": EntryKind.RECORDED.value, "trial_id": trial.trial_id, "run_id": run_id}, durable=False)
        with self._lock:
            self._recorded += 1
