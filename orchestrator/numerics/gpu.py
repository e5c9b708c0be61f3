"""How much memory is free on the GPUs this process may use (``torch.cuda.mem_get_info``).

The worker's GPU memory check (:func:`orchestrator.execution.worker.gpu_memory_shortfall`)
calls :func:`free_memory_gb` at a trial's start; it lives here because this package is the
only one that imports torch. Ray sets ``CUDA_VISIBLE_DEVICES`` to the GPUs it gave the
trial, so the devices torch sees are exactly the trial's.
"""

from __future__ import annotations

__all__ = ["free_memory_gb"]

GIB = 1024**3


def free_memory_gb() -> list[float]:
    """Free memory of each visible CUDA device in GB (GiB); ``[]`` when torch sees no GPU.

    Creates a CUDA context on each visible device (a few hundred MB, which the trial would
    create anyway).
    """
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.mem_get_info(index)[0] / GIB for index in range(torch.cuda.device_count())]
