"""Analysis: attribute the variance of an outcome to each factor of a study.

The only part of the project that imports statsmodels-class statistics and matplotlib.
Nothing heavy is imported until a name below is first used, so ``import orchestrator``
stays fast.

Example:
    >>> import pandas as pd
    >>> from orchestrator.analysis import analyze
    >>> df = pd.DataFrame({"dtype": ["fp32", "bf16"] * 4, "loss": [1.0, 1.5, 1.1, 1.4, 0.9, 1.6, 1.0, 1.5]})
    >>> analyze(df, "loss", fixed=["dtype"], bootstrap=0).shares[0]["source"]
    'dtype'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.analysis.errors import AnalysisError
from orchestrator.analysis.options import SeedInteractions

if TYPE_CHECKING:
    from orchestrator.analysis.core import AnalysisResult, analyze
    from orchestrator.analysis.power import ReplicatePlan, plan_replicates
    from orchestrator.analysis.report import write_report

__all__ = ["AnalysisError", "AnalysisResult", "ReplicatePlan", "SeedInteractions", "analyze", "plan_replicates",
           "write_report"]

_LAZY = {
    "AnalysisResult": "orchestrator.analysis.core",
    "analyze": "orchestrator.analysis.core",
    "ReplicatePlan": "orchestrator.analysis.power",
    "plan_replicates": "orchestrator.analysis.power",
    "write_report": "orchestrator.analysis.report",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'orchestrator.analysis' has no attribute {name!r}")
