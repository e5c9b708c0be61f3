"""Every option that more than one command takes, defined once (and loading a study for a command)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from ..definition.study import Study

__all__ = ["address_option", "load", "tracking_uri_option", "variant_option"]

variant_option = click.option("--variant", "-v", default=None, help="Variant of the study (default: full).")

tracking_uri_option = click.option(
    "--tracking-uri",
    default=None,
    envvar="MLFLOW_TRACKING_URI",
    help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow/mlflow.db with artifacts in mlflow/artifacts).",
)

address_option = click.option(
    "--address", default=None, help="Ray cluster to join: 'auto', host:port or ray://host:port (default: $RAY_ADDRESS, else an embedded Ray)."
)


def load(study_ref: str, variant: str | None) -> "Study":
    """Load a study file for a command (errors become exit status 2)."""
    from ..definition.loader import load_study

    return load_study(study_ref, variant)
