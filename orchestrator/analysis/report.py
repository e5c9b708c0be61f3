"""Markdown and self-contained HTML reports with plots (the only module that imports matplotlib)."""

from __future__ import annotations

import base64
import html
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from orchestrator.analysis._prepare import level_label
from orchestrator.analysis.render import fmt, fmt_ci, fmt_p

if TYPE_CHECKING:
    from orchestrator.analysis.core import AnalysisResult
    from orchestrator.analysis.ranking import RankingStability

__all__ = ["write_report"]

_MAX_CELLS = 48
_MAX_PAIRS = 6


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(result: "AnalysisResult") -> str:
    return f"log({result.response})" if result.transform == "log" else result.response


def _ordered(data: pd.DataFrame, f: str, levels: list[Any]) -> list[tuple[str, np.ndarray]]:
    return [(level_label(lv), data.loc[data[f] == lv, "_y"].to_numpy()) for lv in levels]


def _main_effects(result: "AnalysisResult", folder: Path) -> Path | None:
    prep = result.prepared
    if not prep.fixed:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(prep.fixed), figsize=(3.2 * len(prep.fixed) + 1, 3.2), squeeze=False, sharey=True)
    for ax, f in zip(axes[0], prep.fixed):
        groups = _ordered(prep.data, f, prep.levels[f])
        means = [g.mean() for _, g in groups]
        half = [stats.t.ppf(0.975, len(g) - 1) * g.std(ddof=1) / np.sqrt(len(g)) if len(g) > 1 else 0 for _, g in groups]
        ax.errorbar(range(len(groups)), means, yerr=half, marker="o", capsize=4)
        ax.set_xticks(range(len(groups)), [n for n, _ in groups])
        ax.set_title(f)
    axes[0][0].set_ylabel(f"mean {_label(result)} (95% CI)")
    fig.suptitle("Main effects")
    fig.tight_layout()
    path = folder / "main_effects.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _interactions(result: "AnalysisResult", folder: Path) -> Path | None:
    prep = result.prepared
    pairs = list(combinations(prep.fixed, 2))[:_MAX_PAIRS]
    if not pairs:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(pairs), figsize=(3.8 * len(pairs) + 1, 3.4), squeeze=False)
    for ax, (a, b) in zip(axes[0], pairs):
        means = prep.data.groupby([b, a], observed=True)["_y"].mean()
        for lb in prep.levels[b]:
            ys = [means.get((lb, la), np.nan) for la in prep.levels[a]]
            ax.plot(range(len(ys)), ys, marker="o", label=f"{b}={level_label(lb)}")
        ax.set_xticks(range(len(prep.levels[a])), [level_label(v) for v in prep.levels[a]])
        ax.set_xlabel(a)
        ax.set_title(f"{a} x {b}")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(f"mean {_label(result)}")
    fig.tight_layout()
    path = folder / "interactions.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _shares(result: "AnalysisResult", folder: Path) -> Path | None:
    if not result.shares:
        return None
    plt = _plt()
    rows = sorted(result.shares, key=lambda r: r["share"] or 0)
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(rows) + 1.2))
    vals = [100 * (r["share"] or 0) for r in rows]
    err = np.array([[v - 100 * r["ci"][0], 100 * r["ci"][1] - v] if r["ci"] else [0, 0] for v, r in zip(vals, rows)]).T
    colors = {"fixed": "tab:blue", "random": "tab:orange", "residual": "tab:gray"}
    ax.barh([r["source"] for r in rows], vals, xerr=np.maximum(err, 0), capsize=3,
            color=[colors[r["kind"]] for r in rows])
    ax.set_xlabel("share of total variance, % (95% CI)")
    ax.set_title(f"Where the variance of {_label(result)} comes from")
    fig.tight_layout()
    path = folder / "variance_shares.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _cells(result: "AnalysisResult", folder: Path) -> Path | None:
    prep = result.prepared
    if not prep.fixed:
        return None
    plt = _plt()
    groups = [(", ".join(level_label(v) for v in (k if isinstance(k, tuple) else (k,))), g["_y"].to_numpy())
              for k, g in prep.data.groupby(prep.fixed, observed=True)][:_MAX_CELLS]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(groups) + 2), 4))
    ax.boxplot([g for _, g in groups], showfliers=False)
    rng = np.random.default_rng(0)
    for i, (_, g) in enumerate(groups, start=1):
        ax.plot(i + rng.uniform(-0.15, 0.15, len(g)), g, ".", alpha=0.5, markersize=3, color="k")
    ax.set_xticks(range(1, len(groups) + 1), [n for n, _ in groups], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(_label(result))
    ax.set_title(f"Trials per cell ({' x '.join(prep.fixed)})")
    fig.tight_layout()
    path = folder / "cells.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _curves(result: "AnalysisResult", curves: pd.DataFrame, folder: Path) -> list[Path]:
    prep = result.prepared
    if curves is None or "trial_id" not in prep.everything.columns or not prep.fixed:
        return []
    needed = {"trial_id", "step", "metric", "value"}
    if not needed <= set(curves.columns):
        return []
    plt = _plt()
    out = []
    levels = prep.everything[["trial_id"] + prep.fixed]
    for metric, sub in list(curves.groupby("metric"))[:3]:
        merged = sub.merge(levels, on="trial_id", how="inner")
        if merged.empty:
            continue
        fig, axes = plt.subplots(1, len(prep.fixed), figsize=(3.8 * len(prep.fixed) + 1, 3.2), squeeze=False)
        for ax, f in zip(axes[0], prep.fixed):
            for lv, g in merged.groupby(f, observed=True):
                # Trials of different lengths (short and long regimes) are averaged only with trials of their
                # own length: a mean over whichever trials reach a step would jump where the short ones end.
                last = g.groupby("trial_id")["step"].transform("max")
                runs = list(g.groupby(last))
                color = None
                for (end, h), style in zip(runs, ("-", "--", ":", "-.") * len(runs)):
                    m = h.groupby("step")["value"].agg(["mean", "std"])
                    label = f"{f}={level_label(lv)}" + (f" (to step {int(end)})" if len(runs) > 1 else "")
                    color = ax.plot(m.index, m["mean"], style, color=color, label=label)[0].get_color()
                    ax.fill_between(m.index, m["mean"] - m["std"].fillna(0), m["mean"] + m["std"].fillna(0), alpha=0.2,
                                    color=color)
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel(f"{metric} (mean +- SD)")
        fig.suptitle(f"Learning curves of {metric} by level")
        fig.tight_layout()
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(metric))
        path = folder / f"curves_{safe}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        out.append(path)
    return out


def _sections(result: "AnalysisResult") -> list[tuple[str, list[str], list[list[str]], list[str]]]:
    """(title, header, rows, paragraphs) shared by the Markdown and HTML renderings."""
    from orchestrator.analysis.core import SHARES_DEFINITION

    out = []
    if result.shares:
        out.append(("Shares of variance", ["source", "kind", "variance", "share %", "95% CI %"],
                    [[r["source"], r["kind"], fmt(r["variance"]), f"{100 * r['share']:.1f}", fmt_ci(r["ci"], True)]
                     for r in sorted(result.shares, key=lambda r: -r["share"])],
                    ["Definition: " + SHARES_DEFINITION]))
    if result.anova:
        ss = "II" if result.ss_type == 2 else "III"
        terms = ", ".join(r["term"] for r in (result.model or {}).get("random_terms", []))
        paras = [result.ss_type_reason]
        if terms:
            paras.append(f"Random terms in the model: {terms}.")
        if (result.model or {}).get("tests"):
            paras.append(f"Fixed-effect tests: {result.model['tests']}.")
        out.append((f"ANOVA (Type {ss} sums of squares)", ["term", "df", "den df", "sum_sq", "mean_sq", "F", "p",
                                                          "error term", "eta2", "partial eta2", "omega2"],
                    [[r["term"] + (" = " + " = ".join(r["aliases"]) if r.get("aliases") else ""), str(r["df"]),
                      fmt(r.get("den_df")), fmt(r["sum_sq"]), fmt(r["mean_sq"]), fmt(r["F"]), fmt_p(r["p"]),
                      r.get("error_term") or "-", fmt(r["eta_sq"], 3), fmt(r["partial_eta_sq"], 3),
                      fmt(r["omega_sq"], 3)] for r in result.anova], paras))
    if result.variance_components:
        out.append(("Variance components", ["component", "variance", "sd", "95% CI", "method of moments", "boundary"],
                    [[r["component"], fmt(r["variance"]), fmt(r["sd"]), fmt_ci(r["ci"]), fmt(r["mom_variance"]),
                      "yes" if r["boundary"] else ""] for r in result.variance_components], [result.vc_method]))
    for s in result.spread:
        rows = [[lv["level"], str(lv["n"]), fmt(lv["residual_sd"])] for lv in s["levels"]]
        para = []
        if "brown_forsythe" in s:
            para.append(f"Equal spread: Brown-Forsythe p = {fmt_p(s['brown_forsythe']['p'])}, "
                        f"Levene p = {fmt_p(s['levene']['p'])}.")
        out.append((f"Spread by level of {s['factor']}", ["level", "n", "residual SD"], rows, para))
    fail = result.failures
    if fail.get("failed") or fail.get("diverged") or fail.get("missing"):
        rows = []
        for f, info in fail["by_factor"].items():
            for lv in info["levels"]:
                rows.append([f, lv[f], str(lv["n"]), str(lv["failed"]), str(lv["diverged"]),
                             f"{100 * lv['divergence_rate']:.1f}", fmt_p(info["tests"]["diverged"].get("p"))])
        out.append(("Failures and divergence", ["factor", "level", "n", "failed", "diverged", "divergence %",
                                                "exact test p"], rows, [fail["policy"] + "."]))
    if result.rank_based:
        out.append(("Rank-based tests", ["term", "test", "statistic", "p"],
                    [[r["term"], r["test"], fmt(r["statistic"]), fmt_p(r["p"])] for r in result.rank_based], []))
    notes = [f"Warning: {w}" for w in result.warnings] + result.notes
    if notes:
        out.append(("Notes", [], [], notes))
    return out


def write_report(result: "AnalysisResult", folder: str | Path, curves: pd.DataFrame | None = None,
                 title: str | None = None, ranking: "tuple[RankingStability, list[str]] | None" = None) -> dict[str, Path]:
    """Write ``report.md``, a self-contained ``report.html`` (images as base64) and the PNGs.

    Args:
        result: an ``AnalysisResult`` from ``analyze``.
        folder: created if missing.
        curves: optional learning curves, long format ``trial_id, step, metric, value``.
        title: report title (default: the response name).
        ranking: a ranking of a factor's levels under resampling of seeds and its plots (rank
            against budget), from :func:`~orchestrator.analysis.ranking.study_ranking`: shown as
            a section with its table, and its plots among the images.

    Returns:
        Paths by name: ``markdown``, ``html`` and one per plot.

    Example:
        >>> paths = write_report(analyze(df, "loss", fixed=["dtype"]), "reports/dtype")  # doctest: +SKIP
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images: dict[str, Path] = {}
    if result.prepared is not None and result.n:
        for name, fn in (("variance_shares", _shares), ("main_effects", _main_effects),
                         ("interactions", _interactions), ("cells", _cells)):
            path = fn(result, folder)
            if path:
                images[name] = path
        for path in _curves(result, curves, folder):
            images[path.stem] = path
    title = title or f"Analysis of {_label(result)}"
    intro = f"{result.n} analysed trial(s) of {result.n_total}."
    sections = _sections(result)
    if ranking is not None:
        ranked, plots = ranking
        header, rows = ranked.rows()
        sections.insert(0, (ranked.title, header, rows, [ranked.explanation()]))
        for plot in plots:
            images[Path(plot).stem] = Path(plot)

    md = [f"# {title}", "", intro, ""]
    for name, path in images.items():
        md += [f"![{name}]({path.name})", ""]
    for head, header, rows, paras in sections:
        md += [f"## {head}", ""]
        if header:
            md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            md += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
            md.append("")
        md += [p if head != "Notes" else f"- {p}" for p in paras] + [""]
    md_path = folder / "report.md"
    md_path.write_text("\n".join(md), encoding="utf-8")

    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>", f"<p>{esc(intro)}</p>"]
    for name, path in images.items():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        body.append(f'<figure><img alt="{esc(name)}" src="data:image/png;base64,{data}"></figure>')
    for head, header, rows, paras in sections:
        body.append(f"<h2>{esc(head)}</h2>")
        if header:
            body.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
            body += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows]
            body.append("</table>")
        body += [f"<p>{esc(p)}</p>" for p in paras]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}table{border-collapse:collapse;"
             "margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child,"
             "th:first-child{text-align:left}img{max-width:100%}")
    html_path = folder / "report.html"
    html_path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
                         f"<style>{style}</style></head><body>{''.join(body)}</body></html>", encoding="utf-8")
    return {"markdown": md_path, "html": html_path, **images}
