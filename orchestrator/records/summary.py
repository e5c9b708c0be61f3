"""What a person reads of a study in the MLflow UI: readable trial names, an execution's analysis.

Trial runs are named by their levels and replicate (:func:`trial_run_name`):
``fixed fp32 short lr=0.05 epochs=1 r0`` - a text level as itself, any other level as
``name=value``, then ``r<replicate>``.

The analysis report is an HTML artifact; the MLflow UI can chart and compare only metrics.
So when ``orchestrator analyze`` or ``report`` analyses an execution, the execution's parent
run gets:

* metrics ``share.<term>`` (the term's share of the total variance, a fraction in [0, 1]),
  ``vc.<component>`` (each random factor's variance component and the residual's),
  ``F.<term>`` and ``p.<term>`` (each ANOVA term's F statistic and p value);
* its description (the Markdown note the UI shows on the run page, tag
  ``mlflow.note.content``): the study's question, the largest shares in one sentence, and the
  share table.

Term names become metric names through :func:`metric_key`: an interaction ``a:b`` is
``a_x_b`` (MLflow forbids ``:`` on Windows), a nested factor ``regime/lr`` is ``regime_lr``
(``/`` would split the UI's charts into sections), and any other character MLflow does not
allow in a metric name becomes ``_``. A metric other than the study's default one is
prefixed with its name: ``test_loss.share.regime``.

The analysis arrives as the plain JSON document of ``AnalysisResult.to_dict()``, so the
records layer stays below the analysis layer.

Example:
    >>> metric_key("share", "reduction_order:precision")
    'share.reduction_order_x_precision'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from . import tags as T
from .store import TrackingStoreError, chunks, clip, metric_entities, tag_entities

if TYPE_CHECKING:
    from ..design.trial import Trial
    from .reader import Records
    from .store import TrackingStore

__all__ = ["ExecutionSummary", "execution_summary", "log_summary", "metric_key", "record_analysis", "trial_run_name"]

_BATCH = 900
_NAME_MAX = 250
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9_.\- ]")


def trial_run_name(trial: "Trial") -> str:
    """A trial run's name in the UI: its levels (in the study's factor order) and replicate.

    Example:
        >>> from orchestrator.design.trial import Trial
        >>> t = Trial(study="s", variant="smoke", trial_id="t", cell_id="c", replicate=1, params={}, seeds={},
        ...           seed_index={}, workload="synthetic", levels={"precision": "bf16", "lr": 0.05, "bias": True})
        >>> trial_run_name(t)
        'bf16 lr=0.05 bias=True r1'
    """
    words = [value if isinstance(value, str) else f"{name}={value}" for name, value in trial.levels.items()]
    return clip(" ".join([*words, f"r{trial.replicate}"]), _NAME_MAX)


def metric_key(kind: str, term: str, response: str | None = None) -> str:
    """The metric name of a term's number: ``share.regime``, ``p.reduction_order_x_precision``.

    Args:
        kind: ``share``, ``vc``, ``F`` or ``p``.
        term: the analysis's name of the term (``a:b`` for an interaction).
        response: prefix for a metric that is not the study's default (``test_loss.share.x``).
    """
    name = _NOT_ALLOWED.sub("_", str(term).replace(":", "_x_").replace("/", "_"))
    key = f"{kind}.{name}"
    return f"{_NOT_ALLOWED.sub('_', response)}.{key}" if response else key


@dataclass(frozen=True)
class ExecutionSummary:
    """What an analysis puts on its execution's run.

    Attributes:
        metrics: metric name -> value (finite values only).
        note: the Markdown description of the run.
    """

    metrics: dict[str, float]
    note: str


def _finite(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def execution_summary(analysis: Mapping[str, Any], *, question: str = "", prefix: str | None = None,
                      execution_id: str | None = None) -> ExecutionSummary:
    """The metrics and the description of an execution's run, from an analysis document.

    Args:
        analysis: ``AnalysisResult.to_dict()`` (keys used: ``response``, ``transform``, ``n``,
            ``n_total``, ``shares``, ``variance_components``, ``anova``).
        question: the study's description (the question it answers).
        prefix: metric-name prefix, for an analysis of a metric other than the study's default.
        execution_id: named in the description.

    Example:
        >>> doc = {"response": "loss", "n": 8, "n_total": 8, "anova": [],
        ...        "shares": [{"source": "A", "kind": "fixed", "share": 0.9, "ci": None},
        ...                   {"source": "Residual", "kind": "residual", "share": 0.1, "ci": None}],
        ...        "variance_components": [{"component": "Residual", "variance": 0.5}]}
        >>> execution_summary(doc).metrics
        {'share.A': 0.9, 'share.Residual': 0.1, 'vc.Residual': 0.5}
    """
    metrics: dict[str, float] = {}

    def put(kind: str, term: Any, value: Any) -> None:
        number = _finite(value)
        if number is None or term is None:
            return
        key = metric_key(kind, str(term), prefix)
        while key in metrics:  # two terms that differ only in characters MLflow does not allow
            key += "_"
        metrics[key] = number

    shares = list(analysis.get("shares") or [])
    for row in shares:
        put("share", row.get("source"), row.get("share"))
    for row in analysis.get("variance_components") or []:
        put("vc", row.get("component"), row.get("variance"))
    for row in analysis.get("anova") or []:
        put("F", row.get("term"), row.get("F"))
        put("p", row.get("term"), row.get("p"))

    response = str(analysis.get("response", ""))
    label = f"log({response})" if analysis.get("transform") == "log" else response
    ranked = sorted(shares, key=lambda r: -(_finite(r.get("share")) or 0.0))
    lines: list[str] = []
    if question.strip():
        lines += [f"**Question.** {question.strip()}", ""]
    where = f" in execution {execution_id}" if execution_id else ""
    lines.append(f"**Where the variance of {label} comes from**{where} "
                 f"({analysis.get('n', '?')} of {analysis.get('n_total', '?')} trials analysed).")
    top = [r for r in ranked if (_finite(r.get("share")) or 0.0) > 0][:3]
    if top:
        lines += ["", "Largest shares: " + ", ".join(f"{r.get('source')} {_pct(_finite(r.get('share')))}%" for r in top) + "."]
    if ranked:
        lines += ["", "| source | kind | share % | 95% CI % |", "| --- | --- | --- | --- |"]
        for r in ranked:
            ci = r.get("ci")
            interval = f"[{_pct(_finite(ci[0]))}, {_pct(_finite(ci[1]))}]" if ci else "-"
            source = str(r.get("source", "")).replace("|", "\\|")
            lines.append(f"| {source} | {r.get('kind', '')} | {_pct(_finite(r.get('share')))} | {interval} |")
    else:
        lines += ["", "No shares of variance could be estimated (see the analysis notes)."]
    pre = f"{prefix}." if prefix else ""
    lines += ["", f"Metrics on this run: `{pre}share.<term>` (fraction of the total variance), `{pre}vc.<component>` "
              f"(variance), `{pre}F.<term>`, `{pre}p.<term>`. The full report, once written by `orchestrator report`: "
              "artifact `analysis/report.html`."]
    return ExecutionSummary(metrics=metrics, note="\n".join(lines) + "\n")


def log_summary(store: "TrackingStore", run_id: str, summary: ExecutionSummary, *, note: bool = True) -> None:
    """Log ``summary`` on the run ``run_id`` (an execution's parent run); the note replaces its description.

    Raises:
        TrackingStoreError: the store refused the write (what and where).
    """
    batches = list(chunks(metric_entities(summary.metrics, 0), _BATCH)) or [[]]
    tags = tag_entities({T.MLFLOW_NOTE: summary.note}) if note else []
    try:
        for i, batch in enumerate(batches):
            store.client.log_batch(run_id, metrics=batch, tags=tags if i == 0 else [])
    except Exception as exc:  # noqa: BLE001 - any store failure becomes one clear message
        raise TrackingStoreError(
            f"tracking store {store.uri} refused the analysis summary of run {run_id}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}. The analysis itself is unaffected; run it again to log it."
        ) from None


def record_analysis(records: "Records", meta: Mapping[str, Any], analysis: Mapping[str, Any], *, default: bool) -> ExecutionSummary:
    """Log an analysis of an execution on that execution's run.

    Args:
        records: the study's records handle (the store and the study's question).
        meta: what :meth:`Records.results` returned with the analysed trials (``parent_run_id``,
            ``execution_id``).
        analysis: ``AnalysisResult.to_dict()``.
        default: whether the analysed metric is the study's default one: its numbers are
            ``share.<term>`` ... and it writes the run's description; another metric's are
            prefixed with the metric's name and leave the description as it is.

    Raises:
        TrackingStoreError: the store refused the write.
    """
    summary = execution_summary(analysis, question=records.study.description or "",
                                prefix=None if default else str(analysis.get("response", "")),
                                execution_id=meta.get("execution_id"))
    log_summary(records.store, str(meta["parent_run_id"]), summary, note=default)
    return summary
