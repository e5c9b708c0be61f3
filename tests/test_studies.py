"""Every study in studies/: the smoke variant passes plan -> run -> analyze end to end; the full
variant plans; the write-up command produces a page whose numbers come from the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator import make_plan
from orchestrator.cli import main
from orchestrator.execution import run_study
from orchestrator.definition.loader import load_study

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted(p.stem for p in (ROOT / "studies").glob("*.py"))


def test_the_talks_studies_are_all_there():
    assert {"two_layer_linear", "adam_precision", "reduction_order", "batchnorm", "optimizer_vs_model", "screening"} <= set(STUDIES)


@pytest.mark.parametrize("name", STUDIES)
def test_full_variant_plans(name):
    plan = make_plan(load_study(ROOT / "studies" / f"{name}.py", "full"))
    assert plan.counts["trials"] > 0
    assert len({t.trial_id for t in plan.trials}) == plan.counts["trials"]


def test_screening_is_seven_factors_in_at_most_sixteen_runs_with_aliases():
    plan = make_plan(load_study(ROOT / "studies" / "screening.py", "full"))
    assert len(plan.study.factors) >= 7 and plan.counts["cells"] <= 16 and plan.aliases


def test_adam_precision_plan_shows_the_boris_bug():
    plan = make_plan(load_study(ROOT / "studies" / "adam_precision.py", "full"))
    messages = [f["message"] for row in plan.audit for f in row["findings"]]
    assert any("beta2 = 0.999 rounds to 1.0 in bfloat16" in m for m in messages)


# data_parallel_order's smoke run (two Ray Train trials, the suite's costliest trials) is run and
# analysed by tests/test_data_parallel.py, which also checks its numbers: not run twice.
SMOKE_HERE = [name for name in STUDIES if name != "data_parallel_order"]


def test_every_smoke_variant_runs_in_the_suite():
    assert "test_the_study_smoke_run_on_gloo_workers_differs_bitwise_in_bf16_and_analyzes" in (ROOT / "tests" / "test_data_parallel.py").read_text()
    assert set(STUDIES) - set(SMOKE_HERE) == {"data_parallel_order"}


@pytest.mark.parametrize("name", SMOKE_HERE)
def test_smoke_variant_runs_and_analyzes(name, ray_session, tracking_uri):
    smoke_runs_and_analyzes(name, tracking_uri)


def smoke_runs_and_analyzes(name: str, tracking_uri: str) -> dict:
    """Run a study's smoke variant and analyse it (JSON); returns the analysis."""
    study = load_study(ROOT / "studies" / f"{name}.py", "smoke")
    summary = run_study(study, tracking_uri=tracking_uri, progress=False)
    assert summary.exit_code == 0, summary.line()
    assert summary.finished == summary.planned - summary.skipped
    result = CliRunner().invoke(
        main, ["analyze", str(ROOT / "studies" / f"{name}.py"), "--variant", "smoke", "--tracking-uri", tracking_uri,
               "--format", "json", "--bootstrap", "20"],
    )
    assert result.exit_code == 0, result.output
    analysis = json.loads(result.output)
    assert analysis["n_total"] == summary.planned
    assert analysis["shares"] or analysis["anova"]
    return analysis


def test_writeup_regenerates_a_page_from_a_run(ray_session, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = CliRunner().invoke(
        main, ["writeup", str(ROOT / "studies" / "two_layer_linear.py"), "--variant", "smoke", "--out", str(tmp_path / "docs"),
               "--tracking-uri", uri, "--bootstrap", "20"],
    )
    assert result.exit_code == 0, result.output
    page = (tmp_path / "docs" / "two_layer_linear.md").read_text()
    assert "orchestrator writeup" in page and "## What the result shows" in page
    assert "for Levenberg-Marquardt" in page and "orders of magnitude lower" in page
    assert (tmp_path / "docs" / "two_layer_linear" / "results.csv").is_file()
    assert "![variance_shares](two_layer_linear/variance_shares.png)" in page
