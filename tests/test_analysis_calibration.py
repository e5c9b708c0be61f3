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
    res = coverage(sims=20, bootstrap=50, seed=3, seeds=12)
    cov = res["coverage"]
    assert set(cov) == {"variance seed", "variance seed:A", "variance Residual", "share A", "share seed",
                        "share seed:A", "share Residual"}
    assert all(0.8 <= v <= 1.0 for v in cov.values()), cov
