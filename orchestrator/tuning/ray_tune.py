"""The Ray Tune bridge: the only module that imports ``ray.tune`` (lazily, inside functions).

All pending searches of an execution run as **one** Tune experiment, so the searches of
different cells run concurrently on the cluster and share Tune's actor pool (actor reuse:
one actor trains configuration after configuration, without a new worker process each).

* The configurations are data drawn at plan time (:class:`~orchestrator.tuning.search.Search`);
  :class:`_PlannedSearcher`, a Tune ``Searcher``, hands them to Tune in a fixed order,
  round-robin over the searches. With an early-stopping scheduler it hands out the next
  configuration of a search only once the previous one ended, so the scheduler's decisions
  (and the selection) are reproducible while different searches still run side by side.
* :class:`_PerSearchScheduler` keeps one ASHA per search: a configuration is only ever
  compared with configurations of its own search, never with another cell's.
* Each Tune trial runs the orchestrator's own worker code (:func:`execute_trial`) on the
  trial :meth:`Search.trial` builds; per-epoch values of the selection metric the workload
  logs are reported to Tune (so ASHA can stop it), then the final metrics once.
* A driver-side callback collects the outcomes and hands each search, as soon as its last
  configuration ends, to ``on_search_done`` (which selects and records it): a driver killed
  mid-experiment leaves every finished search recorded, and a rerun skips them.

Why one experiment and not one ``Tuner`` per cell: a ``Tuner`` drives its experiment from
the calling thread, so concurrent cells would need one driver thread or task each; one
experiment gets the concurrency, the shared actor pool and a single result loop for free.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from .search import ConfigurationOutcome, Search, Selection

__all__ = ["SearchRun", "run_searches"]

_QUIET_ENV = {
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no CSV/JSON/TensorBoard files per trial: MLflow records the search
    "TUNE_GLOBAL_CHECKPOINT_S": "600",  # resume is decided from the records, not from Tune's experiment state
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_TRAIN_V2_ENABLED": "0",
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",  # a failed configuration reports its error, not the metric
    "TUNE_DISABLE_SIGINT_HANDLER": "1",  # the search phase owns Ctrl-C: it stops the experiment through the stop event
}


@dataclass
class SearchRun:
    """What one search produced: every configuration's outcome and the selection (or why there is none)."""

    search: Search
    outcomes: list[ConfigurationOutcome] = field(default_factory=list)
    selection: Selection | None = None
    error: str | None = None
    started_s: float = 0.0
    ended_s: float = 0.0

    @property
    def finished(self) -> bool:
        return self.selection is not None


def _train_configuration(config: Mapping[str, Any]) -> None:
    """The Tune trainable: train one configuration with the orchestrator's worker code; never raises for it."""
    from ray import tune

    from ..execution.worker import execute_trial

    metric = str(config["select"])
    epoch = [0]

    def sink(trial_id: str, step: int, metrics: Mapping[str, float]) -> None:
        if metric in metrics:
            epoch[0] += 1
            tune.report({metric: float(metrics[metric]), "epoch": epoch[0], "final": 0})

    result = execute_trial(dict(config["trial"]), sink=sink)
    final = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
    if metric in result.metrics and not math.isfinite(float(result.metrics[metric])):
        final.pop(metric, None)
    # one step past the last epoch: ASHA stops a trial whose time reaches its horizon, and this report must arrive whole
    tune.report({**final, "epoch": epoch[0] + 1, "epochs": epoch[0], "final": 1, "state": result.state.value, "error": result.error or ""})


def run_searches(
    searches: Sequence[Search],
    *,
    on_search_done: Callable[[SearchRun], None] = lambda run: None,
    max_concurrent: int | None = None,
    reuse_actors: bool = True,
    stop: threading.Event | None = None,
    storage: str | None = None,
) -> dict[str, SearchRun]:
    """Run searches on Ray Tune (Ray must be initialised); returns ``search_id -> SearchRun``.

    Args:
        searches: the searches to run (all with the same selection metric, goal and scheduler).
        on_search_done: called on the driver as soon as a search's last configuration ended
            (with its selection, or its error when no configuration could be selected).
        max_concurrent: configurations trained at once (default: what the cluster holds).
        reuse_actors: keep one Tune actor per slot and hand it configuration after configuration.
        stop: set it to stop the experiment (unfinished searches are left unrecorded).
        storage: Tune's experiment folder (default: a temporary folder, removed afterwards).

    Example:
        >>> runs = run_searches(plan_searches(tuning, ...))          # doctest: +SKIP
        >>> runs[search_id].selection.configuration                 # doctest: +SKIP
        {'lr': 0.0316}
    """
    runs = {s.search_id: SearchRun(s) for s in searches}
    if not searches:
        return runs
    keys = {(s.select, s.goal, str(s.scheduler)) for s in searches}
    if len(keys) > 1:
        from ..errors import OrchestratorError

        raise OrchestratorError(f"run_searches: expected searches with one selection metric, goal and scheduler, found {sorted(keys)}; run them in groups")
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    import ray
    from ray import tune

    resources = searches[0].resources
    per_trial = {"cpu": float(resources.get("cpus", 1.0)), "gpu": float(resources.get("gpus", 0.0))}
    if max_concurrent is None:
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        max_concurrent = max(1, int(cpus // per_trial["cpu"])) if per_trial["cpu"] > 0 else None
    sequential = bool(searches[0].scheduler)
    folder = storage or tempfile.mkdtemp(prefix="orchestrator-tune-")
    event = stop or threading.Event()

    from .tune_parts import Collector, EventStopper, PerSearchScheduler, PlannedSearcher

    tuner = tune.Tuner(
        tune.with_resources(_train_configuration, per_trial),
        tune_config=tune.TuneConfig(
            search_alg=PlannedSearcher(searches, sequential),
            scheduler=PerSearchScheduler(searches) if sequential else None,
            num_samples=-1,  # the searcher says when it is finished
            max_concurrent_trials=max_concurrent,
            reuse_actors=reuse_actors,
            trial_name_creator=lambda t: f"{t.config['search_id'][:9]}-{t.config['position']}",
            trial_dirname_creator=lambda t: f"{t.config['search_id'][:9]}-{t.config['position']}-{t.trial_id}",
        ),
        run_config=tune.RunConfig(
            name="search",
            storage_path=os.path.abspath(folder),
            verbose=0,
            stop=EventStopper(event),
            callbacks=[Collector(searches, runs, on_search_done)],
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    # Tune's end-of-run summary reads per-trial result files, which its loggers (off) would have written
    quiet = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        tuner.fit()
    finally:
        quiet.setLevel(level)
        if storage is None:
            shutil.rmtree(folder, ignore_errors=True)
    return runs
