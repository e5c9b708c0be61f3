"""Recording benchmark: the same trials through every recording path, in one process, on one machine.

Trials: ``--trials`` x ``--duration`` s of the ``synthetic`` workload (sleeping, so the
cost measured is dispatch and records, not compute) with ``--points`` per-step metric
points each. Paths (each a row of the table):

* ``orch-sqlite``: ``run_study`` on the embedded SQLite default;
* ``orch-server-sqlite`` / ``orch-server-postgres``: ``run_study`` against a real local
  ``mlflow server`` (``--workers`` processes) whose backend store is SQLite, or a private
  PostgreSQL cluster started here from Debian's binaries (``initdb`` in a temp folder, a
  free port; torn down at the end); the row ``...-inprocess`` runs the same trials in the
  driver (no Ray), which separates the recording path from Ray's dispatch sharing the CPUs;
* ``server-capacity-Nt``: what that server takes from the plain MLflow client, N threads,
  one record = ``create_run`` + ``log_batch`` (the curve) + ``set_terminated``; measured
  before and after the orchestrator rows (the machine's load drifts), and ``ratio`` is an
  orchestrator row's records/s over the best capacity of the same server in the same run;
  ``server-capacity-Nt-same-record`` writes the orchestrator's own trial record (one trial
  run of the ``orch-server`` row: its ~25 tags, its params, every metric point) with the same
  three calls, which separates what the record's content costs the server from what the
  orchestrator's writers cost.

Each server is warmed up first (a few untimed records from 8 threads: its workers import
lazily on their first requests) and runs without MLflow's job runner
(``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``: background consumers nothing here uses, which
on 2 cores take CPU from the server); both apply to every path alike.
* ``tune-default`` / ``tune-reuse``: Ray Tune ``Tuner`` over the same grid, no logging,
  defaults and ``reuse_actors=True``;
* ``tune-mlflow``: Ray Tune (``reuse_actors=True``) with its ``MLflowLoggerCallback`` into
  a SQLite store.

Also measured: the start-up of ``orchestrator run`` (``--startup``: seconds from launching
the command to the first trial's start, as the trial's run records it) and where the
import time goes (``python -X importtime``), and a 1e6-trial plan (``--plan-trials``).

    python bench/bench_records.py                                  # everything, default sizes
    python bench/bench_records.py --only orch-sqlite --only tune-reuse
    python bench/bench_records.py --write bench/RESULTS.md         # replace the "## Records" section

Every server, database and Ray started here is stopped by its pid at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from results_file import replace_section  # noqa: E402  (bench/, the script's own folder)

from orchestrator import Factor, Study, Variant, make_plan  # noqa: E402

PATHS = [
    "orch-sqlite",
    "orch-server-sqlite",
    "orch-server-sqlite-inprocess",
    "server-capacity-sqlite",
    "durable-server-sqlite",
    "orch-server-postgres",
    "orch-server-postgres-inprocess",
    "durable-server-postgres",
    "server-capacity-postgres",
    "tune-default",
    "tune-reuse",
    "tune-mlflow",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_study(name: str, n: int, duration: float, points: int) -> Study:
    return Study(
        name=name,
        workload="synthetic",
        factors=[Factor("i", list(range(n)))],
        params={"duration_s": duration, "sleep": True, "metric_points": points},
        metrics={"response": "minimize"},
        replicates=1,
        run_order="standard",
        variants={"smoke": Variant(), "full": Variant()},
    ).with_variant("full")


# -- servers -------------------------------------------------------------------------------


class Postgres:
    """A private PostgreSQL cluster from Debian's binaries in a temp folder (as user postgres when run as root)."""

    def __init__(self, folder: Path):
        self.bin = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)
        if self.bin is None:
            raise RuntimeError("PostgreSQL binaries not found under /usr/lib/postgresql (apt-get install postgresql)")
        self.folder = folder
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres")
        data = folder / "data"
        self._sh(f"{self.bin}/initdb -D {data} -A trust -U postgres > {folder}/initdb.log 2>&1")
        self._sh(f"{self.bin}/pg_ctl -D {data} -o '-p {self.port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=on' -l {folder}/log -w start > /dev/null")
        self._sh(f"{self.bin}/createdb -h 127.0.0.1 -p {self.port} -U postgres mlflow")
        self.uri = f"postgresql://postgres@127.0.0.1:{self.port}/mlflow"

    def _sh(self, command: str) -> None:
        cmd = ["su", "postgres", "-c", command] if os.geteuid() == 0 else ["sh", "-c", command]
        subprocess.run(cmd, check=True)

    def stop(self) -> None:
        self._sh(f"{self.bin}/pg_ctl -D {self.folder / 'data'} -m fast stop > /dev/null")
        shutil.rmtree(self.folder, ignore_errors=True)


class MlflowServer:
    """``mlflow server`` on ``backend`` (a store URI), a free port, its own process group."""

    def __init__(self, backend: str, folder: Path, workers: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        folder.mkdir(parents=True, exist_ok=True)
        self.log = open(folder / "server.log", "w")
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend, "--artifacts-destination", str(folder / "artifacts"),
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
        )
        deadline = time.time() + 300
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2):
                    break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
                time.sleep(0.5)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


# -- the paths -----------------------------------------------------------------------------


def orchestrated(study: Study, uri: str, in_process: bool = False) -> dict[str, Any]:
    from orchestrator.execution import run_study

    start = time.perf_counter()
    summary = run_study(study, tracking_uri=uri, progress=False, in_process=in_process, trial_runs="per-trial")
    elapsed = time.perf_counter() - start
    n = len(make_plan(study).trials)
    if summary.finished != n or summary.errors:
        raise RuntimeError(f"orchestrator run incomplete: {summary.line()} {summary.errors[:3]}")
    return {"s": elapsed, "records": n}


def durable(uri: str, n: int, points: int, replicates: int = 10) -> dict[str, Any]:
    """The durable record alone: ``n`` finished trials (``points``-point curves) through the recorder recording per cell.

    Times how fast trials become durable (journal, fsync'd, and the results table's rows) -
    what a study waits on - and, separately, the end of the execution (the table uploaded,
    one run per cell of ``replicates`` trials, the parent closed).
    """
    from orchestrator.design.trial import TrialResult, TrialState
    from orchestrator.records import ExecutionRecorder, open_store

    study = Study(
        name=f"durable_{time.time_ns()}", workload="synthetic", factors=[Factor("i", list(range(max(1, n // replicates))))],
        replicates=replicates, metrics={"response": "minimize"}, variants={"smoke": Variant(), "full": Variant()},
    ).with_variant("full")
    recorder = ExecutionRecorder(open_store(uri), make_plan(study), trial_runs="per-cell")
    trials = recorder.begin()
    start = time.perf_counter()
    for k, trial in enumerate(trials):
        now = int(time.time() * 1000)
        curve = [(step, {"loss": 1.0 / (step + 1)}, now) for step in range(points)]
        result = TrialResult(trial_id=trial.trial_id, state=TrialState.FINISHED, metrics={"response": float(k % 7), "wall_time_s": 0.01, "diverged": 0.0})
        recorder.trial_done(trial, result, curve, started_ms=now)
    recorder.flush()
    journaled = time.perf_counter() - start
    pending = recorder.close("FINISHED", {"trials_finished": len(trials)})
    total = time.perf_counter() - start
    if pending:
        raise RuntimeError(f"{pending} records pending: {recorder.errors[:3]}")
    return {"s": journaled, "records": len(trials), "close_s": round(total - journaled, 2), "cells": len(trials) // replicates}


def trial_record(uri: str, study_name: str) -> dict[str, Any]:
    """One trial run the orchestrator wrote (its tags, params and every metric point), to replay with the plain client."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(study_name)
    run = client.search_runs([experiment.experiment_id], "tags.run_kind = 'trial'", max_results=1)[0]
    points = [m for key in run.data.metrics for m in client.get_metric_history(run.info.run_id, key)]
    tags = {k: v for k, v in run.data.tags.items() if k != "mlflow.parentRunId"}
    return {"tags": tags, "params": dict(run.data.params), "metrics": [(m.key, m.value, m.step) for m in points]}


def capacity(uri: str, threads: int, records: int, points: int, record: dict[str, Any] | None = None) -> dict[str, Any]:
    """The server's own capacity: ``records`` records from ``threads`` threads with the plain client.

    The bare record is ``create_run`` + ``log_batch`` of a ``points``-point curve + ``set_terminated``;
    with ``record`` (from :func:`trial_record`), the same three calls carry the orchestrator's own
    trial record instead (its tags in ``create_run``, its params and metric points in the ``log_batch``).
    """
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.create_experiment(f"capacity-{threads}-{time.time_ns()}")
    counter = iter(range(records))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            ts = int(time.time() * 1000)
            if record is None:
                run = client.create_run(experiment, tags={"bench": "capacity"})
                client.log_batch(run.info.run_id, metrics=[Metric("loss", 1.0 / (i + 1), ts, i) for i in range(points)])
            else:
                run = client.create_run(experiment, tags=record["tags"])
                client.log_batch(run.info.run_id, metrics=[Metric(k, v, ts, step) for k, v, step in record["metrics"]],
                                 params=[Param(k, v) for k, v in record["params"].items()])
            client.set_terminated(run.info.run_id, "FINISHED")

    start = time.perf_counter()
    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return {"s": time.perf_counter() - start, "records": records}


def tune(n: int, duration: float, points: int, *, reuse: bool, mlflow_uri: str | None) -> dict[str, Any]:
    from ray import tune as ray_tune

    def trainable(config: dict) -> None:
        deadline = time.perf_counter() + duration
        for step in range(points):
            time.sleep(max(0.0, (deadline - time.perf_counter()) / max(1, points - step)))
            ray_tune.report({"loss": 1.0 / (step + 1), "step": step})
        if not points:
            time.sleep(duration)
            ray_tune.report({"loss": 0.0})

    callbacks = []
    if mlflow_uri:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        callbacks.append(MLflowLoggerCallback(tracking_uri=mlflow_uri, experiment_name=f"tune-{time.time_ns()}", save_artifact=False))
    storage = tempfile.mkdtemp(prefix="bench_tune_")
    tuner = ray_tune.Tuner(
        ray_tune.with_resources(trainable, {"cpu": 1}),
        param_space={"i": ray_tune.grid_search(list(range(n)))},
        tune_config=ray_tune.TuneConfig(reuse_actors=reuse),
        run_config=ray_tune.RunConfig(storage_path=storage, callbacks=callbacks, verbose=0),
    )
    start = time.perf_counter()
    results = tuner.fit()
    elapsed = time.perf_counter() - start
    shutil.rmtree(storage, ignore_errors=True)
    if results.num_errors:
        raise RuntimeError(f"tune: {results.num_errors} trials errored")
    return {"s": elapsed, "records": n}


# -- start-up and plans --------------------------------------------------------------------


def startup(folder: Path) -> dict[str, Any]:
    """Seconds from launching ``orchestrator run`` to the first trial's start (recorded start time of its run)."""
    from orchestrator.records import Records

    study_file = folder / "startup_study.py"
    study_file.write_text(
        "from orchestrator import Factor, Study, Variant\n"
        "study = Study(name='startup', workload='synthetic', factors=[Factor('i', [0, 1])],\n"
        "              params={'duration_s': 0.01, 'sleep': True}, metrics={'response': 'minimize'},\n"
        "              variants={'smoke': Variant(), 'full': Variant()})\n"
    )
    uri = f"sqlite:///{folder}/startup/mlflow.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    subprocess.run([sys.executable, "-m", "orchestrator", "run", str(study_file), "--variant", "smoke", "--tracking-uri", uri, "--no-progress"], env=env, capture_output=True, check=True)  # the store's tables: not start-up
    launched = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", str(study_file), "--variant", "smoke", "--tracking-uri", uri, "--mode", "rerun", "--no-progress"],
        env=env, capture_output=True, text=True,
    )
    ended = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"orchestrator run failed: {proc.stderr[-1500:]}")
    df, _ = Records.open(str(study_file), "smoke", uri).results()
    from orchestrator.records import open_store

    store = open_store(uri, check=False)
    first = min(store.client.get_run(r).info.start_time for r in df["run_id"]) / 1000
    imports = subprocess.run([sys.executable, "-X", "importtime", "-c", "import orchestrator.cli"], env=env, capture_output=True, text=True).stderr
    top = sorted(
        ((int(line.split("|")[1]), line.split("|")[2].strip()) for line in imports.splitlines() if line.startswith("import time:") and line.split("|")[1].strip().isdigit()),
        reverse=True,
    )[:5]
    return {"to_first_trial_s": round(first - launched, 2), "command_s": round(ended - launched, 2), "cli_import_top": [(name, round(us / 1e6, 2)) for us, name in top]}


def read_bench(folder: Path, n: int) -> dict[str, Any]:
    """Read an execution of ``n`` trials back through ``Records.results`` (the results table): seconds and peak RSS.

    The execution is written the way the recorder writes one (parent run, its tags, the table's
    parts as artifacts, run ids) without running ``n`` trials; reading is what is timed.
    """
    import resource

    from orchestrator.records import Records, open_store
    from orchestrator.records import tags as T
    from orchestrator.records.table import PART_FOLDER, RUN_IDS, part_name, table_rows, write_part, write_run_ids

    side = 100
    replicates = max(1, n // (side * side))
    study = Study(
        name=f"read_{n}", workload="synthetic", factors=[Factor("a", list(range(side))), Factor("b", list(range(side)))],
        replicates=replicates, metrics={"response": "minimize"}, variants={"smoke": Variant(), "full": Variant()},
    ).with_variant("full")
    uri = f"sqlite:///{folder}/read/mlflow.db"
    store = open_store(uri)
    client = store.client
    experiment = store.create_experiment(study.name)
    tags = {T.RUN_KIND: T.KIND_EXECUTION, T.EXECUTION_ID: "e1", T.LINEAGE: "e1", T.VARIANT: "full", T.RESULTS_TABLE: PART_FOLDER}
    parent = client.create_run(experiment, tags=tags).info.run_id
    rows_per_part, entries, ids = 10_000, [], {}
    for i in range(side * side * replicates):
        a, b, r = (i // replicates) // side, (i // replicates) % side, i % replicates
        trial_id = f"t{i:015d}"
        entries.append({
            "trial": {"trial_id": trial_id, "cell_id": f"c{a:03d}{b:03d}", "replicate": r, "order": i, "levels": {"a": a, "b": b},
                      "seeds": {"init": i, "data": i + 1, "reduction": i + 2}, "seed_index": {"init": r, "data": r, "reduction": r}},
            "result": {"state": "FINISHED", "metrics": {"response": a * 0.01 + b * 0.02 + r * 0.001, "wall_time_s": 1.0, "diverged": 0.0}, "info": {"deterministic": True}},
            "curve": [], "ended_ms": 0, "final_step": 0,
        })
        ids[trial_id] = f"run{i}"
    parts = (len(entries) + rows_per_part - 1) // rows_per_part
    for k in range(parts):
        path = write_part(table_rows(entries[k * rows_per_part:(k + 1) * rows_per_part], "e1"), folder / "read" / "spool" / part_name(k))
        client.log_artifact(parent, str(path), PART_FOLDER)
    client.log_artifact(parent, str(write_run_ids(ids, folder / "read" / "spool" / RUN_IDS)), PART_FOLDER)
    client.set_tag(parent, T.RESULTS_PARTS, str(parts))
    client.set_terminated(parent, "FINISHED")
    del entries, ids
    start = time.perf_counter()
    df, meta = Records.open(study, tracking_uri=uri).results()
    elapsed = time.perf_counter() - start
    if meta["source"] != "table" or len(df) != side * side * replicates:
        raise RuntimeError(f"read {len(df)} rows from {meta['source']}")
    return {"trials": len(df), "s": round(elapsed, 2), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def plan_bench(n: int) -> dict[str, Any]:
    """A plan of ``n`` trials in a fresh process: wall time and peak RSS."""
    code = (
        "import resource, time, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from orchestrator import Factor, Study, Variant, make_plan\n"
        f"study = Study(name='big', workload='synthetic', factors=[Factor('a', list(range(100))), Factor('b', list(range(100)))], replicates={n // 10000},\n"
        "    metrics={'response': 'minimize'}, variants={'smoke': Variant(), 'full': Variant()}).with_variant('full')\n"
        "t = time.perf_counter(); plan = make_plan(study); n = sum(1 for _ in plan.iter_trials()) if hasattr(plan, 'iter_trials') else len(plan.trials)\n"
        "print(n, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return {"trials": int(out[0]), "s": round(float(out[1]), 2), "peak_rss_mb": round(float(out[2]))}


# -- main ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--duration", type=float, default=0.01)
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workers", type=int, default=4, help="mlflow server worker processes")
    parser.add_argument("--capacity-records", type=int, default=200)
    parser.add_argument("--durable-trials", type=int, default=5000, help="trials through the journal + results table alone (durable-server-*)")
    parser.add_argument("--capacity-threads", default="1,8,16")
    parser.add_argument("--tune-default-trials", type=int, default=60, help="Tune with defaults starts an actor per trial: fewer trials, the same per-trial cost")
    parser.add_argument("--only", choices=PATHS, action="append")
    parser.add_argument("--skip-paths", action="store_true", help="none of the paths (only --startup / --read-trials / --plan-trials)")
    parser.add_argument("--startup", action="store_true", help="also measure start-up of orchestrator run")
    parser.add_argument("--plan-trials", type=int, default=0, help="also time a plan of this many trials (e.g. 1000000)")
    parser.add_argument("--read-trials", type=int, default=0, help="also time reading an execution of this many trials (e.g. 100000)")
    parser.add_argument("--write", help="replace the '## Records' section of this markdown file")
    args = parser.parse_args()
    import ray

    folder = Path(tempfile.mkdtemp(prefix="bench_records_"))
    os.environ["ORCHESTRATOR_JOURNAL_DIR"] = str(folder / "journal")
    wanted = [] if args.skip_paths else (args.only or PATHS)
    if wanted:
        for attempt in range(10):  # Ray gives its raylet 30 s to register; a loaded shared machine can take longer
            try:
                ray.init(num_cpus=args.cores, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
                break
            except Exception:  # noqa: BLE001
                if ray.is_initialized():
                    ray.shutdown()
                if attempt == 9:
                    raise
                time.sleep(5)
        ray.get([ray.remote(lambda: None).remote() for _ in range(args.cores * 2)])  # warm the worker pool
    ideal = args.trials * args.duration / args.cores
    rows: list[dict[str, Any]] = []
    extras: dict[str, Any] = {}
    stops: list[Callable[[], None]] = []

    def record(path: str, measure: Callable[[], dict[str, Any]], trials: int) -> None:
        try:
            row = measure()
        except Exception as exc:  # noqa: BLE001 - one path failing must not lose the others
            row = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        row["path"] = path
        if "s" in row:
            row["s"] = round(row["s"], 2)
            row["per_record_ms"] = round(1000 * row["s"] / row["records"], 1)
            row["records_per_s"] = round(row["records"] / row["s"], 1)
            if path.startswith(("orch", "tune")):
                row["eff"] = round(trials * args.duration / args.cores / row["s"], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)

    try:
        n = args.trials
        if "orch-sqlite" in wanted:
            uri = f"sqlite:///{folder}/embedded/mlflow.db"
            from orchestrator.records import open_store

            open_store(uri)  # the tables, once (a one-off), outside the timing
            record("orch-sqlite", lambda: orchestrated(make_study(f"sqlite_{time.time_ns()}", n, args.duration, args.points), uri), n)
        for backend in ("sqlite", "postgres"):
            if not any(p.endswith(backend) or f"-{backend}-" in p for p in wanted if p.startswith(("orch-server", "server-capacity", "durable"))):
                continue
            try:
                if backend == "postgres":
                    pg = Postgres(Path(tempfile.mkdtemp(prefix="bench_pg_")))  # user postgres must reach it: not under a 0700 folder
                    stops.append(pg.stop)
                    store_uri = pg.uri
                else:
                    store_uri = f"sqlite:///{folder}/server-sqlite/mlflow.db"
                server = MlflowServer(store_uri, folder / f"server-{backend}", args.workers)
                stops.insert(0, server.stop)
            except Exception as exc:  # noqa: BLE001
                rows.append({"path": f"orch-server-{backend}", "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
                print(json.dumps(rows[-1]), flush=True)
                continue
            capacity(server.url, 8, 16, args.points)  # warm-up, untimed: the server's workers import on first use
            threads_list = [int(t) for t in args.capacity_threads.split(",")]
            if f"server-capacity-{backend}" in wanted:
                for threads in threads_list:
                    record(f"server-capacity-{backend}-{threads}t", lambda: capacity(server.url, threads, args.capacity_records, args.points), 0)
            same: dict[str, Any] | None = None
            if f"orch-server-{backend}" in wanted:
                name = f"server_{backend}_{time.time_ns()}"
                record(f"orch-server-{backend}", lambda: orchestrated(make_study(name, n, args.duration, args.points), server.url), n)
                if f"server-capacity-{backend}" in wanted:
                    same = trial_record(server.url, name)
                    threads = max(threads_list)
                    record(f"server-capacity-{backend}-{threads}t-same-record",
                           lambda: capacity(server.url, threads, args.capacity_records, args.points, record=same), 0)
            if f"orch-server-{backend}-inprocess" in wanted:
                record(f"orch-server-{backend}-inprocess",
                       lambda: orchestrated(make_study(f"inproc_{backend}_{time.time_ns()}", n, args.duration, args.points), server.url, in_process=True), n)
            if f"durable-server-{backend}" in wanted:
                record(f"durable-server-{backend}", lambda: durable(server.url, args.durable_trials, args.points), 0)
            if f"server-capacity-{backend}" in wanted:
                threads = max(threads_list)
                record(f"server-capacity-{backend}-{threads}t-after", lambda: capacity(server.url, threads, args.capacity_records, args.points), 0)
            capacities = [r for r in rows if r["path"].startswith(f"server-capacity-{backend}-") and "records_per_s" in r]
            best = max((r["records_per_s"] for r in capacities if not r["path"].endswith("same-record")), default=0.0)
            best_same = max((r["records_per_s"] for r in capacities if r["path"].endswith("same-record")), default=0.0)
            for r in rows:
                if r["path"].startswith(f"orch-server-{backend}") and best and "records_per_s" in r:
                    r["ratio"] = round(r["records_per_s"] / best, 2)
                    if best_same:
                        r["ratio_same_record"] = round(r["records_per_s"] / best_same, 2)
            server.stop()
            stops.remove(server.stop)
        if "tune-default" in wanted:
            k = min(n, args.tune_default_trials)
            record("tune-default", lambda: tune(k, args.duration, args.points, reuse=False, mlflow_uri=None), k)
        if "tune-reuse" in wanted:
            record("tune-reuse", lambda: tune(n, args.duration, args.points, reuse=True, mlflow_uri=None), n)
        if "tune-mlflow" in wanted:
            uri = f"sqlite:///{folder}/tune/mlflow.db"
            record("tune-mlflow", lambda: tune(n, args.duration, args.points, reuse=True, mlflow_uri=uri), n)
        ray.shutdown()
        if args.startup:
            extras["startup"] = startup(folder)
            print(json.dumps(extras["startup"]), flush=True)
        if args.read_trials:
            extras["read"] = read_bench(folder, args.read_trials)
            print(json.dumps(extras["read"]), flush=True)
        if args.plan_trials:
            extras["plan"] = plan_bench(args.plan_trials)
            print(json.dumps(extras["plan"]), flush=True)
    finally:
        for stop in stops:
            try:
                stop()
            except Exception:  # noqa: BLE001
                pass
        if ray.is_initialized():
            ray.shutdown()
    table = render(rows, extras, args, ideal)
    print(table)
    if args.write:
        write_section(Path(args.write), table)
    shutil.rmtree(folder, ignore_errors=True)


def render(rows: list[dict[str, Any]], extras: dict[str, Any], args: argparse.Namespace, ideal: float) -> str:
    from orchestrator.records.environment import fingerprint

    env = fingerprint()
    lines = [
        "## Records",
        "",
        f"Machine: {os.cpu_count()} cores (nproc), {env.get('cpu_model')}; Python {platform.python_version()}, ray {env.get('ray')}, "
        f"mlflow {env.get('mlflow')}; local Ray with num_cpus={args.cores}; `mlflow server --workers {args.workers}`; "
        "the machine was shared with other engineers' jobs, so absolute times vary - compare rows of one run.",
        "",
        f"Command: `python bench/bench_records.py --trials {args.trials} --duration {args.duration} --points {args.points}`; "
        f"{args.trials} trials x {args.duration * 1000:g} ms (sleep), {args.points} metric points each; ideal {ideal:.2f} s.",
        "",
        "| path | records | time s | per record ms | records/s | efficiency (ideal / time) | ratio to the server's capacity (bare record) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['path']} | - | - | - | - | failed: {r['error']} | - |")
            continue
        if r["path"].startswith("durable"):
            lines.append(f"| {r['path']} (journal + results table; then {r['cells']} cell runs and the upload in {r['close_s']} s) | {r['records']} | {r['s']} | "
                         f"{r['per_record_ms']} | {r['records_per_s']} | - | - |")
            continue
        ratio = str(r.get("ratio", "-")) + (f" ({r['ratio_same_record']} of the same record's)" if "ratio_same_record" in r else "")
        lines.append(f"| {r['path']} | {r['records']} | {r['s']} | {r['per_record_ms']} | {r['records_per_s']} | {r.get('eff', '-')} | {ratio} |")
    if "startup" in extras:
        s = extras["startup"]
        lines += ["", f"Start-up: `orchestrator run` to the first trial {s['to_first_trial_s']} s (whole 2-trial command {s['command_s']} s); "
                  f"slowest imports of `orchestrator.cli`: {', '.join(f'{n} {t} s' for n, t in s['cli_import_top'])}."]
    if "read" in extras:
        r = extras["read"]
        lines += ["", f"Reads: `Records.results()` of a {r['trials']:,}-trial execution (its results table) in {r['s']} s; peak RSS of the bench process {r['peak_rss_mb']} MB."]
    if "plan" in extras:
        p = extras["plan"]
        lines += ["", f"Plan: {p['trials']:,} trials in {p['s']} s, peak RSS {p['peak_rss_mb']} MB (fresh process)."]
    lines.append("")
    return "\n".join(lines)


def write_section(path: Path, table: str) -> None:
    """Replace the '## Records' section of ``path`` (up to the next heading); keep everything else."""
    replace_section(path, "## Records", table)


if __name__ == "__main__":
    main()
