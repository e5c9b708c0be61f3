"""What the user wrote: the study definition, validated as a whole and frozen, and its loader.

* :mod:`.study` - :class:`Study`, :class:`Factor`, :class:`Metric`, :class:`Variant`,
  :class:`Resources` and the modes (:class:`RunOrder`, :class:`SeedScope`, ...);
* :mod:`.designs` - the design specs and the algebra of two-level designs;
* :mod:`.workloads` - the workload vocabulary (built-in names, reference syntax);
* :mod:`.loader` - find and load ``studies/x.py``.
"""

from __future__ import annotations

from .designs import Fractional, FullFactorial, PlackettBurman
from .loader import find_study_file, load_study
from .study import Factor, Goal, Metric, Resources, Study, Variant

__all__ = [
    "Factor",
    "Fractional",
    "FullFactorial",
    "Goal",
    "Metric",
    "PlackettBurman",
    "Resources",
    "Study",
    "Variant",
    "find_study_file",
    "load_study",
]
