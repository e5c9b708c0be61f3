"""The one error the analysis raises on purpose."""

from __future__ import annotations

from typing import Sequence

from orchestrator.errors import OrchestratorError

__all__ = ["AnalysisError"]


class AnalysisError(OrchestratorError, ValueError):
    """The input cannot be analysed as asked. Holds every problem found, not only the first.

    Each problem says what was expected, what was found and what to do. Degenerate but
    valid inputs (a constant response, every trial diverged) are not errors: they give a
    result whose ``notes`` say what could not be estimated.
    """

    def __init__(self, problems: str | Sequence[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            message = f"cannot analyse: {self.problems[0]}"
        else:
            body = "\n".join(f"  - {p}" for p in self.problems)
            message = f"cannot analyse: {len(self.problems)} problems\n{body}"
        super().__init__(message)
