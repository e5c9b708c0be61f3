"""The numerics kit: audit, reduction orders, determinism, LM vs first-order, divergence,
precision records, and every level of every factor on the built-in workloads."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from orchestrator.execution.context import TrialContext
from orchestrator.numerics import MODELS, OPTIMIZERS, PRECISION_LEVELS, REDUCTION_ORDERS, audit_config, check_levels
from orchestrator.numerics.audit import round_to_dtype
from orchestrator.numerics.reduction import ordered_sum
from orchestrator.design.trial import Trial, TrialState
from orchestrator.execution.worker import execute_trial

SEEDS = {"init": 11, "data": 22, "reduction": 33}


def make_trial(workload: str, seeds: dict | None = None, trial_id: str = "t0", **params) -> Trial:
    return Trial(
        study="numerics", variant="test", trial_id=trial_id, cell_id="c0", replicate=0, levels={}, params=params,
        seeds={**SEEDS, **(seeds or {})}, seed_index={}, workload=workload,
    )


def run(workload: str, seeds: dict | None = None, **params):
    result = execute_trial(make_trial(workload, seeds, **params))
    assert result.state is TrialState.FINISHED, result.error
    return result


# --- representability audit -------------------------------------------------------------


def test_audit_flags_boris_bug_beta2_in_bf16():
    findings = audit_config({"optimizer": "adam", "precision": "bf16", "beta2": 0.999, "eps": 1e-8, "lr": 1e-3})
    assert [(f.parameter, f.dtype, f.stored) for f in findings] == [("beta2", "bfloat16", 1.0)]
    assert "bias correction" in findings[0].message and "Boris" in findings[0].message
    assert findings[0].to_dict()["value"] == 0.999


def test_audit_flags_eps_in_fp16_and_0_9999():
    findings = {f.parameter: f for f in audit_config({"optimizer": "adam", "precision": "fp16", "beta2": 0.9999, "eps": 1e-8})}
    assert findings["eps"].stored == 0.0 and "underflows" in findings["eps"].message
    assert findings["beta2"].stored == 1.0


def test_audit_uses_defaults_and_passes_clean_settings():
    assert audit_config({"optimizer": "adam", "precision": "fp32", "beta2": 0.999, "eps": 1e-8, "lr": 1e-3}) == []
    assert audit_config({"optimizer": "adam", "precision": "bf16_autocast"}) == []  # state stays float32
    assert audit_config({"optimizer": "sgd", "precision": "bf16", "lr": 0.1}) == []
    default = audit_config({"optimizer": "adam", "precision": "bf16"})
    assert [f.parameter for f in default] == ["beta2"] and "default" in default[0].message


def test_bf16_rounding_is_round_to_nearest_even():
    assert round_to_dtype(1 + 2**-8, "bfloat16") == 1.0  # tie -> even mantissa 0
    assert round_to_dtype(1 + 3 * 2**-8, "bfloat16") == 1 + 2**-6  # tie -> even mantissa 2
    assert round_to_dtype(1 + 2**-8 + 2**-20, "bfloat16") == 1 + 2**-7  # above the tie
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.standard_normal(2000) * 10.0 ** rng.integers(-30, 30, 2000), [0.999, 0.9999, 1e-8]])
    ours = [round_to_dtype(float(v), "bfloat16") for v in values]
    assert ours == torch.tensor(values, dtype=torch.float64).float().bfloat16().double().tolist()


def test_check_levels_suggests_the_closest_name():
    (problem,) = check_levels({"precision": "bf61"})
    assert 'Did you mean "bf16"?' in problem
    assert check_levels({"precision": "bf16", "optimizer": "lm", "model": "mlp_bn", "reduction_order": "kahan"}) == []


def test_planning_imports_stay_torch_free():
    code = "import sys, orchestrator.numerics, orchestrator.numerics.audit; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- reduction orders ---------------------------------------------------------------------


def adversarial(n: int = 4096) -> torch.Tensor:
    """One large value, then many small ones: naive left-to-right summation loses them."""
    rng = np.random.default_rng(1)
    return torch.tensor(np.concatenate([[1.0], rng.uniform(1e-4, 1e-3, n)]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kahan_and_fp64_beat_naive_summation(dtype):
    values = adversarial().to(dtype)
    exact = math.fsum(values.double().tolist())
    error = {order: abs(float(ordered_sum(values, order)) - exact) for order in ("sequential", "kahan", "fp64", "pairwise")}
    ulp = float(torch.finfo(dtype).eps) * exact
    assert error["kahan"] <= ulp and error["fp64"] <= ulp
    assert error["sequential"] > 10 * max(error["kahan"], error["fp64"], ulp / 10)
    assert error["pairwise"] < error["sequential"]


def test_every_reduction_order_sums_and_unknown_is_named():
    values = torch.arange(1.0, 101.0)
    generator = torch.Generator().manual_seed(0)
    for order in REDUCTION_ORDERS:
        assert float(ordered_sum(values, order, generator=generator)) == 5050.0
    with pytest.raises(ValueError, match=r'Did you mean "kahan"'):
        ordered_sum(values, "kahn")


# --- determinism contract -----------------------------------------------------------------

_CHILD = """
import json, sys
from orchestrator.design.trial import Trial
from orchestrator.execution.worker import execute_trial
t = Trial.from_dict(json.loads(sys.argv[1]))
r = execute_trial(t)
print(json.dumps({"hash": r.info.get("param_hash"), "state": r.state.value, "error": r.error}))
"""


def test_fixed_order_is_bit_identical_across_processes():
    trial = make_trial("digits", epochs=1, width=16, reduction_order="fixed", precision="fp32")
    hashes = []
    # two processes at once (one per core): each imports torch and trains on its own
    children = [subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(trial.to_dict())], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for child in children:
        stdout, stderr = child.communicate(timeout=300)
        assert child.returncode == 0, stderr[-2000:]
        data = json.loads(stdout.strip().splitlines()[-1])
        assert data["state"] == "FINISHED", data["error"]
        hashes.append(data["hash"])
    assert hashes[0] == hashes[1] and len(hashes[0]) == 64
    other = run("digits", seeds={"init": 12}, epochs=1, width=16, reduction_order="fixed", precision="fp32")
    assert other.info["param_hash"] != hashes[0]


def test_shuffled_order_differs_with_the_reduction_seed_in_bf16():
    common = dict(optimizer="gd", lr=1e-5, precision="bf16", reduction_order="shuffled", steps=60)
    a = run("two_layer_linear", seeds={"reduction": 1}, **common)
    b = run("two_layer_linear", seeds={"reduction": 2}, **common)
    a2 = run("two_layer_linear", seeds={"reduction": 1}, **common)
    assert a.info["param_hash"] != b.info["param_hash"]
    assert a.info["param_hash"] == a2.info["param_hash"]
    assert a.info["param_dtypes"] == ["bfloat16"] and a.info["accumulator_dtype"] == "bfloat16"


def test_reference_twin_measures_what_the_order_changed():
    r = run("two_layer_linear", optimizer="gd", lr=1e-5, precision="bf16", reduction_order="shuffled", reference_order="fp64", steps=40)
    assert r.metrics["ref_param_distance"] > 0 and r.metrics["ref_first_diff_step"] >= 0 and r.metrics["ref_identical"] == 0
    same = run("two_layer_linear", optimizer="gd", lr=1e-5, precision="fp32", reduction_order="pairwise", reference_order="pairwise", steps=20)
    assert same.metrics["ref_param_distance"] == 0 and same.metrics["ref_first_diff_step"] == -1 and same.metrics["ref_identical"] == 1


# --- the talk's experiment ----------------------------------------------------------------


def test_levenberg_marquardt_escapes_where_gd_and_adam_plateau():
    # Measured (fp64, kappa=10, linspace, 300 steps, sum loss, init loss ~2.1e5): LM ~3e-27 (stops
    # at its floor after ~18 steps); GD best of lr {1e-5, 3e-5} ~170; Adam best of lr {1e-2, 1e-1} ~46.
    common = dict(precision="fp64", kappa=10.0, recipe="linspace", steps=300)
    lm = run("two_layer_linear", optimizer="lm", **common).metrics["final_loss"]
    gd = min(run("two_layer_linear", optimizer="gd", lr=lr, **common).metrics["final_loss"] for lr in (1e-5, 3e-5))
    adam = min(run("two_layer_linear", optimizer="adam", lr=lr, **common).metrics["final_loss"] for lr in (1e-2, 1e-1))
    assert lm < 1e-20
    assert gd > 10 and adam > 10
    assert min(gd, adam) / max(lm, 1e-300) > 1e20


def test_geometric_recipe_has_the_asked_condition_number():
    r = run("two_layer_linear", optimizer="gd", lr=1e-5, recipe="geometric", kappa=1e3, steps=2)
    assert r.info["target_condition_number"] == pytest.approx(1e3, rel=1e-9)


# --- divergence ---------------------------------------------------------------------------


def test_nan_ends_as_diverged_and_other_trials_carry_on():
    trials = [
        make_trial("digits", trial_id="boris", optimizer="adam", lr=1e-3, precision="bf16", beta2=0.999, epochs=1, width=16),
        make_trial("two_layer_linear", trial_id="blowup", optimizer="gd", lr=1e-3, steps=50),
        make_trial("digits", trial_id="fine", optimizer="adam", lr=1e-2, precision="bf16", beta2=0.98, epochs=2, width=16),
    ]
    results = {t.trial_id: execute_trial(t) for t in trials}
    for name in ("boris", "blowup"):
        r = results[name]
        assert r.state is TrialState.FINISHED and r.metrics["diverged"] == 1.0, r.error
        assert r.metrics["diverged_step"] >= 0 and r.info["divergence"]
    assert "nan" in results["boris"].info["divergence"]
    assert results["boris"].info["audit"][0]["parameter"] == "beta2"
    fine = results["fine"]
    assert fine.state is TrialState.FINISHED and fine.metrics["diverged"] == 0.0 and fine.metrics["test_accuracy"] > 0.3


# --- precision records --------------------------------------------------------------------


def test_tf32_on_cpu_falls_back_visibly_or_fails_when_strict():
    r = run("teacher_student", precision="tf32", steps=5)
    assert r.metrics["precision_fallback"] == 1.0 and "tf32" in r.info["precision_fallback"] and r.info["precision_effective"] == "fp32"
    strict = execute_trial(make_trial("teacher_student", precision="tf32", strict_precision=True, steps=5))
    assert strict.state is TrialState.FAILED and "strict_precision=False" in strict.error


@pytest.mark.parametrize(
    ("precision", "param", "state", "autocast"),
    [("fp64", "float64", "float64", None), ("fp32", "float32", "float32", None), ("bf16_autocast", "float32", "float32", "bfloat16"),
     ("fp16_autocast", "float32", "float32", "float16"), ("bf16", "bfloat16", "bfloat16", None), ("fp16", "float16", "float16", None)],
)
def test_effective_dtypes_are_recorded(precision, param, state, autocast):
    r = run("teacher_student", precision=precision, optimizer="adam", eps=1e-4, beta2=0.98, steps=10)  # 0.999 is 1.0 in bf16
    assert r.info["param_dtypes"] == [param] and r.info["optimizer_state_dtypes"] == [state]
    assert r.info["autocast_dtype"] == autocast and r.info["grad_dtypes"] == [param]
    assert r.info["threads"] == 1 and r.info["deterministic_algorithms"] is True


def test_pure_bf16_adam_holds_its_hyperparameters_in_bf16():
    r = run("teacher_student", precision="bf16", optimizer="adam", beta2=0.99, steps=5)
    assert r.info["optimizer_hyperparameters_stored"]["beta2"] == 0.98828125


# --- every level runs ---------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_every_model_trains_on_digits(model):
    r = run("digits", model=model, epochs=1, width=8, depth=1, batch_size=128, reduction_order="pairwise" if model.endswith("_bn") else "fixed")
    assert r.metrics["diverged"] == 0 and 0 <= r.metrics["test_accuracy"] <= 1 and r.info["model"] == model


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_lowers_the_teacher_student_loss(optimizer):
    lr = {"gd": 0.1, "sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adam": 0.01, "adamw": 0.01, "rmsprop": 0.003, "lbfgs": 1.0, "lm": 1.0}[optimizer]
    r = run("teacher_student", optimizer=optimizer, lr=lr, steps=15, width=8, train_samples=128, test_samples=64)
    first = run("teacher_student", optimizer="sgd", lr=0.0, steps=1, width=8, train_samples=128, test_samples=64).metrics["train_loss"]
    assert r.metrics["diverged"] == 0 and r.metrics["train_loss"] < first


@pytest.mark.parametrize("precision", PRECISION_LEVELS)
def test_every_precision_level_runs(precision):
    r = run("digits", precision=precision, epochs=2, width=16, lr=0.5)
    assert r.metrics["diverged"] == 0 and r.metrics["test_accuracy"] > 0.3


def test_lm_on_a_classification_workload_says_why_it_cannot():
    r = execute_trial(make_trial("digits", optimizer="lm", epochs=1))
    assert r.state is TrialState.FAILED and "needs a least-squares loss" in r.error


def test_logged_points_are_bounded():
    points = []
    execute_trial(make_trial("two_layer_linear", optimizer="gd", lr=1e-5, steps=100, log_every=25), sink=lambda tid, step, m: points.append(step))
    assert points == [0, 25, 50, 75, 99]


# --- user workloads -----------------------------------------------------------------------


def fit_line(ctx):
    """The user-workload example of docs/numerics.md."""
    from orchestrator.numerics.training import squared_error

    kit = ctx.numerics
    with kit.hardware():
        g = kit.generator("data")
        x = torch.randn(256, 3, generator=g, dtype=torch.float64)
        y = x @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)
        x, y = kit.tensor(x), kit.tensor(y)
        trainer = kit.trainer(kit.model("linear", (3,), 1), squared_error, default_lr=0.1)
        steps = int(ctx.get("steps", 100))
        for step in range(steps):
            loss = trainer.step(x, y)
            kit.guard.check(step, loss)
            if ctx.should_log(step, steps):
                ctx.log(step, loss=loss, grad_norm=trainer.grad_norm)
        return {"final_loss": loss, **kit.finish(trainer)}


def test_user_workload_example_runs_with_the_helpers():
    ctx = TrialContext(make_trial("x:y", optimizer="sgd", reduction_order="kahan", precision="fp32"))
    metrics = fit_line(ctx)
    assert metrics["final_loss"] < 1e-6 and ctx.info["reduction_order"] == "kahan" and len(ctx.info["param_hash"]) == 64
