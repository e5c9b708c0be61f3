"""Ranking stability: how often one level of a factor beats another when the seeds are redrawn.

For a tuned study (optimizer x model x budget, each cell searched with several search seeds
and its selected configuration rerun with several rerun seeds), the ranking of optimizers
is itself a random outcome. For each pair of levels ``a``, ``b`` of the ranked factor and
each group (e.g. model x budget) this module reports

* ``p_single``: the probability that one run of ``a`` beats one run of ``b``, each drawn
  at random over its search seeds and rerun seeds (every pair of runs counted; ties count
  one half) - the "probability of improvement" of Agarwal et al. (2021), *Deep
  Reinforcement Learning at the Edge of the Statistical Precipice*, NeurIPS;
* ``p_mean``: the probability that ``a``'s mean beats ``b``'s when the study is redone
  with other seeds, estimated by a two-stage bootstrap (search seeds drawn with
  replacement, then rerun seeds within each drawn search) - as in the re-examinations of
  optimizer comparisons (Choi et al. 2019; Sivaprasad et al. 2020);
* the mean rank of each level over the bootstrap replicates (1 = best) and how often it
  ranks first, for the plot of rank against budget.

Only numpy and pandas; no statsmodels.

Example:
    >>> import pandas as pd
    >>> df = pd.DataFrame({"optimizer": ["a"] * 4 + ["b"] * 4, "budget": 4,
    ...                    "search": [0, 0, 1, 1] * 2, "rerun": [0, 1] * 4,
    ...                    "test_loss": [1.0, 1.1, 1.2, 1.3, 2.0, 2.1, 0.9, 2.3]})
    >>> result = ranking_stability(df, "optimizer", "test_loss", by=["budget"], search="search", rerun="rerun", replicates=200, seed=0)
    >>> float(result.pairs.loc[0, "p_single"])
    0.75
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from .errors import AnalysisError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["RankingStability", "plot_rank_against_budget", "ranking_stability", "study_ranking"]


@dataclass(frozen=True)
class RankingStability:
    """What :func:`ranking_stability` found.

    Attributes:
        pairs: one row per group and ordered pair ``(a, b)``, ``a`` before ``b`` in level
            order: the group columns, ``a``, ``b``, ``mean_a``, ``mean_b``, ``n_a``, ``n_b``,
            ``p_single``, ``p_mean``.
        ranks: one row per group and level: the group columns, ``level``, ``mean``,
            ``rank`` (of the observed means), ``mean_rank`` and ``p_first`` over the bootstrap.
        factor, metric, by, goal, replicates: what was ranked, on what, within which groups.
    """

    pairs: "pd.DataFrame"
    ranks: "pd.DataFrame"
    factor: str
    metric: str
    by: tuple[str, ...]
    goal: str
    replicates: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "factor": self.factor,
            "metric": self.metric,
            "by": list(self.by),
            "goal": self.goal,
            "replicates": self.replicates,
            "pairs": self.pairs.to_dict(orient="records"),
            "ranks": self.ranks.to_dict(orient="records"),
        }

    @property
    def title(self) -> str:
        """The heading a report gives this ranking."""
        return f"Ranking of {self.factor} under resampling of seeds"

    def explanation(self) -> str:
        """What ``p_single`` and ``p_mean`` mean here (one paragraph, shared by the report and the write-up)."""
        better = "lower" if self.goal == "minimize" else "higher"
        return (f"p_single: a run of a beats a run of b (all pairs of search x rerun seeds); p_mean: a's mean beats b's "
                f"when search seeds, then rerun seeds within them, are redrawn ({self.replicates} bootstrap replicates); "
                f"{better} {self.metric} is better.")

    def rows(self, digits: int = 3) -> tuple[list[str], list[list[str]]]:
        """The pairs table as (header, formatted rows)."""
        from ..formatting import fmt_number

        columns = [*self.by, "a", "b", "mean_a", "mean_b", "p_single", "p_mean"]
        return columns, [[fmt_number(v, digits) for v in row] for row in self.pairs[columns].itertuples(index=False)]

    def markdown(self, digits: int = 3) -> str:
        """The pairs as a markdown table (what the report shows)."""
        columns, rows = self.rows(digits)
        lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
        lines += ["| " + " | ".join(cells) + " |" for cells in rows]
        return "\n".join(lines)


def _check(df: "pd.DataFrame", needed: Sequence[str]) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise AnalysisError(
            f"ranking stability: expected columns {', '.join(needed)}, found no {', '.join(map(repr, missing))} "
            f"(columns: {', '.join(map(str, df.columns))}). Name the search and rerun index columns (e.g. seed_index_search, replicate)."
        )


def _level_order(column: "pd.Series", order: Sequence[Any] | None) -> list[Any]:
    """The levels present in ``column``: those of ``order`` first (matched as text too), then the rest as they appear."""
    import pandas as pd

    seen = list(pd.unique(column))
    if not order:
        return seen
    by_text = {str(v): v for v in seen}
    ranked = [by_text[str(lv)] for lv in order if str(lv) in by_text]
    return ranked + [v for v in seen if v not in ranked]


def ranking_stability(
    df: "pd.DataFrame",
    factor: str,
    metric: str,
    *,
    by: Sequence[str] = (),
    search: str = "seed_index_search",
    rerun: str = "replicate",
    goal: str = "minimize",
    replicates: int = 2000,
    seed: int = 0,
    order: Sequence[Any] | None = None,
) -> RankingStability:
    """Pairwise win probabilities and ranks of the levels of ``factor``, per group of ``by``.

    Args:
        df: one row per rerun (finished trials; rows with a missing ``metric`` are dropped).
        factor: the factor whose levels are ranked (e.g. ``optimizer``).
        metric: the response (e.g. ``test_loss``).
        by: the grouping factors (e.g. ``["model", "budget"]``).
        search: the column indexing the search seed of a row.
        rerun: the column indexing the rerun seed of a row (within its search).
        goal: ``minimize`` or ``maximize`` the metric.
        replicates: bootstrap replicates for ``p_mean`` and the ranks.
        seed: seed of the bootstrap.
        order: the levels of ``factor`` in the order the tables list them (a study's declared
            order); default: the order in which they first appear in ``df``.

    Raises:
        AnalysisError: a column is missing, the goal is unknown, or a group has fewer than two levels.
    """
    import numpy as np
    import pandas as pd

    if goal not in ("minimize", "maximize"):
        raise AnalysisError(f"ranking stability: goal: expected 'minimize' or 'maximize', found {goal!r}")
    by = list(by)
    _check(df, [factor, metric, search, rerun, *by])
    data = df[[factor, metric, search, rerun, *by]].dropna(subset=[metric])
    sign = 1.0 if goal == "minimize" else -1.0
    rng = np.random.default_rng(seed)
    pair_rows: list[dict[str, Any]] = []
    rank_rows: list[dict[str, Any]] = []
    groups = data.groupby(by, sort=True) if by else [((), data)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        labels = dict(zip(by, key))
        present = set(group[factor])
        levels = [lv for lv in _level_order(df[factor], order) if lv in present]
        if len(levels) < 2:
            raise AnalysisError(f"ranking stability: group {labels or 'all'} has {len(levels)} level(s) of {factor!r} with a finite {metric!r}; expected at least two to rank")
        # per level: a list of arrays, one per search seed, of the rerun values (signed: lower is better)
        nested = {lv: [sign * g[metric].to_numpy(dtype=float) for _, g in group[group[factor] == lv].groupby(search, sort=True)] for lv in levels}
        boot = np.empty((replicates, len(levels)))
        for j, lv in enumerate(levels):
            searches = nested[lv]
            picks = rng.integers(0, len(searches), size=(replicates, len(searches)))
            totals = np.zeros(replicates)
            counts = np.zeros(replicates)
            for s, values in enumerate(searches):
                chosen = picks == s  # how often search s was drawn in each replicate
                times = chosen.sum(axis=1)
                if not times.any():
                    continue
                draws = rng.integers(0, len(values), size=(replicates, len(values)))
                totals += times * values[draws].mean(axis=1)
                counts += times
            boot[:, j] = totals / counts
        by_value = boot.argsort(axis=1, kind="stable")
        boot_ranks = np.empty_like(by_value)
        np.put_along_axis(boot_ranks, by_value, np.arange(1, len(levels) + 1)[None, :].repeat(replicates, axis=0), axis=1)
        observed = {lv: float(np.concatenate(nested[lv]).mean()) for lv in levels}
        observed_rank = {lv: r + 1 for r, lv in enumerate(sorted(levels, key=lambda lv: observed[lv]))}
        for j, lv in enumerate(levels):
            rank_rows.append(
                {**labels, "level": lv, "mean": sign * observed[lv], "rank": observed_rank[lv], "mean_rank": float(boot_ranks[:, j].mean()), "p_first": float((boot_ranks[:, j] == 1).mean())}
            )
        for i, a in enumerate(levels):
            for j in range(i + 1, len(levels)):
                b = levels[j]
                xa, xb = np.concatenate(nested[a]), np.concatenate(nested[b])
                wins = (xa[:, None] < xb[None, :]).mean() + 0.5 * (xa[:, None] == xb[None, :]).mean()
                p_mean = float((boot[:, i] < boot[:, j]).mean() + 0.5 * (boot[:, i] == boot[:, j]).mean())
                pair_rows.append(
                    {**labels, "a": a, "b": b, "mean_a": sign * observed[a], "mean_b": sign * observed[b], "n_a": len(xa), "n_b": len(xb), "p_single": float(wins), "p_mean": p_mean}
                )
    return RankingStability(pd.DataFrame(pair_rows), pd.DataFrame(rank_rows), factor, metric, tuple(by), goal, replicates)


def plot_rank_against_budget(result: RankingStability, budget: str, path: str, *, panel: str | None = None) -> str:
    """Mean bootstrap rank of each level against the budget (log axis), one panel per level of ``panel``.

    Args:
        result: from :func:`ranking_stability` with ``budget`` (and ``panel``) among its ``by``.
        budget: the budget column (numbers).
        path: the PNG to write.
        panel: a grouping column drawn as separate panels (e.g. ``model``).

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranks = result.ranks
    if budget not in ranks.columns:
        raise AnalysisError(f"rank plot: expected {budget!r} among the ranking's groups {list(result.by)}")
    panels = list(ranks[panel].drop_duplicates()) if panel else [None]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), sharey=True, squeeze=False)
    n_levels = int(ranks["level"].nunique())
    for ax, value in zip(axes[0], panels):
        part = ranks if value is None else ranks[ranks[panel] == value]
        for level, rows in part.groupby("level", sort=False):
            rows = rows.sort_values(budget)
            ax.plot(rows[budget], rows["mean_rank"], marker="o", label=str(level))
        ax.set_xscale("log", base=2)
        ticks = sorted(part[budget].drop_duplicates())
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel(budget)
        ax.set_title(f"{panel}={value}" if panel else result.factor)
        ax.set_ylim(n_levels + 0.3, 0.7)
        ax.set_yticks(range(1, n_levels + 1))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"mean rank of {result.factor} (1 = best {result.metric})")
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def study_ranking(study: Any, df: "pd.DataFrame", metric: str, folder: str | None = None, *, replicates: int = 2000) -> tuple[RankingStability, list[str]] | None:
    """The ranking a study asks for (``analysis={"ranking": factor}``), and its plots: what a report shows.

    Groups are the study's other factors; for a tuned study the search seeds are resampled
    as units (``seed_index_search``) and, when the budget is a factor, rank is plotted
    against it (one panel per level of the first other factor). Returns None when the study
    asks for no ranking.

    Args:
        study: the resolved study.
        df: its results (one row per trial; unfinished and diverged rows are dropped here).
        metric: the response.
        folder: where to write ``ranking_<factor>.png`` (no plot when None).
        replicates: bootstrap replicates.
    """
    factor = (getattr(study, "analysis", None) or {}).get("ranking")
    if not factor:
        return None
    data = df
    if "state" in data.columns:
        data = data[data["state"] == "FINISHED"]
    if "diverged" in data.columns:
        data = data[data["diverged"].fillna(0) < 1]
    by = [name for name in study.factor_names if name != factor]
    search = "seed_index_search" if "seed_index_search" in data.columns else "replicate"
    goal = next((m.goal.value if hasattr(m.goal, "value") else str(m.goal) for m in study.metrics if m.name == metric), "minimize")
    declared = next((list(f.all_levels) for f in study.factors if f.name == factor), None)
    result = ranking_stability(data, factor, metric, by=by, search=search, rerun="replicate", goal=goal, replicates=replicates,
                               order=declared)
    plots: list[str] = []
    tuning = getattr(study, "tuning", None)
    budget = tuning.the_budget.factor if tuning is not None else None
    if folder is not None and budget in by:
        import os

        others = [name for name in by if name != budget]
        plots.append(plot_rank_against_budget(result, budget, os.path.join(folder, f"ranking_{factor}.png"), panel=others[0] if others else None))
    return result, plots
