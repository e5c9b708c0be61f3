"""The accumulator as its own setting (``accumulate: working|fp32|fp64``) and the GPU
determinism level, checked against observed rounding, not against what the code says."""

from __future__ import annotations

import functools

import pytest
import torch

from orchestrator.design.trial import Trial, TrialState
from orchestrator.execution.context import TrialContext
from orchestrator.execution.worker import execute_trial
from orchestrator.numerics.audit import round_to_dtype
from orchestrator.numerics.reduction import ACCUMULATE_LEVELS, Reducer, ReductionError, ordered_sum
from orchestrator.numerics.training import Kit, squared_error

SEEDS = {"init": 11, "data": 22, "reduction": 33}
SMALL = 2.0**-9  # half an ulp of 1.0 in bfloat16: 1 + SMALL rounds (to even) back to 1
N_SMALL = 100
EXACT = 1.0 + N_SMALL * SMALL  # 1.1953125 = 153/128, exact in bfloat16 (8 significant bits)


def make_trial(workload: str = "teacher_student", **params) -> Trial:
    return Trial(study="numerics", variant="test", trial_id="t0", cell_id="c0", replicate=0, levels={}, params=params,
                 seeds=dict(SEEDS), seed_index={}, workload=workload)


def bf16_fold(values: list[float]) -> float:
    """Left-to-right sum with every addition rounded to bfloat16, by the torch-free rounding
    of the audit (round to nearest even through float32): an independent reference."""
    total = 0.0
    for v in values:
        total = round_to_dtype(total + v, "bfloat16")
    return total


def contributions() -> torch.Tensor:
    return torch.tensor([1.0] + [SMALL] * N_SMALL, dtype=torch.bfloat16)


def test_a_sum_that_differs_between_bf16_and_fp32_accumulation():
    values = contributions()
    assert bf16_fold(values.double().tolist()) == 1.0  # the reference: a bf16 accumulator loses every small term
    for order in ("fixed", "sequential"):
        assert float(ordered_sum(values, order)) == 1.0, order
        assert float(ordered_sum(values, order, accumulator=torch.float32)) == EXACT, order
        assert float(ordered_sum(values, order, accumulator=torch.float64)) == EXACT, order
    # torch's own kernel sum accumulates bfloat16 in float32: why `fixed` cannot be left to it
    assert float(values.sum(0)) == EXACT
    # any permutation, once accumulated in fp32, gives the exact sum; in bf16 it depends on the order
    shuffled = [float(Reducer("shuffled", seed=s, accumulate="fp32", working=torch.bfloat16).sum(values)) for s in range(5)]
    assert shuffled == [EXACT] * 5
    assert float(Reducer("reversed", accumulate="working", working=torch.bfloat16).sum(values)) == bf16_fold(values.double().flip(0).tolist())


def test_reducer_path_and_dtype_follow_the_declared_accumulator():
    cases = {
        ("fixed", "working", torch.bfloat16): ("explicit", torch.bfloat16),
        ("fixed", "fp32", torch.bfloat16): ("kernel", torch.float32),
        ("fixed", "fp64", torch.bfloat16): ("explicit", torch.float64),
        ("fixed", "working", torch.float32): ("kernel", torch.float32),
        ("fixed", "fp64", torch.float32): ("explicit", torch.float64),
        ("fixed", "fp32", torch.float64): ("explicit", torch.float32),
        ("shuffled", "working", torch.bfloat16): ("explicit", torch.bfloat16),
        ("kahan", "fp32", torch.float16): ("explicit", torch.float32),
        ("fp64", "working", torch.bfloat16): ("explicit", torch.float64),
    }
    for (order, accumulate, working), (path, dtype) in cases.items():
        r = Reducer(order, accumulate=accumulate, working=working)
        assert (r.path, r.accumulator_dtype) == (path, dtype), (order, accumulate, working)
    assert ACCUMULATE_LEVELS == ("working", "fp32", "fp64")


def test_accumulator_errors_name_the_problem_and_the_fix():
    with pytest.raises(ReductionError, match=r"accumulate: expected an accumulator level, found 'fp23'\. Did you mean \"fp32\"\? Valid: fp32, fp64, working\."):
        Reducer("fixed", accumulate="fp23")
    with pytest.raises(ReductionError, match=r"reduction_order 'fp64' accumulates in float64 by definition, but accumulate is 'fp32'.*Use reduction_order 'fixed'"):
        Reducer("fp64", accumulate="fp32")
    r = execute_trial(make_trial(accumulate="bf16", steps=2))
    assert r.state is TrialState.FAILED and "accumulate: expected an accumulator level, found 'bf16'. Valid: fp32, fp64, working." in r.error


def one_step_gradient(**params) -> tuple[float, dict]:
    """One SGD step (lr 1, sum loss) of a 1->1 linear model from w = 0 on data whose
    per-example gradient contributions are exactly [1, 2^-9 x 100]; returns -w = the summed
    gradient as the trial's accumulator produced it, and the recorded info."""
    ctx = TrialContext(make_trial(optimizer="sgd", lr=1.0, **params))
    kit = Kit(ctx)
    with kit.hardware():
        model = kit.model("linear", (1,), 1, bias=False)
        (weight,) = list(model.parameters())
        with torch.no_grad():
            weight.zero_()
        # d/dw (w x - y)^2 at w = 0, x = 1 is -2 y: y = -c/2 gives the contribution c
        x = kit.tensor(torch.ones(N_SMALL + 1, 1, dtype=torch.float64))
        y = kit.tensor(-contributions().double().reshape(-1, 1) / 2)
        trainer = kit.trainer(model, squared_error, loss_reduction="sum", default_lr=1.0)
        trainer.step(x, y)
        kit.finish(trainer)
    return -float(weight.detach().double().reshape(())), ctx.info


def test_fixed_under_bf16_with_accumulate_working_really_accumulates_in_bf16():
    grad, info = one_step_gradient(precision="bf16", reduction_order="fixed", accumulate="working")
    assert grad == 1.0 == bf16_fold(contributions().double().tolist())  # observed: every small term lost
    assert info["accumulator_dtype"] == "bfloat16" and info["reduction_path"] == "explicit" and info["accumulate"] == "working"
    grad32, info32 = one_step_gradient(precision="bf16", reduction_order="fixed", accumulate="fp32")
    assert grad32 == EXACT  # the kernel's float32 accumulator keeps them
    assert info32["accumulator_dtype"] == "float32" and info32["reduction_path"] == "kernel"
    grad64, info64 = one_step_gradient(precision="bf16", reduction_order="shuffled", accumulate="fp64")
    assert grad64 == EXACT and info64["accumulator_dtype"] == "float64"
    # the default is `working`, for every order
    _, default = one_step_gradient(precision="bf16")
    assert default["accumulator_dtype"] == "bfloat16" and default["accumulate"] == "working"
    _, fp32 = one_step_gradient(precision="fp32")
    assert fp32["accumulator_dtype"] == "float32" and fp32["reduction_path"] == "kernel"


def test_fixed_versus_shuffled_now_compares_orders_not_accumulators():
    """Under bf16 with one declared accumulator, `fixed` and `shuffled` land on the same side
    of the accumulator gap; the gap between accumulators is far larger than between orders."""
    run = functools.partial(lambda **p: execute_trial(make_trial("two_layer_linear", optimizer="gd", lr=1e-5, steps=30, precision="bf16", reference_order="fp64", **p)))
    error = {}
    for order in ("fixed", "shuffled"):
        for accumulate in ("working", "fp32"):
            r = run(reduction_order=order, accumulate=accumulate)
            assert r.state is TrialState.FINISHED, r.error
            assert r.info["accumulator_dtype"] == {"working": "bfloat16", "fp32": "float32"}[accumulate]
            error[order, accumulate] = r.metrics["ref_param_rel_distance"]
    for order in ("fixed", "shuffled"):
        assert error[order, "working"] > 5 * error[order, "fp32"], error


def test_determinism_level_is_recorded_and_not_applicable_on_cpu():
    for level in ("deterministic", "default"):
        r = execute_trial(make_trial(determinism=level, steps=3))
        assert r.state is TrialState.FINISHED, r.error
        assert r.info["determinism"] == level and r.info["determinism_applies"] is False
        assert r.info["determinism_effective"] == "not_applicable"
        assert r.info["deterministic_algorithms"] is (level == "deterministic")
    legacy = execute_trial(make_trial(deterministic=False, steps=2))
    assert legacy.info["determinism"] == "default"
    wrong = execute_trial(make_trial(determinism="determinstic", steps=2))
    assert wrong.state is TrialState.FAILED and 'Did you mean "deterministic"?' in wrong.error
    clash = execute_trial(make_trial(determinism="default", deterministic=True, steps=2))
    assert clash.state is TrialState.FAILED and "the two settings name one switch" in clash.error


def test_the_new_levels_are_in_the_one_vocabulary_and_the_study_validator_uses_it():
    from orchestrator.definition.study import Factor, Study, StudyError
    from orchestrator.numerics.levels import LEVELS

    assert LEVELS["accumulate"] == ("working", "fp32", "fp64")
    assert LEVELS["determinism"] == ("deterministic", "default")
    assert LEVELS["allreduce"] == ("backend", "sequential", "pairwise", "nccl_ring", "nccl_tree")
    with pytest.raises(StudyError, match=r'accumulate.*\'fp23\'.*Did you mean "fp32"') as caught:
        Study(name="bad_levels", workload="teacher_student", factors=[Factor("accumulate", ["working", "fp23"]), Factor("determinism", ["default", "determinstic"])],
              metrics={"test_loss": "minimize"})
    assert 'Did you mean "deterministic"' in str(caught.value)
