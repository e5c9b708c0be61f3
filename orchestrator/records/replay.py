"""Replay pending journals into MLflow, exactly once (``orchestrator sync STUDY``, and every ``run``).

A journal is pending when its execution ended (or its driver died) with trials whose run
is not complete in the store, a part of the results table not uploaded, or the parent
run not closed (:mod:`orchestrator.records.journal`). Replaying one:

1. one search finds the execution's trial runs already in the store;
2. each pending trial: a run of that (execution, trial) that is already complete (its
   state is the journal's, its final step tagged) is taken as it is; a run left
   half-written (created, then the driver died or the store went away) is completed;
   otherwise the run is written from the journal. Extra copies (a create whose answer was
   lost, then retried) are deleted, so each trial ends with exactly one run;
3. missing parts of the results table (and their curves) are rebuilt from the journal
   (parts are cut deterministically) and uploaded; an execution recorded per cell
   (:mod:`.cellruns`) has no trial runs to write: its trials are recorded once their part
   is uploaded, then its cell runs are written (an existing cell run of the execution is
   completed, never duplicated), aggregating the lineage's earlier tables and the journal;
   then the run ids;
4. the parent run gets its counts and status (``KILLED`` when the driver died before the
   end), and the journal is renamed ``*.synced.jsonl``.

No trial is executed again: replay writes what the journal holds, and ``run`` replays
before it decides which trials still need a FINISHED run.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import tags as T
from .journal import EntryKind, Journal, pending_journals, read_journal
from .store import TrackingStore, metric_entities, tag_entities
from .table import PART_FOLDER, RUN_IDS, curve_points, curves_name, download_table, one_row_per_trial, part_name, table_rows, write_curves, write_part, write_run_ids
from .writers import WriterPool

if TYPE_CHECKING:
    from mlflow.entities import Run

__all__ = ["SyncReport", "sync_study"]


@dataclass
class SyncReport:
    """What a replay did.

    Attributes:
        journals: pending journals found.
        written: trial runs written or completed from a journal.
        already: pending trials whose run turned out to be complete in the store already.
        duplicates_deleted: extra runs of one (execution, trial) removed.
        cells: cell runs written for executions recorded per cell.
        parents_closed: parent runs closed.
        left_pending: records still pending (the store refused them).
        errors: why, for the first few.
    """

    journals: int = 0
    written: int = 0
    already: int = 0
    duplicates_deleted: int = 0
    cells: int = 0
    parents_closed: int = 0
    left_pending: int = 0
    errors: list[str] = field(default_factory=list)

    def line(self, study: str) -> str:
        if not self.journals:
            return f"{study}: no pending records"
        text = (
            f"{study}: {self.journals} journal(s) replayed: {self.written} trial runs written, {self.already} already in the store, "
            f"{self.parents_closed} execution(s) closed"
        )
        if self.cells:
            text += f", {self.cells} cell runs written"
        if self.duplicates_deleted:
            text += f", {self.duplicates_deleted} duplicate runs removed"
        if self.left_pending:
            text += f"; {self.left_pending} records pending: {'; '.join(self.errors[:3])}"
        return text


def _complete(run: "Run", entry: dict[str, Any]) -> bool:
    return run.info.status == entry["result"]["state"] and run.data.tags.get(T.FINAL_STEP) == str(entry["final_step"])


def sync_study(store: TrackingStore, study: str, *, retry_budget_s: float = 10.0, writers: int | None = None) -> SyncReport:
    """Replay every pending journal of ``study`` recorded in ``store`` (see the module doc)."""
    from .lease import _legacy_driver_alive as _driver_alive
    from .trialruns import default_writers, find_trial_runs, write_trial_run

    report = SyncReport()
    for path in pending_journals(store.uri, study):
        state = read_journal(path)
        header = state.execution
        if state.closed is None and _driver_alive(header.get("driver")):
            continue  # its execution is still running: its driver records it
        report.journals += 1
        client = store.client
        journal = Journal.reopen(path)
        pool = WriterPool(writers or default_writers(store.uri), retry_budget_s)
        recorded = dict(state.recorded)
        try:
            existing = find_trial_runs(store, header["experiment_id"], header["execution_id"]) if not state.per_cell else {}
        except Exception as exc:  # noqa: BLE001 - the store is down: everything stays pending
            report.left_pending += len(state.pending_trials) + (0 if state.parent_closed else 1)
            report.errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            journal.close()
            continue
        spool = Path(tempfile.mkdtemp(prefix="orchestrator-sync-"))
        outcome = {"written": 0, "already": 0, "deleted": 0}

        def replay_trial(entry: dict[str, Any]) -> None:
            trial_id = entry["trial"]["trial_id"]
            runs = sorted(existing.get(trial_id, []), key=lambda r: (not _complete(r, entry), r.info.start_time or 0))
            keep = runs[0] if runs else None
            for extra in runs[1:]:
                client.delete_run(extra.info.run_id)
                outcome["deleted"] += 1
            existing[trial_id] = runs[:1]
            if keep is not None and _complete(keep, entry):
                run_id = str(keep.info.run_id)
                outcome["already"] += 1
            else:
                run_id = write_trial_run(client, header, entry, keep.info.run_id if keep else None)
                outcome["written"] += 1
            recorded[trial_id] = run_id
            journal.append({"kind": EntryKind.RECORDED.value, "trial_id": trial_id, "run_id": run_id}, durable=False)

        if not state.per_cell:
            for entry in state.pending_trials:
                pool.put(entry["trial"]["trial_id"], functools.partial(replay_trial, entry))
            pool.flush()

        rows_per_part = int(header.get("rows_per_part", 10_000))
        entries = list(state.trials.values())
        parts = (len(entries) + rows_per_part - 1) // rows_per_part
        uploaded = set(state.tables)
        for index in range(parts):
            if index in uploaded:
                continue
            chunk = entries[index * rows_per_part : (index + 1) * rows_per_part]
            path_part = write_part(table_rows(chunk, header["execution_id"]), spool / f"p{index}" / part_name(index))
            path_curves = write_curves(curve_points(chunk), spool / f"p{index}" / curves_name(index))

            def upload(index: int = index, local: Path = path_part, curves: Path = path_curves) -> None:
                client.log_artifact(header["parent_run_id"], str(curves), PART_FOLDER)
                client.log_artifact(header["parent_run_id"], str(local), PART_FOLDER)
                journal.append({"kind": EntryKind.TABLE.value, "part": index}, durable=False)
                uploaded.add(index)

            pool.put(f"part-{index}", upload)
        pool.flush()
        cells_done = state.cells_written or not state.per_cell or not entries
        if state.per_cell and len(uploaded) == parts:
            recorded = {e["trial"]["trial_id"]: "" for e in entries}
            if not cells_done:
                try:
                    cells_done, recorded = _write_cells(store, header, entries, pool)
                    report.cells += len({run_id for run_id in recorded.values() if run_id})
                except Exception as exc:  # noqa: BLE001 - the store is down: the cells stay pending
                    report.errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                if cells_done:
                    journal.append({"kind": EntryKind.CELLS.value})
        if recorded and cells_done:
            ids_path = write_run_ids(recorded, spool / "ids" / RUN_IDS)
            pool.put("run-ids", lambda: client.log_artifact(header["parent_run_id"], str(ids_path), PART_FOLDER))
        parent_done = {"closed": state.parent_closed}
        if not state.parent_closed:
            closed = state.closed or {}
            status = closed.get("status", "KILLED")  # the driver died before the end
            counts = closed.get("counts") or _counts(header, entries)

            def close_parent() -> None:
                client.log_batch(
                    header["parent_run_id"],
                    metrics=metric_entities({**counts, T.RECORDS_PENDING: 0}, 0),
                    tags=tag_entities({T.STATUS: status, T.CLOSED_BY: "orchestrator sync", T.RESULTS_PARTS: str(parts)}),
                )
                client.set_terminated(header["parent_run_id"], status)
                journal.append({"kind": EntryKind.PARENT.value, "status": status})
                parent_done["closed"] = True

            pool.put("parent", close_parent)
        pool.close()
        report.written += outcome["written"]
        report.already += outcome["already"]
        report.duplicates_deleted += outcome["deleted"]
        report.parents_closed += int(parent_done["closed"] and not state.parent_closed)
        if state.per_cell:
            left = sum(1 for i, _ in enumerate(entries) if i // rows_per_part not in uploaded) + (0 if cells_done else 1) + (0 if parent_done["closed"] else 1)
        else:
            left = sum(1 for e in entries if e["trial"]["trial_id"] not in recorded) + (0 if parent_done["closed"] else 1)
        report.left_pending += left
        report.errors.extend(pool.errors[:3])
        journal.close(synced=left == 0 and len(uploaded) == parts)
        shutil.rmtree(spool, ignore_errors=True)
    return report


def _write_cells(store: TrackingStore, header: dict[str, Any], entries: list[dict[str, Any]], pool: WriterPool) -> tuple[bool, dict[str, str]]:
    """The cell runs of an execution recorded per cell, from its journal and the lineage's earlier tables.

    Returns whether every cell run is written, and trial_id -> its cell's run id.
    """
    import pandas as pd

    from .cellruns import cell_aggregates, find_cell_runs, write_cells

    client = store.client
    target = client.get_run(header["parent_run_id"])
    frames = []
    if header.get("lineage") != header.get("execution_id"):
        query = f"tags.{T.LINEAGE} = '{header['lineage']}' and tags.{T.RUN_KIND} = '{T.KIND_EXECUTION}'"
        for parent in store.search(header["experiment_id"], query):
            if parent.info.start_time < target.info.start_time:
                table, _ = download_table(client, parent)
                if table is not None and not table.empty:
                    frames.append(table)
    frames.append(pd.DataFrame(table_rows(entries, header["execution_id"])))
    frame = one_row_per_trial(pd.concat(frames, ignore_index=True))
    cells = cell_aggregates(frame, header.get("cells_planned") or {})
    found = find_cell_runs(store, header["experiment_id"], header["execution_id"])
    existing = {}
    for cell_id, runs in found.items():
        runs = sorted(runs, key=lambda r: r.info.start_time or 0)
        existing[cell_id] = str(runs[0].info.run_id)
        for extra in runs[1:]:
            client.delete_run(extra.info.run_id)
    written = write_cells(client, header, cells, pool, existing)
    ours = {e["trial"]["trial_id"]: e["trial"]["cell_id"] for e in entries}
    return len(written) == len(cells), {trial_id: written.get(cell_id, "") for trial_id, cell_id in ours.items()}


def _counts(header: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, int]:
    """The parent's counts from the journal, for an execution whose driver died before its end."""
    states = [e["result"]["state"] for e in entries]
    finished = states.count("FINISHED")
    diverged = sum(1 for e in entries if e["result"]["state"] == "FINISHED" and (e["result"].get("metrics") or {}).get("diverged", 0.0) >= 1.0)
    failed, killed = states.count("FAILED"), states.count("KILLED")
    return {
        "trials_planned": int(header.get("planned", 0)),
        "trials_skipped": int(header.get("skipped", 0)),
        "trials_ran": finished + failed + killed,
        "trials_finished": finished,
        "trials_failed": failed,
        "trials_diverged": diverged,
        "trials_killed": killed,
    }
