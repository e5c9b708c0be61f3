"""Built-in workloads: ``two_layer_linear`` (the talk's experiment), ``digits`` and
``teacher_student``. Each reads its settings with ``ctx.get`` (defaults below and in
docs/numerics.md), runs under the trial's precision, reduction order and hardware switches,
logs per-step metrics every ``log_every`` steps, ends as diverged on NaN/Inf or blow-up,
and returns final metrics including ``param_hash_num`` (the hex hash is in the info).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch

from .training import Kit, Lockstep, cross_entropy, squared_error

if TYPE_CHECKING:
    from ..execution.context import TrialContext

__all__ = ["digits", "linear_target", "teacher_student", "two_layer_linear"]


def linear_target(recipe: str, rows: int, cols: int, kappa: float, rng: np.random.Generator) -> np.ndarray:
    """The target matrix ``A`` of the two-layer linear network.

    ``linspace``: a uniform random ``rows x cols`` matrix whose rows are scaled by
    ``linspace(1, 1/kappa, rows)`` (the talk's published notebook). ``geometric``: singular
    values ``kappa**(-i/(r-1))``, ``r = min(rows, cols)``, between random orthogonal bases,
    so the condition number is exactly ``kappa``.
    """
    if kappa < 1:
        raise ValueError(f"kappa: expected a condition number >= 1, found {kappa}")
    if recipe == "linspace":
        return rng.uniform(size=(rows, cols)) * np.linspace(1.0, 1.0 / kappa, rows)[:, None]
    if recipe == "geometric":
        r = min(rows, cols)
        u, _ = np.linalg.qr(rng.standard_normal((rows, r)))
        v, _ = np.linalg.qr(rng.standard_normal((cols, r)))
        singular = kappa ** (-np.arange(r) / max(r - 1, 1))
        return (u * singular) @ v.T
    raise ValueError(f"recipe: expected 'linspace' or 'geometric', found {recipe!r}")


def _fit(ctx: "TrialContext", kit: Kit, trainer: Lockstep, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], steps: int, extra: Callable[[float], dict[str, float]] | None = None, epoch: tuple[int, Callable[[], dict[str, float]]] | None = None) -> dict[str, float]:
    """The shared loop: step, guard, log; returns last/min loss and the last gradient norm.

    ``epoch`` = ``(steps per epoch, metrics)``: log ``metrics()`` at the end of every epoch
    (the validation loss a tuning search selects on and early-stops by).
    Stops early only when the optimizer reports that the parameters no longer move
    (Levenberg-Marquardt at its floor); ``steps`` then says how many steps ran."""
    loss = min_loss = float("nan")
    for step in range(steps):
        x, y = next(batches)
        loss = trainer.step(x, y)
        kit.guard.check(step, loss, grad_norm=trainer.grad_norm)
        min_loss = loss if not min_loss <= loss else min_loss
        done = trainer.converged
        if kit.should_log(step, steps) or done:
            ctx.log(step, loss=loss, grad_norm=trainer.grad_norm, **(extra(loss) if extra else {}))
        if epoch is not None and (step + 1) % epoch[0] == 0:
            ctx.log(step, **epoch[1]())
        if done:
            ctx.record("stopped_early_step", step)
            return {"final_loss": loss, "min_loss": min_loss, "grad_norm": trainer.grad_norm, "steps": float(step + 1)}
    return {"final_loss": loss, "min_loss": min_loss, "grad_norm": trainer.grad_norm, "steps": float(steps)}


def _full_batch(x: torch.Tensor, y: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield x, y


def _minibatches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled minibatches, a fresh permutation (from ``generator``) every epoch; the last
    partial batch of an epoch is dropped so every step sums the same number of terms."""
    n = x.shape[0]
    per_epoch = max(n // batch_size, 1)
    while True:
        order = torch.randperm(n, generator=generator).to(x.device)
        for i in range(per_epoch):
            index = order[i * batch_size : (i + 1) * batch_size]
            yield x[index], y[index]


def two_layer_linear(ctx: "TrialContext") -> dict[str, float]:
    """The talk's two-layer linear network: ``Y_hat = W1 W2 X``, ``Y = A X``, squared loss.

    Settings (defaults): ``out_dim`` 10, ``in_dim`` 6, ``width`` 6 (W1 is out_dim x width,
    W2 width x in_dim), ``samples`` 1000 (columns of the Gaussian X), ``recipe`` ``linspace``
    (or ``geometric``), ``kappa`` 10, ``loss_reduction`` ``sum``, ``steps`` 300,
    ``model`` ``deep_linear`` (``depth`` 2 matrices; ``linear`` fits one W), ``init``
    ``normal`` with ``init_scale`` 1 (standard normal, from the ``init`` seed stream, so
    shared across optimizers), ``optimizer`` ``gd``, ``lr`` 1e-4 (``lm``: 1.0), plus the
    common settings. X and A come from the ``data`` seed stream.

    Metrics: per step ``loss``, ``grad_norm``, ``excess_loss`` (the optimum is 0: the problem
    is realisable); final ``final_loss``, ``excess_loss``, ``log10_loss``, ``min_loss``,
    ``grad_norm``, ``init_loss``, ``steps`` and the kit's metrics.
    """
    kit = ctx.numerics
    with kit.hardware():
        rng = kit.numpy_rng("data")
        out_dim, in_dim = int(ctx.get("out_dim", 10)), int(ctx.get("in_dim", 6))
        samples = int(ctx.get("samples", 1000))
        kappa = float(ctx.get("kappa", 10.0))
        recipe = str(ctx.get("recipe", "linspace"))
        x_cols = rng.standard_normal((in_dim, samples))
        a = linear_target(recipe, out_dim, in_dim, kappa, rng)
        ctx.record("target_condition_number", float(np.linalg.cond(a)))
        x, y = kit.tensor(x_cols.T.copy()), kit.tensor((a @ x_cols).T.copy())
        optimizer = str(ctx.get("optimizer", "gd"))
        build = functools.partial(kit.model, str(ctx.get("model", "deep_linear")), (in_dim,), out_dim, width=6, depth=2, bias=False, init="normal")
        trainer = kit.lockstep(build, squared_error, loss_reduction=str(ctx.get("loss_reduction", "sum")), default_lr=1.0 if optimizer in ("lm", "lbfgs") else 1e-4)
        init_loss = trainer.evaluate(x, y)
        steps = int(ctx.get("steps", 300))
        result = _fit(ctx, kit, trainer, _full_batch(x, y), steps, lambda loss: {"excess_loss": loss})
        final = trainer.evaluate(x, y)
        kit.guard.check(steps, final)
        return {
            **result,
            "final_loss": final,
            "excess_loss": final,
            "log10_loss": float(np.log10(max(final, 1e-300))),
            "init_loss": init_loss,
            **kit.finish(trainer),
        }


@functools.lru_cache(maxsize=1)
def _digits_data() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data.astype(np.float64) / 16.0, bunch.target.astype(np.int64)


def digits(ctx: "TrialContext") -> dict[str, float]:
    """Classification of scikit-learn's bundled 8x8 digits (1797 images, no download).

    Settings (defaults): ``test_size`` 0.25 (a stratified split seeded by the ``data``
    stream, which also draws the minibatch order), ``batch_size`` 64, ``epochs`` 3,
    ``model`` ``mlp`` (``cnn``/``cnn_bn`` see 1x8x8 images), ``width`` 64, ``depth`` 1,
    ``optimizer`` ``sgd``, ``lr`` 0.1, ``loss_reduction`` ``mean``, plus the common settings.

    With ``validation_size`` > 0 (default 0), that share of the training split (stratified,
    seeded by the ``data`` stream) is held out as a validation split: ``val_loss`` is logged
    at the end of every epoch and ``val_loss``, ``val_accuracy`` are final metrics (what a
    tuning search selects on; the test split stays unseen).

    Metrics: per step ``loss``, ``grad_norm``; final ``train_loss``, ``test_loss``,
    ``train_accuracy``, ``test_accuracy``, ``test_accuracy_class_0`` ... ``_9``,
    ``final_loss`` (last minibatch), ``min_loss``, ``grad_norm``, ``steps`` and the kit's.
    """
    from sklearn.model_selection import train_test_split

    kit = ctx.numerics
    with kit.hardware():
        features, labels = _digits_data()
        seed = ctx.seed("data")
        x_tr, x_te, y_tr, y_te = train_test_split(features, labels, test_size=float(ctx.get("test_size", 0.25)), random_state=seed % 2**32, stratify=labels)
        validation_size = float(ctx.get("validation_size", 0.0))
        if validation_size > 0:
            x_tr, x_va, y_tr, y_va = train_test_split(x_tr, y_tr, test_size=validation_size, random_state=(seed >> 32) % 2**32, stratify=y_tr)
        model_name = str(ctx.get("model", "mlp"))
        shape = (1, 8, 8) if model_name.startswith("cnn") else (64,)
        x_tr_t, x_te_t = kit.tensor(x_tr.reshape(-1, *shape)), kit.tensor(x_te.reshape(-1, *shape))
        y_tr_t, y_te_t = kit.tensor(y_tr), kit.tensor(y_te)
        if validation_size > 0:
            x_va_t, y_va_t = kit.tensor(x_va.reshape(-1, *shape)), kit.tensor(y_va)
        build = functools.partial(kit.model, model_name, shape, 10, width=64, depth=1)
        trainer = kit.lockstep(build, cross_entropy, loss_reduction=str(ctx.get("loss_reduction", "mean")), default_lr=0.1)
        batch_size = int(ctx.get("batch_size", 64))
        steps = int(ctx.get("epochs", 3)) * max(len(y_tr) // batch_size, 1)
        per_epoch = max(len(y_tr) // batch_size, 1)
        epoch = (per_epoch, lambda: {"val_loss": trainer.evaluate(x_va_t, y_va_t)}) if validation_size > 0 else None
        result = _fit(ctx, kit, trainer, _minibatches(x_tr_t, y_tr_t, batch_size, kit.generator("data")), steps, epoch=epoch)
        metrics = {**result, "train_loss": trainer.evaluate(x_tr_t, y_tr_t), "test_loss": trainer.evaluate(x_te_t, y_te_t)}
        if validation_size > 0:
            metrics["val_loss"] = trainer.evaluate(x_va_t, y_va_t)
        kit.guard.check(steps, metrics["test_loss"])
        model = trainer.model
        model.eval()
        with torch.no_grad(), kit.precision.autocast():
            predicted_tr = model(x_tr_t).argmax(1).cpu().numpy()
            predicted_te = model(x_te_t).argmax(1).cpu().numpy()
        metrics["train_accuracy"] = float((predicted_tr == y_tr).mean())
        metrics["test_accuracy"] = float((predicted_te == y_te).mean())
        if validation_size > 0:
            with torch.no_grad(), kit.precision.autocast():
                metrics["val_accuracy"] = float((model(x_va_t).argmax(1).cpu().numpy() == y_va).mean())
        for k in range(10):
            metrics[f"test_accuracy_class_{k}"] = float((predicted_te[y_te == k] == k).mean())
        return {**metrics, **kit.finish(trainer)}


def teacher_student(ctx: "TrialContext") -> dict[str, float]:
    """Regression onto a planted teacher network: ``y = teacher(x) + noise``.

    The teacher is a tanh MLP with ``teacher_depth`` 1 hidden layers of ``teacher_width`` 16
    units, weights N(0, 1/fan_in), inputs ``x ~ N(0, I_input_dim)`` with ``input_dim`` 16,
    ``out_dim`` 1, Gaussian label noise of sd ``noise`` 0.0; teacher, inputs and noise come
    from the ``data`` seed stream; ``train_samples`` 512, ``test_samples`` 512.
    Student settings (defaults): ``model`` ``mlp``, ``width`` 32, ``depth`` 1,
    ``optimizer`` ``adam``, ``lr`` 0.01 (``lm``/``lbfgs``: 1.0), ``batch_size`` 0 (full
    batch), ``steps`` 200, ``loss_reduction`` ``mean``, plus the common settings.

    Metrics: per step ``loss``, ``grad_norm``; final ``train_loss``, ``test_loss``,
    ``excess_test_loss`` (over the noise floor ``out_dim * noise^2``), ``final_loss``,
    ``min_loss``, ``grad_norm``, ``steps`` and the kit's.
    """
    kit = ctx.numerics
    with kit.hardware():
        g = torch.Generator().manual_seed(ctx.seed("data"))
        d, out_dim = int(ctx.get("input_dim", 16)), int(ctx.get("out_dim", 1))
        width, depth = int(ctx.get("teacher_width", 16)), int(ctx.get("teacher_depth", 1))
        dims = [d] + [width] * depth + [out_dim]
        weights = [torch.randn(b, a, generator=g, dtype=torch.float64) / a**0.5 for a, b in zip(dims, dims[1:])]

        def teacher(x: torch.Tensor) -> torch.Tensor:
            for i, w in enumerate(weights):
                x = x @ w.T
                if i < len(weights) - 1:
                    x = torch.tanh(x)
            return x

        noise = float(ctx.get("noise", 0.0))
        n_tr, n_te = int(ctx.get("train_samples", 512)), int(ctx.get("test_samples", 512))
        x_all = torch.randn(n_tr + n_te, d, generator=g, dtype=torch.float64)
        y_all = teacher(x_all) + noise * torch.randn(n_tr + n_te, out_dim, generator=g, dtype=torch.float64)
        x_tr, y_tr = kit.tensor(x_all[:n_tr]), kit.tensor(y_all[:n_tr])
        x_te, y_te = kit.tensor(x_all[n_tr:]), kit.tensor(y_all[n_tr:])
        optimizer = str(ctx.get("optimizer", "adam"))
        build = functools.partial(kit.model, str(ctx.get("model", "mlp")), (d,), out_dim, width=32, depth=1)
        reduction = str(ctx.get("loss_reduction", "mean"))
        trainer = kit.lockstep(build, squared_error, loss_reduction=reduction, default_lr=1.0 if optimizer in ("lm", "lbfgs") else 0.01)
        batch_size = int(ctx.get("batch_size", 0))
        batches = _full_batch(x_tr, y_tr) if batch_size <= 0 or batch_size >= n_tr else _minibatches(x_tr, y_tr, batch_size, g)
        steps = int(ctx.get("steps", 200))
        result = _fit(ctx, kit, trainer, batches, steps)
        train_loss, test_loss = trainer.evaluate(x_tr, y_tr), trainer.evaluate(x_te, y_te)
        kit.guard.check(steps, test_loss)
        floor = out_dim * noise**2 * (1 if reduction == "mean" else n_te)
        return {**result, "train_loss": train_loss, "test_loss": test_loss, "excess_test_loss": test_loss - floor, **kit.finish(trainer)}
