"""``tuned``: tune one setting over a grid inside a trial, as a tuning protocol would.

For each value of the tuned setting (e.g. ``lr``) in the trial's grid, run the base
workload with that value and the trial's own seeds, pick the value with the best
``select_by`` metric, and report that run's final metrics plus the chosen value. The grid
width (how many values a method gets to try) thus becomes a factor of the study.

Parameters:
    base_workload (str): the workload to tune (a built-in name or "package.module:function").
    tune (str): the setting tuned over the grid. Default ``"lr"``.
    grids (dict): ``{optimizer: {grid level: [values]}}``, or ``{grid level: [values]}``.
    grid (str): the grid level of this trial (usually a factor, e.g. ``narrow``/``wide``).
    select_by (str): the final metric that picks the value. Default ``"train_loss"``.
    select_goal (str): ``minimize`` or ``maximize``. Default ``minimize``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ..errors import TrialDiverged
from ..execution.context import TrialContext

__all__ = ["landscape", "tuned"]


def _grid(config: dict[str, Any]) -> list[Any]:
    grids = config.get("grids")
    level = config.get("grid")
    if not isinstance(grids, dict) or level is None:
        raise ValueError("the tuned workload needs params 'grids' ({optimizer: {grid: [values]}} or {grid: [values]}) and a 'grid' level")
    optimizer = str(config.get("optimizer"))
    per_optimizer = all(isinstance(v, dict) for v in grids.values())
    if per_optimizer and optimizer not in grids:
        raise ValueError(f"no grids for optimizer {optimizer!r}: grids has optimizers {sorted(grids)}; add grids[{optimizer!r}] = {{{level!r}: [...]}}")
    table = grids[optimizer] if per_optimizer else grids
    if str(level) not in table:
        raise ValueError(f"no grid {level!r} for optimizer {config.get('optimizer')!r}: grids has {sorted(table)}")
    values = list(table[str(level)])
    if not values:
        raise ValueError(f"grid {level!r} is empty")
    return values


def tuned(ctx: TrialContext) -> dict[str, float]:
    """Tune ``tune`` over the trial's grid; see the module docstring."""
    from . import resolve

    config = ctx.config
    base = resolve(str(config.get("base_workload", "digits")))
    setting = str(config.get("tune", "lr"))
    select_by = str(config.get("select_by", "train_loss"))
    maximize = str(config.get("select_goal", "minimize")) == "maximize"
    values = _grid(config)
    best: tuple[float, Any, dict[str, float], dict[str, Any]] | None = None
    for index, value in enumerate(values):
        levels = {**dict(ctx.trial.levels), setting: value}
        sub = TrialContext(dataclasses.replace(ctx.trial, levels=levels), sink=None, device=ctx.device)
        try:
            metrics = {k: float(v) for k, v in (base(sub) or {}).items()}
        except TrialDiverged:
            metrics = {select_by: math.nan, "diverged": 1.0}
        score = metrics.get(select_by, math.nan)
        ctx.log(index, **{f"grid_{select_by}": score, f"grid_{setting}": float(value)})
        if math.isnan(score):
            continue
        key = -score if maximize else score
        if best is None or key < best[0]:
            best = (key, value, metrics, dict(sub.info))
    if best is None:
        raise TrialDiverged(len(values) - 1, f"every value of {setting} in the grid diverged")
    _, value, metrics, info = best
    for name, item in info.items():
        ctx.record(name, item)
    ctx.record(f"chosen_{setting}", value)
    return {**metrics, f"chosen_{setting}": float(value), "grid_size": float(len(values))}


def landscape(ctx: TrialContext) -> dict[str, float]:
    """A planted tuning landscape: a validation and a test loss with a known best configuration.

    Torch-free and fast, for tests and benchmarks of tuned studies. For each tuned setting
    ``x`` with a target in ``optimum`` (nested per level of ``optimum_by`` when given), the
    loss grows with ``(log10 x - log10 target)^2`` (numbers) or by 1 (a choice that misses);
    ``floor`` (per level of ``optimum_by``, or a number) is the best reachable loss.

    Per epoch (``epochs``, default 3) it logs ``val_loss = loss + decay / (epoch + 1)``
    (so early epochs look worse, as in training) and ends with ``val_loss``, ``test_loss``
    (the same loss plus an independent draw: the test split is not the validation split)
    and ``train_loss``. Seed noise: ``noise`` (sd) times a normal draw from the ``data`` seed.
    ``duration_s`` busy-waits that long per epoch.
    """
    import random

    config = ctx.config
    by = config.get("optimum_by")
    optimum = dict(config.get("optimum") or {})
    floor: Any = config.get("floor", 0.0)
    if by is not None:
        level = str(config.get(by))
        optimum = dict(optimum.get(level, {}))
        floor = dict(floor).get(level, 0.0) if isinstance(floor, dict) else floor
    loss = float(floor)
    for name, target in optimum.items():
        value = config.get(name)
        if value is None:
            continue
        if isinstance(target, (int, float)) and not isinstance(target, bool):
            loss += (math.log10(float(value)) - math.log10(float(target))) ** 2
        else:
            loss += 0.0 if str(value) == str(target) else 1.0
    rng = random.Random(ctx.seed("data"))
    noise = float(config.get("noise", 0.0))
    val_noise, test_noise = noise * rng.gauss(0.0, 1.0), noise * rng.gauss(0.0, 1.0)
    epochs, decay = int(config.get("epochs", 3)), float(config.get("decay", 1.0))
    duration = float(config.get("duration_s", 0.0))
    import time

    val = loss
    for epoch in range(epochs):
        deadline = time.perf_counter() + duration
        while time.perf_counter() < deadline:
            pass
        val = loss + val_noise + decay / (epoch + 1)
        ctx.log(epoch, val_loss=val)
    return {"val_loss": val, "test_loss": loss + test_noise + decay / max(epochs, 1), "train_loss": loss + decay / max(epochs, 1)}
