"""Step-cost benchmark on CPU (a measurement, not a test): what one training step of each recipe costs, and where
the time goes.

    python benchmarks/bench_step.py                          # modern vs GPT-2 preset, shakespeare-char shape
    python benchmarks/bench_step.py --profile                # + a torch.profiler table by op for each recipe
    python benchmarks/bench_step.py --against /tmp/old-checkout   # the same steps with another checkout's code
    python benchmarks/bench_step.py --shape gpt2-124m --precision fp32,bf16 --steps 2 --rounds 3

Recipes: configs/shakespeare-char.toml ("GPT-2") and configs/shakespeare-char-modern.toml ("modern"), on
Tiny Shakespeare at the character level (../shared/data/tinyshakespeare.txt, prepared once into --cache). With
--shape gpt2-124m both get GPT-2 small's shape (12 layers, 12 heads, 768 wide, block 1024, the GPT-2 BPE
vocabulary) and a batch of 1 x 1024 tokens.

How it is timed. Each code tree (this checkout, and --against's) runs in its own worker process holding a
`scalegpt.train.Trainer` per recipe and precision; the driver alternates them round by round (tree A recipe 1, tree A
recipe 2, tree B recipe 1, ...) so a busy minute on a shared machine hits every variant alike, and each round times
--steps calls of `Trainer.train_step` (data, forward, backward, clip, optimizer). Reported: the median ms per step
over all rounds, and each recipe's ratio to the first recipe of the same tree (the ratio is what a loaded machine
still measures well).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RECIPES = {"GPT-2": "shakespeare-char.toml", "modern": "shakespeare-char-modern.toml"}
QUIET = [("checkpoint.interval", "0"), ("checkpoint.at_end", "false"), ("eval.samples", "0"), ("log.plot", "false"),
         ("log.progress", "false"), ("train.device", "cpu"), ("train.compile", "false")]
SHAPES = {
    "shakespeare": [],
    "gpt2-124m": [("model.n_layer", "12"), ("model.n_head", "12"), ("model.n_embd", "768"),
                  ("model.block_size", "1024"), ("model.vocab_size", "0"), ("train.micro_batch_size", "1"),
                  ("train.global_batch_tokens", "1024")],
}

# The worker: reads one JSON command a line, answers one JSON line; runs with its code tree's scalegpt on the path.
WORKER = r'''
import json, sys, time
import torch
from scalegpt.config import load_config
from scalegpt.train import Trainer

trainers = {}
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "build":
        config = load_config(cmd["config"], [tuple(kv) for kv in cmd["overrides"]])
        trainer = Trainer(config, cmd["run"], overwrite=True, echo=lambda *_: None)
        trainer.model.train()
        for _ in range(cmd["warmup"]):
            trainer.train_step()
        trainers[cmd["name"]] = trainer
        out = {"precision": trainer.precision}
    elif cmd["op"] == "steps":
        trainer, times = trainers[cmd["name"]], []
        for _ in range(cmd["n"]):
            start = time.perf_counter()
            trainer.train_step()
            times.append(time.perf_counter() - start)
        out = {"times": times}
    elif cmd["op"] == "profile":
        from torch.profiler import ProfilerActivity, profile
        trainer = trainers[cmd["name"]]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(cmd["n"]):
                trainer.train_step()
        out = {"table": prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=cmd["rows"])}
    print(json.dumps(out), flush=True)
'''


class Worker:
    def __init__(self, tree: Path):
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, cwd=tree)

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"a benchmark worker died (exit {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def prepared(text: Path, tokenizer: str, cache: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from scalegpt.prepare import prepare

    out = cache / f"shakespeare-{tokenizer}-{text.stat().st_size}"
    if not (out / "meta.json").is_file():
        prepare([str(text)], out=str(out), tokenizer=tokenizer, progress=False, overwrite=True)
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{cpu}, {os.cpu_count()} logical CPUs, load average {load}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=list(SHAPES), default="shakespeare")
    parser.add_argument("--precision", default="auto",  # what the presets use: bf16 only where it measures faster
                        help="comma-separated: auto, fp32, bf16 (default auto)")
    parser.add_argument("--steps", type=int, default=10, help="steps per recipe per round (default 10)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--against", type=Path, action="append", default=[],
                        help="another scalegpt checkout whose code runs the same steps, interleaved (repeatable)")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table by op per recipe")
    parser.add_argument("--profile-rows", type=int, default=15)
    parser.add_argument("--text", type=Path, default=SHARED / "tinyshakespeare.txt", help="Tiny Shakespeare")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "scalegpt-bench-cache")
    args = parser.parse_args()

    data = prepared(args.text, "gpt2" if args.shape == "gpt2-124m" else "char", args.cache)
    trees = {"this": ROOT, **{f"against{i + 1}": p.resolve() for i, p in enumerate(args.against)}}
    variants = []  # (tree, recipe name with precision)
    workers = {}
    run_root = Path(tempfile.mkdtemp(prefix="bench-step-"))
    print(f"# step cost: {args.shape} shape, {args.rounds} rounds x {args.steps} steps, {machine()}", flush=True)
    try:
        for tree_name, tree in trees.items():
            workers[tree_name] = worker = Worker(tree)
            for precision in args.precision.split(","):
                for recipe, preset in RECIPES.items():
                    name = f"{recipe} ({precision})"
                    overrides = [*QUIET, ("data.dir", str(data)), ("train.precision", precision),
                                 ("train.max_steps", str(10**6)), *SHAPES[args.shape]]
                    worker.ask(op="build", name=name, config=str(ROOT / "scalegpt" / "configs" / preset),
                               overrides=overrides, run=str(run_root / tree_name / name.replace(" ", "_")),
                               warmup=args.warmup)
                    variants.append((tree_name, name))
        times = {v: [] for v in variants}
        for r in range(args.rounds):
            for tree_name, name in variants:
                times[(tree_name, name)] += workers[tree_name].ask(op="steps", name=name, n=args.steps)["times"]
            print(f"round {r + 1}: " + ", ".join(f"{t} {n} {statistics.median(times[(t, n)]) * 1000:.1f} ms"
                                                 for t, n in variants), flush=True)
        print("\n| code | recipe (precision) | ms per step (median) | vs the tree's first recipe | vs --against1 |")
        print("| --- | --- | --- | --- | --- |")
        median = {v: statistics.median(t) * 1000 for v, t in times.items()}
        for tree_name, name in variants:
            precision = name.split(" (")[1]
            first = next(median[v] for v in variants if v[0] == tree_name and v[1].split(" (")[1] == precision)
            other = median.get(("against1", name))
            vs = f"{median[(tree_name, name)] / other:.3f}x" if other and tree_name != "against1" else "-"
            print(f"| {trees[tree_name].name if tree_name != 'this' else 'this checkout'} | {name} | "
                  f"{median[(tree_name, name)]:.1f} | {median[(tree_name, name)] / first:.3f}x | {vs} |")
        print(f"\nmachine after the run: {machine()}")
        if args.profile:
            for tree_name, name in variants:
                table = workers[tree_name].ask(op="profile", name=name, n=args.steps, rows=args.profile_rows)["table"]
                print(f"\n## torch.profiler, {name}, {tree_name}, {args.steps} steps\n{table}")
    finally:
        for worker in workers.values():
            worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
