"""One trial's MLflow run: its params, tags and outcome, written or found again.

Shared by the driver's recorder (:mod:`.recorder`) and the journal's replay (:mod:`.replay`),
so neither imports the other.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..design.trial import Trial
from . import tags as T
from .store import BATCH_KEYS, BATCH_METRICS, PARAM_MAX, TAG_MAX, TrackingStore, chunks, clip, metric_entities, param_entities, tag_entities
from .summary import trial_run_name

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient


WRITERS_ENV = "ORCHESTRATOR_RECORD_WRITERS"
"""Writer threads for per-trial runs (default: 1 for SQLite, 16 otherwise)."""


RETRY_ENV = "ORCHESTRATOR_RECORD_RETRY_S"
"""Seconds the store may keep failing before records are left pending in the journal."""


DEFAULT_RETRY_BUDGET_S = 120.0


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


    return True


def default_writers(uri: str) -> int:
    """Writer threads for a store: one for SQLite (it takes one writer at a time), 16 for a server or database.

    A call to a server is mostly waiting (network, the server's database): the plain client
    got 7.6 records/s from 16 threads and 5.9 from 8 on the same server (bench/RESULTS.md, Records).
    """
    env = os.environ.get(WRITERS_ENV)
    if env:
        return max(1, int(env))
    return 1 if uri.startswith("sqlite:") else 16


def default_retry_budget_s() -> float:
    """How long the store may stay unreachable before records are left pending (``$ORCHESTRATOR_RECORD_RETRY_S``, else 120 s)."""
    return float(os.environ.get(RETRY_ENV, DEFAULT_RETRY_BUDGET_S))


def trial_tags(header: Mapping[str, Any], trial: Trial) -> dict[str, str]:
    """Tags a trial's run is created with (the execution's base tags, the trial's identity)."""
    return {
        **header["base_tags"],
        T.RUN_KIND: T.KIND_TRIAL,
        T.TRIAL_ID: trial.trial_id,
        T.CELL_ID: trial.cell_id,
        T.REPLICATE: str(trial.replicate),
        T.MLFLOW_PARENT_RUN_ID: header["parent_run_id"],
        T.MLFLOW_RUN_NAME: trial_run_name(trial),
        T.TRIAL: trial_typed(trial),
    }


def outcome_tags(entry: Mapping[str, Any]) -> dict[str, str]:
    """Tags known once a trial ended: attempts, the final step, the worker's environment, its info."""
    result = entry["result"]
    tags = {T.ATTEMPTS: str(result.get("attempts", 1)), T.FINAL_STEP: str(entry["final_step"])}
    if entry.get("retry_reasons"):
        tags[T.RETRY_REASONS] = "; ".join(entry["retry_reasons"])
    environment = entry.get("environment") or {}
    tags.update({f"{T.ENV_PREFIX}{k}": clip(str(v), 250) for k, v in environment.items() if v is not None})
    if result.get("info"):
        tags[T.INFO] = clip(json.dumps(result["info"], sort_keys=True, default=str), TAG_MAX)
    return tags


def write_trial_run(
    client: "MlflowClient", header: Mapping[str, Any], entry: Mapping[str, Any], run_id: str | None, on_created: Callable[[str], None] = lambda run_id: None
) -> str:
    """Write one trial's run from its journal entry; returns the run id.

    With ``run_id`` None a run is created (tags in ``create_run``, params and the first
    metrics in one ``log_batch``); otherwise that run (created by live metrics, or left
    half-written by a driver that died) is completed. Every write is idempotent (MLflow
    ignores a metric logged twice with the same step, timestamp and value, and a param
    logged twice with the same value), so a write cut short is simply written again.
    Three calls for a short trial: ``create_run``, ``log_batch``, ``set_terminated``.
    """
    trial = Trial.from_dict(entry["trial"])
    result = entry["result"]
    tags = outcome_tags(entry)
    ended = int(entry["ended_ms"])
    metrics = [m for step, values, ts in entry.get("curve") or () for m in metric_entities(values, step, ts)]
    metrics += metric_entities(result.get("metrics") or {}, int(entry["final_step"]), ended)
    started = entry.get("started_ms") or ended
    if run_id is None:
        run = client.create_run(header["experiment_id"], start_time=started, tags={**trial_tags(header, trial), **tags})
        run_id = str(run.info.run_id)
        on_created(run_id)
        params = param_entities(trial_params(trial))
        first_params, params = params[:BATCH_KEYS], params[BATCH_KEYS:]
        first_metrics, metrics = metrics[: BATCH_METRICS - len(first_params)], metrics[BATCH_METRICS - len(first_params):]
        client.log_batch(run_id, metrics=first_metrics, params=first_params)
        for chunk in chunks(params, BATCH_KEYS):
            client.log_batch(run_id, params=chunk)
    else:
        client.log_batch(run_id, tags=tag_entities(tags))
        for chunk in chunks(param_entities(trial_params(trial)), BATCH_KEYS):
            client.log_batch(run_id, params=chunk)
    for chunk in chunks(metrics, BATCH_METRICS):
        client.log_batch(run_id, metrics=chunk)
    if result.get("error"):
        client.log_text(run_id, result["error"], T.ARTIFACT_TRACEBACK)
    wall = (result.get("metrics") or {}).get("wall_time_s")
    end = int(started + wall * 1000) if entry.get("started_ms") and wall is not None and int(result.get("attempts", 1)) == 1 else ended
    client.set_terminated(run_id, result["state"], end_time=end)
    return run_id


def find_trial_runs(store: TrackingStore, experiment_id: str, execution_id: str, trial_id: str | None = None) -> dict[str, list["Run"]]:
    """An execution's trial runs by trial id (one search)."""
    query = f"tags.{T.EXECUTION_ID} = '{execution_id}' and tags.{T.RUN_KIND} = '{T.KIND_TRIAL}'"
    if trial_id is not None:
        query += f" and tags.{T.TRIAL_ID} = '{trial_id}'"
    found: dict[str, list[Run]] = {}
    for run in store.search(experiment_id, query):
        found.setdefault(run.data.tags.get(T.TRIAL_ID, ""), []).append(run)
    return found
