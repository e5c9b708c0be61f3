"""`orchestrator plan` and the package layout."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "studies" / "screening_demo.py"


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd)


def test_plan_json_has_the_documented_schema():
    result = run("-m", "orchestrator", "plan", str(DEMO), "--variant", "smoke", "--format", "json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert {"study", "variant", "counts", "trials", "aliases"} <= set(plan)
    assert plan["study"] == "screening_demo" and plan["variant"] == "smoke"
    assert plan["counts"]["cells"] == 8 and plan["counts"]["trials"] == 8
    trial = plan["trials"][0]
    assert {"trial_id", "cell_id", "replicate", "levels", "seeds"} <= set(trial)
    assert set(trial["seeds"]) == {"init", "data", "reduction"}
    assert plan["aliases"][0] == {"effect": "A", "letters": "A", "aliases": ["B:D", "C:E", "F:G"], "alias_letters": ["BD", "CE", "FG"]}


def test_plan_csv_and_table():
    result = run("-m", "orchestrator", "plan", str(DEMO), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 16
    assert list(rows[0])[:4] == ["order", "trial_id", "cell_id", "replicate"]
    table = run("-m", "orchestrator", "plan", str(DEMO))
    assert table.returncode == 0
    assert "alias table" in table.stdout and "B:D (BD) = C:E (CE) = F:G (FG)" in table.stdout
    assert "cells: 8; trials: 16" in table.stdout


@pytest.mark.parametrize("study", ["screening_demo", "adam_precision", "two_layer_linear"])
def test_plan_imports_no_heavy_dependency(study):
    path = ROOT / "studies" / f"{study}.py"
    code = (
        "import sys\n"
        "from orchestrator.cli import main\n"
        f"main(['plan', {str(path)!r}, '--format', 'json'], standalone_mode=False)\n"
        "print('HEAVY', sorted(m for m in ('ray', 'mlflow', 'torch', 'statsmodels') if m in sys.modules))\n"
    )
    result = run("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "HEAVY []"


def test_a_study_file_runs_as_a_script():
    result = run(str(DEMO.relative_to(ROOT)), "plan", "--variant", "smoke", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["counts"]["trials"] == 8


def test_plan_of_a_study_by_name_from_the_repository_root():
    result = run("-m", "orchestrator", "plan", "screening_demo", "--format", "json")
    assert result.returncode == 0, result.stderr


def test_mlflow_folder_holds_no_python_and_does_not_shadow_the_package():
    assert not list((ROOT / "mlflow").glob("**/*.py"))
    result = run("-c", "import mlflow, os; print(os.path.dirname(mlflow.__file__))")
    assert result.returncode == 0, result.stderr
    location = Path(result.stdout.strip())
    assert location != ROOT / "mlflow" and "site-packages" in str(location)
