"""Drift detection between two executions, on trial tables with planted changes."""

from __future__ import annotations

import random

import pandas as pd
import pytest

from orchestrator.operations.compare import compare_executions, environment_differences, holm


def test_holm_matches_hand_computed_values():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def table(shift: dict[str, float], spread: dict[str, float] | None = None, n: int = 8, seed: int = 0, deterministic: bool = False) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = []
    for cell in ("a", "b", "c", "d"):
        for r in range(n):
            value = 10.0 + shift.get(cell, 0.0) + (spread or {}).get(cell, 1.0) * rng.gauss(0, 1)
            rows.append({"cell_id": f"c{cell}", "replicate": r, "state": "FINISHED", "opt": cell, "loss": value, "diverged": 0.0,
                         "deterministic": deterministic, "param_hash": f"h{cell}{r}"})
    return pd.DataFrame(rows)


def test_a_planted_mean_shift_is_found_in_exactly_that_cell():
    report = compare_executions(table({}, seed=1), table({"b": 5.0}, seed=2), study="s", factors=["opt"], metrics=["loss"])
    assert report.drift
    assert {c.cell_id for c in report.changed_cells} == {"cb"}
    assert "mean changed by" in report.changed_cells[0].reasons[0]


def test_a_planted_spread_change_is_found():
    report = compare_executions(table({}, seed=1, n=30), table({}, {"c": 6.0}, seed=2, n=30), study="s", factors=["opt"], metrics=["loss"], margin=1.0)
    assert {c.cell_id for c in report.changed_cells} == {"cc"}
    assert report.changed_cells[0].reasons[-1].startswith("spread changed")


def test_no_change_means_no_drift_and_the_margin_absorbs_small_shifts():
    assert not compare_executions(table({}, seed=1), table({}, seed=2), study="s", factors=["opt"], metrics=["loss"]).drift
    small = compare_executions(table({}, seed=1, n=200), table({"a": 0.5}, seed=2, n=200), study="s", factors=["opt"], metrics=["loss"], margin=1.0)
    assert not small.drift


def test_deterministic_cells_are_compared_bit_for_bit():
    base = table({}, seed=1, deterministic=True)
    same = compare_executions(base, base.copy(), study="s", factors=["opt"], metrics=["loss"])
    assert not same.drift and all(c.kind == "bitwise" and c.reasons == ["bit-identical"] for c in same.cells)
    changed = base.copy()
    changed.loc[(changed["cell_id"] == "cd") & (changed["replicate"] == 3), "loss"] += 1e-12
    changed.loc[(changed["cell_id"] == "ca") & (changed["replicate"] == 0), "param_hash"] = "other"
    report = compare_executions(base, changed, study="s", factors=["opt"], metrics=["loss"])
    assert {c.cell_id for c in report.changed_cells} == {"ca", "cd"}
    assert any("final parameters differ" in r for r in report.changed_cells[0].reasons)


def test_report_renders_markdown_and_html_with_environment_differences():
    report = compare_executions(
        table({}, seed=1), table({"b": 5.0}, seed=2), study="s", factors=["opt"], metrics=["loss"],
        environment=({"versions": {"torch": "2.12.0"}, "gpu": "H100"}, {"versions": {"torch": "2.13.0"}, "gpu": "H100"}),
    )
    assert report.environment == {"versions.torch": ("2.12.0", "2.13.0")}
    md = report.to_markdown()
    assert "**Drift found**: 1 of 4 cells changed" in md and "| versions.torch | 2.12.0 | 2.13.0 |" in md
    page = report.to_html()
    assert page.startswith("<!doctype html>") and "versions.torch" in page
    assert report.to_dict()["changed_cells"] == ["cb"]


def test_environment_differences_flatten_nested_keys():
    assert environment_differences({"a": {"b": 1}, "c": 2}, {"a": {"b": 1}, "c": 3, "d": 4}) == {"c": (2, 3), "d": (None, 4)}


def test_bad_margin_is_named():
    with pytest.raises(ValueError, match=r"--margin is an absolute difference and must be >= 0, found -1"):
        compare_executions(table({}), table({}), study="s", factors=["opt"], metrics=["loss"], margin=-1)


def test_trials_that_newly_diverge_are_drift_even_when_nothing_is_left_to_test():
    base = table({}, seed=1, n=3)
    cand = base.copy()
    cand.loc[cand["cell_id"] == "cb", "diverged"] = 1.0
    report = compare_executions(base, cand, study="s", factors=["opt"], metrics=["loss"])
    assert {c.cell_id for c in report.changed_cells} == {"cb"}
    assert report.changed_cells[0].reasons[0] == "outcomes changed: 3 ok / 0 diverged / 0 failed -> 0 ok / 3 diverged / 0 failed"
    rate = compare_executions(base, cand, study="s", factors=["opt"], metrics=["diverged"])
    assert {c.cell_id for c in rate.changed_cells} == {"cb"}


def test_two_replicates_never_give_a_degenerate_spread_verdict():
    base = pd.DataFrame({"cell_id": ["c"] * 2, "replicate": [0, 1], "state": "FINISHED", "opt": "a", "loss": [0.90, 0.91]})
    cand = base.assign(loss=[0.903, 0.909])
    report = compare_executions(base, cand, study="s", factors=["opt"], metrics=["loss"])
    assert not report.drift
    assert report.cells[0].p_spread is None and "spread not tested (needs 3 finished trials per execution)" in report.cells[0].reasons
