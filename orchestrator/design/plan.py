"""The design engine: from a :class:`~orchestrator.definition.Study` to a :class:`Plan` of trials.

Full factorials (with nested factors and exclusions), two-level fractional factorials
2^(k-p) with their defining relation and alias table, and Plackett–Burman screening
designs. Seeds are derived here, at design time, and stored on each trial.

The algebra of two-level designs (generators, defining relation, matrices) lives with the
design specs in :mod:`orchestrator.definition.designs`. :func:`plan_rows` and
:func:`plan_csv` give the design table that ``orchestrator plan`` prints and every
execution records.
"""

from __future__ import annotations

import csv
import io
import itertools
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..definition.designs import (
    LETTERS,
    Fractional,
    PlackettBurman,
    _fractional_generators,
    _text,
    _word,
    defining_relation,
    fractional_matrix,
    plackett_burman_matrix,
)
from ..ids import canonical_json, cell_id as make_cell_id, derive_seed, trial_id as make_trial_id
from ..design.trial import Trial

if TYPE_CHECKING:
    from ..definition.study import Study

__all__ = ["AliasRow", "Cell", "Plan", "alias_table", "make_plan", "plan_csv", "plan_rows"]

@dataclass(frozen=True)
class AliasRow:
    """An estimable effect and the effects confounded with it (up to ``max_order``)."""

    effect: str
    letters: str
    aliases: tuple[str, ...]
    alias_letters: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"effect": self.effect, "letters": self.letters, "aliases": list(self.aliases), "alias_letters": list(self.alias_letters)}


def alias_table(generators: Sequence[tuple[str, frozenset[str]]], names: Sequence[str], max_order: int = 2) -> list[AliasRow]:
    """Alias chains of main effects and two-factor interactions, as in published tables.

    Each row is one alias class that holds a main effect or a two-factor interaction,
    listing its members of order <= ``max_order`` (higher-order interactions are
    assumed negligible, as in Montgomery's tables). Effects are named with the factor
    names joined by ``:`` (``optimizer:lr``) and with letters (``AB``).
    """
    k = len(names)
    words = defining_relation(generators)
    letter_name = {LETTERS[i]: names[i] for i in range(k)}
    rows: list[AliasRow] = []
    seen: set[frozenset[str]] = set()
    candidates = [_word(c) for order in (1, 2) for c in itertools.combinations(LETTERS[:k], order)]
    for effect in candidates:
        if effect in seen:
            continue
        chain = [effect ^ w for w in words]
        seen.add(effect)
        seen.update(chain)
        members = sorted((w for w in chain if 0 < len(w) <= max_order), key=lambda w: (len(w), _text(w)))
        rows.append(
            AliasRow(
                effect=_named(effect, letter_name),
                letters=_text(effect),
                aliases=tuple(_named(w, letter_name) for w in members),
                alias_letters=tuple(_text(w) for w in members),
            )
        )
    return rows


def _named(word: frozenset[str], letter_name: Mapping[str, str]) -> str:
    return ":".join(letter_name[c] for c in sorted(word, key=LETTERS.index))


# -- the plan ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """One combination of levels."""

    cell_id: str
    levels: Mapping[str, Any]


@dataclass
class Plan:
    """A study's design made concrete: cells, trials in run order, aliases, exclusions, audit."""

    study: "Study"
    cells: list[Cell]
    trials: list[Trial]
    excluded: list[dict[str, Any]] = field(default_factory=list)
    aliases: list[AliasRow] = field(default_factory=list)
    defining_relation: list[str] = field(default_factory=list)
    resolution: int | None = None
    audit: list[dict[str, Any]] = field(default_factory=list)
    generators: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, Any]:
        trials = len(self.trials)
        return {
            "cells": len(self.cells),
            "trials": trials,
            "excluded_cells": len(self.excluded),
            "trials_per_cell": trials // len(self.cells) if self.cells else 0,
            "resources": {
                "cpus": trials * self.study.resources.cpus,
                "gpus": trials * self.study.resources.gpus,
                "cpus_per_trial": self.study.resources.cpus,
                "gpus_per_trial": self.study.resources.gpus,
            },
        }

    def trial(self, trial_id: str) -> Trial:
        for trial in self.trials:
            if trial.trial_id == trial_id:
                return trial
        raise KeyError(f"no trial {trial_id!r} in the plan of study {self.study.name!r}")

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON form of ``orchestrator plan --format json`` (docs/plan.md)."""
        study = self.study
        return {
            "schema_version": 1,
            "study": study.name,
            "variant": study.variant,
            "description": study.description,
            "workload": study.workload,
            "definition_hash": study.definition_hash,
            "design": {
                **study.design.to_dict(),
                "resolution": self.resolution,
                "generators": self.generators or study.design.to_dict().get("generators"),
                "runs": len(self.cells) + len(self.excluded),
                "defining_relation": self.defining_relation,
            },
            "factors": [f.to_dict() for f in study.factors],
            "params": study.params,
            "seed_streams": study.seed_streams,
            "metrics": [m.to_dict() for m in study.metrics],
            "counts": self.counts,
            "trials": [
                {
                    "trial_id": t.trial_id,
                    "cell_id": t.cell_id,
                    "replicate": t.replicate,
                    "order": t.order,
                    "block": t.block,
                    "levels": dict(t.levels),
                    "seeds": dict(t.seeds),
                    "seed_index": dict(t.seed_index),
                }
                for t in self.trials
            ],
            "aliases": [row.to_dict() for row in self.aliases],
            "excluded": self.excluded,
            "audit": self.audit,
        }


def _full_factorial(study: "Study") -> list[dict[str, Any]]:
    cells: list[dict[str, Any]] = [{}]
    for factor in study.factors:
        grown: list[dict[str, Any]] = []
        for cell in cells:
            levels = factor.levels_under(cell[factor.nested_in]) if factor.nested_in else list(factor.levels)
            grown.extend({**cell, factor.name: level} for level in levels)
        cells = grown
    return cells


def _two_level_cells(study: "Study", matrix: list[list[int]]) -> list[dict[str, Any]]:
    return [
        {factor.name: factor.levels[0 if sign < 0 else 1] for factor, sign in zip(study.factors, row)}
        for row in matrix
    ]


def _excluded_by(study: "Study", levels: Mapping[str, Any]) -> int | None:
    for index, rule in enumerate(study.exclude):
        if all(canonical_json(levels.get(name)) in {canonical_json(w) for w in wanted} for name, wanted in rule.items()):
            return index
    return None


def _seed_combinations(study: "Study") -> list[dict[str, int]]:
    crossed = [(name, policy) for name, policy in study.seed_streams.items() if isinstance(policy, int)]
    combos = []
    for r in range(study.replicates):
        for indices in itertools.product(*(range(policy) for _, policy in crossed)):
            index = {name: 0 for name in study.seed_streams}
            for name, policy in study.seed_streams.items():
                if not isinstance(policy, int):
                    index[name] = policy.seed_index(r)
            index.update({name: i for (name, _), i in zip(crossed, indices)})
            combos.append(index)
    return combos


def _audit(study: "Study", cells: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    from ..numerics.audit import audit_config  # torch-free, but numpy: only when planning


    findings = {}
    for levels in cells:
        found = audit_config({**study.params, **levels})
        if found:
            findings[make_cell_id(levels)] = [f.to_dict() for f in found]
    return findings


def make_plan(study: "Study") -> Plan:
    """Expand ``study`` (with its variant applied) into cells and trials in run order.

    Example:
        >>> plan = make_plan(study.with_variant("smoke"))   # doctest: +SKIP
        >>> plan.counts["trials"]                            # doctest: +SKIP
        12
    """
    aliases: list[AliasRow] = []
    relation: list[str] = []
    resolution = None
    used_generators: list[str] = []
    k = len(study.factors)
    if isinstance(study.design, Fractional):
        generators = _fractional_generators(study.design, k)
        raw_cells = _two_level_cells(study, fractional_matrix(generators, k))
        names = study.factor_names
        aliases = alias_table(generators, names)
        words = defining_relation(generators)
        relation = [_text(w) for w in words]
        resolution = min(len(w) for w in words)
        used_generators = [f"{letter}={_text(word)}" for letter, word in generators]
    elif isinstance(study.design, PlackettBurman):
        raw_cells = _two_level_cells(study, plackett_burman_matrix(k, study.design.runs))
    else:
        raw_cells = _full_factorial(study)

    audit = _audit(study, raw_cells)
    cells: list[Cell] = []
    excluded: list[dict[str, Any]] = []
    seen: set[str] = set()
    for levels in raw_cells:
        cid = make_cell_id(levels)
        rule = _excluded_by(study, levels)
        if rule is not None:
            excluded.append({"cell_id": cid, "levels": levels, "reason": f"exclude[{rule}]"})
            continue
        if study.refuse_unrepresentable and cid in audit:
            changed = ", ".join(sorted({f["parameter"] for f in audit[cid]}))
            excluded.append({"cell_id": cid, "levels": levels, "reason": f"refuse_unrepresentable: {changed} change meaning in this precision"})
            continue
        if cid in seen:  # pragma: no cover - designs never repeat a row
            continue
        seen.add(cid)
        cells.append(Cell(cid, levels))

    combos = _seed_combinations(study)
    trials: list[dict[str, Any]] = []
    # a seed is a pure function of (stream, index, scope): shared streams repeat across cells, so derive each once
    derived: dict[tuple[str, int, str | None], int] = {}
    for cell in cells:
        for replicate, index in enumerate(combos):
            seeds = {}
            for stream, i in index.items():
                policy = study.seed_streams[stream]
                scoped = study.seed_scope.scope(cell.cell_id, policy)
                key = (stream, i, scoped)
                seed = derived.get(key)
                if seed is None:
                    seed = derived[key] = derive_seed(study.seed, stream, i, scoped)
                seeds[stream] = seed
            if study.tuning is not None:  # the search stream is per cell and budget (orchestrator.tuning.search.search_seed)
                seeds["search"] = study.tuning.search_seed(study.seed, cell.cell_id, cell.levels, index["search"])
            trials.append(
                dict(
                    cell=cell,
                    replicate=replicate,
                    seeds=seeds,
                    seed_index=index,
                    trial_id=make_trial_id(cell.cell_id, replicate, seeds, study.params),
                )
            )
    ordered = _run_order(study, trials)
    # trials are frozen: the trials of a cell share its levels and every trial shares the parameters (memory of 1e6-trial plans)
    params = dict(study.params)
    cell_levels = {cell.cell_id: dict(cell.levels) for cell in cells}
    built = [
        Trial(
            study=study.name,
            variant=study.variant or "full",
            trial_id=t["trial_id"],
            cell_id=t["cell"].cell_id,
            replicate=t["replicate"],
            levels=cell_levels[t["cell"].cell_id],
            params=params,
            seeds=t["seeds"],
            seed_index=t["seed_index"],
            workload=study.workload,
            order=order,
            block=_block(study, t["cell"].levels),
            resources=study.resources,
            retries=study.retries,
        )
        for order, t in enumerate(ordered)
    ]
    audit_rows = [
        {"cell_id": cid, "levels": next(l for l in raw_cells if make_cell_id(l) == cid), "findings": found} for cid, found in audit.items()
    ]
    return Plan(study, cells, built, excluded, aliases, relation, resolution, audit_rows, used_generators)


def _block(study: "Study", levels: Mapping[str, Any]) -> str | None:
    return None if study.block_by is None else str(levels[study.block_by])


def _run_order(study: "Study", trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not study.run_order.shuffles:
        return trials
    if study.block_by is None:
        shuffled = list(trials)
        random.Random(derive_seed(study.seed, "run_order", 0)).shuffle(shuffled)
        return shuffled
    factor = study.factor(study.block_by)
    ordered: list[dict[str, Any]] = []
    for position, level in enumerate(factor.all_levels):
        block = [t for t in trials if canonical_json(t["cell"].levels[factor.name]) == canonical_json(level)]
        random.Random(derive_seed(study.seed, "run_order", position)).shuffle(block)
        ordered.extend(block)
    return ordered


def plan_rows(plan: Plan) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the design table (one row per trial, in run order)."""
    factors = plan.study.factor_names
    streams = list(plan.study.seed_streams)
    header = ["order", "trial_id", "cell_id", "replicate", *factors, *(f"seed_{s}" for s in streams)]
    if plan.study.block_by:
        header.insert(1, "block")
    rows = []
    for t in plan.trials:
        row = [t.order, t.trial_id, t.cell_id, t.replicate, *(t.levels.get(f, "") for f in factors), *(t.seeds[s] for s in streams)]
        if plan.study.block_by:
            row.insert(1, t.block)
        rows.append(row)
    return header, rows


def plan_csv(plan: Plan) -> str:
    """The design table as CSV (``orchestrator plan --format csv``; also logged as the parent run's design artifact)."""
    header, rows = plan_rows(plan)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()
