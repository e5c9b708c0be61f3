"""The durable results journal: every finished trial, on local disk, before its MLflow write.

One journal per execution, a file of JSON lines under ``<root>/<study>/<execution_id>.jsonl``
(``root``: ``$ORCHESTRATOR_JOURNAL_DIR``, else ``journal/`` beside a SQLite store's
database, else ``mlflow/journal`` in the working directory). It is append-only; a line is
one entry:

* ``execution`` (first line): the execution's identity and the store it writes to;
* ``trial``: a trial's outcome with everything its MLflow run holds (the trial, its
  result, the curve, the worker's environment), fsync'd before any MLflow write of it;
* ``recorded``: the trial's run is complete in the store (``run_id``);
* ``table``: a part of the results table was uploaded (``part``);
* ``cells``: the execution's cell runs are written (an execution recorded per cell,
  header ``trial_runs = per-cell``: there a trial counts as recorded once its part of the
  results table is uploaded);
* ``closed``: the execution ended (``status``, ``counts``);
* ``parent``: the parent run was closed in the store.

Appends from the dispatch loop are group-committed: a small thread writes what has
queued up, fsyncs once, and only then hands the entries on (to the MLflow writers), so a
trial is never in the store without being in the journal, and dispatch never waits for
the disk. A journal whose every trial is recorded and whose parent is closed is renamed
``<execution_id>.synced.jsonl``; anything else is *pending* and is replayed by the next
``orchestrator run`` of the study or by ``orchestrator sync STUDY``
(:mod:`orchestrator.records.replay`).

A driver killed mid-write leaves at most a torn last line, which reading skips.
"""

from __future__ import annotations

import enum
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

__all__ = ["EntryKind", "Journal", "JournalState", "journal_root", "pending_journals"]

JOURNAL_ENV = "ORCHESTRATOR_JOURNAL_DIR"


class EntryKind(str, enum.Enum):
    """What one journal line says."""

    EXECUTION = "execution"
    TRIAL = "trial"
    RECORDED = "recorded"
    TABLE = "table"
    CELLS = "cells"
    CLOSED = "closed"
    PARENT = "parent"


def journal_root(tracking_uri: str) -> Path:
    """Where journals of executions recorded in ``tracking_uri`` live (see the module doc)."""
    env = os.environ.get(JOURNAL_ENV)
    if env:
        return Path(env).resolve()
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):]).resolve().parent / "journal"
    return (Path.cwd() / "mlflow" / "journal").resolve()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "_"


@dataclass
class JournalState:
    """What a journal file says, read back.

    Attributes:
        path: the file.
        execution: the ``execution`` entry (identity, tracking URI).
        trials: trial_id -> its latest ``trial`` entry, in journal order.
        recorded: trial_id -> run id of trials whose run is complete.
        tables: parts of the results table already uploaded.
        closed: the ``closed`` entry, if the execution ended.
        parent_closed: whether the parent run was closed in the store.
        cells_written: whether the cell runs were written (an execution recorded per cell).
    """

    path: Path
    execution: dict[str, Any]
    trials: dict[str, dict[str, Any]] = field(default_factory=dict)
    recorded: dict[str, str] = field(default_factory=dict)
    tables: set[int] = field(default_factory=set)
    closed: dict[str, Any] | None = None
    parent_closed: bool = False
    cells_written: bool = False

    @property
    def per_cell(self) -> bool:
        """Whether the execution records per cell (no per-trial runs; :mod:`.cellruns`)."""
        return self.execution.get("trial_runs") == "per-cell"

    @property
    def pending_trials(self) -> list[dict[str, Any]]:
        """``trial`` entries not recorded in the store yet: no complete run, or (per cell) their part of the table not uploaded."""
        if self.per_cell:
            rows = max(1, int(self.execution.get("rows_per_part", 10_000)))
            return [entry for i, entry in enumerate(self.trials.values()) if i // rows not in self.tables]
        return [entry for trial_id, entry in self.trials.items() if trial_id not in self.recorded]

    @property
    def is_synced(self) -> bool:
        cells = self.cells_written or not self.per_cell or not self.trials
        return not self.pending_trials and cells and self.closed is not None and self.parent_closed


def _entries(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                return  # torn last line of a killed driver: never acknowledged, so never relied on
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                return


def read_journal(path: Path) -> JournalState:
    """Read a journal file (a torn last line is ignored).

    Raises:
        ValueError: the file does not start with an ``execution`` entry.
    """
    state: JournalState | None = None
    for entry in _entries(path):
        kind = entry.get("kind")
        if state is None:
            if kind != EntryKind.EXECUTION.value:
                raise ValueError(f"journal {path}: expected an 'execution' entry first, found {kind!r}")
            state = JournalState(path=path, execution=entry)
            continue
        if kind == EntryKind.TRIAL.value:
            state.trials[entry["trial"]["trial_id"]] = entry
        elif kind == EntryKind.RECORDED.value:
            state.recorded[entry["trial_id"]] = entry.get("run_id", "")
        elif kind == EntryKind.TABLE.value:
            state.tables.add(int(entry["part"]))
        elif kind == EntryKind.CLOSED.value:
            state.closed = entry
        elif kind == EntryKind.PARENT.value:
            state.parent_closed = True
        elif kind == EntryKind.CELLS.value:
            state.cells_written = True
    if state is None:
        raise ValueError(f"journal {path}: empty (no 'execution' entry)")
    return state


def pending_journals(tracking_uri: str, study: str | None = None) -> list[Path]:
    """Journals of ``study`` (every study if None) for this store that still hold pending records, oldest first."""
    root = journal_root(tracking_uri)
    folders = [root / _safe(study)] if study else [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    found = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.jsonl")):
            if path.name.endswith(".synced.jsonl"):
                continue
            try:
                first = next(_entries(path), None)
            except OSError:
                continue
            if first and first.get("tracking_uri") == tracking_uri:
                found.append(path)
    return found


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """One execution's append-only journal (group-committed; see the module doc).

    Example:
        >>> journal = Journal.create(root, "study", {"execution_id": "e1", "tracking_uri": uri})  # doctest: +SKIP
        >>> journal.append({"kind": "trial", "trial": {...}}, then=lambda: writers.put(...))     # doctest: +SKIP
        >>> journal.close()                                                                      # doctest: +SKIP
    """

    def __init__(self, path: Path, *, sync: bool = True):
        self.path = path
        self._handle = open(path, "ab")
        self._sync = sync
        self._lock = threading.Condition()
        self._queue: list[tuple[dict[str, Any] | None, bool, Callable[[], None] | None]] = []
        self._stopping = False
        self.fsyncs = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="orchestrator-journal", daemon=True)
        self._thread.start()

    @classmethod
    def create(cls, root: Path, study: str, execution: Mapping[str, Any]) -> "Journal":
        """Start the journal of a new execution (its first line, fsync'd with its folder)."""
        folder = root / _safe(study)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{_safe(str(execution['execution_id']))}.jsonl"
        with open(path, "xb") as handle:
            handle.write(_line({**execution, "kind": EntryKind.EXECUTION.value}))
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_dir(folder)
        return cls(path)

    @classmethod
    def reopen(cls, path: Path) -> "Journal":
        """Append to an existing journal (replay marks what it recorded)."""
        return cls(path)

    def append(self, entry: Mapping[str, Any], *, durable: bool = True, then: Callable[[], None] | None = None) -> None:
        """Queue ``entry``; ``then`` runs once it is on disk (fsync'd when ``durable``)."""
        with self._lock:
            if self.error is not None:
                raise OSError(f"journal {self.path} cannot be written: {self.error}")
            self._queue.append((dict(entry), durable, then))
            self._lock.notify()

    def then(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once everything appended so far is on disk (fsync'd)."""
        with self._lock:
            self._queue.append((None, True, callback))
            self._lock.notify()

    def flush(self) -> None:
        """Wait until everything appended so far is on disk and handed on."""
        with self._lock:
            while self._queue or self._busy:
                self._lock.wait(0.05)
            if self.error is not None:
                raise OSError(f"journal {self.path} cannot be written: {self.error}")

    _busy = False

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._lock.wait()
                if not self._queue and self._stopping:
                    return
                batch, self._queue = self._queue, []
                self._busy = True
            try:
                self._handle.write(b"".join(_line(entry) for entry, _, _ in batch if entry is not None))
                self._handle.flush()
                if self._sync and any(durable for _, durable, _ in batch):
                    os.fsync(self._handle.fileno())
                    self.fsyncs += 1
            except OSError as exc:  # disk full, folder gone: nothing more is acknowledged
                with self._lock:
                    self.error = exc
                    self._busy = False
                    self._lock.notify_all()
                continue
            for _, _, then in batch:
                if then is not None:
                    then()
            with self._lock:
                self._busy = False
                self._lock.notify_all()

    def close(self, *, synced: bool = False) -> None:
        """Flush, stop the commit thread, close the file; ``synced`` renames it ``*.synced.jsonl``."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        self._thread.join()
        try:
            self._handle.flush()
            if self._sync:
                os.fsync(self._handle.fileno())
        finally:
            self._handle.close()
        if synced:
            target = self.path.with_name(self.path.name[: -len(".jsonl")] + ".synced.jsonl")
            os.replace(self.path, target)
            _fsync_dir(self.path.parent)
            self.path = target


def _line(entry: Mapping[str, Any]) -> bytes:
    return (json.dumps(entry, separators=(",", ":"), default=str) + "\n").encode("utf-8")
