"""The records of studies in MLflow: the only package that imports mlflow (lazily).

* :mod:`.store` - resolve the tracking URI, check and open the store;
* :mod:`.recorder` - :class:`ExecutionRecorder`, the driver's one writer; :class:`Mode`;
* :mod:`.reader` - :class:`Records`, a handle on one study's records, opened once;
* :mod:`.tags` - every tag, parameter and artifact name, defined once;
* :mod:`.environment` - the environment fingerprint every execution records;
* :mod:`.cellruns` - :class:`TrialRuns`: per-trial or per-cell child runs (very large studies).

Example:
    >>> from orchestrator.records import Records                  # doctest: +SKIP
    >>> df, meta = Records.open("screening_demo", "smoke").results()  # doctest: +SKIP
"""

from __future__ import annotations

from .cellruns import TrialRuns
from .reader import Records, list_executions, load_curves, load_results, log_artifacts, study_status
from .recorder import ExecutionInfo, ExecutionRecorder, Mode, new_execution_id, trial_params, trial_typed
from .store import (
    DEFAULT_TRACKING_URI,
    ExecutionInProgressError,
    TrackingError,
    TrackingStore,
    TrackingStoreError,
    open_store,
    resolve_tracking_uri,
)

__all__ = [
    "DEFAULT_TRACKING_URI",
    "ExecutionInProgressError",
    "ExecutionInfo",
    "ExecutionRecorder",
    "Mode",
    "Records",
    "TrackingError",
    "TrackingStore",
    "TrackingStoreError",
    "TrialRuns",
    "list_executions",
    "load_curves",
    "load_results",
    "log_artifacts",
    "new_execution_id",
    "open_store",
    "resolve_tracking_uri",
    "study_status",
    "trial_params",
    "trial_typed",
]
