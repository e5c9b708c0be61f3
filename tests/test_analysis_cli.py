"""The analyze and report commands on CSV input, invoked as the main CLI would."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from click.testing import CliRunner

from orchestrator.cli.analysis import analyze, report

DATA = Path(__file__).parent / "data" / "analysis"
WARP = str(DATA / "warpbreaks.csv")


def test_analyze_csv_json_has_the_documented_schema():
    res = CliRunner().invoke(analyze, ["--csv", WARP, "--response", "breaks", "--fixed", "wool,tension",
                                       "--format", "json", "--bootstrap", "50"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    for key in ("response", "n", "ss_type", "anova", "variance_components", "shares", "notes", "warnings",
                "failures", "spread", "diagnostics"):
        assert key in doc
    assert doc["response"] == "breaks" and doc["n"] == 54 and doc["ss_type"] == 2
    terms = [r["term"] for r in doc["anova"]]
    assert terms == ["wool", "tension", "wool:tension", "Residual"]
    row = doc["anova"][1]
    for key in ("term", "df", "sum_sq", "mean_sq", "F", "p", "eta_sq", "partial_eta_sq", "omega_sq", "eta_sq_ci",
                "partial_eta_sq_ci", "omega_sq_ci"):
        assert key in row
    assert round(row["F"], 3) == 8.498
    assert set(doc["variance_components"][0]) >= {"component", "variance", "ci"}
    assert set(doc["shares"][0]) >= {"source", "share", "ci"}


def test_analyze_table_with_random_factor_and_plan(tmp_path):
    path = tmp_path / "dye.csv"
    pd.read_csv(DATA / "dyestuff.csv").to_csv(path, index=False)
    args = ["--csv", str(path), "--response", "Yield", "--random", "Batch", "--bootstrap", "0"]
    res = CliRunner().invoke(analyze, args)
    assert res.exit_code == 0, res.output
    assert "Variance components" in res.output and "1764" in res.output
    res = CliRunner().invoke(analyze, args + ["--plan-replicates", "--effect-size", "50"])
    assert res.exit_code == 2 and "no fixed factor with 2+ levels; there is no effect to plan for" in res.output


def test_plan_replicates_needs_a_fixed_factor_and_an_effect_size():
    runner = CliRunner()
    res = runner.invoke(analyze, ["--csv", WARP, "--response", "breaks", "--fixed", "wool", "--plan-replicates"])
    assert res.exit_code == 2 and "--plan-replicates needs --effect-size" in res.output
    res = runner.invoke(analyze, ["--csv", WARP, "--response", "breaks", "--fixed", "wool,tension", "--bootstrap", "0",
                                  "--plan-replicates", "--effect-size", "10"])
    assert res.exit_code == 0, res.output
    assert "Replicates per cell to detect a difference of 10" in res.output


def test_usage_errors_exit_2_with_one_line_and_no_traceback():
    runner = CliRunner()
    res = runner.invoke(analyze, ["--csv", WARP, "--response", "breaks", "--fixed", "wool,tensoin"])
    assert res.exit_code == 2
    assert 'Did you mean "tension"?' in res.output and "Traceback" not in res.output
    assert len([line for line in res.output.splitlines() if line.startswith("Error")]) == 1
    res = runner.invoke(analyze, ["--csv", WARP, "--fixed", "wool"])
    assert res.exit_code == 2 and "--csv needs --response COL" in res.output
    res = runner.invoke(analyze, ["--response", "breaks", "--fixed", "wool"])
    assert res.exit_code == 2 and "give either a STUDY or --csv FILE" in res.output
    res = runner.invoke(analyze, ["--csv", WARP, "--response", "breaks", "--fixed", "wool", "--spread-by", "tension"])
    assert res.exit_code == 2 and "spread_by must name a fixed factor" in res.output


def test_report_writes_markdown_html_and_plots(tmp_path):
    out = tmp_path / "rep"
    res = CliRunner().invoke(report, ["--csv", WARP, "--response", "breaks", "--fixed", "wool,tension",
                                      "--bootstrap", "20", "--out", str(out)])
    assert res.exit_code == 0, res.output
    md = (out / "report.md").read_text()
    assert "## ANOVA (Type II sums of squares)" in md and "![variance_shares](variance_shares.png)" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "src=\"variance_shares.png\"" not in html
    for name in ("variance_shares", "main_effects", "interactions", "cells"):
        assert (out / f"{name}.png").stat().st_size > 1000


def test_write_report_with_learning_curves(tmp_path):
    import numpy as np

    from orchestrator.analysis import analyze as run, write_report

    df = pd.read_csv(DATA / "warpbreaks.csv").assign(trial_id=lambda d: [f"t{i}" for i in range(len(d))])
    curves = pd.DataFrame([(t, s, "loss", float(np.exp(-s / 10))) for t in df.trial_id for s in range(0, 50, 10)],
                          columns=["trial_id", "step", "metric", "value"])
    paths = write_report(run(df, "breaks", fixed=["wool", "tension"], bootstrap=0), tmp_path, curves=curves)
    assert paths["curves_loss"].exists()
    assert "curves_loss" in (tmp_path / "report.md").read_text()


def test_main_cli_group_runs_the_analysis_commands():
    from orchestrator.cli import main

    res = CliRunner().invoke(main, ["analyze", "--csv", WARP, "--response", "breaks", "--fixed", "wool,tension",
                                    "--bootstrap", "0"])
    assert res.exit_code == 0, res.output
    assert "wool:tension" in res.output and "Type II" in res.output


def test_random_interaction_terms_on_the_command_line_and_den_df_in_json_and_table():
    machines = str(DATA / "machines.csv")
    args = ["--csv", machines, "--response", "score", "--fixed", "Machine", "--random", "Worker,Worker:Machine",
            "--bootstrap", "0"]
    res = CliRunner().invoke(analyze, args + ["--format", "json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    row = next(r for r in doc["anova"] if r["term"] == "Machine")
    assert row["den_df"] == 10 and row["error_term"] == "Worker:Machine" and round(row["F"], 3) == 20.576
    assert [t["term"] for t in doc["model"]["random_terms"]] == ["Worker", "Worker:Machine"]
    table = CliRunner().invoke(analyze, args)
    assert table.exit_code == 0 and "den df" in table.output and "Worker:Machine" in table.output


def test_seed_interactions_option_turns_the_default_terms_off():
    machines = str(DATA / "machines.csv")
    args = ["--csv", machines, "--response", "score", "--fixed", "Machine", "--random", "Worker", "--bootstrap", "0",
            "--format", "json"]
    default = json.loads(CliRunner().invoke(analyze, args).output)
    assert [t["term"] for t in default["model"]["random_terms"]] == ["Worker", "Worker:Machine"]
    off = CliRunner().invoke(analyze, args + ["--seed-interactions", "none"])
    assert off.exit_code == 0, off.output
    doc = json.loads(off.output)
    assert doc["model"]["seed_interactions"] == "none" and len(doc["model"]["random_terms"]) == 1
    bad = CliRunner().invoke(analyze, args + ["--seed-interactions", "all"])
    assert bad.exit_code == 2 and "'all' is not one of 'none', 'main'" in bad.output


def test_no_intervals_and_the_deprecated_bootstrap_zero_both_leave_the_intervals_out(tmp_path):
    path = tmp_path / "dye.csv"
    pd.read_csv(DATA / "dyestuff.csv").to_csv(path, index=False)
    base = ["--csv", str(path), "--response", "Yield", "--random", "Batch", "--format", "json"]
    docs = {}
    for name, extra in {"on": [], "off": ["--no-intervals"], "zero": ["--bootstrap", "0"], "old": ["--bootstrap", "200"]}.items():
        res = CliRunner().invoke(analyze, base + extra)
        assert res.exit_code == 0, res.output
        docs[name] = json.loads(res.output)
    residual = {k: next(r for r in d["variance_components"] if r["component"] == "Residual") for k, d in docs.items()}
    assert residual["on"]["ci"] is not None and residual["old"]["ci"] == residual["on"]["ci"]
    assert residual["off"]["ci"] is None and residual["zero"]["ci"] is None
    assert "--bootstrap" not in CliRunner().invoke(analyze, ["--help"]).output  # deprecated: hidden
