"""The numerics kit: optimizers, models, precision levels, reduction orders, workloads.

The only package of the project that imports torch - lazily: ``import orchestrator.numerics``
stays torch-free (the planner imports :mod:`orchestrator.numerics.audit`), and the names
below load their module on first use.

Example (a user workload built from the helpers; see docs/numerics.md)::

    from orchestrator import numerics

    def my_workload(ctx):
        kit = numerics.Kit(ctx)           # or ctx.numerics
        ...
"""

from __future__ import annotations

import importlib
from typing import Any

from .audit import MODELS, OPTIMIZERS, PRECISION_LEVELS, REDUCTION_ORDERS, AuditFinding, audit_config, check_levels

__all__ = [
    "AuditFinding",
    "DivergenceGuard",
    "Kit",
    "LossScaler",
    "MODELS",
    "OPTIMIZERS",
    "PRECISION_LEVELS",
    "Precision",
    "REDUCTION_ORDERS",
    "Trainer",
    "Reducer",
    "audit_config",
    "check_levels",
    "hardware",
    "make_model",
    "make_optimizer",
    "ordered_sum",
    "param_hash",
    "per_example_contributions",
]

_LAZY = {
    "DivergenceGuard": "training",
    "Kit": "training",
    "LossScaler": "precision",
    "Trainer": "training",
    "per_example_contributions": "reduction",
    "Precision": "precision",
    "Reducer": "reduction",
    "hardware": "precision",
    "make_model": "models",
    "make_optimizer": "optimizers",
    "ordered_sum": "reduction",
    "param_hash": "training",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'orchestrator.numerics' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
