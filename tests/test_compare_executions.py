"""`orchestrator compare` between two real executions of a smoke study (real Ray, real MLflow)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from orchestrator import records as tracking
from orchestrator.cli import main
from orchestrator.execution import run_study
from orchestrator.definition.loader import load_study

STUDY = '''
from orchestrator import Factor, Study, Variant
study = Study(
    name="drift_demo",
    workload="synthetic",
    factors=[Factor("precision", ["fp32", "bf16"]), Factor("reduction_order", ["fixed", "shuffled"])],
    params={{"effects": {effects!r}, "noise": {{"init": 0.5}}}},
    replicates=3,
    metrics={{"response": "minimize"}},
    variants={{"smoke": Variant(), "full": Variant()}},
)
'''


@pytest.fixture()
def drift_study(tmp_path, ray_session):
    path = tmp_path / "drift_demo.py"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path.write_text(STUDY.format(effects={"precision": {"bf16": 1.0}}))
    study = load_study(path, "smoke")
    return path, uri, study


def compare(path, uri, *args):
    return CliRunner().invoke(main, ["compare", str(path), "--variant", "smoke", "--tracking-uri", uri, "--format", "json", *args])


def test_identical_environments_report_no_drift_and_a_changed_factor_is_found(drift_study, tmp_path):
    path, uri, study = drift_study
    first = run_study(study, tracking_uri=uri, mode="rerun", progress=False)
    second = run_study(study, tracking_uri=uri, mode="rerun", progress=False)
    assert first.exit_code == 0 and second.exit_code == 0

    same = compare(path, uri, "--baseline", first.execution_id, "--candidate", second.execution_id, "--out", str(tmp_path / "same"))
    assert same.exit_code == 0, same.output
    report = json.loads(same.output)
    assert report["drift"] is False and report["changed_cells"] == []
    assert {c["kind"] for c in report["cells"]} == {"bitwise"}

    # the candidate's behaviour of one factor level is changed deliberately: shuffled order now shifts the response
    changed = run_study(study, tracking_uri=uri, mode="rerun", progress=False,
                        overrides={"effects": {"precision": {"bf16": 1.0}, "reduction_order": {"shuffled": 0.25}}})
    drift = compare(path, uri, "--baseline", "previous", "--candidate", "latest", "--out", str(tmp_path / "drift"))
    assert drift.exit_code == 1, drift.output
    report = json.loads(drift.output)
    shuffled = {c["cell_id"] for c in report["cells"] if c["levels"]["reduction_order"] == "shuffled"}
    assert set(report["changed_cells"]) == shuffled and len(shuffled) == 2
    assert report["baseline"] == second.execution_id and report["candidate"] == changed.execution_id
    assert (tmp_path / "drift" / "drift.html").is_file()
    # the drift report is logged to the candidate's parent run
    store = tracking.open_store(uri)
    artifacts = [f.path for f in store.client.list_artifacts(changed.parent_run_id, "drift")]
    assert "drift/drift.md" in artifacts and "drift/drift.html" in artifacts


def test_unknown_execution_is_a_usage_error(drift_study):
    path, uri, study = drift_study
    run_study(study, tracking_uri=uri, mode="rerun", progress=False)
    result = compare(path, uri, "--baseline", "nope", "--candidate", "latest")
    assert result.exit_code == 2
    assert "execution 'nope' of study 'drift_demo' (variant smoke) not found" in result.output
