"""``landscape``: a planted tuning landscape for tuned studies (tests, benchmarks, examples).

Torch-free and fast: the validation and test losses are known functions of the tuned
settings (with an optimum per level of a factor) plus seed noise, so a search's selection
can be checked against the truth. (This module held the ``tuned`` workload, a grid walked
inside one trial and selected on training loss; tuned studies on Ray Tune replace it:
``Study(tuning=Tuning(...))``, see docs/studies.md, "Tuned settings".)
"""

from __future__ import annotations

import math
from typing import Any

from ..execution.context import TrialContext

__all__ = ["landscape"]


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
