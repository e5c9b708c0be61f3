"""``orchestrator run | status | ui | executions``: execute a study and look at its records.

Exit status of ``run``: 0 every trial finished, 1 some failed (the count is printed),
2 usage error / unreachable store / bad Ray address, 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import click

from .options import address_option, load, tracking_uri_option, variant_option

__all__ = ["executions", "run", "status", "ui"]

tracking_option = tracking_uri_option
format_option = click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)


@click.command("run")
@click.argument("study")
@variant_option
@address_option
@tracking_option
@click.option("--max-concurrent", type=int, default=None, help="At most this many trials at once (default: what the cluster holds).")
@click.option("--retries", type=int, default=None, help="Retries of a trial that raises (default: the study's retries).")
@click.option("--mode", type=click.Choice(["resume", "rerun"]), default="resume", show_default=True,
              help="resume: only trials without a FINISHED run; rerun: all trials again, as a new execution.")
@click.option("--in-process", is_flag=True, help="Run trials here, one at a time, without Ray (for pdb).")
@click.option("--progress/--no-progress", default=None, help="Live display (default: on a terminal; log lines otherwise).")
def run(study: str, variant: str | None, address: str | None, tracking_uri: str | None, max_concurrent: int | None,
        retries: int | None, mode: str, in_process: bool, progress: bool | None) -> None:
    """Execute every trial of STUDY that has no FINISHED run yet, on Ray, recorded in MLflow.

    Started as a Ray job, by ``ray submit`` or in a KubeRay pod, it refuses (exit 2) before
    any trial when no tracking URI outlives the job, and echoes where the records go.
    """
    from ..execution.placement import check_installation, check_records, detect_placement

    placement = detect_placement()
    check_installation(placement)  # before anything imports ray or mlflow
    where = check_records(placement, tracking_uri)
    if where:
        click.echo(where)
    from ..execution.runner import run_study

    loaded = load(study, variant)
    summary = run_study(loaded, address=address, tracking_uri=tracking_uri, max_concurrent=max_concurrent, retries=retries,
                        mode=mode, in_process=in_process, progress=progress)
    click.echo(summary.line())
    if summary.stale_closed:
        click.echo(f"closed {summary.stale_closed} run(s) left RUNNING by an earlier driver as KILLED")
    click.echo(f"records: {summary.tracking_uri} (experiment {summary.experiment_id}, parent run {summary.parent_run_id})")
    if summary.failed:
        click.echo(f"{summary.failed} trial(s) failed; their tracebacks are in the runs' traceback.txt. Run again to retry them.", err=True)
    for error in summary.errors:
        click.echo(f"warning: a record could not be written: {error}", err=True)
    sys.exit(summary.exit_code)


@click.command("status")
@click.argument("study")
@variant_option
@tracking_option
@format_option
def status(study: str, variant: str | None, tracking_uri: str | None, fmt: str) -> None:
    """Per cell of STUDY's current design: finished / failed / killed / running / missing trials."""
    from ..records.reader import study_status

    report = study_status(load(study, variant), tracking_uri=tracking_uri)
    if fmt == "json":
        click.echo(json.dumps(report, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    keys = ("finished", "failed", "killed", "running", "missing")
    table = Table("cell_id", "levels", *keys, title=f"{report['study']} ({report['variant']}), latest execution {report['execution_id'] or '(none)'}")
    for cell in report["cells"]:
        levels = ", ".join(f"{k}={v}" for k, v in cell["levels"].items())
        table.add_row(cell["cell_id"], levels, *(str(cell[k]) for k in keys))
    totals = report["totals"]
    table.add_row("total", f"{totals['trials']} trials", *(str(totals[k]) for k in keys))
    Console(width=160).print(table)


@click.command("executions")
@click.argument("study")
@tracking_option
@format_option
def executions(study: str, tracking_uri: str | None, fmt: str) -> None:
    """List the executions (parent runs) of STUDY, oldest first."""
    from ..records.reader import list_executions

    items = list_executions(load(study, None), tracking_uri=tracking_uri)
    if fmt == "json":
        click.echo(json.dumps(items, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("execution_id", "start", "status", "mode", "variant", "code", "finished", "failed", "killed", "skipped", "environment")
    for e in items:
        c = e["counts"]
        table.add_row(e["execution_id"], str(e["start_time"]), e["status"], str(e["mode"]), str(e["variant"]), str(e["code_version"])[:12],
                      *(str(c.get(k, "")) for k in ("finished", "failed", "killed", "skipped")), e["environment"])
    Console(width=200).print(table)


@click.command("ui")
@click.argument("study", required=False)
@tracking_option
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--dry-run", is_flag=True, help="Print the command and URL, start nothing.")
def ui(study: str | None, tracking_uri: str | None, port: int, dry_run: bool) -> None:
    """Start the MLflow UI on the study store, bound to 127.0.0.1, and print its URL."""
    from ..records.store import open_store

    store = open_store(tracking_uri, check=not dry_run)
    url = f"http://127.0.0.1:{port}"
    if study:
        experiment = store.experiment_id(load(study, None).name)
        if experiment:
            url += f"/#/experiments/{experiment}"
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store.uri, "--host", "127.0.0.1", "--port", str(port)]
    if store.artifact_root:
        command += ["--default-artifact-root", store.artifact_root]
    click.echo(f"MLflow UI: {url}")
    if dry_run:
        click.echo(" ".join(command))
        return
    try:
        sys.exit(subprocess.call(command, env=dict(os.environ)))
    except KeyboardInterrupt:
        sys.exit(0)
