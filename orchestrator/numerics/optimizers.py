"""Optimizers of the ``optimizer`` factor, written out so that every number lives where the
precision level says.

The first-order methods keep their state *and their hyperparameters* as tensors in the
parameters' dtype: under pure ``bf16``, ``beta2 = 0.999`` is the bfloat16 number 1.0, as the
representability audit reports. Every optimizer has ``step(closure)``; the closure fills
``p.grad`` (in the trial's reduction order) and returns the loss. L-BFGS wraps
``torch.optim.LBFGS``. Levenberg-Marquardt (``lm``) is a damped Gauss-Newton method for
least-squares workloads: its ``step`` takes a residual function instead.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import torch
from torch.func import jacfwd

from ..errors import OrchestratorError, did_you_mean
from .audit import OPTIMIZER_DEFAULTS, OPTIMIZERS

__all__ = ["FirstOrder", "LBFGS", "LevenbergMarquardt", "OptimizerError", "make_optimizer"]


class OptimizerError(OrchestratorError):
    """An optimizer that cannot run on this workload (e.g. ``lm`` on a classification loss)."""


class FirstOrder:
    """SGD/GD, heavy-ball momentum, Nesterov, Adam, AdamW and RMSProp on a list of parameters.

    Updates (``g`` with L2 ``weight_decay`` added, except AdamW which decays decoupled):
        sgd/gd:   p -= lr g
        momentum: b = mu b + g;             p -= lr b
        nesterov: b = mu b + g;             p -= lr (g + mu b)
        adam(w):  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
                  p -= lr (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
        rmsprop:  v = alpha v + (1-alpha) g^2;  p -= lr g / (sqrt(v) + eps)
    """

    def __init__(self, name: str, params: Sequence[torch.Tensor], hyper: Mapping[str, float]):
        self.name = name
        self.params = list(params)
        self.dtype = self.params[0].dtype
        self.hyper = {k: torch.tensor(float(v), dtype=self.dtype, device=self.params[0].device) for k, v in hyper.items()}
        self.state: list[dict[str, torch.Tensor]] = [{} for _ in self.params]
        self.t = 0

    def hyperparameters(self) -> dict[str, float]:
        """The hyperparameters as stored (in the state dtype)."""
        return {k: float(v) for k, v in self.hyper.items()}

    def state_dtypes(self) -> list[str]:
        return sorted({str(t.dtype).replace("torch.", "") for s in self.state for t in s.values()} | {str(self.dtype).replace("torch.", "")})

    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Call ``closure`` (fills ``p.grad``, returns the loss), then :meth:`apply`."""
        loss = closure()
        self.apply()
        return loss

    @torch.no_grad()
    def apply(self) -> None:
        """One update from the gradients in ``p.grad``."""
        self.t += 1
        h = self.hyper
        one = torch.ones((), dtype=self.dtype, device=self.params[0].device)
        for p, state in zip(self.params, self.state):
            if p.grad is None:
                continue
            g = p.grad
            wd = h.get("weight_decay")
            if wd is not None and float(wd) != 0 and self.name != "adamw":
                g = g + wd * p
            if self.name in ("sgd", "gd"):
                p.sub_(h["lr"] * g)
            elif self.name in ("momentum", "nesterov"):
                buf = state.setdefault("momentum_buffer", torch.zeros_like(p))
                buf.mul_(h["momentum"]).add_(g)
                p.sub_(h["lr"] * (g + h["momentum"] * buf if self.name == "nesterov" else buf))
            elif self.name in ("adam", "adamw"):
                if self.name == "adamw" and wd is not None and float(wd) != 0:
                    p.mul_(one - h["lr"] * wd)
                m = state.setdefault("exp_avg", torch.zeros_like(p))
                v = state.setdefault("exp_avg_sq", torch.zeros_like(p))
                m.mul_(h["beta1"]).add_((one - h["beta1"]) * g)
                v.mul_(h["beta2"]).add_((one - h["beta2"]) * g * g)
                c1 = one - h["beta1"] ** self.t
                c2 = one - h["beta2"] ** self.t
                p.sub_(h["lr"] * (m / c1) / ((v / c2).sqrt() + h["eps"]))
            elif self.name == "rmsprop":
                v = state.setdefault("square_avg", torch.zeros_like(p))
                v.mul_(h["alpha"]).add_((one - h["alpha"]) * g * g)
                p.sub_(h["lr"] * g / (v.sqrt() + h["eps"]))


class LBFGS:
    """``torch.optim.LBFGS`` with one iteration per ``step`` (settings ``history_size``,
    ``line_search``: ``strong_wolfe`` (default) or ``none``). Its state lives in the
    parameters' dtype; its hyperparameters are Python floats."""

    name = "lbfgs"

    def __init__(self, params: Sequence[torch.Tensor], lr: float, history_size: int = 10, line_search: str = "strong_wolfe"):
        self.params = list(params)
        self.inner = torch.optim.LBFGS(
            self.params, lr=lr, max_iter=1, history_size=history_size, line_search_fn=None if line_search == "none" else line_search
        )

    def hyperparameters(self) -> dict[str, float]:
        return {"lr": float(self.inner.param_groups[0]["lr"])}

    def state_dtypes(self) -> list[str]:
        found = {str(self.params[0].dtype).replace("torch.", "")}
        for state in self.inner.state.values():
            for value in state.values():
                for item in value if isinstance(value, list) else [value]:
                    if isinstance(item, torch.Tensor) and item.is_floating_point():
                        found.add(str(item.dtype).replace("torch.", ""))
        return sorted(found)

    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        def wrapped() -> torch.Tensor:
            self.inner.zero_grad(set_to_none=False)
            return closure()

        return self.inner.step(wrapped)


class LevenbergMarquardt:
    """Damped Gauss-Newton: solve ``(J^T J + lambda D) delta = J^T r``, then ``p -= lr delta``.

    ``D`` is the identity (``damping_mode='levenberg'``, default) or ``diag(J^T J)``
    (``'marquardt'``). With ``adaptive_damping`` (default True) a step that does not lower
    the loss is rejected and ``lambda`` multiplied by 10 (at most 8 tries per step, after
    which the parameters stay put); an accepted one divides it by 10.
    ``J`` comes from forward-mode differentiation of the residuals. Sums over examples of
    ``J^T J`` and ``J^T r`` follow the trial's reduction order. The system is solved in the
    parameter dtype, but at least float32 (``torch.linalg.solve`` has no 16-bit kernels).
    """

    name = "lm"

    def __init__(self, params: Sequence[torch.Tensor], lr: float = 1.0, damping: float = 1e-3, *, mode: str = "levenberg", adaptive: bool = True):
        if mode not in ("levenberg", "marquardt"):
            raise ValueError(f"damping_mode: expected 'levenberg' or 'marquardt', found {mode!r}")
        self.params = list(params)
        self.dtype = self.params[0].dtype
        self.solve_dtype = self.dtype if self.dtype in (torch.float32, torch.float64) else torch.float32
        self.lr = float(lr)
        self.damping = float(damping)
        self.mode = mode
        self.adaptive = adaptive
        self.rejected = 0
        self.last_grad_norm = math.nan
        self.max_tries = 8
        self.stalled = 0  # consecutive steps with every try rejected (the parameters did not move)

    def hyperparameters(self) -> dict[str, float]:
        return {"lr": self.lr, "damping": self.damping}

    def state_dtypes(self) -> list[str]:
        return sorted({str(self.dtype).replace("torch.", ""), str(self.solve_dtype).replace("torch.", "")})

    def _flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def _assign(self, flat: torch.Tensor) -> None:
        start = 0
        with torch.no_grad():
            for p in self.params:
                p.copy_(flat[start : start + p.numel()].reshape(p.shape))
                start += p.numel()

    @torch.no_grad()
    def step(self, residuals: Callable[[torch.Tensor], torch.Tensor], reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """One damped Gauss-Newton step.

        Args:
            residuals: flat parameters -> residuals ``[n, k]`` (one row per example).
            reduce: sums ``[n, ...]`` over examples in the trial's order; None leaves
                ``J^T J`` and ``J^T r`` to one matrix product (the ``fixed`` order).

        Returns:
            The loss ``sum r^2`` after the step (before it, if the step was rejected).
        """
        theta = self._flat()
        r = residuals(theta)
        jac = jacfwd(residuals)(theta)  # [n, k, P]
        n, k, size = jac.shape
        if reduce is None:
            reduce = lambda v: v.sum(0)  # noqa: E731
            flat_j, flat_r = jac.reshape(n * k, size), r.reshape(n * k)
            jtj, jtr = (flat_j.T @ flat_j).to(self.solve_dtype), (flat_j.T @ flat_r).to(self.solve_dtype)
        else:
            jtj = reduce(torch.einsum("nkp,nkq->npq", jac, jac)).to(self.solve_dtype)
            jtr = reduce(torch.einsum("nkp,nk->np", jac, r)).to(self.solve_dtype)
        loss = reduce((r * r).sum(1))
        self.last_grad_norm = 2.0 * float(torch.linalg.vector_norm(jtr))
        scale = torch.diagonal(jtj).clone() if self.mode == "marquardt" else torch.ones(size, dtype=self.solve_dtype, device=theta.device)
        for _ in range(self.max_tries):
            system = jtj + self.damping * torch.diag(scale)
            delta = torch.linalg.lstsq(system, jtr.unsqueeze(1)).solution.squeeze(1)
            candidate = theta - (self.lr * delta).to(self.dtype)
            if not self.adaptive:
                self._assign(candidate)
                return reduce((residuals(candidate) ** 2).sum(1))
            r_new = residuals(candidate)
            new_loss = reduce((r_new * r_new).sum(1))
            if torch.isfinite(new_loss) and new_loss < loss:
                self.stalled = 0
                self._assign(candidate)
                self.damping = max(self.damping / 10.0, 1e-15)
                return new_loss
            self.rejected += 1
            self.damping = min(self.damping * 10.0, 1e15)
        self.stalled += 1
        return loss


def make_optimizer(name: str, params: Sequence[torch.Tensor], config: Mapping[str, Any], *, default_lr: float) -> Any:
    """The optimizer ``name`` with its hyperparameters from ``config`` (defaults:
    :data:`~orchestrator.numerics.audit.OPTIMIZER_DEFAULTS`; ``lr`` defaults to ``default_lr``)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected an optimizer level, found {name!r}. {did_you_mean(str(name), OPTIMIZERS)}")
    hyper = {k: float(config.get(k, v if v is not None else default_lr)) for k, v in OPTIMIZER_DEFAULTS[name].items()}
    if name == "lbfgs":
        return LBFGS(params, hyper["lr"], int(config.get("history_size", 10)), str(config.get("line_search", "strong_wolfe")))
    if name == "lm":
        return LevenbergMarquardt(params, hyper["lr"], hyper["damping"], mode=str(config.get("damping_mode", "levenberg")), adaptive=bool(config.get("adaptive_damping", True)))
    return FirstOrder(name, params, hyper)
