"""Benchmark: analysis of 100,000 trials x 5 fixed factors (2-way interactions) + 3 seed streams.

The seed streams are crossed with every fixed factor, so the default model also holds the 15
seed x factor interaction terms (``seed_interactions="main"``): 18 REML components, Type III
Wald F tests with Satterthwaite df, shares from the mixed-model coefficients, and the 95%
intervals (analytic since issue #10: no REML refits; ``--bootstrap 0`` skips them).

Run: ``.venv/bin/python bench/bench_analysis.py [--trials N] [--bootstrap B]`` (``analyze``'s
``bootstrap``: 0 = no intervals, any other value = intervals). Prints time, peak
RSS and the machine; the numbers go in bench/RESULTS.md (section "Analysis"). Target: < 10 s
and < 2 GB. Not a timed test: timings depend on the machine. ``cpu_s`` (the process's CPU time
in ``analyze``) is printed beside the wall time because on a shared, loaded machine the wall
time mostly measures the wait for a core.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import subprocess
import time

import numpy as np
import pandas as pd


def make_trials(n: int, seed: int = 0) -> pd.DataFrame:
    """Planted effects: dtype and lr main effects, a dtype:lr interaction, three seed components."""
    rng = np.random.default_rng(seed)
    levels = {"dtype": ["fp32", "bf16"], "accum": ["fp32", "bf16"], "lr": [1e-3, 3e-3, 1e-2],
              "warmup": [0, 100, 1000], "batch": [32, 64, 128, 256]}
    df = pd.DataFrame({f: rng.choice(np.array(v, dtype=object if isinstance(v[0], str) else float), n)
                       for f, v in levels.items()})
    for stream in ("init", "data", "reduction"):
        df[f"seed_{stream}"] = rng.integers(0, 10, n)
    u = {s: rng.normal(0, sd, 10) for s, sd in (("init", 0.05), ("data", 0.03), ("reduction", 0.02))}
    loss = (2.0 + 0.1 * (df.dtype == "bf16") + 0.05 * np.log10(df.lr.astype(float))
            + 0.04 * ((df.dtype == "bf16") & (df.lr.astype(float) > 5e-3))
            + u["init"][df.seed_init] + u["data"][df.seed_data] + u["reduction"][df.seed_reduction]
            + rng.normal(0, 0.05, n))
    df["final_loss"] = loss
    df["diverged"] = (rng.random(n) < 0.02 * (df.dtype == "bf16")).astype(int)
    df["state"] = "FINISHED"
    df["trial_id"] = np.arange(n).astype(str)
    df.attrs["realised"] = {f"seed_{s}": round(float(v.var(ddof=1)), 6) for s, v in u.items()}
    return df


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=100_000)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--seed-interactions", default="main", choices=["main", "none"])
    args = parser.parse_args()
    df = make_trials(args.trials)
    t0, c0 = time.perf_counter(), time.process_time()
    from orchestrator.analysis import analyze

    res = analyze(df, "final_loss", fixed=["dtype", "accum", "lr", "warmup", "batch"],
                  random=["seed_init", "seed_data", "seed_reduction"], interactions=2, bootstrap=args.bootstrap,
                  spread_by="dtype", seed_interactions=args.seed_interactions)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True,
                  text=True).stdout.splitlines() if line.startswith("Model name")), platform.processor())
    vc = {v["component"]: round(v["variance"], 6) for v in res.variance_components}
    print(f"trials={args.trials} analysed={res.n} bootstrap={args.bootstrap} ss_type={res.ss_type} "
          f"random_terms={len(res.model['random_terms'])} tests={res.model['tests']!r}")
    print(f"variance components: {vc}")
    print(f"planted: {df.attrs['realised']} (variance of the 10 drawn effects), Residual 0.0025")
    print(f"time_s={elapsed:.2f} cpu_s={cpu:.2f} peak_rss_mb={rss_mb:.0f} nproc={os.cpu_count()} cpu={model!r} "
          f"date={datetime.date.today().isoformat()} load_avg={os.getloadavg()[0]:.2f} "
          f"intervals={res.intervals['method'] != 'none'}")


if __name__ == "__main__":
    main()
