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
import json
import uuid
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Collection, Iterator, Mapping, Sequence, overload

import numpy as np

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
from ..formatting import fmt_number
from ..ids import canonical_json, cell_id as make_cell_id, derive_seed
from .keys import SeedKey, TrialKey, id_text, id_value
from .shuffle import shuffled
from .trial import Trial

if TYPE_CHECKING:
    from ..definition.study import Study

__all__ = ["AliasRow", "Cell", "Plan", "TrialTable", "alias_table", "make_plan", "plan_csv", "plan_rows", "write_plan_csv", "write_plan_json", "write_plan_table"]

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


@dataclass(frozen=True)
class _Columns:
    """The trials of a plan as columns, in run order (position = ``Trial.order``), and what their cells share."""

    study: "Study"
    cells: Sequence[Cell]
    cell: "np.ndarray"  # index into cells, per trial
    replicate: "np.ndarray"
    seeds: Mapping[str, "np.ndarray"]  # stream -> seed per trial (int64: seeds have 63 bits)
    seed_index: Mapping[str, "np.ndarray"]
    ids: "np.ndarray"  # trial id numbers (uint64, see keys.id_text)
    levels: Sequence[Mapping[str, Any]]  # per cell: one dict its trials share
    blocks: Sequence[str | None]  # per cell
    params: Mapping[str, Any]  # one dict every trial shares
    seeds_by_replicate: Sequence[Sequence[int]] | None = None  # when no stream depends on the cell: seeds (stream order) per replicate


class TrialTable(SequenceABC[Trial]):
    """The trials of a plan in run order, held as columns; each :class:`Trial` is built when asked for.

    A trial costs ~50 bytes here (cell, replicate, one seed and seed index per stream, the id
    as a number) instead of ~1 kB as a :class:`Trial` with its dicts, so a 1e6-trial plan is
    tens of MB and ``run`` hands the executor one trial at a time. It is a read-only sequence:
    ``len``, indexing and slicing, iteration (in run order), ``in``. :meth:`without` is the
    view resume runs (the plan less the trials already done); :meth:`trial_ids` iterates ids
    without building trials.

    Example:
        >>> plan = make_plan(study)                       # doctest: +SKIP
        >>> len(plan.trials), plan.trials[0].order        # doctest: +SKIP
        (1000000, 0)
        >>> todo = plan.trials.without({plan.trials[0].trial_id})   # doctest: +SKIP
        >>> len(todo), todo[0].order                      # doctest: +SKIP
        (999999, 1)
    """

    def __init__(self, columns: _Columns, rows: "np.ndarray | None" = None):
        self._columns = columns
        self._rows = rows  # positions in the plan's run order (a view); None: every trial
        self._index: dict[int, int] | None = None

    def __len__(self) -> int:
        return len(self._columns.ids) if self._rows is None else len(self._rows)

    @overload
    def __getitem__(self, index: int) -> Trial: ...

    @overload
    def __getitem__(self, index: slice) -> "TrialTable": ...

    def __getitem__(self, index: int | slice) -> "Trial | TrialTable":
        positions = self._positions()
        if isinstance(index, slice):
            return TrialTable(self._columns, positions[index])
        return self._trial(int(positions[index]))

    def __iter__(self) -> Iterator[Trial]:
        rows = self._positions()
        for start in range(0, len(rows), 4096):  # positions as Python ints a chunk at a time: no 1e6-item list
            for position in rows[start:start + 4096].tolist():
                yield self._trial(position)

    def __contains__(self, item: object) -> bool:
        return isinstance(item, Trial) and self.position(item.trial_id) is not None

    def __repr__(self) -> str:
        return f"TrialTable({len(self)} trials of study {self._columns.study.name!r})"

    def trial_ids(self) -> Iterator[str]:
        """The trial ids in run order (without building trials)."""
        ids = self._columns.ids if self._rows is None else self._columns.ids[self._rows]
        for start in range(0, len(ids), 65536):
            yield from map(id_text, ids[start:start + 65536].tolist())

    def cell_counts(self) -> dict[str, int]:
        """Trials per cell id, cells in the order their first trial comes (without building trials)."""
        cells = self._columns.cell if self._rows is None else self._columns.cell[self._rows]
        present, first, counts = np.unique(cells, return_index=True, return_counts=True)
        order = np.argsort(first, kind="stable")
        return {self._columns.cells[int(c)].cell_id: int(n) for c, n in zip(present[order].tolist(), counts[order].tolist())}

    def position(self, trial_id: str) -> int | None:
        """Where ``trial_id`` is in this sequence (``None``: not here)."""
        if self._index is None:
            ids = self._columns.ids if self._rows is None else self._columns.ids[self._rows]
            self._index = {value: k for k, value in enumerate(ids.tolist())}
        value = id_value(trial_id)
        return None if value is None else self._index.get(value)

    def without(self, trial_ids: Collection[str]) -> "TrialTable":
        """These trials less ``trial_ids`` (ids not in the plan are ignored), in the same order."""
        values = [v for v in map(id_value, trial_ids) if v is not None]
        if not values:
            return self
        ids = self._columns.ids if self._rows is None else self._columns.ids[self._rows]
        keep = ~np.isin(ids, np.array(values, dtype=np.uint64))
        return TrialTable(self._columns, self._positions()[keep])

    def _positions(self) -> "np.ndarray":
        return np.arange(len(self._columns.ids)) if self._rows is None else self._rows

    def _trial(self, position: int) -> Trial:
        c = self._columns
        cell = int(c.cell[position])
        study = c.study
        return Trial(
            study=study.name,
            variant=study.variant or "full",
            trial_id=id_text(int(c.ids[position])),
            cell_id=c.cells[cell].cell_id,
            replicate=int(c.replicate[position]),
            levels=c.levels[cell],
            params=c.params,
            seeds={stream: int(column[position]) for stream, column in c.seeds.items()},
            seed_index={stream: int(column[position]) for stream, column in c.seed_index.items()},
            workload=study.workload,
            order=position,
            block=c.blocks[cell],
            resources=study.resources,
            retries=study.retries,
        )

    def _chunks(self, fields: Sequence[str], size: int = 16384) -> Iterator[tuple[list[int], list[tuple[int, ...]]]]:
        """Per chunk of trials: their cell indices, and per trial the numbers named by ``fields``
        (``order``, ``id``, ``replicate``, ``seeds``: one per stream, ``seed_index``: likewise) as Python ints."""
        c = self._columns
        rows = self._positions()
        for start in range(0, len(rows), size):
            chunk = rows[start:start + size]
            parts: list[list[int]] = []
            for name in fields:
                if name == "order":
                    parts.append(chunk.tolist())
                elif name == "id":
                    parts.append(c.ids[chunk].tolist())
                elif name == "replicate":
                    parts.append(c.replicate[chunk].tolist())
                else:
                    parts.extend(column[chunk].tolist() for column in (c.seeds if name == "seeds" else c.seed_index).values())
            yield c.cell[chunk].tolist(), list(zip(*parts))


@dataclass
class Plan:
    """A study's design made concrete: cells, trials in run order, aliases, exclusions, audit.

    ``trials`` is a :class:`TrialTable`: a sequence of :class:`Trial` held as columns.
    """

    study: "Study"
    cells: list[Cell]
    trials: TrialTable
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
        position = self.trials.position(trial_id)
        if position is None:
            raise KeyError(f"no trial {trial_id!r} in the plan of study {self.study.name!r}")
        return self.trials[position]

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON form of ``orchestrator plan --format json`` (docs/plan.md).

        It holds every trial as a dict: for large plans, :func:`write_plan_json` writes the
        same text a trial at a time.
        """
        data = self._head()
        data["trials"] = [
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
        ]
        return data

    def _head(self) -> dict[str, Any]:
        """:meth:`to_dict` with an empty ``trials`` list (in its place: the keys keep their order)."""
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
            "trials": [],
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


def _audit(study: "Study", cells: Sequence[Mapping[str, Any]], ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    from ..numerics.audit import audit_config  # torch-free, but numpy: only when planning

    findings = {}
    for levels, cid in zip(cells, ids):
        found = audit_config({**study.params, **levels})
        if found:
            findings[cid] = [f.to_dict() for f in found]
    return findings


def make_plan(study: "Study") -> Plan:
    """Expand ``study`` (with its variant applied) into cells and trials in run order.

    Trials are held as columns (:class:`TrialTable`): a 1e6-trial plan takes seconds and
    tens of MB, and each :class:`Trial` is built when it is used.

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

    raw_ids = [make_cell_id(levels) for levels in raw_cells]
    audit = _audit(study, raw_cells, raw_ids)
    cells: list[Cell] = []
    excluded: list[dict[str, Any]] = []
    seen: set[str] = set()
    for levels, cid in zip(raw_cells, raw_ids):
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

    levels_of = dict(zip(raw_ids, raw_cells))
    audit_rows = [{"cell_id": cid, "levels": levels_of[cid], "findings": found} for cid, found in audit.items()]
    return Plan(study, cells, _trial_table(study, cells), excluded, aliases, relation, resolution, audit_rows, used_generators)


def _trial_table(study: "Study", cells: Sequence[Cell]) -> TrialTable:
    """Every cell x seed combination with its seeds and id, in run order, as columns.

    Trials are generated cell by cell, combination by combination (``replicate`` is the
    combination's index), then put in run order; ids and seeds are those of
    :mod:`orchestrator.ids` (see :mod:`.keys`).
    """
    combos = _seed_combinations(study)
    streams = list(study.seed_streams)
    n_cells, n_combos = len(cells), len(combos)
    index = {s: np.array([combo[s] for combo in combos], dtype=np.int64) for s in streams}
    seeds = {s: np.empty((n_cells, n_combos), dtype=np.int64) for s in streams}
    shared: dict[str, "np.ndarray"] = {}  # a stream's seeds per combination when no cell has its own
    for s in streams:
        key, policy = SeedKey(study.seed, s), study.seed_streams[s]
        for c, cell in enumerate(cells):
            if s == "search" and study.tuning is not None:  # the search stream is per cell and budget (orchestrator.tuning.search.search_seed)
                by_index = {i: study.tuning.search_seed(study.seed, cell.cell_id, cell.levels, i) for i in set(index[s].tolist())}
                seeds[s][c] = [by_index[i] for i in index[s].tolist()]
                continue
            scoped = study.seed_scope.scope(cell.cell_id, policy)
            if scoped is None and s in shared:
                seeds[s][c] = shared[s]
                continue
            by_index = {i: key.seed(i, scoped) for i in set(index[s].tolist())}
            seeds[s][c] = [by_index[i] for i in index[s].tolist()]
            if scoped is None:
                shared[s] = seeds[s][c]
    def combinations(c: int) -> list[list[int]]:  # per combination: the cell's seeds in stream order
        return np.stack([seeds[s][c] for s in streams], axis=1).tolist() if streams else [[] for _ in range(n_combos)]

    trial_key = TrialKey(study.params, streams)
    common = None  # when no stream depends on the cell, the keys' replicate-and-seeds parts are encoded once
    by_replicate = None
    if n_cells and study.tuning is None and len(shared) == len(streams):
        by_replicate = combinations(0)
        common = [trial_key.suffix(r, row) for r, row in enumerate(by_replicate)]
    ids = np.empty(n_cells * n_combos, dtype=np.uint64)
    for c, cell in enumerate(cells):
        if common is None:
            values = trial_key.values(cell.cell_id, list(enumerate(combinations(c))))
        else:
            values = trial_key.values(cell.cell_id, suffixes=common)
        ids[c * n_combos:(c + 1) * n_combos] = values
    order = _run_order(study, cells, n_combos)
    columns = _Columns(
        study=study,
        cells=list(cells),
        cell=np.repeat(np.arange(n_cells, dtype=np.int32), n_combos)[order],
        replicate=np.tile(np.arange(n_combos, dtype=np.int32), n_cells)[order],
        seeds={s: seeds[s].reshape(-1)[order] for s in streams},
        seed_index={s: np.tile(index[s], n_cells)[order] for s in streams},
        ids=ids[order],
        levels=[dict(cell.levels) for cell in cells],
        blocks=[_block(study, cell.levels) for cell in cells],
        params=dict(study.params),
        seeds_by_replicate=by_replicate,
    )
    return TrialTable(columns)


def _block(study: "Study", levels: Mapping[str, Any]) -> str | None:
    return None if study.block_by is None else str(levels[study.block_by])


def _run_order(study: "Study", cells: Sequence[Cell], n_combos: int) -> "np.ndarray":
    """Positions (cell index x ``n_combos`` + combination) in run order.

    The shuffles are those of the first planner, which shuffled a list of trials with
    ``random.Random``: the permutation depends only on the seed and the length, and
    :func:`.shuffle.shuffled` gives the same one (fast), so run orders are unchanged.
    """
    n = len(cells) * n_combos
    if not study.run_order.shuffles:
        return np.arange(n, dtype=np.int64)
    if study.block_by is None:
        return shuffled(n, derive_seed(study.seed, "run_order", 0))
    factor = study.factor(study.block_by)
    keys = [canonical_json(cell.levels[factor.name]) for cell in cells]
    combos = np.arange(n_combos, dtype=np.int64)
    ordered = []
    for position, level in enumerate(factor.all_levels):
        wanted = canonical_json(level)
        members = np.array([c for c, key in enumerate(keys) if key == wanted], dtype=np.int64)
        block = (members[:, None] * n_combos + combos[None, :]).reshape(-1)
        ordered.append(block[shuffled(len(block), derive_seed(study.seed, "run_order", position))])
    return np.concatenate(ordered) if ordered else np.empty(0, dtype=np.int64)


# -- the design table ------------------------------------------------------------------------


def _header(plan: Plan) -> list[str]:
    factors = plan.study.factor_names
    header = ["order", "trial_id", "cell_id", "replicate", *factors, *(f"seed_{s}" for s in plan.study.seed_streams)]
    if plan.study.block_by:
        header.insert(1, "block")
    return header


def plan_rows(plan: Plan) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the design table (one row per trial, in run order).

    The rows are a list (the table printer sizes its columns from them); for large plans
    :func:`write_plan_csv` writes the same table a chunk at a time.
    """
    factors = plan.study.factor_names
    streams = list(plan.study.seed_streams)
    rows = []
    for t in plan.trials:
        row = [t.order, t.trial_id, t.cell_id, t.replicate, *(t.levels.get(f, "") for f in factors), *(t.seeds[s] for s in streams)]
        if plan.study.block_by:
            row.insert(1, t.block)
        rows.append(row)
    return _header(plan), rows


def _csv_fields(values: Sequence[Any]) -> str:
    """``values`` as they appear inside a CSV row (the ``csv`` module's quoting), without the row's end."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([0, *values])  # a leading field: a lone empty field is written as "" otherwise
    return buffer.getvalue()[2:-1]


def write_plan_csv(plan: Plan, out: IO[str]) -> None:
    """Write the design table as CSV to ``out``, a chunk of rows at a time (``orchestrator plan --format csv``).

    The text is that of :func:`plan_csv`; each cell's fields are quoted once, each trial's
    row is a format of its numbers.
    """
    study = plan.study
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(_header(plan))
    out.write(buffer.getvalue())
    columns = plan.trials._columns
    seeds = "".join(",%d" for _ in study.seed_streams) + "\n"
    templates = []
    for cell, levels, block in zip(columns.cells, columns.levels, columns.blocks):
        head = "%d," + (_csv_fields([block]).replace("%", "%%") + "," if study.block_by else "")
        fields = _csv_fields([cell.cell_id]).replace("%", "%%")
        level_text = _csv_fields([levels.get(f, "") for f in study.factor_names]).replace("%", "%%")
        templates.append(head + "t%015x," + fields + ",%d" + ("," + level_text if study.factor_names else "") + seeds)
    if columns.seeds_by_replicate is not None:  # the seeds' text once per replicate: formatting 19-digit numbers is most of a row's cost
        texts = [seeds % tuple(row) for row in columns.seeds_by_replicate]
        templates = [t[:-len(seeds)] + "%s" for t in templates]
        for cells, values in plan.trials._chunks(("order", "id", "replicate")):
            out.write("".join([templates[c] % (o, i, r, texts[r]) for c, (o, i, r) in zip(cells, values)]))
        return
    for cells, values in plan.trials._chunks(("order", "id", "replicate", "seeds")):
        out.write("".join([templates[c] % v for c, v in zip(cells, values)]))


def plan_csv(plan: Plan) -> str:
    """The design table as CSV (``orchestrator plan --format csv``; also logged as the parent run's design artifact)."""
    buffer = io.StringIO()
    write_plan_csv(plan, buffer)
    return buffer.getvalue()


def write_plan_json(plan: Plan, out: IO[str]) -> None:
    """Write ``json.dumps(plan.to_dict(), indent=2)`` to ``out`` a chunk of trials at a time, without holding every trial's dict.

    Each cell's trials share one template, made by ``json.dumps`` of a trial of the cell with
    stand-ins for its numbers, so the text is the encoder's own.
    """
    head = plan._head()
    marker = f"@trials-{uuid.uuid4().hex}@"
    head["trials"] = marker
    before, after = json.dumps(head, indent=2).split(json.dumps(marker))
    out.write(before)
    if not len(plan.trials):
        out.write("[]" + after)
        return
    columns = plan.trials._columns
    streams = list(plan.study.seed_streams)
    stand_in = {name: f"@{name}-{uuid.uuid4().hex}@" for name in ("id", "replicate", "order")}
    seed_stand_ins = {s: f"@seed-{i}-{uuid.uuid4().hex}@" for i, s in enumerate(streams)}
    index_stand_ins = {s: f"@index-{i}-{uuid.uuid4().hex}@" for i, s in enumerate(streams)}
    templates = []
    for cell, levels, block in zip(columns.cells, columns.levels, columns.blocks):
        sample = {
            "trial_id": stand_in["id"], "cell_id": cell.cell_id, "replicate": stand_in["replicate"], "order": stand_in["order"],
            "block": block, "levels": dict(levels), "seeds": dict(seed_stand_ins), "seed_index": dict(index_stand_ins),
        }
        text = "    " + json.dumps(sample, indent=2).replace("%", "%%").replace("\n", "\n    ")
        text = text.replace(json.dumps(stand_in["id"]), '"t%015x"')
        for placeholder in (stand_in["replicate"], stand_in["order"], *seed_stand_ins.values(), *index_stand_ins.values()):
            text = text.replace(json.dumps(placeholder), "%d")
        templates.append(text)
    out.write("[\n")
    separator = ""
    for cells, values in plan.trials._chunks(("id", "replicate", "order", "seeds", "seed_index"), size=4096):
        out.write(separator + ",\n".join([templates[c] % v for c, v in zip(cells, values)]))
        separator = ",\n"
    out.write("\n  ]" + after)


def write_plan_table(plan: Plan, out: IO[str]) -> None:
    """Write the design table as aligned text, one line per trial, a chunk at a time.

    ``orchestrator plan`` draws small plans as a boxed table; a table of many thousands of
    trials is written this way (the same columns and values) in about the time of the CSV.
    """
    study = plan.study
    columns = plan.trials._columns
    factors = study.factor_names
    header = _header(plan)
    trials = len(plan.trials)
    levels = [[_short(values.get(f, "")) for f in factors] for values in columns.levels]
    blocks = [_short(block) for block in columns.blocks]
    seed_max = {s: int(column.max()) if trials else 0 for s, column in columns.seeds.items()}
    widths = {
        "order": len(str(max(trials - 1, 0))),
        "block": max((len(b) for b in blocks), default=0),
        "trial_id": len(id_text(0)),
        "cell_id": max((len(c.cell_id) for c in columns.cells), default=0),
        "replicate": len(str(int(columns.replicate.max()) if trials else 0)),
        **{f: max((len(row[i]) for row in levels), default=0) for i, f in enumerate(factors)},
        **{f"seed_{s}": len(str(seed_max[s])) for s in columns.seeds},
    }
    widths = {name: max(width, len(name)) for name, width in widths.items()}
    out.write("  ".join(name.ljust(widths[name]) for name in header).rstrip() + "\n")
    out.write("  ".join("-" * widths[name] for name in header) + "\n")
    seeds = "".join(f"  %-{widths[f'seed_{s}']}d" for s in columns.seeds)
    if columns.seeds:  # the last column unpadded: no trailing blanks to strip
        seeds = seeds[:seeds.rindex("%")] + "%d"
    templates = []
    for cell, level_text, block in zip(columns.cells, levels, blocks):
        text = f"%-{widths['order']}d  "
        if study.block_by:
            text += block.replace("%", "%%").ljust(widths["block"]) + "  "
        text += f"t%0{len(id_text(0)) - 1}x  " + cell.cell_id.ljust(widths["cell_id"]) + f"  %-{widths['replicate']}d"
        text += "".join("  " + value.replace("%", "%%").ljust(widths[f]) for value, f in zip(level_text, factors))
        templates.append(text + seeds)
    if columns.seeds_by_replicate is not None and columns.seeds:  # as in write_plan_csv: the seeds' text once per replicate
        texts = [seeds % tuple(row) for row in columns.seeds_by_replicate]
        templates = [t[:-len(seeds)] + "%s" for t in templates]
        for cells, values in plan.trials._chunks(("order", "id", "replicate")):
            out.write("\n".join([templates[c] % (o, i, r, texts[r]) for c, (o, i, r) in zip(cells, values)]) + "\n")
        return
    ends = bool(columns.seeds)
    for cells, values in plan.trials._chunks(("order", "id", "replicate", "seeds")):
        if ends:
            out.write("\n".join([templates[c] % v for c, v in zip(cells, values)]) + "\n")
        else:
            out.write("".join([(templates[c] % v).rstrip() + "\n" for c, v in zip(cells, values)]))


def _short(value: Any) -> str:
    return fmt_number(value, 6) if isinstance(value, float) else str(value)
