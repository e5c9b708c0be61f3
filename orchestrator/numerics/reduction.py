"""Reduction orders: how per-example (or per-microbatch) contributions are summed.

``fixed`` leaves the sum to the kernel (``loss.backward()`` on the reduced loss). Every other
order materialises the contributions - one gradient per example, or per contiguous
microbatch when ``reduction_chunks`` > 0 - and adds them explicitly, each addition rounded
in the contributions' dtype (the trial's precision), except ``fp64``, which accumulates in
float64 and rounds once at the end.

Example:
    >>> import torch
    >>> values = torch.tensor([1.0] + [1e-3] * 1000, dtype=torch.bfloat16)
    >>> float(ordered_sum(values, "sequential")), float(ordered_sum(values, "kahan"))
    (1.0, 2.0)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
from torch.func import functional_call, grad, jacrev, vmap

from ..errors import did_you_mean
from .audit import REDUCTION_ORDERS

if TYPE_CHECKING:
    from ..context import TrialContext

__all__ = ["Reducer", "ordered_sum", "per_example_contributions"]


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


def ordered_sum(values: torch.Tensor, order: str, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sum ``values`` over its first dimension in ``order``; the result has ``values.dtype``.

    Args:
        values: contributions, shape ``[n, ...]``, in the accumulation dtype.
        order: one of :data:`~orchestrator.numerics.audit.REDUCTION_ORDERS`: ``fixed``
            (``values.sum(0)``, the kernel's order), ``sequential`` (0, 1, ..., n-1),
            ``reversed``, ``shuffled`` (a permutation drawn from ``generator``),
            ``pairwise`` (a balanced tree), ``kahan`` (compensated sequential) or ``fp64``
            (float64 accumulation, rounded once).
        generator: the source of the permutation for ``shuffled`` (the trial's ``reduction``
            seed stream).
    """
    n = values.shape[0]
    if order == "fixed":
        return values.sum(0)
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
    region = autocast or (lambda: torch.autocast("cpu", enabled=False))
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
    """A trial's reduction order, with its ``reduction`` seed stream and microbatching.

    Settings: ``reduction_order`` (default ``fixed``), ``reduction_chunks`` (default 0:
    per-example contributions; k > 0: k contiguous microbatches, each summed by the kernel).
    """

    def __init__(self, order: str = "fixed", *, seed: int | None = None, chunks: int = 0):
        if order not in REDUCTION_ORDERS:
            raise ValueError(f"reduction_order: expected a reduction order, found {order!r}. {did_you_mean(str(order), REDUCTION_ORDERS)}")
        self.order = order
        self.chunks = int(chunks)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None

    @classmethod
    def from_context(cls, ctx: "TrialContext") -> "Reducer":
        order = str(ctx.get("reduction_order", "fixed"))
        seed = ctx.seed("reduction") if order == "shuffled" else ctx.trial.seeds.get("reduction")
        made = cls(order, seed=seed, chunks=int(ctx.get("reduction_chunks", 0)))
        ctx.record("reduction_order", order)
        ctx.record("reduction_chunks", made.chunks)
        return made

    @property
    def explicit(self) -> bool:
        """Whether contributions are materialised (every order but ``fixed``)."""
        return self.order != "fixed"

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over dim 0 in this order (after microbatching)."""
        if self.chunks and self.chunks < values.shape[0]:
            values = torch.stack([part.sum(0) for part in torch.tensor_split(values, self.chunks)])
        return ordered_sum(values, self.order, generator=self.generator)

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
