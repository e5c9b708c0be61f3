"""The ``orchestrator`` command line. Subcommands load lazily, so ``plan`` stays fast.

Exit status: 0 success, 1 the work ran but something failed (failed trials, drift found),
2 usage error or invalid study (one message, no traceback; ``--debug`` shows it).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import click

from ..errors import OrchestratorError
from ..formatting import fmt_number
from .options import load, variant_option

if TYPE_CHECKING:
    from ..definition.study import Study
    from ..design.plan import Plan

__all__ = ["main", "study_script_main"]

# name -> "module:attribute" of a click.Command; imported only when used.
COMMANDS: dict[str, str] = {
    "plan": "orchestrator.cli:plan_command",
    "run": "orchestrator.cli.run:run",
    "status": "orchestrator.cli.run:status",
    "ui": "orchestrator.cli.run:ui",
    "executions": "orchestrator.cli.run:executions",
    "analyze": "orchestrator.cli.analysis:analyze",
    "report": "orchestrator.cli.analysis:report",
    "writeup": "orchestrator.cli.analysis:writeup",
    "schedule": "orchestrator.cli.schedule:schedule",
    "compare": "orchestrator.cli.schedule:compare",
    "sync": "orchestrator.cli.sync:sync",
}


class _LazyGroup(click.Group):
    """A group whose subcommands are imported on first use, and which turns errors into exit 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._load(name) is not None]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return self._load(name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return None
            raise
        return getattr(module, attr, None)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OrchestratorError as exc:
            if ctx.meta.get("orchestrator.debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="numerics-orchestrator", prog_name="orchestrator")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Controlled experiments on training numerics: plan, run on Ray, record in MLflow, analyze."""
    ctx.meta["orchestrator.debug"] = debug


@click.command("plan")
@click.argument("study")
@variant_option
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
def plan_command(study: str, variant: str | None, fmt: str) -> None:
    """Print the design of STUDY (a file or a name in studies/): one row per trial."""
    from ..design.plan import make_plan, write_plan_csv, write_plan_json

    plan = make_plan(load(study, variant))
    out = sys.stdout
    if fmt == "json":  # written a chunk of trials at a time: a 1e6-trial plan never holds every trial's dict
        write_plan_json(plan, out)
        out.write("\n")
    elif fmt == "csv":
        write_plan_csv(plan, out)
    else:
        print_plan(plan)


BOXED_TRIALS_MAX = 2000
"""Plans with more trials print their trials as aligned text, not a boxed table (rich takes
seconds per thousand rows and holds every row)."""


def print_plan(plan: "Plan") -> None:
    from rich.console import Console
    from rich.table import Table

    from ..design.plan import plan_rows, write_plan_table

    boxed = len(plan.trials) <= BOXED_TRIALS_MAX
    header, rows = plan_rows(plan) if boxed else ([], [])
    needed = sum(max(len(_short(v)) for v in [h, *(r[i] for r in rows)]) + 3 for i, h in enumerate(header)) + 4
    console = Console(width=max(100, needed), soft_wrap=True)
    study = plan.study
    counts = plan.counts
    design = study.design.to_dict()["kind"]
    if plan.resolution:
        design += f", resolution {_roman(plan.resolution)}"
    console.print(f"[bold]{study.name}[/bold] (variant {study.variant}): {study.description}".rstrip(": "))
    console.print(
        f"design: {design}; workload: {study.workload}; cells: {counts['cells']}; trials: {counts['trials']} "
        f"({counts['trials_per_cell']} per cell); excluded cells: {counts['excluded_cells']}; "
        f"resources: {counts['resources']['cpus']:g} CPU, {counts['resources']['gpus']:g} GPU in total"
    )
    if boxed:
        table = Table(*header, title="trials in run order", show_lines=False)
        for row in rows:
            table.add_row(*(_short(v) for v in row))
        console.print(table)
    else:
        console.print(f"trials in run order ({counts['trials']}, as text; --format csv for a file):")
        console.file.flush()
        write_plan_table(plan, console.file)
    if plan.aliases:
        console.print(f"defining relation: I = {' = '.join(plan.defining_relation)}")
        aliases = Table("effect", "letters", "aliased with (up to two-factor interactions)", title="alias table")
        for alias in plan.aliases:
            aliases.add_row(alias.effect, alias.letters, " = ".join(f"{n} ({l})" for n, l in zip(alias.aliases, alias.alias_letters)) or "(clear)")
        console.print(aliases)
    for item in plan.excluded:
        console.print(f"excluded {item['cell_id']} {item['levels']}: {item['reason']}")
    for item in plan.audit:
        for finding in item["findings"]:
            console.print(f"[yellow]audit[/yellow] {item['cell_id']} {item['levels']}: {finding['message']}")


def _short(value: Any) -> str:
    return fmt_number(value, 6) if isinstance(value, float) else str(value)


def _roman(n: int) -> str:
    return {3: "III", 4: "IV", 5: "V", 6: "VI", 7: "VII", 8: "VIII"}.get(n, str(n))


main.add_command(plan_command)


def study_script_main(study: "Study", argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python studies/x.py [COMMAND] [OPTIONS]`` (COMMAND defaults to ``run``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    path = study.source_file or getattr(sys.modules.get("__main__"), "__file__", None)
    if path is None:
        raise SystemExit("error: cannot tell which file this study lives in; run `orchestrator run FILE` instead")
    command = "run"
    debug = []
    while args and args[0] == "--debug":
        debug.append(args.pop(0))
    if args and not args[0].startswith("-"):
        command = args.pop(0)
    if command not in COMMANDS:
        raise SystemExit(f"error: unknown command {command!r}; expected one of {', '.join(COMMANDS)}")
    main.main(args=[*debug, command, str(Path(path)), *args], prog_name=f"python {path}")
