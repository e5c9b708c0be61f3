"""The search phase of a tuned study: the step before the run of the trials.

For the trials an execution still has to run, :func:`search_phase` finds the searches they
need, reads back the selections of searches a FINISHED search run of the lineage already
holds (resume: a finished search is never redone), runs the others on Ray Tune (or, with
``in_process``, serially in this process with the same worker code), records each search
as it ends, and returns the trials with their selected configuration filled into their
parameters. Trials whose search selected nothing come back as failures to record.

The trials keep their planned ``trial_id``: the selection is a function of the search's
seed and declaration, both part of the plan.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from ..errors import OrchestratorError
from .search import SEARCH_STREAM, ConfigurationOutcome, Search, SearchFailed, Selection, plan_searches, select

if TYPE_CHECKING:
    from ..definition.study import Study
    from ..design.plan import Plan
    from ..design.trial import Trial
    from ..records.recorder import ExecutionRecorder
    from .ray_tune import SearchRun

__all__ = ["SearchInterrupted", "SearchPhase", "run_in_process", "search_phase", "searches_of"]


class SearchInterrupted(OrchestratorError):
    """Ctrl-C during the search phase: finished searches are recorded, the rest wait for a resume."""


@dataclass
class SearchPhase:
    """What the search phase did.

    Attributes:
        trials: the trials to run, their selected configuration in their parameters.
        failed: ``(trial, reason)`` for trials whose search selected nothing.
        searched: searches run by this execution.
        reused: searches whose selection was read back from a finished search run.
        failed_searches: searches that selected nothing (their error text).
        seconds: wall time of the phase.
    """

    trials: list["Trial"] = field(default_factory=list)
    failed: list[tuple["Trial", str]] = field(default_factory=list)
    searched: int = 0
    reused: int = 0
    failed_searches: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def searches_of(study: "Study", plan: "Plan") -> dict[tuple[str, int], Search]:
    """Every search of a planned tuned study, keyed by ``(cell_id, search index)``."""
    tuning = study.tuning
    if tuning is None:
        return {}
    cells = [(cell.cell_id, dict(cell.levels)) for cell in plan.cells]
    streams = [s for s in study.seed_streams if s != SEARCH_STREAM]
    planned = plan_searches(
        tuning, study=study.name, variant=str(study.variant), study_seed=study.seed, cells=cells, params=dict(study.params),
        workload=study.workload, streams=streams, resources=study.resources.to_dict(),
    )
    return {(s.cell_id, s.index): s for s in planned}


def run_in_process(searches: Sequence[Search], on_search_done: Callable[["SearchRun"], None], stop: threading.Event | None = None) -> dict[str, "SearchRun"]:
    """Run searches here, serially, with the same worker code as on Ray Tune (no early stopping).

    Raises:
        OrchestratorError: a search declares a scheduler (early stopping needs Ray Tune).
    """
    from ..execution.worker import execute_trial
    from .ray_tune import SearchRun

    runs: dict[str, SearchRun] = {}
    for search in searches:
        if search.scheduler:
            raise OrchestratorError(
                "an early-stopping scheduler (ASHA) needs Ray Tune: expected a run on Ray, found --in-process. Run without --in-process, or drop the scheduler from the variant."
            )
        run = runs[search.search_id] = SearchRun(search, started_s=time.time())
        for position in range(len(search.configurations)):
            if stop is not None and stop.is_set():
                return runs
            curve: list[tuple[int, float]] = []

            def sink(trial_id: str, step: int, metrics: Mapping[str, float], curve: list = curve) -> None:
                if search.select in metrics:
                    curve.append((len(curve) + 1, float(metrics[search.select])))

            result = execute_trial(search.trial(position), sink=sink)
            run.outcomes.append(ConfigurationOutcome(position, result.state.value, dict(result.metrics), len(curve), result.error, tuple(curve)))
        run.ended_s = time.time()
        try:
            run.selection = select(search, run.outcomes)
        except SearchFailed as exc:
            run.error = str(exc)
        on_search_done(run)
    return runs


def search_phase(
    study: "Study",
    plan: "Plan",
    recorder: "ExecutionRecorder",
    to_run: Sequence["Trial"],
    *,
    in_process: bool = False,
    max_concurrent: int | None = None,
    stop: threading.Event | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> SearchPhase:
    """Select a configuration for every trial in ``to_run`` (see the module docstring).

    Ray must already be connected unless ``in_process``.
    """
    from ..records.search import SearchRecords

    start = time.monotonic()
    phase = SearchPhase()
    by_key = searches_of(study, plan)
    needed: dict[str, Search] = {}
    for trial in to_run:
        search = by_key.get((trial.cell_id, int(trial.seed_index.get(SEARCH_STREAM, 0))))
        if search is None:  # pragma: no cover - every planned trial of a tuned study has its search
            raise OrchestratorError(f"trial {trial.trial_id}: no search planned for cell {trial.cell_id}; expected one per cell and search index")
        needed[search.search_id] = search
    records = SearchRecords(recorder)
    selections: dict[str, Selection] = {}
    for search_id, recorded in records.finished(list(needed)).items():
        try:
            selections[search_id] = Selection.from_dict(recorded)
        except (KeyError, TypeError, ValueError):  # damaged: the search is redone
            continue
    phase.reused = len(selections)
    pending = [s for s in needed.values() if s.search_id not in selections]
    if pending:
        log(f"search phase: {len(pending)} search(es) to run, {phase.reused} finished before; {sum(len(s.configurations) for s in pending)} configurations")

    def done(run: "SearchRun") -> None:
        records.record(run)
        phase.searched += 1
        if run.selection is not None:
            selections[run.search.search_id] = run.selection
        else:
            phase.failed_searches[run.search.search_id] = run.error or "no selection"
        log(f"search {run.search.cell_id[:8]}-s{run.search.index} ({phase.searched}/{len(pending)}): "
            + (f"selected {dict(run.selection.configuration)} ({run.search.select}={run.selection.value:.4g})" if run.selection else f"failed: {run.error}"))

    if pending:
        stop = stop or threading.Event()
        from ..execution.executor import stop_signals

        # Ctrl-C or SIGTERM stops the experiment: finished searches stay recorded, the rest are left for a resume
        with stop_signals(lambda signum, frame: stop.set()):
            if in_process:
                run_in_process(pending, done, stop)
            else:
                from .ray_tune import run_searches

                groups: dict[str, list[Search]] = {}
                for search in pending:
                    groups.setdefault(f"{search.select}|{search.goal}|{search.scheduler}", []).append(search)
                for group in groups.values():
                    if stop.is_set():
                        break
                    run_searches(group, on_search_done=done, max_concurrent=max_concurrent, stop=stop)
        if stop.is_set():
            raise SearchInterrupted(
                f"interrupted in the search phase after {phase.searched} of {len(pending)} searches: the finished ones are recorded; "
                "run again to resume (finished searches are not redone)"
            )
    for trial in to_run:
        search = by_key[(trial.cell_id, int(trial.seed_index.get(SEARCH_STREAM, 0)))]
        selection = selections.get(search.search_id)
        if selection is None:
            reason = phase.failed_searches.get(search.search_id)
            if reason is not None:
                phase.failed.append((trial, f"the search that tunes this trial selected nothing: {reason}"))
            continue  # stopped before its search ended: left for a resume
        phase.trials.append(dataclasses.replace(trial, params={**dict(trial.params), **dict(selection.configuration)}))
    phase.seconds = time.monotonic() - start
    return phase
