"""Benchmark scripts run end to end in their --quick form (the measurements themselves are not tests)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_recipes_quick_runs_every_recipe_and_reports(tmp_path, data_dir):
    text = str(data_dir / "tinyshakespeare.txt")  # stands in for Dickens too: the script prepares it with gpt2
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_recipes.py"), "--quick", "--seeds", "1",
                           "--shakespeare", text, "--dickens", text, "--out", str(tmp_path / "out"),
                           "--cache", str(tmp_path / "cache")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "AVX-512 BF16:" in out and "torch " in out
    for heading in ("val loss at equal steps", "val loss at equal training time", "training time to reach val loss",
                    "val bits per byte"):
        assert heading in out
    saved = json.loads((tmp_path / "out" / "results.json").read_text())["parts"]
    assert set(saved["shakespeare"]) == {"nanoGPT", "GPT-2", "modern"} and set(saved["dickens"]) == {"GPT-2", "modern"}
    for runs in (*saved["shakespeare"].values(), *saved["dickens"].values()):
        (run,) = runs
        assert run["steps"][0] == 0 and run["steps"][-1] >= 1 and len(run["val"]) == len(run["train_s"])
        assert all(b > a for a, b in zip(run["train_s"], run["train_s"][1:]))  # training time only grows
        assert run["val"][-1] < run["val"][0]  # a few steps already learn something
    assert saved["shakespeare"]["nanoGPT"][0]["precision"] == "fp32"  # nanoGPT's own recipe runs in fp32
    assert (tmp_path / "out" / "recipes.png").stat().st_size > 10_000
    # --combine reports saved runs together without training again
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_recipes.py"), "--combine",
                           str(tmp_path / "out"), str(tmp_path / "out"), "--out", str(tmp_path / "both")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "± " in proc.stdout and (tmp_path / "both" / "recipes.png").is_file()


def test_bench_serve_quick_reports_every_server_and_client_count():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_serve.py"), "--quick", "--clients", "1,4"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if line.startswith(("| one", "| batched"))]
    assert [(r[0].strip(), int(r[1])) for r in rows] == [("one-at-a-time", 1), ("batched", 1), ("one-at-a-time", 4),
                                                        ("batched", 4)]
    assert all(int(r[2]) == int(r[1]) and float(r[3]) > 0 for r in rows)  # every request answered, tokens counted
    assert "batching at 4 clients" in proc.stdout and "load average" in proc.stdout


def test_bench_nanogpt_reads_nanogpts_log_leaving_evaluation_out():
    """nanoGPT's train.py at --log_interval=1 prints 'step N: ... val loss V' before iteration N's 'iter N: ...
    time T ms', which then includes the evaluation: such iterations (and the first) count at the others' median."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_nanogpt import parse_nanogpt_log, time_at_eval

    log = "\n".join([
        "step 0: train loss 4.2000, val loss 4.1900", "iter 0: loss 4.2, time 900.00ms, mfu -100.00%",
        "iter 1: loss 4.0, time 50.00ms, mfu -100.00%", "iter 2: loss 3.9, time 70.00ms, mfu -100.00%",
        "step 3: train loss 2.0000, val loss 1.9000", "saving checkpoint to out",
        "iter 3: loss 2.0, time 2000.00ms, mfu 1.00%", "iter 4: loss 1.9, time 60.00ms, mfu 1.00%",
        "step 5: train loss 1.8000, val loss 1.8000", "iter 5: loss 1.8, time 1500.00ms, mfu 1.00%"])
    run, plain = parse_nanogpt_log(log)
    assert plain == [50.0, 70.0, 60.0]
    assert run.steps == [0, 3, 5] and run.val == [4.19, 1.9, 1.8]
    # iterations 0..2 (0 at the median 60) before step 3's evaluation; 3 (median) and 4 before step 5's
    assert run.train_s == [0.0, 0.18, 0.3]
    assert abs(run.time_to(1.85) - 0.24) < 1e-9  # halfway between 0.18 s (1.9) and 0.3 s (1.8)
    assert time_at_eval(run, 1.85) == 0.3
