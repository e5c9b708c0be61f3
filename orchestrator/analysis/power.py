"""How many replicates are needed to detect an effect of a given size."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from scipy import stats

from orchestrator.analysis.errors import AnalysisError

if TYPE_CHECKING:
    from orchestrator.analysis.core import AnalysisResult

__all__ = ["ReplicatePlan", "plan_replicates", "plan_from_result", "main_effect_power"]


@dataclass(frozen=True)
class ReplicatePlan:
    """Replicates per cell for each fixed factor's main effect.

    ``noise_variance`` is the residual variance plus every random component: the
    orchestrator derives fresh seeds per trial, so seed-stream variance is noise for a
    comparison of cells.
    """

    effect_size: float
    power: float
    alpha: float
    noise_variance: float
    cells: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    assumption: str = ("smallest configuration: two levels of the factor differ by effect_size, the others sit "
                       "midway; balanced full factorial of all cells; two-sided F test of the main effect")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        lines = [f"Replicates per cell to detect a difference of {self.effect_size:g} between two levels "
                 f"(power {self.power:g}, alpha {self.alpha:g}, noise SD {math.sqrt(self.noise_variance):.4g}):"]
        for r in self.rows:
            lines.append(f"  {r['term']:<20} {r['replicates_per_cell']:>6} per cell "
                         f"({r['trials']} trials, power {r['achieved_power']:.3f})")
        return "\n".join(lines)


def main_effect_power(replicates: int, levels: int, cells: int, effect_size: float, noise_variance: float,
                      alpha: float = 0.05) -> float:
    """Power of the F test of a main effect with ``levels`` levels, ``replicates`` per cell."""
    n_per_level = replicates * cells / levels
    nc = n_per_level * effect_size**2 / 2.0 / noise_variance
    df1, df2 = levels - 1, cells * replicates - cells
    if df2 <= 0:
        return 0.0
    crit = stats.f.isf(alpha, df1, df2)
    return float(stats.ncf.sf(crit, df1, df2, nc))


def plan_replicates(residual_variance: float, effect_size: float, levels: Mapping[str, int],
                    components: Mapping[str, float] | None = None, power: float = 0.8, alpha: float = 0.05,
                    max_replicates: int = 100_000) -> ReplicatePlan:
    """Replicates per cell needed to detect ``effect_size`` in each factor's main effect.

    Args:
        residual_variance: residual variance, e.g. from a pilot ``analyze``.
        effect_size: smallest difference between two levels worth detecting, in response
            units (log units when the analysis used ``log=True``).
        levels: number of levels of each fixed factor of the planned full factorial.
        components: random-component variances, added to the noise.
        power: wanted probability of detecting the effect.
        alpha: significance level.
        max_replicates: give up above this many.

    Example:
        >>> plan = plan_replicates(1.0, 1.0, {"dtype": 2})
        >>> plan.rows[0]["replicates_per_cell"]
        17
    """
    problems = []
    if not (residual_variance > 0 and math.isfinite(residual_variance)):
        problems.append(f"residual_variance must be a positive number, found {residual_variance!r}; "
                        "run a pilot with replicates to estimate it")
    if not (effect_size > 0 and math.isfinite(effect_size)):
        problems.append(f"effect_size must be a positive difference in response units, found {effect_size!r}")
    if not 0 < power < 1:
        problems.append(f"power must be between 0 and 1, found {power!r}")
    if not 0 < alpha < 1:
        problems.append(f"alpha must be between 0 and 1, found {alpha!r}")
    if not levels or any(int(v) < 2 for v in levels.values()):
        problems.append(f"levels must give each factor 2 or more levels, found {dict(levels)!r}")
    if problems:
        raise AnalysisError(problems)
    noise = float(residual_variance) + sum(max(0.0, float(v)) for v in (components or {}).values())
    cells = math.prod(int(v) for v in levels.values())
    rows = []
    for name, a in levels.items():
        lo, hi = 2, 2
        while main_effect_power(hi, int(a), cells, effect_size, noise, alpha) < power:
            lo, hi = hi, hi * 2
            if hi > max_replicates:
                break
        if hi > max_replicates:
            rows.append({"term": name, "levels": int(a), "replicates_per_cell": None, "trials": None,
                         "achieved_power": None, "note": f"more than {max_replicates} replicates per cell"})
            continue
        while lo < hi:
            mid = (lo + hi) // 2
            if main_effect_power(mid, int(a), cells, effect_size, noise, alpha) >= power:
                hi = mid
            else:
                lo = mid + 1
        rows.append({"term": name, "levels": int(a), "replicates_per_cell": hi, "trials": hi * cells,
                     "achieved_power": main_effect_power(hi, int(a), cells, effect_size, noise, alpha)})
    return ReplicatePlan(effect_size=float(effect_size), power=power, alpha=alpha, noise_variance=noise, cells=cells,
                         rows=rows)


def plan_from_result(result: "AnalysisResult", effect_size: float, power: float = 0.8,
                     alpha: float = 0.05) -> ReplicatePlan:
    """``plan_replicates`` with the variances and levels observed in ``result`` (a pilot)."""
    vc = {r["component"]: r["variance"] for r in result.variance_components}
    residual = vc.pop("Residual", None)
    if residual is None:
        raise AnalysisError("the analysis has no residual variance (no replicates, constant response or no analysed "
                            "trials), so replicates cannot be planned from it. Run a pilot with 2+ replicates per cell.")
    levels = {f: len(info["levels"]) for f, info in result.factors.items() if info["kind"] == "fixed"}
    if not levels:
        raise AnalysisError("the analysis has no fixed factor with 2+ levels; there is no effect to plan for.")
    return plan_replicates(residual, effect_size, levels, components=vc, power=power, alpha=alpha)
