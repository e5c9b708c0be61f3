"""Screening: seven two-level factors in eight runs (a 2^(7-4) resolution III design).

Uses the ``synthetic`` workload with planted effects, so the screen's answer is known.
"""

from orchestrator import Factor, Fractional, Study, Variant

study = Study(
    name="screening_demo",
    description="Which of seven two-level settings move the response? A 2^(7-4) resolution III screen.",
    workload="synthetic",
    factors=[
        Factor("A", [-1, 1]),
        Factor("B", [-1, 1]),
        Factor("C", [-1, 1]),
        Factor("D", [-1, 1]),
        Factor("E", [-1, 1]),
        Factor("F", [-1, 1]),
        Factor("G", [-1, 1]),
    ],
    design=Fractional(resolution=3),
    params={"effects": {"A": {"-1": -2.0, "1": 2.0}, "D": {"-1": -1.0, "1": 1.0}}, "residual_sd": 0.1},
    metrics={"response": "minimize"},
    replicates=2,
    seed=7,
    variants={"smoke": Variant(replicates=1), "full": Variant()},
)

if __name__ == "__main__":
    from orchestrator.cli import study_script_main

    study_script_main(study)
