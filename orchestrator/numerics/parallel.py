"""Data parallelism inside the numerics kit: one global batch split across ``world_size``
workers and ``grad_accumulation`` micro-batches per worker, the partial gradients added in
the trial's accumulator and all-reduced across the workers.

The global batch is held equal, so the mathematics of a step is the same at every world
size and accumulation count; only the order (and grouping) of the additions changes. Every
worker runs the whole workload on the same seeds, so it draws the same global batches and
takes its contiguous shard ``[rank * B / W, (rank + 1) * B / W)``; after the all-reduce all
workers hold the same gradient bit for bit and apply the same update.

This module imports torch (and ``torch.distributed``) but never ray: the workers are started
by :mod:`orchestrator.execution.data_parallel` (Ray Train), which hands the process group to
the trial through :func:`use_collective`. With ``world_size`` 1 nothing is started and the
micro-batches run in this process.

Settings: ``world_size`` (default 1), ``grad_accumulation`` (default 1), ``allreduce``
(default ``backend``; see :data:`ALLREDUCE_LEVELS`).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import torch

from ..errors import OrchestratorError, did_you_mean
from .levels import ALLREDUCE_LEVELS
from .reduction import ordered_sum

if TYPE_CHECKING:
    from ..execution.context import TrialContext

__all__ = [
    "ALLREDUCE_LEVELS",
    "Collective",
    "DataParallel",
    "DataParallelError",
    "Single",
    "TorchCollective",
    "current_collective",
    "use_collective",
]

# ALLREDUCE_LEVELS (numerics.levels): ``backend`` (``torch.distributed.all_reduce``; gloo or
# NCCL choose the algorithm), ``sequential`` / ``pairwise`` (the workers' gradients gathered
# and added in rank order / as a balanced tree, in the trial's accumulator, identically on
# every worker - any backend), ``nccl_ring`` / ``nccl_tree`` (the backend's all-reduce with
# ``NCCL_ALGO=Ring`` / ``Tree``; NCCL only).

NCCL_ALGO = {"nccl_ring": "Ring", "nccl_tree": "Tree"}
"""``allreduce`` level -> the ``NCCL_ALGO`` environment value the workers start with."""


class DataParallelError(OrchestratorError):
    """A data-parallel setting that cannot run as declared."""


class Collective:
    """The workers of one data-parallel trial, as the trainer sees them.

    One hook per operation; :class:`Single` (one process) and :class:`TorchCollective`
    (a ``torch.distributed`` process group) implement them.
    """

    rank: int = 0
    world_size: int = 1
    backend: str = "none"

    def all_reduce_(self, tensors: list[torch.Tensor], algorithm: str = "backend") -> None:
        """Sum ``tensors`` over the workers, in place, in their dtype (the accumulator)."""
        raise NotImplementedError

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every worker."""
        raise NotImplementedError

    def gather(self, value: Any) -> list[Any]:
        """Every worker's ``value`` (picklable), in rank order, on every worker."""
        raise NotImplementedError


class Single(Collective):
    """One process: the reductions are the identity."""

    def all_reduce_(self, tensors: list[torch.Tensor], algorithm: str = "backend") -> None:
        return None

    def all_true(self, flag: bool) -> bool:
        return bool(flag)

    def gather(self, value: Any) -> list[Any]:
        return [value]


class TorchCollective(Collective):
    """The default ``torch.distributed`` process group (gloo on CPU, NCCL on GPU)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            raise DataParallelError("TorchCollective: torch.distributed has no process group; the data-parallel launcher starts one")
        self._dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.backend = str(dist.get_backend())

    def all_reduce_(self, tensors: list[torch.Tensor], algorithm: str = "backend") -> None:
        dist = self._dist
        if algorithm in ("backend", "nccl_ring", "nccl_tree"):
            for t in tensors:
                dist.all_reduce(t, op=dist.ReduceOp.SUM)
            return
        for t in tensors:
            parts = [torch.empty_like(t) for _ in range(self.world_size)]
            dist.all_gather(parts, t.contiguous())
            t.copy_(ordered_sum(torch.stack(parts), algorithm))

    def all_true(self, flag: bool) -> bool:
        dist = self._dist
        device = "cuda" if self.backend == "nccl" else "cpu"
        t = torch.tensor([0.0 if flag else 1.0], dtype=torch.float32, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t) == 0.0

    def gather(self, value: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        self._dist.all_gather_object(out, value)
        return out


_CURRENT: contextvars.ContextVar[Collective | None] = contextvars.ContextVar("orchestrator_collective", default=None)


def current_collective() -> Collective | None:
    """The collective the data-parallel launcher set for the trial running here, if any."""
    return _CURRENT.get()


@contextlib.contextmanager
def use_collective(collective: Collective) -> Iterator[Collective]:
    """Run the block's trial as one worker of ``collective``."""
    token = _CURRENT.set(collective)
    try:
        yield collective
    finally:
        _CURRENT.reset(token)


def _positive_int(config: Mapping[str, Any], name: str) -> int:
    raw = config.get(name, 1)
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or int(raw) != raw or int(raw) < 1:
        raise DataParallelError(f"{name}: expected a whole number >= 1, found {raw!r}. Set {name} to 1, 2, 4, ...")
    return int(raw)


@dataclass(frozen=True)
class DataParallel:
    """A trial's data-parallel settings, bound to the collective it runs in.

    Attributes:
        world_size: workers the global batch is split across.
        grad_accumulation: micro-batches per worker per step.
        allreduce: how the workers' gradients are added (:data:`ALLREDUCE_LEVELS`).
        collective: the workers (:class:`Single` when ``world_size`` is 1).
    """

    world_size: int = 1
    grad_accumulation: int = 1
    allreduce: str = "backend"
    collective: Collective = Single()

    @classmethod
    def from_config(cls, config: Mapping[str, Any], collective: Collective | None = None) -> "DataParallel":
        """Settings ``world_size``, ``grad_accumulation``, ``allreduce`` checked against the
        collective the trial runs in (every problem at once).

        Raises:
            DataParallelError: bad values, or a ``world_size`` that differs from the workers
                the trial actually has (``world_size`` > 1 needs the Ray executor).
        """
        problems = []
        sizes = {}
        for name in ("world_size", "grad_accumulation"):
            try:
                sizes[name] = _positive_int(config, name)
            except DataParallelError as exc:
                problems.append(str(exc))
        allreduce = str(config.get("allreduce", "backend"))
        if allreduce not in ALLREDUCE_LEVELS:
            problems.append(f"allreduce: expected an all-reduce level, found {allreduce!r}. {did_you_mean(allreduce, ALLREDUCE_LEVELS)}")
        collective = collective or current_collective() or Single()
        world = sizes.get("world_size", collective.world_size)
        if world != collective.world_size:
            problems.append(
                f"world_size is {world} but this trial runs in {collective.world_size} worker(s): a data-parallel trial "
                "(world_size > 1) is started by the Ray executor through Ray Train. Run the study with the Ray executor "
                "(orchestrator run, without --in-process), or set world_size to 1."
            )
        if allreduce in NCCL_ALGO and collective.world_size > 1 and collective.backend != "nccl":
            problems.append(
                f"allreduce {allreduce!r} selects an NCCL algorithm, but the workers use {collective.backend}: gloo does not expose "
                "its all-reduce algorithm. Use allreduce 'backend', 'sequential' or 'pairwise' on CPU."
            )
        if problems:
            raise DataParallelError("; ".join(problems))
        return cls(world, sizes["grad_accumulation"], allreduce, collective)

    @property
    def active(self) -> bool:
        """Whether the batch is split at all (more than one worker or micro-batch)."""
        return self.world_size * self.grad_accumulation > 1

    @property
    def parts(self) -> int:
        """Micro-batches per global batch, over all workers."""
        return self.world_size * self.grad_accumulation

    def micro_batches(self, x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This worker's shard of the global batch, split into ``grad_accumulation`` parts.

        Raises:
            DataParallelError: the global batch does not divide into equal micro-batches.
        """
        n = x.shape[0]
        if n % self.parts:
            raise DataParallelError(
                f"the global batch of {n} examples does not split into world_size x grad_accumulation = "
                f"{self.world_size} x {self.grad_accumulation} = {self.parts} equal micro-batches: "
                f"choose a batch size divisible by {self.parts} (e.g. {max(self.parts, n - n % self.parts)})"
            )
        size = n // self.parts
        start = self.collective.rank * size * self.grad_accumulation
        return [(x[start + i * size : start + (i + 1) * size], y[start + i * size : start + (i + 1) * size]) for i in range(self.grad_accumulation)]

    def record(self, ctx: "TrialContext") -> None:
        ctx.record("world_size", self.world_size)
        ctx.record("grad_accumulation", self.grad_accumulation)
        ctx.record("allreduce", self.allreduce)
        ctx.record("dp_backend", self.collective.backend)
        if self.allreduce in NCCL_ALGO:
            ctx.record("nccl_algo", os.environ.get("NCCL_ALGO"))
