"""Device, precision and the environment record every run writes."""
from __future__ import annotations

import contextlib
import os
import platform
import sys
from importlib import metadata

import torch

from cifarlab.errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}': use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' asked for but CUDA is not available here: use --device cpu or auto")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' asked for but it is not available here: use --device cpu or auto")
    return dev


def cpu_has_fast_bf16() -> bool:
    """True where bf16 matmuls beat fp32 (AVX-512-BF16 or AMX); on plain AVX2 bf16 is emulated and slower.
    ATen's kernels limited to AVX2 (ATEN_CPU_CAPABILITY=avx2, to time an older CPU) count as plain AVX2."""
    cpu = torch.cpu
    has_flags = bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                     or getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    return has_flags and torch.backends.cpu.get_cpu_capability() not in ("AVX2", "DEFAULT", "NO AVX")


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise UserError("precision fp16 needs a CUDA device: use bf16 or fp32 on this device")
    return precision


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _cpuinfo(field: str) -> str | None:
    """The value of the first /proc/cpuinfo line named `field`; None where there is no such file or line."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith(field)), None)
    except OSError:
        return None


def _cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags() -> str:
    """The CPU features that decide fp32 vs bf16 speed, as /proc/cpuinfo names them (every figure names them)."""
    flags = _cpuinfo("flags")
    if flags is None:
        return "unknown"
    return " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags.split())


def environment(device: torch.device, precision: str) -> dict:
    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_fast_bf16": cpu_has_fast_bf16(),
        "device": str(device),
        "precision": precision,
        "packages": {p: _version(p) for p in ("cifarlab", "torch", "kornia", "torchmetrics", "numpy", "pillow")},
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env
