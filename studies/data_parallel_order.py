"""How much does the order of accumulation on a data-parallel cluster alone move the outcome?

The global batch is held equal while it is split across ``world_size`` workers (Ray Train,
gloo on CPU, NCCL on GPU) and ``grad_accumulation`` micro-batches per worker, so the
mathematics of every step is the same and only the order (and grouping) of the additions
changes: per micro-batch, then across micro-batches, then across workers in the all-reduce,
each addition rounded in the trial's accumulator (``accumulate: working`` - bfloat16 under
pure bf16). Crossed with precision and the init seed stream, so the analysis can set the
effect of the reduction order against the spread across seeds.
"""

from orchestrator import Factor, Study, Variant

study = Study(
    name="data_parallel_order",
    description="Teacher-student regression, global batch 64 held equal: world size x gradient accumulation x precision, "
                "against the spread across init seeds.",
    workload="teacher_student",
    factors=[
        Factor("world_size", [1, 2, 4]),
        Factor("grad_accumulation", [1, 2, 4]),
        Factor("precision", ["fp32", "bf16"]),
    ],
    params={"model": "mlp", "width": 32, "optimizer": "sgd", "lr": 0.05, "batch_size": 64, "steps": 150,
            "train_samples": 512, "test_samples": 512, "accumulate": "working", "allreduce": "backend", "threads": 1},
    seed_streams={"init": 5, "data": "fixed", "reduction": "fixed"},
    metrics={"test_loss": "minimize", "train_loss": "minimize"},
    resources={"cpus": 1},  # per worker: a trial with world_size 4 holds 4 CPUs (and 4 GPUs in `full`: worker_gpus)
    seed=1212,
    variants={
        "smoke": Variant(
            params={"steps": 10, "train_samples": 128, "test_samples": 128},
            levels={"world_size": [1, 2], "grad_accumulation": [1, 2], "precision": ["bf16"]},
            seed_streams={"init": "fixed", "data": "fixed", "reduction": "fixed"},
            description="2 world sizes x 2 accumulation counts in bf16, one seed: 4 trials, 2 of them on 2 gloo workers "
                        "(each multi-worker trial starts a Ray Train controller and 2 worker processes: ~10-20 s on 2 idle CPUs)",
        ),
        "writeup": Variant(
            params={"steps": 40, "train_samples": 256, "test_samples": 256},
            levels={"world_size": [1, 2], "grad_accumulation": [1, 2], "precision": ["bf16"]},
            seed_streams={"init": 2, "data": "fixed", "reduction": "fixed"},
            description="2 world sizes x 2 accumulation counts in bf16 x 2 init seeds: 8 trials (4 on 2 gloo workers), "
                        "a few minutes on 2 idle CPUs; fp32 (within rounding) is covered by tests/test_data_parallel.py",
        ),
        "full": Variant(
            params={"worker_gpus": 1},
            description="3 x 3 x 2 cells x 5 init seeds = 90 trials on a GPU cluster: one GPU per worker (NCCL), "
                        "up to 4 GPUs per trial; world_size 1 trials run as plain GPU tasks",
        ),
    },
)


# What changed since the previous write-up (docs/studies/data_parallel_order.md at commit f2939fb), and why: shown at the
# end of the regenerated page (orchestrator writeup).
CHANGES = [
    "Same execution design and bit-identical trials as the previous page; intervals now come from the fit and only measured ones are shown (issue #10): the residual's, here [0.0, 0.2]% of the variance; the seed_init interval is withheld (2 sampled seeds, fewer than the 12 whose coverage was measured).",
]


def findings(df, analysis):
    """Sentences computed from the run (used by ``orchestrator writeup``)."""
    from orchestrator.operations.findings import finished, fmt, share, share_sentence

    out = [share_sentence(analysis)]
    ok = finished(df)
    seed_cols = [c for c in ok.columns if c.startswith("seed_") and ok[c].nunique() > 1]
    order = sum(share(analysis, name) or 0.0 for name in ("world_size", "grad_accumulation", "world_size:grad_accumulation"))
    seeds = sum(share(analysis, name) or 0.0 for name in seed_cols)
    if order + seeds > 0:
        out.append(f"World size and gradient accumulation (main effects and their interaction) account for {100 * order:.1f}% of the "
                   f"variance of the test loss, the init seed for {100 * seeds:.1f}%: "
                   + ("the order of accumulation moves the outcome less than the seed does." if seeds > order else
                      "the order of accumulation moves the outcome more than the seed does."))
    split_all = ok[ok["world_size"].astype(int) * ok["grad_accumulation"].astype(int) > 1].assign(
        parts=lambda d: d["world_size"].astype(int) * d["grad_accumulation"].astype(int))
    same = [g for _, g in split_all.groupby(["precision", "parts"] + seed_cols) if g[["world_size", "grad_accumulation"]].drop_duplicates().shape[0] > 1]
    if same:
        matched = sum(g["param_hash"].nunique() == 1 for g in same)
        out.append(f"Splits into the same number of micro-batches (world size x accumulation), on separate workers or accumulated on one: "
                   f"{matched} of {len(same)} such groups ended bit-identical - "
                   + ("the number and grouping of the partial sums decides the result, not whether an all-reduce or a local loop adds them."
                      if matched == len(same) else "where they differ, the all-reduce adds in another order than the local accumulation."))
    for precision, group in ok.groupby("precision"):
        size = group["world_size"].astype(int) * group["grad_accumulation"].astype(int)
        base = group[size == 1][seed_cols + ["test_loss", "param_hash"]].rename(columns={"test_loss": "base_loss", "param_hash": "base_hash"})
        split = group[size > 1]
        if base.empty or split.empty:
            continue
        merged = split.merge(base, on=seed_cols) if seed_cols else split.assign(_k=0).merge(base.assign(_k=0), on="_k")
        identical = int((merged["param_hash"] == merged["base_hash"]).sum())
        moved = ((merged["test_loss"] - merged["base_loss"]).abs() / merged["base_loss"].abs()).astype(float)
        spread = float(base["base_loss"].std() / base["base_loss"].mean()) if len(base) > 1 else float("nan")
        out.append(
            f"precision={precision}: {identical} of {len(merged)} split trials (world size x accumulation > 1) ended bit-identical "
            f"to the single-worker, single-batch trial of the same seed; their test loss moved by {fmt(moved.median())} relative "
            f"(median; at most {fmt(moved.max())})"
            + (f", against a relative spread of {fmt(spread)} across init seeds." if spread == spread else ".")
        )
    return out


if __name__ == "__main__":
    from orchestrator.cli import study_script_main

    study_script_main(study)
