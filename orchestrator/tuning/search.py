"""Searches as data: one per cell and search seed, its configurations drawn at design time.

A :class:`Search` is to the search phase what a trial is to the run phase: immutable,
JSON-serialisable, identified by a content hash, with its seed fixed at plan time from
(study seed, ``search`` stream, search index, cell, budget). Its configurations are drawn
from that seed before anything runs (:func:`orchestrator.tuning.space.draw`), and every
configuration of one search trains with the same training seeds (derived from the search
seed), so configurations are compared on common random numbers and the same search seed
always selects the same configuration.

:func:`select` turns what came back into a :class:`Selection`; a search in which no
configuration finished with a finite selection metric raises :class:`SearchFailed`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..errors import OrchestratorError
from ..ids import canonical_json, content_hash, derive_seed
from .space import Searcher, draw, space_to_dict

if TYPE_CHECKING:
    from ..design.trial import Trial
    from .spec import Tuning

__all__ = ["ConfigurationOutcome", "Search", "SearchFailed", "Selection", "plan_searches", "search_seed", "select"]

SEARCH_STREAM = "search"


class SearchFailed(OrchestratorError):
    """No configuration of a search finished with a finite selection metric."""


def search_seed(study_seed: int, cell_id: str, budget: int, index: int) -> int:
    """The seed of search ``index`` of a cell at a budget: 63 bits of SHA-256, like every seed here.

    The budget is part of the key, so searches at different budgets are independent draws
    (their variance is resampled honestly per budget), even when the budget is a fixed
    parameter and not part of the cell.
    """
    key = {"study_seed": int(study_seed), "stream": SEARCH_STREAM, "index": int(index), "cell": cell_id, "budget": int(budget)}
    return int.from_bytes(hashlib.sha256(canonical_json(key).encode("ascii")).digest()[:8], "big") >> 1


@dataclass(frozen=True)
class Search:
    """One search of one cell: what Ray Tune runs, fixed before it runs.

    Attributes:
        search_id: content hash of everything below (a changed declaration is a new search).
        study, variant: where it belongs.
        cell_id, levels: the cell it tunes.
        index: the search index within the cell (the ``search`` stream index).
        seed: the search seed.
        budget: configurations tried.
        epochs: epochs per configuration during the search (None: the study's setting).
        setting: the workload setting ``epochs`` is given as.
        space: the cell's flat space, as JSON-like data.
        searcher: how the configurations were drawn.
        configurations: the configurations, in the order they are tried.
        select, goal: the selection metric and its goal.
        scheduler: the early-stopping scheduler as data (``{"kind": "asha", ...}``) or None.
        training_seeds: the seeds every configuration trains with (one per study stream).
        params: the study's fixed parameters.
        workload: the workload reference.
        resources: per-configuration resources (the study's per-trial resources).
    """

    search_id: str
    study: str
    variant: str
    cell_id: str
    levels: Mapping[str, Any]
    index: int
    seed: int
    budget: int
    epochs: int | None
    setting: str
    space: Mapping[str, Any]
    searcher: Searcher
    configurations: tuple[Mapping[str, Any], ...]
    select: str
    goal: str
    scheduler: Mapping[str, Any] | None
    training_seeds: Mapping[str, int]
    params: Mapping[str, Any]
    workload: str
    resources: Mapping[str, Any] = field(default_factory=lambda: {"cpus": 1.0, "gpus": 0.0, "memory_mb": None, "custom": {}})

    @property
    def maximize(self) -> bool:
        return self.goal == "maximize"

    def trial(self, position: int) -> "Trial":
        """The trial that trains configuration ``position`` (what a Tune trial runs)."""
        from ..design.trial import Resources, Trial

        configuration = dict(self.configurations[position])
        params = {**dict(self.params), **configuration}
        if self.epochs is not None:
            params[self.setting] = int(self.epochs)
        return Trial(
            study=self.study,
            variant=self.variant,
            trial_id="t" + content_hash({"search": self.search_id, "configuration": position}, 15),
            cell_id=self.cell_id,
            replicate=position,
            levels=dict(self.levels),
            params=params,
            seeds=dict(self.training_seeds),
            seed_index={name: 0 for name in self.training_seeds},
            workload=self.workload,
            resources=Resources.from_dict(self.resources),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "search_id": self.search_id,
            "study": self.study,
            "variant": self.variant,
            "cell_id": self.cell_id,
            "levels": dict(self.levels),
            "index": self.index,
            "seed": self.seed,
            "budget": self.budget,
            "epochs": self.epochs,
            "setting": self.setting,
            "space": dict(self.space),
            "searcher": self.searcher.value,
            "configurations": [dict(c) for c in self.configurations],
            "select": self.select,
            "goal": self.goal,
            "scheduler": dict(self.scheduler) if self.scheduler else None,
            "training_seeds": dict(self.training_seeds),
            "params": dict(self.params),
            "workload": self.workload,
            "resources": dict(self.resources),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Search":
        values = dict(data)
        values["searcher"] = Searcher(values["searcher"])
        values["configurations"] = tuple(dict(c) for c in values["configurations"])
        return cls(**values)


def plan_searches(
    tuning: "Tuning",
    *,
    study: str,
    variant: str,
    study_seed: int,
    cells: Sequence[tuple[str, Mapping[str, Any]]],
    params: Mapping[str, Any],
    workload: str,
    streams: Sequence[str],
    resources: Mapping[str, Any] | None = None,
) -> list["Search"]:
    """Every search of a study: ``tuning.searches`` per cell, in cell order.

    Args:
        tuning: the validated declaration.
        study, variant: names the searches belong to.
        study_seed: the study seed every search seed derives from.
        cells: ``(cell_id, levels)`` of each cell of the design.
        params: the study's fixed parameters.
        workload: the workload reference.
        streams: the study's seed streams (each configuration trains with one seed per stream).
        resources: per-trial resources, as ``Resources.to_dict()``.
    """
    budget = tuning.the_budget
    searcher = tuning.the_searcher
    scheduler = tuning.scheduler.to_dict() if tuning.scheduler is not None else None
    out: list[Search] = []
    for cell_id, levels in cells:
        count = budget.configurations_for(levels)
        space = tuning.space_for(levels)
        for index in range(int(tuning.searches)):
            seed = search_seed(study_seed, cell_id, count, index)
            configurations = tuple(draw(space, searcher, count, seed))
            training_seeds = {stream: derive_seed(seed, stream, 0) for stream in streams if stream != SEARCH_STREAM}
            body = {
                "study": study,
                "variant": variant,
                "cell_id": cell_id,
                "levels": dict(levels),
                "index": index,
                "seed": seed,
                "budget": len(configurations),
                "epochs": budget.epochs,
                "setting": budget.setting,
                "space": space_to_dict(space),
                "searcher": searcher.value,
                "configurations": [dict(c) for c in configurations],
                "select": tuning.select,
                "goal": str(getattr(tuning.goal, "value", tuning.goal)),
                "scheduler": scheduler,
                "training_seeds": training_seeds,
                "params": dict(params),
                "workload": workload,
                "resources": dict(resources or {"cpus": 1.0, "gpus": 0.0, "memory_mb": None, "custom": {}}),
            }
            out.append(Search.from_dict({"search_id": "s" + content_hash(body, 15), **body}))
    return out


@dataclass(frozen=True)
class ConfigurationOutcome:
    """What one configuration of a search produced.

    Attributes:
        position: its index in the search's configurations.
        state: ``FINISHED`` (trained in full or diverged), ``STOPPED`` (by the scheduler),
            ``FAILED`` (raised, or its worker died).
        metrics: the last metrics it reported (final metrics when FINISHED).
        epochs: epochs it reported the selection metric for.
        error: traceback text of a FAILED configuration.
        curve: ``[(epoch, value), ...]`` of the selection metric.
    """

    position: int
    state: str
    metrics: Mapping[str, float]
    epochs: int = 0
    error: str | None = None
    curve: tuple[tuple[int, float], ...] = ()

    def value(self, metric: str) -> float:
        """The selection metric (NaN when missing, not finite, or the training diverged)."""
        value = self.metrics.get(metric)
        if value is None or self.metrics.get("diverged", 0.0) == 1.0:
            return math.nan
        value = float(value)
        return value if math.isfinite(value) else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"position": self.position, "state": self.state, "metrics": dict(self.metrics), "epochs": self.epochs, "error": self.error, "curve": [list(p) for p in self.curve]}


@dataclass(frozen=True)
class Selection:
    """The configuration a search selected, and why.

    Attributes:
        search_id: the search.
        position: index of the selected configuration.
        configuration: the selected settings (what the reruns run with).
        value: its selection metric.
        values: the selection metric of every configuration (NaN: failed, diverged, none).
        epochs: epochs every configuration reached (less than the full horizon: stopped early).
    """

    search_id: str
    position: int
    configuration: Mapping[str, Any]
    value: float
    values: tuple[float, ...]
    epochs: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "search_id": self.search_id,
            "position": self.position,
            "configuration": dict(self.configuration),
            "value": self.value,
            "values": [None if math.isnan(v) else v for v in self.values],
            "epochs": list(self.epochs),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Selection":
        return cls(
            search_id=data["search_id"],
            position=int(data["position"]),
            configuration=dict(data["configuration"]),
            value=float(data["value"]),
            values=tuple(math.nan if v is None else float(v) for v in data["values"]),
            epochs=tuple(int(e) for e in data["epochs"]),
        )


def select(search: Search, outcomes: Sequence[ConfigurationOutcome]) -> Selection:
    """The best configuration among those that trained longest (a stopped one never wins on a shorter horizon).

    Ties go to the earlier configuration, so the selection is a function of the outcomes alone.

    Raises:
        SearchFailed: no configuration has a finite selection metric.
    """
    by_position = {o.position: o for o in outcomes}
    values = tuple(by_position[p].value(search.select) if p in by_position else math.nan for p in range(len(search.configurations)))
    epochs = tuple(by_position[p].epochs if p in by_position else 0 for p in range(len(search.configurations)))
    usable = [p for p, v in enumerate(values) if not math.isnan(v)]
    if not usable:
        states = ", ".join(f"{o.position}: {o.state}" for o in sorted(outcomes, key=lambda o: o.position)) or "no outcome"
        raise SearchFailed(
            f"search {search.search_id} of cell {dict(search.levels)}: no configuration finished with a finite {search.select!r} "
            f"(configurations {states}). Expected the workload to report {search.select!r}; check the space's ranges (every configuration diverged?) "
            "and the workload's errors in the search's MLflow run."
        )
    horizon = max(epochs[p] for p in usable)
    finalists = [p for p in usable if epochs[p] == horizon]
    sign = -1.0 if search.maximize else 1.0
    best = min(finalists, key=lambda p: (sign * values[p], p))
    return Selection(search.search_id, best, dict(search.configurations[best]), values[best], values, epochs)
