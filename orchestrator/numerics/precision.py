"""Precision levels and the hardware switches, applied and recorded per trial.

A :class:`Precision` says where parameters live (``param_dtype``), what autocast computes
in (``autocast_dtype``), whether the loss is scaled, and whether TF32 matmuls are on. A
level the device cannot run (``tf32`` on a CPU) falls back visibly: the fallback is
recorded in the trial's info and as the metric ``precision_fallback = 1``; with
``strict_precision=True`` it is an error instead.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import torch

from ..errors import OrchestratorError, did_you_mean
from .levels import DETERMINISM_LEVELS, PRECISION_LEVELS

if TYPE_CHECKING:
    from ..execution.context import TrialContext

__all__ = ["DETERMINISM_LEVELS", "LossScaler", "Precision", "PrecisionUnavailable", "determinism_level", "dtype_name", "hardware"]

_DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "tf32": torch.float32, "bf16_autocast": torch.float32,
           "fp16_autocast": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_AUTOCAST = {"bf16_autocast": torch.bfloat16, "fp16_autocast": torch.float16}


class PrecisionUnavailable(OrchestratorError):
    """A precision level cannot run on this device and the study asked for no fallback."""


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``'bfloat16'``."""
    return str(dtype).replace("torch.", "")


def _device_type(device: str) -> str:
    return torch.device(device).type


@dataclass(frozen=True)
class Precision:
    """A resolved precision level on one device.

    Attributes:
        level: the level asked for (``fp32``, ``bf16_autocast``, ...).
        effective: the level that actually runs (differs only after a fallback).
        device: the torch device string.
        param_dtype: where parameters, gradients and optimizer state live.
        autocast_dtype: what autocast regions compute in, or None without autocast.
        tf32: whether float32 matmuls/convolutions may use TF32.
        loss_scaling: whether the loss is scaled (the fp16 levels).
        fallback: why the effective level differs from the asked one, or None.
    """

    level: str
    effective: str
    device: str
    param_dtype: torch.dtype
    autocast_dtype: torch.dtype | None
    tf32: bool
    loss_scaling: bool
    fallback: str | None = None

    @classmethod
    def resolve(cls, level: str, device: str = "cpu", *, strict: bool = False) -> "Precision":
        """The precision ``level`` on ``device``; falls back visibly (or raises if ``strict``).

        Example:
            >>> Precision.resolve("tf32", "cpu").fallback is not None
            True
        """
        if level not in PRECISION_LEVELS:
            raise ValueError(f"precision: expected a precision level, found {level!r}. {did_you_mean(str(level), PRECISION_LEVELS)}")
        kind = _device_type(device)
        effective, fallback = level, None
        if level == "tf32":
            if kind != "cuda":
                effective, fallback = "fp32", f"tf32 asked on {device}: TF32 is a CUDA matmul mode (Ampere or newer); ran fp32"
            elif torch.cuda.get_device_capability(torch.device(device))[0] < 8:
                effective, fallback = "fp32", f"tf32 asked on a GPU of compute capability < 8.0 ({torch.cuda.get_device_name(torch.device(device))}); ran fp32"
        if level in ("bf16", "bf16_autocast") and kind == "cuda" and not torch.cuda.is_bf16_supported():
            fallback = f"{level} asked on a GPU without native bfloat16; ran emulated"
        if fallback and strict:
            raise PrecisionUnavailable(f"{fallback}. Run this cell on a device that supports {level}, or set strict_precision=False to accept the recorded fallback.")
        return cls(
            level=level,
            effective=effective,
            device=device,
            param_dtype=_DTYPES[effective],
            autocast_dtype=_AUTOCAST.get(effective),
            tf32=effective == "tf32",
            loss_scaling=effective in ("fp16_autocast", "fp16"),
            fallback=fallback,
        )

    @classmethod
    def from_context(cls, ctx: "TrialContext") -> "Precision":
        """The trial's precision (``precision`` setting, default ``fp32``), recorded in its info."""
        made = cls.resolve(str(ctx.get("precision", "fp32")), ctx.device, strict=bool(ctx.get("strict_precision", False)))
        made.record(ctx)
        return made

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast region of this level (a no-op context without autocast)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=_device_type(self.device), dtype=self.autocast_dtype)

    def record(self, ctx: "TrialContext") -> None:
        ctx.record("precision_level", self.level)
        ctx.record("precision_effective", self.effective)
        ctx.record("param_dtype", dtype_name(self.param_dtype))
        ctx.record("autocast_dtype", dtype_name(self.autocast_dtype) if self.autocast_dtype else None)
        ctx.record("tf32", self.tf32)
        ctx.record("precision_fallback", self.fallback)


class LossScaler:
    """Dynamic loss scaling (the GradScaler algorithm), for any optimizer and for pure fp16.

    The loss is multiplied by ``scale`` before differentiation; gradients are divided by it
    before the step. A step whose gradients hold inf/NaN is skipped and the scale halved;
    after ``growth_interval`` clean steps the scale doubles. ``dynamic=False`` keeps a static
    scale (``1`` disables scaling).
    """

    def __init__(self, scale: float = 2.0**16, *, dynamic: bool = True, growth_interval: int = 2000):
        self.scale = float(scale)
        self.dynamic = dynamic
        self.growth_interval = growth_interval
        self.skipped = 0
        self._clean = 0

    @classmethod
    def from_config(cls, precision: Precision, setting: Any) -> "LossScaler":
        """``loss_scale``: ``"dynamic"`` (default for the fp16 levels), a number (static), or 1 (off)."""
        if not precision.loss_scaling or setting in (None, 1, 1.0, "none", "off"):
            return cls(1.0, dynamic=False)
        if setting == "dynamic":
            return cls()
        return cls(float(setting), dynamic=False)

    @property
    def enabled(self) -> bool:
        return self.dynamic or self.scale != 1.0

    def unscale_(self, grads: list[torch.Tensor]) -> bool:
        """Divide ``grads`` by the scale in place; True when all of them are finite."""
        finite = all(bool(torch.isfinite(g).all()) for g in grads)
        if self.scale != 1.0:
            inverse = 1.0 / self.scale
            for g in grads:
                g.mul_(inverse)
        return finite

    def update(self, finite: bool) -> None:
        if not self.dynamic:
            return
        if finite:
            self._clean += 1
            if self._clean >= self.growth_interval:
                self.scale *= 2.0
                self._clean = 0
        else:
            self.skipped += 1
            self.scale *= 0.5
            self._clean = 0


def determinism_level(config: Any) -> str:
    """The trial's ``determinism`` level, from ``determinism`` or the older boolean
    ``deterministic`` (True -> ``deterministic``, False -> ``default``).

    Raises:
        OrchestratorError: an unknown level, or both settings given and disagreeing.
    """
    level = config.get("determinism")
    legacy = config.get("deterministic")
    if level is None:
        return "default" if legacy is not None and not bool(legacy) else "deterministic"
    if level not in DETERMINISM_LEVELS:
        raise OrchestratorError(f"determinism: expected a determinism level, found {level!r}. {did_you_mean(str(level), DETERMINISM_LEVELS)}")
    if legacy is not None and bool(legacy) != (level == "deterministic"):
        raise OrchestratorError(
            f"determinism is {level!r} but deterministic is {legacy!r}: the two settings name one switch. "
            "Keep determinism (deterministic|default) and drop deterministic."
        )
    return str(level)


@contextlib.contextmanager
def hardware(ctx: "TrialContext", precision: Precision | None = None) -> Iterator[dict[str, Any]]:
    """Apply the trial's hardware switches for the duration of the block, record them, restore.

    Settings: ``threads`` (default 1) -> ``torch.set_num_threads``; ``determinism``
    (``deterministic``, the default, or ``default``; the older ``deterministic: bool`` still
    works) -> ``torch.use_deterministic_algorithms``, ``cudnn.deterministic``,
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (set only if the environment has none); cuDNN
    benchmark is always off; TF32 is on only under the ``tf32`` level.

    The determinism level governs GPU kernels (atomics in scatter/index_add, split-K
    matmuls, cuDNN algorithm choice). On a CPU the flags are applied as asked, but the
    kernels a trial runs are deterministic at a fixed thread count either way, so the level
    is recorded as ``determinism_effective = "not_applicable"`` (``determinism_applies``
    False) rather than as a difference that could not have happened.
    """
    threads = int(ctx.get("threads", 1))
    level = determinism_level(ctx.config)
    deterministic = level == "deterministic"
    on_gpu = _device_type(ctx.device) == "cuda"
    tf32 = bool(precision.tf32) if precision is not None else False
    saved = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    if deterministic and "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    settings = {
        "threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "device": ctx.device,
        "torch_version": torch.__version__,
    }
    for key, value in settings.items():
        ctx.record(key, value)
    ctx.record("determinism", level)
    ctx.record("determinism_applies", on_gpu)
    ctx.record("determinism_effective", level if on_gpu else "not_applicable")
    # the promise `orchestrator compare` checks bit for bit: deterministic kernels, or the CPU
    # with a fixed thread count
    ctx.record("deterministic", bool(settings["deterministic_algorithms"] or str(ctx.device).startswith("cpu")))
    try:
        yield settings
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])
        torch.backends.cudnn.benchmark = saved[2]
        torch.backends.cudnn.deterministic = saved[3]
        torch.backends.cuda.matmul.allow_tf32 = saved[4]
        torch.backends.cudnn.allow_tf32 = saved[5]
        if saved[6] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[6]
