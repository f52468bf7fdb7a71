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


# ---------------------------------------------------------------------------------------------------- probe cache


def test_the_precision_probe_takes_a_median_and_is_cached_per_machine(monkeypatch, tmp_path):
    """One wild round (bf16 25.8x faster, or 1.6x slower) does not move the decision; the figure is kept in
    ~/.cache/scalegpt keyed by CPU model, torch version and thread count, so the next run does not measure again."""
    from scalegpt import metrics

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(runtime, "_PROBES", {})
    # fp32 then bf16 FLOP/s per round: ratios 1/1.6, 25.8, 2.0, 2.1, 1.9, 2.2, 2.05 -> median 2.05
    ratios = iter([1 / 1.6, 25.8, 2.0, 2.1, 1.9, 2.2, 2.05])
    calls = []

    def fake_peak(device, dtype, size, seconds):
        calls.append(dtype)
        return 1e9 if dtype == torch.float32 else 1e9 * next(ratios)

    monkeypatch.setattr(metrics, "measure_matmul_peak", fake_peak)
    precision, why = pick_precision("auto", torch.device("cpu"))
    assert precision == "bf16" and "measured 2.0x faster than fp32 (median of 7 rounds, measured now)" in why
    assert len(calls) == 14
    cache = tmp_path / "scalegpt" / "cpu_probe.json"
    import json

    entry = json.loads(cache.read_text())[runtime.probe_key()]
    assert entry["speedup"] == pytest.approx(2.05) and len(entry["ratios"]) == 7
    monkeypatch.setattr(runtime, "_PROBES", {})  # a new process: read from the file, nothing measured
    precision, why = pick_precision("auto", torch.device("cpu"))
    assert precision == "bf16" and f"cached in {cache}" in why and len(calls) == 14


# ---------------------------------------------------------------------------------------------------- threads


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_thread_count_is_measured_not_assumed(monkeypatch, restore_threads):
    """On a busy 2-core CPU, 2 OpenMP threads measured ~4x slower than 1: the faster count is taken, and the
    reason names the timings and the load."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "TORCH_DEFAULT_THREADS", 2)
    monkeypatch.setattr(runtime, "measure_threads", lambda candidates, rows, width: {2: 40.0, 1: 9.5})
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (3.5, 3.0, 2.0))
    set_to = []
    monkeypatch.setattr(torch, "set_num_threads", set_to.append)
    n, why = runtime.pick_threads(0, rows=2048, width=128)
    assert n == 1 and set_to == [1]
    assert why.startswith("auto: measured 2: 40.0 ms, 1: 9.5 ms per probe; load average 3.5 on")
    # a quiet machine: two threads win (fewer threads are taken only when 10% faster)
    monkeypatch.setattr(runtime, "measure_threads", lambda candidates, rows, width: {2: 10.0, 1: 10.5})
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 2)
    n, why = runtime.pick_threads(0, rows=2048, width=128)
    assert n == 2 and "the CPU is oversubscribed: if steps are slow, try --train.threads 1" in why


def test_a_second_pick_in_one_process_measures_from_torchs_default_again(monkeypatch, restore_threads):
    """A benchmark builds several Trainers in one process: once a busy minute made one of them take 1 thread, the
    next ones used to see torch.get_num_threads() == 1, skip measuring ("one core") and stay at 1 for good."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "TORCH_DEFAULT_THREADS", 2)
    measured = []
    timings = iter([{2: 40.0, 1: 9.5}, {2: 10.0, 1: 10.5}])  # busy, then quiet
    monkeypatch.setattr(runtime, "measure_threads", lambda candidates, rows, width: measured.append(candidates)
                        or next(timings))
    assert runtime.pick_threads(0, rows=2048, width=128)[0] == 1 and torch.get_num_threads() == 1
    assert runtime.pick_threads(0, rows=2048, width=128)[0] == 2 and torch.get_num_threads() == 2
    assert measured == [[2, 1], [2, 1]]


def test_requested_environment_and_recorded_thread_counts_win(monkeypatch, restore_threads):
    monkeypatch.setattr(runtime, "measure_threads", lambda *a: pytest.fail("measured although a count was given"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert runtime.pick_threads(2, rows=64, width=32)[0] == 2  # --train.threads beats the environment
    n, why = runtime.pick_threads(0, rows=64, width=32, recorded=2)
    assert n == 1 and why.startswith("set by OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    n, why = runtime.pick_threads(0, rows=64, width=32, recorded=1)
    assert n == 1 and why.startswith("as the run started")


def test_measure_threads_times_every_candidate_and_leaves_the_count(restore_threads):
    before = torch.get_num_threads()
    times = runtime.measure_threads([2, 1], rows=256, width=64)
    assert sorted(times) == [1, 2] and all(t > 0 for t in times.values())
    assert torch.get_num_threads() == before


def test_seed_everything_wraps_at_torchs_range():
    """train.seed may be 2^64 - 1 and each rank seeds seed + rank: rank 1 must start, as seed 0."""
    runtime.seed_everything(2**64)
    first = torch.rand(3)
    runtime.seed_everything(0)
    assert torch.equal(first, torch.rand(3))
