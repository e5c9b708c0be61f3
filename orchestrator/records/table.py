"""The results table: one row per trial of an execution, columnar (Parquet), read in one go.

Per-trial MLflow runs are what a person browses; reading 1e5 of them back through
``search_runs`` takes many minutes. Each execution therefore also stores its trials as a
table, artifacts of its parent run under ``results/``:

* ``results/part-00000.parquet``, ``part-00001.parquet``, ...: the trials in the order the
  journal holds them, ``rows_per_part`` to a part (uploaded as each part fills, and the
  last one at the end), so a long study's table is there while it runs;
* ``results/curves-00000.parquet``, ...: beside each part, its trials' per-step metrics
  (``trial_id``, ``step``, ``metric``, ``value``; the final metrics excluded, as in
  :meth:`~orchestrator.records.reader.Records.curves`), so learning curves are read without
  the per-trial runs (there are none when the execution records per cell);
* ``results/run_ids.parquet``: ``trial_id`` -> the MLflow run that records it (written at
  the end, once the per-trial runs are in): the trial's own run, or its cell's run when the
  execution records per cell (:mod:`.cellruns`).

Parts are cut from the journal deterministically (part *k* = trial entries *k x rows* to
*(k+1) x rows - 1*), so a replay rebuilds exactly the part that failed to upload.

Columns: ``trial_id``, ``cell_id``, ``replicate``, ``order`` (the trial's place in the plan's
run order), ``state``, ``execution_id``, ``attempts``, ``started_ms``, ``levels`` (JSON of the
typed levels: one text per cell, parsed once per cell when read), ``seed.<stream>`` and
``seed_index.<stream>`` (int64), ``info`` (JSON: what the trial recorded about itself), ``error`` (a failed
trial's traceback, else null) and one float column per metric,
``metric.<name>`` (the final value; a per-step metric's last value where the trial did not
report it at the end), i.e. what the trial's run shows as its metrics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from . import tags as T

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

__all__ = [
    "METRIC_PREFIX",
    "PART_FOLDER",
    "RUN_IDS",
    "SEED_INDEX_PREFIX",
    "SEED_PREFIX",
    "curve_points",
    "curves_name",
    "download_table",
    "one_row_per_trial",
    "part_name",
    "read_curves",
    "read_table",
    "table_rows",
    "write_curves",
    "write_part",
    "write_run_ids",
]

PART_FOLDER = "results"
RUN_IDS = "run_ids.parquet"
METRIC_PREFIX = "metric."
SEED_PREFIX = "seed."
SEED_INDEX_PREFIX = "seed_index."
DEFAULT_ROWS_PER_PART = 10_000


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def curves_name(index: int) -> str:
    """The per-step metrics beside part ``index``."""
    return f"curves-{index:05d}.parquet"


def latest_metrics(entry: Mapping[str, Any]) -> dict[str, float]:
    """What the trial's run shows as its metrics: each key's value at its last step, final metrics last."""
    latest: dict[str, tuple[int, int, float]] = {}
    for key, value in (entry.get("live_latest") or {}).items():
        latest[key] = (int(value[0]), int(value[1]), float(value[2]))
    for step, values, ts in entry.get("curve") or ():
        for key, value in values.items():
            point = (int(step), int(ts), float(value))
            if key not in latest or point[:2] >= latest[key][:2]:
                latest[key] = point
    out = {key: point[2] for key, point in latest.items()}
    out.update({key: float(value) for key, value in (entry["result"].get("metrics") or {}).items()})
    return out


def table_rows(entries: Iterable[Mapping[str, Any]], execution_id: str) -> list[dict[str, Any]]:
    """Rows of the results table from journal ``trial`` entries."""
    rows = []
    for entry in entries:
        trial, result = entry["trial"], entry["result"]
        row: dict[str, Any] = {
            "trial_id": trial["trial_id"],
            "cell_id": trial["cell_id"],
            "replicate": int(trial["replicate"]),
            "order": int(trial.get("order", 0)),
            "state": result["state"],
            "execution_id": execution_id,
            "attempts": int(result.get("attempts", 1)),
            "started_ms": entry.get("started_ms"),
            "levels": json.dumps(trial["levels"], sort_keys=True, default=str),
            "info": json.dumps(result.get("info") or {}, sort_keys=True, default=str),
            "error": result.get("error"),
        }
        row.update({f"{SEED_PREFIX}{k}": int(v) for k, v in trial["seeds"].items()})
        row.update({f"{SEED_INDEX_PREFIX}{k}": int(v) for k, v in trial["seed_index"].items()})
        row.update({f"{METRIC_PREFIX}{k}": v for k, v in latest_metrics(entry).items()})
        rows.append(row)
    return rows


def curve_points(entries: Iterable[Mapping[str, Any]]) -> list[tuple[str, int, str, float]]:
    """``(trial_id, step, metric, value)`` of journal ``trial`` entries: the live batches (``live``) and the
    rest of the curve, below the final step (the final metrics are the table's own columns)."""
    points: list[tuple[str, int, str, float]] = []
    for entry in entries:
        trial_id = entry["trial"]["trial_id"]
        final = int(entry.get("final_step", 1 << 62))
        for step, values, _ in [*(entry.get("live") or ()), *(entry.get("curve") or ())]:
            if int(step) < final:
                points.extend((trial_id, int(step), key, float(value)) for key, value in values.items())
    return points


def write_curves(points: Sequence[tuple[str, int, str, float]], path: Path) -> Path:
    """Write curve points as one Parquet file (columns ``trial_id``, ``step``, ``metric``, ``value``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    columns: list[Sequence[Any]] = [list(c) for c in zip(*points)] if points else [[], [], [], []]
    pq.write_table(pa.table({
        "trial_id": pa.array(columns[0], pa.string()),
        "step": pa.array(columns[1], pa.int64()),
        "metric": pa.array(columns[2], pa.string()),
        "value": pa.array(columns[3], pa.float64()),
    }), path)
    return path


def write_part(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Write rows as one Parquet file (metric columns float64, the rest as typed above)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    metric_names = sorted({k for row in rows for k in row if k.startswith(METRIC_PREFIX)})
    seed_names = sorted({k for row in rows for k in row if k.startswith((SEED_PREFIX, SEED_INDEX_PREFIX))})
    columns: dict[str, Any] = {
        "trial_id": pa.array([r["trial_id"] for r in rows], pa.string()),
        "cell_id": pa.array([r["cell_id"] for r in rows], pa.string()),
        "replicate": pa.array([r["replicate"] for r in rows], pa.int64()),
        "order": pa.array([r.get("order", 0) for r in rows], pa.int64()),
        "state": pa.array([r["state"] for r in rows], pa.string()),
        "execution_id": pa.array([r["execution_id"] for r in rows], pa.string()),
        "attempts": pa.array([r["attempts"] for r in rows], pa.int64()),
        "started_ms": pa.array([r.get("started_ms") for r in rows], pa.int64()),
        "levels": pa.array([r["levels"] for r in rows], pa.string()),
        "info": pa.array([r["info"] for r in rows], pa.string()),
        "error": pa.array([r.get("error") for r in rows], pa.string()),
    }
    for name in seed_names:
        columns[name] = pa.array([r.get(name) for r in rows], pa.int64())
    for name in metric_names:
        columns[name] = pa.array([r.get(name) for r in rows], pa.float64())
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def write_run_ids(run_ids: Mapping[str, str], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"trial_id": pa.array(list(run_ids), pa.string()), "run_id": pa.array(list(run_ids.values()), pa.string())}), path)
    return path


def one_row_per_trial(frame: "pd.DataFrame") -> "pd.DataFrame":
    """One row per ``trial_id``: a FINISHED row beats any other, then the later start (as for runs)."""
    if frame.empty:
        return frame
    frame = frame.assign(_finished=(frame["state"] == "FINISHED").astype(int), _start=frame["started_ms"].fillna(0))
    frame = frame.sort_values(["_finished", "_start"], kind="stable").drop_duplicates("trial_id", keep="last")
    return frame.drop(columns=["_finished", "_start"]).reset_index(drop=True)


def read_curves(folder: Path) -> "pd.DataFrame | None":
    """The curve files under ``folder`` (one per part), or None when a part has none (a table from before curves were kept)."""
    import pandas as pd
    import pyarrow.parquet as pq

    parts = sorted(folder.glob("part-*.parquet"))
    files = [folder / curves_name(int(p.stem.split("-")[1])) for p in parts]
    if not all(f.is_file() for f in files):
        return None
    if not files:
        return pd.DataFrame(columns=["trial_id", "step", "metric", "value"])
    return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)


def read_table(folder: Path) -> "pd.DataFrame":
    """Every part under ``folder`` (a downloaded ``results/``), with ``run_id`` joined in."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = sorted(folder.glob("part-*.parquet"))
    if not parts:
        return pd.DataFrame()
    tables = [pq.read_table(p) for p in parts]
    frame = pa.concat_tables(tables, promote_options="default").to_pandas()
    ids = folder / RUN_IDS
    if ids.is_file():
        frame = frame.merge(pq.read_table(ids).to_pandas(), on="trial_id", how="left")
    else:
        frame["run_id"] = None
    return frame


def download_table(client: "MlflowClient", parent: "Run", *, partial: bool = False) -> tuple["pd.DataFrame | None", "pd.DataFrame | None"]:
    """An execution's results table and curves, downloaded from its parent run's artifacts.

    Returns:
        ``(table, curves)``: ``table`` is None when the execution has no complete table
        (still running, records pending, or recorded before tables existed); with
        ``partial`` whatever parts are uploaded so far are read (None when none is).
        ``curves`` (with an ``execution_id`` column) is None when a part has no curves.
    """
    import tempfile

    import pandas as pd

    tags = parent.data.tags
    parts = tags.get(T.RESULTS_PARTS)
    complete = tags.get(T.RESULTS_TABLE) == PART_FOLDER and parts is not None and parent.info.status != "RUNNING"
    if not complete and not partial:
        return None, None
    if complete and int(parts or 0) == 0:
        return pd.DataFrame(), pd.DataFrame(columns=["trial_id", "step", "metric", "value", "execution_id"])
    with tempfile.TemporaryDirectory(prefix="orchestrator-table-") as folder:
        try:
            local = Path(client.download_artifacts(parent.info.run_id, PART_FOLDER, folder))
        except Exception:  # noqa: BLE001 - not uploaded (records pending, or nothing yet)
            return None, None
        found = len(list(local.glob("part-*.parquet")))
        if complete and (found != int(parts or 0) or not (local / RUN_IDS).is_file()):
            if not partial:
                return None, None
        if not found:
            return None, None
        table = read_table(local)
        curves = read_curves(local)
    if curves is not None:
        curves["execution_id"] = tags.get(T.EXECUTION_ID)
    return table, curves
