"""Reading the records back: a :class:`Records` handle on one study, opened once.

The handle resolves the study and opens the store once, lists the study's executions once,
and answers every question about them: which execution a reference names
(``latest``, ``previous``, an id or a unique prefix of one), the trials of an execution as a
DataFrame, their learning curves, the executions with their counts, where the current plan
stands. ``orchestrator report`` reads results, curves and logs its report through one
handle; ``compare`` and ``schedule`` resolve references with :meth:`Records.resolve`.

Example:
    >>> records = Records.open("screening_demo", variant="smoke")   # doctest: +SKIP
    >>> df, meta = records.results()                                # doctest: +SKIP
    >>> df[["trial_id", "A", "response"]].head()                    # doctest: +SKIP
"""

from __future__ import annotations

import enum
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import OrchestratorError, did_you_mean, not_one_of
from . import tags as T
from .store import TrackingError, TrackingStore, open_store

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities import Run

    from ..definition.study import Study
    from ..design.trial import Trial

__all__ = ["Records", "ResultsSource", "list_executions", "load_curves", "load_results", "log_artifacts", "study_status"]

LATEST = "latest"
PREVIOUS = "previous"
_PREFIX_MIN = 4


def _resolve_study(study: "Study | str", variant: str | None) -> "Study":
    from ..definition.loader import load_study
    from ..definition.study import Study

    if isinstance(study, Study):
        if variant is not None and variant != study.variant:
            return study.with_variant(variant)
        return study if study.variant is not None else study.with_variant(None)
    return load_study(study, variant)


class ResultsSource(str, enum.Enum):
    """Where :meth:`Records.results` reads the trials from."""

    AUTO = "auto"
    """The results tables when every execution of the lineage has a complete one, else the runs."""
    TABLE = "table"
    """The results tables only (an error when one is missing or incomplete)."""
    RUNS = "runs"
    """The per-trial MLflow runs (``search_runs``; slow for 1e4+ trials)."""

    @classmethod
    def parse(cls, value: "ResultsSource | str") -> "ResultsSource":
        try:
            return cls(value)
        except ValueError:
            raise OrchestratorError(not_one_of("results source", value, [s.value for s in cls])) from None


class Records:
    """The records of one study (one variant) in one store, read through one handle.

    Args:
        study: the study, with its variant applied.
        store: the opened store.

    Use :meth:`open` to build one from a study file or name.
    """

    def __init__(self, study: "Study", store: TrackingStore):
        self.study = study
        self.store = store
        self._experiment_id: str | None = None
        self._parents: list["Run"] | None = None
        self._plan_trials: Sequence["Trial"] | None = None
        self._downloads: dict[str, tuple["pd.DataFrame | None", "pd.DataFrame | None"]] = {}

    @classmethod
    def open(cls, study: "Study | str", variant: str | None = None, tracking_uri: str | None = None) -> "Records":
        """Resolve ``study`` (a Study, a file or a name; ``variant`` applied) and open the store once."""
        return cls(_resolve_study(study, variant), open_store(tracking_uri, check=False))

    @property
    def uri(self) -> str:
        return self.store.uri

    # -- executions ---------------------------------------------------------------------
    def has_experiment(self) -> bool:
        """Whether the store holds an experiment for this study."""
        return self._experiment() is not None

    def _experiment(self) -> str | None:
        if self._experiment_id is None:
            self._experiment_id = self.store.experiment_id(self.study.name)
        return self._experiment_id

    def _all_parents(self) -> tuple[str, list["Run"]]:
        experiment_id = self._experiment()
        study = self.study
        if experiment_id is None:
            raise TrackingError(
                f"no records of study {study.name!r} in {self.store.uri}: expected an MLflow experiment named {study.name!r}, found none. "
                f"Run it first (orchestrator run {study.source_file or study.name}) or pass the store it ran on with --tracking-uri."
            )
        if self._parents is None:
            parents = self.store.search(experiment_id, f"tags.{T.RUN_KIND} = '{T.KIND_EXECUTION}'")
            self._parents = sorted(parents, key=lambda r: (r.info.start_time, r.data.tags.get(T.EXECUTION_ID, "")))
        return experiment_id, self._parents

    def parents(self, *, any_variant: bool = False) -> list["Run"]:
        """The parent runs (one per execution), oldest first: of this variant, or of any."""
        _, parents = self._all_parents()
        if any_variant:
            return list(parents)
        return [r for r in parents if r.data.tags.get(T.VARIANT) == str(self.study.variant)]

    def execution_ids(self, *, any_variant: bool = False) -> list[str]:
        """Execution ids, oldest first."""
        return [r.data.tags.get(T.EXECUTION_ID, "") for r in self.parents(any_variant=any_variant)]

    def resolve(self, ref: str | None = None, *, relative_to: str | None = None, any_variant: bool = False) -> "Run":
        """The parent run an execution reference names.

        Args:
            ref: ``None`` or ``"latest"`` (the latest execution), ``"previous"`` (the one before
                ``relative_to``), an execution id, a parent run id, or a unique prefix (4+
                characters) of an execution id.
            relative_to: the execution ``"previous"`` is relative to (default: the latest).
            any_variant: look among the executions of every variant (for a named execution).

        Raises:
            TrackingError: no executions, or none that ``ref`` names (the valid ones listed).
        """
        study = self.study
        parents = self.parents(any_variant=any_variant)
        if not parents:
            raise TrackingError(
                f"study {study.name!r} has no executions of variant {study.variant!r} in {self.store.uri}. "
                f"Run it first: orchestrator run {study.source_file or study.name} --variant {study.variant}"
            )
        ids = [r.data.tags.get(T.EXECUTION_ID, "") for r in parents]
        if ref in (None, LATEST):
            return parents[-1]
        if ref == PREVIOUS:
            anchor = ids.index(relative_to) if relative_to in ids else (len(ids) - 1 if relative_to is None else -1)
            if anchor > 0:
                return parents[anchor - 1]
        for run in parents:
            if ref in (run.data.tags.get(T.EXECUTION_ID), run.info.run_id):
                return run
        matches = [run for run, i in zip(parents, ids) if len(ref) >= _PREFIX_MIN and i.startswith(ref)] if ref != PREVIOUS else []
        if len(matches) == 1:
            return matches[0]
        raise TrackingError(
            f"execution {ref!r} of study {study.name!r} (variant {study.variant}) not found; expected one of: {', '.join(ids)} "
            f"(oldest first; or a unique prefix of one), {LATEST!r}, or {PREVIOUS!r} (needs an execution before the candidate). "
            f"{did_you_mean(str(ref), ids)}".rstrip()
        )

    def resolve_id(self, ref: str | None = None, *, relative_to: str | None = None) -> str:
        """The execution id a reference names (see :meth:`resolve`)."""
        return str(self.resolve(ref, relative_to=relative_to).data.tags.get(T.EXECUTION_ID, ""))

    def _selected_runs(self, execution: str | None) -> tuple[str, "Run", list["Run"], dict[str, "Run"]]:
        """Experiment id, the target parent run, its lineage's parents up to it, and one run per trial_id."""
        experiment_id, target, chain = self._chain(execution)
        lineage = target.data.tags.get(T.LINEAGE)
        allowed = {r.data.tags.get(T.EXECUTION_ID) for r in chain}
        chosen: dict[str, Run] = {}
        for run in self.store.search(experiment_id, f"tags.{T.LINEAGE} = '{lineage}' and tags.{T.RUN_KIND} = '{T.KIND_TRIAL}'"):
            tags = run.data.tags
            if tags.get(T.EXECUTION_ID) not in allowed:
                continue
            trial_id = tags.get(T.TRIAL_ID, "")
            best = chosen.get(trial_id)
            if best is None or _rank(run) > _rank(best):
                chosen[trial_id] = run
        return experiment_id, target, chain, chosen

    # -- results ------------------------------------------------------------------------
    def results(self, execution: str | None = None, source: "ResultsSource | str" = "auto") -> tuple["pd.DataFrame", dict[str, Any]]:
        """One row per trial of an execution (the latest by default), typed per the study.

        Within a resume lineage the rows of earlier executions count: a trial finished by the
        first execution and not rerun by its resume still has its row.

        Returns:
            ``(df, meta)``: ``df`` has ``trial_id``, ``cell_id``, ``replicate``, ``state``,
            ``run_id``, ``execution_id``, one column per factor (numbers stay numbers),
            ``seed_<stream>``, ``seed_index_<stream>``, every final metric (float), and from the
            trial's recorded info ``deterministic`` (bool) and ``param_hash`` (str or None).
            ``meta`` has ``experiment_id``, ``parent_run_id``, ``execution_id``, ``lineage``,
            ``environment``, ``study_hash``, ``variant``, ``tracking_uri``, ``code_version``, and
            ``source``: ``table`` or ``runs``, where the rows were read from.

        ``source``: ``auto`` reads the executions' results tables (Parquet artifacts of their
        parent runs; seconds for 1e5 trials) when every execution of the lineage has a complete
        one, else the per-trial runs; ``table`` or ``runs`` forces one.

        Raises:
            TrackingError: no such experiment or execution; ``source="table"`` and no complete table.
        """
        import pandas as pd

        study = self.study
        wanted = ResultsSource.parse(source)
        experiment_id, target, chain = self._chain(execution)
        frame = self._table(chain) if wanted is not ResultsSource.RUNS else None
        if frame is None and wanted is ResultsSource.TABLE:
            raise TrackingError(
                f"execution {target.data.tags.get(T.EXECUTION_ID)} of {study.name!r} has no complete results table "
                "(recorded before tables existed, records still pending, or still running); expected one per execution of the lineage. "
                f"Run orchestrator sync {study.source_file or study.name}, or read the runs (source='runs')."
            )
        df = self._frame_from_table(frame) if frame is not None else pd.DataFrame(self._rows_from_runs(execution))
        if not df.empty:
            # the plan's run order: recorded in the table; for runs, from the current plan
            order = df.pop("_order") if "_order" in df else df["trial_id"].map({t.trial_id: t.order for t in self._trials()})
            df = df.assign(_order=order).sort_values(["_order", "trial_id"], na_position="last").drop(columns="_order").reset_index(drop=True)
        tags = target.data.tags
        meta = {
            "experiment_id": experiment_id,
            "parent_run_id": target.info.run_id,
            "execution_id": tags.get(T.EXECUTION_ID),
            "lineage": tags.get(T.LINEAGE),
            "executions": [r.data.tags.get(T.EXECUTION_ID) for r in chain],
            "environment": json.loads(tags.get(T.ENVIRONMENT, "{}")),
            "study_hash": tags.get(T.STUDY_HASH),
            "study": study.name,
            "variant": tags.get(T.VARIANT),
            "code_version": tags.get(T.CODE_VERSION),
            "tracking_uri": self.store.uri,
            "source": ResultsSource.TABLE.value if frame is not None else ResultsSource.RUNS.value,
        }
        return df, meta

    def _rows_from_runs(self, execution: str | None) -> list[dict[str, Any]]:
        study = self.study
        _, _, _, chosen = self._selected_runs(execution)
        streams = list(study.seed_streams)
        rows = []
        for trial_id, run in chosen.items():
            tags = run.data.tags
            typed = _typed(run, study)
            row: dict[str, Any] = {
                "trial_id": trial_id,
                "cell_id": tags.get(T.CELL_ID),
                "replicate": int(tags.get(T.REPLICATE, 0)),
                "state": run.info.status,
                "run_id": run.info.run_id,
                "execution_id": tags.get(T.EXECUTION_ID),
            }
            for name in study.factor_names:
                row[name] = typed["levels"].get(name)
            for stream in streams:
                row[f"{T.SEED_PREFIX}{stream}"] = typed["seeds"].get(stream)
                row[f"seed_index_{stream}"] = typed.get("seed_index", {}).get(stream)
            row.update({k: float(v) for k, v in run.data.metrics.items()})
            info = _info(run)
            row["deterministic"] = bool(info.get("deterministic", False))
            row["param_hash"] = info.get("param_hash")
            rows.append(row)
        return rows

    def _chain(self, execution: str | None) -> tuple[str, "Run", list["Run"]]:
        """Experiment id, the target parent run and its lineage's parents up to it (oldest first)."""
        experiment_id, _ = self._all_parents()
        target = self.resolve(execution)
        lineage = target.data.tags.get(T.LINEAGE)
        chain = [r for r in self.parents() if r.data.tags.get(T.LINEAGE) == lineage and r.info.start_time <= target.info.start_time]
        return experiment_id, target, chain

    def _download(self, parent: "Run", *, partial: bool = False) -> tuple["pd.DataFrame | None", "pd.DataFrame | None"]:
        """An execution's results table and curves (:func:`~.table.download_table`), downloaded once per handle when complete."""
        from .table import download_table

        key = parent.info.run_id
        if key in self._downloads:
            return self._downloads[key]
        table, curves = download_table(self.store.client, parent, partial=partial)
        if parent.info.status != "RUNNING" and table is not None:
            self._downloads[key] = (table, curves)
        return table, curves

    def _table(self, chain: list["Run"]) -> "pd.DataFrame | None":
        """The lineage's results tables, concatenated; None when one is missing or incomplete."""
        import pandas as pd

        frames = []
        for parent in chain:
            table, _ = self._download(parent)
            if table is None:
                return None
            if not table.empty:
                frames.append(table)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def _frame_from_table(self, frame: "pd.DataFrame") -> "pd.DataFrame":
        """The results table as :meth:`results` rows, column by column (1e5 trials in seconds)."""
        import pandas as pd

        from .table import METRIC_PREFIX, SEED_INDEX_PREFIX, SEED_PREFIX

        from .table import one_row_per_trial

        study = self.study
        if frame.empty:
            return pd.DataFrame()
        frame = one_row_per_trial(frame)  # FINISHED beats anything else, then the later start (as for runs)
        out = pd.DataFrame({
            "trial_id": frame["trial_id"],
            "cell_id": frame["cell_id"],
            "replicate": frame["replicate"].astype(int),
            "state": frame["state"],
            "run_id": frame["run_id"],
            "execution_id": frame["execution_id"],
        })
        levels = frame["levels"].map({text: json.loads(text) for text in frame["levels"].unique()})  # parsed once per cell
        for name in study.factor_names:
            out[name] = [lv.get(name) for lv in levels]
        for stream in study.seed_streams:
            for prefix, column in ((SEED_PREFIX, f"{T.SEED_PREFIX}{stream}"), (SEED_INDEX_PREFIX, f"seed_index_{stream}")):
                out[column] = frame[f"{prefix}{stream}"] if f"{prefix}{stream}" in frame else None
        for column in (c for c in frame.columns if c.startswith(METRIC_PREFIX)):
            out[column[len(METRIC_PREFIX):]] = frame[column].astype(float)
        info = frame["info"].fillna("{}").map({text: json.loads(text) for text in frame["info"].fillna("{}").unique()})
        out["deterministic"] = [bool(i.get("deterministic", False)) for i in info]
        out["param_hash"] = [i.get("param_hash") for i in info]
        out["_order"] = frame["order"].astype(int)
        return out
    def _trials(self) -> Sequence["Trial"]:
        """The current plan's trials (planned once per handle; none when the study cannot be planned)."""
        if self._plan_trials is None:
            from ..design.plan import make_plan

            try:
                self._plan_trials = make_plan(self.study).trials
            except OrchestratorError:
                self._plan_trials = []
        return self._plan_trials

    def curves(self, execution: str | None = None) -> "pd.DataFrame":
        """Per-step metrics of the same trials as :meth:`results`: columns ``trial_id, step, metric, value``.

        Read from the results tables' curve files when every execution of the lineage has
        them (always for one recorded per cell), else from the per-trial runs' metric histories.
        """
        import pandas as pd

        from .table import one_row_per_trial

        _, _, chain = self._chain(execution)
        downloads = [self._download(parent) for parent in chain]
        if all(table is not None and curves is not None for table, curves in downloads):
            tables = [t for t, _ in downloads if t is not None and not t.empty]
            curves = [c for _, c in downloads if c is not None and not c.empty]
            if not tables or not curves:
                return pd.DataFrame(columns=["trial_id", "step", "metric", "value"])
            chosen_rows = one_row_per_trial(pd.concat(tables, ignore_index=True))
            points = pd.concat(curves, ignore_index=True).merge(chosen_rows[["trial_id", "execution_id"]], on=["trial_id", "execution_id"])
            points = points[["trial_id", "step", "metric", "value"]].astype({"step": int, "value": float})
            return points.sort_values(["trial_id", "metric", "step"], kind="stable").reset_index(drop=True)
        _, _, _, chosen = self._selected_runs(execution)
        rows = []
        for trial_id, run in chosen.items():
            final_step = int(run.data.tags.get(T.FINAL_STEP, 1 << 62))
            for key in run.data.metrics:
                for point in self.store.client.get_metric_history(run.info.run_id, key):
                    if point.step < final_step:
                        rows.append((trial_id, int(point.step), key, float(point.value)))
        df = pd.DataFrame(rows, columns=["trial_id", "step", "metric", "value"])
        return df.sort_values(["trial_id", "metric", "step"]).reset_index(drop=True)

    def log_artifacts(self, folder: str | Path, execution: str | None = None, artifact_path: str | None = None) -> str:
        """Log the files of ``folder`` (e.g. an analysis report) to an execution's parent run; returns its run id.

        A named execution is found whatever its variant; the latest is the latest of the study's variant.
        """
        target = self.resolve(execution, any_variant=execution not in (None, LATEST))
        if not Path(folder).is_dir():
            raise TrackingError(f"log_artifacts: expected a folder of files to log, found {folder!s} (not a folder)")
        self.store.client.log_artifacts(target.info.run_id, str(folder), artifact_path)
        return str(target.info.run_id)

    def executions(self) -> list[dict[str, Any]]:
        """Every execution (parent run) of the study, any variant, oldest first.

        Each: ``execution_id``, ``parent_run_id``, ``start_time`` (ISO, UTC), ``end_time``,
        ``status``, ``mode``, ``variant``, ``lineage``, ``code_version``, ``study_hash``,
        ``counts`` (planned, skipped, ran, finished, failed, diverged, killed) and
        ``environment`` (one-line summary).
        """
        from .environment import summary

        out = []
        for run in self.parents(any_variant=True):
            tags, metrics = run.data.tags, run.data.metrics
            env = json.loads(tags.get(T.ENVIRONMENT, "{}"))
            out.append(
                {
                    "execution_id": tags.get(T.EXECUTION_ID),
                    "parent_run_id": run.info.run_id,
                    "start_time": _iso(run.info.start_time),
                    "end_time": _iso(run.info.end_time),
                    "status": run.info.status,
                    "mode": tags.get(T.MODE),
                    "variant": tags.get(T.VARIANT),
                    "lineage": tags.get(T.LINEAGE),
                    "code_version": tags.get(T.CODE_VERSION),
                    "study_hash": tags.get(T.STUDY_HASH),
                    "counts": {k[len(T.TRIALS_PREFIX):]: int(v) for k, v in metrics.items() if k.startswith(T.TRIALS_PREFIX)},
                    "environment": summary(env) if env else "",
                }
            )
        return out

    def status(self) -> dict[str, Any]:
        """Where the current plan of the study stands in its latest lineage, per cell.

        Returns:
            ``{"study", "variant", "execution_id", "cells": [{"cell_id", "levels", "finished",
            "failed", "killed", "running", "missing", "trials"}], "totals": {...}}``.
        """
        from ..design.plan import make_plan

        study = self.study
        plan = make_plan(study)
        states: dict[str, str] = {}
        execution_id = None
        if self.has_experiment() and self.parents():
            states = self._trial_states()
            execution_id = self.resolve(None).data.tags.get(T.EXECUTION_ID)
        keys = ("finished", "failed", "killed", "running", "missing")
        cells: dict[str, dict[str, Any]] = {}
        for trial in plan.trials:
            cell = cells.setdefault(trial.cell_id, {"cell_id": trial.cell_id, "levels": dict(trial.levels), "trials": 0, **{k: 0 for k in keys}})
            cell["trials"] += 1
            state = states.get(trial.trial_id, "missing").lower()
            cell[state if state in keys else "failed"] += 1
        totals = {k: sum(c[k] for c in cells.values()) for k in (*keys, "trials")}
        return {"study": study.name, "variant": study.variant, "execution_id": execution_id, "tracking_uri": self.store.uri, "cells": list(cells.values()), "totals": totals}

    def _trial_states(self) -> dict[str, str]:
        """trial_id -> state in the latest lineage: the results tables (the parts uploaded so far of a running
        execution) and the per-trial runs (searched unless every execution has a complete table)."""
        _, _, chain = self._chain(None)
        states: dict[str, str] = {}

        def put(trial_id: str, state: str) -> None:
            if trial_id not in states or _state_rank(state) >= _state_rank(states[trial_id]):
                states[trial_id] = state

        complete = True
        for parent in chain:
            table, _ = self._download(parent)
            if table is None:
                complete = False
                table, _ = self._download(parent, partial=True)
            if table is not None and not table.empty:
                for trial_id, state in zip(table["trial_id"], table["state"]):
                    put(str(trial_id), str(state))
        if not complete:
            _, _, _, chosen = self._selected_runs(None)
            for trial_id, run in chosen.items():
                put(trial_id, run.info.status)
        return states


def _state_rank(state: str) -> int:
    return 2 if state == "FINISHED" else 1 if state == "RUNNING" else 0


def _rank(run: "Run") -> tuple[int, int]:
    """FINISHED beats anything else; then the later run wins."""
    return (1 if run.info.status == "FINISHED" else 0, run.info.start_time or 0)


def _info(run: "Run") -> dict[str, Any]:
    """What the trial recorded about itself (``ctx.record``): dtypes, flags, the final-parameter hash."""
    try:
        info: dict[str, Any] = json.loads(run.data.tags.get(T.INFO, "{}"))
        return info
    except json.JSONDecodeError:  # clipped by the tag length limit
        return {}


def _typed(run: "Run", study: "Study") -> dict[str, Any]:
    """Levels, seeds and seed indices typed per the study (from the JSON tag; params as a fallback)."""
    text = run.data.tags.get(T.TRIAL)
    if text:
        typed: dict[str, Any] = json.loads(text)
        return typed
    levels = {}
    for factor in study.factors:
        raw = run.data.params.get(factor.name)
        levels[factor.name] = next((v for v in factor.all_levels if str(v) == raw or json.dumps(v) == raw), raw)
    seeds = {k[len(T.SEED_PREFIX):]: int(v) for k, v in run.data.params.items() if k.startswith(T.SEED_PREFIX)}
    return {"levels": levels, "seeds": seeds, "seed_index": {}, "params": {}}


def _iso(ms: int | None) -> str | None:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="seconds") if ms else None


# -- one-call shorthands (each opens its own handle) --------------------------------------


def load_results(
    study: "Study | str", variant: str | None = None, tracking_uri: str | None = None, execution: str | None = None
) -> tuple["pd.DataFrame", dict[str, Any]]:
    """:meth:`Records.results` of a freshly opened handle."""
    return Records.open(study, variant, tracking_uri).results(execution)


def load_curves(study: "Study | str", variant: str | None = None, tracking_uri: str | None = None, execution: str | None = None) -> "pd.DataFrame":
    """:meth:`Records.curves` of a freshly opened handle."""
    return Records.open(study, variant, tracking_uri).curves(execution)


def log_artifacts(
    study: "Study | str", folder: str | Path, execution: str | None = None, tracking_uri: str | None = None, artifact_path: str | None = None
) -> str:
    """:meth:`Records.log_artifacts` of a freshly opened handle."""
    return Records.open(study, None, tracking_uri).log_artifacts(folder, execution, artifact_path)


def list_executions(study: "Study | str", tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """:meth:`Records.executions` of a freshly opened handle."""
    return Records.open(study, None, tracking_uri).executions()


def study_status(study: "Study | str", tracking_uri: str | None = None) -> dict[str, Any]:
    """:meth:`Records.status` of a freshly opened handle."""
    return Records.open(study, None, tracking_uri).status()
