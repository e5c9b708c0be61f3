"""Small helpers for the ``findings(df, analysis)`` functions of study files.

Findings are sentences computed from a study's results table (one row per trial, as
``tracking.load_results`` gives) and its analysis (``AnalysisResult.to_dict()``), so a
write-up never carries a number typed by hand.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..formatting import fmt_number

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["fmt", "finished", "group_stats", "share", "share_sentence", "random_share"]


def fmt(value: Any, digits: int = 3) -> str:
    """:func:`~orchestrator.formatting.fmt_number` with 3 significant digits, for sentences."""
    return fmt_number(value, digits)


def finished(df: "pd.DataFrame", include_diverged: bool = False) -> "pd.DataFrame":
    """The FINISHED trials (without diverged ones unless asked)."""
    out = df[df["state"] == "FINISHED"] if "state" in df.columns else df
    if not include_diverged and "diverged" in out.columns:
        out = out[out["diverged"].fillna(0) == 0]
    return out


def group_stats(df: "pd.DataFrame", by: Sequence[str], metric: str) -> "pd.DataFrame":
    """Per group: trials, diverged, and mean / median / sd / min / max of ``metric`` over non-diverged trials."""
    import pandas as pd

    rows = []
    for key, group in df.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        ok = finished(group)
        values = ok[metric].dropna() if metric in ok.columns else pd.Series(dtype=float)
        rows.append({
            **dict(zip(by, key)),
            "trials": len(group),
            "diverged": int(group["diverged"].fillna(0).sum()) if "diverged" in group.columns else 0,
            "mean": float(values.mean()) if len(values) else math.nan,
            "median": float(values.median()) if len(values) else math.nan,
            "sd": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
            "min": float(values.min()) if len(values) else math.nan,
            "max": float(values.max()) if len(values) else math.nan,
        })
    return pd.DataFrame(rows)


def share_sentence(analysis: Mapping[str, Any], k: int = 3) -> str:
    """'The largest shares of the variance of X: a (52%, CI 40-60%), ...' from the shares table."""
    shares = [s for s in analysis.get("shares") or [] if s.get("share") is not None]
    if not shares:
        return "The analysis could not attribute the variance (no shares table)."
    shares.sort(key=lambda s: -s["share"])
    parts = []
    for s in shares[:k]:
        ci = s.get("ci") or [None, None]
        interval = f", 95% CI {100 * ci[0]:.1f}-{100 * ci[1]:.1f}%" if ci[0] is not None and ci[1] is not None else ""
        parts.append(f"{s['source']} ({100 * s['share']:.1f}%{interval})")
    name = analysis.get("response")
    transform = " (log scale)" if analysis.get("transform") == "log" else ""
    return f"The largest shares of the variance of {name}{transform}: " + "; ".join(parts) + "."


def share(analysis: Mapping[str, Any], source: str) -> float | None:
    """The share of the variance attributed to ``source`` (None when it is not in the table)."""
    for row in analysis.get("shares") or []:
        if row.get("source") == source:
            return row.get("share")
    return None


def random_share(analysis: Mapping[str, Any], streams: Sequence[str]) -> float:
    """Summed share of every random term that involves one of ``streams``.

    A seed stream's variance is split between its main term (``seed_init``) and its
    interactions with fixed factors (``seed_init:optimizer``, in the model by default since
    the analysis added ``seed_interactions="main"``): summing only the main terms would leave
    part of the seed's contribution out. ``streams`` are column names (``"seed_init"``).
    """
    wanted = set(streams)
    total = 0.0
    for row in analysis.get("shares") or []:
        if row.get("kind") == "random" and row.get("share") is not None and wanted & set(str(row.get("source")).split(":")):
            total += float(row["share"])
    return total
