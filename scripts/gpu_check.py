"""Check the GPU-only paths of the numerics kit on the GPU at hand, in under 3 minutes.

Runs the built-in workloads through ``orchestrator.execution.worker.execute_trial`` on ``cuda:0`` (or
the CPU when there is no GPU, skipping the GPU-only parts with a line that says so) and
prints a compact summary:

* every precision level: effective level, dtypes, fallback, accuracy, time;
* TF32 really changes float32 matmuls (error against float64, TF32 on vs off);
* deterministic algorithms: a float atomics reduction (``index_add_``) repeated with
  deterministic algorithms off and on; and digits trained twice with the ``fixed`` order,
  compared by parameter hash;
* bit-identity of the ``fixed`` order and the difference made by ``shuffled``.

Usage: ``python scripts/gpu_check.py`` (write what it showed into scripts/GPU_CHECK.md).
"""

from __future__ import annotations

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
    lm = execute_trial(trial("two_layer_linear", optimizer="lm", precision="fp64"), device=device).metrics.get("final_loss")
    gd = execute_trial(trial("two_layer_linear", optimizer="gd", lr=3e-5, precision="fp64"), device=device).metrics.get("final_loss")
    line(f"two_layer_linear fp64 300 steps: lm={lm:.3e} gd={gd:.3e}")
    line(f"gpu_check: {'OK' if not problems else f'{problems} PROBLEM(S)'} in {time.perf_counter() - start:.1f}s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
