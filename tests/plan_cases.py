"""Studies whose plans are pinned in ``tests/data/plan_golden.json`` (ids, seeds, run order, JSON and CSV).

The golden values were written by the planner before the columnar rewrite (#16, commit
ae39a7c) with ``python tests/plan_cases.py --write``: the rewrite must give every trial the
same id, seeds, seed indices, order and block, and the same ``plan --format csv/json`` text.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator import Factor, Fractional, PlackettBurman, Study, Variant  # noqa: E402

GOLDEN = Path(__file__).parent / "data" / "plan_golden.json"
VARIANTS = {"smoke": Variant(), "full": Variant()}
TUNED = '''
from orchestrator import Factor, Study, Variant
from orchestrator.tuning import Budget, LogUniform, PerLevel, Tuning, Uniform

study = Study(
    name="tuned_golden", workload="landscape",
    factors=[Factor("optimizer", ["sgd", "momentum"]), Factor("budget", [2, 3])],
    params={"optimum_by": "optimizer", "optimum": {"sgd": {"lr": 0.1}, "momentum": {"lr": 0.03, "momentum": 0.9}},
            "floor": {"sgd": 0.3, "momentum": 0.2}, "noise": 0.05, "epochs": 2},
    tuning=Tuning(
        space=PerLevel("optimizer", {"sgd": {"lr": LogUniform(1e-3, 1.0)}, "momentum": {"lr": LogUniform(1e-3, 1.0), "momentum": Uniform(0.5, 0.99)}}),
        select="val_loss", budget=Budget(factor="budget", epochs=2), searches=3, reruns=2,
    ),
    metrics={"test_loss": "minimize", "val_loss": "minimize"}, seed=5,
    variants={"smoke": Variant(tuning={"reruns": 1}), "full": Variant()},
)
'''


def nested(**extra: Any) -> Study:
    return Study(
        name="nested", workload="synthetic",
        factors=[
            Factor("optimizer", ["sgd", "adam"]),
            Factor("lr", {"sgd": [0.1, 0.01], "adam": [1e-3]}, nested_in="optimizer"),
            Factor("precision", ["fp32", "bf16"]),
        ],
        metrics={"response": "minimize"}, variants=VARIANTS, **extra,
    ).with_variant("full")


def two_level(k: int, design: Any, **extra: Any) -> Study:
    return Study(
        name="two_level", workload="synthetic", factors=[Factor(f"f{i}", [-1, 1]) for i in range(k)],
        metrics={"response": "minimize"}, design=design, variants=VARIANTS, **extra,
    ).with_variant("full")


def tuned() -> Study:
    namespace: dict[str, Any] = {}
    exec(compile(TUNED, "tuned_golden.py", "exec"), namespace)
    return namespace["study"].with_variant("full")


CASES: dict[str, Callable[[], Study]] = {
    "nested_default": lambda: nested(replicates=3, params={"lr_scale": 0.5, "tag": "a,\"b\"", "flag": True}),
    "nested_excluded": lambda: nested(replicates=2, exclude=[{"optimizer": "adam", "precision": "bf16"}], seed=11),
    "cell_scope": lambda: nested(replicates=2, seed_scope="cell", seed=3),
    "crossed_streams": lambda: nested(replicates=2, seed_streams={"init": 3, "data": "replicate", "reduction": "fixed"}),
    "user_streams": lambda: nested(replicates=2, seed_streams={"zeta": "replicate", "alpha": 2}, seed_scope="cell"),
    "blocked": lambda: nested(replicates=2, block_by="precision", seed=9),
    "standard_order": lambda: nested(replicates=2, run_order="standard"),
    "fractional": lambda: two_level(7, Fractional(resolution=3), replicates=2),
    "plackett_burman": lambda: two_level(5, PlackettBurman(), seed=2),
    "refuse": lambda: Study(
        name="refuse", workload="digits", factors=[Factor("precision", ["fp32", "bf16"]), Factor("beta2", [0.99, 0.999])],
        params={"optimizer": "adam"}, metrics=["test_accuracy"], variants=VARIANTS, refuse_unrepresentable=True,
    ).with_variant("full"),
    "grid_100x20": lambda: Study(
        name="grid", workload="synthetic", factors=[Factor("a", list(range(100))), Factor("b", [x / 7 for x in range(20)])],
        replicates=3, metrics={"response": "minimize"}, variants=VARIANTS,
    ).with_variant("full"),
    "tuned": tuned,
}


def fingerprint(study: Study) -> dict[str, Any]:
    """What the golden file pins of a study's plan."""
    from orchestrator.design.plan import make_plan, plan_csv

    plan = make_plan(study)
    trials = [
        [t.trial_id, t.cell_id, t.replicate, t.order, t.block, dict(t.seeds), dict(t.seed_index)]
        for t in plan.trials
    ]
    return {
        "trials": len(plan.trials),
        "first": trials[:3],
        "trials_sha256": hashlib.sha256(json.dumps(trials, sort_keys=True).encode()).hexdigest(),
        "csv_sha256": hashlib.sha256(plan_csv(plan).encode()).hexdigest(),
        "json_sha256": hashlib.sha256(json.dumps(plan.to_dict(), indent=2).encode()).hexdigest(),
    }


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    GOLDEN.write_text(json.dumps({name: fingerprint(make()) for name, make in CASES.items()}, indent=1) + "\n")
    print(f"wrote {GOLDEN}")
