"""Drift between two executions of a study: "did anything change?"

Trials are paired by (cell_id, replicate), i.e. by the same levels and the same seeds, so
a change of code, library or fixed parameters between executions is still comparable.

- Cells whose trials promise determinism (every trial recorded ``deterministic = True``:
  CPU runs, deterministic algorithms) are compared bit for bit: final-parameter hash and
  every response metric must be identical.
- Other cells get a per-cell test of a change in mean (Welch's t) and in spread
  (Brown–Forsythe), with Holm's step-down control of the family-wise error across all
  cells and tests. A mean change counts as drift only when it is significant *and* larger
  than the equivalence margin the user sets.
"""

from __future__ import annotations

import html
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..errors import OrchestratorError, did_you_mean
from ..formatting import fmt_number

if TYPE_CHECKING:
    import pandas as pd

    from ..definition.study import Study

__all__ = ["CellDrift", "DriftReport", "compare_executions", "compare_recorded", "environment_differences", "holm"]

IGNORED_METRICS = {"wall_time_s"}


@dataclass
class CellDrift:
    """The verdict for one cell."""

    cell_id: str
    levels: dict[str, Any]
    kind: str  # "bitwise" or "statistical"
    metric: str
    n_baseline: int
    n_candidate: int
    mean_baseline: float | None = None
    mean_candidate: float | None = None
    difference: float | None = None
    p_mean: float | None = None
    p_spread: float | None = None
    p_mean_adjusted: float | None = None
    p_spread_adjusted: float | None = None
    sd_ratio: float | None = None
    changed: bool = False
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


@dataclass
class DriftReport:
    """The answer of ``orchestrator compare``: cells that changed and environment differences."""

    study: str
    baseline: str
    candidate: str
    metrics: list[str]
    alpha: float
    margin: float
    cells: list[CellDrift]
    environment: dict[str, tuple[Any, Any]]
    notes: list[str] = field(default_factory=list)

    @property
    def drift(self) -> bool:
        return any(c.changed for c in self.cells)

    @property
    def changed_cells(self) -> list[CellDrift]:
        return [c for c in self.cells if c.changed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "baseline": self.baseline,
            "candidate": self.candidate,
            "metrics": self.metrics,
            "alpha": self.alpha,
            "margin": self.margin,
            "drift": self.drift,
            "changed_cells": sorted({c.cell_id for c in self.changed_cells}),
            "cells": [c.to_dict() for c in self.cells],
            "environment_differences": {k: {"baseline": a, "candidate": b} for k, (a, b) in self.environment.items()},
            "notes": self.notes,
        }

    def to_markdown(self) -> str:
        verdict = "**Drift found**" if self.drift else "**No drift**"
        lines = [
            f"# Drift report: {self.study}",
            "",
            f"Baseline execution `{self.baseline}`, candidate `{self.candidate}`. {verdict}: "
            f"{len({c.cell_id for c in self.changed_cells})} of {len({c.cell_id for c in self.cells})} cells changed "
            f"(alpha {self.alpha:g}, Holm-adjusted; equivalence margin {self.margin:g}).",
            "",
            "## Cells",
            "",
            "| cell | levels | metric | test | n (base/cand) | mean base | mean cand | p mean (adj) | p spread (adj) | changed | why |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for c in sorted(self.cells, key=lambda c: (not c.changed, c.cell_id, c.metric)):
            lines.append(
                f"| `{c.cell_id}` | {_levels(c.levels)} | {c.metric} | {c.kind} | {c.n_baseline}/{c.n_candidate} | "
                f"{_num(c.mean_baseline)} | {_num(c.mean_candidate)} | {_num(c.p_mean_adjusted)} | {_num(c.p_spread_adjusted)} | "
                f"{'**yes**' if c.changed else 'no'} | {'; '.join(c.reasons)} |"
            )
        lines += ["", "## Environment differences", ""]
        if self.environment:
            lines += ["| key | baseline | candidate |", "| --- | --- | --- |"]
            lines += [f"| {k} | {a} | {b} |" for k, (a, b) in sorted(self.environment.items())]
        else:
            lines.append("None: both executions ran with the same recorded environment.")
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        """A self-contained HTML page with the same content as :meth:`to_markdown`."""
        e = html.escape
        changed = len({c.cell_id for c in self.changed_cells})
        verdict = "Drift found" if self.drift else "No drift"
        rows = "".join(
            "<tr>" + "".join(f"<td>{e(str(x))}</td>" for x in (
                c.cell_id, _levels(c.levels), c.metric, c.kind, f"{c.n_baseline}/{c.n_candidate}", _num(c.mean_baseline),
                _num(c.mean_candidate), _num(c.p_mean_adjusted), _num(c.p_spread_adjusted), "yes" if c.changed else "no", "; ".join(c.reasons),
            )) + "</tr>"
            for c in sorted(self.cells, key=lambda c: (not c.changed, c.cell_id, c.metric))
        )
        head = "".join(f"<th>{h}</th>" for h in ("cell", "levels", "metric", "test", "n", "mean base", "mean cand", "p mean (adj)", "p spread (adj)", "changed", "why"))
        env = "".join(f"<tr><td>{e(k)}</td><td>{e(str(a))}</td><td>{e(str(b))}</td></tr>" for k, (a, b) in sorted(self.environment.items()))
        env_html = f"<table><tr><th>key</th><th>baseline</th><th>candidate</th></tr>{env}</table>" if env else "<p>None.</p>"
        notes = "".join(f"<li>{e(n)}</li>" for n in self.notes)
        style = "body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;font-size:90%}"
        return (
            f"<!doctype html><html><head><meta charset='utf-8'><title>Drift report: {e(self.study)}</title><style>{style}</style></head><body>"
            f"<h1>Drift report: {e(self.study)}</h1><p>Baseline <code>{e(self.baseline)}</code>, candidate <code>{e(self.candidate)}</code>. "
            f"<b>{verdict}</b>: {changed} of {len({c.cell_id for c in self.cells})} cells changed (alpha {self.alpha:g}, Holm-adjusted; margin {self.margin:g}).</p>"
            f"<h2>Cells</h2><table><tr>{head}</tr>{rows}</table><h2>Environment differences</h2>{env_html}"
            + (f"<h2>Notes</h2><ul>{notes}</ul>" if notes else "")
            + "</body></html>\n"
        )


def _num(value: float | None) -> str:
    return fmt_number(value, 4)


def _levels(levels: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in levels.items())


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def environment_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys whose recorded value differs between two environment fingerprints (flattened)."""

    def flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, Mapping):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    fa, fb = flat(a or {}), flat(b or {})
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if not _same(fa.get(k), fb.get(k))}


def compare_executions(
    baseline: "pd.DataFrame",
    candidate: "pd.DataFrame",
    *,
    study: str,
    factors: Sequence[str],
    metrics: Sequence[str],
    baseline_id: str = "baseline",
    candidate_id: str = "candidate",
    alpha: float = 0.05,
    margin: float = 0.0,
    environment: tuple[Mapping[str, Any], Mapping[str, Any]] = ({}, {}),
) -> DriftReport:
    """Compare two executions' trial tables (one row per trial, as :meth:`Records.results <orchestrator.records.Records.results>` gives).

    Columns used: ``cell_id``, ``replicate``, ``state``, the factor columns, the metric
    columns, and where present ``param_hash`` and ``deterministic``.
    """
    from scipy import stats

    if not 0 < alpha < 1:
        raise ValueError(f"--alpha must lie between 0 and 1, found {alpha}")
    if margin < 0:
        raise ValueError(f"--margin is an absolute difference and must be >= 0, found {margin}")
    notes: list[str] = []
    cells: list[CellDrift] = []
    tests: list[tuple[CellDrift, str, float]] = []
    base_cells = set(baseline["cell_id"]) if len(baseline) else set()
    cand_cells = set(candidate["cell_id"]) if len(candidate) else set()
    for only, where in ((base_cells - cand_cells, "baseline"), (cand_cells - base_cells, "candidate")):
        if only:
            notes.append(f"{len(only)} cell(s) only in the {where} are not compared: {', '.join(sorted(only))}")
    for cell in sorted(base_cells & cand_cells):
        a = baseline[baseline["cell_id"] == cell]
        b = candidate[candidate["cell_id"] == cell]
        levels = {f: _plain(a.iloc[0][f]) for f in factors if f in a.columns}
        deterministic = "deterministic" in a.columns and "deterministic" in b.columns and bool(
            a["deterministic"].fillna(False).astype(bool).all() and b["deterministic"].fillna(False).astype(bool).all()
        )
        for metric in metrics:
            if deterministic:
                cells.append(_bitwise(cell, levels, metric, a, b))
                continue
            drift = CellDrift(cell, levels, "statistical", metric, 0, 0)
            xa = _values(a, metric)
            xb = _values(b, metric)
            drift.n_baseline, drift.n_candidate = len(xa), len(xb)
            outcomes_a, outcomes_b = _outcomes(a), _outcomes(b)
            if outcomes_a != outcomes_b:  # trials that newly fail or diverge are the worst drift of all
                drift.changed = True
                drift.reasons.append(f"outcomes changed: {_outcome_text(outcomes_a)} -> {_outcome_text(outcomes_b)}")
            if xa and xb:
                drift.mean_baseline = sum(xa) / len(xa)
                drift.mean_candidate = sum(xb) / len(xb)
                drift.difference = drift.mean_candidate - drift.mean_baseline
            if len(xa) >= 2 and len(xb) >= 2:
                if _constant(xa) and _constant(xb):
                    drift.p_mean = 0.0 if xa[0] != xb[0] else 1.0
                    drift.p_spread = 1.0
                else:
                    drift.p_mean = float(stats.ttest_ind(xa, xb, equal_var=False).pvalue)
                    sa, sb = _sd(xa), _sd(xb)
                    drift.sd_ratio = sb / sa if sa > 0 else None
                    if min(len(xa), len(xb)) >= 3:
                        drift.p_spread = float(stats.levene(xa, xb, center="median").pvalue)
                    else:  # Brown-Forsythe is degenerate with two values per group
                        drift.reasons.append("spread not tested (needs 3 finished trials per execution)")
                tests.append((drift, "mean", 1.0 if drift.p_mean is None or math.isnan(drift.p_mean) else drift.p_mean))
                if drift.p_spread is not None:
                    tests.append((drift, "spread", 1.0 if math.isnan(drift.p_spread) else drift.p_spread))
            elif not drift.changed:
                drift.reasons.append("too few finished trials to test (need 2 per execution)")
            cells.append(drift)
    adjusted = holm([p for _, _, p in tests])
    for (drift, kind, _), p in zip(tests, adjusted):
        if kind == "mean":
            drift.p_mean_adjusted = p
            if p < alpha and drift.difference is not None and abs(drift.difference) > margin:
                drift.changed = True
                drift.reasons.append(f"mean changed by {drift.difference:+.4g} (margin {margin:g})")
        else:
            drift.p_spread_adjusted = p
            if p < alpha:
                drift.changed = True
                drift.reasons.append("spread changed" + (f" (sd ratio {drift.sd_ratio:.3g})" if drift.sd_ratio else ""))
    env = environment_differences(*environment)
    return DriftReport(study, baseline_id, candidate_id, list(metrics), alpha, margin, cells, env, notes)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _values(frame: "pd.DataFrame", metric: str) -> list[float]:
    if metric not in frame.columns:
        return []
    ok = frame["state"] == "FINISHED" if "state" in frame.columns else frame[metric].notna()
    if "diverged" in frame.columns and metric != "diverged":
        ok &= frame["diverged"].fillna(0) == 0
    return [float(v) for v in frame.loc[ok, metric] if v == v]


def _outcomes(frame: "pd.DataFrame") -> tuple[int, int, int]:
    """(finished, diverged, failed or killed) trials of one cell in one execution."""
    states = frame["state"] if "state" in frame.columns else None
    finished = int((states == "FINISHED").sum()) if states is not None else len(frame)
    diverged = int(frame.loc[states == "FINISHED", "diverged"].fillna(0).astype(bool).sum()) if "diverged" in frame.columns and states is not None else 0
    return finished - diverged, diverged, len(frame) - finished


def _outcome_text(outcome: tuple[int, int, int]) -> str:
    ok, diverged, failed = outcome
    return f"{ok} ok / {diverged} diverged / {failed} failed"


def _constant(values: Sequence[float]) -> bool:
    return max(values) == min(values)


def _sd(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _bitwise(cell: str, levels: dict[str, Any], metric: str, a: "pd.DataFrame", b: "pd.DataFrame") -> CellDrift:
    drift = CellDrift(cell, levels, "bitwise", metric, len(a), len(b))
    va, vb = _values(a, metric), _values(b, metric)
    if va and vb:
        drift.mean_baseline, drift.mean_candidate = sum(va) / len(va), sum(vb) / len(vb)
        drift.difference = drift.mean_candidate - drift.mean_baseline
    pairs_a = {int(r["replicate"]): r for _, r in a.iterrows()}
    pairs_b = {int(r["replicate"]): r for _, r in b.iterrows()}
    for replicate in sorted(set(pairs_a) & set(pairs_b)):
        ra, rb = pairs_a[replicate], pairs_b[replicate]
        if ra.get("state") != rb.get("state"):
            drift.reasons.append(f"replicate {replicate}: state {ra.get('state')} -> {rb.get('state')}")
            continue
        if "param_hash" in a.columns and "param_hash" in b.columns and not _same(ra.get("param_hash"), rb.get("param_hash")):
            drift.reasons.append(f"replicate {replicate}: final parameters differ (hash {ra.get('param_hash')} -> {rb.get('param_hash')})")
        if metric in ra and metric in rb and not _same(float(ra[metric]), float(rb[metric])):
            drift.reasons.append(f"replicate {replicate}: {metric} {float(ra[metric])!r} -> {float(rb[metric])!r}")
    missing = set(pairs_a) ^ set(pairs_b)
    if missing:
        drift.reasons.append(f"replicates present in one execution only: {sorted(missing)}")
    drift.changed = bool(drift.reasons)
    if not drift.changed:
        drift.reasons.append("bit-identical")
    return drift


def compare_recorded(
    study: "Study",
    baseline: str,
    candidate: str,
    *,
    metrics: Sequence[str] = (),
    alpha: float = 0.05,
    margin: float = 0.0,
    tracking_uri: str | None = None,
    out: str | Path | None = None,
) -> tuple[DriftReport, Path]:
    """Compare two recorded executions of ``study`` and log the drift report to the candidate's parent run.

    Args:
        study: the study, with its variant applied (executions of that variant are compared).
        baseline: an execution reference: an id (or a unique prefix), ``previous`` (the one
            before the candidate) or ``latest``.
        candidate: an execution reference, usually ``latest``.
        metrics: the metrics to compare (default: the study's).
        alpha, margin: see :func:`compare_executions`.
        tracking_uri: the store.
        out: folder for ``drift.md``, ``drift.html`` and ``drift.json`` (default: a temporary folder).

    Returns:
        The report and the folder it was written to.

    Raises:
        TrackingError: a reference names no execution (the valid ones listed).
        OrchestratorError: both references name one execution, or a metric is unknown.
        ValueError: ``alpha`` or ``margin`` out of range.
    """
    import json
    import tempfile

    from ..records.reader import Records

    records = Records.open(study, study.variant, tracking_uri)
    candidate_id = records.resolve_id(candidate)
    baseline_id = records.resolve_id(baseline, relative_to=candidate_id)
    if baseline_id == candidate_id:
        raise OrchestratorError(f"--baseline and --candidate are the same execution ({baseline_id}); compare two different executions")
    names = [x.name for x in study.metrics]
    unknown = [m for m in metrics if m not in names and m != "diverged"]
    if unknown:
        raise OrchestratorError(f"--metric {unknown[0]!r} is not a metric of study {study.name!r}. {did_you_mean(unknown[0], names)}")
    base, base_meta = records.results(baseline_id)
    cand, cand_meta = records.results(candidate_id)
    report = compare_executions(
        base, cand, study=study.name, factors=study.factor_names, metrics=list(metrics) or names,
        baseline_id=baseline_id, candidate_id=candidate_id, alpha=alpha, margin=margin,
        environment=(base_meta.get("environment") or {}, cand_meta.get("environment") or {}),
    )
    folder = Path(out) if out else Path(tempfile.mkdtemp(prefix="drift-"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "drift.md").write_text(report.to_markdown())
    (folder / "drift.html").write_text(report.to_html())
    (folder / "drift.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
    records.log_artifacts(folder, execution=candidate_id, artifact_path="drift")
    return report, folder
