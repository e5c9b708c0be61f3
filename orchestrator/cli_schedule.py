"""``orchestrator schedule`` and ``orchestrator compare``: scheduled reruns and drift detection."""

from __future__ import annotations

import os
from pathlib import Path

import click

from .cli import load, variant_option

__all__ = ["schedule"]


@click.command("schedule")
@click.argument("study")
@click.option("--cron", required=True, help="Five-field cron expression or a macro such as @daily.")
@variant_option
@click.option("--format", "fmt", type=click.Choice(["raycronjob", "rayjob", "crontab"]), default="raycronjob", show_default=True)
@click.option("--image", default=None, help="Container image with this project installed (raycronjob, rayjob).")
@click.option("--mode", type=click.Choice(["rerun", "resume"]), default="rerun", show_default=True, help="rerun: all trials, then compare with the previous execution; resume: only missing or failed trials.")
@click.option("--tracking-uri", default=None, help="MLflow store the scheduled runs record to (default: $MLFLOW_TRACKING_URI).")
@click.option("--time-zone", default=None, help="Time zone of the cron expression, e.g. Europe/Berlin.")
@click.option("--address", default="http://127.0.0.1:8265", show_default=True, help="Ray dashboard address for crontab's ray job submit.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None, help="Write to this file instead of standard output.")
def schedule(study: str, cron: str, variant: str | None, fmt: str, image: str | None, mode: str, tracking_uri: str | None, time_zone: str | None, address: str, output: str | None) -> None:
    """Write a ready-to-apply definition that reruns STUDY on a schedule.

    raycronjob: a KubeRay RayCronJob (KubeRay >= 1.6); rayjob: a RayJob plus the Kubernetes
    CronJob wrapper for clusters without RayCronJob; crontab: a crontab line around
    `ray job submit` for clusters started with `ray up cluster.yaml`.
    """
    from .schedule import DEFAULT_IMAGE, ScheduleError, ScheduleSpec, check_cron, render

    loaded = load(study, variant)
    cron = check_cron(cron)
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if fmt == "crontab":
        workdir = os.getcwd()
        tracking_uri = tracking_uri or f"sqlite:///{Path(workdir, 'mlflow', 'mlflow.db')}"
        study_file = os.path.relpath(loaded.source_file or study, workdir)
    else:
        workdir = "/app"
        if not tracking_uri:
            raise ScheduleError(
                "--tracking-uri: a Kubernetes job runs in pods that are deleted afterwards, so its records need an MLflow server "
                "the cluster can reach, found none (no --tracking-uri and no MLFLOW_TRACKING_URI). "
                "Pass e.g. --tracking-uri http://mlflow.mlflow.svc:5000"
            )
        study_file = f"studies/{Path(loaded.source_file or study).name}"
    spec = ScheduleSpec(
        study_name=loaded.name,
        study_file=study_file,
        cron=cron,
        variant=loaded.variant or "full",
        image=image or DEFAULT_IMAGE,
        mode=mode,
        tracking_uri=tracking_uri,
        time_zone=time_zone,
        workdir=workdir,
        address=address,
    )
    text = render(spec, fmt)
    if output:
        Path(output).write_text(text)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)
