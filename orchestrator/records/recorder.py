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
import queue
import socket
import threading
import time
import uuid
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
from .summary import trial_run_name
from .store import (
    BATCH_KEYS,
    BATCH_METRICS,
    PARAM_MAX,
    TAG_MAX,
    ExecutionInProgressError,
    TrackingStore,
    TrackingStoreError,
    chunks,
    clip,
    metric_entities,
    now_ms,
    param_entities,
    tag_entities,
)

if TYPE_CHECKING:
    from ..design.plan import Plan

__all__ = ["ExecutionInfo", "ExecutionRecorder", "Mode", "new_execution_id", "trial_params", "trial_typed"]


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


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return clip(text, PARAM_MAX)


def trial_params(trial: Trial) -> dict[str, str]:
    """MLflow params of a trial run: levels, fixed parameters and seeds, as text."""
    params = {name: _param_text(value) for name, value in trial.params.items()}
    params.update({name: _param_text(value) for name, value in trial.levels.items()})
    params.update({f"{T.SEED_PREFIX}{name}": str(value) for name, value in trial.seeds.items()})
    return params


def trial_typed(trial: Trial) -> str:
    """The typed levels, seeds and (if short enough) parameters, as JSON for the tag :data:`~orchestrator.records.tags.TRIAL`."""
    data = {"levels": dict(trial.levels), "seeds": dict(trial.seeds), "seed_index": dict(trial.seed_index), "params": dict(trial.params)}
    text = json.dumps(data, sort_keys=True, default=str)
    if len(text) > TAG_MAX:
        data.pop("params")
        text = json.dumps(data, sort_keys=True, default=str)
    return text


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


def _driver_alive(tag: str | None) -> bool:
    """Whether the driver named by ``host:pid`` is a live process on this host (not us)."""
    if not tag or ":" not in tag:
        return False
    host, _, pid = tag.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ExecutionRecorder:
    """The one writer of an execution's records, on the driver.

    :meth:`begin` runs synchronously (it decides what to run); everything after it is
    queued to one background thread, so logging overlaps with the trials and never
    blocks dispatch. :meth:`close` waits for the queue to drain.

    Example:
        >>> recorder = ExecutionRecorder(open_store(), plan, mode="resume")   # doctest: +SKIP
        >>> to_run = recorder.begin()                                          # doctest: +SKIP
        >>> recorder.trial_done(trial, result, curve)                          # doctest: +SKIP
        >>> recorder.close("FINISHED", counts)                                 # doctest: +SKIP
    """

    def __init__(
        self,
        store: TrackingStore,
        plan: "Plan",
        *,
        mode: Mode | str = Mode.RESUME,
        environment: Mapping[str, Any] | None = None,
        code_version: str | None = None,
    ):
        self.store = store
        self.plan = plan
        self.study = plan.study
        self.mode = Mode.parse(mode)
        self.environment = dict(environment or fingerprint())
        self.code_version = code_version or current_code_version()
        self.info: ExecutionInfo | None = None
        self.run_ids: dict[str, str] = {}
        self.errors: list[str] = []
        self.stale_closed = 0
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._base_tags: dict[str, str] = {}

    # -- before any trial ---------------------------------------------------------------
    def begin(self, execution_id: str | None = None) -> list[Trial]:
        """Close stale runs, open the parent run and return the trials this execution must run.

        Raises:
            ExecutionInProgressError: a live driver on this host is executing this study.
            TrackingStoreError: the store refused a write.
        """
        client = self.store.client
        study = self.study
        try:
            experiment_id = self.store.create_experiment(study.name)
            parents = self.store.search(experiment_id, f"tags.{T.RUN_KIND} = '{T.KIND_EXECUTION}'")
        except Exception as exc:  # noqa: BLE001
            raise TrackingStoreError(f"tracking store {self.store.uri} refused to open experiment {study.name!r}: {exc}") from None
        for run in parents:
            if run.info.status == "RUNNING" and _driver_alive(run.data.tags.get(T.DRIVER)):
                raise ExecutionInProgressError(
                    f"study {study.name!r} is being executed by another driver ({run.data.tags.get(T.DRIVER)}, execution "
                    f"{run.data.tags.get(T.EXECUTION_ID)}); expected none. Wait for it to end, or stop it with Ctrl-C, then run again."
                )
        self.stale_closed = self._close_stale(experiment_id)
        execution_id = execution_id or new_execution_id()
        same_variant = sorted((r for r in parents if r.data.tags.get(T.VARIANT) == study.variant), key=lambda r: r.info.start_time)
        lineage = execution_id
        if self.mode.continues_lineage and same_variant:
            lineage = same_variant[-1].data.tags.get(T.LINEAGE, execution_id)
        done: set[str] = set()
        if lineage != execution_id:
            for run in self.store.search(experiment_id, f"tags.{T.LINEAGE} = '{lineage}' and tags.{T.RUN_KIND} = '{T.KIND_TRIAL}' and attributes.status = 'FINISHED'"):
                done.add(run.data.tags.get(T.TRIAL_ID, ""))
        to_run = [t for t in self.plan.trials if t.trial_id not in done]

        env_tags = {f"{T.ENV_PREFIX}{k}": clip(str(v), 250) for k, v in self.environment.items() if v is not None}
        self._base_tags = {
            T.STUDY: study.name,
            T.STUDY_HASH: study.definition_hash,
            T.VARIANT: str(study.variant),
            T.CODE_VERSION: self.code_version,
            T.EXECUTION_ID: execution_id,
            T.LINEAGE: lineage,
            **env_tags,
        }
        tags = {
            **self._base_tags,
            T.RUN_KIND: T.KIND_EXECUTION,
            T.MODE: self.mode.value,
            T.DRIVER: f"{socket.gethostname()}:{os.getpid()}",
            T.MLFLOW_RUN_NAME: f"execution {execution_id}",
            T.ENVIRONMENT: clip(json.dumps(self.environment, sort_keys=True, default=str), TAG_MAX),
        }
        if study.source_file:
            tags[T.MLFLOW_SOURCE_NAME] = str(study.source_file)
        try:
            run = client.create_run(experiment_id, tags=tags)
            parent_id = run.info.run_id
            client.log_batch(
                parent_id,
                metrics=metric_entities({"trials_planned": len(self.plan.trials), "trials_skipped": len(self.plan.trials) - len(to_run)}, 0),
                params=param_entities({T.MODE: self.mode.value, T.VARIANT: str(study.variant), "replicates": str(study.replicates), "workload": study.workload}),
            )
            client.log_text(parent_id, plan_csv(self.plan), T.ARTIFACT_DESIGN)
            client.log_text(parent_id, json.dumps(study.to_dict(), indent=2, default=str), T.ARTIFACT_STUDY)
            client.log_text(parent_id, json.dumps(self.environment, indent=2, default=str), T.ARTIFACT_ENVIRONMENT)
            if study.source_file and Path(study.source_file).is_file():
                # stored as .py.txt: the embedded store lives in mlflow/, which must hold no .py file (it could
                # shadow the mlflow package when Python runs from the repository root)
                client.log_text(parent_id, Path(study.source_file).read_text(encoding="utf-8"), f"{T.ARTIFACT_STUDY_SOURCE_DIR}/{Path(study.source_file).name}.txt")
        except Exception as exc:  # noqa: BLE001
            raise TrackingStoreError(f"tracking store {self.store.uri} refused to record execution of {study.name!r}: {type(exc).__name__}: {exc}") from None
        self.info = ExecutionInfo(execution_id, lineage, parent_id, experiment_id, self.mode)
        self._thread = threading.Thread(target=self._drain, name="orchestrator-recorder", daemon=True)
        self._thread.start()
        return to_run

    def _close_stale(self, experiment_id: str) -> int:
        """Mark runs a crashed driver left RUNNING as KILLED; returns how many."""
        client = self.store.client
        closed = 0
        for run in self.store.search(experiment_id, "attributes.status = 'RUNNING'"):
            client.set_tag(run.info.run_id, T.CLOSED_BY, "stale: its driver is gone")
            client.set_terminated(run.info.run_id, "KILLED")
            closed += 1
        return closed

    # -- while trials run (queued to the writer thread) -----------------------------------
    def trial_metrics(self, trial: Trial, batch: Sequence[tuple[int, Mapping[str, float], int]]) -> None:
        """Log a live batch of per-step metrics ``(step, metrics, timestamp_ms)`` (creates the run if needed)."""
        self._put(lambda: self._log_live(trial, list(batch)))

    def trial_done(
        self,
        trial: Trial,
        result: TrialResult,
        curve: Sequence[tuple[int, Mapping[str, float], int]] = (),
        started_ms: int | None = None,
        last_step: int = -1,
        environment: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a trial's outcome (FINISHED, FAILED or KILLED) with the rest of its curve.

        ``last_step`` is the last step the trial logged (live batches included); final
        metrics are logged one step after it. ``environment`` is the worker's fingerprint.
        """
        self._put(lambda: self._log_done(trial, result, list(curve), started_ms, last_step, environment))

    def flush(self) -> None:
        """Wait until everything queued so far is in the store."""
        if self._thread is not None:
            self._queue.join()

    def close(self, status: str, counts: Mapping[str, float]) -> None:
        """Drain the queue, log the execution's counts and end the parent run with ``status``."""
        if self.info is None:
            return
        self.flush()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        client = self.store.client
        try:
            client.log_batch(self.info.parent_run_id, metrics=metric_entities(dict(counts), 0), tags=tag_entities({T.STATUS: status}))
            client.set_terminated(self.info.parent_run_id, status)
        except Exception as exc:  # noqa: BLE001
            self.errors.append(f"parent run: {exc}")

    def _put(self, job: Callable[[], None]) -> None:
        if self._thread is None:
            raise RuntimeError("ExecutionRecorder.begin() must be called before recording trials")
        self._queue.put(job)

    def _drain(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                for attempt in range(3):
                    try:
                        job()
                        break
                    except Exception as exc:  # noqa: BLE001 - a busy store gets another chance
                        if attempt == 2:
                            self.errors.append(f"{type(exc).__name__}: {exc}")
                        else:
                            time.sleep(0.2 * (attempt + 1))
            finally:
                self._queue.task_done()

    def _trial_tags(self, trial: Trial) -> dict[str, str]:
        if self.info is None:  # pragma: no cover - begin() runs first
            raise RuntimeError("ExecutionRecorder.begin() must run before trials are recorded")
        return {
            **self._base_tags,
            T.RUN_KIND: T.KIND_TRIAL,
            T.TRIAL_ID: trial.trial_id,
            T.CELL_ID: trial.cell_id,
            T.REPLICATE: str(trial.replicate),
            T.MLFLOW_PARENT_RUN_ID: self.info.parent_run_id,
            T.MLFLOW_RUN_NAME: trial_run_name(trial),
            T.TRIAL: trial_typed(trial),
        }

    def _create(self, trial: Trial, start_ms: int | None) -> str:
        if self.info is None:  # pragma: no cover - begin() runs first
            raise RuntimeError("ExecutionRecorder.begin() must run before trials are recorded")
        run = self.store.client.create_run(self.info.experiment_id, start_time=start_ms or now_ms(), tags=self._trial_tags(trial))
        run_id = str(run.info.run_id)
        self.run_ids[trial.trial_id] = run_id
        params = param_entities(trial_params(trial))
        for chunk in chunks(params, BATCH_KEYS):
            self.store.client.log_batch(run_id, params=chunk)
        return run_id

    def _log_live(self, trial: Trial, batch: list[tuple[int, Mapping[str, float], int]]) -> None:
        run_id = self.run_ids.get(trial.trial_id) or self._create(trial, batch[0][2] if batch else None)
        metrics = [m for step, values, ts in batch for m in metric_entities(values, step, ts)]
        for chunk in chunks(metrics, BATCH_METRICS):
            self.store.client.log_batch(run_id, metrics=chunk)

    def _log_done(
        self,
        trial: Trial,
        result: TrialResult,
        curve: list[tuple[int, Mapping[str, float], int]],
        started_ms: int | None,
        last_step: int,
        environment: Mapping[str, Any] | None,
    ) -> None:
        client = self.store.client
        run_id = self.run_ids.get(trial.trial_id)
        final_step = max([last_step, *(step for step, _, _ in curve)]) + 1
        tags = {T.ATTEMPTS: str(result.attempts), T.FINAL_STEP: str(final_step)}
        if environment:
            tags.update({f"{T.ENV_PREFIX}{k}": clip(str(v), 250) for k, v in environment.items() if v is not None})
        if result.info:
            tags[T.INFO] = clip(json.dumps(result.info, sort_keys=True, default=str), TAG_MAX)
        now = now_ms()
        metrics = [m for step, values, ts in curve for m in metric_entities(values, step, ts)]
        metrics += metric_entities(result.metrics, final_step, now)
        if run_id is None:
            if self.info is None:  # pragma: no cover - begin() runs first
                raise RuntimeError("ExecutionRecorder.begin() must run before trials are recorded")
            all_tags = {**self._trial_tags(trial), **tags}
            run = client.create_run(self.info.experiment_id, start_time=started_ms or now, tags=all_tags)
            run_id = run.info.run_id
            self.run_ids[trial.trial_id] = run_id
            params = param_entities(trial_params(trial))
            first_params, params = params[:BATCH_KEYS], params[BATCH_KEYS:]
            first_metrics, metrics = metrics[: BATCH_METRICS - len(first_params)], metrics[BATCH_METRICS - len(first_params):]
            client.log_batch(run_id, metrics=first_metrics, params=first_params)
            for params_chunk in chunks(params, BATCH_KEYS):
                client.log_batch(run_id, params=params_chunk)
        else:
            client.log_batch(run_id, tags=tag_entities(tags))
        for metrics_chunk in chunks(metrics, BATCH_METRICS):
            client.log_batch(run_id, metrics=metrics_chunk)
        if result.error:
            client.log_text(run_id, result.error, T.ARTIFACT_TRACEBACK)
        result.run_id = run_id
        wall = result.metrics.get("wall_time_s")
        end = int(started_ms + wall * 1000) if started_ms and wall is not None and result.attempts == 1 else now
        client.set_terminated(run_id, result.state.value, end_time=end)
