"""Every MLflow tag, parameter and artifact name the records use, defined once.

The recorder writes them and the reader reads them; nothing else spells them out.
"""

from __future__ import annotations

__all__ = [
    "ARTIFACT_DESIGN",
    "ARTIFACT_ENVIRONMENT",
    "ARTIFACT_STUDY",
    "ARTIFACT_STUDY_SOURCE_DIR",
    "ARTIFACT_TRACEBACK",
    "ATTEMPTS",
    "CELL_ID",
    "CELL_LEVELS",
    "CLOSED_BY",
    "CODE_VERSION",
    "DRIVER",
    "ENVIRONMENT",
    "ENV_PREFIX",
    "ERROR",
    "EXECUTION_ID",
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TRAINING",
    "EXPERIMENT_STUDY",
    "FINAL_STEP",
    "INFO",
    "KIND_CELL",
    "KIND_EXECUTION",
    "KIND_TRIAL",
    "LEASE",
    "LINEAGE",
    "LOST",
    "MLFLOW_PARENT_RUN_ID",
    "MLFLOW_RUN_NAME",
    "MLFLOW_NOTE",
    "MLFLOW_SOURCE_NAME",
    "MODE",
    "RECORDS_PENDING",
    "REPLICATE",
    "RETRY_REASONS",
    "RESULTS_PARTS",
    "RESULTS_TABLE",
    "RUN_KIND",
    "SEED_PREFIX",
    "STATUS",
    "STUDY",
    "STUDY_HASH",
    "TRIAL",
    "TRIAL_ID",
    "TRIALS_PREFIX",
    "TRIAL_RUNS",
    "VARIANT",
]

# -- tags shared by the parent run (one execution) and its child runs (one trial attempt each)
STUDY = "study"
STUDY_HASH = "study_hash"
VARIANT = "variant"
CODE_VERSION = "code_version"
EXECUTION_ID = "execution_id"
LINEAGE = "lineage"
ENV_PREFIX = "env."
"""``env.<key>``: one tag per entry of the environment fingerprint."""

RUN_KIND = "run_kind"
KIND_EXECUTION = "execution"
KIND_TRIAL = "trial"
KIND_CELL = "cell"
"""A design cell's run, with aggregates over its replicates (an execution recorded per cell: :mod:`.cellruns`)."""

# -- parent run
MODE = "mode"
"""Also the name of the parent run's parameter."""
DRIVER = "driver"
"""``host:pid`` of the driver that executes it."""
ENVIRONMENT = "orchestrator.environment"
STATUS = "orchestrator.status"
LEASE = "orchestrator.lease"
"""The driver's lease on the execution: JSON ``{"holder", "renewed_ms", "ttl_s"}`` (:mod:`.lease`)."""
ERROR = "orchestrator.error"
"""Why an execution stopped early without a Ctrl-C (the cluster failed, its lease was taken over)."""
TRIAL_RUNS = "orchestrator.trial_runs"
"""Parent-run tag: ``per-trial`` or ``per-cell``, the child runs the execution writes (:mod:`.cellruns`)."""
TRIALS_PREFIX = "trials_"
"""Parent-run metrics ``trials_planned``, ``trials_skipped``, ``trials_finished``, ..."""

# -- child run (one trial attempt)
TRIAL_ID = "trial_id"
CELL_ID = "cell_id"
REPLICATE = "replicate"
ATTEMPTS = "attempts"
TRIAL = "orchestrator.trial"
"""The typed levels, seeds, seed indices and (if short enough) parameters, as JSON."""
INFO = "orchestrator.info"
"""What the trial recorded about itself (``ctx.record``), as JSON."""
RETRY_REASONS = "orchestrator.retry_reasons"
"""Why earlier attempts were retried, in order, ``; ``-separated: ``node lost``, ``worker died``, ``failed``."""
LOST = "orchestrator.lost"
"""On the live run of an attempt that was lost and retried (closed KILLED): why (``node lost``, ``worker died``)."""
CELL_LEVELS = "orchestrator.levels"
"""On a cell run: the cell's typed levels, as JSON."""
FINAL_STEP = "orchestrator.final_step"
"""The step the final metrics are logged at (one after the last logged step)."""
SEED_PREFIX = "seed_"
"""``seed_<stream>``: parameters (and result columns) holding each stream's seed."""

# -- any run
CLOSED_BY = "orchestrator.closed_by"
EXPERIMENT_STUDY = "orchestrator.study"
MLFLOW_RUN_NAME = "mlflow.runName"
MLFLOW_PARENT_RUN_ID = "mlflow.parentRunId"
MLFLOW_SOURCE_NAME = "mlflow.source.name"
MLFLOW_NOTE = "mlflow.note.content"
"""A run's description (Markdown), shown on its page in the UI: the execution's question and shares."""

# -- the experiment (one per study)
EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"
"""Says the experiment holds training runs, not GenAI traces (the UI's "Model training" view)."""

# -- artifacts of the parent run
ARTIFACT_DESIGN = "design.csv"
ARTIFACT_STUDY = "study.json"
ARTIFACT_ENVIRONMENT = "environment.json"
ARTIFACT_STUDY_SOURCE_DIR = "study"
"""The study file, stored as ``study/<name>.py.txt``."""
RESULTS_TABLE = "orchestrator.results"
"""Parent-run tag: the folder of its artifacts that holds the execution's results table (``results``)."""
RESULTS_PARTS = "orchestrator.results_parts"
"""Parent-run tag, set at the end: how many parts the results table has."""
RECORDS_PENDING = "records_pending"
"""Parent-run metric, set at the end: trial records the store did not take (0 when all are in)."""
ARTIFACT_TRACEBACK = "traceback.txt"
"""A failed trial's traceback (child run)."""
