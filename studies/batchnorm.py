"""What does batch normalization change: final accuracy, the usable learning-rate range, or
the spread across seeds?"""

from orchestrator import Factor, Study, Variant

study = Study(
    name="batchnorm",
    description="Model with and without batch normalization x optimizer x learning rate on digits.",
    workload="digits",
    factors=[
        Factor("model", ["mlp", "mlp_bn"]),
        Factor("optimizer", ["sgd", "adam"]),
        Factor("lr", {"sgd": [0.01, 0.1, 1.0], "adam": [1e-4, 1e-3, 1e-2]}, nested_in="optimizer"),
    ],
    params={"width": 64, "depth": 2, "epochs": 8, "batch_size": 64, "precision": "fp32"},
    replicates=4,
    seed_streams={"init": "replicate", "data": "replicate", "reduction": "fixed"},
    metrics={"test_accuracy": "maximize", "test_loss": "minimize"},
    seed=1502,
    variants={
        "smoke": Variant(replicates=2, params={"epochs": 2, "width": 32}, levels={"lr": {"sgd": [0.1, 1.0], "adam": [1e-3, 1e-2]}}),
        "full": Variant(),
    },
)

if __name__ == "__main__":
    study.main()
