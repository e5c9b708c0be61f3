"""``orchestrator schedule`` and ``orchestrator compare``: scheduled reruns and drift detection."""

from __future__ import annotations

from pathlib import Path

import click

from .options import load, tracking_uri_option, variant_option

__all__ = ["compare", "schedule"]


@click.command("schedule")
@click.argument("study")
@click.option("--cron", required=True, help="Five-field cron expression or a macro such as @daily.")
@variant_option
@click.option("--format", "fmt", type=click.Choice(["raycronjob", "rayjob", "crontab"]), default="raycronjob", show_default=True)
@click.option("--image", default=None, help="Container image with this project installed (raycronjob, rayjob).")
@click.option("--mode", type=click.Choice(["rerun", "resume"]), default="rerun", show_default=True, help="rerun: all trials, then compare with the previous execution; resume: only missing or failed trials.")
@tracking_uri_option
@click.option("--time-zone", default=None, help="Time zone of the cron expression, e.g. Europe/Berlin.")
@click.option("--address", default="http://127.0.0.1:8265", show_default=True, help="Ray dashboard address for crontab's ray job submit.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None, help="Write to this file instead of standard output.")
def schedule(study: str, cron: str, variant: str | None, fmt: str, image: str | None, mode: str, tracking_uri: str | None, time_zone: str | None, address: str, output: str | None) -> None:
    """Write a ready-to-apply definition that reruns STUDY on a schedule.

    raycronjob: a KubeRay RayCronJob (KubeRay >= 1.6); rayjob: a RayJob plus the Kubernetes
    CronJob wrapper for clusters without RayCronJob; crontab: a crontab line around
    `ray job submit` for a head you started (`ray up cluster.yaml`, or `ray start --head`).
    Each carries the tracking URI in the job's runtime environment (env_vars).
    """
    from ..operations.schedule import render, spec_for

    spec = spec_for(load(study, variant), fmt, cron=cron, tracking_uri=tracking_uri, mode=mode, image=image, time_zone=time_zone, address=address)
    text = render(spec, fmt)
    if output:
        Path(output).write_text(text)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


@click.command("compare")
@click.argument("study")
@click.option("--baseline", required=True, help="Execution id of the baseline, or 'previous' (the one before the candidate).")
@click.option("--candidate", required=True, help="Execution id of the candidate, or 'latest'.")
@variant_option
@click.option("--metric", "metrics", multiple=True, help="Response metric(s) to compare (default: the study's metrics).")
@click.option("--alpha", type=float, default=0.05, show_default=True, help="Family-wise error rate across cells (Holm).")
@click.option("--margin", type=float, default=0.0, show_default=True, help="Equivalence margin: mean changes smaller than this are not drift.")
@tracking_uri_option
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text", show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Folder for drift.md and drift.html (default: a temporary folder).")
def compare(study: str, baseline: str, candidate: str, variant: str | None, metrics: tuple[str, ...], alpha: float, margin: float, tracking_uri: str | None, fmt: str, out: str | None) -> None:
    """Did anything change between two executions of STUDY? Exit 0: no drift, 1: drift, 2: usage error.

    The drift report (Markdown and HTML) is logged to the candidate's parent MLflow run.
    """
    import json

    from ..errors import OrchestratorError
    from ..operations.compare import compare_recorded

    loaded = load(study, variant)
    try:
        report, folder = compare_recorded(
            loaded, baseline, candidate, metrics=metrics, alpha=alpha, margin=margin, tracking_uri=tracking_uri, out=out
        )
    except OrchestratorError:
        raise
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if fmt == "json":
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
    elif fmt == "markdown":
        click.echo(report.to_markdown(), nl=False)
    else:
        changed = sorted({c.cell_id for c in report.changed_cells})
        click.echo(f"{loaded.name}: baseline {report.baseline} vs candidate {report.candidate}: " + (f"DRIFT in {len(changed)} cell(s)" if changed else "no drift"))
        for cell in report.changed_cells:
            click.echo(f"  {cell.cell_id} {cell.levels} {cell.metric}: {'; '.join(cell.reasons)}")
        for key, (a, b) in report.environment.items():
            click.echo(f"  environment {key}: {a} -> {b}")
        click.echo(f"report: {folder / 'drift.html'}")
    if report.drift:
        raise SystemExit(1)
