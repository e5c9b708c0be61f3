"""What a person reads of a study outside the browser: the terminal summary, the plots, the cells table,
the summary logged on the execution's MLflow run, and the ``orchestrator ui`` command's errors.

(The browser side is ``test_ui_browser.py``.)
"""

from __future__ import annotations

import re
import socket

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from orchestrator.cli import main

LONG = ["reduction_order", "precision", "regime"]


def _results(seed: int = 3) -> pd.DataFrame:
    """A balanced 2x2x2 design with a crossed seed stream, three long factor names (their interactions longer)."""
    rng = np.random.default_rng(seed)
    rows = []
    for order in ("fixed", "shuffled"):
        for precision in ("fp32", "bf16"):
            for regime in ("short", "long"):
                for init in (1, 2, 3):
                    for rep in range(2):
                        y = (2.0 if regime == "long" else 0.0) + 0.3 * (precision == "bf16") + 0.2 * init + rng.normal(0, 0.1)
                        rows.append({"reduction_order": order, "precision": precision, "regime": regime,
                                     "seed_init": init, "replicate": rep, "response": y})
    return pd.DataFrame(rows)


def test_analyze_at_80_columns_shows_every_term_name_whole(tmp_path):
    path = tmp_path / "results.csv"
    _results().to_csv(path, index=False)
    args = ["analyze", "--csv", str(path), "--response", "response", "--fixed", ",".join(LONG), "--random", "seed_init",
            "--bootstrap", "0"]
    result = CliRunner().invoke(main, args, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80][:3]
    assert "…" not in result.output
    terms = ["reduction_order:precision", "reduction_order:regime", "precision:regime", "reduction_order", "seed_init"]
    for term in terms:
        # whole, on one line, in the ANOVA and in the shares table
        assert sum(bool(re.search(rf"(^|[\s│|]){re.escape(term)}([\s│|]|$)", line)) for line in lines) >= 2, term


def test_learning_curves_by_level_never_average_curves_of_different_lengths(tmp_path, monkeypatch):
    """Short runs end at step 4, long ones at step 9: a level mixing them must not draw a jump at step 5."""
    import matplotlib.axes

    from orchestrator.analysis import analyze, write_report

    df = _results()
    df["trial_id"] = [f"t{i}" for i in range(len(df))]
    curves = []
    for _, row in df.iterrows():
        steps, value = (5, 1.0) if row["regime"] == "short" else (10, 0.0)
        curves += [(row["trial_id"], step, "loss", value) for step in range(steps)]
    curves_df = pd.DataFrame(curves, columns=["trial_id", "step", "metric", "value"])
    result = analyze(df, "response", fixed=LONG, random=["seed_init"], bootstrap=0)
    plotted: list[tuple[object, np.ndarray]] = []
    original = matplotlib.axes.Axes.plot

    def record(self, *args, **kwargs):
        if len(args) >= 2:
            plotted.append((self.figure, np.asarray(args[1], dtype=float)))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", record)
    paths = write_report(result, tmp_path / "report", curves=curves_df)
    assert "curves_loss" in paths
    drawn = [y for figure, y in plotted if any("Learning curves" in t.get_text() for t in figure.texts)]
    # regime: one line per level; reduction_order and precision: each level split into its short and long trials
    assert len(drawn) == 2 + 2 * 2 + 2 * 2
    for line in drawn:
        assert np.ptp(line) == 0, f"a curve averages trials of different lengths: {line}"


def test_the_cells_table_of_a_write_up_is_sorted_by_the_factors():
    from orchestrator.operations.writeup import cell_table

    df = _results().sample(frac=1.0, random_state=0)
    df["cell_id"] = df["reduction_order"] + "-" + df["precision"] + "-" + df["regime"]
    df["state"] = "FINISHED"
    df["diverged"] = 0
    levels = {"reduction_order": ["fixed", "shuffled"], "precision": ["fp32", "bf16"], "regime": ["short", "long"]}
    rows = cell_table(df, LONG, "response", levels=levels)
    keys = [tuple(row[:3]) for row in rows]
    assert keys == [(o, p, r) for o in levels["reduction_order"] for p in levels["precision"] for r in levels["regime"]]
    # without the declared orders: sorted by value
    assert [tuple(row[:3]) for row in cell_table(df, LONG, "response")] == sorted(keys)


def test_the_summary_of_an_analysis_becomes_metrics_and_a_description():
    from orchestrator.records.summary import execution_summary, metric_key

    assert metric_key("share", "reduction_order:precision") == "share.reduction_order_x_precision"
    assert metric_key("p", "regime/lr") == "p.regime_lr"
    assert metric_key("share", "regime", "test_loss") == "test_loss.share.regime"
    doc = {
        "response": "test_accuracy", "transform": None, "n": 32, "n_total": 32,
        "shares": [{"source": "regime", "kind": "fixed", "share": 0.95, "ci": [0.9, 0.99]},
                   {"source": "seed_init", "kind": "random", "share": 0.03, "ci": None},
                   {"source": "precision:regime", "kind": "fixed", "share": 0.0, "ci": None},
                   {"source": "Residual", "kind": "residual", "share": 0.02, "ci": None}],
        "variance_components": [{"component": "seed_init", "variance": 0.0014}, {"component": "Residual", "variance": 0.001}],
        "anova": [{"term": "regime", "F": 1679.2, "p": 5e-23}, {"term": "precision:regime", "F": 0.004, "p": 0.95},
                  {"term": "Residual", "F": None, "p": None}],
    }
    summary = execution_summary(doc, question="Which matters more?", execution_id="20261127T1-ab")
    assert summary.metrics == {
        "share.regime": 0.95, "share.seed_init": 0.03, "share.precision_x_regime": 0.0, "share.Residual": 0.02,
        "vc.seed_init": 0.0014, "vc.Residual": 0.001,
        "F.regime": 1679.2, "p.regime": 5e-23, "F.precision_x_regime": 0.004, "p.precision_x_regime": 0.95,
    }
    assert summary.note.startswith("**Question.** Which matters more?")
    assert "Largest shares: regime 95.0%, seed_init 3.0%, Residual 2.0%." in summary.note
    assert "| regime | fixed | 95.0 | [90.0, 99.0] |" in summary.note
    assert "execution 20261127T1-ab" in summary.note


def test_orchestrator_ui_refuses_a_port_in_use_and_a_missing_store(tmp_path):
    db = tmp_path / "mlflow.db"
    missing = CliRunner().invoke(main, ["ui", "--tracking-uri", f"sqlite:///{db}", "--port", "0"])
    assert missing.exit_code == 2
    assert f"no MLflow store at {db}: expected the SQLite file a run writes" in missing.output
    db.write_bytes(b"")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = CliRunner().invoke(main, ["ui", "--tracking-uri", f"sqlite:///{db}", "--port", str(port)])
    assert busy.exit_code == 2
    assert re.search(rf"port {port} on 127\.0\.0\.1 is in use: expected a free port\. Pass --port N, or --port 0", busy.output)
