"""Search spaces: what a tuned setting may take, declared per cell and drawn at design time.

A space maps setting names to distributions (:class:`LogUniform`, :class:`Uniform`,
:class:`Choice`). A :class:`PerLevel` space nests spaces under the levels of a factor, so
each optimizer gets its own settings and ranges (``momentum`` only exists for
``momentum``, ``beta2`` only for ``adam``). A cell sees exactly the space of its level.

Configurations are drawn here, from the search seed, with numpy and scipy only (no Ray):
they are data fixed before Ray Tune runs them, like every seed of the project.

Example:
    >>> space = PerLevel("optimizer", {
    ...     "sgd": {"lr": LogUniform(1e-3, 1.0)},
    ...     "momentum": {"lr": LogUniform(1e-3, 1.0), "momentum": Uniform(0.5, 0.99)},
    ... })
    >>> sorted(space.for_levels({"optimizer": "momentum"}))
    ['lr', 'momentum']
    >>> draw({"lr": LogUniform(1e-3, 1.0)}, Searcher.GRID, 3, seed=0)
    [{'lr': 0.001}, {'lr': 0.0316227766016838}, {'lr': 1.0}]
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

__all__ = ["Choice", "Distribution", "LogUniform", "PerLevel", "Searcher", "Space", "Uniform", "draw", "grid_points_per_axis"]


@dataclass(frozen=True)
class LogUniform:
    """A positive number whose logarithm is uniform on ``[log low, log high]`` (learning rates)."""

    low: float
    high: float

    def from_unit(self, u: float) -> float:
        """The value at quantile ``u`` in [0, 1] (the bounds exactly at 0 and 1)."""
        if u <= 0.0 or u >= 1.0:
            return float(self.low if u <= 0.0 else self.high)
        return float(math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low))))

    def grid(self, k: int) -> list[float]:
        """``k`` points evenly spaced on the log scale, both ends included (one point: the geometric middle)."""
        if k == 1:
            return [self.from_unit(0.5)]
        return [self.from_unit(i / (k - 1)) for i in range(k)]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "loguniform", "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Uniform:
    """A number uniform on ``[low, high]`` (momentum, weight decay on a linear scale)."""

    low: float
    high: float

    def from_unit(self, u: float) -> float:
        """The value at quantile ``u`` in [0, 1]."""
        return float(self.low + u * (self.high - self.low))

    def grid(self, k: int) -> list[float]:
        """``k`` evenly spaced points, both ends included (one point: the middle)."""
        if k == 1:
            return [self.from_unit(0.5)]
        return [self.from_unit(i / (k - 1)) for i in range(k)]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "uniform", "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Choice:
    """One of a few values (str, int, float or bool), equally likely."""

    values: tuple[Any, ...]

    def __init__(self, values: Sequence[Any]):
        object.__setattr__(self, "values", tuple(values) if isinstance(values, (list, tuple)) else values)

    def from_unit(self, u: float) -> Any:
        """The value whose slice of [0, 1) holds ``u``."""
        return self.values[min(int(u * len(self.values)), len(self.values) - 1)]

    def grid(self, k: int) -> list[Any]:
        """Every value (a grid always covers a choice whole)."""
        return list(self.values)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "choice", "values": list(self.values)}


Distribution = Union[LogUniform, Uniform, Choice]
Space = Mapping[str, Distribution]
"""A flat space: setting name -> distribution."""


@dataclass(frozen=True)
class PerLevel:
    """Spaces nested under the levels of a factor: ``PerLevel("optimizer", {"sgd": {...}, "adam": {...}})``.

    Args:
        factor: the factor whose level picks the space (it must be a factor of the study).
        spaces: level (as written in the factor) -> flat space, or another :class:`PerLevel`
            to nest deeper (per optimizer, then per model).
    """

    factor: str
    spaces: Mapping[Any, Union[Space, "PerLevel"]]

    def for_levels(self, levels: Mapping[str, Any]) -> dict[str, Distribution]:
        """The flat space of a cell with these levels (empty when its level has no space)."""
        chosen = _lookup(self.spaces, levels.get(self.factor))
        if chosen is None:
            return {}
        return chosen.for_levels(levels) if isinstance(chosen, PerLevel) else dict(chosen)

    def to_dict(self) -> dict[str, Any]:
        return {
            "per_level": self.factor,
            "spaces": {str(k): (v.to_dict() if isinstance(v, PerLevel) else {n: d.to_dict() for n, d in v.items()}) for k, v in self.spaces.items()},
        }


def _lookup(spaces: Mapping[Any, Any], level: Any) -> Any:
    for key, value in spaces.items():
        if key == level and type(key) is type(level) or str(key) == str(level):
            return value
    return None


def resolve_space(space: Union[Space, PerLevel], levels: Mapping[str, Any]) -> dict[str, Distribution]:
    """The flat space one cell searches."""
    return space.for_levels(levels) if isinstance(space, PerLevel) else dict(space)


def space_to_dict(space: Union[Space, PerLevel]) -> dict[str, Any]:
    """JSON-like form of a (flat or nested) space."""
    return space.to_dict() if isinstance(space, PerLevel) else {name: dist.to_dict() for name, dist in space.items()}


class Searcher(str, enum.Enum):
    """How a search draws its configurations from the cell's space."""

    RANDOM = "random"
    """Independent draws from the search seed (numpy PCG64)."""
    GRID = "grid"
    """A full grid: every choice value, and k points per number axis, k the largest with k^d x choices <= budget."""
    QUASI_RANDOM = "quasi_random"
    """A scrambled Halton sequence seeded by the search seed (scipy.stats.qmc): fills the space more evenly than random."""

    @property
    def uses_seed(self) -> bool:
        """Whether the configurations depend on the search seed (a grid does not; its training seeds still do)."""
        return self is not Searcher.GRID


def grid_points_per_axis(space: Space, budget: int) -> int:
    """Points per number axis of a grid within ``budget`` configurations (0 when the choices alone exceed it)."""
    numbers = [d for d in space.values() if not isinstance(d, Choice)]
    choices = math.prod(len(d.values) for d in space.values() if isinstance(d, Choice))
    if choices > budget:
        return 0
    if not numbers:
        return 1
    k = max(int((budget / choices) ** (1.0 / len(numbers)) + 1e-9), 1)
    while (k + 1) ** len(numbers) * choices <= budget:
        k += 1
    while k > 1 and k ** len(numbers) * choices > budget:
        k -= 1
    return k


def draw(space: Space, searcher: Searcher, budget: int, seed: int) -> list[dict[str, Any]]:
    """The configurations a search evaluates, in order: a pure function of its arguments.

    Random and quasi-random searches return exactly ``budget`` configurations; a grid
    returns the largest full grid within the budget (see :class:`Searcher`). Settings are
    in the space's declaration order; numbers are Python floats.
    """
    names = list(space)
    if not names:
        return [{} for _ in range(1 if searcher is Searcher.GRID else budget)]
    if searcher is Searcher.GRID:
        import itertools

        k = grid_points_per_axis(space, budget)
        axes = [space[name].grid(k) for name in names]
        return [dict(zip(names, point)) for point in itertools.product(*axes)]
    if searcher is Searcher.QUASI_RANDOM:
        from scipy.stats import qmc

        units = qmc.Halton(d=len(names), scramble=True, seed=seed % 2**32).random(budget)
    else:
        import numpy as np

        units = np.random.Generator(np.random.PCG64(seed)).random((budget, len(names)))
    return [{name: _plain(space[name].from_unit(float(u))) for name, u in zip(names, row)} for row in units]


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
