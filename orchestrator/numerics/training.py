"""The helpers a workload trains with: :class:`Kit` (everything bound to a trial's context),
:class:`Trainer` (one optimisation step in the trial's precision and reduction order, with an
optional lockstep twin in a reference order), :class:`DivergenceGuard` and :func:`param_hash`.

Example (a user workload; ``"mypkg.work:fit_line"`` in a study)::

    import torch
    from orchestrator import numerics
    from orchestrator.numerics.training import squared_error

    def fit_line(ctx):
        kit = numerics.Kit(ctx)                    # precision, reduction order, seeds, audit
        with kit.hardware():                       # threads, deterministic algorithms, TF32
            g = kit.generator("data")
            x = torch.randn(256, 3, generator=g, dtype=torch.float64)
            y = x @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)
            x, y = kit.tensor(x), kit.tensor(y)
            model = kit.model("linear", (3,), 1)  # init from the 'init' seed stream
            trainer = kit.trainer(model, squared_error, default_lr=0.1)
            steps = int(ctx.get("steps", 100))
            for step in range(steps):
                loss = trainer.step(x, y)
                kit.guard.check(step, loss)        # raises TrialDiverged on NaN/blow-up
                if kit.should_log(step, steps):
                    ctx.log(step, loss=loss, grad_norm=trainer.grad_norm)
            return {"final_loss": loss, **kit.finish(trainer)}
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from ..errors import TrialDiverged
from .audit import audit_config
from .models import initialise, make_model
from .optimizers import FirstOrder, LevenbergMarquardt, OptimizerError, make_optimizer
from .parallel import DataParallel, DataParallelError
from .precision import LossScaler, Precision, dtype_name, hardware
from .reduction import Reducer, per_example_contributions

if TYPE_CHECKING:
    from ..execution.context import TrialContext

__all__ = ["DivergenceGuard", "Kit", "Trainer", "cross_entropy", "param_hash", "squared_error"]


def squared_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example summed squared error ``sum_k (output - target)^2``."""
    return ((output - target) ** 2).reshape(output.shape[0], -1).sum(1)


def cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy (computed in at least float32 under autocast)."""
    return nn.functional.cross_entropy(output, target, reduction="none")



def param_hash(model: nn.Module) -> str:
    """SHA-256 of the parameters (names, dtypes, shapes and bytes): equal iff bit-identical."""
    digest = hashlib.sha256()
    for name, p in model.named_parameters():
        digest.update(f"{name}|{p.dtype}|{tuple(p.shape)}|".encode())
        digest.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def flat_params(model: nn.Module) -> torch.Tensor:
    """All parameters as one float64 vector (for distances between runs)."""
    return torch.cat([p.detach().to(torch.float64).reshape(-1).cpu() for p in model.parameters()])


class DivergenceGuard:
    """Ends a trial as diverged: a non-finite loss, or one above ``blowup`` x the first loss.

    Setting ``blowup`` (default 1e6; 0 disables the blow-up test).
    """

    def __init__(self, blowup: float = 1e6):
        self.blowup = float(blowup)
        self.reference: float | None = None

    def check(self, step: int, loss: float, **metrics: float) -> None:
        loss = float(loss)
        if not math.isfinite(loss):
            raise TrialDiverged(step, f"loss is {loss}", {"loss": loss, **metrics})
        if self.reference is None:
            self.reference = max(abs(loss), 1e-30)
        elif self.blowup and loss > self.blowup * self.reference:
            raise TrialDiverged(step, f"loss {loss:.4g} exceeds {self.blowup:g} x the first loss {self.reference:.4g}", {"loss": loss, **metrics})


class Trainer:
    """One optimisation step at a time, in the trial's precision and reduction order.

    Args:
        kit: the trial's :class:`Kit`.
        model: the model (already initialised and cast by :meth:`Kit.model`).
        loss_fn: ``(output, target) -> per-example losses``.
        loss_reduction: ``mean`` or ``sum`` over the batch.
        default_lr: the learning rate when the study sets none.
        reducer: the reduction order (default: the trial's).
    """

    def __init__(self, kit: "Kit", model: nn.Module, loss_fn: Callable, *, loss_reduction: str = "mean", default_lr: float = 0.1, reducer: Reducer | None = None):
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction: expected 'mean' or 'sum', found {loss_reduction!r}")
        config = kit.ctx.config
        self.kit = kit
        self.model = model
        self.loss_fn = loss_fn
        self.loss_reduction = loss_reduction
        self.precision = kit.precision
        self.reducer = reducer or kit.reducer
        self.optimizer_name = str(config.get("optimizer", "sgd"))
        if self.optimizer_name == "lm" and loss_fn is not squared_error:
            raise OptimizerError(
                "optimizer 'lm' (Levenberg-Marquardt) needs a least-squares loss; this workload's loss is "
                f"{getattr(loss_fn, '__name__', loss_fn)}. Use it with two_layer_linear or teacher_student."
            )
        self.optimizer = make_optimizer(self.optimizer_name, list(model.parameters()), config, default_lr=default_lr)
        self.scaler = LossScaler.from_config(self.precision, config.get("loss_scale", "dynamic"))
        self.grad_norm = math.nan
        self.steps = 0
        self.output_dtype: torch.dtype | None = None
        self.bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        self.parallel = kit.parallel
        if self.parallel.active:
            self._check_parallel()

    def _check_parallel(self) -> None:
        dp = self.parallel
        problems = []
        if not isinstance(self.optimizer, FirstOrder):
            problems.append(
                f"optimizer {self.optimizer_name!r} is a full-batch method (line search or a damped Gauss-Newton solve) and runs "
                "only with world_size 1 and grad_accumulation 1; use a first-order optimizer (sgd, momentum, adam, ...)"
            )
        if self.bn:
            problems.append(
                "batch normalization normalizes over the examples of a batch, so splitting the batch across workers or "
                "micro-batches changes the mathematics, not only the order of accumulation; use a model without _bn"
            )
        if problems:
            raise DataParallelError(f"world_size {dp.world_size} x grad_accumulation {dp.grad_accumulation}: " + "; ".join(problems) + ".")

    @property
    def converged(self) -> bool:
        """Levenberg-Marquardt only: three steps in a row rejected at every damping tried, so
        the parameters no longer move; the loop may stop (the remaining steps change nothing)."""
        return isinstance(self.optimizer, LevenbergMarquardt) and self.optimizer.stalled >= 3

    def _weight(self, n: int) -> float:
        return 1.0 / n if self.loss_reduction == "mean" else 1.0

    def _gradients(self, x: torch.Tensor, y: torch.Tensor, share: float = 1.0) -> tuple[float, bool]:
        """Fill ``p.grad`` (unscaled) with the gradient of ``share`` x the batch loss; return
        (``share`` x loss, all gradients finite). ``share`` is a power of two under data
        parallelism (1 / micro-batches of a mean loss), so it scales exactly."""
        params = list(self.model.parameters())
        self.model.train()
        scale = self.scaler.scale
        if not self.reducer.explicit:
            for p in params:
                p.grad = None
            with self.precision.autocast():
                out = self.model(x)
            self.output_dtype = out.dtype
            losses = self.loss_fn(out.float() if self.precision.autocast_dtype else out, y)
            loss = losses.mean() if self.loss_reduction == "mean" else losses.sum()
            if share != 1.0:
                loss = loss * share
            (loss * scale if scale != 1.0 else loss).backward()
            loss_value = float(loss.detach())
        else:
            n = x.shape[0]
            losses, grads = per_example_contributions(
                self.model, self.loss_fn, x, y, weight=self._weight(n) * scale * share, autocast=self.precision.autocast if self.precision.autocast_dtype else None
            )
            names = [name for name, _ in self.model.named_parameters()]
            dtype = grads[names[0]].dtype
            summed = self.reducer.sum_many([(losses * (self._weight(n) * share)).to(dtype)] + [grads[k] for k in names])
            loss_value = float(summed[0])
            for p, g in zip(params, summed[1:]):
                p.grad = g.to(p.dtype)
            with torch.no_grad(), self.precision.autocast():
                # the dtype the forward computes in; with batch norm this pass also updates
                # the running statistics once, as the kernel path does
                self.output_dtype = self.model(x[:2] if not self.bn else x).dtype
        grads = [p.grad for p in params if p.grad is not None]
        finite = self.scaler.unscale_(grads) if self.scaler.enabled else True
        self.grad_norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads))) if finite else math.inf
        return loss_value, finite

    def _parallel_gradients(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, bool]:
        """The global batch ``(x, y)`` split across the workers and micro-batches: each
        micro-batch's gradient (in this trial's order), added in the accumulator dtype, then
        all-reduced in it; ``p.grad`` is the sum rounded once to the parameter dtype."""
        dp = self.parallel
        params = list(self.model.parameters())
        accumulator = self.reducer.accumulator_dtype
        share = 1.0 / dp.parts if self.loss_reduction == "mean" else 1.0
        total: torch.Tensor | None = None
        loss_sum, finite = 0.0, True
        for xm, ym in dp.micro_batches(x, y):
            loss_m, finite_m = self._gradients(xm, ym, share=share)
            finite = finite and finite_m
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(accumulator) for p in params])
            total = flat.clone() if total is None else total.add_(flat)
            loss_sum += loss_m
        if total is None:  # pragma: no cover - micro_batches returns at least one part
            raise DataParallelError("no micro-batch to compute a gradient on")
        dp.collective.all_reduce_([total], dp.allreduce)
        loss_t = torch.tensor([loss_sum], dtype=torch.float64, device=total.device)
        dp.collective.all_reduce_([loss_t])
        finite = dp.collective.all_true(finite)
        start = 0
        for p in params:
            p.grad = total[start : start + p.numel()].reshape(p.shape).to(p.dtype)
            start += p.numel()
        self.grad_norm = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params))) if finite else math.inf
        return float(loss_t[0]), finite

    def _residual_fn(self, x: torch.Tensor, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        shapes = [(name, p.shape, p.numel()) for name, p in self.model.named_parameters()]
        buffers = dict(self.model.named_buffers())

        def residuals(flat: torch.Tensor) -> torch.Tensor:
            params, start = {}, 0
            for name, shape, size in shapes:
                params[name] = flat[start : start + size].reshape(shape)
                start += size
            with self.precision.autocast():
                out = functional_call(self.model, (params, buffers), (x,))
            return (out.to(flat.dtype) - y).reshape(x.shape[0], -1)

        return residuals

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One step on the batch ``(x, y)``; returns the loss before the step (LM: after)."""
        self.steps += 1
        if isinstance(self.optimizer, LevenbergMarquardt):
            self.model.train()
            weight = self._weight(x.shape[0])
            reduce = self.reducer.sum if self.reducer.explicit else None
            self.optimizer.step(self._residual_fn(x, y), reduce)
            self.grad_norm = self.optimizer.last_grad_norm * weight
            return float(self.evaluate(x, y))
        if isinstance(self.optimizer, FirstOrder):
            loss, finite = self._parallel_gradients(x, y) if self.parallel.active else self._gradients(x, y)
            if finite:
                self.optimizer.apply()
            self.scaler.update(finite)
            return loss
        box: dict[str, float] = {}

        def closure() -> torch.Tensor:
            loss, _ = self._gradients(x, y)
            box.setdefault("loss", loss)
            return torch.tensor(loss, dtype=torch.float64)

        self.optimizer.step(closure)
        return box["loss"]

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """The loss on ``(x, y)`` in eval mode, reduced by the kernel (``mean``/``sum``)."""
        self.model.eval()
        with self.precision.autocast():
            out = self.model(x)
        losses = self.loss_fn(out.float() if self.precision.autocast_dtype else out, y)
        self.model.train()
        return float(losses.double().mean() if self.loss_reduction == "mean" else losses.double().sum())


class Lockstep:
    """A trainer and, when the study sets ``reference_order``, a twin that differs only in
    its reduction order, stepped on the same batches to measure what the order changed."""

    def __init__(self, kit: "Kit", build: Callable[[], nn.Module], loss_fn: Callable, **options: Any):
        self.main = Trainer(kit, build(), loss_fn, **options)
        order = kit.ctx.get("reference_order")
        self.twin = None
        self.first_diff_step = -1
        if order:
            reducer = kit.reducer.like(str(order))
            self.twin = Trainer(kit, build(), loss_fn, reducer=reducer, **options)
            kit.ctx.record("reference_order", str(order))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.main, name)

    @property
    def converged(self) -> bool:
        return self.main.converged and (self.twin is None or self.twin.converged)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        loss = self.main.step(x, y)
        if self.twin is not None:
            self.twin_loss = self.twin.step(x, y)
            if self.first_diff_step < 0 and not all(torch.equal(a, b) for a, b in zip(self.main.model.parameters(), self.twin.model.parameters())):
                self.first_diff_step = self.main.steps - 1
        return loss

    def reference_metrics(self) -> dict[str, float]:
        if self.twin is None:
            return {}
        a, b = flat_params(self.main.model), flat_params(self.twin.model)
        distance = float(torch.linalg.vector_norm(a - b))
        return {
            "ref_param_distance": distance,
            "ref_param_rel_distance": distance / max(float(torch.linalg.vector_norm(b)), 1e-300),
            "ref_first_diff_step": float(self.first_diff_step),
            "ref_identical": float(distance == 0.0 and self.first_diff_step < 0),
        }


class Kit:
    """Everything numerics about one trial, bound to its context (also ``ctx.numerics``).

    Creating a kit resolves and records the precision (with any fallback), the reduction
    order and the representability audit of the trial's config.
    """

    def __init__(self, ctx: "TrialContext"):
        self.ctx = ctx
        self.precision = Precision.from_context(ctx)
        self.reducer = Reducer.from_context(ctx, self.precision.param_dtype)
        self.parallel = DataParallel.from_config(ctx.config)
        self.parallel.record(ctx)
        self.guard = DivergenceGuard(float(ctx.get("blowup", 1e6)))
        findings = audit_config(ctx.config)
        ctx.record("audit", [f.to_dict() for f in findings])
        ctx.record("optimizer", str(ctx.get("optimizer", "sgd")))

    def hardware(self) -> contextlib.AbstractContextManager:
        """Apply and record threads, deterministic algorithms, cuDNN benchmark off, TF32."""
        return hardware(self.ctx, self.precision)

    def generator(self, stream: str) -> torch.Generator:
        """A CPU generator seeded from one of the trial's seed streams."""
        return torch.Generator().manual_seed(self.ctx.seed(stream))

    def numpy_rng(self, stream: str) -> np.random.Generator:
        return np.random.default_rng(self.ctx.seed(stream))

    def tensor(self, value: Any, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``value`` on the trial's device, floating values in the parameter dtype."""
        t = torch.as_tensor(value)
        if t.is_floating_point():
            t = t.to(dtype or self.precision.param_dtype)
        return t.to(self.ctx.device)

    def model(self, name: str | None, input_shape: Sequence[int], out_dim: int, **defaults: Any) -> nn.Module:
        """Model ``name`` (default: the ``model`` setting) for inputs of ``input_shape``,
        initialised from the ``init`` seed stream, cast to the parameter dtype and placed on
        the device. Settings ``width``, ``depth``, ``bias``, ``init`` (``fan_in``/``normal``)
        and ``init_scale`` come from the trial, else from ``defaults``."""
        config = {"init": "fan_in", "init_scale": 1.0, **defaults, **self.ctx.config}
        name = name or str(config.get("model", "mlp"))
        model = make_model(name, input_shape, out_dim, config).to(torch.float64)
        initialise(model, self.ctx.seed("init"), scheme=str(config["init"]), scale=float(config["init_scale"]))
        self.ctx.record("model", name)
        return model.to(device=self.ctx.device, dtype=self.precision.param_dtype)

    def trainer(self, model: nn.Module, loss_fn: Callable, **options: Any) -> Trainer:
        return Trainer(self, model, loss_fn, **options)

    def lockstep(self, build: Callable[[], nn.Module], loss_fn: Callable, **options: Any) -> Lockstep:
        """A trainer plus, if ``reference_order`` is set, its twin in that order."""
        return Lockstep(self, build, loss_fn, **options)

    def should_log(self, step: int, total: int) -> bool:
        return self.ctx.should_log(step, total)

    def finish(self, trainer: Trainer | Lockstep) -> dict[str, float]:
        """Record what actually happened (dtypes, hash, scaler) and return final metrics."""
        main = trainer.main if isinstance(trainer, Lockstep) else trainer
        model, optimizer = main.model, main.optimizer
        for name, p in model.named_parameters():
            if not bool(torch.isfinite(p).all()):
                raise TrialDiverged(main.steps, f"parameter {name} is not finite after training")
        digest = param_hash(model)
        ctx = self.ctx
        ctx.record("param_hash", digest)
        ctx.record("param_dtypes", sorted({dtype_name(p.dtype) for p in model.parameters()}))
        ctx.record("grad_dtypes", sorted({dtype_name(p.grad.dtype) for p in model.parameters() if p.grad is not None}))
        ctx.record("optimizer_state_dtypes", optimizer.state_dtypes())
        ctx.record("optimizer_hyperparameters_stored", optimizer.hyperparameters())
        main.reducer.record(ctx)  # what accumulated: the reducer decides the path and the dtype
        ctx.record("output_dtype", dtype_name(main.output_dtype) if main.output_dtype is not None else None)
        ctx.record("loss_scale_final", main.scaler.scale)
        ctx.record("loss_scale_skipped_steps", main.scaler.skipped)
        if isinstance(optimizer, LevenbergMarquardt):
            ctx.record("lm_rejected_steps", optimizer.rejected)
            ctx.record("lm_damping_final", optimizer.damping)
        metrics = {
            "param_hash_num": float(int(digest[:12], 16)),
            "param_norm": float(torch.linalg.vector_norm(flat_params(model))),
            "precision_fallback": float(self.precision.fallback is not None),
            "audit_findings": float(len(ctx.info.get("audit", []))),
            "loss_scale_skipped_steps": float(main.scaler.skipped),
        }
        if isinstance(trainer, Lockstep):
            metrics.update(trainer.reference_metrics())
        return metrics
