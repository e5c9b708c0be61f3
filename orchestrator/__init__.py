"""Controlled experiments on training numerics: design, run on Ray, record in MLflow, analyze.

Importing the package is cheap: ray, mlflow, statsmodels and torch are each imported by
one module of their own, and only when used.
"""

from __future__ import annotations

from .context import TrialContext
from .design import Plan, make_plan
from .errors import OrchestratorError, Problem, StudyError, StudyLoadError, TrialDiverged
from .loader import load_study
from .study import Factor, Fractional, FullFactorial, Goal, Metric, PlackettBurman, Study, Variant
from .trial import Resources, Trial, TrialResult, TrialState

__version__ = "0.1.0"

__all__ = [
    "Factor",
    "Fractional",
    "FullFactorial",
    "Goal",
    "Metric",
    "OrchestratorError",
    "PlackettBurman",
    "Plan",
    "Problem",
    "Resources",
    "Study",
    "StudyError",
    "StudyLoadError",
    "Trial",
    "TrialContext",
    "TrialDiverged",
    "TrialResult",
    "TrialState",
    "Variant",
    "load_study",
    "make_plan",
]
