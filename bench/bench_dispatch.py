"""Dispatch benchmark: the same study of N trials of fixed compute through
(a) a serial loop, (b) raw Ray tasks and (c) the orchestrator (``run_study``, full MLflow
logging), in one process, on one local Ray. Efficiency = ideal / actual, with
ideal = N x duration / cores.

    python bench/bench_dispatch.py                       # both targets, sleep and busy trials
    python bench/bench_dispatch.py --work busy --only 200x0.2
    python bench/bench_dispatch.py --write bench/RESULTS.md   # replace the "## Dispatch" section

``sleep`` trials wait without using a CPU (pure dispatch and logging overhead);
``busy`` trials spin on the CPU, so they compete with the driver (and its MLflow writer)
for the same cores - the honest case on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from results_file import replace_section  # noqa: E402  (bench/, the script's own folder)

from orchestrator import Factor, Study, Variant, make_plan  # noqa: E402
from orchestrator.records.environment import fingerprint  # noqa: E402
from orchestrator.execution.worker import execute_trial  # noqa: E402

SCENARIOS = {"200x0.2": (200, 0.2, 0), "1000x0.05": (1000, 0.05, 100)}
TARGETS = {"200x0.2": "orchestrator >= 0.9 of ideal and within 1.1x of raw Ray", "1000x0.05": "orchestrator >= 0.7 of ideal"}


def make_study(n: int, duration: float, points: int, sleep: bool) -> Study:
    return Study(
        name=f"bench_{n}x{int(duration * 1000)}ms_{'sleep' if sleep else 'busy'}_{int(time.time())}",
        workload="synthetic",
        factors=[Factor("i", list(range(n)))],
        params={"duration_s": duration, "sleep": sleep, "metric_points": points},
        metrics={"response": "minimize"},
        replicates=1,
        run_order="standard",
        variants={"smoke": Variant(), "full": Variant()},
    ).with_variant("full")


def serial(trials) -> float:
    start = time.perf_counter()
    for trial in trials:
        curve = []
        execute_trial(trial, sink=lambda tid, step, m: curve.append((step, m)))
    return time.perf_counter() - start


def raw_ray(trials) -> float:
    import ray

    @ray.remote(num_cpus=1)
    def run(trial: dict) -> dict:
        curve = []
        result = execute_trial(trial, sink=lambda tid, step, m: curve.append((step, m)))
        return {"result": result.to_dict(), "curve": curve}

    start = time.perf_counter()
    ray.get([run.remote(t.to_dict()) for t in trials])
    return time.perf_counter() - start


def orchestrated(study: Study, uri: str) -> tuple[float, object]:
    from orchestrator.execution import run_study

    start = time.perf_counter()
    summary = run_study(study, tracking_uri=uri, progress=False)
    elapsed = time.perf_counter() - start
    assert summary.finished == len(make_plan(study).trials) and not summary.errors, summary.line()
    return elapsed, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=list(SCENARIOS), action="append")
    parser.add_argument("--work", choices=["sleep", "busy"], action="append")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--skip-serial", action="store_true")
    parser.add_argument("--write", help="replace the '## Dispatch' section of this markdown file")
    args = parser.parse_args()
    import ray

    ray.init(num_cpus=args.cores, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    ray.get([ray.remote(lambda: None).remote() for _ in range(args.cores * 2)])  # warm the worker pool
    store = tempfile.mkdtemp(prefix="bench_mlflow_")
    uri = f"sqlite:///{store}/mlflow.db"
    from orchestrator.records import open_store

    open_store(uri)  # create the store's tables once (a one-off ~1.5 s), outside the timings
    rows = []
    for name in args.only or list(SCENARIOS):
        n, duration, points = SCENARIOS[name]
        for work in args.work or ["sleep", "busy"]:
            study = make_study(n, duration, points, work == "sleep")
            trials = make_plan(study).trials
            ideal = n * duration / args.cores
            times = {}
            if not args.skip_serial:
                times["serial"] = serial(trials)
            times["ray_tasks"] = raw_ray(trials)
            times["orchestrator"], _ = orchestrated(study, uri)
            row = {"scenario": name, "work": work, "trials": n, "duration_s": duration, "metric_points": points, "ideal_s": ideal}
            for key, value in times.items():
                row[f"{key}_s"] = round(value, 2)
                row[f"{key}_eff"] = round(ideal / value, 3)
            row["orch_vs_ray"] = round(times["orchestrator"] / times["ray_tasks"], 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
    ray.shutdown()
    table = render(rows, args)
    print(table)
    if args.write:
        write_section(Path(args.write), table)


def render(rows: list[dict], args: argparse.Namespace) -> str:
    env = fingerprint()
    lines = [
        "## Dispatch",
        "",
        f"Machine: {os.cpu_count()} cores (nproc), {env['cpu_model']}; Python {platform.python_version()}, "
        f"ray {env['ray']}, mlflow {env['mlflow']}; local Ray with num_cpus={args.cores}; MLflow on SQLite (WAL) in a temp folder.",
        "",
        "Command: `python bench/bench_dispatch.py" + (" --skip-serial" if args.skip_serial else "") + "`",
        "",
        "| scenario | work | ideal s | serial s (eff) | raw Ray tasks s (eff) | orchestrator s (eff) | orch / raw Ray |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        serial = f"{r['serial_s']} ({r['serial_eff']})" if "serial_s" in r else "-"
        lines.append(
            f"| {r['trials']} x {r['duration_s']} s, {r['metric_points']} points | {r['work']} | {r['ideal_s']:g} | {serial} | "
            f"{r['ray_tasks_s']} ({r['ray_tasks_eff']}) | {r['orchestrator_s']} ({r['orchestrator_eff']}) | {r['orch_vs_ray']} |"
        )
    lines.append("")
    return "\n".join(lines)


def write_section(path: Path, table: str) -> None:
    """Replace the '## Dispatch' section of ``path`` (up to the next heading); keep everything else."""
    replace_section(path, "## Dispatch", table)


if __name__ == "__main__":
    main()
