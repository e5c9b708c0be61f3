"""Tuned settings: per-cell searches on Ray Tune, selected on a validation metric, then rerun.

The declaration (:class:`Tuning`, its spaces and budget) and the searches as data
(:class:`Search`, :func:`plan_searches`, :func:`select`) import neither Ray nor torch;
:mod:`orchestrator.tuning.ray_tune` is the only module that imports ``ray.tune``.
"""

from __future__ import annotations

from .search import ConfigurationOutcome, Search, SearchFailed, Selection, plan_searches, search_seed, select
from .space import Choice, LogUniform, PerLevel, Searcher, Uniform, draw
from .spec import ASHA, Budget, BudgetUnit, Tuning, VALIDATION_METRICS, is_test_metric

__all__ = [
    "ASHA",
    "Budget",
    "BudgetUnit",
    "Choice",
    "ConfigurationOutcome",
    "LogUniform",
    "PerLevel",
    "Search",
    "SearchFailed",
    "Searcher",
    "Selection",
    "Tuning",
    "Uniform",
    "VALIDATION_METRICS",
    "draw",
    "is_test_metric",
    "plan_searches",
    "search_seed",
    "select",
]
