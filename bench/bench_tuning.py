"""Tuning benchmark: the inner search's overhead per configuration on Ray Tune against plain trials.

The same N configurations (the ``landscape`` workload, E epochs of a fixed busy-wait each,
the validation metric reported every epoch) run, in one process on one local Ray:

(a) as one search on Ray Tune with actor reuse (what a tuned study runs),
(b) on Ray Tune without actor reuse (a new actor per configuration),
(c) as plain trials through the orchestrator's executor (one Ray core task per trial;
    no MLflow on either side, so only dispatch is compared).

Overhead per configuration = (wall - ideal) / N with ideal = N x E x epoch time / cores.

    python bench/bench_tuning.py                         # 64 configurations x 2 epochs x 50 ms, 32 x 2 x 0 ms
    python bench/bench_tuning.py --write bench/RESULTS.md   # replace the "## Tuning" section
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from results_file import replace_section  # noqa: E402  (bench/, the script's own folder)

from orchestrator.tuning import Budget, LogUniform, Tuning, plan_searches  # noqa: E402

SCENARIOS = {"64x2x50ms": (64, 2, 0.05), "32x2x0ms": (32, 2, 0.0), "16x2x50ms": (16, 2, 0.05)}
LANDSCAPE = "orchestrator.workloads.tuned:landscape"


def searches(n: int, epochs: int, duration: float):
    tuning = Tuning(space={"lr": LogUniform(1e-4, 1.0)}, select="val_loss", budget=Budget(configurations=n, epochs=epochs))
    params = {"optimum": {"lr": 0.01}, "noise": 0.01, "epochs": epochs, "duration_s": duration}
    return plan_searches(tuning, study="bench_tuning", variant="full", study_seed=1, cells=[("cbench", {"optimizer": "sgd"})], params=params, workload=LANDSCAPE, streams=["init", "data"])


def on_tune(planned, reuse: bool) -> tuple[float, list]:
    from orchestrator.tuning.ray_tune import run_searches

    start = time.perf_counter()
    runs = run_searches(planned, reuse_actors=reuse)
    wall = time.perf_counter() - start
    return wall, [r.selection.position if r.selection else None for r in runs.values()]


def as_trials(planned) -> float:
    from orchestrator.execution.ray_backend import RayExecutor

    trials = [s.trial(p) for s in planned for p in range(len(s.configurations))]
    executor = RayExecutor()
    done: list = []
    start = time.perf_counter()
    executor.run(trials, retries=0, window=executor.window(executor.slots(trials[0].resources)), on_done=done.append, on_killed=lambda t, a: None, stop=threading.Event())
    wall = time.perf_counter() - start
    executor.close()
    if len(done) != len(trials):
        raise SystemExit(f"plain trials: expected {len(trials)} outcomes, got {len(done)}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS))
    parser.add_argument("--write", type=Path, help="replace the '## Tuning' section of this markdown file")
    args = parser.parse_args()
    import ray

    cores = 2
    for attempt in range(3):  # a busy shared machine can miss Ray's 30 s raylet start window
        try:
            ray.init(num_cpus=cores, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
            break
        except Exception:  # noqa: BLE001
            if attempt == 2:
                raise
            ray.shutdown()
    rows = []
    try:
        for name in args.only or list(SCENARIOS):
            n, epochs, duration = SCENARIOS[name]
            planned = searches(n, epochs, duration)
            on_tune(searches(4, 1, 0.0), True)  # warm: Tune's imports and first actors
            ideal = n * epochs * duration / cores
            tune_reuse, picked = on_tune(planned, True)
            tune_fresh, picked_again = on_tune(planned, False)
            plain = as_trials(planned)
            if picked != picked_again:
                raise SystemExit(f"the selection changed between runs: {picked} vs {picked_again}")
            row = {"scenario": name, "ideal": ideal, "reuse": tune_reuse, "fresh": tune_fresh, "plain": plain, "n": n}
            rows.append(row)
            print(render([row]), flush=True)
    finally:
        ray.shutdown()
    table = render(rows)
    print(table)
    if args.write:
        write_section(args.write, table)


def render(rows: list[dict]) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        import ray

        version = ray.__version__
    except ImportError:  # pragma: no cover
        version = "?"
    head = (
        f"Machine: {os.cpu_count()} cores (nproc), {cpu}; Python {platform.python_version()}, ray {version}; local Ray with num_cpus=2; "
        "no MLflow on either path.\n\nCommand: `python bench/bench_tuning.py`\n\n"
        "| scenario | ideal s | Tune, actor reuse s (overhead / config) | Tune, no reuse s (overhead / config) | plain trials s (overhead / config) | Tune reuse / plain |\n"
        "| --- | --- | --- | --- | --- | --- |\n"
    )
    body = ""
    for r in rows:
        per = lambda wall: f"{wall:.2f} ({(wall - r['ideal']) / r['n'] * 1000:.0f} ms)"
        body += f"| {r['scenario']} | {r['ideal']:.2f} | {per(r['reuse'])} | {per(r['fresh'])} | {per(r['plain'])} | {r['reuse'] / r['plain']:.2f} |\n"
    return head + body


def write_section(path: Path, table: str) -> None:
    """Replace the '## Tuning' section of ``path``."""
    replace_section(path, "## Tuning", f"## Tuning\n\n{table}")


if __name__ == "__main__":
    main()
