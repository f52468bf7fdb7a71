"""scalegpt's presets against the real nanoGPT on CPU (a measurement, not a test): time to nanoGPT's val loss 1.8857.

    python benchmarks/bench_nanogpt.py --nanogpt /path/to/nanoGPT                 # 3 rounds (hours on 2 busy cores)
    python benchmarks/bench_nanogpt.py --nanogpt /path/to/nanoGPT --rounds 1
    python benchmarks/bench_nanogpt.py --nanogpt /path/to/nanoGPT --max-iters 100 --rounds 1   # a smoke run

Each round runs, one after the other (so a busy minute on a shared machine hits them alike):
1. nanoGPT: `train.py` of the checkout given by --nanogpt, its CPU shakespeare_char recipe as its README states
   (`config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64
   --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`), plus
   `--eval_interval=50`; its data made by its own data/shakespeare_char/prepare.py from --text (copied in as
   input.txt, so nothing is downloaded). nanoGPT evaluates 20 random batches of val;
2. GPT-2: configs/shakespeare-char.toml (precision auto), 2,000 steps;
3. modern: configs/shakespeare-char-modern.toml, 600 steps;
the scalegpt presets evaluated every 50 steps on the whole val split (benchmarks/bench_recipes.py's train_and_time:
evaluation timed apart, not counted).

Training time: nanoGPT prints each iteration's time; the iterations that also evaluated (and saved a checkpoint) are
counted at the run's median instead, so its figure, like scalegpt's, leaves evaluation out. Time to 1.8857 is
interpolated linearly between the two evaluations around the crossing (and "at the eval that shows it" is the
training time of the first evaluation at or below it). Reported: per-step medians (for scalegpt, the median of the
50-step stretches' mean step: its runs time whole stretches between evaluations), val at a few steps, time to 1.8857
and its ratio to nanoGPT's (mean over rounds), as a markdown table.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_recipes import NANOGPT_VAL_LOSS, Run, build_config, machine, prepared, train_and_time  # noqa: E402

NANOGPT_RECIPE = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                  "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
                  "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]
PRESETS = {"GPT-2": ("shakespeare-char.toml", 2000), "modern": ("shakespeare-char-modern.toml", 600)}
EVAL_LINE = re.compile(r"^step (\d+): train loss [\d.]+, val loss ([\d.]+)")
ITER_LINE = re.compile(r"^iter (\d+): loss [\d.]+, time ([\d.]+)ms")


def parse_nanogpt_log(text: str) -> tuple[Run, list[float]]:
    """(a Run with nanoGPT's evaluations at training times that leave evaluation out, per-iteration ms of the
    iterations that did not evaluate) from the stdout of nanoGPT's train.py at --log_interval=1.

    An 'iter N' line times the loop from the end of iteration N-1, so it includes the evaluation printed as
    'step N' just before it; those iterations count at the median of the others."""
    evals, iters = {}, {}
    for line in text.splitlines():
        if m := EVAL_LINE.match(line):
            evals[int(m[1])] = float(m[2])
        elif m := ITER_LINE.match(line):
            iters[int(m[1])] = float(m[2])
    plain = [ms for it, ms in iters.items() if it not in evals and it > 0]
    median = statistics.median(plain) if plain else math.nan
    run, elapsed_ms = Run("nanoGPT", 1337, precision="fp32"), 0.0
    for it in range(0, max([*iters, *evals], default=-1) + 1):
        if it in evals:
            run.steps.append(it)
            run.train_s.append(elapsed_ms / 1000)
            run.val.append(evals[it])
        if it in iters:
            elapsed_ms += median if it in evals or it == 0 else iters[it]
    return run, plain


def time_at_eval(run: Run, target: float) -> float:
    """Training seconds at the first evaluation at or below `target` (nan when none is)."""
    return next((t for t, v in zip(run.train_s, run.val) if v <= target), math.nan)


def run_nanogpt(checkout: Path, text: Path, work: Path, max_iters: int) -> tuple[Run, list[float]]:
    data = checkout / "data" / "shakespeare_char"
    if not (data / "train.bin").is_file():
        shutil.copyfile(text, data / "input.txt")
        subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    args = [a.replace("2000", str(max_iters)) if a.startswith(("--max_iters", "--lr_decay_iters")) else a
            for a in NANOGPT_RECIPE]
    out = subprocess.run([sys.executable, "train.py", *args, "--eval_interval=50", f"--out_dir={work / 'nanogpt'}"],
                         cwd=checkout, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"nanoGPT's train.py failed (exit {out.returncode}): {out.stderr[-2000:]}")
    return parse_nanogpt_log(out.stdout)


def fmt(x: float, unit: str = "") -> str:
    return "-" if not math.isfinite(x) else f"{x:.1f}{unit}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", type=Path, required=True, help="a nanoGPT checkout (its train.py is run)")
    parser.add_argument("--text", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" /
                        "tinyshakespeare.txt", help="Tiny Shakespeare (default ../shared/data/tinyshakespeare.txt)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-iters", type=int, default=2000, help="nanoGPT's iterations (2000: its recipe)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "scalegpt-bench-cache")
    args = parser.parse_args()

    data = prepared(args.text, "char", args.cache)
    runs: dict[str, list[Run]] = {"nanoGPT": [], **{name: [] for name in PRESETS}}
    step_ms: dict[str, list[float]] = {name: [] for name in runs}
    print(f"# scalegpt presets vs nanoGPT ({args.nanogpt}), {args.rounds} round(s); {machine()}", flush=True)
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            run, times = run_nanogpt(args.nanogpt.resolve(), args.text, Path(tmp), args.max_iters)
            runs["nanoGPT"].append(run)
            step_ms["nanoGPT"] += times
            for name, (preset, steps) in PRESETS.items():
                steps = min(steps, args.max_iters)
                config = build_config(preset, [("train.max_steps", str(steps))], data, 1337 + r)
                run = train_and_time(config, Path(tmp) / name, eval_every=50, val_tokens=None)
                runs[name].append(run)
                diffs = [b - a for a, b in zip(run.train_s, run.train_s[1:])]
                step_ms[name] += [d / 50 * 1000 for d in diffs]  # the mean step of each 50-step stretch
            print(f"round {r + 1}: " + ", ".join(f"{n} {fmt(rs[-1].time_to(NANOGPT_VAL_LOSS), ' s')}"
                                                 for n, rs in runs.items()), flush=True)
    base = statistics.mean(r.time_to(NANOGPT_VAL_LOSS) for r in runs["nanoGPT"])
    # a nanoGPT round that never reaches the target took longer than its whole run: the ratio is then an upper bound
    floor = statistics.mean(r.time_to(NANOGPT_VAL_LOSS) if math.isfinite(r.time_to(NANOGPT_VAL_LOSS))
                            else r.train_s[-1] for r in runs["nanoGPT"])
    reached = sum(math.isfinite(r.time_to(NANOGPT_VAL_LOSS)) for r in runs["nanoGPT"])
    print(f"\nnanoGPT reached {NANOGPT_VAL_LOSS} in {reached} of {len(runs['nanoGPT'])} rounds; its whole runs took "
          f"{fmt(statistics.mean(r.train_s[-1] for r in runs['nanoGPT']), ' s')} of training (mean)")
    print(f"\n| run | ms per step (median) | val at 250 / 500 / 1000 / 1500 / last (mean) | time to {NANOGPT_VAL_LOSS} "
          "(mean) | ratio to nanoGPT | at the eval that shows it (mean) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, rs in runs.items():
        at = [statistics.mean(r.at_step(s) for r in rs) for s in (250, 500, 1000, 1500)]
        at.append(statistics.mean(r.val[-1] for r in rs))
        vals = " / ".join(f"{v:.4f}" if math.isfinite(v) else "-" for v in at)
        t = statistics.mean(r.time_to(NANOGPT_VAL_LOSS) for r in rs)
        shown = statistics.mean(time_at_eval(r, NANOGPT_VAL_LOSS) for r in rs)
        if math.isfinite(t) and math.isfinite(base) and base > 0:
            ratio = f"{t / base:.2f}x"
        elif math.isfinite(t) and name != "nanoGPT" and floor > 0:
            ratio = f"< {t / floor:.2f}x (nanoGPT's whole run)"
        else:
            ratio = "-"
        print(f"| {name} ({rs[0].precision}) | {fmt(statistics.median(step_ms[name]) if step_ms[name] else math.nan)}"
              f" | {vals} | {fmt(t, ' s')} | {ratio} | {fmt(shown, ' s')} |")
    print(f"\nmachine after the run: {machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
