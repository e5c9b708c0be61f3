"""Built-in workloads (``synthetic``, ``landscape``) and the workload registry, re-exported.

The names and the reference syntax live in :mod:`orchestrator.definition.workloads`; a
name is turned into its function by :func:`orchestrator.execution.worker.resolve` when a
trial runs. The torch workloads live in :mod:`orchestrator.numerics.workloads`.
"""

from __future__ import annotations

from ..definition.workloads import BUILTIN_WORKLOADS, WorkloadError, check_reference
from ..execution.worker import resolve

__all__ = ["BUILTIN_WORKLOADS", "WorkloadError", "check_reference", "resolve"]
