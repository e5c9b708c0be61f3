"""Calibration of the analysis at the size of issue #10 (type-I error, interval coverage).

Run: ``.venv/bin/python bench/bench_calibration.py [--sims 1000] [--coverage-sims 400]
[--part all|type1|coverage] [--coverage-scenario NAME] [--withheld]``. Prints one line per figure and the machine;
the figures go in bench/RESULTS.md (section "Analysis calibration"). Targets (issue #10):
type-I error of a null fixed factor within [0.035, 0.065] over >= 1000 datasets in each of the
three scenarios; 95% interval coverage of variance components and shares within [0.92, 0.98]
over >= 400 datasets in each coverage scenario (``--withheld`` also measures the intervals the
analysis withholds). The scenarios are in ``orchestrator.analysis.calibration``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
import warnings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sims", type=int, default=1000)
    parser.add_argument("--coverage-sims", type=int, default=400)
    parser.add_argument("--coverage-scenario", default=None, help="only this coverage scenario")
    parser.add_argument("--withheld", action="store_true", help="also measure the withheld intervals")
    parser.add_argument("--part", choices=["all", "type1", "coverage"], default="all")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--scenario", choices=["a", "b", "c"], default=None, help="only this type-I scenario")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from orchestrator.analysis.calibration import COVERAGE_SCENARIOS, SCENARIOS, coverage, type_one_error

    print(f"machine: nproc={os.cpu_count()} {platform.processor() or platform.machine()} "
          f"python={platform.python_version()} date={datetime.date.today().isoformat()}", flush=True)
    if args.part in ("all", "type1"):
        for sc in [args.scenario] if args.scenario else list(SCENARIOS):
            t0 = time.perf_counter()
            res = type_one_error(sc, sims=args.sims, seed=args.seed,
                                 progress=lambda r: print("progress " + json.dumps(r), flush=True))
            before = type_one_error(sc, sims=min(args.sims, 200), seed=args.seed, seed_interactions="none")
            ok = 0.035 <= res["rate"] <= 0.065
            print(f"type-I scenario {sc} ({SCENARIOS[sc]}): {res['rate']:.4f} +- {res['se']:.4f} over {res['tested']} "
                  f"datasets [{'in' if ok else 'OUTSIDE'} 0.035-0.065]; mean share of the null factor "
                  f"{100 * res['mean_share_A']:.2f}%; additive model (seed_interactions=none): {before['rate']:.3f} "
                  f"over {before['tested']}; {time.perf_counter() - t0:.0f} s", flush=True)
            print("json " + json.dumps({"type1": res, "additive": before}), flush=True)
    if args.part in ("all", "coverage"):
        names = [args.coverage_scenario] if args.coverage_scenario else list(COVERAGE_SCENARIOS)
        for name in names:
            t0 = time.perf_counter()
            res = coverage(sims=args.coverage_sims, seed=args.seed, withheld=args.withheld,
                           progress=lambda r: print("progress " + json.dumps(r), flush=True), **COVERAGE_SCENARIOS[name])
            for key, value in res["coverage"].items():
                ok = 0.92 <= value <= 0.98
                print(f"coverage [{name}] {key}: {value:.3f} over {res['counted'][key]} datasets "
                      f"[{'in' if ok else 'OUTSIDE'} 0.92-0.98]", flush=True)
            print(f"coverage [{name}]: {args.coverage_sims} datasets, x 3 levels x 2 replicates, withheld "
                  f"{'measured' if args.withheld else 'not measured'}; {time.perf_counter() - t0:.0f} s; "
                  f"load average {os.getloadavg()[0]:.1f}", flush=True)
            print("json " + json.dumps({"scenario": name, **res}), flush=True)

if __name__ == "__main__":
    main()
