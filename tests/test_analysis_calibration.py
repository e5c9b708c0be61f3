"""Calibration by simulation at a fast size (the large size: bench/bench_calibration.py).

Type-I error of the test of a null fixed factor in the three designs of issue #10, and the
coverage of the 95% intervals of variance components and shares. Seeds are fixed, so the
figures are reproducible; the bands are wide enough for 40 datasets (binomial SE ~3 points).
"""

from __future__ import annotations

import pytest

from orchestrator.analysis.calibration import coverage, type_one_error


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["a", "b", "c"])
def test_type_one_error_of_a_null_factor_is_near_nominal(scenario):
    res = type_one_error(scenario, sims=40, seed=7)
    assert res["tested"] == 40
    assert 0.0 <= res["rate"] <= 0.15, res


def test_the_additive_model_is_anti_conservative_where_seeds_interact():
    # What the analysis did before the seed x factor terms: A against the pooled residual.
    res = type_one_error("a", sims=20, seed=7, seed_interactions="none")
    assert res["rate"] >= 0.4, res


@pytest.mark.slow
def test_intervals_of_components_and_shares_cover():
    # Only the intervals whose coverage was measured to hold are shown (20+ seeds; not the
    # seed x factor term, not fixed shares: those under-covered, 0.83-0.91, and are withheld).
    res = coverage(sims=20, bootstrap=50, seed=3, seeds=20)
    cov = res["coverage"]
    assert set(cov) == {"variance seed", "variance Residual", "share seed", "share Residual"}
    assert all(0.8 <= v <= 1.0 for v in cov.values()), cov


def test_intervals_that_under_cover_are_withheld_and_said_so():
    import numpy as np
    import pandas as pd

    from orchestrator.analysis.core import analyze

    rng = np.random.default_rng(0)
    rows = [(a, s, a * 0.3 + rng.normal() + rng.normal(0, 0.5)) for a in range(3) for s in range(12) for _ in range(2)]
    res = analyze(pd.DataFrame(rows, columns=["A", "seed", "loss"]), "loss", fixed=["A"], random=["seed"], bootstrap=30, seed=1)
    ci = {v["component"]: v["ci"] for v in res.variance_components}
    assert ci["seed"] is None and ci["seed:A"] is None and ci["Residual"] is not None
    assert next(s for s in res.shares if s["source"] == "A")["ci"] is None
    assert any("Withheld: shares of fixed terms, seed (an interaction, or fewer than 20 levels)" in n for n in res.notes), res.notes
