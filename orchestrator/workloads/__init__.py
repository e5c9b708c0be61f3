"""Workload registry: built-in names and ``"package.module:function"`` references.

Names resolve lazily, so planning a study never imports torch.
"""

from __future__ import annotations

import importlib
import re
from typing import Callable

from ..errors import OrchestratorError, did_you_mean

__all__ = ["BUILTIN_WORKLOADS", "WorkloadError", "check_reference", "resolve"]

BUILTIN_WORKLOADS: dict[str, str] = {
    "synthetic": "orchestrator.workloads.synthetic:synthetic",
    "tuned": "orchestrator.workloads.tuned:tuned",
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


def resolve(name: str) -> Callable:
    """The workload function for a built-in name or a ``"package.module:function"`` reference."""
    problem = check_reference(name)
    if problem:
        raise WorkloadError(f"workload: expected {problem}")
    target = BUILTIN_WORKLOADS.get(name, name)
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise WorkloadError(
            f"workload {name!r}: cannot import module {module_name!r} ({exc}). "
            "Install the package that provides it on every node, or fix the reference."
        ) from exc
    try:
        function = getattr(module, attr)
    except AttributeError:
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise WorkloadError(
            f"workload {name!r}: module {module_name!r} has no function {attr!r}. {did_you_mean(attr, names)}"
        ) from None
    if not callable(function):
        raise WorkloadError(f"workload {name!r}: {target} is a {type(function).__name__}, expected a function")
    return function
