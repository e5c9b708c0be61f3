"""``orchestrator sync STUDY``: write the records an execution left pending in its journal.

Exit status: 0 nothing left pending, 1 the store still refused some records (the count is
printed), 2 an unknown study or an unreachable store (one line).
"""

from __future__ import annotations

import sys

import click

from .options import load, tracking_uri_option

__all__ = ["sync"]


@click.command("sync")
@click.argument("study")
@tracking_uri_option
@click.option("--retry-budget", "retry_s", type=float, default=None,
              help="Seconds the store may keep failing before records stay pending (default: $ORCHESTRATOR_RECORD_RETRY_S, else 120).")
def sync(study: str, tracking_uri: str | None, retry_s: float | None) -> None:
    """Replay STUDY's pending journals into MLflow, exactly once, without running any trial.

    ``orchestrator run`` does the same before it decides what to run; use ``sync`` to get the
    records in (for ``analyze``, the UI) without starting an execution.
    """
    from ..records.recorder import default_retry_budget_s
    from ..records.replay import sync_study
    from ..records.store import open_store

    loaded = load(study, None)
    store = open_store(tracking_uri)
    report = sync_study(store, loaded.name, retry_budget_s=default_retry_budget_s() if retry_s is None else retry_s)
    click.echo(report.line(loaded.name))
    if report.left_pending:
        click.echo(f"{report.left_pending} records pending; run orchestrator sync {study} again once the store {store.uri} answers.", err=True)
    sys.exit(1 if report.left_pending else 0)
