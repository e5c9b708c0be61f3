"""Controlled experiments on training numerics: design, run on Ray, record in MLflow, analyze.

Importing the package is cheap: ray, mlflow, statsmodels and torch are each imported by
one module of their own, and only when used. The layers, lowest first (each imports only
from layers below it; see docs/structure.md): ``errors``/``ids``; ``numerics``;
``definition``; ``design``; ``records``; ``execution``; ``workloads``; ``analysis``;
``operations``; ``cli``.
"""

from __future__ import annotations

from .definition.loader import load_study
from .definition.study import (
    Factor,
    Fractional,
    FullFactorial,
    Goal,
    Metric,
    PlackettBurman,
    Resources,
    RunOrder,
    SeedScope,
    StreamPolicy,
    Study,
    Variant,
)
from .design.plan import Plan, make_plan
from .design.trial import Trial, TrialResult, TrialState
from .errors import OrchestratorError, Problem, StudyError, StudyLoadError, TrialDiverged
from .execution.context import TrialContext

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
    "RunOrder",
    "SeedScope",
    "StreamPolicy",
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
