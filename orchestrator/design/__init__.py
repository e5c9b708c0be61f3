"""The design made concrete: the plan of cells and trials, with seeds fixed at design time.

* :mod:`.plan` - :class:`Plan`, :class:`Cell`, :class:`AliasRow`, :func:`make_plan`,
  :class:`TrialTable` (the plan's trials as columns; each :class:`Trial` built when used),
  the design table (:func:`plan_rows`, :func:`plan_csv`; :func:`write_plan_csv`,
  :func:`write_plan_json`, :func:`write_plan_table` a chunk of trials at a time);
* :mod:`.keys` - trial ids and seeds of many trials at once, byte for byte those of
  :mod:`orchestrator.ids`;
* :mod:`.shuffle` - the run order's shuffle (``random.Random(seed).shuffle``'s permutation, fast);
* :mod:`.trial` - :class:`Trial` (immutable, travels to workers), :class:`TrialResult`,
  :class:`TrialState`.
"""

from __future__ import annotations

from .plan import AliasRow, Cell, Plan, TrialTable, make_plan, plan_csv, plan_rows, write_plan_csv, write_plan_json, write_plan_table
from .trial import Trial, TrialResult, TrialState

__all__ = [
    "AliasRow", "Cell", "Plan", "Trial", "TrialResult", "TrialState", "TrialTable",
    "make_plan", "plan_csv", "plan_rows", "write_plan_csv", "write_plan_json", "write_plan_table",
]
