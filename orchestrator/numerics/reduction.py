"""Reduction orders and accumulators: how per-example (or per-microbatch) contributions are
summed, and in which dtype.

Two settings, declared separately:

* ``reduction_order`` - the order of the additions. ``fixed`` is the kernel's own order
  (``loss.backward()`` on the reduced loss); every other order materialises the
  contributions - one gradient per example, or per contiguous microbatch when
  ``reduction_chunks`` > 0 - and adds them explicitly.
* ``accumulate`` - the dtype every addition rounds in: ``working`` (default: the trial's
  gradient dtype - bfloat16 under pure ``bf16``), ``fp32`` or ``fp64``. The sum is rounded
  once to the gradient dtype at the end.

The kernels accumulate 16-bit sums in float32 (``torch.sum`` on a bfloat16 tensor included),
so ``fixed`` runs on the kernel path only when the declared accumulator is the kernel's own
(:func:`kernel_accumulator`); otherwise it too materialises the contributions and adds them
in index order (a fixed order) in the declared dtype. The reduction order ``fp64`` is kept as
the kernel's order with a float64 accumulator (``accumulate`` must then be ``working`` or
``fp64``). What really accumulated is recorded as ``accumulator_dtype``, and whether the
kernel or the explicit path summed as ``reduction_path``.

Example:
    >>> import torch
    >>> values = torch.tensor([1.0] + [1e-3] * 1000, dtype=torch.bfloat16)
    >>> float(ordered_sum(values, "sequential")), float(ordered_sum(values, "kahan"))
    (1.0, 2.0)
    >>> float(ordered_sum(values, "fixed")), float(ordered_sum(values, "fixed", accumulator=torch.float32))
    (1.0, 2.0)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
from torch.func import functional_call, grad, jacrev, vmap

from ..errors import OrchestratorError, did_you_mean
from .levels import ACCUMULATE_LEVELS, REDUCTION_ORDERS

if TYPE_CHECKING:
    from ..execution.context import TrialContext

__all__ = ["ACCUMULATE_LEVELS", "Reducer", "ReductionError", "kernel_accumulator", "ordered_sum", "per_example_contributions"]

_ACCUMULATORS = {"fp32": torch.float32, "fp64": torch.float64}
_NARROW = (torch.bfloat16, torch.float16)


class ReductionError(OrchestratorError, ValueError):
    """A reduction order or accumulator that cannot be honoured as declared."""


def kernel_accumulator(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels (``loss.backward()``, ``torch.sum``) accumulate ``dtype`` in:
    float32 for bfloat16/float16 (CPU and GPU alike), the dtype itself otherwise."""
    return torch.float32 if dtype in _NARROW else dtype


def resolve_accumulator(accumulate: str, working: torch.dtype, order: str = "fixed") -> torch.dtype:
    """The dtype the additions round in, for the ``accumulate`` level and the working dtype.

    Raises:
        ReductionError: an unknown level, or ``reduction_order: fp64`` with an accumulator
            other than ``working``/``fp64`` (that order is defined by its float64 accumulator).
    """
    if accumulate not in ACCUMULATE_LEVELS:
        raise ReductionError(f"accumulate: expected an accumulator level, found {accumulate!r}. {did_you_mean(str(accumulate), ACCUMULATE_LEVELS)}")
    if order == "fp64":
        if accumulate not in ("working", "fp64"):
            raise ReductionError(
                f"reduction_order 'fp64' accumulates in float64 by definition, but accumulate is {accumulate!r}. "
                "Use reduction_order 'fixed' with that accumulator, or drop the accumulate setting."
            )
        return torch.float64
    return _ACCUMULATORS.get(accumulate, working)


def _sequential(values: torch.Tensor, index: torch.Tensor | range) -> torch.Tensor:
    total = torch.zeros_like(values[0])
    for i in index:
        total.add_(values[int(i)])
    return total


def _pairwise(values: torch.Tensor) -> torch.Tensor:
    while values.shape[0] > 1:
        n = values.shape[0]
        half = values[0 : n - n % 2 : 2] + values[1:n:2]
        values = torch.cat([half, values[n - 1 :]]) if n % 2 else half
    return values[0].clone()


def _kahan(values: torch.Tensor) -> torch.Tensor:
    total = torch.zeros_like(values[0])
    carry = torch.zeros_like(values[0])
    for i in range(values.shape[0]):
        y = values[i] - carry
        t = total + y
        carry = (t - total) - y
        total = t
    return total


def _fixed(values: torch.Tensor) -> torch.Tensor:
    # torch.sum accumulates 16-bit inputs in float32; a 16-bit accumulator needs the additions
    # written out, in index order
    if values.dtype in _NARROW:
        return _sequential(values, range(values.shape[0]))
    return values.sum(0)


def ordered_sum(values: torch.Tensor, order: str, *, generator: torch.Generator | None = None, accumulator: torch.dtype | None = None) -> torch.Tensor:
    """Sum ``values`` over its first dimension in ``order``; the result has ``values.dtype``.

    Every addition rounds in ``accumulator`` (default ``values.dtype``); the sum is rounded
    once to ``values.dtype`` at the end.

    Args:
        values: contributions, shape ``[n, ...]``.
        order: one of :data:`~orchestrator.numerics.audit.REDUCTION_ORDERS`: ``fixed``
            (``values.sum(0)``, the kernel's order, for a 32/64-bit accumulator; index order
            for a 16-bit one, which the kernels do not offer), ``sequential`` (0, 1, ...,
            n-1), ``reversed``, ``shuffled`` (a permutation drawn from ``generator``),
            ``pairwise`` (a balanced tree), ``kahan`` (compensated sequential) or ``fp64``
            (the kernel's order in float64, whatever ``accumulator`` says).
        generator: the source of the permutation for ``shuffled`` (the trial's ``reduction``
            seed stream).
        accumulator: the dtype the additions round in.
    """
    dtype = values.dtype
    if accumulator is not None and accumulator != dtype and order != "fp64":
        return ordered_sum(values.to(accumulator), order, generator=generator).to(dtype)
    n = values.shape[0]
    if order == "fixed":
        return _fixed(values)
    if order == "sequential":
        return _sequential(values, range(n))
    if order == "reversed":
        return _sequential(values, range(n - 1, -1, -1))
    if order == "shuffled":
        if generator is None:
            raise ValueError("reduction_order 'shuffled' needs a generator seeded from the trial's 'reduction' seed stream")
        return _sequential(values, torch.randperm(n, generator=generator).tolist())
    if order == "pairwise":
        return _pairwise(values)
    if order == "kahan":
        return _kahan(values)
    if order == "fp64":
        return values.to(torch.float64).sum(0).to(values.dtype)
    raise ValueError(f"reduction_order: expected a reduction order, found {order!r}. {did_you_mean(str(order), REDUCTION_ORDERS)}")


def _has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def per_example_contributions(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    weight: float = 1.0,
    autocast: Callable[[], object] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-example losses ``[n]`` and gradients ``{name: [n, *shape]}`` of ``weight * loss_i``.

    ``loss_fn(output, target)`` returns one loss per example. Without batch normalization
    each example's gradient comes from ``vmap(grad)``; with it the examples are coupled, so
    the contributions are the rows of the Jacobian of the per-example losses of the whole
    batch (their sum is the batch gradient). Running statistics are not touched here.
    """
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v for k, v in model.named_buffers()}
    region: Callable[[], Any] = autocast or (lambda: torch.autocast("cpu", enabled=False))
    if not _has_batchnorm(model):

        def single(p: dict, xi: torch.Tensor, yi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with region():
                out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
                loss = loss_fn(out.float() if out.dtype in (torch.float16, torch.bfloat16) and autocast else out, yi.unsqueeze(0))[0]
            return loss * weight, loss.detach()

        grads, losses = vmap(grad(single, has_aux=True), in_dims=(None, 0, 0))(params, x, y)
        return losses, grads
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.track_running_stats for m in bns]
    for m in bns:
        m.track_running_stats = False
    try:

        def batch(p: dict) -> tuple[torch.Tensor, torch.Tensor]:
            with region():
                out = functional_call(model, (p, buffers), (x,))
                losses = loss_fn(out.float() if out.dtype in (torch.float16, torch.bfloat16) and autocast else out, y)
            return losses * weight, losses.detach()

        grads, losses = jacrev(batch, has_aux=True)(params)
    finally:
        for m, value in zip(bns, saved):
            m.track_running_stats = value
    return losses, grads


class Reducer:
    """A trial's reduction order and accumulator, with its ``reduction`` seed stream and
    microbatching.

    Settings: ``reduction_order`` (default ``fixed``), ``accumulate`` (default ``working``),
    ``reduction_chunks`` (default 0: per-example contributions; k > 0: k contiguous
    microbatches, each summed in index order in the accumulator, then the k partial sums in
    the order).

    Args:
        order: the reduction order.
        seed: the ``reduction`` seed stream (draws the permutations of ``shuffled``).
        chunks: ``reduction_chunks``.
        accumulate: ``working``, ``fp32`` or ``fp64``.
        working: the gradient dtype (the trial's parameter dtype).

    Example:
        >>> import torch
        >>> r = Reducer("fixed", accumulate="working", working=torch.bfloat16)
        >>> r.explicit, r.accumulator_dtype, r.path
        (True, torch.bfloat16, 'explicit')
        >>> Reducer("fixed", accumulate="fp32", working=torch.bfloat16).path
        'kernel'
    """

    def __init__(self, order: str = "fixed", *, seed: int | None = None, chunks: int = 0, accumulate: str = "working", working: torch.dtype = torch.float32):
        if order not in REDUCTION_ORDERS:
            raise ReductionError(f"reduction_order: expected a reduction order, found {order!r}. {did_you_mean(str(order), REDUCTION_ORDERS)}")
        self.order = order
        self.chunks = int(chunks)
        self.seed = seed
        self.accumulate = str(accumulate)
        self.working = working
        self.accumulator_dtype = resolve_accumulator(self.accumulate, working, order)
        self.generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None

    @classmethod
    def from_context(cls, ctx: "TrialContext", working: torch.dtype = torch.float32) -> "Reducer":
        """The trial's reducer for gradients in ``working``; records ``reduction_order``,
        ``reduction_chunks``, ``accumulate``, ``accumulator_dtype`` and ``reduction_path``."""
        order = str(ctx.get("reduction_order", "fixed"))
        seed = ctx.seed("reduction") if order == "shuffled" else ctx.trial.seeds.get("reduction")
        made = cls(order, seed=seed, chunks=int(ctx.get("reduction_chunks", 0)), accumulate=str(ctx.get("accumulate", "working")), working=working)
        made.record(ctx)
        return made

    def like(self, order: str) -> "Reducer":
        """A reducer in ``order`` with this one's seed, chunks, accumulator and working dtype
        (``fp64`` keeps its float64 accumulator: it is the reference twin's usual order)."""
        accumulate = "fp64" if order == "fp64" else self.accumulate
        return Reducer(order, seed=self.seed, chunks=self.chunks, accumulate=accumulate, working=self.working)

    def record(self, ctx: "TrialContext") -> None:
        ctx.record("reduction_order", self.order)
        ctx.record("reduction_chunks", self.chunks)
        ctx.record("accumulate", self.accumulate)
        ctx.record("accumulator_dtype", str(self.accumulator_dtype).replace("torch.", ""))
        ctx.record("reduction_path", self.path)

    @property
    def explicit(self) -> bool:
        """Whether contributions are materialised and summed here: every order but ``fixed``,
        and ``fixed`` when the declared accumulator is not the kernel's."""
        return self.order != "fixed" or self.accumulator_dtype != kernel_accumulator(self.working)

    @property
    def path(self) -> str:
        """``kernel`` (``loss.backward()`` sums) or ``explicit`` (this reducer sums)."""
        return "explicit" if self.explicit else "kernel"

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over dim 0 in this order and accumulator (after microbatching);
        the result has ``values.dtype``."""
        dtype = values.dtype
        accumulator = torch.float64 if self.order == "fp64" else self.accumulator_dtype
        values = values.to(accumulator)
        if self.chunks and self.chunks < values.shape[0]:
            values = torch.stack([_fixed(part) for part in torch.tensor_split(values, self.chunks)])
        return ordered_sum(values, self.order, generator=self.generator).to(dtype)

    def sum_many(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        """Sum several ``[n, ...]`` tensors of one dtype in one shared order (one permutation)."""
        n = parts[0].shape[0]
        flat = torch.cat([p.reshape(n, -1) for p in parts], dim=1)
        total = self.sum(flat)
        out, start = [], 0
        for p in parts:
            size = p[0].numel()
            out.append(total[start : start + size].reshape(p.shape[1:]))
            start += size
        return out
