"""A trial (one cell x replicate, with its seeds) and what came back from running it.

A :class:`Trial` is immutable and JSON-serialisable: it is what travels to a Ray worker.
A :class:`TrialResult` is the record of one attempt: state, final metrics, error text.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from ..definition.study import Resources

__all__ = ["Resources", "Trial", "TrialResult", "TrialState"]


class TrialState(str, enum.Enum):
    """Where a trial stands. Diverged training is FINISHED with the metric ``diverged = 1``."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"

    def is_finished(self) -> bool:
        return self is TrialState.FINISHED

    def is_terminal(self) -> bool:
        return self in (TrialState.FINISHED, TrialState.FAILED, TrialState.KILLED)

    def needs_run(self) -> bool:
        """Whether resume runs this trial again (everything but FINISHED)."""
        return self is not TrialState.FINISHED


@dataclass(frozen=True)
class Trial:
    """One concrete run of a study: a design cell, a replicate, its seeds and parameters.

    Attributes:
        study: study name.
        variant: the variant it was planned under (``smoke``, ``full``, ...).
        trial_id: content hash of (cell, seeds, params); stable across processes.
        cell_id: content hash of the levels.
        replicate: index of the replicate within the cell (0-based).
        levels: factor name -> level of this cell.
        params: the fixed parameters every trial of the study receives.
        seeds: seed stream name (``init``, ``data``, ``reduction``, user streams) -> seed.
        seed_index: seed stream name -> index of that stream's seed (0-based).
        workload: built-in workload name or ``"package.module:function"``.
        order: position in the (randomised) run order.
        block: the block this trial belongs to, if the study is blocked.
        resources: what the trial asks of the cluster.
        retries: how often a raising trial is tried again.
    """

    study: str
    variant: str
    trial_id: str
    cell_id: str
    replicate: int
    levels: Mapping[str, Any]
    params: Mapping[str, Any]
    seeds: Mapping[str, int]
    seed_index: Mapping[str, int]
    workload: str
    order: int = 0
    block: str | None = None
    resources: Resources = field(default_factory=Resources)
    retries: int = 0

    @property
    def config(self) -> dict[str, Any]:
        """Parameters overlaid by levels: what a workload reads its settings from."""
        return {**dict(self.params), **dict(self.levels)}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["levels"] = dict(self.levels)
        data["params"] = dict(self.params)
        data["seeds"] = dict(self.seeds)
        data["seed_index"] = dict(self.seed_index)
        data["resources"] = self.resources.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Trial":
        values = dict(data)
        values["resources"] = Resources.from_dict(values.get("resources") or {})
        return cls(**values)


@dataclass
class TrialResult:
    """What one attempt at a trial produced.

    Attributes:
        trial_id: the trial it belongs to.
        state: FINISHED (diverged or not), FAILED (raised) or KILLED (cancelled).
        metrics: final metrics (floats); always holds ``diverged`` and ``wall_time_s`` when FINISHED.
        info: what actually happened: effective dtypes, fallbacks, audit findings, flags.
        error: the traceback text of a FAILED trial.
        attempts: how many attempts were made.
        run_id: the MLflow run that records it, once recorded.
    """

    trial_id: str
    state: TrialState
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    attempts: int = 1
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrialResult":
        values = dict(data)
        values["state"] = TrialState(values["state"])
        return cls(**values)
