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
        "full": Variant(description="the talk's grid, 5 init seeds, 5000 steps"),
    },
)

if __name__ == "__main__":
    study.main()
