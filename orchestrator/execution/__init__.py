"""Running trials: what a workload sees, the worker, the executors, and the runner.

* :mod:`.context` - :class:`TrialContext`, what a workload sees;
* :mod:`.worker` - :func:`execute_trial` (one trial in this process), :class:`BatchingSink`,
  :func:`resolve` (workload name -> function);
* :mod:`.executor` - the :class:`Executor` contract and :class:`InProcessExecutor`;
* :mod:`.ray_backend` - :class:`RayExecutor`, the only ``ray`` importer (lazily);
* :mod:`.runner` - :func:`run_study`: resume, retries, progress, Ctrl-C.

Example:
    >>> from orchestrator.execution import run_study   # doctest: +SKIP
"""

from __future__ import annotations

from .context import TrialContext
from .executor import Executor, InProcessExecutor
from .runner import ExecutionSummary, Mode, run_study

__all__ = ["ExecutionSummary", "Executor", "InProcessExecutor", "Mode", "TrialContext", "run_study"]
