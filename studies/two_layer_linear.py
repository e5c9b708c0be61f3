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

# What changed since the previous write-up (docs/studies/two_layer_linear.md at commit c1fc1a0), and why: shown at the
# end of the regenerated page (orchestrator writeup).
CHANGES = [
    "The analysis changed (issue #10): the seed streams' interactions with the fixed factors are random terms of the model wherever the design can estimate them; a fixed effect is tested against its expected-mean-squares error term (balanced) or with Satterthwaite degrees of freedom; a share is the variance of a term's fitted contribution in the mixed model (docs/analysis.md), so the shares sum to 1 without counting seed variance twice; and 95% intervals come from the fit and are shown only where their coverage was measured (the residual; random terms with at least 12 levels), so the share intervals of fixed terms on the previous page are gone - they did not cover.",
    "Every trial reproduced the previous run's final loss exactly (396 of 396); the conclusions are unchanged. The third-largest share is now `model` (0.4%) where it was `optimizer/lr:model` (0.4%): the shares are now variances of fitted contributions.",
]


def findings(df, analysis):
    """Sentences computed from the run (used by ``orchestrator writeup``)."""
    import math

    from orchestrator.operations.findings import finished, fmt, group_stats, share_sentence

    out = []
    by_opt = group_stats(df, ["optimizer"], "final_loss").set_index("optimizer")
    for opt, row in by_opt.iterrows():
        out.append(f"{opt}: median final loss {fmt(row['median'])} (range {fmt(row['min'])} to {fmt(row['max'])}), "
                   f"{int(row['diverged'])} of {int(row['trials'])} trials diverged.")
    ok = finished(df)
    gaps = {}
    for model, sub in ok.groupby("model"):
        best = sub.groupby(["optimizer", "lr"])["final_loss"].median().groupby("optimizer").min()
        if not {"lm", "gd", "adam"} <= set(best.index):
            continue
        first_order = min(best["gd"], best["adam"])
        gap = math.log10(first_order / best["lm"]) if best["lm"] > 0 and first_order > 0 else float("nan")
        gaps[model] = gap
        text = (f"model={model}, each optimizer at its best learning rate: median final loss {fmt(best['gd'])} for gradient "
                f"descent, {fmt(best['adam'])} for Adam, {fmt(best['lm'])} for Levenberg-Marquardt. ")
        if gap > 3:
            text += f"LM ends {fmt(gap, 3)} orders of magnitude lower in the same number of steps: first-order methods plateau, LM does not."
        else:
            text += f"The best first-order method is within {fmt(gap, 2)} orders of magnitude of LM: no plateau here."
        out.append(text)
    if gaps.get("deep_linear", 0) > 3 and gaps.get("linear", 99) <= 3:
        out.append("The same data fitted by a plain linear model shows no plateau: the first-order plateau comes from the "
                   "product parametrization W1 W2, not from the conditioning of A alone. This is where the result departs "
                   "from reading the talk's experiment as a conditioning problem of the data.")
    deep = ok[ok["model"] == "deep_linear"] if "deep_linear" in set(ok.get("model", [])) else ok
    for recipe in sorted(deep["recipe"].unique()) if "recipe" in deep else []:
        gd = deep[(deep["optimizer"] == "gd") & (deep["recipe"] == recipe)]
        if gd["kappa"].nunique() > 1:
            low, high = gd["kappa"].min(), gd["kappa"].max()
            a = gd[gd["kappa"] == low]["final_loss"].median()
            b = gd[gd["kappa"] == high]["final_loss"].median()
            ratio = b / a if a else float("nan")
            text = (f"Gradient descent on the deep linear model with the {recipe} recipe: median final loss {fmt(a)} at "
                    f"kappa={fmt(low)} and {fmt(b)} at kappa={fmt(high)} (ratio {fmt(ratio)}). ")
            if ratio > 2:
                text += "A worse-conditioned A made the plateau higher, as the conditioning explanation predicts."
            elif ratio >= 0.5:
                text += "The plateau barely moved with the condition number of A: here kappa is not what sets it."
            else:
                text += ("A larger condition number gave a lower final loss: the raw loss shrinks with the scale of A "
                         "(its small singular values carry little of the target), so kappa alone does not explain "
                         "the plateau; compare losses relative to the initial loss before blaming conditioning.")
            out.append(text)
    out.append(share_sentence(analysis))
    return out


if __name__ == "__main__":
    from orchestrator.cli import study_script_main

    study_script_main(study)
