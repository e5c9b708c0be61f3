"""The design engine against published tables and its own invariants."""

from __future__ import annotations

import itertools

import pytest

from orchestrator import Factor, Fractional, FullFactorial, PlackettBurman, Study, Variant, make_plan
from orchestrator.definition.designs import (
    STANDARD_GENERATORS,
    defining_relation,
    fractional_matrix,
    parse_generators,
    plackett_burman_matrix,
)
from orchestrator.design.plan import alias_table

VARIANTS = {"smoke": Variant(), "full": Variant()}


def two_level_study(k: int, design, **extra) -> Study:
    return Study(
        name="t",
        workload="synthetic",
        factors=[Factor(f"f{i}", [-1, 1]) for i in range(k)],
        metrics={"response": "minimize"},
        design=design,
        variants=VARIANTS,
        **extra,
    ).with_variant("full")


# Montgomery, Design and Analysis of Experiments, Table 8.19: the 2^(7-4)_III design with
# generators D=AB, E=AC, F=BC, G=ABC; main effects aliased with two-factor interactions.
MONTGOMERY_7_4 = {
    "A": {"BD", "CE", "FG"},
    "B": {"AD", "CF", "EG"},
    "C": {"AE", "BF", "DG"},
    "D": {"AB", "CG", "EF"},
    "E": {"AC", "BG", "DF"},
    "F": {"BC", "AG", "DE"},
    "G": {"CD", "BE", "AF"},
}


def test_seven_factor_resolution_three_matches_the_published_alias_table():
    plan = make_plan(two_level_study(7, Fractional(resolution=3)))
    assert plan.counts["trials"] == 8
    assert plan.resolution == 3
    table = {row.letters: set(row.alias_letters) for row in plan.aliases}
    assert table == MONTGOMERY_7_4
    assert plan.defining_relation[:7] == ["ABD", "ACE", "AFG", "BCF", "BEG", "CDG", "DEF"]


def test_five_factor_resolution_five_has_sixteen_runs_and_clear_effects():
    plan = make_plan(two_level_study(5, Fractional(resolution=5)))
    assert plan.counts["trials"] == 16
    assert plan.resolution == 5
    assert plan.defining_relation == ["ABCDE"]
    # resolution V: no main effect or two-factor interaction is aliased with another of order <= 2
    assert all(row.aliases == () for row in plan.aliases)


@pytest.mark.parametrize(("k", "p"), sorted(STANDARD_GENERATORS))
def test_every_tabled_design_has_its_stated_resolution_and_is_orthogonal(k, p):
    resolution, generators = STANDARD_GENERATORS[(k, p)]
    parsed, problems = parse_generators(generators, k)
    assert problems == []
    assert min(len(w) for w in defining_relation(parsed)) == resolution
    matrix = fractional_matrix(parsed, k)
    assert len(matrix) == 2 ** (k - p)
    for a, b in itertools.combinations(range(k), 2):
        assert sum(row[a] * row[b] for row in matrix) == 0
    assert len({tuple(r) for r in matrix}) == len(matrix)


def test_explicit_generators_give_the_same_design_as_the_table():
    by_table = make_plan(two_level_study(7, Fractional(resolution=3)))
    by_generators = make_plan(two_level_study(7, Fractional(generators=["D=AB", "E=AC", "F=BC", "G=ABC"])))
    assert [c.cell_id for c in by_table.cells] == [c.cell_id for c in by_generators.cells]


def test_fractional_by_runs_picks_the_tabled_fraction():
    plan = make_plan(two_level_study(6, Fractional(runs=16)))
    assert plan.counts["cells"] == 16 and plan.resolution == 4


@pytest.mark.parametrize("runs", [8, 12, 16, 20, 24])
def test_plackett_burman_columns_are_balanced_and_orthogonal(runs):
    matrix = plackett_burman_matrix(runs - 1, runs)
    assert len(matrix) == runs
    for a in range(runs - 1):
        assert sum(row[a] for row in matrix) == 0
        for b in range(a + 1, runs - 1):
            assert sum(row[a] * row[b] for row in matrix) == 0


def test_plackett_burman_picks_the_smallest_size():
    plan = make_plan(two_level_study(11, PlackettBurman()))
    assert plan.counts["cells"] == 12


def test_alias_table_uses_factor_names_joined_like_interaction_terms():
    parsed, _ = parse_generators(["D=AB"], 4)
    rows = alias_table(parsed, ["opt", "lr", "prec", "order"])
    first = rows[0]
    assert first.effect == "opt" and first.aliases == ("lr:order",)


def nested_study(**extra) -> Study:
    return Study(
        name="nested",
        workload="synthetic",
        factors=[
            Factor("optimizer", ["sgd", "adam"]),
            Factor("lr", {"sgd": [0.1, 0.01], "adam": [1e-3]}, nested_in="optimizer"),
            Factor("precision", ["fp32", "bf16"]),
        ],
        metrics={"response": "minimize"},
        variants=VARIANTS,
        **extra,
    ).with_variant("full")


def test_nested_factor_levels_depend_on_the_parent():
    plan = make_plan(nested_study())
    pairs = {(c.levels["optimizer"], c.levels["lr"]) for c in plan.cells}
    assert pairs == {("sgd", 0.1), ("sgd", 0.01), ("adam", 1e-3)}
    assert plan.counts["cells"] == 6


def test_exclusions_leave_cells_out_and_say_why():
    plan = make_plan(nested_study(exclude=[{"optimizer": "adam", "precision": "bf16"}]))
    assert plan.counts["cells"] == 5
    assert plan.excluded[0]["levels"] == {"optimizer": "adam", "lr": 1e-3, "precision": "bf16"}
    assert plan.excluded[0]["reason"] == "exclude[0]"


def test_seeds_are_shared_across_cells_by_default_and_distinct_per_stream():
    plan = make_plan(nested_study(replicates=3))
    by_replicate = {}
    for t in plan.trials:
        by_replicate.setdefault(t.replicate, set()).add(tuple(sorted(t.seeds.items())))
    assert all(len(seeds) == 1 for seeds in by_replicate.values())
    seeds = [t.seeds for t in plan.trials if t.replicate == 0][0]
    assert len(set(seeds.values())) == 3
    assert len({tuple(sorted(t.seeds.items())) for t in plan.trials}) == 3


def test_cell_scoped_seeds_differ_between_cells():
    plan = make_plan(nested_study(seed_scope="cell"))
    assert len({t.seeds["init"] for t in plan.trials}) == plan.counts["cells"]


def test_crossed_seed_streams_vary_independently():
    plan = make_plan(nested_study(replicates=2, seed_streams={"init": 3, "data": "replicate", "reduction": "fixed"}))
    assert plan.counts["trials_per_cell"] == 6
    cell = plan.cells[0].cell_id
    trials = [t for t in plan.trials if t.cell_id == cell]
    assert {(t.seed_index["init"], t.seed_index["data"]) for t in trials} == {(i, r) for i in range(3) for r in range(2)}
    assert len({t.seeds["reduction"] for t in plan.trials}) == 1
    assert len({t.trial_id for t in plan.trials}) == len(plan.trials)


def test_replicates_with_identical_seeds_are_still_distinct_trials():
    plan = make_plan(nested_study(replicates=3, seed_streams={"init": "fixed"}))
    assert len({t.trial_id for t in plan.trials}) == len(plan.trials)


def test_run_order_is_randomized_with_the_study_seed_and_reproducible():
    a = [t.trial_id for t in make_plan(nested_study(replicates=2, seed=1)).trials]
    b = [t.trial_id for t in make_plan(nested_study(replicates=2, seed=1)).trials]
    standard = [t.trial_id for t in make_plan(nested_study(replicates=2, seed=1, run_order="standard")).trials]
    assert a == b
    assert sorted(a) == sorted(standard) and a != standard


def test_blocking_keeps_each_block_together_in_level_order():
    plan = make_plan(nested_study(replicates=2, block_by="precision"))
    blocks = [t.block for t in plan.trials]
    assert blocks == ["fp32"] * 6 + ["bf16"] * 6
    assert [t.order for t in plan.trials] == list(range(12))


def test_a_study_can_refuse_cells_whose_hyperparameters_change_meaning():
    def plan(refuse):
        return make_plan(
            Study(
                name="refuse", workload="digits",
                factors=[Factor("precision", ["fp32", "bf16"]), Factor("beta2", [0.99, 0.999])],
                params={"optimizer": "adam"}, metrics=["test_accuracy"], variants=VARIANTS, refuse_unrepresentable=refuse,
            ).with_variant("full")
        )

    kept = plan(False)
    assert kept.counts["cells"] == 4
    flagged = {(row["levels"]["precision"], row["levels"]["beta2"]) for row in kept.audit}
    assert ("bf16", 0.999) in flagged and ("fp32", 0.999) not in flagged
    refused = plan(True)
    reasons = {(e["levels"]["precision"], e["levels"]["beta2"]): e["reason"] for e in refused.excluded}
    assert ("bf16", 0.999) in reasons and reasons[("bf16", 0.999)].startswith("refuse_unrepresentable: beta2")
    assert ("fp32", 0.99) not in reasons and ("fp32", 0.999) not in reasons


# -- plans at scale (#16): columns, not trial objects; ids and seeds unchanged ---------------------------------------

import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

from orchestrator.design.keys import SeedKey, TrialKey, id_text, id_value  # noqa: E402
from orchestrator.design.plan import TrialTable, plan_csv, write_plan_json  # noqa: E402
from orchestrator.ids import derive_seed, trial_id  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from plan_cases import CASES, GOLDEN, fingerprint  # noqa: E402


@pytest.mark.parametrize("case", sorted(CASES))
def test_plans_are_those_of_the_first_planner(case):
    """Ids, seeds, seed indices, run order, blocks and the CSV / JSON text pinned before the columnar planner."""
    golden = json.loads(GOLDEN.read_text())[case]
    study = CASES[case]()
    assert fingerprint(study) == golden
    buffer = io.StringIO()
    write_plan_json(make_plan(study), buffer)
    assert hashlib.sha256(buffer.getvalue().encode()).hexdigest() == golden["json_sha256"]


@pytest.mark.parametrize("params", [{}, {"lr": 0.1, "name": "a,\"b\"%{x}", "nested": {"z": [1, 2.5, None, True]}, "é": "ü"}])
def test_templated_keys_hash_exactly_the_canonical_keys(params):
    streams = ["init", "da\"ta", "%s{0}", "zeta", "A"]
    key = TrialKey(params, streams)
    rows = [(r, [r * 7919 + i * 104729 + (1 << 62) for i in range(len(streams))]) for r in range(5)]
    for cell in ("c0123456789abcde", "c-\"odd\"-%d"):
        values = key.values(cell, rows).tolist()
        assert [id_text(v) for v in values] == [trial_id(cell, r, dict(zip(streams, seeds)), params) for r, seeds in rows]
        assert [id_value(id_text(v)) for v in values] == values
    for stream in streams:
        seeds = SeedKey(123456789, stream)
        assert [seeds.seed(i) for i in range(4)] == [derive_seed(123456789, stream, i) for i in range(4)]
        assert seeds.seed(3, "c\"1%") == derive_seed(123456789, stream, 3, "c\"1%")
    assert id_value("not-an-id") is None and id_value("tzzzzzzzzzzzzzzz") is None


def test_the_trials_of_a_plan_are_a_lazy_sequence():
    plan = make_plan(nested_study(replicates=3))
    trials = plan.trials
    assert isinstance(trials, TrialTable) and len(trials) == 18
    built = list(trials)
    assert [t.order for t in built] == list(range(18))
    assert trials[-1] == built[-1] and [t.trial_id for t in trials[2:5]] == [t.trial_id for t in built[2:5]]
    assert list(trials.trial_ids()) == [t.trial_id for t in built]
    assert built[7] in trials and plan.trial(built[7].trial_id) == built[7]
    with pytest.raises(KeyError, match=r"no trial 'tnope' in the plan of study 'nested'"):
        plan.trial("tnope")
    done = {built[0].trial_id, built[5].trial_id, "t-not-in-the-plan", ""}
    todo = trials.without(done)
    assert [t.order for t in todo] == [t.order for t in built if t.trial_id not in done]
    assert len(todo) == 16 and built[5] not in todo and todo[0].order == 1
    assert trials.without(set()) is trials
    counted: dict[str, int] = {}
    for t in todo:
        counted[t.cell_id] = counted.get(t.cell_id, 0) + 1
    assert todo.cell_counts() == counted and list(todo.cell_counts()) == list(counted)


def test_a_large_plan_holds_columns_not_trial_objects():
    """20,000 trials: the planner's peak Python memory stays a small fraction of one Trial object per trial."""
    study = Study(
        name="large", workload="synthetic", factors=[Factor("a", list(range(100))), Factor("b", list(range(20)))], replicates=10,
        metrics={"response": "minimize"}, variants=VARIANTS,
    ).with_variant("full")
    make_plan(study.with_variant("smoke"))  # imports and caches out of the measurement
    tracemalloc.start()
    plan = make_plan(study)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    tracemalloc.start()
    materialised = list(plan.trials)  # what the first planner held: a Trial with its seed dicts per trial
    _, held = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(plan.trials) == len(materialised) == 20_000
    assert peak < 300 * 20_000 and peak < 0.4 * held, f"planning peaked at {peak / 20_000:.0f} bytes per trial; Trial objects take {held / 20_000:.0f}"
    del materialised
    first, last = plan.trials[0], plan.trials[len(plan.trials) - 1]
    assert first.trial_id == trial_id(first.cell_id, first.replicate, first.seeds, first.params)
    assert last.seeds["init"] == derive_seed(study.seed, "init", last.seed_index["init"])
    assert plan_csv(plan).count("\n") == 20_001


@pytest.mark.parametrize("n", [2, 3, 4096, 4097, 8193, 65537, 200_003])
def test_the_fast_shuffle_is_pythons_shuffle(n):
    """Run orders stay those of random.Random(seed).shuffle, including the blocked-words path (n above 4,096)."""
    import random

    from orchestrator.design.shuffle import shuffled

    for seed in (0, 7, 2**62 + 11):
        expected = list(range(n))
        random.Random(seed).shuffle(expected)
        assert shuffled(n, seed).tolist() == expected
