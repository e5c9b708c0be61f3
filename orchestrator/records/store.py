"""The MLflow store: resolve the tracking URI, check the store is usable, open it once.

The records package is the only one that imports mlflow (lazily). Layout of the records
(names in :mod:`orchestrator.records.tags`):

* one MLflow **experiment** per study (named after the study);
* one **parent run** per execution of the study (``run_kind = execution``), carrying the
  design table (``design.csv``), the study file's source, ``study.json``, the environment
  fingerprint, and later the analysis report;
* one nested **child run** per trial attempt that reached the records
  (``run_kind = trial``): params = factor levels, fixed parameters and seeds; tags =
  ``trial_id``, ``cell_id``, ``replicate``, ``study``, ``study_hash``, ``variant``,
  ``code_version``, ``execution_id``, ``lineage``, ``env.*``; the typed levels, parameters
  and seeds as JSON in the tag ``orchestrator.trial``; per-step and final metrics; a
  failed trial's traceback as the artifact ``traceback.txt``; or, for an execution recorded
  per cell (``--trial-runs per-cell``, and ``auto`` above 10,000 trials), one child run per
  design cell (``run_kind = cell``) with aggregates over its replicates (:mod:`.cellruns`);
* the execution's **results table** (Parquet parts, curves, run ids) as artifacts of the
  parent run: every trial, whichever child runs there are (:mod:`.table`).

Executions form **lineages**: a ``resume`` execution continues the lineage of the latest
execution of the same variant (it runs only the trials without a FINISHED run there); a
``rerun`` execution starts a new lineage and runs every trial again. Within a lineage every
trial_id has at most one FINISHED run. The writer is :mod:`.recorder`, the reader
:mod:`.reader`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, TypeVar

from ..errors import OrchestratorError
from . import tags as T

if TYPE_CHECKING:
    from mlflow.entities import Metric, Param, Run, RunTag
    from mlflow.tracking import MlflowClient

__all__ = [
    "DEFAULT_TRACKING_URI",
    "ExecutionInProgressError",
    "TrackingError",
    "TrackingStore",
    "TrackingStoreError",
    "open_store",
    "quiet_client",
    "resolve_tracking_uri",
]

_T = TypeVar("_T")

DEFAULT_TRACKING_URI = "sqlite:///mlflow/mlflow.db"
"""With no ``--tracking-uri`` and no ``MLFLOW_TRACKING_URI``: a SQLite store under ``mlflow/`` here."""

PARAM_MAX = 6000
TAG_MAX = 7500
BATCH_METRICS = 900
BATCH_KEYS = 100


class TrackingError(OrchestratorError):
    """The records asked for do not exist (no experiment, no such execution)."""


class TrackingStoreError(OrchestratorError):
    """The tracking store is unreachable or unwritable (detected before any trial starts)."""


class ExecutionInProgressError(OrchestratorError):
    """Another driver (on any host) holds a fresh lease on the same study and variant (see :mod:`.lease`)."""


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
    # the client prints "View run ... / View experiment ..." after every set_terminated on a server,
    # and fetches the run (get_run) to do so: one line pair and one round trip per trial
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    import mlflow  # noqa: F401 - mlflow sets its loggers' levels on import; quiet them after

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


_SQLITE_PRAGMA_SET = False


def quiet_client(uri: str, writers: int = 1) -> None:
    """Set the driver's MLflow client up for recording: quiet, no retries of its own, cheap SQLite commits.

    * The recorder retries within its own budget (``ORCHESTRATOR_RECORD_RETRY_S``), so the
      client's HTTP retries (7, with backoff: about two minutes) are turned off unless
      ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` is set; a request times out after 30 s unless
      ``MLFLOW_HTTP_REQUEST_TIMEOUT`` is set; the connection pool keeps one connection per
      writer thread (``writers``; ``MLFLOW_HTTP_POOL_MAXSIZE`` unless set).
    * SQLite connections of this process use ``synchronous=NORMAL`` (the store is in WAL
      mode): a commit no longer waits for the disk. Every record is already fsync'd to the
      results journal first, so an OS crash loses nothing the journal cannot replay.
      (:func:`open_store` sets this up before its first connection; readers' writes - an
      analysis logged to its execution - can be redone.)
    """
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        # one kept-alive connection per writer: with fewer pooled (MLflow's default is 10), the writers
        # beyond it open a new connection per call and drop it
        os.environ.setdefault("MLFLOW_HTTP_POOL_MAXSIZE", str(max(10, writers)))
    if uri.startswith("sqlite:"):
        _sqlite_normal_sync()


def _sqlite_normal_sync() -> None:
    """Every SQLite connection this process opens from now on commits with ``synchronous=NORMAL``.

    Called by :func:`open_store` before its client opens a connection: the engine's pool keeps
    the connections it opened, so a connection made before this (the store's check) would
    commit with a full fsync for the rest of the process.
    """
    global _SQLITE_PRAGMA_SET
    if _SQLITE_PRAGMA_SET:
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def _normal_sync(connection: Any, record: Any) -> None:
        if isinstance(connection, sqlite3.Connection):
            connection.execute("PRAGMA synchronous=NORMAL")

    event.listen(Engine, "connect", _normal_sync)
    _SQLITE_PRAGMA_SET = True


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
            if create and T.EXPERIMENT_KIND not in experiment.tags:
                # made before the kind was recorded: a writer is opening it, so say it holds training runs
                self.client.set_experiment_tag(experiment.experiment_id, T.EXPERIMENT_KIND, T.EXPERIMENT_KIND_TRAINING)
            return str(experiment.experiment_id)
        if not create:
            return None
        try:
            return str(self.client.create_experiment(study_name, artifact_location=self.artifact_root, tags={T.EXPERIMENT_STUDY: study_name, T.EXPERIMENT_KIND: T.EXPERIMENT_KIND_TRAINING}))
        except Exception:  # noqa: BLE001 - a concurrent driver may have created it first
            experiment = self.client.get_experiment_by_name(study_name)
            if experiment is None:
                raise
            return str(experiment.experiment_id)

    def create_experiment(self, study_name: str) -> str:
        """The id of the study's experiment, created when missing."""
        experiment_id = self.experiment_id(study_name, create=True)
        if experiment_id is None:  # pragma: no cover - create=True always returns an id
            raise TrackingStoreError(f"tracking store {self.uri} did not create experiment {study_name!r}")
        return experiment_id

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
    if path is not None:
        _sqlite_normal_sync()  # before the first connection, which the pool keeps (see quiet_client)
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


# -- what MLflow is sent ---------------------------------------------------------------------


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def now_ms() -> int:
    return int(time.time() * 1000)


def chunks(items: list[_T], size: int) -> Iterable[list[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def metric_entities(values: Mapping[str, float], step: int, timestamp: int | None = None) -> list["Metric"]:
    from mlflow.entities import Metric

    ts = timestamp or now_ms()
    return [Metric(str(k), float(v), ts, int(step)) for k, v in values.items()]


def param_entities(values: Mapping[str, str]) -> list["Param"]:
    from mlflow.entities import Param

    return [Param(str(k), str(v)) for k, v in values.items()]


def tag_entities(values: Mapping[str, str]) -> list["RunTag"]:
    from mlflow.entities import RunTag

    return [RunTag(str(k), str(v)) for k, v in values.items()]
