"""Level names of the numerics factors and the representability audit (torch-free).

Before a trial runs, every numeric hyperparameter of its optimizer is cast into the dtype it
will live in under the trial's precision level, and the ones whose meaning changes are
reported. The classic case is the "Boris" bug: Adam's ``beta2 = 0.999`` rounds to exactly
``1.0`` in bfloat16 (round to nearest even), so the second moment never updates and the bias
correction ``1 - beta2**t`` is zero.

Example:
    >>> from orchestrator.numerics.audit import audit_config
    >>> [f.parameter for f in audit_config({"optimizer": "adam", "precision": "bf16", "beta2": 0.999})]
    ['beta2']

This module imports neither torch nor anything heavy: the planner calls it for every cell.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from .levels import MODELS, OPTIMIZERS, PRECISION_LEVELS, REDUCTION_ORDERS, check_levels

__all__ = [
    "AuditFinding",
    "DECAY_PARAMETERS",
    "HYPERPARAMETER_DTYPE",
    "MODELS",
    "OPTIMIZERS",
    "OPTIMIZER_DEFAULTS",
    "PRECISION_LEVELS",
    "REDUCTION_ORDERS",
    "audit_config",
    "check_levels",
    "hyperparameter_dtype",
    "round_to_dtype",
]

OPTIMIZER_DEFAULTS: dict[str, dict[str, float | None]] = {
    "gd": {"lr": None, "weight_decay": 0.0},
    "sgd": {"lr": None, "weight_decay": 0.0},
    "momentum": {"lr": None, "momentum": 0.9, "weight_decay": 0.0},
    "nesterov": {"lr": None, "momentum": 0.9, "weight_decay": 0.0},
    "adam": {"lr": None, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
    "adamw": {"lr": None, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01},
    "rmsprop": {"lr": None, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0},
    "lbfgs": {"lr": None},
    "lm": {"lr": None, "damping": 1e-3},
}
"""Each optimizer's numeric hyperparameters and their defaults (``None``: the workload's
default, e.g. the learning rate). Workloads read them with these defaults."""

DECAY_PARAMETERS = frozenset({"beta1", "beta2", "momentum", "alpha"})
"""Averaging coefficients in (0, 1): their meaning is the horizon ``1 / (1 - beta)``."""

HYPERPARAMETER_DTYPE: dict[str, str] = {
    "fp64": "float64",
    "fp32": "float32",
    "tf32": "float32",
    "bf16_autocast": "float32",
    "fp16_autocast": "float32",
    "bf16": "bfloat16",
    "fp16": "float16",
}
"""The dtype parameters, optimizer state and hence hyperparameters live in, per precision
level. Autocast levels keep parameters and optimizer state in float32."""


@dataclass(frozen=True)
class AuditFinding:
    """One hyperparameter whose meaning changes in the dtype it lives in.

    Attributes:
        parameter: the hyperparameter's name (``beta2``, ``eps``, ...).
        value: the value the study asked for.
        dtype: the dtype it lives in under the trial's precision level.
        stored: the value it actually has in that dtype.
        message: what changes and why it matters.
    """

    parameter: str
    value: float
    dtype: str
    stored: float
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _bfloat16(values: np.ndarray) -> np.ndarray:
    """Round to bfloat16 (round to nearest even), returned as float32. Goes through float32
    first, as ``torch.tensor(x, dtype=torch.bfloat16)`` does for a Python float."""
    single = np.asarray(values, dtype=np.float32)
    bits = single.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    out = rounded.astype(np.uint32).view(np.float32)
    return np.where(np.isnan(single), np.float32(np.nan), out)


def round_to_dtype(value: float, dtype: str) -> float:
    """``value`` as stored in ``dtype`` (``float64``, ``float32``, ``bfloat16``, ``float16``).

    Example:
        >>> round_to_dtype(0.999, "bfloat16"), round_to_dtype(1e-8, "float16")
        (1.0, 0.0)
    """
    if dtype == "float64":
        return float(value)
    if dtype == "float32":
        return float(np.float32(value))
    if dtype == "float16":
        return float(np.float16(value))
    if dtype == "bfloat16":
        return float(_bfloat16(np.array([value]))[0])
    raise ValueError(f"dtype: expected one of float64, float32, bfloat16, float16, found {dtype!r}")


def hyperparameter_dtype(optimizer: str | None, precision: str) -> str:
    """The dtype an optimizer's hyperparameters live in under a precision level.

    The first-order optimizers of :mod:`orchestrator.numerics.optimizers` hold them as 0-d
    tensors in the optimizer-state dtype. L-BFGS (torch's) keeps them as Python floats;
    Levenberg-Marquardt solves its damped system in at least float32.
    """
    state = HYPERPARAMETER_DTYPE.get(precision, "float32")
    if optimizer == "lbfgs":
        return "float64"
    if optimizer == "lm" and state in ("bfloat16", "float16"):
        return "float32"
    return state


def _judge(name: str, value: float, stored: float, dtype: str, tolerance: float) -> str | None:
    if stored == value:
        return None
    if not math.isfinite(stored):
        return f"{name} = {value!r} overflows to {stored} in {dtype}"
    if value != 0 and stored == 0:
        what = f"{name} = {value!r} underflows to 0 in {dtype}"
        if name == "eps":
            what += ": the denominator sqrt(v) + eps is unguarded, a zero second moment gives inf/NaN updates"
        return what
    if name in DECAY_PARAMETERS and 0 < value < 1:
        if stored >= 1:
            what = f"{name} = {value!r} rounds to {stored!r} in {dtype}: the running average never updates"
            if name == "beta2":
                what += " and the bias correction 1 - beta2**t is 0, a division by zero (the 'Boris' bug)"
            elif name == "beta1":
                what += " and the bias correction 1 - beta1**t is 0, a division by zero"
            return what
        before, after = 1 - value, 1 - stored
        if abs(after - before) > tolerance * before:
            return (
                f"{name} = {value!r} is {stored!r} in {dtype}: the averaging horizon 1/(1-{name}) "
                f"changes from {1 / before:.4g} to {1 / after:.4g} steps"
            )
        return None
    if value != 0 and abs(stored - value) > tolerance * abs(value):
        return f"{name} = {value!r} is {stored!r} in {dtype}, {100 * abs(stored - value) / abs(value):.3g}% off"
    return None


def audit_config(config: Mapping[str, Any], *, tolerance: float = 0.1) -> list[AuditFinding]:
    """Findings for the hyperparameters of a trial's config that change meaning in their dtype.

    Args:
        config: the trial's parameters overlaid by its levels. Reads ``optimizer``,
            ``precision`` (default ``fp32``) and the optimizer's hyperparameters; those the
            config leaves out are audited at their defaults (:data:`OPTIMIZER_DEFAULTS`).
            Without a known optimizer, every known hyperparameter present is audited.
        tolerance: the relative change that counts as a change of meaning (for averaging
            coefficients, of ``1 - beta``). Underflow to 0, overflow and rounding to 1.0
            are always reported.

    Returns:
        One :class:`AuditFinding` per affected hyperparameter (empty when all is well or the
        precision level is unknown; :func:`check_levels` reports unknown names).

    Example:
        >>> audit_config({"optimizer": "adam", "precision": "fp32", "beta2": 0.999, "eps": 1e-8})
        []
        >>> audit_config({"optimizer": "adam", "precision": "fp16", "eps": 1e-8})[0].stored
        0.0
    """
    precision = str(config.get("precision", "fp32"))
    if precision not in HYPERPARAMETER_DTYPE:
        return []
    optimizer = config.get("optimizer")
    if optimizer in OPTIMIZER_DEFAULTS:
        names: dict[str, float | None] = dict(OPTIMIZER_DEFAULTS[str(optimizer)])
    else:
        names = {n: None for d in OPTIMIZER_DEFAULTS.values() for n in d}
    dtype = hyperparameter_dtype(str(optimizer) if optimizer is not None else None, precision)
    findings = []
    for name, default in names.items():
        raw = config.get(name, default)
        if isinstance(raw, bool) or not isinstance(raw, (int, float, np.floating, np.integer)):
            continue
        value = float(raw)
        stored = round_to_dtype(value, dtype)
        message = _judge(name, value, stored, dtype, tolerance)
        if message:
            if name not in config:
                message += " (the default value)"
            findings.append(AuditFinding(name, value, dtype, stored, f"{message} [precision={precision}]"))
    return findings
