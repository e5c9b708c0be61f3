"""How the tuning protocol and the model choice change an optimizer ranking.

Optimizer x model x tuning-grid width on digits. Each trial tunes the learning rate over
its grid (narrow: one default value; wide: five values over two decades), picks the value
with the lowest final training loss, and reports that run's training and test metrics. A
method can win on training loss and lose on test loss, and a wide grid can reorder methods
that a narrow grid ranked the other way.
"""

from orchestrator import Factor, Study, Variant

GRIDS = {
    "sgd": {"narrow": [0.1], "wide": [0.01, 0.03, 0.1, 0.3, 1.0]},
    "momentum": {"narrow": [0.01], "wide": [0.001, 0.003, 0.01, 0.03, 0.1]},
    "adam": {"narrow": [1e-3], "wide": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]},
}

study = Study(
    name="optimizer_vs_model",
    description="Does the optimizer ranking on digits survive a change of model and of the tuning grid? Training loss versus test loss.",
    workload="tuned",
    factors=[
        Factor("optimizer", ["sgd", "momentum", "adam"]),
        Factor("model", ["linear", "mlp"]),
        Factor("grid", ["narrow", "wide"]),
    ],
    params={"base_workload": "digits", "tune": "lr", "grids": GRIDS, "select_by": "train_loss", "width": 64, "epochs": 8, "batch_size": 64},
    replicates=3,
    seed_streams={"init": "replicate", "data": "replicate", "reduction": "fixed"},
    metrics={"test_loss": "minimize", "train_loss": "minimize", "test_accuracy": "maximize"},
    seed=2017,
    variants={
        "smoke": Variant(replicates=2, params={"epochs": 1, "width": 32, "grids": {k: {"narrow": v["narrow"], "wide": v["wide"][1:4:2]} for k, v in GRIDS.items()}}),
        "writeup": Variant(replicates=2, params={"epochs": 3}, description="all 12 cells, 2 seeds, 3 epochs per grid value"),
        "full": Variant(),
    },
)

def findings(df, analysis):
    """Sentences computed from the run (used by ``orchestrator writeup``)."""
    from orchestrator.operations.findings import finished

    out = []
    ok = finished(df)
    for (model, grid), group in ok.groupby(["model", "grid"]):
        means = group.groupby("optimizer")[["train_loss", "test_loss"]].mean()
        by_train = " < ".join(means["train_loss"].sort_values().index)
        by_test = " < ".join(means["test_loss"].sort_values().index)
        same = "the same ranking" if by_train == by_test else "a different ranking"
        out.append(f"model={model}, grid={grid}: by training loss {by_train}; by test loss {by_test} ({same}).")
    return out


if __name__ == "__main__":
    from orchestrator.cli import study_script_main

    study_script_main(study)
