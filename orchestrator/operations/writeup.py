"""Study write-ups: one Markdown page per study, produced by the tool from a real run.

``orchestrator writeup STUDY [--variant V]`` plans the study, runs it (a fresh execution),
analyses it and writes ``docs/studies/<name>.md`` with the question, the design, the exact
command, the result tables and plots, the machine and date, and the findings. Every number
on the page comes from the run: the study file may define ``findings(df, analysis) ->
list[str]``, which computes its sentences from the results table and the analysis. A study
file may also hold ``CHANGES: list[str]``: what changed since the previous write-up of the
study and why (a conclusion that moved, a model or a semantics that changed), shown at the
end of the page.
"""

from __future__ import annotations

import importlib.util
import math
import numbers
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ..formatting import fmt_number

if TYPE_CHECKING:
    import pandas as pd

    from ..definition.study import Study

__all__ = ["write_page", "cell_table"]


def _fmt(value: Any, digits: int = 4) -> str:
    """A table cell: a number (:func:`~orchestrator.formatting.fmt_number`) or an interval ``[lo, hi]``."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"[{fmt_number(value[0], 3)}, {fmt_number(value[1], 3)}]"
    return fmt_number(value, digits)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _level_key(value: Any, order: Sequence[Any] | None) -> tuple[int, int, float, str]:
    """Sort key of a level: its place in the declared order, else numbers by value, then text."""
    if order is not None:
        for i, level in enumerate(order):
            if level == value or str(level) == str(value):
                return (0, i, 0.0, "")
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(float(value)):
        return (1, 0, float(value), "")
    return (2, 0, 0.0, str(value))


def cell_table(df: "pd.DataFrame", factors: Sequence[str], metric: str,
               levels: Mapping[str, Sequence[Any]] | None = None) -> list[list[Any]]:
    """Per cell: levels, n finished, diverged, mean, sd, min, max of ``metric``; sorted by the factors.

    Rows are ordered by the first factor, then the second, ...: each factor's levels in the
    order ``levels`` declares (the study's), else numbers by value and text alphabetically.
    """
    rows = []
    for _, group in df.groupby("cell_id", sort=False):
        first = group.iloc[0]
        finished = group[group["state"] == "FINISHED"]
        diverged = int(finished["diverged"].fillna(0).sum()) if "diverged" in finished else 0
        kept: Any = finished.loc[finished.get("diverged", 0) == 0, metric].dropna() if metric in finished else []  # type: ignore[index]
        values = [float(v) for v in kept]
        mean = sum(values) / len(values) if values else None
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if mean is not None and len(values) > 1 else None
        rows.append([*(first[f] for f in factors), len(finished), diverged, mean, sd, min(values) if values else None, max(values) if values else None])
    orders = levels or {}
    rows.sort(key=lambda row: [_level_key(value, orders.get(f)) for f, value in zip(factors, row)])
    return rows


def _study_module(path: str | None) -> Any:
    """The study file as a module (for its ``findings`` and ``CHANGES``), or None."""
    if not path:
        return None
    spec = importlib.util.spec_from_file_location("_orchestrator_writeup_study", path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _docstring(path: str | None) -> str:
    import ast

    if not path:
        return ""
    return ast.get_docstring(ast.parse(Path(path).read_text())) or ""


def write_page(
    study: "Study",
    out_dir: str | Path = "docs/studies",
    *,
    run: bool = True,
    tracking_uri: str | None = None,
    address: str | None = None,
    bootstrap: int = 200,
    command: str | None = None,
) -> Path:
    """Run (unless ``run=False``), analyse and write the study's page; returns its path."""
    from ..analysis import analyze, write_report
    from .inputs import study_inputs
    from ..design.plan import make_plan
    from ..records.environment import summary
    from ..execution.runner import run_study

    plan = make_plan(study)
    execution = None
    if run:
        outcome = run_study(study, address=address, tracking_uri=tracking_uri, mode="rerun", progress=False)
        execution = outcome.execution_id
    df, choice = study_inputs(study, None, tracking_uri, execution)
    meta = choice["meta"]
    defaults = choice["defaults"]
    metric = choice["response"]
    result = analyze(
        df, metric, fixed=[f for f in choice["fixed"] if df[f].nunique() > 1] if not df.empty else choice["fixed"],
        random=choice["random"], interactions=int(defaults.get("interactions", 2)), log=bool(defaults.get("log", False)),
        aliases=choice["aliases"], bootstrap=bootstrap, seed=0, spread_by=defaults.get("spread_by"),
        seed_interactions=defaults.get("seed_interactions"),
    )
    data = result.to_dict()
    out_dir = Path(out_dir)
    assets = out_dir / study.name
    if assets.exists():
        shutil.rmtree(assets)
    paths = write_report(result, assets, curves=choice["curves"], title=f"{study.name}: {metric}")
    (assets / "report.html").unlink(missing_ok=True)  # the page itself is the report; keep the repository small
    (assets / "results.csv").write_text(df.to_csv(index=False))

    module = _study_module(study.source_file)
    findings: Callable | None = getattr(module, "findings", None)
    statements = list(findings(df, data) if findings else [])
    changes = [str(c) for c in getattr(module, "CHANGES", None) or []]
    env = meta.get("environment") or {}
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = command or f"orchestrator writeup {study.source_file} --variant {study.variant}"
    counts = plan.counts
    factors = [[f.name, f.kind, ", ".join(map(_fmt, f.all_levels)) if not f.nested_in else "; ".join(
        f"{k}: {', '.join(map(_fmt, v))}" for k, v in f.levels.items()), f.nested_in or ""] for f in study.factors]
    lines = [
        f"# {study.name}",
        "",
        f"*Generated by `{command}` on {when}, execution `{meta.get('execution_id')}`, "
        f"on {summary(env) if env else 'an unrecorded machine'}. Numbers and plots below come from that run; "
        "regenerate the page with the same command rather than editing it.*",
        "",
        "## Question",
        "",
        study.description,
        "",
        _docstring(study.source_file),
        "",
        "## Design",
        "",
        f"Workload `{study.workload}`; design `{study.design.to_dict()['kind']}`"
        + (f" (resolution {plan.resolution}, generators {', '.join(plan.generators)})" if plan.resolution else "")
        + f"; variant `{study.variant}`: {counts['cells']} cells, {counts['trials']} trials ({counts['trials_per_cell']} per cell), "
        f"{counts['excluded_cells']} excluded cells.",
        "",
        _table(["factor", "kind", "levels", "nested in"], factors),
        "",
        f"Seed streams: {', '.join(f'`{k}`: {v}' for k, v in study.seed_streams.items())} (scope {study.seed_scope}); "
        f"replicates {study.replicates}; study seed {study.seed}.",
        "",
        "Fixed parameters: " + ", ".join(f"`{k}={v}`" for k, v in study.params.items()) if study.params else "No fixed parameters.",
        "",
        "## Command",
        "",
        "```bash",
        command,
        "```",
        "",
        "It runs `orchestrator run` (a fresh execution, `--mode rerun`), `orchestrator analyze` and "
        "`orchestrator report` on the study, and writes this page with its plots and `results.csv` "
        f"under `docs/studies/{study.name}/`.",
        "",
        "## Results",
        "",
        f"Response: `{metric}`" + (" (analysed on the log scale)" if defaults.get("log") else "")
        + f"; {data.get('n')} of {data.get('n_total')} trials analysed; sums of squares: Type {data.get('ss_type')} "
        f"({data.get('ss_type_reason')}).",
        "",
    ]
    if plan.audit:
        lines += ["### Representability audit (at plan time)", ""]
        lines += [f"- `{row['cell_id']}` {row['levels']}: " + "; ".join(f["message"] for f in row["findings"]) for row in plan.audit]
        lines.append("")
    shares = data.get("shares") or []
    if shares:
        lines += ["### Where the variance comes from", "", _table(["source", "kind", "variance", "share", "95% CI"],
                  [[s["source"], s.get("kind"), s.get("variance"), s.get("share"), s.get("ci")] for s in shares]), ""]
    anova = data.get("anova") or []
    if anova:
        lines += ["### ANOVA", "", _table(["term", "df", "sum_sq", "F", "den df", "error term", "p", "eta²", "ω²"],
                  [[r["term"], r.get("df"), r.get("sum_sq"), r.get("F"), r.get("den_df"), r.get("error_term"), r.get("p"),
                    r.get("eta_sq"), r.get("omega_sq")] for r in anova]), ""]
    components = data.get("variance_components") or []
    if components:
        lines += ["### Variance components", "", _table(["component", "variance", "sd", "95% CI", "at zero (boundary)"],
                  [[c["component"], c.get("variance"), c.get("sd"), c.get("ci"), c.get("boundary")] for c in components]), ""]
    names = study.factor_names
    lines += [f"### Cells: `{metric}`", "", _table([*names, "finished", "diverged", "mean", "sd", "min", "max"], cell_table(df, names, metric, levels={f.name: f.all_levels for f in study.factors})), ""]
    from ..analysis.ranking import study_ranking

    ranked = study_ranking(study, df, metric, str(assets))  # analysis={"ranking": factor}: a table and rank against budget
    if ranked is not None:
        ranking, rank_plots = ranked
        lines += [
            f"### {ranking.title}", "",
            ranking.explanation(), "",
            ranking.markdown(), "",
        ]
        lines += [f"![ranking]({study.name}/{Path(p).name})" for p in rank_plots] + [""]
    lines += ["### Plots", ""]
    for key, path in paths.items():
        if key in ("markdown", "html"):
            continue
        lines.append(f"![{key}]({study.name}/{Path(path).name})")
    lines += ["", "## What the result shows", ""]
    lines += [f"- {s}" for s in statements] or ["- (the study file defines no findings)"]
    notes = [*(data.get("warnings") or []), *(data.get("notes") or [])]
    if notes:
        lines += ["", "Statements of the analysis:", ""] + [f"- {n}" for n in notes]
    if changes:
        lines += ["", "## What changed since the previous write-up", ""] + [f"- {c}" for c in changes]
    page = out_dir / f"{study.name}.md"
    page.write_text("\n".join(lines).rstrip() + "\n")
    return page
