"""Choosing a study's analysis inputs: its trials from the records and what to fit.

Used by ``orchestrator analyze``/``report`` and by the write-ups
(:mod:`orchestrator.operations.writeup`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from ..definition.study import Study
    from ..records.reader import Records

__all__ = ["study_inputs"]


def study_inputs(loaded: "Study", metric: str | None = None, tracking_uri: str | None = None,
                 execution: str | None = None, *, records: "Records | None" = None) -> tuple["pd.DataFrame", dict[str, Any]]:
    """A study's trials from MLflow, with the analysis choices its definition implies.

    Fixed factors are the study's factors (those declared ``random=True`` are random);
    crossed seed streams (``seed_streams={"init": 3}``) are random factors ``seed_<stream>``;
    the study's ``analysis`` mapping gives the defaults for metric, log, spread_by and
    interactions. Learning curves come along for the report, and so does the open
    :class:`~orchestrator.records.Records` handle (``choice["records"]``), so the report is
    logged without opening the store again.
    """
    from ..records.reader import Records

    records = records or Records.open(loaded, loaded.variant, tracking_uri)
    df, meta = records.results(execution)
    fixed = [f.name for f in loaded.factors if not getattr(f, "random", False)]
    random = [f.name for f in loaded.factors if getattr(f, "random", False)]
    # Seed streams with k crossed seeds are separable random factors; "replicate" streams are residual.
    for name, policy in (getattr(loaded, "seed_streams", None) or {}).items():
        if isinstance(policy, int) and not isinstance(policy, bool) and f"seed_{name}" in df.columns:
            random.append(f"seed_{name}")
    notes: list[str] = []
    for factor in loaded.factors:
        parent = factor.nested_in
        if not parent or factor.name not in fixed or parent not in fixed or df.empty or factor.name not in df.columns:
            continue
        if int(df.groupby(parent)[factor.name].nunique().max()) <= 1:
            fixed.remove(factor.name)
            notes.append(f"{factor.name} is nested in {parent} with one level per {parent}: its effect is part of "
                         f"{parent}'s and is not estimated separately.")
        else:
            combined = f"{parent}/{factor.name}"
            df[combined] = df[parent].astype(str) + "/" + df[factor.name].astype(str)
            fixed = [combined if name == parent else name for name in fixed if name != factor.name]
            notes.append(f"{factor.name} is nested in {parent} (its levels differ per {parent}): the two are analysed "
                         f"as one factor {combined}, whose share is that of {parent} and {factor.name} together.")
    aliases = None
    try:
        from ..design.plan import make_plan

        rows = make_plan(loaded).aliases
        if rows:
            aliases = {r.effect: list(r.aliases) for r in rows}
    except Exception:  # aliases are an aid; a design that cannot be re-planned is analysed without them
        aliases = None
    defaults = dict(getattr(loaded, "analysis", None) or {})
    curves = records.curves(meta.get("execution_id"))
    choice = {"response": metric or defaults.get("metric") or loaded.primary_metric.name, "fixed": fixed, "random": random,
              "aliases": aliases, "study": loaded, "curves": curves, "meta": meta, "defaults": defaults, "notes": notes,
              "records": records}
    return df, choice
