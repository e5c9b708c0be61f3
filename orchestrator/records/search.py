"""Records of the search phase of a tuned study: one MLflow run per search, its Tune trials nested under it.

Layout, under the execution's parent run::

    execution <id>                     run_kind=execution
    ├── search <cell>-s<index>         run_kind=search: the selected configuration as params
    │   │                              (``selected.<setting>``), the selection as JSON, the
    │   │                              search's configurations as an artifact
    │   ├── <cell>-s<index>-c<k>       run_kind=search_trial: one per configuration
    │   └── ...
    └── <cell>-r<replicate>            run_kind=trial: the reruns of the selected configuration

A search run is written in one go once its last configuration ended (created, logged, then
terminated FINISHED), so a driver killed mid-search leaves either a finished search or
none: resume (:meth:`SearchRecords.finished`) reads the selections of FINISHED search runs
of the lineage back and does not redo them.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Sequence

from . import tags as T
from .store import BATCH_KEYS, BATCH_METRICS, TAG_MAX, TrackingStore, chunks, clip, metric_entities, now_ms, param_entities

if TYPE_CHECKING:
    from ..tuning.ray_tune import SearchRun
    from .recorder import ExecutionRecorder

__all__ = ["KIND_SEARCH", "KIND_SEARCH_TRIAL", "SearchRecords"]

KIND_SEARCH = "search"
KIND_SEARCH_TRIAL = "search_trial"
SEARCH_ID = "search_id"
SEARCH_INDEX = "search_index"
SELECTION = "orchestrator.selection"
"""The selection as JSON (position, configuration, values, epochs): what resume reads back."""
SEARCH_ERROR = "orchestrator.search_error"
CONFIGURATION_STATE = "orchestrator.configuration_state"
ARTIFACT_SEARCH = "search.json"
SELECTED_PREFIX = "selected."


class SearchRecords:
    """The search runs of one execution: writes them (driver only) and reads finished ones back.

    Args:
        recorder: the execution's recorder, after :meth:`ExecutionRecorder.begin`.
    """

    def __init__(self, recorder: "ExecutionRecorder"):
        if recorder.info is None:
            raise RuntimeError("SearchRecords needs an execution: call ExecutionRecorder.begin() first")
        self.store: TrackingStore = recorder.store
        self.info = recorder.info
        study = recorder.study
        self._base = {
            T.STUDY: study.name,
            T.STUDY_HASH: study.definition_hash,
            T.VARIANT: str(study.variant),
            T.CODE_VERSION: recorder.code_version,
            T.EXECUTION_ID: self.info.execution_id,
            T.LINEAGE: self.info.lineage,
        }
        self.errors: list[str] = []

    def finished(self, search_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Selections (as recorded: ``Selection.to_dict()``) of the searches among ``search_ids`` that a FINISHED run of this lineage holds."""
        wanted = set(search_ids)
        found: dict[str, dict[str, Any]] = {}
        filter_string = f"tags.{T.LINEAGE} = '{self.info.lineage}' and tags.{T.RUN_KIND} = '{KIND_SEARCH}' and attributes.status = 'FINISHED'"
        for run in self.store.search(self.info.experiment_id, filter_string):
            search_id = run.data.tags.get(SEARCH_ID, "")
            text = run.data.tags.get(SELECTION)
            if search_id in wanted and text:
                try:
                    found[search_id] = dict(json.loads(text))
                except ValueError:  # clipped or damaged: the search is redone
                    continue
        return found

    def record(self, run: "SearchRun") -> str | None:
        """Write one search (FINISHED with its selection, or FAILED with why) and its configurations; returns its run id."""
        search = run.search
        client = self.store.client
        name = f"{search.cell_id[:8]}-s{search.index}"
        tags = {
            **self._base,
            T.RUN_KIND: KIND_SEARCH,
            SEARCH_ID: search.search_id,
            SEARCH_INDEX: str(search.index),
            T.CELL_ID: search.cell_id,
            T.MLFLOW_PARENT_RUN_ID: self.info.parent_run_id,
            T.MLFLOW_RUN_NAME: f"search {name}",
        }
        if run.selection is not None:
            tags[SELECTION] = clip(json.dumps(run.selection.to_dict(), sort_keys=True), TAG_MAX)
        if run.error:
            tags[SEARCH_ERROR] = clip(run.error, TAG_MAX)
        start = int(run.started_s * 1000) if run.started_s else now_ms()
        end = int(run.ended_s * 1000) if run.ended_s else now_ms()
        try:
            parent = client.create_run(self.info.experiment_id, start_time=start, tags=tags)
            run_id = parent.info.run_id
            params = {**{f"level.{k}": v for k, v in search.levels.items()}, "search_seed": search.seed, "budget": search.budget, "searcher": search.searcher.value,
                      "select": search.select, "goal": search.goal, "epochs": search.epochs, "scheduler": json.dumps(search.scheduler) if search.scheduler else "none"}
            if run.selection is not None:
                params.update({f"{SELECTED_PREFIX}{k}": v for k, v in run.selection.configuration.items()})
                params["selected.position"] = run.selection.position
            metrics = {"configurations": float(len(search.configurations)), "configurations_stopped": float(sum(o.state == "STOPPED" for o in run.outcomes)),
                       "configurations_failed": float(sum(o.state == "FAILED" for o in run.outcomes)), "search_time_s": max(end - start, 0) / 1000.0}
            if run.selection is not None:
                metrics[f"selected_{search.select}"] = run.selection.value
            for chunk in chunks(param_entities({k: str(v) for k, v in params.items()}), BATCH_KEYS):
                client.log_batch(run_id, params=chunk)
            client.log_batch(run_id, metrics=metric_entities(metrics, 0, end))
            client.log_text(run_id, json.dumps({**search.to_dict(), "outcomes": [o.to_dict() for o in run.outcomes]}, indent=1, default=str), ARTIFACT_SEARCH)
            for outcome in run.outcomes:
                self._configuration(run_id, search, outcome, name, start)
            client.set_terminated(run_id, "FINISHED" if run.selection is not None else "FAILED", end_time=end)
            return run_id
        except Exception as exc:  # noqa: BLE001 - the search is then redone on resume; the execution goes on
            self.errors.append(f"search {search.search_id}: {type(exc).__name__}: {exc}")
            return None

    def _configuration(self, parent_id: str, search: Any, outcome: Any, name: str, start: int) -> None:
        client = self.store.client
        configuration = search.configurations[outcome.position]
        tags = {
            **self._base,
            T.RUN_KIND: KIND_SEARCH_TRIAL,
            SEARCH_ID: search.search_id,
            T.CELL_ID: search.cell_id,
            T.MLFLOW_PARENT_RUN_ID: parent_id,
            T.MLFLOW_RUN_NAME: f"{name}-c{outcome.position}",
            CONFIGURATION_STATE: outcome.state,
        }
        if outcome.error:
            tags[T.INFO] = clip(json.dumps({"error": outcome.error}), TAG_MAX)
        child = client.create_run(self.info.experiment_id, start_time=start, tags=tags)
        params = param_entities({**{k: str(v) for k, v in configuration.items()}, "position": str(outcome.position)})
        metrics = [m for epoch, value in outcome.curve for m in metric_entities({search.select: value}, int(epoch))]
        metrics += metric_entities({k: v for k, v in outcome.metrics.items()}, int(outcome.epochs) + 1)
        first, rest = metrics[: BATCH_METRICS - len(params)], metrics[BATCH_METRICS - len(params):]
        client.log_batch(child.info.run_id, metrics=first, params=params[:BATCH_KEYS])
        for chunk in chunks(rest, BATCH_METRICS):
            client.log_batch(child.info.run_id, metrics=chunk)
        client.set_terminated(child.info.run_id, "FAILED" if outcome.state == "FAILED" else "FINISHED")
