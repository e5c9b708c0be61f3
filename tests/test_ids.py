"""Identifiers are content hashes: stable across processes and under unrelated changes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from orchestrator import Factor, Study, Variant, make_plan
from orchestrator.ids import canonical_json, cell_id, derive_seed, trial_id

STUDY_TEMPLATE = """
from orchestrator import Factor, Study, Variant
study = Study(
    name="ids",
    workload="synthetic",
    factors=[Factor("optimizer", {optimizers!r}), Factor("lr", [0.1, 0.01])],
    metrics={{"response": "minimize"}},
    replicates=2,
    seed=11,
    variants={{"smoke": Variant(), "full": Variant()}},
)
"""


def plan_in_subprocess(path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator", "plan", str(path), "--format", "json"],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout)


def test_trial_ids_identical_in_two_processes_and_stable_when_a_level_is_added(tmp_path):
    path = tmp_path / "ids.py"
    path.write_text(STUDY_TEMPLATE.format(optimizers=["sgd", "adam"]))
    first = plan_in_subprocess(path)
    second = plan_in_subprocess(path)
    ids = lambda plan: {(t["cell_id"], t["trial_id"]) for t in plan["trials"]}  # noqa: E731
    assert ids(first) == ids(second)
    assert len(first["trials"]) == 8

    path.write_text(STUDY_TEMPLATE.format(optimizers=["sgd", "adam", "lbfgs"]))
    grown = plan_in_subprocess(path)
    assert ids(first) < ids(grown)
    assert len(grown["trials"]) == 12


def test_ids_are_pinned_values():
    # pinned so an accidental change of the hashing scheme is caught
    assert canonical_json({"b": 1.0, "a": [1, "x", True]}) == '{"a":[1,"x",true],"b":1.0}'
    assert cell_id({"optimizer": "adam", "lr": 0.001}) == cell_id({"lr": 0.001, "optimizer": "adam"})
    assert cell_id({"optimizer": "adam", "lr": 0.001}) == "c2265fd32ee40456"
    assert trial_id("cabc", 0, {"init": 1}, {"steps": 10}) == "t1dbdb42de6d01ff"
    assert derive_seed(0, "init", 0) == 4880557582994044598
    assert derive_seed(0, "init", 0) != derive_seed(0, "data", 0)
    assert derive_seed(0, "init", 0) != derive_seed(1, "init", 0)
    assert 0 <= derive_seed(123, "reduction", 5, "cabc") < 2**63


def test_int_and_float_levels_are_different_cells():
    assert cell_id({"lr": 1}) != cell_id({"lr": 1.0})


def test_params_change_trial_ids_but_not_cell_ids():
    def plan(steps):
        return make_plan(
            Study(
                name="p", workload="synthetic", factors=[Factor("a", [1, 2])], params={"steps": steps},
                metrics=["response"], variants={"smoke": Variant(), "full": Variant()},
            ).with_variant("full")
        )

    a, b = plan(10), plan(20)
    assert [c.cell_id for c in a.cells] == [c.cell_id for c in b.cells]
    assert {t.trial_id for t in a.trials}.isdisjoint({t.trial_id for t in b.trials})
