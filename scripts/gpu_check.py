"""Check the GPU-only paths of the numerics kit on the GPU at hand, in under 3 minutes.

Runs the built-in workloads through ``orchestrator.execution.worker.execute_trial`` on ``cuda:0`` (or
the CPU when there is no GPU, skipping the GPU-only parts with a line that says so) and
prints a compact summary:

* every precision level: effective level, dtypes, fallback, accuracy, time;
* TF32 really changes float32 matmuls (error against float64, TF32 on vs off);
* deterministic algorithms: a float atomics reduction (``index_add_``) repeated with
  deterministic algorithms off and on; and digits trained twice with the ``fixed`` order,
  compared by parameter hash;
* bit-identity of the ``fixed`` order and the difference made by ``shuffled``;
* the ``determinism`` level: GPU atomics (``index_add_``, ``scatter_add_``) and a cnn digits
  trial (cuDNN convolution backward) repeated under ``deterministic`` and ``default``,
  compared bit for bit; on the CPU the level is recorded as not applicable;
* the declared accumulator: pure-bf16 training with ``accumulate: working`` (bfloat16)
  against ``fp32``, each measured against a float64-accumulated twin;
* gradient accumulation in one process (``grad_accumulation`` 4 vs 1: fp32 within rounding,
  bf16 bit-different);
* with two or more GPUs: an NCCL all-reduce across two processes (fp32 and bf16, against
  the exact sum; ``NCCL_ALGO`` Ring vs Tree) and a two-worker data-parallel trial through
  Ray Train with NCCL, against the one-worker trial (on the CPU: the same with gloo).

Usage: ``python scripts/gpu_check.py`` (write what it showed into scripts/GPU_CHECK.md).
``--skip-ray`` leaves out the Ray Train trial (it starts an embedded Ray).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from orchestrator.numerics import PRECISION_LEVELS  # noqa: E402
from orchestrator.design.trial import Trial  # noqa: E402
from orchestrator.execution.worker import execute_trial  # noqa: E402

SEEDS = {"init": 1, "data": 2, "reduction": 3}


def trial(workload: str, trial_id: str = "gpu-check", seeds: dict | None = None, **params) -> Trial:
    return Trial(study="gpu_check", variant="check", trial_id=trial_id, cell_id="c", replicate=0, levels={}, params=params,
                 seeds={**SEEDS, **(seeds or {})}, seed_index={}, workload=workload)


def line(text: str) -> None:
    print(text, flush=True)


def _nccl_worker(rank: int, port: int, algo: str, out: dict) -> None:
    """One of two processes: all-reduce fp32 and bf16 vectors over NCCL with ``NCCL_ALGO=algo``."""
    import torch.distributed as dist

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NCCL_ALGO": algo})
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=2)
    g = torch.Generator().manual_seed(100 + rank)
    base = torch.randn(1 << 20, generator=g, dtype=torch.float64)
    sums = {}
    for dtype in (torch.float32, torch.bfloat16):
        t = base.to(dtype).cuda(rank)
        dist.all_reduce(t)
        sums[str(dtype)] = t.double().cpu()
    parts = [torch.empty_like(base).cuda(rank) for _ in range(2)]
    dist.all_gather(parts, base.cuda(rank))
    if rank == 0:
        exact = {str(d): (parts[0].cpu().to(d).double() + parts[1].cpu().to(d).double()) for d in (torch.float32, torch.bfloat16)}
        out[algo] = {k: float((sums[k] - exact[k]).abs().max()) for k in sums} | {"hash": {k: hash(sums[k].numpy().tobytes()) for k in sums}}
    dist.destroy_process_group()


def nccl_check() -> int:
    """Two GPUs: NCCL all-reduce against the exact sum (two ranks: one rounding), Ring vs Tree."""
    import socket

    import torch.multiprocessing as mp

    problems = 0
    manager = mp.Manager()
    out = manager.dict()
    for algo in ("Ring", "Tree"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_nccl_worker, args=(port, algo, out), nprocs=2, join=True)
    for algo in ("Ring", "Tree"):
        r = out.get(algo, {})
        line(f"nccl all_reduce 2 GPUs NCCL_ALGO={algo}: max |error| vs the sum rounded once: fp32={r.get('torch.float32', float('nan')):.3e} bf16={r.get('torch.bfloat16', float('nan')):.3e}")
        if not r or r["torch.float32"] > 1e-5:
            problems += 1
            line("  PROBLEM: the fp32 all-reduce is not the sum")
    if "Ring" in out and "Tree" in out:
        same = {k: out["Ring"]["hash"][k] == out["Tree"]["hash"][k] for k in out["Ring"]["hash"]}
        line(f"nccl Ring vs Tree bit-identical: {same} (with two ranks both are one addition; differences need more ranks)")
    return problems


def ray_train_check(device_gpus: int) -> int:
    """A two-worker data-parallel trial through Ray Train (NCCL on 2 GPUs, gloo on the CPU)."""
    import ray

    from orchestrator.execution.data_parallel import run_data_parallel_trial

    problems = 0
    ray.init(address="local", num_cpus=4 if device_gpus else 2, num_gpus=device_gpus, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        params = dict(steps=20, train_samples=256, test_samples=256, optimizer="sgd", lr=0.05, batch_size=64, accumulate="fp32")
        dispatch = ray.remote(num_cpus=0)(run_data_parallel_trial)
        for precision in ("fp32", "bf16"):
            t0 = time.perf_counter()
            payload = ray.get(dispatch.remote(trial("teacher_student", f"dp-{precision}", world_size=2, precision=precision, **params).to_dict(), 1,
                                              cpus_per_worker=1, gpus_per_worker=1 if device_gpus else 0))
            r = payload["result"]
            single = execute_trial(trial("teacher_student", f"dp1-{precision}", precision=precision, **params), device="cuda:0" if device_gpus else "cpu")
            if r["state"] != "FINISHED":
                problems += 1
                line(f"ray train 2 workers {precision}: {r['state']} {(r['error'] or '').strip().splitlines()[-1:]}")
                continue
            rel = abs(r["metrics"]["train_loss"] - single.metrics["train_loss"]) / abs(single.metrics["train_loss"])
            line(f"ray train 2 workers {precision} ({r['info'].get('dp_backend')}): train loss rel. diff vs 1 worker {rel:.3e}, "
                 f"bit-identical={r['info'].get('param_hash') == single.info.get('param_hash')}, workers agree={r['info'].get('workers_identical')}, "
                 f"{time.perf_counter() - t0:.1f}s")
            if (precision == "fp32" and rel > 1e-4) or not r["info"].get("workers_identical"):
                problems += 1
                line("  PROBLEM: two workers do not reproduce one worker within rounding, or the workers disagree")
    finally:
        ray.shutdown()
    return problems


def main() -> int:
    cuda = torch.cuda.is_available()
    device = "cuda:0" if cuda else "cpu"
    name = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"
    line(f"gpu_check: torch {torch.__version__}, cuda {torch.version.cuda}, device {device} ({name}), python {platform.python_version()}")
    if not cuda:
        line("SKIP GPU parts: no CUDA device; the precision, determinism and TF32 checks below ran on the CPU only")
    start = time.perf_counter()
    problems = 0

    line("precision levels (digits, mlp width 64, 2 epochs, adam lr 3e-3 beta2 0.98 eps 1e-4):")
    for level in PRECISION_LEVELS:
        t0 = time.perf_counter()
        r = execute_trial(trial("digits", precision=level, optimizer="adam", lr=3e-3, beta2=0.98, eps=1e-4, epochs=2), device=device)
        info = r.info
        line(
            f"  {level:14s} {r.state.value:8s} effective={info.get('precision_effective')} params={info.get('param_dtypes')} "
            f"state={info.get('optimizer_state_dtypes')} autocast={info.get('autocast_dtype')} tf32={info.get('cuda_matmul_allow_tf32')} "
            f"output={info.get('output_dtype')} acc={r.metrics.get('test_accuracy', float('nan')):.3f} hash={(info.get('param_hash') or '')[:8]} diverged={r.metrics.get('diverged')} "
            f"skipped={r.metrics.get('loss_scale_skipped_steps', 0):.0f} fallback={info.get('precision_fallback')} {time.perf_counter() - t0:.2f}s"
        )
        if r.state.value != "FINISHED":
            problems += 1
            line("    " + (r.error or "").strip().splitlines()[-1])

    if cuda:
        a = torch.randn(2048, 2048, device=device, generator=torch.Generator(device).manual_seed(0))
        b = torch.randn(2048, 2048, device=device, generator=torch.Generator(device).manual_seed(1))
        exact = a.double() @ b.double()
        errors = {}
        for tf32 in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            errors[tf32] = float(((a @ b).double() - exact).abs().max())
        torch.backends.cuda.matmul.allow_tf32 = False
        line(f"tf32 matmul 2048^2: max error vs fp64 off={errors[False]:.3e} on={errors[True]:.3e} (on should be ~1000x larger)")
        if not errors[True] > 10 * errors[False]:
            problems += 1
            line("  PROBLEM: TF32 did not change the matmul")

        src = torch.randn(1_000_000, device=device, generator=torch.Generator(device).manual_seed(2))
        index = torch.randint(0, 100, (1_000_000,), device=device, generator=torch.Generator(device).manual_seed(3))
        for deterministic in (False, True):
            torch.use_deterministic_algorithms(deterministic)
            sums = [torch.zeros(100, device=device).index_add_(0, index, src) for _ in range(5)]
            same = all(torch.equal(sums[0], s) for s in sums[1:])
            line(f"index_add_ x5, deterministic algorithms {'on ' if deterministic else 'off'}: bit-identical={same}")
            if deterministic and not same:
                problems += 1
        torch.use_deterministic_algorithms(False)
    else:
        line("SKIP tf32 matmul and atomics checks: no CUDA device")

    for deterministic in (True, False):
        hashes = [execute_trial(trial("digits", epochs=2, deterministic=deterministic), device=device).info.get("param_hash") for _ in range(2)]
        line(f"digits fixed order twice, deterministic={deterministic}: same hash={hashes[0] == hashes[1]} ({(hashes[0] or '')[:12]})")
        if deterministic and hashes[0] != hashes[1]:
            problems += 1
    for level in ("fp32", "bf16"):
        r = execute_trial(trial("digits", epochs=2, precision=level, reduction_order="shuffled", reference_order="fixed"), device=device)
        line(f"digits {level} shuffled vs fixed twin: distance={r.metrics.get('ref_param_distance', float('nan')):.3e} first diff step={r.metrics.get('ref_first_diff_step')}")
    for level in ("deterministic", "default"):
        rs = [execute_trial(trial("digits", epochs=1, model="cnn", width=16, determinism=level), device=device) for _ in range(2)]
        info = rs[0].info
        line(f"digits cnn twice, determinism={level}: effective={info.get('determinism_effective')} applies={info.get('determinism_applies')} "
             f"same hash={rs[0].info.get('param_hash') == rs[1].info.get('param_hash')}")
        if level == "deterministic" and rs[0].info.get("param_hash") != rs[1].info.get("param_hash"):
            problems += 1
            line("  PROBLEM: deterministic kernels gave two different results")
    if cuda:
        src = torch.randn(1_000_000, device=device, generator=torch.Generator(device).manual_seed(4))
        index = torch.randint(0, 100, (1_000_000,), device=device, generator=torch.Generator(device).manual_seed(5))
        for deterministic in (False, True):
            torch.use_deterministic_algorithms(deterministic)
            sums = [torch.zeros(100, device=device).scatter_add_(0, index, src) for _ in range(5)]
            line(f"scatter_add_ x5, deterministic algorithms {'on ' if deterministic else 'off'}: bit-identical={all(torch.equal(sums[0], x) for x in sums[1:])}")
        torch.use_deterministic_algorithms(False)

    accumulated = {}
    for accumulate in ("working", "fp32"):
        r = execute_trial(trial("two_layer_linear", optimizer="gd", lr=1e-5, steps=30, precision="bf16", accumulate=accumulate, reference_order="fp64"), device=device)
        accumulated[accumulate] = r.metrics.get("ref_param_rel_distance", float("nan"))
        line(f"bf16 fixed order, accumulate={accumulate}: accumulator={r.info.get('accumulator_dtype')} path={r.info.get('reduction_path')} "
             f"rel. distance to the fp64-accumulated twin {accumulated[accumulate]:.3e}")
    if not accumulated["working"] > accumulated["fp32"]:
        problems += 1
        line("  PROBLEM: the bf16 accumulator is not less accurate than the fp32 one")
    ga = {}
    for precision in ("fp32", "bf16"):
        for k in (1, 4):
            ga[precision, k] = execute_trial(trial("teacher_student", precision=precision, accumulate="fp32", grad_accumulation=k, steps=20, optimizer="sgd", lr=0.05), device=device)
        a, b = ga[precision, 1], ga[precision, 4]
        rel = abs(a.metrics["train_loss"] - b.metrics["train_loss"]) / abs(a.metrics["train_loss"])
        line(f"grad_accumulation 4 vs 1, {precision}: train loss rel. diff {rel:.3e}, bit-identical={a.info.get('param_hash') == b.info.get('param_hash')}")
    gpus = torch.cuda.device_count() if cuda else 0
    if gpus >= 2:
        problems += nccl_check()
    else:
        line(f"SKIP nccl all-reduce: {gpus} GPU(s), needs 2")
    if "--skip-ray" in sys.argv:
        line("SKIP ray train data-parallel trial (--skip-ray)")
    elif cuda and gpus < 2:
        line("SKIP ray train data-parallel trial on GPUs: needs 2 GPUs (one per worker)")
    else:
        problems += ray_train_check(2 if gpus >= 2 else 0)

    lm = execute_trial(trial("two_layer_linear", optimizer="lm", precision="fp64"), device=device).metrics.get("final_loss")
    gd = execute_trial(trial("two_layer_linear", optimizer="gd", lr=3e-5, precision="fp64"), device=device).metrics.get("final_loss")
    line(f"two_layer_linear fp64 300 steps: lm={lm:.3e} gd={gd:.3e}")
    line(f"gpu_check: {'OK' if not problems else f'{problems} PROBLEM(S)'} in {time.perf_counter() - start:.1f}s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
