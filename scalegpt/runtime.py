"""Where and in what precision a run computes: device auto-detection, the autocast dtype, and seeding.

Each choice comes with a reason string that the trainer prints, so a run never silently lands on the CPU or in fp32.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import random
import sys

import numpy as np
import torch

from scalegpt.errors import ScalegptError


def pick_device(requested: str = "auto", local_rank: int = 0) -> tuple[torch.device, str]:
    """(device, why): cuda > mps > cpu unless `requested` names one."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank), f"auto: CUDA available ({torch.cuda.get_device_name(local_rank)})"
        if torch.backends.mps.is_available():
            return torch.device("mps"), "auto: Apple MPS available, no CUDA"
        return torch.device("cpu"), "auto: no CUDA or MPS device found"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ScalegptError(f"train.device: unknown device {requested!r}; expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ScalegptError(f"train.device = {requested}, but torch sees no CUDA device")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise ScalegptError(f"train.device = {requested}, but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ScalegptError(f"train.device = {requested}, but MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ScalegptError(f"train.device: unsupported device type {device.type!r}; expected cpu, cuda or mps")
    return device, "requested with --train.device / --device"


# On a CPU, auto picks bf16 when its matmuls run at least this much faster than fp32 ones. A bf16-autocast step
# still casts activations and runs its elementwise work in fp32: with bf16 matmuls 2.1x faster (AVX-512 BF16), a
# shakespeare-char step ran 1.41-1.44x faster. An AVX2 CPU runs bf16 matmuls ~8x slower than fp32.
CPU_BF16_MIN_SPEEDUP = 1.5


def pick_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """(fp32 | bf16 | fp16, why). auto: bf16 only where its matmuls are fast: CUDA with bf16 support, or a CPU
    whose bf16 matmuls measure CPU_BF16_MIN_SPEEDUP times faster than fp32 (cpu_bf16_speedup)."""
    if requested != "auto":
        if requested == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ScalegptError(f"train.precision = bf16, but {torch.cuda.get_device_name(device)} has no bf16 support; "
                                "use fp16 (with loss scaling) or fp32")
        return requested, "requested with --train.precision"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: this GPU runs bf16 tensor-core matmuls"
        return "fp32", "auto: this GPU has no bf16; pass --train.precision fp16 for loss-scaled half precision"
    if device.type == "cpu":
        speedup = cpu_bf16_speedup()
        if speedup >= CPU_BF16_MIN_SPEEDUP:
            return "bf16", f"auto: this CPU's bf16 matmuls measured {speedup:.1f}x faster than fp32"
        if speedup < 1:
            return "fp32", f"auto: this CPU's bf16 matmuls measured {1 / speedup:.1f}x slower than fp32"
        return "fp32", f"auto: this CPU's bf16 matmuls measured only {speedup:.2f}x faster than fp32"
    return "fp32", f"auto: bf16 is not faster than fp32 on {device.type}"


@functools.lru_cache(maxsize=None)
def cpu_bf16_speedup() -> float:
    """bf16 / fp32 matmul throughput on this CPU, from 512 x 512 products for 0.2 s each: small enough that a CPU
    emulating bf16 at 1 GFLOP/s still answers in about a second."""
    from scalegpt.metrics import measure_matmul_peak

    cpu = torch.device("cpu")
    return (measure_matmul_peak(cpu, torch.bfloat16, size=512, seconds=0.2)
            / measure_matmul_peak(cpu, torch.float32, size=512, seconds=0.2))


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(device: torch.device, precision: str):
    """The autocast context for the forward pass (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the OS; True if it took effect.

    A CPU training step frees and allocates the same large buffers every step (GPT-2 124M: its 206 MB logits, the
    154 MB embedding gradient, 12 MB MLP activations). glibc serves every block over 32 MB, and smaller ones until its
    threshold adapts, with a fresh mmap() that the kernel faults in and zeroes page by page on first touch, every
    step. Served from the heap and never trimmed, the second step onward touches only pages it already has: a GPT-2
    124M step on 2 cores went from 5.9-6.0 s to 5.4-5.7 s. The price is that the process keeps its peak memory until
    it exits, as with the jemalloc/tcmalloc setups that PyTorch's CPU tuning guide suggests. Linux/glibc only."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # <malloc.h>
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
