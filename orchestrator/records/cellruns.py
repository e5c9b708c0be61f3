"""Per-cell child runs: one MLflow run per design cell instead of one per trial, for very large studies.

The MLflow UI lists an experiment's runs a page at a time and an MLflow server takes per-trial
runs at a few tens per second, so a study of 1e5 trials recorded one run per trial is slow
to write and hard to browse. Recorded **per cell** (:attr:`TrialRuns.PER_CELL`), an
execution has one child run per design cell that ran, nested under its parent run like the
trial runs::

    execution <id>              run_kind=execution; the results table (every trial) as artifacts
    ├── bf16 lr=0.05 (cell)     run_kind=cell: the cell's levels as params;
    │                           n, n_finished, n_failed, n_diverged, n_killed and
    │                           <metric>_mean / _sd / _min / _max over its finished trials
    └── ...

Every trial is still in the execution's journal and its results table (with its per-step
metrics), which is what ``analyze``, ``report``, ``compare``, ``writeup``, ``status`` and
resume read; ``run_ids.parquet`` maps each trial to its cell's run. The aggregates cover
the trials of the lineage up to this execution (what :meth:`Records.results` returns): a
resume's cell runs include the replicates its predecessors finished.

:attr:`TrialRuns.AUTO` (the default) records per cell when the plan has more than
:func:`per_cell_above` trials (``$ORCHESTRATOR_PER_CELL_ABOVE``, else
:data:`DEFAULT_PER_CELL_ABOVE`), per trial otherwise; ``orchestrator run --trial-runs
per-trial|per-cell|auto`` chooses.

Example:
    >>> TrialRuns.parse("auto").resolve(50_000) is TrialRuns.PER_CELL
    True
    >>> TrialRuns.parse("auto").resolve(300) is TrialRuns.PER_TRIAL
    True
"""

from __future__ import annotations

import enum
import json
import math
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ..errors import OrchestratorError, not_one_of
from . import tags as T
from .store import BATCH_KEYS, BATCH_METRICS, PARAM_MAX, TAG_MAX, TrackingStore, chunks, clip, metric_entities, now_ms, param_entities, tag_entities
from .table import METRIC_PREFIX
from .writers import WriterPool

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

__all__ = [
    "DEFAULT_PER_CELL_ABOVE",
    "PER_CELL_ENV",
    "CellAggregate",
    "TrialRuns",
    "cell_aggregates",
    "find_cell_runs",
    "per_cell_above",
    "write_cell_run",
    "write_cells",
]

PER_CELL_ENV = "ORCHESTRATOR_PER_CELL_ABOVE"
"""Plans with more trials than this record per cell under ``--trial-runs auto``."""

DEFAULT_PER_CELL_ABOVE = 10_000
"""Above 10,000 trials, per-trial runs take ten minutes or more to write into an MLflow server
(~17 runs/s measured on 2 cores) and the UI's runs table pages through hundreds of pages."""


def per_cell_above() -> int:
    """The threshold of :attr:`TrialRuns.AUTO` (``$ORCHESTRATOR_PER_CELL_ABOVE``, else 10,000 trials).

    Raises:
        OrchestratorError: the variable is not a whole number of 0 or more.
    """
    text = os.environ.get(PER_CELL_ENV)
    if text is None or text.strip() == "":
        return DEFAULT_PER_CELL_ABOVE
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise OrchestratorError(
            f"{PER_CELL_ENV}: expected a whole number of trials (0 or more) above which studies record per cell, "
            f"found {text!r}. Unset it for the default ({DEFAULT_PER_CELL_ABOVE})."
        )
    return value


class TrialRuns(str, enum.Enum):
    """Which child runs an execution writes (``orchestrator run --trial-runs``)."""

    PER_TRIAL = "per-trial"
    """One run per trial (its params, curve, final metrics, traceback)."""
    PER_CELL = "per-cell"
    """One run per design cell with aggregates over its replicates; the trials are in the results table."""
    AUTO = "auto"
    """Per cell above :func:`per_cell_above` trials, per trial otherwise."""

    @classmethod
    def parse(cls, value: "TrialRuns | str") -> "TrialRuns":
        """The mode named by ``value``; a clear error with the closest name otherwise."""
        try:
            return cls(value)
        except ValueError:
            raise OrchestratorError(not_one_of("trial runs", value, [m.value for m in cls])) from None

    def resolve(self, trials: int) -> "TrialRuns":
        """``PER_TRIAL`` or ``PER_CELL`` for a plan of ``trials`` trials (``AUTO`` decided by the threshold)."""
        if self is TrialRuns.AUTO:
            return TrialRuns.PER_CELL if trials > per_cell_above() else TrialRuns.PER_TRIAL
        return self

    @property
    def writes_trial_runs(self) -> bool:
        """Whether each trial gets an MLflow run of its own."""
        return self is not TrialRuns.PER_CELL


@dataclass(frozen=True)
class CellAggregate:
    """One cell's child run: its levels, counts and metric aggregates.

    Attributes:
        cell_id: the cell.
        levels: its typed levels.
        metrics: ``n`` (trials planned in the cell), ``n_finished`` (diverged included),
            ``n_failed``, ``n_diverged``, ``n_killed``, and per final metric ``<m>_mean``,
            ``<m>_sd`` (2+ values), ``<m>_min``, ``<m>_max`` over the finished trials' finite values.
        status: ``FINISHED`` when every planned trial finished, ``FAILED`` when one failed, else ``KILLED``.
    """

    cell_id: str
    levels: Mapping[str, Any]
    metrics: Mapping[str, float] = field(default_factory=dict)
    status: str = "FINISHED"


def cell_aggregates(frame: "pd.DataFrame", planned: Mapping[str, int]) -> list[CellAggregate]:
    """Aggregates per cell of results-table rows (one row per trial, :func:`~.table.one_row_per_trial`).

    ``planned``: trials per cell in the plan (``n``); a cell with no row is left out.
    """
    import numpy as np
    import pandas as pd

    out: list[CellAggregate] = []
    if frame.empty:
        return out
    diverged_column = f"{METRIC_PREFIX}diverged"
    metric_columns = [c for c in frame.columns if c.startswith(METRIC_PREFIX) and c != diverged_column]
    cell = frame["cell_id"].astype(str)
    finished = frame["state"] == "FINISHED"
    diverged = finished & (frame[diverged_column].fillna(0.0) >= 1.0) if diverged_column in frame else finished & False
    counts = pd.DataFrame({
        "n_finished": finished, "n_failed": frame["state"] == "FAILED", "n_diverged": diverged, "n_killed": frame["state"] == "KILLED",
    }).groupby(cell, sort=True).sum()
    levels = frame["levels"].groupby(cell, sort=True).first()
    # aggregates over the finished trials' finite values, all cells and metrics at once
    values = frame.loc[finished, metric_columns].astype(float).replace([np.inf, -np.inf], np.nan)
    grouped = values.groupby(cell[finished], sort=True)
    stats = {name: table.reindex(counts.index) for name, table in
             (("mean", grouped.mean()), ("sd", grouped.std(ddof=1)), ("min", grouped.min()), ("max", grouped.max()), ("count", grouped.count()))}
    columns = {name: {c: table[c].to_numpy() for c in metric_columns} for name, table in stats.items()}
    tallies = {name: counts[name].to_numpy() for name in counts.columns}
    level_texts = levels.to_numpy()
    parsed: dict[str, Any] = {}
    for i, cell_id in enumerate(counts.index):
        metrics: dict[str, float] = {name: float(tallies[name][i]) for name in ("n_finished", "n_failed", "n_diverged", "n_killed")}
        n = int(planned.get(cell_id, int(sum(metrics.values()) - metrics["n_diverged"])))
        metrics = {"n": float(n), **metrics}
        for column in metric_columns:
            count = columns["count"][column][i]
            if not count or count != count:
                continue
            name = column[len(METRIC_PREFIX):]
            metrics[f"{name}_mean"] = float(columns["mean"][column][i])
            if count > 1:
                metrics[f"{name}_sd"] = float(columns["sd"][column][i])
            metrics[f"{name}_min"] = float(columns["min"][column][i])
            metrics[f"{name}_max"] = float(columns["max"][column][i])
        status = "FINISHED" if metrics["n_finished"] >= n else ("FAILED" if metrics["n_failed"] else "KILLED")
        text = level_texts[i]
        if text not in parsed:
            parsed[text] = json.loads(text)
        out.append(CellAggregate(str(cell_id), parsed[text], metrics, status))
    return out


def cell_run_name(levels: Mapping[str, Any]) -> str:
    """A cell run's name in the UI: its levels in the study's factor order, then ``(cell)``.

    Example:
        >>> cell_run_name({"precision": "bf16", "lr": 0.05})
        'bf16 lr=0.05 (cell)'
    """
    words = [value if isinstance(value, str) else f"{name}={value}" for name, value in levels.items()]
    return clip(" ".join([*words, "(cell)"]), 250)


def _param_text(value: Any) -> str:
    return clip(value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str), PARAM_MAX)


def cell_tags(header: Mapping[str, Any], cell: CellAggregate) -> dict[str, str]:
    """Tags a cell run is created with (the execution's base tags, the cell's identity)."""
    return {
        **header["base_tags"],
        T.RUN_KIND: T.KIND_CELL,
        T.CELL_ID: cell.cell_id,
        T.MLFLOW_PARENT_RUN_ID: header["parent_run_id"],
        T.MLFLOW_RUN_NAME: cell_run_name(cell.levels),
        T.CELL_LEVELS: clip(json.dumps(dict(cell.levels), sort_keys=True, default=str), TAG_MAX),
    }


def write_cell_run(
    client: "MlflowClient", header: Mapping[str, Any], cell: CellAggregate, run_id: str | None, timestamp: int,
    on_created: Callable[[str], None] = lambda run_id: None,
) -> str:
    """Write (``run_id`` None) or complete one cell's run; returns its id.

    Three calls for a cell: ``create_run`` (tags), ``log_batch`` (levels as params, the
    aggregates), ``set_terminated``. Writing again is idempotent (same params, same metric
    values at the same step and ``timestamp``), so a replay completes a half-written run.
    """
    if run_id is None:
        run = client.create_run(header["experiment_id"], start_time=timestamp, tags=cell_tags(header, cell))
        run_id = str(run.info.run_id)
        on_created(run_id)
    else:
        client.log_batch(run_id, tags=tag_entities(cell_tags(header, cell)))
    params = param_entities({name: _param_text(value) for name, value in cell.levels.items()})
    metrics = metric_entities({k: v for k, v in cell.metrics.items() if math.isfinite(v)}, 0, timestamp)
    first_params, params = params[:BATCH_KEYS], params[BATCH_KEYS:]
    first_metrics, metrics = metrics[: BATCH_METRICS - len(first_params)], metrics[BATCH_METRICS - len(first_params):]
    client.log_batch(run_id, metrics=first_metrics, params=first_params)
    for chunk in chunks(params, BATCH_KEYS):
        client.log_batch(run_id, params=chunk)
    for chunk in chunks(metrics, BATCH_METRICS):
        client.log_batch(run_id, metrics=chunk)
    client.set_terminated(run_id, cell.status, end_time=timestamp)
    return run_id


def write_cells(
    client: "MlflowClient", header: Mapping[str, Any], cells: Sequence[CellAggregate], pool: WriterPool, existing: Mapping[str, str]
) -> dict[str, str]:
    """Write every cell's run through ``pool`` (retried within its budget) and wait; returns cell id -> run id of those written.

    ``existing``: cell id -> a run of this execution already there (a replay completes it
    instead of creating a second one); a retried write reuses the run its first try created.
    """
    timestamp = now_ms()
    created = dict(existing)
    written: dict[str, str] = {}
    lock = threading.Lock()

    def job(cell: CellAggregate) -> None:
        def remember(run_id: str) -> None:
            with lock:
                created[cell.cell_id] = run_id

        with lock:
            run_id = created.get(cell.cell_id)
        run_id = write_cell_run(client, header, cell, run_id, timestamp, on_created=remember)
        with lock:
            written[cell.cell_id] = run_id

    for cell in cells:
        pool.put(f"cell-{cell.cell_id}", lambda cell=cell: job(cell))  # type: ignore[misc]
    pool.flush()
    return written


def find_cell_runs(store: TrackingStore, experiment_id: str, execution_id: str) -> dict[str, list["Run"]]:
    """An execution's cell runs by cell id (one search)."""
    found: dict[str, list[Run]] = {}
    for run in store.search(experiment_id, f"tags.{T.EXECUTION_ID} = '{execution_id}' and tags.{T.RUN_KIND} = '{T.KIND_CELL}'"):
        found.setdefault(run.data.tags.get(T.CELL_ID, ""), []).append(run)
    return found
