"""``synthetic``: a workload with planted effects and known noise, for tests and benchmarks.

It needs no torch. The response is

    response = base + sum over factors of effects[factor][level]
                    + sum over streams of noise[stream] * z(seed of that stream)
                    + residual_sd * z(seed of (all streams, cell))

where ``z(s)`` is a standard normal drawn from seed ``s``. So variance components per seed
stream are known exactly, and the analysis can be checked against the truth.

Parameters (study ``params`` or factor levels):
    base (float): the response with no effects. Default 0.
    effects (dict): factor -> {level (as str): effect}. Default none.
    noise (dict): seed stream -> standard deviation of its contribution. Default none.
    residual_sd (float): standard deviation of the per-trial noise. Default 0.
    duration_s (float): time the trial takes (busy wait on the CPU). Default 0.
    sleep (bool): sleep instead of busy-waiting (for dispatch benchmarks of many trials). Default False.
    metric_points (int): per-step metric points logged over the trial. Default 0.
    fail_when (dict): factor -> level; a trial with all these levels raises. Default none.
    diverge_when (dict): factor -> level; a trial with all these levels diverges. Default none.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import TrialDiverged

if TYPE_CHECKING:
    from ..execution.context import TrialContext

__all__ = ["synthetic"]


def _matches(levels: Mapping[str, Any], condition: Mapping[str, Any] | None) -> bool:
    if not condition:
        return False
    return all(str(levels.get(k)) == str(v) for k, v in condition.items())


def _z(seed: int) -> float:
    return random.Random(seed).gauss(0.0, 1.0)


def synthetic(ctx: TrialContext) -> dict[str, float]:
    """Planted-effect response; see the module docstring for the parameters."""
    config = ctx.config
    levels = ctx.levels
    ctx.record("deterministic", True)  # a pure function of levels, parameters and seeds
    if _matches(levels, config.get("fail_when")):
        raise RuntimeError(f"synthetic failure planted for levels {dict(config['fail_when'])}")

    value = float(config.get("base", 0.0))
    for factor, table in (config.get("effects") or {}).items():
        if factor in levels:
            value += float(dict(table).get(str(levels[factor]), 0.0))
    for stream, sd in (config.get("noise") or {}).items():
        value += float(sd) * _z(ctx.seed(stream))
    residual_sd = float(config.get("residual_sd", 0.0))
    if residual_sd:
        value += residual_sd * _z(hash_seed(ctx))

    duration = float(config.get("duration_s", 0.0))
    points = int(config.get("metric_points", 0))
    sleep = bool(config.get("sleep", False))
    steps = max(points, 1)
    start = time.perf_counter()
    for step in range(steps):
        deadline = start + duration * (step + 1) / steps
        if sleep:
            time.sleep(max(0.0, deadline - time.perf_counter()))
        else:
            while time.perf_counter() < deadline:
                pass
        if points:
            progress = (step + 1) / steps
            ctx.log(step, loss=value + (1.0 - progress) ** 2)
    if _matches(levels, config.get("diverge_when")):
        raise TrialDiverged(max(steps - 1, 0), "loss is nan (planted)")
    return {"response": value, "loss": value}


def hash_seed(ctx: TrialContext) -> int:
    """A per-trial seed (all streams and the cell), for the residual noise."""
    from ..ids import derive_seed

    return derive_seed(sum(int(s) for s in ctx.seeds.values()) % (2**63), "residual", ctx.trial.replicate, ctx.trial.cell_id)
