"""The Ray Tune plug-ins of :mod:`orchestrator.tuning.ray_tune` (imports ``ray.tune``; imported only by it, lazily).

They are module-level classes so that Tune, which pickles its configuration for a restore
we never use, pickles them by reference; the driver-side state they hold (callbacks that
may hold locks, a stop event) is left out of the pickle.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Mapping, Sequence

from ray.tune import Callback, Stopper
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher

from .search import ConfigurationOutcome, Search, SearchFailed, select

__all__ = ["Collector", "EventStopper", "PerSearchScheduler", "PlannedSearcher", "TUNE_KEYS"]

TUNE_KEYS = frozenset(
    {
        "final", "epoch", "epochs", "time_this_iter_s", "done", "training_iteration", "timestamp", "time_total_s", "pid",
        "iterations_since_restore", "time_since_restore", "date", "hostname", "node_ip", "experiment_tag", "trial_id",
        "config", "checkpoint_dir_name", "should_checkpoint",
    }
)
"""Keys of a Tune result that are Tune's bookkeeping or ours, not metrics of the workload."""


class PlannedSearcher(Searcher):
    """Hands Tune the planned configurations, round-robin over the searches, in a fixed order.

    With ``sequential`` (an early-stopping scheduler is on), the next configuration of a
    search is handed out only once its previous one ended: the scheduler then sees every
    search's results in the same order on every run, so its decisions are reproducible.
    """

    def __init__(self, searches: Sequence[Search], sequential: bool) -> None:
        super().__init__(metric=None, mode=None)  # no strict metric check: a failed configuration reports no metric
        self._queues = [[(s, p) for p in range(len(s.configurations))] for s in searches]
        self._sequential = sequential
        self._busy: set[str] = set()
        self._trial_search: dict[str, str] = {}
        self._turn = 0

    def set_search_properties(self, metric: Any, mode: Any, config: Any, **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if not any(self._queues):
            return Searcher.FINISHED
        for k in range(len(self._queues)):
            i = (self._turn + k) % len(self._queues)
            queue = self._queues[i]
            if not queue or (self._sequential and queue[0][0].search_id in self._busy):
                continue
            search, position = queue.pop(0)
            self._turn = i + 1
            self._busy.add(search.search_id)
            self._trial_search[trial_id] = search.search_id
            return {"search_id": search.search_id, "position": position, "select": search.select, "trial": search.trial(position).to_dict()}
        return None  # every search with configurations left has one running: wait

    def on_trial_complete(self, trial_id: str, result: Any = None, error: bool = False) -> None:
        self._busy.discard(self._trial_search.pop(trial_id, ""))


class PerSearchScheduler(FIFOScheduler):
    """One ASHA per search: a configuration is only compared with configurations of its own search."""

    def __init__(self, searches: Sequence[Search]) -> None:
        super().__init__()
        spec = dict(searches[0].scheduler or {})
        self._grace = int(spec.get("grace_epochs", 1))
        self._factor = int(spec.get("reduction_factor", 3))
        self._horizon = {s.search_id: int(s.epochs or 1) for s in searches}
        self._metric = searches[0].select
        self._mode = "max" if searches[0].maximize else "min"
        self._inner: dict[str, ASHAScheduler] = {}

    def set_search_properties(self, metric: Any, mode: Any, **spec: Any) -> bool:
        return True

    def _for(self, trial: Any) -> ASHAScheduler:
        key = trial.config["search_id"]
        if key not in self._inner:
            # horizon + 1: the final report comes one step past the last epoch (see ray_tune._train_configuration)
            self._inner[key] = ASHAScheduler(
                time_attr="epoch", metric=self._metric, mode=self._mode, max_t=self._horizon[key] + 1,
                grace_period=min(self._grace, self._horizon[key]), reduction_factor=self._factor,
            )
        return self._inner[key]

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._for(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get("final"):
            return FIFOScheduler.CONTINUE
        return self._for(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        inner = self._for(trial)
        if trial.trial_id in inner._trial_info:
            inner.on_trial_remove(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self.on_trial_complete(tune_controller, trial, {})

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self.on_trial_complete(tune_controller, trial, {})


class EventStopper(Stopper):
    """Stops the whole experiment when the driver's stop event is set (Ctrl-C in the runner)."""

    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def __getstate__(self) -> dict:
        return {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        event = getattr(self, "_event", None)
        return bool(event is not None and event.is_set())


class Collector(Callback):
    """Driver side: collects each configuration's outcome; hands a search over when its last configuration ends."""

    def __init__(self, searches: Sequence[Search], runs: Mapping[str, Any], on_search_done: Callable[[Any], None]) -> None:
        self._by_id = {s.search_id: s for s in searches}
        self._runs = runs
        self._on_search_done = on_search_done
        self._curves: dict[str, list[tuple[int, float]]] = {}
        self._final: dict[str, dict[str, Any]] = {}
        self._last: dict[str, dict[str, float]] = {}

    def __getstate__(self) -> dict:
        return {}  # on_search_done may hold locks (a recorder); never restored

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run = self._runs[trial.config["search_id"]]
        if not run.started_s:
            run.started_s = time.time()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        select_by = trial.config["select"]
        if result.get("final"):
            self._final[trial.trial_id] = dict(result)
        elif select_by in result:
            self._curves.setdefault(trial.trial_id, []).append((int(result["epoch"]), float(result[select_by])))
            self._last[trial.trial_id] = {select_by: float(result[select_by])}

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        final = self._final.pop(trial.trial_id, None)
        curve = tuple(self._curves.pop(trial.trial_id, []))
        last = self._last.pop(trial.trial_id, {})
        position = int(trial.config["position"])
        if final is not None:
            metrics = {k: float(v) for k, v in final.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in TUNE_KEYS}
            outcome = ConfigurationOutcome(position, str(final.get("state", "FINISHED")), metrics, len(curve), final.get("error") or None, curve)
        else:  # stopped by the scheduler after its last intermediate report
            outcome = ConfigurationOutcome(position, "STOPPED", last, len(curve), None, curve)
        self._add(trial, outcome)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._final.pop(trial.trial_id, None)
        curve = tuple(self._curves.pop(trial.trial_id, []))
        error = f"the worker training this configuration died (Tune status {trial.status}; {getattr(trial, 'error_file', None) or 'no error file'})"
        self._add(trial, ConfigurationOutcome(int(trial.config["position"]), "FAILED", self._last.pop(trial.trial_id, {}), len(curve), error, curve))

    def _add(self, trial: Any, outcome: ConfigurationOutcome) -> None:
        run = self._runs[trial.config["search_id"]]
        run.outcomes.append(outcome)
        search = self._by_id[run.search.search_id]
        if len(run.outcomes) == len(search.configurations):
            run.outcomes.sort(key=lambda o: o.position)
            run.ended_s = time.time()
            try:
                run.selection = select(search, run.outcomes)
            except SearchFailed as exc:
                run.error = str(exc)
            self._on_search_done(run)
