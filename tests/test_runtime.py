"""Device, precision and process settings the trainer picks before it builds anything."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from scalegpt import runtime
from scalegpt.errors import ScalegptError
from scalegpt.runtime import pick_device, pick_precision


@pytest.mark.parametrize("speedup, precision, reason", [
    (2.2, "bf16", "bf16 matmuls measured 2.2x faster than fp32"),  # AVX-512 BF16 / AMX CPUs
    (1.2, "fp32", "measured only 1.20x faster"),
    (0.125, "fp32", "bf16 matmuls measured 8.0x slower than fp32"),  # AVX2: bf16 is emulated
])
def test_cpu_auto_precision_follows_the_measured_bf16_speed(monkeypatch, speedup, precision, reason):
    monkeypatch.setattr(runtime, "cpu_bf16_speedup", lambda: speedup)
    picked, why = pick_precision("auto", torch.device("cpu"))
    assert picked == precision and why.startswith("auto: ") and reason in why


def test_cpu_bf16_speedup_is_measured_once():
    speedup = runtime.cpu_bf16_speedup()
    assert 0 < speedup < 100 and runtime.cpu_bf16_speedup() == speedup  # cached: one measurement per process


def test_requested_precision_and_device_are_kept():
    assert pick_precision("bf16", torch.device("cpu"))[0] == "bf16"
    assert pick_device("cpu") == (torch.device("cpu"), "requested with --train.device / --device")


def test_unusable_device_is_a_one_line_error():
    with pytest.raises(ScalegptError, match="train.device"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ScalegptError, match="no CUDA device"):
            pick_device("cuda")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_keep_freed_memory_keeps_large_blocks_for_reuse():
    # In a fresh process: a freed 256 MB tensor normally goes back to the OS (resident memory drops); after
    # keep_freed_memory() it stays in the heap, so the next step's allocation of it needs no page faults.
    script = textwrap.dedent("""
        import os, sys, torch
        from scalegpt.runtime import keep_freed_memory
        def resident_mb():
            return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        if sys.argv[1] == "keep":
            assert keep_freed_memory()
        before = resident_mb()
        block = torch.ones(64 * 2**20)  # 256 MB, touched
        del block
        print(round(resident_mb() - before))
    """)
    kept = {mode: int(subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True,
                                     check=True).stdout) for mode in ("keep", "default")}
    assert kept["default"] < 32 and kept["keep"] > 200, kept
