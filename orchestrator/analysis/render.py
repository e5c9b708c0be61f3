"""Terminal summary of an analysis (rich tables rendered to plain text)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.analysis.core import AnalysisResult

__all__ = ["summary_text", "fmt", "fmt_ci", "fmt_p"]


def fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, int):
        return str(x)
    if x != 0 and (abs(x) >= 1e7 or abs(x) < 1e-3):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}" if abs(x) < 10**digits else f"{x:.0f}"


def fmt_ci(ci: list[float] | None, pct: bool = False, digits: int = 3) -> str:
    if not ci:
        return "-"
    if pct:
        return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    return f"[{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "-"
    return "<1e-16" if p < 1e-16 else (f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}")


def _emit(con: Any, table: Any) -> None:
    """Print ``table`` within the console's width; the first column (a term, source, level) is never cut.

    A table wider than the console is split: its columns after the first go to several
    tables, each repeating the first column and titled ``(1/2)``, ``(2/2)``... Numbers are
    never wrapped; a text column too wide for the line wraps at its spaces; the share bars
    (the column without a header) are shortened to the room left, or left out.
    """
    from rich.table import Table

    columns = table.columns
    cells = [[str(c) for c in col.cells] for col in columns]
    need = [max([len(str(col.header))] + [len(line) for cell in cells[i] for line in cell.splitlines()])
            for i, col in enumerate(columns)]
    room = con.width - 1 - (need[0] + 3)  # a column costs its content, a space each side and one rule
    bars = [i for i, col in enumerate(columns) if i and not str(col.header) and all(set(c) <= {"#"} for c in cells[i])]
    groups: list[list[int]] = [[]]
    used = 0
    for i in range(1, len(columns)):
        if i in bars:
            continue
        if groups[-1] and used + need[i] + 3 > room:
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += need[i] + 3
    for i in bars:  # into the first group, shortened to the room left there
        first = sum(need[j] + 3 for j in groups[0])
        space = min(need[i], room - first - 3)
        if space >= 5:
            cells[i] = ["#" * round(len(c) * space / max(need[i], 1)) for c in cells[i]]
            need[i] = space
            groups[0].append(i)
    for k, group in enumerate(groups):
        title = table.title if len(groups) == 1 or not table.title else f"{table.title} ({k + 1}/{len(groups)})"
        part = Table(title=title, title_justify=table.title_justify)
        for i in (0, *group):
            fits = i == 0 or need[i] + 3 <= room
            part.add_column(columns[i].header, justify=columns[i].justify, no_wrap=fits, min_width=need[i] if fits else None)
        for row in range(table.row_count):
            part.add_row(*(cells[i][row] for i in (0, *group)))
        con.print(part)


def summary_text(result: "AnalysisResult", width: int = 110) -> str:
    from rich.console import Console
    from rich.table import Table

    buf = io.StringIO()
    con = Console(file=buf, width=width, color_system=None, force_terminal=False)
    resp = f"log({result.response})" if result.transform == "log" else result.response
    con.print(f"Analysis of {resp}: {result.n} analysed trial(s) of {result.n_total}")
    if result.ss_type:
        con.print(f"Sums of squares: Type {'II' if result.ss_type == 2 else 'III'} - {result.ss_type_reason}")

    if result.shares:
        t = Table(title="Where the variance comes from (share of total variance, 95% CI)", title_justify="left")
        for c, j in (("source", "left"), ("kind", "left"), ("variance", "right"), ("share %", "right"),
                     ("95% CI %", "right"), ("", "left")):
            t.add_column(c, justify=j)
        for r in sorted(result.shares, key=lambda r: -(r["share"] or 0)):
            bar = "#" * int(round(30 * (r["share"] or 0)))
            t.add_row(r["source"], r["kind"], fmt(r["variance"]), f"{100 * (r['share'] or 0):.1f}",
                      fmt_ci(r["ci"], pct=True), bar)
        _emit(con, t)

    random_terms = (result.model or {}).get("random_terms") or []
    if random_terms:
        shown = ", ".join(r["term"] + (" (seed x factor, default)" if r["origin"] != "given" else "") for r in random_terms)
        con.print(f"Random terms in the model: {shown}")
    if (result.model or {}).get("tests"):
        con.print(f"Fixed-effect tests: {result.model['tests']}")
    if result.anova:
        t = Table(title="ANOVA", title_justify="left")
        for c in ("term", "df", "den df", "sum_sq", "mean_sq", "F", "p", "error term", "eta2", "partial eta2", "omega2"):
            t.add_column(c, justify="left" if c in ("term", "error term") else "right")
        for r in result.anova:
            name = r["term"] + (" (random)" if r["kind"] == "random" else "")
            if r.get("aliases"):
                name += " = " + " = ".join(r["aliases"])
            den = r.get("den_df")
            den_s = "-" if den is None else (str(int(round(den))) if abs(den - round(den)) < 1e-6 else f"{den:.2f}")
            t.add_row(name, str(r["df"]), den_s, fmt(r["sum_sq"]), fmt(r["mean_sq"]), fmt(r["F"]), fmt_p(r["p"]),
                      r.get("error_term") or "-", fmt(r["eta_sq"], 3), fmt(r["partial_eta_sq"], 3), fmt(r["omega_sq"], 2))
        _emit(con, t)

    if result.variance_components:
        t = Table(title=f"Variance components - {result.vc_method}", title_justify="left")
        for c in ("component", "variance", "sd", "95% CI", "method of moments", "note"):
            t.add_column(c, justify="left" if c in ("component", "note") else "right")
        for r in result.variance_components:
            t.add_row(r["component"], fmt(r["variance"]), fmt(r["sd"]), fmt_ci(r["ci"]), fmt(r["mom_variance"]),
                      "boundary (estimated at 0)" if r["boundary"] else "")
        _emit(con, t)

    for s in result.spread:
        has_components = any(lv.get("components") for lv in s["levels"])
        if "brown_forsythe" not in s and not has_components:
            continue
        if not has_components and s["brown_forsythe"]["p"] >= 0.05:
            con.print(f"Spread by level of {s['factor']}: no evidence of unequal spread "
                      f"(Brown-Forsythe p={fmt_p(s['brown_forsythe']['p'])})")
            continue
        t = Table(title=f"Spread by level of {s['factor']}", title_justify="left")
        t.add_column("level")
        t.add_column("n", justify="right")
        t.add_column("residual SD", justify="right")
        comps = sorted({k for lv in s["levels"] for k in lv.get("components", {})})
        for c in comps:
            t.add_column(f"var {c}", justify="right")
        for lv in s["levels"]:
            t.add_row(lv["level"], str(lv["n"]), fmt(lv["residual_sd"]),
                      *[fmt(lv.get("components", {}).get(c)) for c in comps])
        _emit(con, t)
        if "brown_forsythe" in s:
            con.print(f"  equal spread: Brown-Forsythe p={fmt_p(s['brown_forsythe']['p'])}, "
                      f"Levene p={fmt_p(s['levene']['p'])}")

    fail = result.failures
    if fail.get("failed") or fail.get("diverged") or fail.get("missing"):
        t = Table(title=f"Failures and divergence ({fail['policy']})", title_justify="left")
        for c in ("factor", "level", "n", "failed", "diverged", "missing", "divergence %", "test p (diverged)"):
            t.add_column(c, justify="left" if c in ("factor", "level") else "right")
        for f, info in fail["by_factor"].items():
            p = info["tests"]["diverged"].get("p")
            for i, lv in enumerate(info["levels"]):
                t.add_row(f if i == 0 else "", lv[f], str(lv["n"]), str(lv["failed"]), str(lv["diverged"]),
                          str(lv.get("missing", 0)), f"{100 * lv['divergence_rate']:.1f}", fmt_p(p) if i == 0 else "")
        _emit(con, t)

    if result.diagnostics.get("assumptions_violated") and result.rank_based:
        t = Table(title="Rank-based alternative (assumptions look violated)", title_justify="left")
        for c in ("term", "test", "statistic", "p"):
            t.add_column(c)
        for r in result.rank_based:
            t.add_row(r["term"], r["test"], fmt(r["statistic"]), fmt_p(r["p"]))
        _emit(con, t)
    if result.power:
        from orchestrator.analysis.power import ReplicatePlan

        con.print(str(ReplicatePlan(**result.power)))
    for w in result.warnings:
        con.print(f"WARNING: {w}")
    for n in result.notes:
        con.print(f"Note: {n}")
    return buf.getvalue()
