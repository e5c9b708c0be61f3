"""The one number formatter: every number a person reads (CLI tables, reports, write-ups, drift
reports, findings sentences) goes through :func:`fmt_number`, so a missing value always reads
the same (:data:`MISSING`).

Example:
    >>> fmt_number(0.123456), fmt_number(3), fmt_number(None), fmt_number(float("nan"), 3)
    ('0.1235', '3', '–', '–')
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["MISSING", "fmt_number"]

MISSING = "–"
"""How a missing value (None, NaN) is printed everywhere."""


def fmt_number(value: Any, digits: int = 4) -> str:
    """``value`` as text: numbers with ``digits`` significant digits, integers whole, booleans as
    ``yes``/``no``, None and NaN as :data:`MISSING`, anything else as ``str(value)``."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        number = float(value)
        return MISSING if math.isnan(number) else f"{number:.{digits}g}"
    return str(value)
