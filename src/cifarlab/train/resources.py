"""What an epoch cost besides time: the peak memory of the process (or of the GPU) so far."""
from __future__ import annotations

import resource
import sys

import torch


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far, in MiB: on CUDA what torch allocated on the device, elsewhere the process's
    resident set (maxrss, which counts the dataset and every tensor on the CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # macOS reports bytes, Linux KiB
