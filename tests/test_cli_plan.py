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


LARGE = '''
from orchestrator import Factor, Study, Variant

study = Study(name="large_plan", workload="synthetic", factors=[Factor("a", list(range(50))), Factor("b", ["x", "y, z", 'q"'])],
              replicates=20, params={"note": "100%"}, metrics={"response": "minimize"}, block_by="b",
              variants={"smoke": Variant(replicates=1), "full": Variant()})
'''


def test_a_large_plan_is_printed_as_text_and_streamed_as_csv_and_json(tmp_path):
    """3,000 trials (over the boxed table's 2,000): every format has one row per trial, the same as the design table."""
    from orchestrator import load_study, make_plan
    from orchestrator.cli import BOXED_TRIALS_MAX
    from orchestrator.design.plan import plan_rows

    path = tmp_path / "large_plan.py"
    path.write_text(LARGE)
    plan = make_plan(load_study(path, "full"))
    header, rows = plan_rows(plan)
    assert len(rows) == 3000 > BOXED_TRIALS_MAX

    table = run("-m", "orchestrator", "plan", str(path))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("order  block")))
    assert "trials in run order (3000, as text" in lines[start - 1]
    assert lines[start].split() == header and set(lines[start + 1].replace(" ", "")) == {"-"}
    spans, at = [], 0
    for dashes in lines[start + 1].split("  "):  # the rule under the header gives each column's width
        spans.append((at, at + len(dashes)))
        at += len(dashes) + 2
    body = [[line[a:b].strip() for a, b in spans] for line in lines[start + 2:start + 2 + 3000]]
    assert body == [[str(v) for v in row] for row in rows]

    csv_out = run("-m", "orchestrator", "plan", str(path), "--format", "csv")
    parsed = list(csv.reader(io.StringIO(csv_out.stdout)))
    assert parsed[0] == header and parsed[1:] == [[str(v) for v in row] for row in rows]

    json_out = run("-m", "orchestrator", "plan", str(path), "--format", "json")
    data = json.loads(json_out.stdout)
    assert data["counts"]["trials"] == 3000 and len(data["trials"]) == 3000
    assert data == json.loads(json.dumps(plan.to_dict()))
