#!/usr/bin/env python3
"""Crash-safety stress test: SIGKILL a CPU training run again and again, resume it each time, and check that nothing
was ever lost or corrupted.

    python scripts/stress_kill_resume.py --kills 20          # the full run (a few minutes on 2 cores)
    python scripts/stress_kill_resume.py --kills 3 --steps 40  # the shortened version CI runs (tests/test_stress.py)

What it does:
  1. prepares a tiny character-level dataset from Tiny Shakespeare (or a built-in text when that file is missing);
  2. trains a tiny model uninterrupted with `scalegpt train` (the reference);
  3. trains the same config again in another run directory, SIGKILLing the process N times at random moments: some
     kills (2 in 5) wait for a checkpoint write to start (its temporary directory appears) and strike inside it, others
     (2 in 5) strike a random number of steps after the attempt's first checkpoint (in forward/backward, the optimizer
     step, logging or the pruning of old checkpoints), the rest at a random early moment (mostly start-up).
     After each kill it resumes with `--resume`;
  4. after every kill, loads every checkpoint directory the run holds (weights via safetensors, the training state via
     torch.load(weights_only=True)): all must be readable;
  5. lets the last resume finish, then checks that the final weights equal the reference's bit for bit (fp32 CPU) and
     that every (loss, grad norm) any attempt wrote to metrics.jsonl (read after each kill, and at the end) equals
     the reference's at that step, bit for bit.

Exit status 0 when every check passes; the last line says PASS or FAIL.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"

# A model small enough that one step takes milliseconds, so a short run still holds dozens of checkpoint writes.
MODEL_ARGS = ["--model.n_layer", "2", "--model.n_head", "2", "--model.n_embd", "32", "--model.block_size", "32"]


def train_args(data_dir: Path, run_dir: Path, steps: int, interval: int, seed: int) -> list[str]:
    return [
        *MODEL_ARGS,
        "--data.dir", str(data_dir),
        "--out", str(run_dir),
        "--train.max_steps", str(steps),
        "--train.micro_batch_size", "4",
        "--train.global_batch_tokens", str(4 * 32 * 2),  # 2 micro-steps per update: accumulation resumes too
        "--train.device", "cpu",
        "--train.precision", "fp32",
        "--train.compile", "false",
        "--train.seed", str(seed),
        "--optim.lr", "3e-3",
        "--schedule.warmup_steps", "5",
        "--checkpoint.interval", str(interval),
        "--checkpoint.keep_last", "3",
        "--eval.interval", "0",
        "--eval.samples", "0",
        "--eval.at_start", "false",
        "--log.interval", "1",
        "--log.plot", "false",
        "--log.progress", "false",
    ]


def scalegpt(*args: str) -> list[str]:
    return [sys.executable, "-m", "scalegpt", *args]


def child_env() -> dict:
    env = dict(os.environ)
    # One thread per process: the same reduction order in every attempt, and a core left for the watcher.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def prepare_data(work: Path) -> Path:
    src = work / "corpus.txt"
    if SHAKESPEARE.is_file():
        src.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    else:
        src.write_text(("The quick brown fox jumps over the lazy dog. " * 40 + "\n") * 200, encoding="utf-8")
    out = work / "data"
    if not (out / "meta.json").is_file():
        from scalegpt.prepare import prepare

        # In-process: `scalegpt prepare` is not under test here, and one interpreter start-up less matters in CI.
        prepare([str(src)], out=out, tokenizer="char", progress=False)
    return out


def run(cmd: list[str], what: str) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    if p.returncode != 0:
        raise SystemExit(f"{what} failed (exit {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


# ------------------------------------------------------------------------------------------------------ checks


def checkpoint_dirs(run_dir: Path) -> tuple[list[Path], list[Path]]:
    """(checkpoint directories, leftover temporary directories) of a run."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return [], []
    entries = sorted(root.iterdir())
    return [p for p in entries if not p.name.startswith(".")], [p for p in entries if p.name.startswith(".")]


def check_loadable(ckpt: Path) -> str | None:
    """None when the checkpoint loads completely, else what is wrong."""
    from scalegpt.checkpoint import load_model_dir
    from scalegpt.errors import ScalegptError
    from scalegpt.checkpoint import load_state

    try:
        load_model_dir(ckpt)
        state = load_state(ckpt)
    except ScalegptError as e:
        return str(e)
    if not isinstance(state.get("step"), int):
        return f"{ckpt}: training state has no step"
    return None


def weights(ckpt: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(ckpt / "model.safetensors"))


def logged_losses(run_dir: Path) -> list[tuple[int, float, float]]:
    """(step, loss, grad norm) of every train record in metrics.jsonl, in order. JSON keeps a float's exact repr,
    so these compare bit for bit (log.txt rounds to 6 decimals). A line torn by SIGKILL is skipped."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("kind") == "train":
            out.append((int(row["step"]), row["loss"], row["grad_norm"]))
    return out


def final_checkpoint(run_dir: Path, steps: int) -> Path:
    from scalegpt.checkpoint import checkpoint_dir

    return checkpoint_dir(run_dir, steps)


# ------------------------------------------------------------------------------------------------------ killing


def _temp_dirs(root: Path) -> set[str]:
    try:
        with os.scandir(root) as it:
            return {e.name for e in it if e.name.startswith(".") and ".tmp-" in e.name}
    except FileNotFoundError:
        return set()


def wait_for_write(proc: subprocess.Popen, run_dir: Path, nth: int, deadline: float, settled_ok: bool = False) -> bool:
    """Poll for the nth checkpoint write of this process (a new temporary directory); True while it is mid-write.

    settled_ok: a new finished checkpoint directory also counts (a write too quick for the poll to see)."""
    root = run_dir / "checkpoints"
    before = _temp_dirs(root)  # debris of earlier kills is not this process's write
    done_before = set(p.name for p in checkpoint_dirs(run_dir)[0])
    seen = 0
    current: set[str] = set()
    while time.monotonic() < deadline and proc.poll() is None:
        now = _temp_dirs(root) - before
        if now - current:
            seen += 1
            if seen >= nth:
                return True
        current = now
        if settled_ok and set(p.name for p in checkpoint_dirs(run_dir)[0]) - done_before:
            return True
        time.sleep(0.0002)
    return False


def one_attempt(cmd: list[str], run_dir: Path, rng: random.Random, interval: int, timing: tuple[float, float],
                budget_s: float) -> tuple[str, int | None]:
    """Start training, SIGKILL it at a moment chosen by rng; (what happened, exit code when it ended by itself).

    Strikes inside the 1st-3rd checkpoint write of the attempt, 0..2*interval steps' worth of time after its first
    checkpoint, or at a random early moment (mostly start-up: imports, checkpoint loading). Aiming past the first
    write lets most attempts make some progress, so N kills fit in one run."""
    # stderr to a file, not a pipe: a pipe nobody reads until the end could fill up and stall the child.
    errfile = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errfile, text=True, env=child_env())
    start = time.monotonic()
    deadline = start + budget_s
    mode = rng.choice(["write", "write", "steps", "steps", "startup"])
    if mode == "write":
        nth = rng.randint(1, 3)
        hit = wait_for_write(proc, run_dir, nth, deadline)
        time.sleep(rng.choice([0.0, 0.0, rng.uniform(0, 0.003)]))  # at once, or a little way into the write
        what = f"inside checkpoint write #{nth}" if hit else "(no write seen)"
    elif mode == "steps":
        # Anchored on the attempt's first checkpoint write (start-up time varies a lot on a busy machine), then a
        # random number of steps' worth of time: lands in forward/backward, the optimizer, logging or pruning.
        startup_s, step_s = timing
        k = rng.uniform(0, 2 * interval)
        wait_for_write(proc, run_dir, 1, deadline, settled_ok=True)
        end = time.monotonic() + k * step_s
        while time.monotonic() < end and proc.poll() is None:
            time.sleep(0.0005)
        what = f"~{k:.1f} steps after its first checkpoint"
    else:
        end = start + rng.uniform(0.05, timing[0] + 0.5)
        while time.monotonic() < end and proc.poll() is None:
            time.sleep(0.005)
        what = "at a random early moment"  # mostly start-up (imports, loading); a quick resume may be training
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        errfile.close()
        return f"SIGKILL {what} at {time.monotonic() - start:.2f}s", None
    errfile.seek(0)
    err = errfile.read()
    errfile.close()
    if proc.returncode != 0:
        raise SystemExit(f"training attempt failed by itself (exit {proc.returncode}):\n{err[-3000:]}")
    return "finished before the kill", 0


def reference_run(cmd: list[str], run_dir: Path, interval: int) -> tuple[float, float, float]:
    """Run uninterrupted, noting when each checkpoint appears: (total s, start-up s, s per step)."""
    start = time.monotonic()
    errfile = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errfile, text=True, env=child_env())
    appeared: dict[str, float] = {}
    while proc.poll() is None:
        for c in checkpoint_dirs(run_dir)[0]:
            appeared.setdefault(c.name, time.monotonic() - start)
        time.sleep(0.001)
    errfile.seek(0)
    err = errfile.read()
    errfile.close()
    if proc.returncode != 0:
        raise SystemExit(f"reference run failed (exit {proc.returncode}):\n{err[-3000:]}")
    total = time.monotonic() - start
    times = sorted(appeared.values())
    if len(times) < 2:
        return total, total / 2, 0.0
    step_s = (times[-1] - times[0]) / (interval * (len(times) - 1))
    return total, max(times[0] - interval * step_s, 0.0), step_s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20, help="how many times to SIGKILL the run")
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps of the run")
    ap.add_argument("--interval", type=int, default=5, help="checkpoint every this many steps")
    ap.add_argument("--seed", type=int, default=0, help="seeds the kill schedule (and the training run)")
    ap.add_argument("--workdir", help="keep everything here (default: a temporary directory, deleted on success)")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(REPO))
    rng = random.Random(args.seed)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="scalegpt-stress-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    data = prepare_data(work)
    print(f"workdir {work}; dataset prepared in {time.monotonic() - t0:.1f}s", flush=True)

    ref_dir, run_dir = work / "reference", work / "killed"
    for d in (ref_dir, run_dir):
        shutil.rmtree(d, ignore_errors=True)
    ref_s, startup_s, step_s = reference_run(scalegpt("train", *train_args(data, ref_dir, args.steps, args.interval,
                                                                         args.seed)), ref_dir, args.interval)
    print(f"reference run: {args.steps} steps uninterrupted in {ref_s:.1f}s "
          f"(start-up {startup_s:.1f}s, {step_s * 1000:.1f} ms/step with checkpoints)", flush=True)
    timing = (startup_s, step_s)

    failures: list[str] = []
    seen: set[str] = set()
    logged_by_attempts: list[tuple[int, float, float]] = []
    finished = False
    kills = mid_writes = 0
    attempt = 0
    while kills < args.kills:
        attempt += 1
        resume = run_dir.exists()
        cmd = scalegpt("train", *train_args(data, run_dir, args.steps, args.interval, args.seed),
                       *(["--resume"] if resume else []))
        temps_before = len(checkpoint_dirs(run_dir)[1])
        how, rc = one_attempt(cmd, run_dir, rng, args.interval, timing, budget_s=ref_s + 10)
        logged_by_attempts.extend(logged_losses(run_dir))  # a resume truncates the log: read it now
        ckpts, temps = checkpoint_dirs(run_dir)
        for c in ckpts:
            problem = check_loadable(c)
            seen.add(c.name)
            if problem:
                failures.append(f"after attempt {attempt}: {c.name} unreadable: {problem}")
        latest = ckpts[-1].name if ckpts else "none"
        mid_write = len(temps) > temps_before  # the kill left a half-written checkpoint directory behind
        mid_writes += mid_write
        print(f"attempt {attempt:2d}: {how:48s} {'[mid-write] ' if mid_write else '':12s}checkpoints {len(ckpts)} "
              f"(latest {latest}), temporaries left {len(temps)}", flush=True)
        if rc == 0:
            finished = True
            break
        kills += 1

    if not finished:
        t = time.monotonic()
        cmd = scalegpt("train", *train_args(data, run_dir, args.steps, args.interval, args.seed), "--resume")
        run(cmd, "final resume")
        print(f"final resume ran to the end in {time.monotonic() - t:.1f}s", flush=True)

    final, ref_final = final_checkpoint(run_dir, args.steps), final_checkpoint(ref_dir, args.steps)
    for c in checkpoint_dirs(run_dir)[0]:
        problem = check_loadable(c)
        if problem:
            failures.append(f"at the end: {c.name} unreadable: {problem}")
    if not final.is_dir():
        failures.append(f"the run did not finish: no {final.name}")
    else:
        got, want = weights(final), weights(ref_final)
        import torch

        diff = [k for k in want if k not in got or not torch.equal(got[k], want[k])]
        if diff or got.keys() != want.keys():
            failures.append(f"final weights differ from the uninterrupted run's in {len(diff)} tensors, "
                            f"e.g. {diff[:3]}")
        else:
            print(f"final weights: all {len(want)} tensors bit-identical to the uninterrupted run's", flush=True)

    ref_log = {step: (loss, norm) for step, loss, norm in logged_losses(ref_dir)}
    final_log = logged_losses(run_dir)
    logged = logged_by_attempts + final_log
    bad = [(step, (loss, norm), ref_log.get(step)) for step, loss, norm in logged if ref_log.get(step) != (loss, norm)]
    if sorted(step for step, _, _ in final_log) != list(range(1, args.steps + 1)):
        failures.append(f"metrics.jsonl does not hold exactly one train record per step 1..{args.steps}")
    if bad:
        failures.append(f"{len(bad)} logged (loss, grad norm) pairs differ from the reference, e.g. step "
                        f"{bad[0][0]}: {bad[0][1]} vs {bad[0][2]}")
    else:
        print(f"logged (loss, grad norm) of every step: {len(logged)} records read over all attempts "
              f"({len(final_log)} in the final metrics.jsonl), all bit-identical to the reference's", flush=True)
    print(f"kills {kills} ({mid_writes} left a half-written checkpoint behind), attempts {attempt}, "
          f"distinct checkpoints seen {len(seen)}, "
          f"wall time {time.monotonic() - t0:.1f}s", flush=True)
    for f in failures:
        print("FAIL:", f)
    print("FAIL" if failures else "PASS", flush=True)
    if not failures and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
