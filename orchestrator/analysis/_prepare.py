"""Validate a results table and split it into analysed trials and failures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from orchestrator.analysis._engine import group_trials, interaction_terms
from orchestrator.analysis.errors import AnalysisError
from orchestrator.analysis.options import SeedInteractions
from orchestrator.errors import did_you_mean

__all__ = ["Prepared", "prepare", "as_names", "SeedInteractions", "term_tuple", "group"]


def as_names(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"A,B"``, ``["A", "B"]`` or None as a tuple of names."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(str(v) for v in value)


def _levels(values: pd.Series) -> list[Any]:
    """Levels in a readable order: a categorical's own order, numbers sorted, else first seen."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        present = set(values.dropna().unique().tolist())
        return [c for c in values.cat.categories.tolist() if c in present]
    uniq = pd.unique(values.dropna())
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return sorted(uniq.tolist())
    return list(uniq)


def level_label(value: Any) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value)) if abs(value) < 1e15 else repr(float(value))
    return str(value)


@dataclass
class Prepared:
    """The trials to analyse, as typed factor codes and a response, plus what was set aside."""

    response: str
    transform: str | None
    fixed: list[str]
    random: list[str]
    terms: list[tuple[str, ...]]
    data: pd.DataFrame  # analysed trials only; column "_y" is the (transformed) response
    everything: pd.DataFrame  # every trial, with boolean "_failed" and "_diverged"
    levels: dict[str, list[Any]]  # levels of each factor among analysed trials
    aliases: dict[str, list[str]] | None
    declared_fixed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dropped_factors: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.data)


def term_tuple(name: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in name.split(":"))


def prepare(df: pd.DataFrame, response: str, fixed: str | Sequence[str] = (), random: str | Sequence[str] = (),
            interactions: int = 2, log: bool = False, diverged_column: str | None = "diverged",
            aliases: Mapping[str, Sequence[str]] | None = None) -> Prepared:
    """Check every choice against the table, collect all problems, and raise them once."""
    if not isinstance(df, pd.DataFrame):
        raise AnalysisError(f"expected a pandas DataFrame of results, found {type(df).__name__}. "
                            "Load a CSV with pandas.read_csv or pass --csv FILE.")
    fixed_t, random_t = as_names(fixed), as_names(random)
    columns = [str(c) for c in df.columns]
    problems: list[str] = []

    def missing(name: str, role: str) -> bool:
        if name in df.columns:
            return False
        problems.append(f'{role} column "{name}" is not in the table. {did_you_mean(name, columns)}')
        return True

    if not missing(response, "response"):
        if not pd.api.types.is_numeric_dtype(df[response]) or pd.api.types.is_bool_dtype(df[response]):
            example = df[response].dropna().astype(str).head(3).tolist()
            problems.append(f'response "{response}" must be numeric, found {df[response].dtype} values such as '
                            f"{example}. Choose a numeric metric column or convert it first.")
    for name in fixed_t:
        missing(name, "fixed factor")
    random_main = tuple(r for r in random_t if ":" not in r)
    for name in random_t:
        parts = term_tuple(name)
        if len(parts) == 1:
            missing(name, "random factor")
            continue
        if any(not part for part in parts) or len(set(parts)) < len(parts):
            problems.append(f'random term "{name}" is not of the form A:B with distinct column names. '
                            "Write an interaction as seed_init:optimizer.")
            continue
        for part in parts:
            missing(part, f'random term "{name}": its')
        if all(part in fixed_t for part in parts):
            problems.append(f'random term "{name}" has only fixed factors ({", ".join(parts)}); a random interaction '
                            "needs a random column, such as a seed stream (seed_init:optimizer). Make it a fixed "
                            "interaction (--interactions) instead.")
    for name in sorted(set(fixed_t) & set(random_t)):
        problems.append(f'"{name}" is declared both fixed and random. Declare it once: fixed for levels you chose '
                        "(dtype, learning rate), random for levels that are a sample (seeds, batches).")
    for name in (set(fixed_t) | set(random_main)) & {response}:
        problems.append(f'"{name}" is both the response and a factor. Choose a different response or factor.')
    for name in sorted({n for n in fixed_t if fixed_t.count(n) > 1} | {n for n in random_t if random_t.count(n) > 1}):
        problems.append(f'factor "{name}" is listed twice. List it once.')
    if not fixed_t and not random_t:
        problems.append("no factors: expected at least one fixed or random factor, found none. "
                        "Pass fixed=[...] / --fixed A,B or random=[...] / --random C.")
    if isinstance(interactions, bool) or not isinstance(interactions, (int, np.integer)) or interactions < 1:
        problems.append(f"interactions must be a whole number >= 1 (1 = main effects only), found {interactions!r}.")
    alias_map: dict[str, list[str]] | None = None
    if aliases is not None:
        alias_map = {str(k): [str(a) for a in v] for k, v in aliases.items()}
        for key in alias_map:
            for part in term_tuple(key):
                if part not in fixed_t:
                    problems.append(f'aliases name the effect "{key}", but "{part}" is not a fixed factor. '
                                    f"{did_you_mean(part, fixed_t)}")
    if problems:
        raise AnalysisError(problems)

    everything = df.copy()
    state = everything["state"].astype(str).str.upper() if "state" in everything.columns else None
    everything["_failed"] = (state != "FINISHED") if state is not None else False
    if diverged_column and diverged_column in everything.columns:
        flag = pd.to_numeric(everything[diverged_column], errors="coerce").fillna(0)
        everything["_diverged"] = (flag != 0) & ~everything["_failed"]
    else:
        everything["_diverged"] = False
    y = pd.to_numeric(everything[response], errors="coerce").astype(float)
    alive = ~everything["_failed"] & ~everything["_diverged"]
    # An infinite value is an overflow (divergence); NaN or no value at all is a missing metric:
    # its own outcome, never counted as divergence (a missing column says nothing about training).
    overflow = np.isinf(y) & alive
    everything["_missing"] = y.isna() & alive
    notes: list[str] = []
    if overflow.any():
        notes.append(f"{int(overflow.sum())} finished trial(s) have an infinite {response}: they are counted as "
                     "diverged (overflow) and excluded from the response analysis.")
        everything.loc[overflow, "_diverged"] = True
    if everything["_missing"].any():
        notes.append(f"{int(everything['_missing'].sum())} finished trial(s) have no value (missing or NaN) of "
                     f"{response}: they are counted as missing (not as diverged) and excluded from the response "
                     "analysis.")
    columns_used = list(dict.fromkeys(fixed_t + tuple(p for r in random_t for p in term_tuple(r))))
    factor_na = everything[columns_used].isna().any(axis=1)
    if factor_na.any():
        notes.append(f"{int(factor_na.sum())} trial(s) have no level for some factor and are left out entirely.")
        everything = everything.loc[~factor_na].copy()
        y = y.loc[everything.index]
    usable = ~everything["_failed"] & ~everything["_diverged"] & ~everything["_missing"]
    data = everything.loc[usable].copy()
    data["_y"] = y.loc[data.index]
    transform = None
    if log:
        bad = data["_y"] <= 0
        if bad.any():
            raise AnalysisError(f'log transform needs a positive response, found {int(bad.sum())} value(s) of '
                                f'"{response}" <= 0 (smallest {data["_y"].min():g}). Drop --log / log=False, '
                                "or analyse a positive metric.")
        data["_y"] = np.log(data["_y"])
        transform = "log"
    failed, diverged = int(everything["_failed"].sum()), int(everything["_diverged"].sum())
    if failed or diverged:
        notes.append(f"{failed} failed and {diverged} diverged trial(s) of {len(everything)} are excluded from the "
                     "response analysis and analysed separately under failures.")

    levels = {f: _levels(data[f]) for f in columns_used}
    kept_fixed, kept_random, dropped = [], [], []
    for f in fixed_t:
        if len(levels[f]) < 2 and len(data):
            only = level_label(levels[f][0]) if levels[f] else "none"
            notes.append(f'fixed factor "{f}" has a single level ({only}) among analysed trials: it cannot explain '
                         "any variance and is left out of the model.")
            dropped.append(f)
        else:
            kept_fixed.append(f)
    for f in random_t:
        parts = term_tuple(f)
        combos = data.groupby(list(parts), observed=True).ngroups if len(data) else 0
        if len(data) and combos < 2:
            notes.append(f'random {"factor" if len(parts) == 1 else "term"} "{f}" has a single level among analysed '
                         "trials: its variance cannot be estimated and it is left out of the model.")
            dropped.append(f)
        elif len(data) and combos == len(data):
            notes.append(f'random {"factor" if len(parts) == 1 else "term"} "{f}" has a different level for every '
                         "trial: its variance cannot be told apart from the residual and is included in it. Reuse its "
                         "levels across cells to estimate it.")
            dropped.append(f)
        else:
            kept_random.append(f)
    if len(data) and not kept_fixed and not kept_random:
        raise AnalysisError("every factor has fewer than 2 levels among the analysed trials "
                            f"({', '.join(f'{f}: {len(levels[f])}' for f in fixed_t + random_main)}). "
                            "Expected at least one factor with 2 or more levels; check the filter or the study.")
    if alias_map is not None:
        terms = [term_tuple(k) for k in alias_map]
        terms = [t for t in terms if set(t) <= set(kept_fixed)]
        terms.sort(key=len)
    else:
        terms = interaction_terms(kept_fixed, int(interactions))
    return Prepared(response=response, transform=transform, fixed=kept_fixed, random=kept_random, terms=terms,
                    data=data, everything=everything, levels=levels, aliases=alias_map, notes=notes,
                    declared_fixed=list(fixed_t),
                    dropped_factors=dropped)


def group(prep: Prepared, factors: list[str]) -> tuple[dict[str, np.ndarray], dict[str, int], np.ndarray, np.ndarray,
                                                        np.ndarray, np.ndarray, float, float]:
    """Aggregate trials sharing every level (see ``_engine.group_trials``)."""
    codes = {f: pd.Categorical(prep.data[f], categories=prep.levels[f]).codes.astype(np.int64) for f in factors}
    g = group_trials(prep.data["_y"].to_numpy(float), codes)
    return (g["codes"], {f: len(prep.levels[f]) for f in factors}, g["counts"], g["sums"], g["sumsq"],
            g["row_group"], g["centre"], g["scale"])
