"""The study definition: what the user wrote, validated as a whole and then frozen.

A study file in ``studies/`` builds one module-level ``study = Study(...)``. Every
problem in it is collected and reported together (:class:`~orchestrator.errors.StudyError`),
each naming the field, what was expected, what was found and the closest valid name.

Example:
    >>> from orchestrator import Study, Factor, Variant
    >>> study = Study(
    ...     name="demo",
    ...     workload="synthetic",
    ...     factors=[Factor("optimizer", ["sgd", "adam"]), Factor("lr", [0.1, 0.01])],
    ...     metrics={"response": "minimize"},
    ...     replicates=3,
    ...     variants={"smoke": Variant(replicates=1), "full": Variant()},
    ... )
    >>> study.with_variant("smoke").replicates
    1
"""

from __future__ import annotations

import enum
import math
import re
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

from dataclasses import dataclass, field

from ..errors import Problem, StudyError, did_you_mean
from ..ids import canonical_json, content_hash
from ..numerics.levels import LEVELLED_WORKLOADS, LEVELS
from .workloads import check_reference
from .designs import DesignSpec, Fractional, FullFactorial, PlackettBurman, _Spec, check_design

__all__ = [
    "Factor",
    "Fractional",
    "FullFactorial",
    "Goal",
    "Metric",
    "PlackettBurman",
    "Resources",
    "RunOrder",
    "SeedScope",
    "StreamPolicy",
    "Study",
    "Variant",
    "STANDARD_STREAMS",
]

STANDARD_STREAMS = ("init", "data", "reduction")
REQUIRED_VARIANTS = ("smoke", "full")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Resources:
    """What one trial asks of the cluster.

    Attributes:
        cpus: CPUs per trial (fractions allowed).
        gpus: GPUs per trial; a fraction below 1 shares a GPU (``0.25``: four trials on one).
        memory_mb: RAM per trial, reserved by Ray.
        custom: custom Ray resources per trial, e.g. ``{"spot": 1}`` for a node type's label.
        gpu_memory_gb: GB (GiB, 1024**3 bytes) that must be free on each GPU the trial gets.
            Ray places the trial only where nodes advertise enough (the ``gpu_memory_gb``
            resource, see ``python -m orchestrator.execution.node``) and the worker checks at
            the trial's start that the memory is actually free; an attempt that finds less is
            retried elsewhere (docs/execution.md, Faults).

    Example:
        >>> Resources(gpus=1, gpu_memory_gb=20).to_dict()["gpu_memory_gb"]
        20.0
    """

    cpus: float = 1.0
    gpus: float = 0.0
    memory_mb: int | None = None
    custom: Mapping[str, float] = field(default_factory=dict)
    gpu_memory_gb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {"cpus": self.cpus, "gpus": self.gpus, "memory_mb": self.memory_mb, "custom": dict(self.custom)}
        if self.gpu_memory_gb is not None:  # absent when unset: older studies keep their definition hash
            data["gpu_memory_gb"] = float(self.gpu_memory_gb)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Resources":
        gpu_memory = data.get("gpu_memory_gb")
        return cls(
            cpus=float(data.get("cpus", 1.0)),
            gpus=float(data.get("gpus", 0.0)),
            memory_mb=data.get("memory_mb"),
            custom=dict(data.get("custom") or {}),
            gpu_memory_gb=float(gpu_memory) if gpu_memory is not None else None,
        )



class Goal(str, enum.Enum):
    """Whether a response metric is better low or high."""

    MINIMIZE = "minimize"
    MAXIMIZE = "maximize"

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is better than ``b`` under this goal."""
        return a < b if self is Goal.MINIMIZE else a > b


class Factor(_Spec):
    """A factor and its levels.

    Args:
        name: a Python identifier (it becomes a parameter name of the workload).
        levels: the levels: strings, numbers or booleans. For a nested factor, a mapping
            from each level of the parent factor to the levels allowed under it.
        nested_in: the parent factor of a nested factor (e.g. learning rates per optimizer).
        random: analyse this factor as a random effect instead of a fixed one.
    """

    _fields = ("name", "levels", "nested_in", "random")

    def __init__(self, name: str, levels: Any = None, *, nested_in: str | None = None, random: bool = False, **unknown: Any):
        self.name = name
        self.levels = levels
        self.nested_in = nested_in
        self.random = random
        self._take_unknown(unknown)

    @property
    def kind(self) -> str:
        """``numeric`` when every level is a number, else ``categorical``."""
        return "numeric" if self.all_levels and all(_is_number(v) for v in self.all_levels) else "categorical"

    @property
    def all_levels(self) -> list[Any]:
        """Every level, over all parents for a nested factor, first occurrence order."""
        if isinstance(self.levels, Mapping):
            seen: list[Any] = []
            for values in self.levels.values():
                for v in values if isinstance(values, (list, tuple)) else []:
                    if not any(_same_level(v, s) for s in seen):
                        seen.append(v)
            return seen
        return list(self.levels) if isinstance(self.levels, (list, tuple)) else []

    def levels_under(self, parent_level: Any) -> list[Any]:
        """Levels of a nested factor under one level of its parent."""
        if not isinstance(self.levels, Mapping):
            return list(self.levels)
        for key, values in self.levels.items():
            if _same_level(key, parent_level) or str(key) == str(parent_level):
                return list(values)
        return []

    def to_dict(self) -> dict[str, Any]:
        levels = {str(k): list(v) for k, v in self.levels.items()} if isinstance(self.levels, Mapping) else list(self.levels)
        return {"name": self.name, "levels": levels, "kind": self.kind, "nested_in": self.nested_in, "random": self.random}


def _same_level(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b or (_is_number(a) and _is_number(b) and a == b and type(a) is type(b))


class Metric(_Spec):
    """A response metric the workload returns, and whether lower or higher is better."""

    _fields = ("name", "goal")

    def __init__(self, name: str, goal: str | Goal = "minimize", **unknown: Any):
        self.name = name
        self.goal = goal
        self._take_unknown(unknown)

    def to_dict(self) -> dict[str, Any]:
        goal = self.goal.value if isinstance(self.goal, Goal) else self.goal
        return {"name": self.name, "goal": goal}


class Variant(_Spec):
    """Overrides applied by a named variant (``smoke`` for CI, ``full`` for the cluster).

    Args:
        replicates: replicates per cell in this variant.
        params: fixed parameters to override or add.
        levels: factor name -> levels to use instead (a subset or different values).
        seed_streams: seed stream settings to use instead.
        description: what the variant is for.
        tuning: fields of the study's tuning to change (a tuned study only), e.g.
            ``{"reruns": 1, "searches": 2, "budget": Budget(factor="budget", epochs=1)}``.
    """

    _fields = ("replicates", "params", "levels", "seed_streams", "description", "tuning")

    def __init__(
        self,
        replicates: int | None = None,
        params: Mapping[str, Any] | None = None,
        levels: Mapping[str, Any] | None = None,
        seed_streams: Any = None,
        description: str = "",
        tuning: Mapping[str, Any] | None = None,
        **unknown: Any,
    ):
        self.tuning = dict(tuning or {})
        self.replicates = replicates
        self.params = dict(params or {})
        self.levels = dict(levels or {})
        self.seed_streams = seed_streams
        self.description = description
        self._take_unknown(unknown)


_STUDY_FIELDS = (
    "name",
    "description",
    "workload",
    "factors",
    "params",
    "replicates",
    "seed_streams",
    "seed_scope",
    "metrics",
    "resources",
    "retries",
    "design",
    "exclude",
    "seed",
    "variants",
    "run_order",
    "block_by",
    "refuse_unrepresentable",
    "analysis",
    "tuning",
)
_ANALYSIS_KEYS = ("metric", "log", "spread_by", "interactions", "ranking", "seed_interactions")


class RunOrder(enum.StrEnum):
    """The order trials run in (``run_order=``)."""

    RANDOMIZED = "randomized"
    """Shuffled, seeded by the study seed (within blocks when ``block_by`` is set)."""
    STANDARD = "standard"
    """The design's own order (Yates order for two-level designs)."""

    @property
    def shuffles(self) -> bool:
        """Whether the planner shuffles the trials."""
        return self is RunOrder.RANDOMIZED


class StreamPolicy(enum.StrEnum):
    """How a seed stream draws its seeds (``seed_streams={name: policy}``); an int k crosses k seeds."""

    REPLICATE = "replicate"
    """A new seed for every replicate."""
    FIXED = "fixed"
    """One seed for the whole study."""

    def seed_index(self, replicate: int) -> int:
        """The stream's seed index for replicate ``replicate``."""
        return replicate if self is StreamPolicy.REPLICATE else 0


class SeedScope(enum.StrEnum):
    """Whether cells share seeds (``seed_scope=``)."""

    SHARED = "shared"
    """Replicate r of every cell gets the same seeds (common random numbers)."""
    CELL = "cell"
    """Seeds are drawn independently per cell."""

    def scope(self, cell_id: str, policy: "StreamPolicy | int") -> str | None:
        """The cell a stream's seed is derived for (``None``: shared by every cell). A fixed stream is always shared."""
        return cell_id if self is SeedScope.CELL and policy != StreamPolicy.FIXED else None


_RUN_ORDERS = tuple(m.value for m in RunOrder)
_SEED_SCOPES = tuple(m.value for m in SeedScope)
_STREAM_POLICIES = tuple(m.value for m in StreamPolicy)


@runtime_checkable
class TunedSettings(Protocol):
    """What a study needs of its tuned settings (:class:`orchestrator.tuning.Tuning` implements it).

    The definition layer names only this interface: the tuning package, a higher layer that
    runs searches on Ray Tune, provides the implementation.
    """

    reruns: int
    searches: int

    def problems(self, factors: Mapping[str, Sequence[Any]], workload: str, *, where: str = "tuning", params: Mapping[str, Any] | None = None) -> list[Problem]: ...

    def replace(self, **changes: Any) -> "TunedSettings": ...

    def to_dict(self) -> dict[str, Any]: ...

    def search_seed(self, study_seed: int, cell_id: str, levels: Mapping[str, Any], index: int) -> int: ...

    def search_phase(self, study: Any, plan: Any, recorder: Any, to_run: Sequence[Any], **options: Any) -> Any:
        """Select each cell's configuration for ``to_run`` (called by the runner, which cannot import the tuning layer)."""
        ...


class Study:
    """A validated, frozen study definition. See the module docstring for an example.

    Args:
        name: the study's name (letters, digits, ``_`` and ``-``); names the MLflow experiment.
        description: one paragraph: the question the study answers.
        workload: a built-in workload name (``two_layer_linear``, ``digits``,
            ``teacher_student``, ``synthetic``) or ``"package.module:function"``.
        factors: the factors, as :class:`Factor` objects or a mapping name -> levels.
        params: fixed parameters passed to every trial.
        replicates: replicates per cell.
        seed_streams: seed stream name -> ``"replicate"`` (a new seed every replicate),
            ``"fixed"`` (one seed for the whole study) or an int k (k seeds crossed with the
            replicates and with the other crossed streams, so its variance is separable).
            A list of names means ``"replicate"`` for each. Default: init, data and
            reduction all ``"replicate"``.
        seed_scope: ``"shared"`` (default): replicate r of every cell gets the same seeds
            (common random numbers); ``"cell"``: seeds drawn independently per cell.
        metrics: response metrics, as :class:`Metric` objects or a mapping name -> goal.
        resources: per-trial :class:`~orchestrator.design.trial.Resources` or a mapping.
        retries: how often a trial that raises is tried again.
        design: :class:`FullFactorial` (default), :class:`Fractional` or :class:`PlackettBurman`.
        exclude: constraints: each a mapping factor -> level (or list of levels); a cell
            matching every entry of one mapping is left out of the design.
        seed: the study seed, from which every trial seed is derived.
        variants: name -> :class:`Variant`; ``smoke`` and ``full`` are required.
        run_order: ``"randomized"`` (seeded by ``seed``) or ``"standard"``.
        block_by: a factor whose levels form blocks, run one after the other, randomised within.
        refuse_unrepresentable: leave out cells whose hyperparameters change meaning in
            their precision (see :mod:`orchestrator.numerics.audit`).
        analysis: defaults for ``orchestrator analyze``/``report``/``writeup``: ``metric``
            (default: the first metric), ``log`` (analyse log(response), for losses),
            ``spread_by`` (a factor), ``interactions`` (highest order, default 2),
            ``ranking`` (a factor whose levels are ranked under resampling of seeds).
        tuning: tuned settings (:class:`orchestrator.tuning.Tuning`): each cell searches
            them on Ray Tune and its trials are the reruns of the selected configuration
            (``replicates`` is then ``tuning.reruns``; the ``search`` seed stream has
            ``tuning.searches`` crossed seeds). See docs/studies.md, "Tuned settings".
    """

    _frozen = False

    def __init__(
        self,
        *,
        name: str | None = None,
        description: str | None = None,
        workload: str | None = None,
        factors: Sequence[Factor] | Mapping[str, Sequence[Any]] | None = None,
        params: Mapping[str, Any] | None = None,
        replicates: int | None = None,
        seed_streams: Mapping[str, StreamPolicy | str | int] | Sequence[str] | None = None,
        seed_scope: SeedScope | str | None = None,
        metrics: Sequence[Metric | str] | Mapping[str, Goal | str] | str | None = None,
        resources: Resources | Mapping[str, Any] | None = None,
        retries: int | None = None,
        design: DesignSpec | None = None,
        exclude: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None = None,
        seed: int | None = None,
        variants: Mapping[str, Variant] | None = None,
        run_order: RunOrder | str | None = None,
        block_by: str | None = None,
        refuse_unrepresentable: bool | None = None,
        analysis: Mapping[str, Any] | None = None,
        tuning: "TunedSettings | None" = None,
        **unknown: Any,
    ):
        given: dict[str, Any] = dict(
            name=name, description=description, workload=workload, factors=factors, params=params, replicates=replicates,
            seed_streams=seed_streams, seed_scope=seed_scope, metrics=metrics, resources=resources, retries=retries, design=design,
            exclude=exclude, seed=seed, variants=variants, run_order=run_order, block_by=block_by,
            refuse_unrepresentable=refuse_unrepresentable, analysis=analysis, tuning=tuning,
        )
        problems: list[Problem] = []
        for key in unknown:
            problems.append(Problem(key, "a Study field", f"unknown field {key!r}", did_you_mean(key, _STUDY_FIELDS)))
        values: dict[str, Any] = {key: given[key] for key in _STUDY_FIELDS}
        self.variant: str | None = None
        self.source_file: str | None = None
        self._raw: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        self._assign(values, problems)
        if problems:
            raise StudyError(problems, study=self.name if isinstance(self.name, str) else None)
        self._frozen = True

    # -- construction ---------------------------------------------------------------------
    def _assign(self, v: dict[str, Any], problems: list[Problem]) -> None:
        self.name = v["name"]
        if not isinstance(self.name, str) or not _NAME.match(self.name or ""):
            problems.append(
                Problem("name", "a name of letters, digits, '_' and '-' starting with a letter", _describe(self.name), "e.g. name='adam_precision'")
            )
        self.description = v["description"] or ""
        if not isinstance(self.description, str):
            problems.append(Problem("description", "a string", _describe(self.description)))

        self.workload = v["workload"]
        if self.workload is None:
            problems.append(Problem("workload", "a built-in workload name or 'package.module:function'", "nothing", "Set workload='synthetic' or another built-in."))
        else:
            problem = check_reference(self.workload)
            if problem:
                problems.append(Problem("workload", problem.split(", found")[0], problem.split(", found ", 1)[-1]))

        self.factors = self._factors(v["factors"], problems)
        self.params = self._params(v["params"], problems)
        self.replicates = self._positive_int("replicates", 1 if v["replicates"] is None else v["replicates"], problems)
        self.seed_streams = self._streams("seed_streams", v["seed_streams"], problems)
        self.tuning = self._tuning(v["tuning"], v["replicates"], problems)
        scope = v["seed_scope"] or SeedScope.SHARED
        self.seed_scope = SeedScope(scope) if scope in _SEED_SCOPES else SeedScope.SHARED
        if scope not in _SEED_SCOPES:
            problems.append(Problem("seed_scope", " or ".join(map(repr, _SEED_SCOPES)), _describe(scope), did_you_mean(str(scope), _SEED_SCOPES)))
        self.metrics = self._metrics(v["metrics"], problems)
        self.resources = self._resources(v["resources"], problems)
        self.retries = self._count("retries", 0 if v["retries"] is None else v["retries"], problems)
        self.design = self._design(v["design"], problems)
        self.exclude = self._exclude(v["exclude"], problems)
        self.seed = 0 if v["seed"] is None else v["seed"]
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            problems.append(Problem("seed", "a non-negative integer", _describe(self.seed), "e.g. seed=20261126"))
        order = v["run_order"] or RunOrder.RANDOMIZED
        self.run_order = RunOrder(order) if order in _RUN_ORDERS else RunOrder.RANDOMIZED
        if order not in _RUN_ORDERS:
            problems.append(Problem("run_order", " or ".join(map(repr, _RUN_ORDERS)), _describe(order), did_you_mean(str(order), _RUN_ORDERS)))
        self.block_by = v["block_by"]
        names = [f.name for f in self.factors]
        if self.block_by is not None and self.block_by not in names:
            problems.append(Problem("block_by", "the name of a factor", _describe(self.block_by), did_you_mean(str(self.block_by), names)))
        self.refuse_unrepresentable = bool(v["refuse_unrepresentable"])
        self._known_levels(problems)
        self.analysis = self._analysis(v["analysis"], problems)
        self.variants = self._variants(v["variants"], problems)

    def _factors(self, raw: Any, problems: list[Problem]) -> tuple[Factor, ...]:
        if isinstance(raw, Mapping):
            raw = [Factor(name, levels) for name, levels in raw.items()]
        if not isinstance(raw, (list, tuple)) or not raw:
            problems.append(Problem("factors", "a non-empty list of Factor(name, levels) or a mapping name -> levels", _describe(raw)))
            return ()
        factors: list[Factor] = []
        seen: set[str] = set()
        for i, factor in enumerate(raw):
            where = f"factors[{i}]"
            if not isinstance(factor, Factor):
                problems.append(Problem(where, "a Factor(name, levels)", _describe(factor)))
                continue
            for key in factor.unknown:
                problems.append(Problem(f"{where}.{key}", "a Factor argument", f"unknown argument {key!r}", did_you_mean(key, Factor._fields)))
            if not isinstance(factor.name, str) or not _IDENT.match(factor.name):
                problems.append(Problem(f"{where}.name", "a Python identifier (letters, digits, '_')", _describe(factor.name), "e.g. Factor('learning_rate', [...])"))
                continue
            where = f"factors[{factor.name!r}]"
            if factor.name in seen:
                problems.append(Problem(where, "each factor declared once", f"a second factor named {factor.name!r}", "Merge their levels into one Factor."))
                continue
            seen.add(factor.name)
            if factor.name in ("trial_id", "cell_id", "replicate", "state") or factor.name.startswith("seed_"):
                problems.append(Problem(f"{where}.name", "a name not reserved by the records", repr(factor.name), "Rename the factor."))
            if factor.nested_in is not None:
                self._nested(factor, where, factors, problems)
            else:
                self._levels(factor.levels, f"{where}.levels", problems)
            factors.append(factor)
        return tuple(factors)

    @staticmethod
    def _levels(levels: Any, where: str, problems: list[Problem]) -> None:
        if isinstance(levels, Mapping):
            problems.append(Problem(where, "a list of levels", "a mapping", "A mapping of levels per parent level needs nested_in='parent'."))
            return
        if not isinstance(levels, (list, tuple)) or not levels:
            problems.append(Problem(where, "a non-empty list of levels", _describe(levels)))
            return
        for j, level in enumerate(levels):
            if not isinstance(level, (str, int, float, bool)):
                problems.append(Problem(f"{where}[{j}]", "a string, number or boolean", _describe(level)))
            elif isinstance(level, float) and not math.isfinite(level):
                problems.append(Problem(f"{where}[{j}]", "a finite number", repr(level)))
        keys = [canonical_json(l) for l in levels if isinstance(l, (str, int, float, bool))]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            problems.append(Problem(where, "distinct levels", f"repeated level(s) {', '.join(duplicates)}", "List each level once; use replicates for repeats."))

    def _nested(self, factor: Factor, where: str, before: list[Factor], problems: list[Problem]) -> None:
        parents = {f.name: f for f in before}
        parent = parents.get(factor.nested_in or "")
        if parent is None:
            problems.append(
                Problem(f"{where}.nested_in", "a factor declared before this one", _describe(factor.nested_in), did_you_mean(str(factor.nested_in), parents))
            )
            return
        if not isinstance(factor.levels, Mapping):
            problems.append(Problem(f"{where}.levels", f"a mapping from each level of {parent.name!r} to a list of levels", _describe(factor.levels)))
            return
        parent_levels = {str(l) for l in parent.all_levels}
        for key, values in factor.levels.items():
            if str(key) not in parent_levels:
                problems.append(
                    Problem(f"{where}.levels[{key!r}]", f"a level of {parent.name!r}", repr(key), did_you_mean(str(key), parent_levels))
                )
            self._levels(values, f"{where}.levels[{key!r}]", problems)
        missing = sorted(parent_levels - {str(k) for k in factor.levels})
        if missing:
            problems.append(Problem(f"{where}.levels", f"levels for every level of {parent.name!r}", f"none for {', '.join(missing)}", "Add a list for each."))

    def _params(self, raw: Any, problems: list[Problem]) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            problems.append(Problem("params", "a mapping name -> value", _describe(raw)))
            return {}
        params = dict(raw)
        for key, value in params.items():
            try:
                canonical_json(value)
            except (TypeError, ValueError) as exc:
                problems.append(Problem(f"params[{key!r}]", "JSON-like data (str, number, bool, list, dict)", _describe(value), str(exc)))
        for factor in self.factors:
            if factor.name in params:
                problems.append(
                    Problem(f"params[{factor.name!r}]", "a parameter that is not also a factor", f"{factor.name!r} is both", "Keep it as a factor or as a fixed parameter, not both.")
                )
        return params

    @staticmethod
    def _positive_int(field: str, value: Any, problems: list[Problem]) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.append(Problem(field, "an integer >= 1", _describe(value)))
            return 1
        return value

    @staticmethod
    def _count(field: str, value: Any, problems: list[Problem]) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            problems.append(Problem(field, "an integer >= 0", _describe(value)))
            return 0
        return value

    def _tuning(self, raw: Any, replicates: Any, problems: list[Problem]) -> "TunedSettings | None":
        """The tuned settings, validated against the factors and workload; their reruns are the
        replicates and their searches the crossed ``search`` seed stream."""
        if raw is None:
            return None
        if not isinstance(raw, TunedSettings):
            problems.append(Problem("tuning", "Tuning(space=..., select=..., budget=..., ...) from orchestrator.tuning", _describe(raw)))
            return None
        problems.extend(raw.problems({f.name: f.all_levels for f in self.factors}, str(self.workload), params=self.params))
        if replicates is not None and replicates != raw.reruns:
            problems.append(
                Problem("replicates", f"no replicates in a tuned study (its trials are the {raw.reruns} reruns of each search's selection)", _describe(replicates), f"Set tuning=Tuning(..., reruns={replicates}) instead.")
            )
        if "search" in self.seed_streams:
            problems.append(Problem("seed_streams['search']", "no stream named 'search' in a tuned study (the tuning owns it)", repr(self.seed_streams["search"]), "Set tuning=Tuning(..., searches=k) instead."))
        if isinstance(raw.reruns, int) and not isinstance(raw.reruns, bool) and raw.reruns >= 1:
            self.replicates = raw.reruns
        if isinstance(raw.searches, int) and not isinstance(raw.searches, bool) and raw.searches >= 1:
            self.seed_streams = {"search": raw.searches, **{k: p for k, p in self.seed_streams.items() if k != "search"}}
        return raw

    def _variant_tuning(self, where: str, changes: Mapping[str, Any], problems: list[Problem]) -> None:
        """A variant's tuning changes: on a tuned study, known fields, and a valid result."""
        import dataclasses

        if self.tuning is None:
            problems.append(Problem(f"{where}.tuning", "tuning changes only in a tuned study", f"{sorted(changes)}", "Declare tuning=Tuning(...) on the study, or drop tuning= from the variant."))
            return
        names = [f.name for f in dataclasses.fields(self.tuning)]  # type: ignore[arg-type]
        unknown = [k for k in changes if k not in names]
        for key in unknown:
            problems.append(Problem(f"{where}.tuning", "fields of Tuning", f"unknown field {key!r}", did_you_mean(str(key), names)))
        if not unknown:
            factors = {f.name: f.all_levels for f in self.factors}
            for problem in self.tuning.replace(**changes).problems(factors, str(self.workload), where=f"{where}.tuning"):
                if not problem.field.startswith(f"{where}.tuning.space"):  # the variant's levels may drop levels: checked when resolved
                    problems.append(problem)

    @staticmethod
    def _streams(field: str, raw: Any, problems: list[Problem]) -> dict[str, StreamPolicy | int]:
        if raw is None:
            return {s: StreamPolicy.REPLICATE for s in STANDARD_STREAMS}
        if isinstance(raw, (list, tuple)):
            raw = {s: StreamPolicy.REPLICATE for s in raw}
        if not isinstance(raw, Mapping) or not raw:
            problems.append(Problem(field, "a mapping stream -> 'replicate' | 'fixed' | int, or a list of stream names", _describe(raw)))
            return {}
        streams: dict[str, StreamPolicy | int] = {}
        for name, policy in raw.items():
            if not isinstance(name, str) or not _IDENT.match(name):
                problems.append(Problem(f"{field}[{name!r}]", "a stream name (identifier)", _describe(name)))
                continue
            ok = policy in _STREAM_POLICIES or (isinstance(policy, int) and not isinstance(policy, bool) and policy >= 1)
            if not ok:
                hint = did_you_mean(str(policy), _STREAM_POLICIES) if isinstance(policy, str) else "Use an integer >= 1 for a crossed stream."
                problems.append(Problem(f"{field}[{name!r}]", "'replicate', 'fixed' or an integer >= 1", _describe(policy), hint))
                continue
            streams[name] = policy if isinstance(policy, int) else StreamPolicy(policy)
        return streams

    @staticmethod
    def _metrics(raw: Any, problems: list[Problem]) -> tuple[Metric, ...]:
        if isinstance(raw, str):
            raw = [Metric(raw)]
        if isinstance(raw, Mapping):
            raw = [Metric(name, goal) for name, goal in raw.items()]
        if not isinstance(raw, (list, tuple)) or not raw:
            problems.append(Problem("metrics", "at least one Metric(name, goal) or a mapping name -> 'minimize'|'maximize'", _describe(raw)))
            return ()
        metrics: list[Metric] = []
        goals = [g.value for g in Goal]
        for i, metric in enumerate(raw):
            if isinstance(metric, str):
                metric = Metric(metric)
            if not isinstance(metric, Metric):
                problems.append(Problem(f"metrics[{i}]", "a Metric(name, goal)", _describe(metric)))
                continue
            for key in metric.unknown:
                problems.append(Problem(f"metrics[{i}].{key}", "a Metric argument", f"unknown argument {key!r}", did_you_mean(key, Metric._fields)))
            if not isinstance(metric.name, str) or not metric.name:
                problems.append(Problem(f"metrics[{i}].name", "a metric name", _describe(metric.name)))
                continue
            goal = metric.goal.value if isinstance(metric.goal, Goal) else metric.goal
            if goal not in goals:
                problems.append(Problem(f"metrics[{metric.name!r}].goal", "'minimize' or 'maximize'", _describe(metric.goal), did_you_mean(str(goal), goals)))
                continue
            metrics.append(metric if isinstance(metric.goal, Goal) else Metric(metric.name, Goal(goal)))
        return tuple(metrics)

    @staticmethod
    def _resources(raw: Any, problems: list[Problem]) -> Resources:
        if raw is None:
            return Resources()
        if isinstance(raw, Resources):
            raw = raw.to_dict()
        if not isinstance(raw, Mapping):
            problems.append(Problem("resources", "Resources(cpus=..., gpus=...) or a mapping", _describe(raw)))
            return Resources()
        known = ("cpus", "gpus", "memory_mb", "custom", "gpu_memory_gb")
        for key in raw:
            if key not in known:
                problems.append(Problem(f"resources.{key}", "cpus, gpus, memory_mb, custom or gpu_memory_gb", f"unknown key {key!r}", did_you_mean(key, known)))
        cpus, gpus = raw.get("cpus", 1.0), raw.get("gpus", 0.0)
        if not _is_number(cpus) or cpus <= 0:
            problems.append(Problem("resources.cpus", "a number > 0 (fractions allowed)", _describe(cpus)))
            cpus = 1.0
        if not _is_number(gpus) or gpus < 0 or (gpus > 1 and gpus != int(gpus)):
            problems.append(
                Problem("resources.gpus", "0, a fraction below 1 (several trials share a GPU) or a whole number", _describe(gpus), "e.g. gpus=0.25 or gpus=2")
            )
            gpus = 0.0
        custom = raw.get("custom") or {}
        if not isinstance(custom, Mapping) or not all(isinstance(k, str) and _is_number(v) and v >= 0 for k, v in custom.items()):
            problems.append(Problem("resources.custom", "a mapping resource name -> amount >= 0", _describe(custom)))
            custom = {}
        if "gpu_memory_gb" in custom:
            problems.append(Problem("resources.custom", "custom resources other than gpu_memory_gb", "'gpu_memory_gb' among them",
                                    "Ask for GPU memory with resources={'gpus': 1, 'gpu_memory_gb': 20}: the worker then also checks it is free"))
        gpu_memory = raw.get("gpu_memory_gb")
        if gpu_memory is not None:
            if not _is_number(gpu_memory) or gpu_memory <= 0:
                problems.append(Problem("resources.gpu_memory_gb", "a number of GB > 0 that must be free on each GPU of a trial", _describe(gpu_memory), "e.g. gpu_memory_gb=20"))
                gpu_memory = None
            elif not gpus:
                problems.append(Problem("resources.gpu_memory_gb", "gpus > 0 beside it (GPU memory is asked of the trial's GPUs)",
                                        f"gpu_memory_gb={gpu_memory:g} with gpus={gpus!r}", f"Add gpus, e.g. resources={{'gpus': 1, 'gpu_memory_gb': {gpu_memory:g}}}"))
        return Resources(cpus=float(cpus), gpus=float(gpus), memory_mb=raw.get("memory_mb"), custom=dict(custom),
                         gpu_memory_gb=float(gpu_memory) if gpu_memory is not None else None)

    def _design(self, raw: Any, problems: list[Problem]) -> FullFactorial | Fractional | PlackettBurman:
        if raw is None:
            return FullFactorial()
        if not isinstance(raw, (FullFactorial, Fractional, PlackettBurman)):
            problems.append(Problem("design", "FullFactorial(), Fractional(...) or PlackettBurman(...)", _describe(raw)))
            return FullFactorial()
        for key in raw.unknown:
            problems.append(Problem(f"design.{key}", f"a {type(raw).__name__} argument", f"unknown argument {key!r}", did_you_mean(key, raw._fields)))
        if isinstance(raw, (Fractional, PlackettBurman)):
            for factor in self.factors:
                if factor.nested_in is not None or len(factor.all_levels) != 2:
                    problems.append(
                        Problem(
                            f"factors[{factor.name!r}]",
                            f"exactly two levels and no nesting in a {type(raw).__name__} design",
                            f"{len(factor.all_levels)} level(s)" + (" (nested)" if factor.nested_in else ""),
                            "Use FullFactorial() or give this factor two levels.",
                        )
                    )
            if not any(p.field.startswith("factors") for p in problems):
                problems.extend(check_design(raw, len(self.factors)))
        return raw

    def _exclude(self, raw: Any, problems: list[Problem]) -> tuple[dict[str, tuple[Any, ...]], ...]:
        if raw is None:
            return ()
        if isinstance(raw, Mapping):
            raw = [raw]
        if not isinstance(raw, (list, tuple)):
            problems.append(Problem("exclude", "a list of mappings factor -> level(s)", _describe(raw)))
            return ()
        by_name = {f.name: f for f in self.factors}
        rules: list[dict[str, tuple[Any, ...]]] = []
        for i, rule in enumerate(raw):
            if not isinstance(rule, Mapping) or not rule:
                problems.append(Problem(f"exclude[{i}]", "a non-empty mapping factor -> level or list of levels", _describe(rule)))
                continue
            clean: dict[str, tuple[Any, ...]] = {}
            for name, wanted in rule.items():
                factor = by_name.get(name)
                if factor is None:
                    problems.append(Problem(f"exclude[{i}]", "factor names", f"unknown factor {name!r}", did_you_mean(str(name), by_name)))
                    continue
                wanted = tuple(wanted) if isinstance(wanted, (list, tuple)) else (wanted,)
                known = [canonical_json(l) for l in factor.all_levels]
                for level in wanted:
                    if not isinstance(level, (str, int, float, bool)) or canonical_json(level) not in known:
                        problems.append(
                            Problem(
                                f"exclude[{i}][{name!r}]",
                                f"a level of {name!r}",
                                _describe(level),
                                did_you_mean(str(level), [str(l) for l in factor.all_levels]),
                            )
                        )
                clean[name] = wanted
            rules.append(clean)
        return tuple(rules)

    def _known_levels(self, problems: list[Problem]) -> None:
        """Levels of the numerics factors must be names the built-in workloads know."""
        if self.workload not in LEVELLED_WORKLOADS:
            return
        known = LEVELS
        for factor in self.factors:
            if factor.name in known:
                for level in factor.all_levels:
                    if str(level) not in known[factor.name]:
                        problems.append(
                            Problem(f"factors[{factor.name!r}].levels", f"a {factor.name} the built-in workloads know".replace("a optimizer", "an optimizer"), repr(level), did_you_mean(str(level), known[factor.name]))
                        )
        for name, value in self.params.items():
            if name in known and str(value) not in known[name]:
                problems.append(Problem(f"params[{name!r}]", f"a {name} the built-in workloads know".replace("a optimizer", "an optimizer"), repr(value), did_you_mean(str(value), known[name])))

    def _analysis(self, raw: Any, problems: list[Problem]) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            problems.append(Problem("analysis", f"a mapping with keys from {', '.join(_ANALYSIS_KEYS)}", _describe(raw)))
            return {}
        for key in raw:
            if key not in _ANALYSIS_KEYS:
                problems.append(Problem(f"analysis.{key}", f"one of {', '.join(_ANALYSIS_KEYS)}", f"unknown key {key!r}", did_you_mean(str(key), _ANALYSIS_KEYS)))
        metric = raw.get("metric")
        names = [m.name for m in self.metrics]
        if metric is not None and metric not in names:
            problems.append(Problem("analysis.metric", "one of the study's metrics", _describe(metric), did_you_mean(str(metric), names)))
        spread_by = raw.get("spread_by")
        if spread_by is not None and spread_by not in self.factor_names:
            problems.append(Problem("analysis.spread_by", "the name of a factor", _describe(spread_by), did_you_mean(str(spread_by), self.factor_names)))
        ranking = raw.get("ranking")  # a factor whose levels are ranked (orchestrator.analysis.ranking)
        if ranking is not None and ranking not in self.factor_names:
            problems.append(Problem("analysis.ranking", "the name of a factor whose levels are ranked", _describe(ranking), did_you_mean(str(ranking), self.factor_names)))
        interactions = raw.get("interactions", 2)
        if not isinstance(interactions, int) or isinstance(interactions, bool) or interactions < 1:
            problems.append(Problem("analysis.interactions", "an integer >= 1", _describe(interactions)))
        return dict(raw)

    def _variants(self, raw: Any, problems: list[Problem]) -> dict[str, Variant]:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            problems.append(Problem("variants", "a mapping name -> Variant(...)", _describe(raw)))
            return {}
        missing = [v for v in REQUIRED_VARIANTS if v not in raw]
        if missing:
            problems.append(
                Problem(
                    "variants",
                    "at least the variants 'smoke' (small enough for CI) and 'full'",
                    f"{sorted(raw) or 'none'}",
                    f"Add {', '.join(f'{m!r}: Variant(...)' for m in missing)}.",
                )
            )
        by_name = {f.name: f for f in self.factors}
        variants: dict[str, Variant] = {}
        for name, variant in raw.items():
            where = f"variants[{name!r}]"
            if not isinstance(variant, Variant):
                problems.append(Problem(where, "a Variant(...)", _describe(variant)))
                continue
            for key in variant.unknown:
                problems.append(Problem(f"{where}.{key}", "a Variant argument", f"unknown argument {key!r}", did_you_mean(key, Variant._fields)))
            if variant.replicates is not None:
                self._positive_int(f"{where}.replicates", variant.replicates, problems)
            if variant.tuning:
                self._variant_tuning(where, variant.tuning, problems)
            for factor_name, levels in variant.levels.items():
                factor = by_name.get(factor_name)
                if factor is None:
                    problems.append(Problem(f"{where}.levels", "factor names", f"unknown factor {factor_name!r}", did_you_mean(str(factor_name), by_name)))
                elif factor.nested_in is None:
                    self._levels(levels, f"{where}.levels[{factor_name!r}]", problems)
            for key in variant.params:
                if key in by_name:
                    problems.append(
                        Problem(f"{where}.params[{key!r}]", "a fixed parameter", f"{key!r} is a factor", f"Override its levels with levels={{{key!r}: [...]}}.")
                    )
            if variant.seed_streams is not None:
                self._streams(f"{where}.seed_streams", variant.seed_streams, problems)
            variants[name] = variant
        return variants

    # -- use -------------------------------------------------------------------------------
    def __setattr__(self, key: str, value: Any) -> None:
        if self._frozen:
            raise AttributeError(f"a Study is frozen; build a new one (study.with_variant(...) or Study(...)) instead of setting {key!r}")
        super().__setattr__(key, value)

    def __repr__(self) -> str:
        return f"Study(name={self.name!r}, variant={self.variant!r}, factors={[f.name for f in self.factors]})"

    @property
    def factor_names(self) -> list[str]:
        return [f.name for f in self.factors]

    def factor(self, name: str) -> Factor:
        """The factor called ``name``; a clear KeyError with a suggestion otherwise."""
        for factor in self.factors:
            if factor.name == name:
                return factor
        raise KeyError(f"study {self.name!r} has no factor {name!r}. {did_you_mean(name, self.factor_names)}")

    @property
    def primary_metric(self) -> Metric:
        return self.metrics[0]

    def with_variant(self, name: str | None) -> "Study":
        """A new Study with the named variant's overrides applied (``None``: ``full``)."""
        name = name or "full"
        if name not in self.variants:
            raise StudyError(
                [Problem("variant", "one of the study's variants", repr(name), did_you_mean(name, self.variants))], study=self.name, source=self.source_file
            )
        variant = self.variants[name]
        raw = dict(self._raw)
        if variant.replicates is not None:
            raw["replicates"] = variant.replicates
        if variant.params:
            raw["params"] = {**(raw.get("params") or {}), **variant.params}
        if variant.seed_streams is not None:
            raw["seed_streams"] = variant.seed_streams
        if variant.levels:
            raw["factors"] = [
                Factor(f.name, variant.levels.get(f.name, f.levels), nested_in=f.nested_in, random=f.random) for f in self.factors
            ]
        if variant.tuning and self.tuning is not None:
            raw["tuning"] = self.tuning.replace(**variant.tuning)
        resolved = Study(**raw)
        object.__setattr__(resolved, "_frozen", False)
        resolved.variant = name
        resolved.source_file = self.source_file
        resolved._frozen = True
        return resolved

    def with_params(self, overrides: Mapping[str, Any]) -> "Study":
        """A new Study (same variant) whose fixed parameters are updated by ``overrides`` (this changes trial ids)."""
        raw = dict(self._raw)
        raw["params"] = {**(raw.get("params") or {}), **dict(overrides)}
        resolved = Study(**raw)
        object.__setattr__(resolved, "source_file", self.source_file)
        return resolved.with_variant(self.variant)

    def to_dict(self) -> dict[str, Any]:
        """The study as JSON-like data (what its definition hash is computed from)."""
        return {
            "name": self.name,
            "variant": self.variant,
            "description": self.description,
            "workload": self.workload,
            "factors": [f.to_dict() for f in self.factors],
            "params": self.params,
            "replicates": self.replicates,
            "seed_streams": {name: policy if isinstance(policy, int) else policy.value for name, policy in self.seed_streams.items()},
            "seed_scope": self.seed_scope.value,
            "metrics": [m.to_dict() for m in self.metrics],
            "resources": self.resources.to_dict(),
            "retries": self.retries,
            "design": self.design.to_dict(),
            "exclude": [{k: list(v) for k, v in rule.items()} for rule in self.exclude],
            "seed": self.seed,
            "run_order": self.run_order.value,
            "block_by": self.block_by,
            "refuse_unrepresentable": self.refuse_unrepresentable,
            "analysis": self.analysis,
            **({"tuning": self.tuning.to_dict()} if self.tuning is not None else {}),
        }

    @property
    def definition_hash(self) -> str:
        """A content hash of the resolved definition (tags every MLflow run)."""
        return content_hash(self.to_dict())
