"""Design specs (what a study's ``design=`` says) and the algebra of two-level designs.

:class:`FullFactorial`, :class:`Fractional` (2^(k-p), chosen by resolution, run count or
generators) and :class:`PlackettBurman`, with what validating them needs: factor letters,
the minimum-aberration generator table, the defining relation, the resolution, and the +-1
matrices the planner (:mod:`orchestrator.design.plan`) expands into cells.

Fractional designs letter the factors A, B, C, ... (I is skipped, as in the literature)
in declaration order; the first k-p are the basic factors of a full 2^(k-p) in standard
(Yates) order, the rest are generated as products of basic columns.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Mapping, Sequence

from ..errors import Problem

__all__ = [
    "LETTERS",
    "STANDARD_GENERATORS",
    "DesignSpec",
    "Fractional",
    "FullFactorial",
    "PlackettBurman",
    "check_design",
    "defining_relation",
    "fractional_matrix",
    "parse_generators",
    "plackett_burman_matrix",
    "resolution_of",
]


class _Spec:
    """Base of the small declaration objects: frozen once built; keeps unknown keyword
    arguments so the study validator can report them all at once (with a suggestion)."""

    _fields: tuple[str, ...] = ()
    unknown: dict[str, Any]

    def _take_unknown(self, unknown: Mapping[str, Any]) -> None:
        """Called last by every ``__init__``: keeps the unknown arguments and freezes the object."""
        object.__setattr__(self, "unknown", dict(unknown))
        object.__setattr__(self, "_frozen", True)

    def __setattr__(self, key: str, value: Any) -> None:
        if self.__dict__.get("_frozen"):
            raise AttributeError(f"a {type(self).__name__} is frozen; build a new one instead of setting {key!r}")
        object.__setattr__(self, key, value)

    def __repr__(self) -> str:
        args = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and all(getattr(self, f) == getattr(other, f) for f in self._fields)

    def __hash__(self) -> int:
        return hash(type(self).__name__)


class FullFactorial(_Spec):
    """Every combination of every level (minus exclusions)."""

    kind = "full"
    _fields = ()

    def __init__(self, **unknown: Any):
        self._take_unknown(unknown)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind}


class Fractional(_Spec):
    """A two-level fractional factorial 2^(k-p), chosen by resolution, by run count, or by generators.

    Factors are lettered A, B, C, ... (I is skipped) in declaration order. Generators name
    the added factors as products of basic ones, e.g. ``["D=AB", "E=AC", "F=BC", "G=ABC"]``.
    With ``resolution`` (or ``runs``), the standard minimum-aberration generators of
    Montgomery, *Design and Analysis of Experiments*, Table 8.14 are used.
    """

    kind = "fractional"
    _fields = ("resolution", "generators", "runs")

    def __init__(self, resolution: int | None = None, generators: Sequence[str] | None = None, runs: int | None = None, **unknown: Any):
        self.resolution = resolution
        self.generators = list(generators) if generators is not None else None
        self.runs = runs
        self._take_unknown(unknown)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "resolution": self.resolution, "generators": self.generators, "runs": self.runs}


class PlackettBurman(_Spec):
    """A Plackett–Burman screening design for two-level factors (runs: a multiple of 4)."""

    kind = "plackett_burman"
    _fields = ("runs",)

    def __init__(self, runs: int | None = None, **unknown: Any):
        self.runs = runs
        self._take_unknown(unknown)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "runs": self.runs}


DesignSpec = FullFactorial | Fractional | PlackettBurman
"""Any design spec."""


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


