"""The tuning declaration: which settings each cell searches, with what budget, selected how.

A study that declares ``tuning=Tuning(...)`` runs, for every cell, ``searches`` searches of
the cell's space (each with its own seed from the ``search`` stream), selects one
configuration per search by a *validation* metric, and reruns it ``reruns`` times with the
cell's rerun seeds; those reruns are the cell's trials.

Nothing here imports Ray: the declaration is validated and planned without a cluster. Every
problem is collected (:meth:`Tuning.problems`) and reported at once, like every study field.

Example:
    >>> from orchestrator.tuning import ASHA, Budget, LogUniform, PerLevel, Tuning, Uniform
    >>> tuning = Tuning(
    ...     space=PerLevel("optimizer", {
    ...         "sgd": {"lr": LogUniform(1e-3, 1.0)},
    ...         "momentum": {"lr": LogUniform(1e-3, 1.0), "momentum": Uniform(0.5, 0.99)},
    ...     }),
    ...     select="val_loss",
    ...     budget=Budget(factor="budget", epochs=3),  # the factor budget: [4, 16, 64] configurations of 3 epochs
    ...     searcher="random",
    ...     scheduler=ASHA(grace_epochs=1, reduction_factor=3),
    ...     reruns=3,
    ... )
    >>> problems = tuning.problems({"optimizer": ["sgd", "momentum"], "budget": [4, 16]}, workload="digits")
    >>> problems
    []
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence, Union

from ..errors import Problem, StudyError, closest, did_you_mean
from .space import Choice, LogUniform, PerLevel, Searcher, Space, Uniform, grid_points_per_axis, resolve_space, space_to_dict

if TYPE_CHECKING:
    from ..definition.study import Goal

__all__ = ["ASHA", "Budget", "BudgetUnit", "TEST_PREFIXES", "Tuning", "VALIDATION_METRICS", "is_test_metric"]

VALIDATION_METRICS: dict[str, tuple[str, ...]] = {
    "digits": ("val_loss", "val_accuracy"),
    "teacher_student": (),
    "two_layer_linear": (),
    "synthetic": (),
    "landscape": ("val_loss",),
    "orchestrator.workloads.tuned:landscape": ("val_loss",),
}
"""Validation metrics each built-in workload reports (with ``validation_size`` > 0 for the numerics ones)."""

VALIDATION_SPLIT_WORKLOADS = ("digits",)
"""Built-in workloads that carve their validation split out of the training split by ``validation_size``."""

TEST_PREFIXES = ("test",)
"""A metric whose name starts with one of these is a test metric: never a selection metric."""

_SETTING = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_GOALS = ("minimize", "maximize")


def is_test_metric(name: str) -> bool:
    """Whether ``name`` is a test metric (``test_loss``, ``test_accuracy_class_3``, ``testloss``)."""
    return str(name).lower().startswith(TEST_PREFIXES)


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class BudgetUnit(str, enum.Enum):
    """What the budget counts."""

    CONFIGURATIONS = "configurations"
    """Configurations tried, each trained for ``epochs``."""
    COMPUTE = "compute"
    """Epochs in total, ``configurations x epochs``: a cell gets ``compute // epochs`` configurations."""


@dataclass(frozen=True)
class Budget:
    """How much a search may spend.

    Give exactly one of ``configurations``, ``compute`` or ``factor``.

    Args:
        configurations: how many configurations each search tries.
        compute: total epochs of a search (``configurations x epochs``); needs ``epochs``.
        factor: a factor of the study whose levels are the budget, in ``unit``
            (e.g. ``Factor("budget", [4, 16, 64])``): the budget becomes a factor of the analysis.
        unit: what a level of ``factor`` counts (configurations, or compute = total epochs).
        epochs: epochs each configuration trains for during the search (None: the study's
            own ``setting``; the reruns always use the study's own setting). Also the
            horizon of :class:`ASHA`.
        setting: the workload setting that sets the training length (``epochs`` for
            digits, ``steps`` for teacher_student).
    """

    configurations: int | None = None
    compute: int | None = None
    factor: str | None = None
    unit: BudgetUnit | str = BudgetUnit.CONFIGURATIONS
    epochs: int | None = None
    setting: str = "epochs"

    def configurations_for(self, levels: Mapping[str, Any]) -> int:
        """Configurations a cell with these levels tries (after validation)."""
        if self.factor is not None:
            amount = int(levels[self.factor])
            return amount if BudgetUnit(self.unit) is BudgetUnit.CONFIGURATIONS else max(amount // int(self.epochs or 1), 1)
        if self.compute is not None:
            return max(int(self.compute) // int(self.epochs or 1), 1)
        return int(self.configurations or 1)

    def to_dict(self) -> dict[str, Any]:
        unit = self.unit.value if isinstance(self.unit, BudgetUnit) else self.unit
        return {"configurations": self.configurations, "compute": self.compute, "factor": self.factor, "unit": unit, "epochs": self.epochs, "setting": self.setting}


@dataclass(frozen=True)
class ASHA:
    """Asynchronous successive halving (Ray Tune's ``ASHAScheduler``) inside each search.

    A configuration is stopped at epoch ``grace_epochs * reduction_factor**k`` when its
    validation metric is not in the top ``1/reduction_factor`` of the configurations of
    the same search that reached that epoch. The workload must log the selection metric
    once per epoch (digits does with ``validation_size`` > 0). With ASHA, the
    configurations of one search run one after another (so the stopping decisions, and the
    selection, are reproducible); searches of different cells still run concurrently.
    """

    grace_epochs: int = 1
    reduction_factor: int = 3

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "asha", "grace_epochs": self.grace_epochs, "reduction_factor": self.reduction_factor}


@dataclass(frozen=True)
class Tuning:
    """Which settings are tuned per cell, and how (see the module docstring for an example).

    Args:
        space: setting name -> :class:`LogUniform` / :class:`Uniform` / :class:`Choice`, or
            a :class:`PerLevel` space nested under the levels of a factor (per optimizer).
        select: the validation metric that selects the configuration (never a test metric).
        goal: ``"minimize"`` or ``"maximize"`` the selection metric.
        budget: an int (configurations per search), the name of a factor whose levels are
            configurations, or a :class:`Budget`.
        searcher: ``"random"``, ``"grid"`` or ``"quasi_random"`` (:class:`Searcher`).
        scheduler: None (every configuration trains in full) or :class:`ASHA`.
        reruns: how often the selected configuration is rerun with fresh rerun seeds; the
            reruns are the cell's trials (the study's ``replicates``).
        searches: how many independent searches (search seeds) each cell gets; with two or
            more, the variance due to the search is separable from the reruns'.
    """

    space: Union[Space, PerLevel]
    select: str
    goal: str = "minimize"
    budget: Union[int, str, Budget] = 16
    searcher: Union[Searcher, str] = Searcher.RANDOM
    scheduler: ASHA | None = None
    reruns: int = 3
    searches: int = 1

    # -- after validation -----------------------------------------------------------------
    @property
    def the_budget(self) -> Budget:
        """The budget as a :class:`Budget`."""
        if isinstance(self.budget, Budget):
            return self.budget
        if isinstance(self.budget, str):
            return Budget(factor=self.budget)
        return Budget(configurations=int(self.budget))

    @property
    def the_searcher(self) -> Searcher:
        return Searcher(self.searcher)

    @property
    def the_goal(self) -> "Goal":
        from ..definition.study import Goal

        return Goal(self.goal)

    def search_seed(self, study_seed: int, cell_id: str, levels: Mapping[str, Any], index: int) -> int:
        """The seed of search ``index`` of a cell (see :func:`orchestrator.tuning.search.search_seed`)."""
        from .search import search_seed

        return search_seed(study_seed, cell_id, self.the_budget.configurations_for(levels), index)

    def search_phase(self, study: Any, plan: Any, recorder: Any, to_run: Sequence[Any], **options: Any) -> Any:
        """The search phase of an execution (:func:`orchestrator.tuning.phase.search_phase`).

        The runner (a lower layer) reaches the tuning layer through this method of the
        study's own tuning object, never by importing it.
        """
        from .phase import search_phase

        return search_phase(study, plan, recorder, to_run, **options)

    def space_for(self, levels: Mapping[str, Any]) -> dict[str, Any]:
        """The flat space of the cell with these levels."""
        return resolve_space(self.space, levels)

    @property
    def tuned_settings(self) -> list[str]:
        """Every setting tuned in some cell, in declaration order."""
        names: list[str] = []

        def walk(space: Any) -> None:
            if isinstance(space, PerLevel):
                for sub in space.spaces.values():
                    walk(sub)
            elif isinstance(space, Mapping):
                names.extend(n for n in space if n not in names)

        walk(self.space)
        return names

    def replace(self, **changes: Any) -> "Tuning":
        """A copy with some fields changed (what a study variant uses to shrink a search)."""
        import dataclasses

        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "space": space_to_dict(self.space) if isinstance(self.space, (Mapping, PerLevel)) else repr(self.space),
            "select": self.select,
            "goal": self.goal,
            "budget": self.the_budget.to_dict() if isinstance(self.budget, (int, str, Budget)) else repr(self.budget),
            "searcher": self.searcher.value if isinstance(self.searcher, Searcher) else self.searcher,
            "scheduler": self.scheduler.to_dict() if isinstance(self.scheduler, ASHA) else None,
            "reruns": self.reruns,
            "searches": self.searches,
        }

    # -- validation -----------------------------------------------------------------------
    def problems(self, factors: Mapping[str, Sequence[Any]], workload: str, *, where: str = "tuning", params: Mapping[str, Any] | None = None) -> list[Problem]:
        """Every problem of this declaration in a study with these factors and workload.

        Args:
            factors: factor name -> all its levels.
            workload: the study's workload (built-in name or reference).
            where: the field name problems are reported under.
            params: the study's fixed parameters (a built-in workload reports its validation
                metrics only with ``validation_size`` > 0).
        """
        problems: list[Problem] = []
        if params is not None and VALIDATION_METRICS.get(str(workload)) and str(workload) in VALIDATION_SPLIT_WORKLOADS:
            share = params.get("validation_size", 0.0)
            if not _number(share) or not 0 < float(share) < 1:
                problems.append(
                    Problem(
                        "params['validation_size']",
                        f"a share in (0, 1) of the training split held out for {where}.select ({workload!r} reports validation metrics only then)",
                        _describe(share) if "validation_size" in params else "none",
                        "e.g. params={'validation_size': 0.2}.",
                    )
                )
        problems += self._space_problems(factors, where)
        problems += self._select_problems(workload, where)
        problems += self._budget_problems(factors, where)
        searcher_values = [s.value for s in Searcher]
        searcher_ok = isinstance(self.searcher, Searcher) or self.searcher in searcher_values
        if not searcher_ok:
            hint = did_you_mean(str(self.searcher), searcher_values)
            if str(self.searcher).lower() in ("tpe", "bayesopt", "optuna", "hyperopt"):
                hint = f"TPE and Bayesian searchers need optuna or hyperopt, which this project does not install. {hint}"
            problems.append(Problem(f"{where}.searcher", " or ".join(map(repr, searcher_values)), _describe(self.searcher), hint))
        if self.scheduler is not None:
            if not isinstance(self.scheduler, ASHA):
                problems.append(Problem(f"{where}.scheduler", "None or ASHA(grace_epochs=..., reduction_factor=...)", _describe(self.scheduler)))
            else:
                if not _positive_int(self.scheduler.grace_epochs):
                    problems.append(Problem(f"{where}.scheduler.grace_epochs", "an integer >= 1", _describe(self.scheduler.grace_epochs)))
                if not isinstance(self.scheduler.reduction_factor, int) or isinstance(self.scheduler.reduction_factor, bool) or self.scheduler.reduction_factor < 2:
                    problems.append(Problem(f"{where}.scheduler.reduction_factor", "an integer >= 2", _describe(self.scheduler.reduction_factor)))
                budget = self.budget if isinstance(self.budget, Budget) else None
                if budget is None or budget.epochs is None:
                    problems.append(
                        Problem(
                            f"{where}.scheduler",
                            "a budget with epochs (ASHA stops configurations at epochs grace, grace x factor, ... up to it)",
                            "no Budget(epochs=...)",
                            "Use budget=Budget(configurations=16, epochs=8) (or factor=...).",
                        )
                    )
                elif _positive_int(budget.epochs) and _positive_int(self.scheduler.grace_epochs) and self.scheduler.grace_epochs > budget.epochs:
                    problems.append(Problem(f"{where}.scheduler.grace_epochs", f"at most the budget's epochs ({budget.epochs})", _describe(self.scheduler.grace_epochs)))
        for name in ("reruns", "searches"):
            value = getattr(self, name)
            if not _positive_int(value):
                problems.append(Problem(f"{where}.{name}", "an integer >= 1", _describe(value)))
        if not any(p.field.startswith((f"{where}.space", f"{where}.budget", f"{where}.searcher")) for p in problems) and self.the_searcher is Searcher.GRID:
            problems += self._grid_problems(factors, where)
        return problems

    def check(self, factors: Mapping[str, Sequence[Any]], workload: str) -> "Tuning":
        """Validate alone (outside a Study); raises :class:`StudyError` with every problem."""
        problems = self.problems(factors, workload)
        if problems:
            raise StudyError(problems)
        return self

    def _space_problems(self, factors: Mapping[str, Sequence[Any]], where: str) -> list[Problem]:
        problems: list[Problem] = []

        def flat(space: Any, at: str) -> None:
            if not isinstance(space, Mapping):
                problems.append(Problem(at, "a mapping setting -> LogUniform/Uniform/Choice, or PerLevel(factor, {level: space})", _describe(space)))
                return
            for name, dist in space.items():
                key = f"{at}[{name!r}]"
                if not isinstance(name, str) or not _SETTING.match(name):
                    problems.append(Problem(key, "a setting name (a Python identifier)", _describe(name)))
                    continue
                if name in factors:
                    problems.append(
                        Problem(key, "a setting that is not a factor", f"{name!r} is a factor of the study", f"Tune it or vary it as a factor, not both: remove {name!r} from the factors or from the space.")
                    )
                problems.extend(_distribution_problems(dist, key))

        def nested(space: PerLevel, at: str, seen: tuple[str, ...]) -> None:
            if space.factor not in factors:
                problems.append(Problem(f"{at}.factor", "a factor of the study", _describe(space.factor), did_you_mean(str(space.factor), factors)))
                return
            if space.factor in seen:
                problems.append(Problem(f"{at}.factor", "a factor not already used by an enclosing PerLevel", repr(space.factor)))
                return
            if not isinstance(space.spaces, Mapping):
                problems.append(Problem(f"{at}.spaces", "a mapping level -> space", _describe(space.spaces)))
                return
            levels = list(factors[space.factor])
            names = [str(level) for level in levels]
            for key in space.spaces:
                # a space for a level the study does not have is kept for variants that drop levels,
                # unless it looks like a misspelt level
                if str(key) not in names and closest(str(key), names) is not None:
                    problems.append(Problem(f"{at}.spaces[{key!r}]", f"a level of {space.factor!r}", _describe(key), did_you_mean(str(key), names)))
            missing = [n for n in names if n not in {str(k) for k in space.spaces}]
            if missing:
                problems.append(
                    Problem(
                        f"{at}.spaces",
                        f"a space for every level of {space.factor!r}",
                        f"none for {', '.join(map(repr, missing))}",
                        f"Add {', '.join(f'{m!r}: {{...}}' for m in missing)} (an empty space {{}} tunes nothing for that level).",
                    )
                )
            for key, sub in space.spaces.items():
                sub_at = f"{at}.spaces[{key!r}]"
                if isinstance(sub, PerLevel):
                    nested(sub, sub_at, seen + (space.factor,))
                else:
                    flat(sub, sub_at)

        if isinstance(self.space, PerLevel):
            nested(self.space, f"{where}.space", ())
        else:
            flat(self.space, f"{where}.space")
        return problems

    def _select_problems(self, workload: str, where: str) -> list[Problem]:
        problems: list[Problem] = []
        known = VALIDATION_METRICS.get(str(workload))
        if not isinstance(self.select, str) or not self.select:
            problems.append(Problem(f"{where}.select", "the name of a validation metric the workload reports", _describe(self.select), f"Valid: {', '.join(known)}." if known else ""))
        elif is_test_metric(self.select):
            valid = ", ".join(known) if known else "a metric computed on a validation split, e.g. val_loss"
            problems.append(
                Problem(
                    f"{where}.select",
                    "a validation metric (selecting on a test metric lets the test split choose the configuration, so the test metric no longer estimates performance on unseen data)",
                    f"{self.select!r}, a test metric",
                    f"Select on a validation metric: {valid}." + (f' Did you mean "{_closest_validation(self.select, known)}"?' if known else ""),
                )
            )
        elif known is not None and self.select not in known:
            if known:
                problems.append(Problem(f"{where}.select", f"a validation metric the {workload!r} workload reports", repr(self.select), did_you_mean(self.select, known)))
            else:
                problems.append(
                    Problem(
                        f"{where}.select",
                        f"a validation metric the {workload!r} workload reports",
                        f"{self.select!r}, but {workload!r} reports no validation metric",
                        "Tune a workload with a validation split (digits with validation_size > 0) or a 'package.module:function' one that reports val_* metrics.",
                    )
                )
        if self.goal not in _GOALS and getattr(self.goal, "value", None) not in _GOALS:
            problems.append(Problem(f"{where}.goal", "'minimize' or 'maximize'", _describe(self.goal), did_you_mean(str(self.goal), _GOALS)))
        return problems

    def _budget_problems(self, factors: Mapping[str, Sequence[Any]], where: str) -> list[Problem]:
        problems: list[Problem] = []
        at = f"{where}.budget"
        raw = self.budget
        if isinstance(raw, bool) or not isinstance(raw, (int, str, Budget)):
            return [Problem(at, "an int (configurations), a factor name, or Budget(configurations=|compute=|factor=, epochs=)", _describe(raw))]
        if isinstance(raw, int) and not _positive_int(raw):
            return [Problem(at, "a number of configurations >= 1", _describe(raw))]
        budget = self.the_budget
        given = [n for n in ("configurations", "compute", "factor") if getattr(budget, n) is not None]
        if len(given) != 1:
            problems.append(Problem(at, "exactly one of configurations, compute or factor", f"{', '.join(given) or 'none'}", "e.g. Budget(configurations=16) or Budget(factor='budget')."))
        if budget.configurations is not None and not _positive_int(budget.configurations):
            problems.append(Problem(f"{at}.configurations", "an integer >= 1", _describe(budget.configurations)))
        if budget.epochs is not None and not _positive_int(budget.epochs):
            problems.append(Problem(f"{at}.epochs", "an integer >= 1 (epochs per configuration)", _describe(budget.epochs)))
        units = [u.value for u in BudgetUnit]
        unit_ok = isinstance(budget.unit, BudgetUnit) or budget.unit in units
        if not unit_ok:
            problems.append(Problem(f"{at}.unit", " or ".join(map(repr, units)), _describe(budget.unit), did_you_mean(str(budget.unit), units)))
        if not isinstance(budget.setting, str) or not _SETTING.match(budget.setting):
            problems.append(Problem(f"{at}.setting", "the name of the workload setting that sets the training length", _describe(budget.setting)))
        counts_compute = budget.compute is not None or (budget.factor is not None and unit_ok and BudgetUnit(budget.unit) is BudgetUnit.COMPUTE)
        if counts_compute and budget.epochs is None:
            problems.append(Problem(f"{at}.epochs", "epochs per configuration (a compute budget is configurations x epochs)", "none", "Add epochs=..., e.g. Budget(compute=48, epochs=3)."))
        if budget.compute is not None:
            if not _positive_int(budget.compute):
                problems.append(Problem(f"{at}.compute", "total epochs, an integer >= 1", _describe(budget.compute)))
            elif _positive_int(budget.epochs) and budget.compute < budget.epochs:
                problems.append(Problem(f"{at}.compute", f"at least one configuration's epochs ({budget.epochs})", _describe(budget.compute)))
        if budget.factor is not None:
            if budget.factor not in factors:
                problems.append(Problem(f"{at}.factor", "a factor of the study whose levels are budgets", _describe(budget.factor), did_you_mean(str(budget.factor), factors)))
            else:
                bad = [level for level in factors[budget.factor] if not _positive_int(level)]
                if bad:
                    problems.append(Problem(f"factors[{budget.factor!r}].levels", "budgets: integers >= 1", ", ".join(map(repr, bad)), f"It is the tuning budget ({at})."))
                elif counts_compute and _positive_int(budget.epochs):
                    small = [level for level in factors[budget.factor] if level < budget.epochs]
                    if small:
                        problems.append(Problem(f"factors[{budget.factor!r}].levels", f"compute budgets of at least one configuration's epochs ({budget.epochs})", ", ".join(map(repr, small))))
        return problems

    def _grid_problems(self, factors: Mapping[str, Sequence[Any]], where: str) -> list[Problem]:
        """A grid must fit every cell's budget (a choice alone may need more configurations)."""
        import itertools

        problems: list[Problem] = []
        budget = self.the_budget
        names = list(factors)
        seen: set[str] = set()
        for combo in itertools.product(*(list(factors[n]) for n in names)):
            levels = dict(zip(names, combo))
            space = self.space_for(levels)
            count = budget.configurations_for(levels)
            if grid_points_per_axis(space, count) == 0:
                choices = math.prod(len(d.values) for d in space.values() if isinstance(d, Choice))
                text = f"budget {count} for {', '.join(f'{k}={v}' for k, v in levels.items())}"
                if text not in seen:
                    seen.add(text)
                    problems.append(Problem(f"{where}.budget", f"at least {choices} configurations (a grid covers every value of each Choice)", text, "Raise the budget or use searcher='random'."))
        return problems


def _closest_validation(name: str, known: Sequence[str]) -> str:
    stem = name.lower().removeprefix("test").lstrip("_")
    for candidate in known:
        if candidate.lower().endswith(stem):
            return candidate
    return known[0]


def _distribution_problems(dist: Any, at: str) -> list[Problem]:
    problems: list[Problem] = []
    if isinstance(dist, LogUniform):
        if not (_number(dist.low) and _number(dist.high)) or dist.low <= 0 or dist.high <= dist.low:
            problems.append(Problem(at, "LogUniform(low, high) with 0 < low < high", f"LogUniform({dist.low!r}, {dist.high!r})", "A log scale needs positive bounds; use Uniform for ranges that include 0."))
    elif isinstance(dist, Uniform):
        if not (_number(dist.low) and _number(dist.high)) or dist.high <= dist.low:
            problems.append(Problem(at, "Uniform(low, high) with low < high", f"Uniform({dist.low!r}, {dist.high!r})"))
    elif isinstance(dist, Choice):
        values = dist.values
        if not isinstance(values, tuple) or not values:
            problems.append(Problem(at, "Choice([value, ...]) with at least one value", _describe(values)))
        elif not all(isinstance(v, (str, int, float, bool)) for v in values):
            problems.append(Problem(at, "Choice values that are str, int, float or bool", ", ".join(_describe(v) for v in values if not isinstance(v, (str, int, float, bool)))))
        elif len({(type(v), v) for v in values}) != len(values):
            problems.append(Problem(at, "Choice values without repeats", repr(list(values))))
    else:
        problems.append(Problem(at, "LogUniform(low, high), Uniform(low, high) or Choice([...])", _describe(dist)))
    return problems
