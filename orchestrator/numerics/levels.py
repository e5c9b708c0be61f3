"""The one vocabulary of numerics levels: precision, reduction order, optimizer, model.

Torch-free and dependency-free: the study validator (:mod:`orchestrator.definition.study`),
the representability audit and the numerics kit all read these names from here.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import did_you_mean

__all__ = [
    "ACCUMULATE_LEVELS",
    "ALLREDUCE_LEVELS",
    "DETERMINISM_LEVELS",
    "LEVELLED_WORKLOADS",
    "LEVELS",
    "MODELS",
    "OPTIMIZERS",
    "PRECISION_LEVELS",
    "REDUCTION_ORDERS",
    "check_levels",
]

PRECISION_LEVELS: tuple[str, ...] = ("fp64", "fp32", "tf32", "bf16_autocast", "fp16_autocast", "bf16", "fp16")
"""Valid ``precision`` levels (see docs/numerics.md)."""

REDUCTION_ORDERS: tuple[str, ...] = ("fixed", "sequential", "reversed", "shuffled", "pairwise", "kahan", "fp64")
"""Valid ``reduction_order`` levels. ``fixed`` is the kernel's own order; the others sum
per-example (or per-microbatch) contributions explicitly in the trial's precision."""

OPTIMIZERS: tuple[str, ...] = ("gd", "sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "lbfgs", "lm")
"""Valid ``optimizer`` levels. ``gd`` is ``sgd``'s update under its full-batch name;
``lm`` is damped Gauss-Newton (Levenberg-Marquardt), for least-squares workloads only."""

MODELS: tuple[str, ...] = ("linear", "deep_linear", "mlp", "mlp_bn", "cnn", "cnn_bn")
"""Valid ``model`` levels."""

ACCUMULATE_LEVELS: tuple[str, ...] = ("working", "fp32", "fp64")
"""Valid ``accumulate`` levels: the dtype every addition of a reduction rounds in - the
trial's gradient dtype (``working``), float32 or float64 - whatever the reduction order."""

DETERMINISM_LEVELS: tuple[str, ...] = ("deterministic", "default")
"""Valid ``determinism`` levels: deterministic GPU kernels, or the library's default choice
(recorded as not applicable on a CPU)."""

ALLREDUCE_LEVELS: tuple[str, ...] = ("backend", "sequential", "pairwise", "nccl_ring", "nccl_tree")
"""Valid ``allreduce`` levels of a data-parallel trial: the backend's own all-reduce, the
workers' gradients added in rank order or as a tree (any backend), or NCCL's ring or tree
algorithm (NCCL only)."""

LEVELS: dict[str, tuple[str, ...]] = {
    "precision": PRECISION_LEVELS,
    "reduction_order": REDUCTION_ORDERS,
    "optimizer": OPTIMIZERS,
    "model": MODELS,
    "accumulate": ACCUMULATE_LEVELS,
    "determinism": DETERMINISM_LEVELS,
    "allreduce": ALLREDUCE_LEVELS,
}
"""Factor or parameter name -> its valid levels."""

LEVELLED_WORKLOADS: tuple[str, ...] = ("two_layer_linear", "digits", "teacher_student")
"""The built-in workloads that read these levels (a study using one is checked against them)."""

def check_levels(config: Mapping[str, Any]) -> list[str]:
    """Problems with the numerics level names in ``config`` (one sentence each, empty if none).

    Example:
        >>> check_levels({"precision": "bf61"})[0].startswith("precision: expected a precision level, found 'bf61'. Did you mean")
        True
    """
    problems = []
    for key, valid in LEVELS.items():
        if key in config and config[key] not in valid:
            problems.append(f"{key}: expected a {key} level, found {config[key]!r}. {did_you_mean(str(config[key]), valid)}")
    return problems
