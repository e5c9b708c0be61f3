"""The "Boris" bug: Adam's beta2 = 0.999 rounds to exactly 1.0 in bfloat16.

Optimizer-state precision x beta2 x eps on a small real workload (digits). The plan shows
the representability audit (beta2 = 0.999 -> 1.0 in bf16; eps = 1e-8 -> 0 in fp16), and
the run shows what the affected cells actually do.
"""

from orchestrator import Factor, Study, Variant

study = Study(
    name="adam_precision",
    description="What happens to Adam when beta2 or eps cannot be represented in the precision its state lives in?",
    workload="digits",
    factors=[
        Factor("precision", ["fp32", "bf16", "fp16"]),
        Factor("beta2", [0.99, 0.999, 0.9999]),
        Factor("eps", [1e-8, 1e-6]),
    ],
    params={"optimizer": "adam", "lr": 1e-3, "model": "mlp", "width": 64, "epochs": 10, "batch_size": 64},
    replicates=3,
    seed_streams={"init": "replicate", "data": "replicate", "reduction": "fixed"},
    metrics={"test_accuracy": "maximize", "test_loss": "minimize"},
    seed=999,
    variants={
        "smoke": Variant(replicates=2, params={"epochs": 2}, levels={"precision": ["fp32", "bf16"], "eps": [1e-8]}),
        "writeup": Variant(replicates=2, params={"epochs": 4}, description="all 18 cells, 2 seeds, 4 epochs: about a minute on 2 CPUs"),
        "full": Variant(),
    },
)

def findings(df, analysis):
    """Sentences computed from the run (used by ``orchestrator writeup``)."""
    from orchestrator.findings import fmt, group_stats, share_sentence

    out = []
    stats = group_stats(df, ["precision", "beta2", "eps"], "test_accuracy")
    for _, row in stats.iterrows():
        out.append(f"precision={row['precision']}, beta2={row['beta2']}, eps={row['eps']}: {int(row['diverged'])} of "
                   f"{int(row['trials'])} trials diverged; mean test accuracy of the others {fmt(row['mean'])}.")
    flagged = df[(df["precision"] == "bf16") & (df["beta2"] >= 0.999)]
    if len(flagged):
        rate = flagged["diverged"].fillna(0).mean()
        out.append(f"The audit flagged bf16 with beta2 >= 0.999 (beta2 rounds to 1.0) before any trial ran; at run time "
                   f"{100 * rate:.0f}% of those trials diverged" + (", so the plan-time warning was right." if rate > 0.5 else
                   ", so in this regime the rounding did not break training."))
    clean = df[(df["precision"] == "bf16") & (df["beta2"] < 0.999)]
    if len(clean):
        from orchestrator.numerics.audit import round_to_dtype

        stored = round_to_dtype(0.99, "bfloat16")
        out.append(f"bf16 with beta2 = 0.99 (stored as {stored!r}): {int(clean['diverged'].fillna(0).sum())} of {len(clean)} trials diverged.")
    out.append(share_sentence(analysis))
    return out


if __name__ == "__main__":
    study.main()
