"""Do optimizer rankings survive the tuning budget, the model and the seeds?

Optimizer (sgd, momentum, adam, rmsprop) x model (linear, MLP, CNN) x tuning budget on
digits. Every cell tunes its optimizer's own settings (learning rate; momentum, beta1 or
alpha where the optimizer has one) with a random search of ``budget`` configurations on a
validation split carved out of the training set, selected by validation loss, on Ray Tune;
each cell gets several searches (search seeds), and the configuration each search selects
is rerun with fresh initialisation and data-order seeds. The reruns' test loss is the
response: its variance is attributed to optimizer, model, budget, and the search and
rerun seeds, and the ranking of the optimizers is reported with the probability that one
beats another when the seeds are redrawn (Choi et al. 2019; Sivaprasad et al. 2020).
"""

from orchestrator import Factor, Study, Variant
from orchestrator.tuning import Budget, LogUniform, PerLevel, Tuning, Uniform

SPACE = PerLevel(
    "optimizer",
    {
        "sgd": {"lr": LogUniform(1e-3, 1.0)},
        "momentum": {"lr": LogUniform(1e-4, 0.3), "momentum": Uniform(0.5, 0.99)},
        "adam": {"lr": LogUniform(1e-4, 3e-2), "beta1": Uniform(0.8, 0.95)},
        "rmsprop": {"lr": LogUniform(1e-4, 3e-2), "alpha": Uniform(0.9, 0.999)},
    },
)

study = Study(
    name="optimizer_vs_model",
    description="Does the optimizer ranking on digits survive a change of model, of the tuning budget, and of the search and rerun seeds?",
    workload="digits",
    factors=[
        Factor("optimizer", ["sgd", "momentum", "adam", "rmsprop"]),
        Factor("model", ["linear", "mlp", "cnn"]),
        Factor("budget", [4, 16, 64]),
    ],
    params={"validation_size": 0.2, "width": 64, "epochs": 8, "batch_size": 64},
    tuning=Tuning(space=SPACE, select="val_loss", budget=Budget(factor="budget", epochs=8), searcher="random", reruns=3, searches=3),
    seed_streams={"init": "replicate", "data": "replicate", "reduction": "fixed"},
    metrics={"test_loss": "minimize", "val_loss": "minimize", "test_accuracy": "maximize"},
    seed=2017,
    analysis={"metric": "test_loss", "log": True, "ranking": "optimizer"},
    variants={
        "smoke": Variant(
            levels={"optimizer": ["sgd", "adam"], "model": ["linear"], "budget": [2, 3]},
            params={"epochs": 1, "width": 16},
            tuning={"budget": Budget(factor="budget", epochs=1), "reruns": 1, "searches": 2},
        ),
        "writeup": Variant(
            levels={"model": ["linear", "mlp"], "budget": [2, 8]},
            params={"epochs": 2, "width": 32},
            tuning={"budget": Budget(factor="budget", epochs=2), "reruns": 2, "searches": 2},
            description="4 optimizers x 2 models x budgets 2 and 8, 2 searches x 2 reruns, 2 epochs",
        ),
        "full": Variant(),
    },
)


# What changed since the previous write-up (docs/studies/optimizer_vs_model.md at commit c1fc1a0), and why: shown at the
# end of the regenerated page (orchestrator writeup).
CHANGES = [
    "The study was rebuilt on tuning protocols (issue #11). Before: each trial walked a fixed learning-rate grid (narrow: one value; wide: five) serially and selected by training loss, with three optimizers. Now: each cell runs a random search of `budget` configurations on Ray Tune over its optimizer's own settings, selected by validation loss on a split of the training set, several searches per cell (search seeds), and the selected configuration is rerun with fresh seeds; rmsprop was added. The previous conclusion (with a wide grid on the MLP the ranking by test loss differs from the ranking by training loss) is not comparable with this design; what this page shows instead is how much of the outcome is the search's own luck (the seed_search share) and how often each optimizer ranks first when search and rerun seeds are redrawn.",
    "The analysis changed (issue #10): the seed streams' interactions with the fixed factors are random terms of the model wherever the design can estimate them; a fixed effect is tested against its expected-mean-squares error term (balanced) or with Satterthwaite degrees of freedom; a share is the variance of a term's fitted contribution in the mixed model (docs/analysis.md), so the shares sum to 1 without counting seed variance twice; and 95% intervals come from the fit and are shown only where their coverage was measured (the residual; random terms with at least 12 levels), so the share intervals of fixed terms on the previous page are gone - they did not cover.",
]


def findings(df, analysis):
    """Sentences computed from the run (used by ``orchestrator writeup``): the ranking per model and budget."""
    from orchestrator.analysis.ranking import ranking_stability
    from orchestrator.operations.findings import finished, random_share, share_sentence

    ok = finished(df)
    result = ranking_stability(ok, "optimizer", "test_loss", by=["model", "budget"], replicates=2000,
                               order=study.factors[0].all_levels)
    out = [share_sentence(analysis, k=4)]
    search = random_share(analysis, ["seed_search"])
    fixed = sum(s["share"] for s in analysis.get("shares") or [] if s.get("kind") == "fixed" and s.get("share") is not None)
    out.append(f"The search seed (which configurations a cell's search drew) accounts for {100 * search:.1f}% of the variance of "
               f"the log test loss, the design's factors together for {100 * fixed:.1f}%: "
               + ("at these budgets the luck of the search weighs about as much as optimizer, model and budget together."
                  if abs(search - fixed) < 0.05 else
                  "at these budgets, which search a cell got matters more than which optimizer it tuned." if search > fixed else
                  "the factors matter more than the luck of the search."))
    for (model, budget), ranks in result.ranks.groupby(["model", "budget"]):
        ranks = ranks.sort_values("rank")
        best = ranks.iloc[0]
        order = " < ".join(ranks["level"])
        out.append(
            f"model={model}, budget={budget}: by mean test loss {order}; {best['level']} ranks first in "
            f"{best['p_first']:.0%} of the resamples of search and rerun seeds."
        )
    return out


if __name__ == "__main__":
    from orchestrator.cli import study_script_main

    study_script_main(study)
