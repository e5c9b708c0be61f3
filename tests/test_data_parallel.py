"""Data-parallel trials: the global batch held equal across world sizes and micro-batches, so
only the order of accumulation changes - within rounding in fp32, bit-wise different in bf16.

The multi-worker trials run on the session's real local Ray (2 CPUs) through Ray Train with
gloo, dispatched by a zero-CPU task as the Ray executor does."""

from __future__ import annotations

import pytest
import torch

from orchestrator.design.trial import Trial, TrialState
from orchestrator.execution.worker import execute_trial
from orchestrator.numerics.parallel import Collective, DataParallel, DataParallelError

SEEDS = {"init": 5, "data": 6, "reduction": 7}
# teacher-student, full batch of 128, plain SGD: small enough for seconds per trial
BASE = dict(train_samples=128, test_samples=128, steps=12, optimizer="sgd", lr=0.1, width=16)


def make_trial(**params) -> Trial:
    name = "-".join(f"{k}{v}" for k, v in sorted(params.items()))
    return Trial(study="dp", variant="test", trial_id=f"dp-{name}", cell_id="c0", replicate=0, levels={}, params={**BASE, **params},
                 seeds=dict(SEEDS), seed_index={}, workload="teacher_student")


def run_here(**params):
    r = execute_trial(make_trial(**params))
    assert r.state is TrialState.FINISHED, r.error
    return r


def rel_close(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def test_grad_accumulation_in_one_process_changes_only_the_order():
    one = {p: run_here(precision=p, accumulate="fp32") for p in ("fp32", "bf16")}
    four = {p: run_here(precision=p, accumulate="fp32", grad_accumulation=4) for p in ("fp32", "bf16")}
    assert four["fp32"].info["grad_accumulation"] == 4 and four["fp32"].info["world_size"] == 1
    assert rel_close(four["fp32"].metrics["train_loss"], one["fp32"].metrics["train_loss"]) < 1e-5
    assert rel_close(four["fp32"].metrics["param_norm"], one["fp32"].metrics["param_norm"]) < 1e-6
    # bf16: four micro-batch sums rounded to bf16... added in fp32, rounded again: other bits
    assert four["bf16"].info["param_hash"] != one["bf16"].info["param_hash"]
    assert rel_close(four["bf16"].metrics["train_loss"], one["bf16"].metrics["train_loss"]) < 0.05
    again = run_here(precision="bf16", accumulate="fp32", grad_accumulation=4)
    assert again.info["param_hash"] == four["bf16"].info["param_hash"]  # still deterministic


def test_data_parallel_settings_are_checked_with_every_problem_named():
    with pytest.raises(DataParallelError, match=r"world_size: expected a whole number >= 1, found 0.*allreduce: expected an all-reduce level, found 'rign'"):
        DataParallel.from_config({"world_size": 0, "allreduce": "rign"})
    r = execute_trial(make_trial(world_size=2))
    assert r.state is TrialState.FAILED and "world_size is 2 but this trial runs in 1 worker(s)" in r.error and "Ray executor" in r.error
    r = execute_trial(make_trial(grad_accumulation=3))
    assert r.state is TrialState.FAILED and "global batch of 128 examples does not split into world_size x grad_accumulation = 1 x 3 = 3" in r.error
    r = execute_trial(make_trial(grad_accumulation=2, optimizer="lbfgs"))
    assert r.state is TrialState.FAILED and "'lbfgs' is a full-batch method" in r.error
    r = execute_trial(make_trial(grad_accumulation=2, model="mlp_bn"))
    assert r.state is TrialState.FAILED and "batch normalization normalizes over the examples of a batch" in r.error

    class Gloo(Collective):  # only what validation reads: the size and backend of the group
        world_size, backend = 2, "gloo"

    with pytest.raises(DataParallelError, match=r"allreduce 'nccl_ring' selects an NCCL algorithm, but the workers use gloo"):
        DataParallel.from_config({"world_size": 2, "allreduce": "nccl_ring"}, Gloo())


@pytest.mark.slow
def test_two_gloo_workers_reproduce_one_worker_within_rounding_in_fp32(ray_session):
    from orchestrator.execution.data_parallel import run_data_parallel_trial

    ray = ray_session
    dispatch = ray.remote(num_cpus=0)(run_data_parallel_trial)  # holds nothing: both CPUs go to the workers
    params = dict(precision="fp32", accumulate="fp32")
    ref = dispatch.remote(make_trial(world_size=2, **params).to_dict(), 1, cpus_per_worker=1)
    single = run_here(**params)
    payload = ray.get(ref, timeout=300)
    result = payload["result"]
    assert result["state"] == "FINISHED", result["error"]
    info = result["info"]
    assert info["world_size"] == 2 and info["dp_backend"] == "gloo" and info["accumulator_dtype"] == "float32"
    assert [w["rank"] for w in info["workers"]] == [0, 1] and info["workers_identical"] is True
    assert payload["environment"]["dp.rank1.backend"] == "gloo" and payload["environment"]["dp.rank1.param_hash"] == info["param_hash"]
    assert len(payload["curve"]) > 0  # the per-step metrics come back with the result
    assert rel_close(result["metrics"]["train_loss"], single.metrics["train_loss"]) < 1e-5
    assert rel_close(result["metrics"]["param_norm"], single.metrics["param_norm"]) < 1e-6


@pytest.mark.slow
def test_the_study_smoke_run_on_gloo_workers_differs_bitwise_in_bf16_and_analyzes(ray_session, tracking_uri):
    """studies/data_parallel_order.py's smoke variant end to end (it is not run again by test_studies):
    in bf16, 2 gloo workers end on other bits than 1 worker, exactly the bits of 2 micro-batches on one
    worker (the same partial sums), and the losses agree to within bf16's rounding."""
    from orchestrator import load_study
    from orchestrator.records import load_results
    from test_studies import ROOT, smoke_runs_and_analyzes

    smoke_runs_and_analyzes("data_parallel_order", tracking_uri)
    df, _ = load_results(load_study(ROOT / "studies" / "data_parallel_order.py", "smoke"), tracking_uri=tracking_uri)
    df = df[df.state == "FINISHED"]
    assert len(df) == 4 and set(df.precision) == {"bf16"}
    hashes = {(int(r.world_size), int(r.grad_accumulation)): r.param_hash for r in df.itertuples()}
    loss = {(int(r.world_size), int(r.grad_accumulation)): float(r.train_loss) for r in df.itertuples()}
    assert df.deterministic.all() and None not in hashes.values()
    one = hashes[(1, 1)]
    assert hashes[(2, 1)] != one and hashes[(2, 2)] != one  # split across workers: other bits than one batch
    assert hashes[(2, 1)] == hashes[(1, 2)]  # 2 parts on 2 workers = 2 micro-batches on one: the same sums
    assert all(rel_close(value, loss[(1, 1)]) < 0.05 for value in loss.values())


def test_the_dispatch_task_of_a_data_parallel_trial_holds_no_resources():
    from orchestrator.execution.data_parallel import dispatch_options, is_data_parallel

    options = {"num_cpus": 1.0, "num_gpus": 0.5, "memory": 1 << 30, "resources": {"ssd": 1}, "max_retries": 0}
    assert dispatch_options(make_trial(world_size=1).to_dict(), dict(options)) == options
    two = make_trial(world_size=2).to_dict()
    assert is_data_parallel(two) and not is_data_parallel(make_trial(grad_accumulation=4).to_dict())
    assert dispatch_options(two, dict(options)) == {"num_cpus": 0, "num_gpus": 0, "max_retries": 0}


@pytest.mark.slow
def test_a_world_size_the_cluster_can_never_hold_fails_at_once_with_the_fix(ray_session):
    from orchestrator.execution.data_parallel import run_data_parallel_trial

    payload = run_data_parallel_trial(make_trial(world_size=4).to_dict(), 1, cpus_per_worker=1)
    result = payload["result"]
    assert result["state"] == "FAILED"
    assert "world_size 4 needs 4 x 1 CPU (the cluster has 2)" in result["error"] and "Resources(cpus=0.5)" in result["error"]
