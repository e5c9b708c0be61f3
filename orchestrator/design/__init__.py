"""The design made concrete: the plan of cells and trials, with seeds fixed at design time.

* :mod:`.plan` - :class:`Plan`, :class:`Cell`, :class:`AliasRow`, :func:`make_plan`, the
  design table (:func:`plan_rows`, :func:`plan_csv`);
* :mod:`.trial` - :class:`Trial` (immutable, travels to workers), :class:`TrialResult`,
  :class:`TrialState`.
"""

from __future__ import annotations

from .plan import AliasRow, Cell, Plan, make_plan, plan_csv, plan_rows
from .trial import Trial, TrialResult, TrialState

__all__ = ["AliasRow", "Cell", "Plan", "Trial", "TrialResult", "TrialState", "make_plan", "plan_csv", "plan_rows"]
