"""Errors of the orchestrator: each says what was expected, what was found, and what to do."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable, Sequence

__all__ = [
    "OrchestratorError",
    "Problem",
    "StudyError",
    "StudyLoadError",
    "TrialDiverged",
    "closest",
    "did_you_mean",
]


class OrchestratorError(Exception):
    """Base of every error the orchestrator raises on purpose (CLI: exit status 2)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a study: the field, what was expected, what was found, a hint."""

    field: str
    expected: str
    found: str
    hint: str = ""

    def __str__(self) -> str:
        text = f"{self.field}: expected {self.expected}, found {self.found}"
        if self.hint:
            text += f". {self.hint}"
        return text


class StudyError(OrchestratorError, ValueError):
    """A study definition is invalid. Holds every problem found, not only the first."""

    def __init__(self, problems: Sequence[Problem], *, study: str | None = None, source: str | None = None):
        self.problems = list(problems)
        self.study = study
        self.source = source
        where = f"study {study!r}" if study else "the study"
        if source:
            where += f" ({source})"
        count = len(self.problems)
        head = f"{where} is invalid: {count} problem{'s' if count != 1 else ''}"
        body = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{head}\n{body}")


class StudyLoadError(OrchestratorError):
    """A study file could not be found, imported, or did not define a study."""


class TrialDiverged(Exception):
    """Raised inside a workload when training diverged (NaN/Inf or blow-up).

    Not an error of the trial: the worker records it as a finished trial with
    ``diverged = 1`` and ``diverged_step``.
    """

    def __init__(self, step: int, reason: str, metrics: dict[str, float] | None = None):
        self.step = int(step)
        self.reason = reason
        self.metrics = dict(metrics or {})
        super().__init__(f"diverged at step {step}: {reason}")


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The closest valid name to ``name``, or None when nothing is close."""
    matches = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return matches[0] if matches else None


def not_one_of(what: str, value: object, names: Iterable[str]) -> str:
    """The message for a name outside a fixed set: 'what: expected one of a, b, found 'x'. Did you mean "a"? Valid: a, b.'"""
    names = [str(n) for n in names]
    return f"{what}: expected one of {', '.join(names)}, found {value!r}. {did_you_mean(str(value), names)}"


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """A hint sentence: 'Did you mean "x"? Valid: a, b, c.' (or only the valid list)."""
    candidates = sorted(str(c) for c in candidates)
    match = closest(name, candidates)
    valid = ", ".join(candidates) if candidates else "(none)"
    if match:
        return f'Did you mean "{match}"? Valid: {valid}.'
    return f"Valid: {valid}."
