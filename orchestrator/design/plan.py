"""The design engine: from a :class:`~orchestrator.study.Study` to a :class:`Plan` of trials.

Full factorials (with nested factors and exclusions), two-level fractional factorials
2^(k-p) with their defining relation and alias table, and Plackett–Burman screening
designs. Seeds are derived here, at design time, and stored on each trial.

Fractional designs letter the factors A, B, C, ... (I is skipped, as in the literature)
in declaration order; the first k-p are the basic factors of a full 2^(k-p) in standard
(Yates) order, the rest are generated as products of basic columns.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from .errors import Problem
from .ids import canonical_json, cell_id as make_cell_id, derive_seed, trial_id as make_trial_id
from .trial import Trial

if TYPE_CHECKING:
    from .study import Fractional, PlackettBurman, Study

__all__ = [
    "LETTERS",
    "STANDARD_GENERATORS",
    "AliasRow",
    "Cell",
    "Plan",
    "alias_table",
    "check_design",
    "defining_relation",
    "fractional_matrix",
    "make_plan",
    "plackett_burman_matrix",
    "resolution_of",
]

LETTERS = "ABCDEFGHJKLMNOPQRSTUVWXYZ"

# Minimum-aberration generators: Montgomery, Design and Analysis of Experiments (8th ed.),
# Table 8.14 ("Selected 2^(k-p) fractional factorial designs"). (k, p) -> (resolution, generators)
STANDARD_GENERATORS: dict[tuple[int, int], tuple[int, tuple[str, ...]]] = {
    (3, 1): (3, ("C=AB",)),
    (4, 1): (4, ("D=ABC",)),
    (5, 1): (5, ("E=ABCD",)),
    (5, 2): (3, ("D=AB", "E=AC")),
    (6, 1): (6, ("F=ABCDE",)),
    (6, 2): (4, ("E=ABC", "F=BCD")),
    (6, 3): (3, ("D=AB", "E=AC", "F=BC")),
    (7, 1): (7, ("G=ABCDEF",)),
    (7, 2): (4, ("F=ABCD", "G=ABDE")),
    (7, 3): (4, ("E=ABC", "F=BCD", "G=ACD")),
    (7, 4): (3, ("D=AB", "E=AC", "F=BC", "G=ABC")),
    (8, 2): (5, ("G=ABCD", "H=ABEF")),
    (8, 3): (4, ("F=ABC", "G=ABD", "H=BCDE")),
    (8, 4): (4, ("E=BCD", "F=ACD", "G=ABC", "H=ABD")),
    (9, 2): (6, ("H=ACDFG", "J=BCEFG")),
    (9, 3): (4, ("G=ABCD", "H=ACEF", "J=CDEF")),
    (9, 4): (4, ("F=BCDE", "G=ACDE", "H=ABDE", "J=ABCE")),
    (9, 5): (3, ("E=ABC", "F=BCD", "G=ACD", "H=ABD", "J=ABCD")),
    (10, 3): (5, ("H=ABCG", "J=BCDE", "K=ACDF")),
    (10, 4): (4, ("G=BCDF", "H=ACDF", "J=ABDE", "K=ABCE")),
    (10, 5): (4, ("F=ABCD", "G=ABCE", "H=ABDE", "J=ACDE", "K=BCDE")),
    (10, 6): (3, ("E=ABC", "F=BCD", "G=ACD", "H=ABD", "J=ABCD", "K=AB")),
    (11, 5): (4, ("G=CDE", "H=ABCD", "J=ABF", "K=BDEF", "L=ADEF")),
    (11, 6): (4, ("F=ABC", "G=BCD", "H=CDE", "J=ACD", "K=ADE", "L=BDE")),
    (11, 7): (3, ("E=ABC", "F=BCD", "G=ACD", "H=ABD", "J=ABCD", "K=AB", "L=AC")),
}

# First rows of the cyclic Plackett–Burman designs (Plackett & Burman, 1946); the design is
# the N-1 cyclic shifts of this row plus a row of all minus signs.
_PB_FIRST_ROWS = {
    12: "++-+++---+-",
    20: "++--++++-+-+----++-",
    24: "+++++-+-++--++--+-+----",
}
_PB_SIZES = (4, 8, 12, 16, 20, 24, 32)


# -- words and the defining relation --------------------------------------------------------
def _word(letters: Iterable[str]) -> frozenset[str]:
    return frozenset(letters)


def _text(word: frozenset[str]) -> str:
    return "".join(sorted(word, key=LETTERS.index)) or "I"


def parse_generators(generators: Sequence[str], k: int) -> tuple[list[tuple[str, frozenset[str]]], list[Problem]]:
    """Parse ``"D=AB"`` strings into (added letter, word) pairs, reporting every problem."""
    p = len(generators)
    basic = LETTERS[: k - p]
    added = LETTERS[k - p : k]
    parsed: list[tuple[str, frozenset[str]]] = []
    problems: list[Problem] = []
    for i, text in enumerate(generators):
        where = f"design.generators[{i}]"
        if not isinstance(text, str) or text.count("=") != 1:
            problems.append(Problem(where, "a generator like 'D=AB' (added factor = product of basic factors)", repr(text)))
            continue
        left, right = (part.strip().upper() for part in text.split("="))
        if left != added[i] if i < len(added) else True:
            expected = added[i] if i < len(added) else "(none: more generators than factors)"
            problems.append(
                Problem(where, f"generator {i + 1} to define factor {expected} (factors are lettered A, B, ... skipping I)", repr(text), f"Basic factors: {basic or 'none'}.")
            )
            continue
        bad = [c for c in right if c not in basic]
        if not right or bad or len(set(right)) != len(right):
            problems.append(
                Problem(where, f"a product of distinct basic factors from {basic}", repr(text), f"{''.join(bad)} is not a basic factor." if bad else "")
            )
            continue
        if len(right) < 2:
            problems.append(Problem(where, "a product of at least two basic factors", repr(text), "A single letter would copy a column."))
            continue
        parsed.append((left, _word(right)))
    if len({w for _, w in parsed}) != len(parsed):
        problems.append(Problem("design.generators", "distinct generator words", repr(list(generators)), "Two added factors would be the same column."))
    return parsed, problems


def defining_relation(generators: Sequence[tuple[str, frozenset[str]]]) -> list[frozenset[str]]:
    """Every word of the defining relation (products of the generator words), shortest first."""
    base = [w | {letter} for letter, w in generators]
    words: set[frozenset[str]] = set()
    for r in range(1, len(base) + 1):
        for combo in itertools.combinations(base, r):
            product: frozenset[str] = frozenset()
            for w in combo:
                product = product ^ w
            words.add(product)
    return sorted(words, key=lambda w: (len(w), _text(w)))


def resolution_of(generators: Sequence[tuple[str, frozenset[str]]]) -> int:
    """The design resolution: length of the shortest word of the defining relation."""
    return min(len(w) for w in defining_relation(generators))


def check_design(spec: "Fractional | PlackettBurman", k: int) -> list[Problem]:
    """Problems of a fractional or Plackett–Burman spec for ``k`` two-level factors."""
    from .study import Fractional

    if not isinstance(spec, Fractional):
        runs = spec.runs
        if runs is not None and (runs not in _PB_SIZES or runs < k + 1):
            sizes = [n for n in _PB_SIZES if n >= k + 1]
            return [Problem("design.runs", f"a Plackett–Burman size >= factors + 1 = {k + 1} from {sizes}", repr(runs))]
        if runs is None and k + 1 > _PB_SIZES[-1]:
            return [Problem("design", f"at most {_PB_SIZES[-1] - 1} factors in a Plackett–Burman design", f"{k} factors")]
        return []
    try:
        _fractional_generators(spec, k)
    except _DesignProblems as exc:
        return exc.problems
    return []


class _DesignProblems(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems


def _fractional_generators(spec: "Fractional", k: int) -> list[tuple[str, frozenset[str]]]:
    given = [x is not None for x in (spec.resolution, spec.generators, spec.runs)]
    if sum(given) != 1:
        raise _DesignProblems(
            [Problem("design", "exactly one of resolution=, runs= or generators= in Fractional(...)", f"{sum(given)} given", "e.g. Fractional(resolution=3)")]
        )
    if spec.generators is not None:
        parsed, problems = parse_generators(spec.generators, k)
        if len(spec.generators) >= k:
            problems.append(Problem("design.generators", f"fewer generators than factors ({k})", str(len(spec.generators))))
        if problems:
            raise _DesignProblems(problems)
        return parsed
    available = sorted((p, res) for (kk, p), (res, _) in STANDARD_GENERATORS.items() if kk == k)
    if spec.resolution is not None:
        if not isinstance(spec.resolution, int) or isinstance(spec.resolution, bool) or spec.resolution < 3:
            raise _DesignProblems([Problem("design.resolution", "an integer >= 3 (III, IV, V, ...)", repr(spec.resolution))])
        # fewest runs (largest p) that still reaches the requested resolution
        fits = [p for p, res in available if res >= spec.resolution]
        if not fits:
            best = max((res for _, res in available), default=None)
            hint = f"The best tabled 2^({k}-p) design has resolution {best}." if best else f"No tabled fractional design for {k} factors (3 to 11 are tabled)."
            raise _DesignProblems([Problem("design.resolution", f"a resolution a tabled 2^({k}-p) design reaches", str(spec.resolution), hint + " Use FullFactorial() or explicit generators.")])
        p = max(fits)
    else:
        runs = spec.runs
        sizes = {2 ** (k - p): p for p, _ in available}
        if runs not in sizes:
            raise _DesignProblems(
                [Problem("design.runs", f"a run count of a tabled 2^({k}-p) design: {sorted(sizes)}", repr(runs), "Or give generators= explicitly.")]
            )
        p = sizes[runs]
    _, generators = STANDARD_GENERATORS[(k, p)]
    parsed, problems = parse_generators(generators, k)
    if problems:  # pragma: no cover - the table is checked by the tests
        raise _DesignProblems(problems)
    return parsed


def fractional_matrix(generators: Sequence[tuple[str, frozenset[str]]], k: int) -> list[list[int]]:
    """The +-1 design matrix: rows in standard order, columns A, B, ... (k columns)."""
    p = len(generators)
    basic = LETTERS[: k - p]
    rows = []
    for index in range(2 ** (k - p)):
        signs = {letter: (1 if (index >> j) & 1 else -1) for j, letter in enumerate(basic)}
        for letter, word in generators:
            value = 1
            for w in word:
                value *= signs[w]
            signs[letter] = value
        rows.append([signs[LETTERS[j]] for j in range(k)])
    return rows


def plackett_burman_matrix(k: int, runs: int | None = None) -> list[list[int]]:
    """A Plackett–Burman +-1 matrix with ``runs`` rows (default: the smallest >= k+1), first k columns."""
    n = runs or next(size for size in _PB_SIZES if size >= k + 1)
    if n in _PB_FIRST_ROWS:
        first = [1 if c == "+" else -1 for c in _PB_FIRST_ROWS[n]]
        rows = [first[-i:] + first[:-i] if i else list(first) for i in range(n - 1)]
        rows.append([-1] * (n - 1))
    else:  # powers of two: Sylvester's Hadamard matrix without its constant column
        h = [[1]]
        while len(h) < n:
            h = [row + row for row in h] + [row + [-x for x in row] for row in h]
        rows = [row[1:] for row in h]
    return [row[:k] for row in rows]


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
        grown = []
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
                if policy == "replicate":
                    index[name] = r
            index.update({name: i for (name, _), i in zip(crossed, indices)})
            combos.append(index)
    return combos


def _audit(study: "Study", cells: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    from .numerics.audit import audit_config  # torch-free

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
    from .study import Fractional, PlackettBurman

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
            names = ", ".join(sorted({f["parameter"] for f in audit[cid]}))
            excluded.append({"cell_id": cid, "levels": levels, "reason": f"refuse_unrepresentable: {names} change meaning in this precision"})
            continue
        if cid in seen:  # pragma: no cover - designs never repeat a row
            continue
        seen.add(cid)
        cells.append(Cell(cid, levels))

    combos = _seed_combinations(study)
    trials: list[dict[str, Any]] = []
    for cell in cells:
        for replicate, index in enumerate(combos):
            seeds = {}
            for stream, i in index.items():
                policy = study.seed_streams[stream]
                scoped = cell.cell_id if study.seed_scope == "cell" and policy != "fixed" else None
                seeds[stream] = derive_seed(study.seed, stream, i, scoped)
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
    built = [
        Trial(
            study=study.name,
            variant=study.variant or "full",
            trial_id=t["trial_id"],
            cell_id=t["cell"].cell_id,
            replicate=t["replicate"],
            levels=dict(t["cell"].levels),
            params=dict(study.params),
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
    if study.run_order == "standard":
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
