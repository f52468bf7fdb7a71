"""Where and in what precision a run computes: device auto-detection, the autocast dtype, and seeding.

Each choice comes with a reason string that the trainer prints, so a run never silently lands on the CPU or in fp32.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

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
        probe = _PROBES.get(probe_key(), {"cached": None})
        how = (f"median of {len(probe.get('ratios', []))} rounds, "
               + (f"cached in {probe['cached']}" if probe["cached"] else "measured now"))
        if speedup >= CPU_BF16_MIN_SPEEDUP:
            return "bf16", f"auto: this CPU's bf16 matmuls measured {speedup:.1f}x faster than fp32 ({how})"
        if speedup < 1:
            return "fp32", f"auto: this CPU's bf16 matmuls measured {1 / speedup:.1f}x slower than fp32 ({how})"
        return "fp32", f"auto: this CPU's bf16 matmuls measured only {speedup:.2f}x faster than fp32 ({how})"
    return "fp32", f"auto: bf16 is not faster than fp32 on {device.type}"


PROBE_ROUNDS = 7  # interleaved fp32/bf16 pairs; their median ratio is the figure (one pair swung 1.6x-25.8x)


def cpu_bf16_speedup() -> float:
    """bf16 / fp32 matmul throughput on this CPU at the current thread count: cached per machine (cpu_probe)."""
    return cpu_probe()["speedup"]


_PROBES: dict[str, dict] = {}  # this process's probes by key (the file may be unwritable)


def cpu_probe(rounds: int = PROBE_ROUNDS) -> dict:
    """{"speedup", "ratios", "key", "cached"}: the median of `rounds` interleaved fp32/bf16 timings of 512 x 512
    products (a CPU emulating bf16 at 1 GFLOP/s still answers in seconds), measured once per CPU model, torch version
    and thread count and kept in ~/.cache/scalegpt/cpu_probe.json, so runs on one machine pick one precision."""
    key = probe_key()
    if key in _PROBES:
        return _PROBES[key]
    path = cache_dir() / "cpu_probe.json"
    cache = _read_json(path)
    entry = cache.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("speedup"), (int, float)) and entry["speedup"] > 0:
        _PROBES[key] = {**entry, "key": key, "cached": str(path)}
        return _PROBES[key]
    from scalegpt.metrics import measure_matmul_peak

    cpu, ratios = torch.device("cpu"), []
    for _ in range(rounds):
        fp32 = measure_matmul_peak(cpu, torch.float32, size=512, seconds=0.03)
        ratios.append(measure_matmul_peak(cpu, torch.bfloat16, size=512, seconds=0.03) / fp32)
    entry = {"speedup": statistics.median(ratios), "ratios": [round(r, 3) for r in ratios],
             "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    cache[key] = entry
    try:
        from scalegpt._fs import write_text_atomically

        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(path, json.dumps(cache, indent=1))
    except OSError:  # a read-only home: measure again next time
        pass
    _PROBES[key] = {**entry, "key": key, "cached": None}
    return _PROBES[key]


def probe_key() -> str:
    return f"{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scalegpt"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


# ---------------------------------------------------------------------------------------------------- CPU threads
# On a 2-core CPU that other processes also use, torch's default of one OpenMP thread per core can be ~4x slower
# than one thread (each step's threads wait at barriers for a core); on a quiet one two threads win. So the count is
# measured, like the precision: interleaved rounds of the model's own MLP matmul at each candidate count.
THREAD_ROUNDS = 5
THREAD_MIN_GAIN = 1.1  # fewer threads than the default only when they measure this much faster
# torch's own count (one per core), as it was before any pick: a second Trainer in the same process (a benchmark, a
# notebook) must measure the same candidates, not start from the 1 an earlier pick on a busy minute set.
TORCH_DEFAULT_THREADS = torch.get_num_threads()


def pick_threads(requested: int, rows: int, width: int, recorded: int | None = None) -> tuple[int, str]:
    """(threads, why) for CPU work, set with torch.set_num_threads. `requested` > 0 is taken as is; OMP_NUM_THREADS
    set in the environment wins over auto; a resumed run keeps `recorded`; else measured (measure_threads)."""
    default = TORCH_DEFAULT_THREADS
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    cores = os.cpu_count() or default
    if requested > 0:
        n, why = requested, "requested with --train.threads"
    elif os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        n, why = max(1, int(os.environ["OMP_NUM_THREADS"])), "set by OMP_NUM_THREADS"
    elif recorded:
        n, why = recorded, "as the run started: recorded in its checkpoint"
    elif default <= 1:
        n, why = 1, "one core"
    else:
        times = measure_threads([default, 1] if default <= 2 else [default, default // 2, 1], rows, width)
        fastest = min(times, key=times.get)
        n = fastest if times[fastest] * THREAD_MIN_GAIN < times[default] else default
        shown = ", ".join(f"{t}: {ms:.1f} ms" for t, ms in sorted(times.items(), reverse=True))
        why = f"auto: measured {shown} per probe"
    torch.set_num_threads(n)
    busy = f"load average {load:.1f} on {cores} cores"
    if n > 1 and load > cores and requested == 0:
        busy += f"; the CPU is oversubscribed: if steps are slow, try --train.threads 1"
    return n, f"{why}; {busy}"


def measure_threads(candidates: list[int], rows: int, width: int) -> dict[int, float]:
    """{threads: median ms} of an MLP-shaped fp32 matmul (rows x width @ width x 4*width, rows cut so one product is
    ~0.06 GFLOP), THREAD_ROUNDS interleaved rounds. Constant operands: the global RNG is not touched."""
    rows = max(16, min(rows, int(3e7 / (4 * width * width))))
    a = torch.full((rows, width), 0.5)
    b = torch.full((width, 4 * width), 0.25)
    times: dict[int, list[float]] = {t: [] for t in candidates}
    before = torch.get_num_threads()
    try:
        for r in range(THREAD_ROUNDS):
            for t in (candidates if r % 2 == 0 else candidates[::-1]):
                torch.set_num_threads(t)
                a @ b  # wake this count's thread pool
                start = time.perf_counter()
                for _ in range(3):
                    a @ b
                times[t].append((time.perf_counter() - start) / 3 * 1000)
    finally:
        torch.set_num_threads(before)
    return {t: statistics.median(v) for t, v in times.items()}


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(device: torch.device, precision: str):
    """The autocast context for the forward pass (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch. Wraps around at 2^64 (torch's range): rank r of a run seeded 2^64 - 1 seeds
    r - 1 instead of failing to start."""
    seed %= 2**64
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
