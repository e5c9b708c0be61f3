"""Modes of the analysis (light: importable without numpy or pandas)."""

from __future__ import annotations

import enum

from orchestrator.analysis.errors import AnalysisError
from orchestrator.errors import did_you_mean

__all__ = ["SeedInteractions"]


class SeedInteractions(enum.Enum):
    """Which random-factor x fixed-factor interactions the model includes by default.

    ``MAIN``: each random factor (seed stream) with each fixed main factor, where the design
    can estimate it (see docs/analysis.md, "Random terms"); ``NONE``: random factors are
    additive (only the random terms given explicitly).
    """

    NONE = "none"
    MAIN = "main"

    @classmethod
    def parse(cls, value: "SeedInteractions | str | None") -> "SeedInteractions":
        """The mode named by ``value`` (None: ``MAIN``), or an ``AnalysisError`` naming the valid ones."""
        if value is None:
            return cls.MAIN
        if isinstance(value, cls):
            return value
        names = [m.value for m in cls]
        if isinstance(value, str) and value.strip().lower() in names:
            return cls(value.strip().lower())
        raise AnalysisError(f"seed_interactions must be one of {', '.join(names)}, found {value!r}. "
                            f"{did_you_mean(str(value), names)}".strip())
