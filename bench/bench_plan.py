"""Plans and start-up benchmark (issue #16): this code against the planner before it, in one run.

Measured, each in a fresh process (wall time and the process's peak RSS from ``wait4``):

* ``make_plan`` of an ``a x b x replicates`` synthetic study (100 x 100 cells, the
  replicates give the size): the time of the call alone, and the process's peak RSS;
  CPU seconds beside wall seconds (on a machine shared with other jobs the CPU time is what
  an idle core would take, near enough);
* ``orchestrator plan STUDY --format csv`` and the default table (stdout to /dev/null): the
  whole command, imports included;
* start-up: seconds from launching ``orchestrator run`` (embedded Ray, a SQLite store whose
  tables already exist) to the start of its first trial, as the trial's MLflow run records
  it; with where the time goes: importing the command, ``ray.init`` alone, importing
  mlflow and opening the store alone.

"old" is the same command on the ``orchestrator`` package of commit ``BASELINE`` (the
planner that built one ``Trial`` per trial), exported with ``git archive`` to a temporary
folder; sizes the old planner cannot finish in ``--old-timeout`` seconds are reported as
such.

    python bench/bench_plan.py                                   # 1e5 and 1e6 (the old plan command up to 1e5)
    python bench/bench_plan.py --sizes 1000000 --write bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from results_file import replace_section  # bench/, the script's own folder

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "350d254"  # main just before the columnar planner (#16)

STUDY = """
from orchestrator import Factor, Study, Variant
study = Study(name="big", workload="synthetic", factors=[Factor("a", list(range(100))), Factor("b", list(range(100)))],
              replicates={replicates}, params={{"duration_s": 0.01, "sleep": True}}, metrics={{"response": "minimize"}},
              variants={{"smoke": Variant(replicates=1), "full": Variant()}})
"""

MAKE_PLAN = """
import sys, time
sys.path.insert(0, {tree!r})
from orchestrator import load_study, make_plan
study = load_study({path!r}, "full")
start, cpu = time.perf_counter(), time.process_time()
plan = make_plan(study)
print(len(plan.trials), time.perf_counter() - start, time.process_time() - cpu)
"""

STARTUP_STUDY = """
from orchestrator import Factor, Study, Variant
study = Study(name="startup", workload="synthetic", factors=[Factor("i", [0, 1])], params={"duration_s": 0.01, "sleep": True},
              metrics={"response": "minimize"}, variants={"smoke": Variant(), "full": Variant()})
"""


def measured(command: list[str], env: dict[str, str], timeout: float, stdout: Any = subprocess.DEVNULL) -> dict[str, Any]:
    """Run ``command`` in a folder of its own (``python -m`` would import the package from the working directory):
    wall seconds and its stdout (when piped), or why it failed."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True, cwd=tempfile.gettempdir())
    out, err = "", ""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"error": f"not done in {timeout:.0f} s"}
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"error": (err or "").strip().splitlines()[-1][:200] if err else f"exit {proc.returncode}"}
    return {"s": round(wall, 2), "stdout": out or ""}


def peak_rss(command: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """``measured`` in a wrapper process that reports the command's own peak RSS (``wait4``)."""
    wrapper = (
        "import os, subprocess, sys, time, json\n"
        "start = time.perf_counter()\n"
        f"proc = subprocess.Popen({command!r}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)\n"
        "out = proc.stdout.read(); err = proc.stderr.read()\n"
        "_, status, usage = os.wait4(proc.pid, 0)\n"
        "print(json.dumps({'s': time.perf_counter() - start, 'cpu_s': usage.ru_utime + usage.ru_stime, 'rss_mb': usage.ru_maxrss / 1024, 'status': status, "
        "'stdout': out.decode()[-2000:], 'stderr': err.decode()[-400:], 'bytes': len(out)}))\n"
    )
    result = measured([sys.executable, "-c", wrapper], env, timeout, stdout=subprocess.PIPE)
    if "error" in result:
        return result
    data = json.loads(result["stdout"])
    if data["status"] != 0:
        return {"error": (data["stderr"].strip().splitlines() or [f"status {data['status']}"])[-1][:200]}
    return {"s": round(data["s"], 2), "cpu_s": round(data["cpu_s"], 2), "rss_mb": round(data["rss_mb"]), "stdout": data["stdout"], "bytes": data["bytes"]}


def export_baseline(folder: Path) -> Path:
    """The ``orchestrator`` package of ``BASELINE``, exported to ``folder`` (``git archive``)."""
    archive = subprocess.run(["git", "archive", BASELINE, "orchestrator"], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def plan_rows(trees: dict[str, Path], folder: Path, sizes: list[int], old_max: int, old_cli_max: int, timeout: float) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        path = folder / f"big_{n}.py"
        path.write_text(STUDY.format(replicates=max(1, n // 10_000)))
        for label, tree in trees.items():
            env = {**os.environ, "PYTHONPATH": str(tree)}
            if label == "old" and n > old_max:
                rows.append({"what": "make_plan", "code": label, "trials": n, "error": f"not run (over --old-max {old_max:,})"})
                continue
            result = peak_rss([sys.executable, "-c", MAKE_PLAN.format(tree=str(tree), path=str(path))], env, timeout)
            if "error" not in result:
                count, seconds, cpu = result["stdout"].split()
                result.update(trials=int(count), call_s=round(float(seconds), 2), call_cpu_s=round(float(cpu), 2))
            rows.append({"what": "make_plan", "code": label, "trials": n, **result})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "stdout"}), flush=True)
            for fmt in ("csv", "table"):
                if label == "old" and (n > old_cli_max or (fmt == "table" and n > 10_000)):
                    continue  # the old table drew every row with rich: minutes per 10,000 trials
                command = [sys.executable, "-m", "orchestrator", "plan", str(path), "--format", fmt]
                result = peak_rss(command, env, timeout)
                rows.append({"what": f"plan --format {fmt}", "code": label, "trials": n, **result})
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "stdout"}), flush=True)
    return rows


def startup(trees: dict[str, Path], folder: Path, timeout: float) -> list[dict[str, Any]]:
    """Launch of ``orchestrator run`` to its first trial's start, per code; and the parts of it."""
    study = folder / "startup_study.py"
    study.write_text(STARTUP_STUDY)
    rows = []
    for label, tree in trees.items():
        env = {**os.environ, "PYTHONPATH": str(tree)}
        env.pop("RAY_ADDRESS", None)
        env.pop("MLFLOW_TRACKING_URI", None)
        uri = f"sqlite:///{folder}/startup_{label}/mlflow.db"
        base = [sys.executable, "-m", "orchestrator", "run", str(study), "--variant", "smoke", "--tracking-uri", uri, "--no-progress"]
        warm = measured(base, env, timeout)  # creates the store's tables (not start-up) and warms the file cache
        if "error" in warm:
            rows.append({"code": label, "error": f"first run: {warm['error']}"})
            continue
        launched = time.time()
        result = measured([*base, "--mode", "rerun"], env, timeout)
        if "error" in result:
            rows.append({"code": label, "error": result["error"]})
            continue
        first = subprocess.run(
            [sys.executable, "-c", FIRST_TRIAL.format(tree=str(tree), uri=uri, launched=launched)], env=env, capture_output=True, text=True,
            cwd=tempfile.gettempdir(),
        )
        if first.returncode != 0:
            rows.append({"code": label, "error": first.stderr.strip().splitlines()[-1][:200]})
            continue
        rows.append({"code": label, "to_first_trial_s": round(float(first.stdout) - launched, 2), "command_s": result["s"]})
        print(json.dumps(rows[-1]), flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    parts = {
        "import the run command": "import orchestrator.cli.run, orchestrator.execution.runner",
        "ray.init (embedded, 2 CPUs)": "import ray; ray.init(address='local', num_cpus=2, include_dashboard=False, logging_level='WARNING'); ray.shutdown()",
        "the embedded Ray's start (ray_backend.connect, 2 CPUs)": "from orchestrator.execution.ray_backend import connect; connect(num_cpus=2).close()",
        "import mlflow, open the store": f"from orchestrator.records.store import open_store; open_store('sqlite:///{folder}/startup_new/mlflow.db')",
        "python itself": "pass",
    }
    for name, code in parts.items():
        result = measured([sys.executable, "-c", code], env, timeout)
        rows.append({"part": name, **result})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "stdout"}), flush=True)
    return rows


FIRST_TRIAL = """
import sys
sys.path.insert(0, {tree!r})
from orchestrator.records import open_store
store = open_store({uri!r}, check=False)
runs = store.search(store.experiment_id("startup"), "tags.run_kind = 'trial'")
print(min(r.info.start_time for r in runs if r.info.start_time / 1000 >= {launched!r}) / 1000)
"""


def render(rows: list[dict[str, Any]], starts: list[dict[str, Any]], sizes: list[int]) -> str:
    load = os.getloadavg()
    lines = [
        "## Plans and start-up",
        "",
        f"`bench/bench_plan.py` (issue #16), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {os.cpu_count()} cores (nproc), "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}; load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min; the machine was shared). \"old\" is commit {BASELINE} "
        "(a Trial object per trial), \"new\" this tree, run one after the other in this run; each row is a fresh process.",
        "",
        "| what | trials | code | wall s | CPU s | the call alone: wall s / CPU s | peak RSS MB | output MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['what']} | {r['trials']:,} | {r['code']} | - | - | - | - | {r['error']} |")
            continue
        out = f"{r['bytes'] / 1e6:.0f}" if r["what"] != "make_plan" else "-"
        call = f"{r['call_s']} / {r['call_cpu_s']}" if "call_s" in r else "-"
        lines.append(f"| {r['what']} | {r['trials']:,} | {r['code']} | {r['s']} | {r['cpu_s']} | {call} | {r['rss_mb']} | {out} |")
    ratios = []
    for n in sizes:
        for what in ("make_plan", "plan --format csv"):
            pair = {r["code"]: r for r in rows if r["trials"] == n and r["what"] == what and "error" not in r}
            if {"old", "new"} <= set(pair):
                key = "call_cpu_s" if what == "make_plan" else "cpu_s"
                ratios.append(f"{what} of {n:,}: old / new CPU time {pair['old'][key] / pair['new'][key]:.1f}x, "
                              f"peak RSS {pair['old']['rss_mb'] / pair['new']['rss_mb']:.1f}x")
    if ratios:
        lines += ["", "Ratios (same run): " + "; ".join(ratios) + "."]
    if starts:
        lines += ["", "Start-up of `orchestrator run` (embedded Ray, SQLite store with its tables made), launch to the first trial's start:", ""]
        for r in starts:
            if "code" in r:
                lines.append(f"- {r['code']}: " + (f"{r['to_first_trial_s']} s (whole 2-trial command {r['command_s']} s)" if "error" not in r else f"failed: {r['error']}"))
            else:
                lines.append(f"- part, alone in a fresh process: {r['part']}: " + (f"{r['s']} s" if "error" not in r else f"failed: {r['error']}"))
    lines.append("")
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Replace the '## Plans and start-up' section of ``path`` (up to the next heading); keep everything else."""
    replace_section(path, "## Plans and start-up", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="plan sizes (trials), comma-separated")
    parser.add_argument("--old-max", type=int, default=1_000_000, help="largest plan the old code's make_plan is asked for")
    parser.add_argument("--old-cli-max", type=int, default=100_000, help="largest plan the old code's plan command is asked for")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per measured process")
    parser.add_argument("--no-startup", action="store_true")
    parser.add_argument("--no-old", action="store_true", help="only this tree")
    parser.add_argument("--write", type=Path, help="replace the '## Plans and start-up' section of this file")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    folder = Path(tempfile.mkdtemp(prefix="bench_plan_"))
    try:
        trees = {"new": ROOT}
        if not args.no_old:
            trees = {"old": export_baseline(folder / "old"), "new": ROOT}
        rows = plan_rows(trees, folder, sizes, args.old_max, args.old_cli_max, args.timeout)
        starts = [] if args.no_startup else startup(trees, folder, args.timeout)
    finally:
        text = render(locals().get("rows", []), locals().get("starts", []), sizes)
        shutil.rmtree(folder, ignore_errors=True)
    print(text)
    if args.write:
        write_section(args.write, text)


if __name__ == "__main__":
    main()
