"""``orchestrator analyze`` and ``orchestrator report``: the analysis on the command line.

Registered lazily by :mod:`orchestrator.cli`; nothing heavy is imported until a command runs.
Usage errors (unknown column, bad option) exit with status 2 and a one-line message.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .options import address_option, tracking_uri_option, variant_option

if TYPE_CHECKING:
    import pandas as pd

    from orchestrator.analysis import AnalysisResult

__all__ = ["analyze", "report", "writeup"]


def _names(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _prepare(study: str | None, csv: str | None, variant: str | None, metric: str | None, response: str | None,
             fixed: str | None, random: str | None, tracking_uri: str | None) -> tuple["pd.DataFrame", dict[str, Any]]:
    if bool(study) == bool(csv):
        raise click.UsageError("give either a STUDY or --csv FILE (not both, not neither)")
    if csv:
        import pandas as pd

        if not response:
            raise click.UsageError("--csv needs --response COL (the numeric column to explain)")
        if not fixed and not random:
            raise click.UsageError("--csv needs --fixed A,B and/or --random C (the factors)")
        try:
            df = pd.read_csv(csv)
        except (OSError, ValueError) as exc:
            raise click.BadParameter(f"cannot read {csv}: {exc}", param_hint="--csv") from None
        return df, {"response": response, "fixed": _names(fixed), "random": _names(random), "aliases": None,
                    "study": None, "curves": None}
    from orchestrator.definition.loader import load_study
    from orchestrator.operations.inputs import study_inputs

    df, choice = study_inputs(load_study(str(study), variant), metric or response, tracking_uri)
    if fixed is not None:
        choice["fixed"] = _names(fixed)
    if random is not None:
        choice["random"] = _names(random)
    return df, choice


def _draws(intervals: bool, bootstrap: int | None) -> int:
    """What ``analyze(bootstrap=...)`` takes: 0 for no intervals, else the default (the deprecated ``--bootstrap 0`` is ``--no-intervals``)."""
    return 0 if not intervals or bootstrap == 0 else 200


def _run(df: "pd.DataFrame", choice: dict[str, Any], interactions: int | None, log: bool | None, bootstrap: int, seed: int,
         spread_by: str | None) -> "AnalysisResult":
    from orchestrator.analysis import AnalysisError, analyze as run_analysis

    defaults = choice.get("defaults") or {}
    interactions = interactions or int(defaults.get("interactions", 2))
    log = bool(defaults.get("log", False)) if log is None else log
    spread_by = spread_by or defaults.get("spread_by")
    ctx = click.get_current_context(silent=True)
    seed_interactions = (ctx.meta.get("seed_interactions") if ctx else None) or defaults.get("seed_interactions")
    try:
        result = run_analysis(df, choice["response"], fixed=choice["fixed"], random=choice["random"],
                              interactions=interactions, log=log, aliases=choice["aliases"], bootstrap=bootstrap,
                              seed=seed, spread_by=spread_by, seed_interactions=seed_interactions)
    except AnalysisError as exc:
        raise click.UsageError(" ".join(str(exc).split())) from None
    result.notes[:0] = choice.get("notes") or []
    return result


def _record(choice: dict[str, Any], result: "AnalysisResult") -> None:
    """Log the analysis of a STUDY's execution on that execution's run; a store that refuses it is a warning."""
    study, records = choice.get("study"), choice.get("records")
    if study is None or records is None:
        return
    from orchestrator.errors import OrchestratorError
    from orchestrator.records.summary import record_analysis

    default = choice["response"] == ((choice.get("defaults") or {}).get("metric") or study.primary_metric.name)
    try:
        record_analysis(records, choice["meta"], result.to_dict(), default=default)
    except OrchestratorError as exc:
        click.echo(f"warning: {exc}", err=True)


def _common(fn):
    options = [
        click.argument("study", required=False),
        variant_option,
        click.option("--metric", "-m", default=None, help="Metric to analyse (default: the study's primary metric)."),
        click.option("--csv", "csv", type=click.Path(dir_okay=False), default=None,
                     help="Analyse a CSV of results instead of a study."),
        click.option("--response", default=None, help="Response column (with --csv)."),
        click.option("--fixed", default=None, help="Fixed factors, comma-separated: A,B."),
        click.option("--random", "random_", default=None, help="Random factors (seed streams), comma-separated."),
        click.option("--interactions", type=click.IntRange(min=1), default=None,
                     help="Highest interaction order among fixed factors (default: the study's, else 2)."),
        click.option("--log/--no-log", default=None, help="Analyse log(response) (for losses); default: the study's analysis setting, else no."),
        click.option("--intervals/--no-intervals", default=True, show_default=True,
                     help="95% intervals, computed from the fit; only those whose coverage was measured are shown."),
        click.option("--bootstrap", type=click.IntRange(min=0), default=None, hidden=True,
                     help="Deprecated (the intervals no longer come from a bootstrap): 0 is --no-intervals, any other value --intervals."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the intervals' Monte Carlo draws."),
        click.option("--spread-by", default=None, help="Fixed factor within whose levels to estimate components."),
        click.option("--seed-interactions", type=click.Choice(["none", "main"]), default=None, expose_value=False,
                     callback=lambda ctx, _param, value: ctx.meta.__setitem__("seed_interactions", value),
                     help="Seed-stream x fixed-factor interaction terms: main (those the design can estimate) or "
                          "none (default: the study's analysis setting, else main)."),
        tracking_uri_option,
        click.option("--record/--no-record", default=True, show_default=True,
                     help="For a STUDY: log the numbers on the execution's MLflow run (metrics share.<term>, vc.<component>, "
                          "F.<term>, p.<term>) and the question and share table as its description."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.command("analyze")
@_common
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--plan-replicates", is_flag=True, help="Also say how many replicates detect --effect-size.")
@click.option("--effect-size", type=float, default=None, help="Difference between two levels to detect (response units).")
@click.option("--power", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.8, show_default=True)
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05, show_default=True)
def analyze(study: str | None, variant: str | None, metric: str | None, csv: str | None, response: str | None,
            fixed: str | None, random_: str | None, interactions: int | None, log: bool | None, intervals: bool, bootstrap: int | None, seed: int,
            spread_by: str | None, tracking_uri: str | None, record: bool, fmt: str, plan_replicates: bool,
            effect_size: float | None, power: float, alpha: float) -> None:
    """Attribute the variance of a metric to each factor of STUDY, or of a CSV (--csv).

    \b
    Examples:
      orchestrator analyze --csv results.csv --response final_loss --fixed dtype,lr --random seed_init
      orchestrator analyze my_study --metric final_loss --format json
    """
    if plan_replicates and (effect_size is None or effect_size <= 0):
        raise click.BadParameter("--plan-replicates needs --effect-size X > 0 (a difference in response units)",
                                 param_hint="--effect-size")
    df, choice = _prepare(study, csv, variant, metric, response, fixed, random_, tracking_uri)
    result = _run(df, choice, interactions, log, _draws(intervals, bootstrap), seed, spread_by)
    if plan_replicates:
        from orchestrator.analysis import AnalysisError

        try:
            result.power = result.plan_replicates(float(effect_size or 0.0), power=power, alpha=alpha).to_dict()
        except AnalysisError as exc:
            raise click.UsageError(" ".join(str(exc).split())) from None
    if record:
        _record(choice, result)
    if fmt == "json":
        click.echo(json.dumps(result.to_dict(), indent=2, allow_nan=False))
    else:
        # the terminal's width ($COLUMNS, else the terminal, else 110 when piped): tables split, names never cut
        click.echo(result.summary(width=shutil.get_terminal_size((110, 24)).columns), nl=False)


@click.command("report")
@_common
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="Folder for report.md, report.html and the plots (default: reports/<name>).")
def report(study: str | None, variant: str | None, metric: str | None, csv: str | None, response: str | None,
           fixed: str | None, random_: str | None, interactions: int | None, log: bool | None, intervals: bool, bootstrap: int | None, seed: int,
           spread_by: str | None, tracking_uri: str | None, record: bool, out: str | None) -> None:
    """Write a Markdown and a self-contained HTML report with plots; for a STUDY, log them to MLflow.

    \b
    Examples:
      orchestrator report --csv results.csv --response final_loss --fixed dtype,lr --out reports/dtype
      orchestrator report my_study
    """
    from orchestrator.analysis import write_report

    df, choice = _prepare(study, csv, variant, metric, response, fixed, random_, tracking_uri)
    result = _run(df, choice, interactions, log, _draws(intervals, bootstrap), seed, spread_by)
    name = choice["study"].name if choice["study"] is not None else Path(str(csv)).stem
    folder = Path(out) if out else Path("reports") / name
    ranking = None
    if choice["study"] is not None:  # the study's analysis={"ranking": factor}: a table and rank against budget
        from orchestrator.analysis import AnalysisError
        from orchestrator.analysis.ranking import study_ranking

        folder.mkdir(parents=True, exist_ok=True)
        try:
            ranking = study_ranking(choice["study"], df, choice["response"], str(folder))
        except AnalysisError as exc:
            raise click.UsageError(" ".join(str(exc).split())) from None
    paths = write_report(result, folder, curves=choice.get("curves"), title=f"{name}: {choice['response']}", ranking=ranking)
    if choice["study"] is not None:
        choice["records"].log_artifacts(folder, artifact_path="analysis")
        click.echo("logged to the study's parent MLflow run under artifacts/analysis")
        if record:
            _record(choice, result)
    for key, path in paths.items():
        click.echo(f"{key}: {path}")


@click.command("writeup")
@click.argument("study")
@variant_option
@click.option("--out", "out", type=click.Path(file_okay=False), default="docs/studies", show_default=True)
@click.option("--no-run", is_flag=True, help="Use the latest execution instead of running the study again.")
@address_option
@tracking_uri_option
@click.option("--intervals/--no-intervals", default=True, show_default=True,
              help="95% intervals, computed from the fit; only those whose coverage was measured are shown.")
@click.option("--bootstrap", type=click.IntRange(min=0), default=None, hidden=True,
              help="Deprecated: 0 is --no-intervals, any other value --intervals.")
def writeup(study: str, variant: str | None, out: str, no_run: bool, address: str | None, tracking_uri: str | None,
            intervals: bool, bootstrap: int | None) -> None:
    """Run STUDY, analyse it and write its page docs/studies/<name>.md (numbers from the run)."""
    from orchestrator.definition.loader import load_study
    from orchestrator.operations.writeup import write_page

    loaded = load_study(study, variant)
    page = write_page(loaded, out, run=not no_run, tracking_uri=tracking_uri, address=address, bootstrap=_draws(intervals, bootstrap))
    click.echo(f"wrote {page}")
