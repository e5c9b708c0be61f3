"""MLflow records of studies: the only module that imports mlflow (lazily).

Layout of the records:

* one MLflow **experiment** per study (named after the study);
* one **parent run** per execution of the study (``run_kind = execution``), carrying the
  design table (``design.csv``), the study file's source, ``study.json``, the environment
  fingerprint, and later the analysis report;
* one nested **child run** per trial attempt that reached the records
  (``run_kind = trial``): params = factor levels, fixed parameters and seeds; tags =
  ``trial_id``, ``cell_id``, ``replicate``, ``study``, ``study_hash``, ``variant``,
  ``code_version``, ``execution_id``, ``lineage``, ``env.*``; the typed levels, parameters
  and seeds as JSON in the tag ``orchestrator.trial``; per-step and final metrics; a
  failed trial's traceback as the artifact ``traceback.txt``.

Executions form **lineages**: a ``resume`` execution continues the lineage of the latest
execution of the same variant (it runs only the trials without a FINISHED run there); a
``rerun`` execution starts a new lineage and runs every trial again. Within a lineage every
trial_id has at most one FINISHED run.

The driver is the one writer: :class:`ExecutionRecorder` logs from results and metric
batches the workers stream back, in a background thread, so workers never touch the store.

Example:
    >>> from orchestrator.tracking import load_results               # doctest: +SKIP
    >>> df, meta = load_results("screening_demo", variant="smoke")   # doctest: +SKIP
    >>> df[["trial_id", "A", "response"]].head()                     # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from .errors import OrchestratorError, did_you_mean
from .trial import Trial, TrialResult

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from .design import Plan
    from .study import Study

__all__ = [
    "DEFAULT_TRACKING_URI",
    "ExecutionRecorder",
    "TrackingError",
    "TrackingStore",
    "TrackingStoreError",
    "ExecutionInProgressError",
    "list_executions",
    "load_curves",
    "load_results",
    "log_artifacts",
    "open_store",
    "resolve_tracking_uri",
    "study_status",
]

DEFAULT_TRACKING_URI = "sqlite:///mlflow/mlflow.db"
"""With no ``--tracking-uri`` and no ``MLFLOW_TRACKING_URI``: a SQLite store under ``mlflow/`` here."""

_PARAM_MAX = 6000
_TAG_MAX = 7500
_BATCH_METRICS = 900
_BATCH_KEYS = 100


class TrackingError(OrchestratorError):
    """The records asked for do not exist (no experiment, no such execution)."""


class TrackingStoreError(OrchestratorError):
    """The tracking store is unreachable or unwritable (detected before any trial starts)."""


class ExecutionInProgressError(OrchestratorError):
    """Another driver on this machine is executing the same study right now."""


# -- the store ------------------------------------------------------------------------------


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The tracking URI to use: the argument, else ``$MLFLOW_TRACKING_URI``, else the embedded default.

    Relative SQLite paths become absolute (against the working directory), so the driver,
    Ray jobs and later readers agree on one file.
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    elif "://" not in uri:
        uri = str(Path(uri).resolve())
    return uri


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def _quiet_mlflow() -> None:
    import mlflow  # noqa: F401 - mlflow sets its loggers' levels on import; quiet them after

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


@dataclass
class TrackingStore:
    """A resolved (and, for writing, checked) MLflow store.

    Attributes:
        uri: the tracking URI (absolute for SQLite).
        client: an ``MlflowClient`` on it.
        artifact_root: where new experiments keep artifacts (``<db folder>/artifacts`` for
            SQLite; the server's default otherwise).
    """

    uri: str
    client: "MlflowClient"
    artifact_root: str | None = None

    def experiment_id(self, study_name: str, *, create: bool = False) -> str | None:
        experiment = self.client.get_experiment_by_name(study_name)
        if experiment is not None:
            return experiment.experiment_id
        if not create:
            return None
        try:
            return self.client.create_experiment(study_name, artifact_location=self.artifact_root, tags={"orchestrator.study": study_name})
        except Exception:  # noqa: BLE001 - a concurrent driver may have created it first
            experiment = self.client.get_experiment_by_name(study_name)
            if experiment is None:
                raise
            return experiment.experiment_id

    def search(self, experiment_id: str, filter_string: str = "") -> list["Run"]:
        """Every run of an experiment matching ``filter_string``, paging through all results."""
        runs: list[Run] = []
        token = None
        while True:
            page = self.client.search_runs([experiment_id], filter_string=filter_string, max_results=50000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs


def open_store(tracking_uri: str | None = None, *, check: bool = True) -> TrackingStore:
    """Open the tracking store; with ``check``, prove it is reachable and writable first.

    Raises:
        TrackingStoreError: the store cannot be reached or written (what, why, what to do).
    """
    uri = resolve_tracking_uri(tracking_uri)
    path = _sqlite_path(uri)
    artifact_root = None
    if path is not None:
        artifact_root = (path.parent / "artifacts").resolve().as_uri()
        if check:
            _check_sqlite(uri, path)
    elif uri.startswith(("http://", "https://")) and check:
        _check_http(uri)
    _quiet_mlflow()
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        if check:
            client.search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - any store failure becomes one clear message
        raise TrackingStoreError(
            f"tracking store {uri} cannot be used: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
            "Expected a reachable, writable MLflow store; set --tracking-uri or MLFLOW_TRACKING_URI "
            f"(e.g. {DEFAULT_TRACKING_URI} or http://127.0.0.1:5000)."
        ) from None
    return TrackingStore(uri=uri, client=client, artifact_root=artifact_root)


def _check_sqlite(uri: str, path: Path) -> None:
    hint = f"Point --tracking-uri or MLFLOW_TRACKING_URI at a writable place, e.g. sqlite:///{Path.cwd() / 'mlflow' / 'mlflow.db'}."
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "artifacts").mkdir(exist_ok=True)
    except OSError as exc:
        raise TrackingStoreError(
            f"tracking store {uri} is unwritable: expected a folder for the database, "
            f"but cannot create {path.parent} ({exc.strerror or exc}). {hint}"
        ) from None
    try:
        connection = sqlite3.connect(str(path), timeout=10)
        try:
            # WAL: readers (status, the UI) never block the writer; about 25% faster commits.
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("ROLLBACK")
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise TrackingStoreError(f"tracking store {uri} is unwritable: expected a writable SQLite database at {path}, found: {exc}. {hint}") from None


def _check_http(uri: str) -> None:
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        if exc.code >= 500:
            raise TrackingStoreError(f"tracking server {uri} answered {url} with HTTP {exc.code}; expected a healthy MLflow server. Check the server's log.") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingStoreError(
            f"tracking server {uri} is unreachable ({reason}): expected an MLflow server answering {url}. "
            "Start it (mlflow server --host 127.0.0.1 --port 5000 ...) or set --tracking-uri / MLFLOW_TRACKING_URI to a reachable store."
        ) from None


# -- what a run records ---------------------------------------------------------------------


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return _clip(text, _PARAM_MAX)


def _now_ms() -> int:
    return int(time.time() * 1000)


def trial_params(trial: Trial) -> dict[str, str]:
    """MLflow params of a trial run: levels, fixed parameters and seeds, as text."""
    params = {name: _param_text(value) for name, value in trial.params.items()}
    params.update({name: _param_text(value) for name, value in trial.levels.items()})
    params.update({f"seed_{name}": str(value) for name, value in trial.seeds.items()})
    return params


def trial_typed(trial: Trial) -> str:
    """The typed levels, seeds and (if short enough) parameters, as JSON for the tag ``orchestrator.trial``."""
    data = {"levels": dict(trial.levels), "seeds": dict(trial.seeds), "seed_index": dict(trial.seed_index), "params": dict(trial.params)}
    text = json.dumps(data, sort_keys=True, default=str)
    if len(text) > _TAG_MAX:
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
    mode: str


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

    def __init__(self, store: TrackingStore, plan: "Plan", *, mode: str = "resume", environment: Mapping[str, Any] | None = None, code_version: str | None = None):
        from .environment import code_version as current_code_version
        from .environment import fingerprint

        self.store = store
        self.plan = plan
        self.study = plan.study
        self.mode = mode
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
            experiment_id = self.store.experiment_id(study.name, create=True)
            parents = self.store.search(experiment_id, "tags.run_kind = 'execution'")
        except Exception as exc:  # noqa: BLE001
            raise TrackingStoreError(f"tracking store {self.store.uri} refused to open experiment {study.name!r}: {exc}") from None
        for run in parents:
            if run.info.status == "RUNNING" and _driver_alive(run.data.tags.get("driver")):
                raise ExecutionInProgressError(
                    f"study {study.name!r} is being executed by another driver ({run.data.tags.get('driver')}, execution "
                    f"{run.data.tags.get('execution_id')}); expected none. Wait for it to end, or stop it with Ctrl-C, then run again."
                )
        self.stale_closed = self._close_stale(experiment_id)
        execution_id = execution_id or new_execution_id()
        same_variant = sorted((r for r in parents if r.data.tags.get("variant") == study.variant), key=lambda r: r.info.start_time)
        lineage = execution_id
        if self.mode == "resume" and same_variant:
            lineage = same_variant[-1].data.tags.get("lineage", execution_id)
        done: set[str] = set()
        if lineage != execution_id:
            for run in self.store.search(experiment_id, f"tags.lineage = '{lineage}' and tags.run_kind = 'trial' and attributes.status = 'FINISHED'"):
                done.add(run.data.tags.get("trial_id", ""))
        to_run = [t for t in self.plan.trials if t.trial_id not in done]

        env_tags = {f"env.{k}": _clip(str(v), 250) for k, v in self.environment.items() if v is not None}
        self._base_tags = {
            "study": study.name,
            "study_hash": study.definition_hash,
            "variant": str(study.variant),
            "code_version": self.code_version,
            "execution_id": execution_id,
            "lineage": lineage,
            **env_tags,
        }
        tags = {
            **self._base_tags,
            "run_kind": "execution",
            "mode": self.mode,
            "driver": f"{socket.gethostname()}:{os.getpid()}",
            "mlflow.runName": f"execution {execution_id}",
            "orchestrator.environment": _clip(json.dumps(self.environment, sort_keys=True, default=str), _TAG_MAX),
        }
        if study.source_file:
            tags["mlflow.source.name"] = str(study.source_file)
        try:
            run = client.create_run(experiment_id, tags=tags)
            parent_id = run.info.run_id
            from .cli import plan_csv

            client.log_batch(
                parent_id,
                metrics=_metric_entities({"trials_planned": len(self.plan.trials), "trials_skipped": len(self.plan.trials) - len(to_run)}, 0),
                params=_param_entities({"mode": self.mode, "variant": str(study.variant), "replicates": str(study.replicates), "workload": study.workload}),
            )
            client.log_text(parent_id, plan_csv(self.plan), "design.csv")
            client.log_text(parent_id, json.dumps(study.to_dict(), indent=2, default=str), "study.json")
            client.log_text(parent_id, json.dumps(self.environment, indent=2, default=str), "environment.json")
            if study.source_file and Path(study.source_file).is_file():
                # stored as .py.txt: the embedded store lives in mlflow/, which must hold no .py file (it could
                # shadow the mlflow package when Python runs from the repository root)
                client.log_text(parent_id, Path(study.source_file).read_text(encoding="utf-8"), f"study/{Path(study.source_file).name}.txt")
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
            client.set_tag(run.info.run_id, "orchestrator.closed_by", "stale: its driver is gone")
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
            client.log_batch(self.info.parent_run_id, metrics=_metric_entities(dict(counts), 0), tags=_tag_entities({"orchestrator.status": status}))
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
            "run_kind": "trial",
            "trial_id": trial.trial_id,
            "cell_id": trial.cell_id,
            "replicate": str(trial.replicate),
            "mlflow.parentRunId": self.info.parent_run_id,
            "mlflow.runName": f"{trial.cell_id[:8]}-r{trial.replicate}",
            "orchestrator.trial": trial_typed(trial),
        }

    def _create(self, trial: Trial, start_ms: int | None) -> str:
        if self.info is None:  # pragma: no cover - begin() runs first
            raise RuntimeError("ExecutionRecorder.begin() must run before trials are recorded")
        run = self.store.client.create_run(self.info.experiment_id, start_time=start_ms or _now_ms(), tags=self._trial_tags(trial))
        run_id = run.info.run_id
        self.run_ids[trial.trial_id] = run_id
        params = _param_entities(trial_params(trial))
        for chunk in _chunks(params, _BATCH_KEYS):
            self.store.client.log_batch(run_id, params=chunk)
        return run_id

    def _log_live(self, trial: Trial, batch: list[tuple[int, Mapping[str, float], int]]) -> None:
        run_id = self.run_ids.get(trial.trial_id) or self._create(trial, batch[0][2] if batch else None)
        metrics = [m for step, values, ts in batch for m in _metric_entities(values, step, ts)]
        for chunk in _chunks(metrics, _BATCH_METRICS):
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
        tags = {"attempts": str(result.attempts), "orchestrator.final_step": str(final_step)}
        if environment:
            tags.update({f"env.{k}": _clip(str(v), 250) for k, v in environment.items() if v is not None})
        if result.info:
            tags["orchestrator.info"] = _clip(json.dumps(result.info, sort_keys=True, default=str), _TAG_MAX)
        now = _now_ms()
        metrics = [m for step, values, ts in curve for m in _metric_entities(values, step, ts)]
        metrics += _metric_entities(result.metrics, final_step, now)
        if run_id is None:
            if self.info is None:  # pragma: no cover - begin() runs first
                raise RuntimeError("ExecutionRecorder.begin() must run before trials are recorded")
            all_tags = {**self._trial_tags(trial), **tags}
            run = client.create_run(self.info.experiment_id, start_time=started_ms or now, tags=all_tags)
            run_id = run.info.run_id
            self.run_ids[trial.trial_id] = run_id
            params = _param_entities(trial_params(trial))
            first_params, params = params[:_BATCH_KEYS], params[_BATCH_KEYS:]
            first_metrics, metrics = metrics[: _BATCH_METRICS - len(first_params)], metrics[_BATCH_METRICS - len(first_params):]
            client.log_batch(run_id, metrics=first_metrics, params=first_params)
            for chunk in _chunks(params, _BATCH_KEYS):
                client.log_batch(run_id, params=chunk)
        else:
            client.log_batch(run_id, tags=_tag_entities(tags))
        for chunk in _chunks(metrics, _BATCH_METRICS):
            client.log_batch(run_id, metrics=chunk)
        if result.error:
            client.log_text(run_id, result.error, "traceback.txt")
        result.run_id = run_id
        wall = result.metrics.get("wall_time_s")
        end = int(started_ms + wall * 1000) if started_ms and wall is not None and result.attempts == 1 else now
        client.set_terminated(run_id, result.state.value, end_time=end)


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _metric_entities(values: Mapping[str, float], step: int, timestamp: int | None = None) -> list:
    from mlflow.entities import Metric

    ts = timestamp or _now_ms()
    return [Metric(str(k), float(v), ts, int(step)) for k, v in values.items()]


def _param_entities(values: Mapping[str, str]) -> list:
    from mlflow.entities import Param

    return [Param(str(k), str(v)) for k, v in values.items()]


def _tag_entities(values: Mapping[str, str]) -> list:
    from mlflow.entities import RunTag

    return [RunTag(str(k), str(v)) for k, v in values.items()]


# -- reading the records --------------------------------------------------------------------


def _resolve_study(study: "Study | str", variant: str | None) -> "Study":
    from .study import Study

    if isinstance(study, Study):
        if variant is not None and variant != study.variant:
            return study.with_variant(variant)
        return study if study.variant is not None else study.with_variant(None)
    from .loader import load_study

    return load_study(study, variant)


def _executions(store: TrackingStore, study: "Study", *, any_variant: bool = False) -> tuple[str, list["Run"]]:
    experiment_id = store.experiment_id(study.name)
    if experiment_id is None:
        raise TrackingError(
            f"no records of study {study.name!r} in {store.uri}: expected an MLflow experiment named {study.name!r}, found none. "
            f"Run it first (orchestrator run {study.source_file or study.name}) or pass the store it ran on with --tracking-uri."
        )
    parents = store.search(experiment_id, "tags.run_kind = 'execution'")
    if not any_variant:
        parents = [r for r in parents if r.data.tags.get("variant") == str(study.variant)]
    return experiment_id, sorted(parents, key=lambda r: (r.info.start_time, r.data.tags.get("execution_id", "")))


def _pick_execution(parents: list["Run"], study: "Study", execution: str | None, uri: str) -> "Run":
    if not parents:
        raise TrackingError(
            f"study {study.name!r} has no executions of variant {study.variant!r} in {uri}. "
            f"Run it first: orchestrator run {study.source_file or study.name} --variant {study.variant}"
        )
    if execution in (None, "latest"):
        return parents[-1]
    ids = [r.data.tags.get("execution_id", "") for r in parents]
    for run in parents:
        if execution in (run.data.tags.get("execution_id"), run.info.run_id):
            return run
    raise TrackingError(f"execution {execution!r} of study {study.name!r} not found; expected one of: {', '.join(ids)}. {did_you_mean(str(execution), ids)}")


def _selected_runs(store: TrackingStore, study: "Study", execution: str | None) -> tuple[str, "Run", list["Run"], dict[str, "Run"]]:
    """Experiment id, the target parent run, its lineage's parents up to it, and one run per trial_id."""
    experiment_id, parents = _executions(store, study)
    target = _pick_execution(parents, study, execution, store.uri)
    lineage = target.data.tags.get("lineage")
    chain = [r for r in parents if r.data.tags.get("lineage") == lineage and r.info.start_time <= target.info.start_time]
    allowed = {r.data.tags.get("execution_id") for r in chain}
    chosen: dict[str, Run] = {}
    for run in store.search(experiment_id, f"tags.lineage = '{lineage}' and tags.run_kind = 'trial'"):
        tags = run.data.tags
        if tags.get("execution_id") not in allowed:
            continue
        trial_id = tags.get("trial_id", "")
        best = chosen.get(trial_id)
        if best is None or _rank(run) > _rank(best):
            chosen[trial_id] = run
    return experiment_id, target, chain, chosen


def _rank(run: "Run") -> tuple[int, int]:
    """FINISHED beats anything else; then the later run wins."""
    return (1 if run.info.status == "FINISHED" else 0, run.info.start_time or 0)


def _info(run: "Run") -> dict[str, Any]:
    """What the trial recorded about itself (``ctx.record``): dtypes, flags, the final-parameter hash."""
    try:
        return json.loads(run.data.tags.get("orchestrator.info", "{}"))
    except json.JSONDecodeError:  # clipped by the tag length limit
        return {}


def _typed(run: "Run", study: "Study") -> dict[str, Any]:
    """Levels, seeds and seed indices typed per the study (from the JSON tag; params as a fallback)."""
    text = run.data.tags.get("orchestrator.trial")
    if text:
        return json.loads(text)
    levels = {}
    for factor in study.factors:
        raw = run.data.params.get(factor.name)
        levels[factor.name] = next((v for v in factor.all_levels if str(v) == raw or json.dumps(v) == raw), raw)
    seeds = {k[5:]: int(v) for k, v in run.data.params.items() if k.startswith("seed_")}
    return {"levels": levels, "seeds": seeds, "seed_index": {}, "params": {}}


def load_results(
    study: "Study | str",
    variant: str | None = None,
    tracking_uri: str | None = None,
    execution: str | None = None,
) -> tuple["pd.DataFrame", dict[str, Any]]:
    """One row per trial of an execution (the latest by default), typed per the study.

    Within a resume lineage the rows of earlier executions count: a trial finished by the
    first execution and not rerun by its resume still has its row.

    Returns:
        ``(df, meta)``: ``df`` has ``trial_id``, ``cell_id``, ``replicate``, ``state``,
        ``run_id``, ``execution_id``, one column per factor (numbers stay numbers),
        ``seed_<stream>``, ``seed_index_<stream>``, every final metric (float), and from the
        trial's recorded info ``deterministic`` (bool) and ``param_hash`` (str or None).
        ``meta`` has ``experiment_id``, ``parent_run_id``, ``execution_id``, ``lineage``,
        ``environment``, ``study_hash``, ``variant``, ``tracking_uri``, ``code_version``.

    Raises:
        TrackingError: no such experiment or execution.
    """
    import pandas as pd

    study = _resolve_study(study, variant)
    store = open_store(tracking_uri, check=False)
    experiment_id, target, chain, chosen = _selected_runs(store, study, execution)
    streams = list(study.seed_streams)
    rows = []
    for trial_id, run in chosen.items():
        tags = run.data.tags
        typed = _typed(run, study)
        row: dict[str, Any] = {
            "trial_id": trial_id,
            "cell_id": tags.get("cell_id"),
            "replicate": int(tags.get("replicate", 0)),
            "state": run.info.status,
            "run_id": run.info.run_id,
            "execution_id": tags.get("execution_id"),
        }
        for name in study.factor_names:
            row[name] = typed["levels"].get(name)
        for stream in streams:
            row[f"seed_{stream}"] = typed["seeds"].get(stream)
            row[f"seed_index_{stream}"] = typed.get("seed_index", {}).get(stream)
        row.update({k: float(v) for k, v in run.data.metrics.items()})
        info = _info(run)
        row["deterministic"] = bool(info.get("deterministic", False))
        row["param_hash"] = info.get("param_hash")
        rows.append(row)
    df = pd.DataFrame(rows)
    if not df.empty:
        order = {t.trial_id: t.order for t in _plan_trials(study)}
        df["_order"] = df["trial_id"].map(order)
        df = df.sort_values(["_order", "trial_id"], na_position="last").drop(columns="_order").reset_index(drop=True)
    tags = target.data.tags
    meta = {
        "experiment_id": experiment_id,
        "parent_run_id": target.info.run_id,
        "execution_id": tags.get("execution_id"),
        "lineage": tags.get("lineage"),
        "executions": [r.data.tags.get("execution_id") for r in chain],
        "environment": json.loads(tags.get("orchestrator.environment", "{}")),
        "study_hash": tags.get("study_hash"),
        "study": study.name,
        "variant": tags.get("variant"),
        "code_version": tags.get("code_version"),
        "tracking_uri": store.uri,
    }
    return df, meta


def _plan_trials(study: "Study") -> list[Trial]:
    from .design import make_plan

    try:
        return make_plan(study).trials
    except OrchestratorError:
        return []


def load_curves(
    study: "Study | str",
    variant: str | None = None,
    tracking_uri: str | None = None,
    execution: str | None = None,
) -> "pd.DataFrame":
    """Per-step metrics of the same runs as :func:`load_results`: columns ``trial_id, step, metric, value``."""
    import pandas as pd

    study = _resolve_study(study, variant)
    store = open_store(tracking_uri, check=False)
    _, _, _, chosen = _selected_runs(store, study, execution)
    rows = []
    for trial_id, run in chosen.items():
        final_step = int(run.data.tags.get("orchestrator.final_step", 1 << 62))
        for key in run.data.metrics:
            for point in store.client.get_metric_history(run.info.run_id, key):
                if point.step < final_step:
                    rows.append((trial_id, int(point.step), key, float(point.value)))
    df = pd.DataFrame(rows, columns=["trial_id", "step", "metric", "value"])
    return df.sort_values(["trial_id", "metric", "step"]).reset_index(drop=True)


def log_artifacts(
    study: "Study | str",
    folder: str | Path,
    execution: str | None = None,
    tracking_uri: str | None = None,
    artifact_path: str | None = None,
) -> str:
    """Log the files of ``folder`` (e.g. an analysis report) to an execution's parent run; returns its run id."""
    study = _resolve_study(study, None)
    store = open_store(tracking_uri, check=False)
    # a named execution is found whatever its variant; the latest is the latest of the study's variant
    _, parents = _executions(store, study, any_variant=execution not in (None, "latest"))
    target = _pick_execution(parents, study, execution, store.uri)
    if not Path(folder).is_dir():
        raise TrackingError(f"log_artifacts: expected a folder of files to log, found {folder!s} (not a folder)")
    store.client.log_artifacts(target.info.run_id, str(folder), artifact_path)
    return target.info.run_id


def list_executions(study: "Study | str", tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Every execution (parent run) of a study, any variant, oldest first.

    Each: ``execution_id``, ``parent_run_id``, ``start_time`` (ISO, UTC), ``end_time``,
    ``status``, ``mode``, ``variant``, ``lineage``, ``code_version``, ``study_hash``,
    ``counts`` (planned, skipped, ran, finished, failed, diverged, killed) and
    ``environment`` (one-line summary).
    """
    from .environment import summary

    study = _resolve_study(study, None)
    store = open_store(tracking_uri, check=False)
    _, parents = _executions(store, study, any_variant=True)
    out = []
    for run in parents:
        tags, metrics = run.data.tags, run.data.metrics
        env = json.loads(tags.get("orchestrator.environment", "{}"))
        out.append(
            {
                "execution_id": tags.get("execution_id"),
                "parent_run_id": run.info.run_id,
                "start_time": _iso(run.info.start_time),
                "end_time": _iso(run.info.end_time),
                "status": run.info.status,
                "mode": tags.get("mode"),
                "variant": tags.get("variant"),
                "lineage": tags.get("lineage"),
                "code_version": tags.get("code_version"),
                "study_hash": tags.get("study_hash"),
                "counts": {k[len("trials_"):]: int(v) for k, v in metrics.items() if k.startswith("trials_")},
                "environment": summary(env) if env else "",
            }
        )
    return out


def _iso(ms: int | None) -> str | None:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="seconds") if ms else None


def study_status(study: "Study | str", tracking_uri: str | None = None) -> dict[str, Any]:
    """Where the current plan of a study stands in its latest lineage, per cell.

    Returns:
        ``{"study", "variant", "execution_id", "cells": [{"cell_id", "levels", "finished",
        "failed", "killed", "running", "missing", "trials"}], "totals": {...}}``.
    """
    from .design import make_plan

    study = _resolve_study(study, None)
    plan = make_plan(study)
    store = open_store(tracking_uri, check=False)
    chosen: dict[str, Run] = {}
    execution_id = None
    experiment_id = store.experiment_id(study.name)
    if experiment_id is not None:
        _, parents = _executions(store, study)
        if parents:
            _, target, _, chosen = _selected_runs(store, study, None)
            execution_id = target.data.tags.get("execution_id")
    keys = ("finished", "failed", "killed", "running", "missing")
    cells: dict[str, dict[str, Any]] = {}
    for trial in plan.trials:
        cell = cells.setdefault(trial.cell_id, {"cell_id": trial.cell_id, "levels": dict(trial.levels), "trials": 0, **{k: 0 for k in keys}})
        cell["trials"] += 1
        run = chosen.get(trial.trial_id)
        state = "missing" if run is None else run.info.status.lower()
        cell[state if state in keys else "failed"] += 1
    totals = {k: sum(c[k] for c in cells.values()) for k in (*keys, "trials")}
    return {"study": study.name, "variant": study.variant, "execution_id": execution_id, "tracking_uri": store.uri, "cells": list(cells.values()), "totals": totals}
