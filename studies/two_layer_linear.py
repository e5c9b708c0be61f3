"""The talk's two-layer linear network: where do first-order methods plateau, does
Levenberg–Marquardt escape, and is the conditioning of A really the cause?

Y_hat = W1 W2 X with W1 10x6, W2 6x6, X a 6x1000 Gaussian matrix, Y = A X. The problem is
realisable, so the optimum loss is zero and the final loss is the excess loss. Learning
rates are nested per optimizer as in the talk; the init seed varies per replicate and is
shared across optimizers (the same starting weights for every method).
"""

from orchestrator import Factor, Study, Variant

study = Study(
    name="two_layer_linear",
    description="Where do gradient descent and Adam plateau on the two-layer linear network, does Levenberg-Marquardt escape, and is conditioning the cause?",
    workload="two_layer_linear",
    factors=[
        Factor("optimizer", ["gd", "adam", "lm"]),
        Factor(
            "lr",
            {"gd": [1e-6, 1e-5, 1e-4, 1e-3], "adam": [1e-5, 1e-4, 1e-3, 1e-2], "lm": [0.1, 0.5, 1.0]},
            nested_in="optimizer",
        ),
        Factor("recipe", ["linspace", "geometric"]),
        Factor("kappa", [10.0, 1e3, 1e5]),
        Factor("model", ["deep_linear", "linear"]),
    ],
    params={"steps": 5000, "precision": "fp64", "loss_reduction": "sum", "log_every": 50},
    replicates=5,
    seed_streams={"init": "replicate", "data": "fixed", "reduction": "fixed"},
    metrics={"final_loss": "minimize", "grad_norm": "minimize"},
    resources={"cpus": 1},
    analysis={"log": True},
    seed=20260101,
    variants={
        "smoke": Variant(
            replicates=2,
            params={"steps": 300, "log_every": 30},
            levels={"lr": {"gd": [1e-5], "adam": [1e-2], "lm": [1.0]}, "kappa": [10.0, 1e4], "model": ["deep_linear"]},
            description="3 optimizers x 2 recipes x 2 condition numbers, 2 init seeds: under a minute on 2 CPUs",
        ),
        "writeup": Variant(
            replicates=3,
            params={"steps": 500, "log_every": 25},
            levels={"kappa": [10.0, 1e3, 1e5]},
            description="the talk's learning-rate grid, both recipes and models, 3 condition numbers, 3 init seeds, 500 steps: a few minutes on 2 CPUs",
        ),
        "full": Variant(description="the talk's grid, 5 init seeds, 5000 steps"),
    },
)

def findings(df, analysis):
    """Sentences computed from the run (used by ``orchestrator writeup``)."""
    import math

    from orchestrator.findings import finished, fmt, group_stats, share_sentence

    out = []
    by_opt = group_stats(df, ["optimizer"], "final_loss").set_index("optimizer")
    for opt, row in by_opt.iterrows():
        out.append(f"{opt}: median final loss {fmt(row['median'])} (range {fmt(row['min'])} to {fmt(row['max'])}), "
                   f"{int(row['diverged'])} of {int(row['trials'])} trials diverged.")
    ok = finished(df)
    if {"lm", "gd", "adam"} <= set(by_opt.index):
        best_first_order = min(by_opt.loc["gd", "median"], by_opt.loc["adam", "median"])
        lm = by_opt.loc["lm", "median"]
        if lm > 0 and best_first_order > 0:
            out.append(f"Levenberg-Marquardt ends {fmt(math.log10(best_first_order / lm), 3)} orders of magnitude below "
                       "the better first-order method within the same number of steps: first-order methods plateau, LM does not.")
    for recipe in sorted(ok["recipe"].unique()) if "recipe" in ok else []:
        gd = ok[(ok["optimizer"] == "gd") & (ok["recipe"] == recipe)]
        if gd["kappa"].nunique() > 1:
            low, high = gd["kappa"].min(), gd["kappa"].max()
            a = gd[gd["kappa"] == low]["final_loss"].median()
            b = gd[gd["kappa"] == high]["final_loss"].median()
            out.append(f"Gradient descent with the {recipe} recipe: median final loss {fmt(a)} at kappa={fmt(low)} and "
                       f"{fmt(b)} at kappa={fmt(high)} (ratio {fmt(b / a if a else float('nan'))}).")
            if a and b < a:
                out.append(f"With the {recipe} recipe a larger condition number did not make gradient descent's final loss "
                           "worse: the raw loss also shrinks with the scale of A (its small singular values carry little "
                           "of the target), so kappa alone does not explain the plateau. Compare excess loss relative "
                           "to the initial loss before blaming conditioning.")
    out.append(share_sentence(analysis))
    return out


if __name__ == "__main__":
    study.main()
