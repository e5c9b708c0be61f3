"""The workload vocabulary: built-in workload names and the ``"package.module:function"`` syntax.

A study names its workload; validating the name needs nothing but this table (the
functions are imported only when a trial runs: :func:`orchestrator.execution.worker.resolve`),
so planning a study never imports torch.
"""

from __future__ import annotations

import re

from ..errors import OrchestratorError, did_you_mean

__all__ = ["BUILTIN_WORKLOADS", "WorkloadError", "check_reference"]

BUILTIN_WORKLOADS: dict[str, str] = {
    "synthetic": "orchestrator.workloads.synthetic:synthetic",
    "landscape": "orchestrator.workloads.tuned:landscape",
    "two_layer_linear": "orchestrator.numerics.workloads:two_layer_linear",
    "digits": "orchestrator.numerics.workloads:digits",
    "teacher_student": "orchestrator.numerics.workloads:teacher_student",
}

_REFERENCE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")


class WorkloadError(OrchestratorError):
    """A workload name or reference that cannot be used."""


def check_reference(name: object) -> str | None:
    """Why ``name`` is not a usable workload reference, or None when it looks right."""
    if not isinstance(name, str) or not name:
        return f"a built-in workload name or 'package.module:function', found {name!r}"
    if ":" in name:
        if not _REFERENCE.match(name):
            return f"'package.module:function' (dotted module, one colon, a function name), found {name!r}"
        return None
    if name not in BUILTIN_WORKLOADS:
        return f"a built-in workload, found {name!r}. {did_you_mean(name, BUILTIN_WORKLOADS)} Or use 'package.module:function'."
    return None
