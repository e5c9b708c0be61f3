"""Study findings count every random term of a seed stream, its seed x factor interactions included."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from orchestrator.operations.findings import random_share

ROOT = Path(__file__).resolve().parents[1]

ANALYSIS = {
    "response": "test_accuracy",
    "shares": [
        {"source": "reduction_order", "kind": "fixed", "share": 0.05},
        {"source": "precision", "kind": "fixed", "share": 0.10},
        {"source": "seed_init", "kind": "random", "share": 0.20},
        {"source": "seed_data", "kind": "random", "share": 0.10},
        {"source": "seed_reduction", "kind": "random", "share": 0.01},
        {"source": "seed_init:precision", "kind": "random", "share": 0.25},
        {"source": "seed_data:reduction_order", "kind": "random", "share": 0.04},
        {"source": "seed_reduction:precision", "kind": "random", "share": 0.02},
        {"source": "Residual", "kind": "residual", "share": 0.23},
    ],
    "variance_components": [{"component": "seed_init:precision", "variance": 0.1, "boundary": False}],
}


def test_random_share_sums_a_streams_main_and_interaction_terms():
    assert abs(random_share(ANALYSIS, ["seed_init"]) - 0.45) < 1e-12
    assert abs(random_share(ANALYSIS, ["seed_init", "seed_data"]) - 0.59) < 1e-12
    # only random terms: the fixed 'precision' term (0.10) is not counted, its seed interactions are
    assert abs(random_share(ANALYSIS, ["precision"]) - 0.27) < 1e-12
    assert random_share({"shares": []}, ["seed_init"]) == 0.0


def test_reduction_order_findings_count_the_seed_interactions():
    spec = importlib.util.spec_from_file_location("reduction_order_study", ROOT / "studies" / "reduction_order.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    df = pd.DataFrame({"precision": ["fp32", "bf16"], "regime": ["a", "a"], "test_accuracy": [0.9, 0.8],
                       "state": ["FINISHED", "FINISHED"], "diverged": [0, 0]})
    text = " ".join(module.findings(df, ANALYSIS))
    # numerics 0.05 + 0.10 + 0.01 + 0.02 = 18.0%; seeds 0.20 + 0.10 + 0.25 + 0.04 = 59.0% (main terms alone: 30.0%)
    assert "account for 18.0% of the variance" in text and "for 59.0%" in text
    assert "seeds matter more" in text
    assert "Seed term seed_init:precision" in text
