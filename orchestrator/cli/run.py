"""``orchestrator run | status | ui | executions``: execute a study and look at its records.

Exit status of ``run``: 0 every trial finished, 1 some failed (the count is printed),
2 usage error / unreachable store / bad Ray address, 130 interrupted by Ctrl-C, 143 stopped by SIGTERM.
"""

from __future__ import annotations

import json
import signal
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
@click.option("--trial-runs", type=click.Choice(["per-trial", "per-cell", "auto"]), default="auto", show_default=True,
              help="MLflow child runs: one per trial, or one per design cell with aggregates over its replicates (every trial "
                   "stays in the results table); auto: per cell above $ORCHESTRATOR_PER_CELL_ABOVE trials (default 10000).")
def run(study: str, variant: str | None, address: str | None, tracking_uri: str | None, max_concurrent: int | None,
        retries: int | None, mode: str, in_process: bool, progress: bool | None, trial_runs: str) -> None:
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
                        mode=mode, in_process=in_process, progress=progress, trial_runs=trial_runs)
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
@click.option("--port", type=int, default=5000, show_default=True, help="Port on 127.0.0.1 (0: any free port).")
@click.option("--timeout", type=click.FloatRange(min=1), default=300, show_default=True,
              help="Seconds to wait for the UI to answer before giving up.")
@click.option("--dry-run", is_flag=True, help="Print the command and URL, start nothing.")
def ui(study: str | None, tracking_uri: str | None, port: int, timeout: float, dry_run: bool) -> None:
    """Start the MLflow UI on the study store, bound to 127.0.0.1; print its URL once it answers.

    With a STUDY, the URL opens the study's experiment on its runs table. Ctrl-C stops the UI.
    """
    from ..records.store import open_store, resolve_tracking_uri
    from ..records.ui import UiServer, experiment_url

    loaded = load(study, None) if study else None
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):  # a tracking server: its UI is already there
        experiment = open_store(uri).experiment_id(loaded.name) if loaded else None
        click.echo(f"MLflow UI: {experiment_url(uri.rstrip('/'), experiment)}")
        return
    server = UiServer(uri, port)
    if dry_run:
        experiment = open_store(uri, check=False).experiment_id(loaded.name) if loaded else None
        click.echo(f"MLflow UI: {server.url(experiment)}")
        click.echo(" ".join(server.command()))
        return
    previous = {sig: signal.signal(sig, _exit_on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        log = server.start()
        click.echo(f"starting the MLflow UI on {server.base} (its log: {log}) ...", err=True)
        seconds = server.wait_ready(timeout)
        experiment = server.experiment_id(loaded.name) if loaded is not None else None
        if loaded is not None and experiment is None:
            click.echo(f"warning: {uri} holds no experiment named {loaded.name!r} yet: the URL opens the experiments list", err=True)
        click.echo(f"MLflow UI: {server.url(experiment)}")
        click.echo(f"(answered after {seconds:.1f} s; Ctrl-C stops it)", err=True)
        code = server.wait()
        if code:
            click.echo(f"the MLflow UI exited with status {code}; its log: {log}", err=True)
        sys.exit(code)
    except KeyboardInterrupt:
        sys.exit(0)
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(0)  # runs the command's finally: the UI server is stopped with it
