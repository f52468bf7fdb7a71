"""Recipes benchmark on CPU (a measurement, not a test): how fast each training recipe gets to a validation loss.

    python benchmarks/bench_recipes.py                       # both parts, 3 seeds each (about an hour on 2 cores)
    python benchmarks/bench_recipes.py --only shakespeare --seeds 1
    python benchmarks/bench_recipes.py --quick --seeds 1     # a tiny smoke run (seconds)
    python benchmarks/bench_recipes.py --variant "modern-lr2:modern:optim.lr=2e-3"   # add a variant to compare

1. shakespeare (character level, nanoGPT's 90/10 split of tinyshakespeare.txt, 12 x 64 tokens per step for all):
   - nanoGPT: configs/shakespeare-char.toml at lr 1e-3 in fp32 = nanoGPT's own CPU recipe (the preset's header);
   - GPT-2: configs/shakespeare-char.toml as shipped (lr 3e-3, precision auto);
   - modern: configs/shakespeare-char-modern.toml.
   Tables: val loss at equal steps, val loss at equal training time, and the training time to reach nanoGPT's
   published val loss 1.8857 (target: modern <= 1/3 of nanoGPT's recipe, on the same CPU).
2. dickens (../shared/data/dickens, GPT-2 BPE, prepared once into the cache): a small model trained by the GPT-2
   recipe and by the modern recipe for the same training time (--dickens-seconds each); validation in bits per byte,
   so the figure compares with any tokenizer (target: modern >= 0.05 bpb lower, mean of the seeds).

How it is timed. Each run is a `scalegpt.train.Trainer` driven step by step in this process: the wall time counted is
`Trainer.train_step` only (data, forward, backward, clip, optimizer); the whole validation split is evaluated
--eval-points times a run and that time is measured apart and left out. The recipes run interleaved by seed (A1 B1 C1 A2 B2
...), so a noisy minute on a shared machine hits them alike. Losses at a given time or the time at which the target
is crossed are read off the evaluated points by linear interpolation. Results: a markdown table on stdout,
results.json and recipes.png (val loss against training time) in --out.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CONFIGS = ROOT / "scalegpt" / "configs"
NANOGPT_VAL_LOSS = 1.8857  # nanoGPT's README: shakespeare-char on a CPU, iteration 2000

# Every run: no checkpoints, samples, plots or progress bars (the benchmark evaluates and times by itself).
QUIET = [("checkpoint.interval", "0"), ("checkpoint.at_end", "false"), ("eval.samples", "0"), ("log.plot", "false"),
         ("log.progress", "false"), ("train.device", "cpu"), ("train.compile", "false")]

# name -> (preset file, overrides). The nanoGPT recipe is the shipped preset at nanoGPT's own lr and precision.
SHAKESPEARE = {
    "nanoGPT": ("shakespeare-char.toml", [("optim.lr", "1e-3"), ("train.precision", "fp32")]),
    "GPT-2": ("shakespeare-char.toml", []),
    "modern": ("shakespeare-char-modern.toml", []),
}
# The BPE model: 4 layers, 128 wide, 128-token context, 4 x 128 tokens per step, for both recipes. With GPT-2's
# 50,257-token vocabulary the output layer is most of a step's work (6.4M of the tied model's 7.2M parameters), and
# a few minutes of CPU are a few hundred steps: small batches, short warmup.
DICKENS_SHAPE = [("model.n_layer", "4"), ("model.n_head", "4"), ("model.n_embd", "128"), ("model.block_size", "128"),
                 ("model.vocab_size", "0"), ("train.micro_batch_size", "4"), ("train.global_batch_tokens", "512"),
                 ("schedule.warmup_steps", "20"), ("schedule.decay_steps", "0")]  # decay over the whole run
DICKENS = {
    "GPT-2": ("shakespeare-char.toml", DICKENS_SHAPE),
    "modern": ("shakespeare-char-modern.toml", DICKENS_SHAPE),
}
QUICK = [("model.n_layer", "2"), ("model.n_head", "2"), ("model.n_embd", "32"), ("model.block_size", "32"),
         ("train.micro_batch_size", "4"), ("train.global_batch_tokens", "128"), ("train.max_steps", "12"),
         ("schedule.warmup_steps", "2"), ("schedule.decay_steps", "0")]


@dataclass
class Run:
    recipe: str
    seed: int
    steps: list[int] = field(default_factory=list)
    train_s: list[float] = field(default_factory=list)  # training time when each evaluation happened
    val: list[float] = field(default_factory=list)
    bpb: list[float] = field(default_factory=list)
    eval_s: float = 0.0
    params: int = 0
    precision: str = ""

    def at_time(self, seconds: float, key: str = "val") -> float:
        """The curve at `seconds` of training (linear between evaluations); nan past the run's end."""
        return _interp(self.train_s, getattr(self, key), seconds)

    def at_step(self, step: int, key: str = "val") -> float:
        return _interp(self.steps, getattr(self, key), step)

    def time_to(self, target: float) -> float:
        """Training seconds at which the val loss first reaches `target` (nan when it never does)."""
        for i, v in enumerate(self.val):
            if v <= target:
                if i == 0:
                    return 0.0
                t0, t1, v0 = self.train_s[i - 1], self.train_s[i], self.val[i - 1]
                return t0 + (t1 - t0) * (v0 - target) / (v0 - v)
        return math.nan


def _interp(xs: list, ys: list, x: float) -> float:
    if not xs or x > xs[-1] + 1e-9:
        return math.nan
    for i in range(1, len(xs)):
        if xs[i] >= x:
            w = (x - xs[i - 1]) / (xs[i] - xs[i - 1]) if xs[i] > xs[i - 1] else 1.0
            return ys[i - 1] + w * (ys[i] - ys[i - 1])
    return ys[0]


def build_config(preset: str, overrides, data_dir: Path, seed: int):
    from scalegpt.config import load_config

    path = Path(preset) if Path(preset).is_file() else CONFIGS / preset
    return load_config(path, [*QUIET, ("data.dir", str(data_dir)), ("train.seed", str(seed)), *overrides])


def train_and_time(config, run_dir: Path, eval_every: int, val_tokens: int | None, verbose: bool = False) -> Run:
    """Train to config.train.max_steps, evaluating every `eval_every` steps (timed apart, not counted)."""
    from scalegpt.data import eval_batches
    from scalegpt.evaluate import evaluate_loss
    from scalegpt.train import Trainer

    trainer = Trainer(config, run_dir, overwrite=True, echo=lambda *_: None)
    run = Run("", config.train.seed, params=trainer.raw_model.num_params(), precision=trainer.precision)

    def evaluate(train_s: float) -> None:
        start = time.perf_counter()
        # Big batches for a small vocabulary; for GPT-2's 50k the logits of a micro-batch are already large.
        batch = 64 if trainer.model_config.vocab_size < 1024 else 16
        batches = eval_batches(trainer.val_data, batch_size=batch, seq_len=trainer.seq_len, max_tokens=val_tokens)
        with torch.random.fork_rng(devices=[]):
            result = evaluate_loss(trainer.raw_model, batches, trainer.device, autocast=trainer.autocast,
                                   byte_lengths=trainer.byte_lengths)
        run.steps.append(trainer.step)
        run.train_s.append(train_s)
        run.val.append(result["loss"])
        run.bpb.append(result["bpb"])
        run.eval_s += time.perf_counter() - start

    try:
        trainer.model.train()
        train_s, max_steps = 0.0, config.train.max_steps
        evaluate(0.0)
        while trainer.step < max_steps:
            start = time.perf_counter()
            trainer.train_step()  # on a CPU every op has finished when it returns: no device sync needed
            train_s += time.perf_counter() - start
            if trainer.step % eval_every == 0 or trainer.step == max_steps:
                evaluate(train_s)
                if verbose:
                    print(f"    step {trainer.step}: val {run.val[-1]:.4f} at {train_s:.1f} s", flush=True)
    finally:
        if trainer.run_log is not None:
            trainer.run_log.close()
        trainer.loader.close()
    return run


def step_costs(configs: dict, run_dir: Path, steps: int, rounds: int) -> dict[str, float]:
    """{recipe: ms per training step}, the best of `rounds` interleaved rounds of `steps` steps each.

    A busy machine only ever adds time, so the fastest round is the closest to what a recipe's step costs on an idle
    one; interleaving gives every recipe the same chances of a quiet round. The real runs' own timings (which include
    whatever else the machine was doing) are reported next to it."""
    from scalegpt.train import Trainer

    trainers = {name: Trainer(config, run_dir / name, overwrite=True, echo=lambda *_: None)
                for name, config in configs.items()}
    best = {name: math.inf for name in trainers}
    try:
        for name, trainer in trainers.items():  # warm-up: allocations, optimizer state, first-call paths
            for _ in range(3):
                trainer.train_step()
        for _ in range(rounds):
            for name, trainer in trainers.items():
                start = time.perf_counter()
                for _ in range(steps):
                    trainer.train_step()
                best[name] = min(best[name], (time.perf_counter() - start) / steps * 1000)
    finally:
        for trainer in trainers.values():
            trainer.loader.close()
            if trainer.run_log is not None:
                trainer.run_log.close()
    return best


def steps_for_seconds(config, run_dir: Path, seconds: float, probe_steps: int) -> tuple[int, float]:
    """(max_steps that fill `seconds` of training, measured ms/step): a probe run's median step time."""
    import dataclasses

    from scalegpt.train import Trainer

    probe = dataclasses.replace(config, train=dataclasses.replace(config.train, max_steps=probe_steps + 3))
    trainer = Trainer(probe, run_dir, overwrite=True, echo=lambda *_: None)
    times = []
    try:
        for _ in range(probe_steps + 3):
            start = time.perf_counter()
            trainer.train_step()
            times.append(time.perf_counter() - start)
    finally:
        if trainer.run_log is not None:
            trainer.run_log.close()
    step_s = statistics.median(times[3:])
    return max(1, int(seconds / step_s)), step_s * 1000


def prepared(text: Path, tokenizer: str, cache: Path, encoding: str = "utf-8") -> Path:
    from scalegpt.prepare import prepare

    out = cache / f"{text.stem}-{tokenizer}-{text.stat().st_size}"
    if not (out / "meta.json").is_file():
        prepare([str(text)], out=str(out), tokenizer=tokenizer, encoding=encoding, progress=False, overwrite=True)
    return out


# ------------------------------------------------------------------------------------------------ reporting


def mean_std(values: list[float], fmt: str = "{:.4f}") -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "not reached" if values else "-"
    text = fmt.format(statistics.mean(finite))
    if len(finite) > 1:
        text += " ± " + fmt.format(statistics.stdev(finite))
    if len(finite) < len(values):
        text += f" ({len(values) - len(finite)}/{len(values)} not reached)"
    return text


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def report_shakespeare(runs: dict[str, list[Run]], target: float, costs: dict[str, float]) -> str:
    names = list(runs)
    ends = sorted({r.steps[-1] for rs in runs.values() for r in rs})
    milestones = sorted({s for s in (100, 250, 500, 1000) if s <= ends[-1]} | set(ends))
    end_s = min(r.train_s[-1] for rs in runs.values() for r in rs)  # every run has trained this long
    times = [end_s * f for f in (0.25, 0.5, 1.0)]
    out = [f"val loss at equal steps (whole val split; mean ± std over {len(runs[names[0]])} seeds)", ""]
    out.append(table(["recipe", "params", "precision", *[f"step {s}" for s in milestones], "ms/step"],
                     [[n, f"{runs[n][0].params:,}", runs[n][0].precision,
                       *[mean_std([r.at_step(s) for r in runs[n]]) if s <= runs[n][0].steps[-1] else "-"
                         for s in milestones],
                       mean_std([r.train_s[-1] / r.steps[-1] * 1000 for r in runs[n]], "{:.1f}")] for n in names]))
    out += ["", "val loss at equal training time (evaluation time excluded)", ""]
    out.append(table(["recipe", *[f"{t:.1f} s" for t in times], "steps run", "training s (whole run)"],
                     [[n, *[mean_std([r.at_time(t) for r in runs[n]]) for t in times],
                       str(runs[n][0].steps[-1]), mean_std([r.train_s[-1] for r in runs[n]], "{:.1f}")]
                      for n in names]))
    reach = {n: [r.time_to(target) for r in runs[n]] for n in names}
    out += ["", f"training time to reach val loss {target} (nanoGPT's published result)", ""]
    base = reach.get("nanoGPT", [])
    if base and not all(math.isfinite(v) for v in base):
        # a nanoGPT run that never gets there needs at least its whole run: the ratio is then an upper bound
        base = [v if math.isfinite(v) else r.train_s[-1] for v, r in zip(base, runs["nanoGPT"])]
        bound = "<= "
    else:
        bound = ""
    rows = []
    for n in names:
        ratio = "-"
        mine = [v for v in reach[n] if math.isfinite(v)]
        if base and len(mine) == len(reach[n]) and n != "nanoGPT":
            ratio = f"{bound}{statistics.mean(mine) / statistics.mean(base):.2f}x nanoGPT's time"
        steps = [_interp(r.val[::-1], r.steps[::-1], target) if math.isfinite(t) else math.nan
                 for r, t in zip(runs[n], reach[n])]
        cost = costs.get(n)
        idle = [st * cost / 1000 for st in steps] if cost else []
        idle_ratio = "-"
        if cost and "nanoGPT" in costs and n != "nanoGPT" and all(map(math.isfinite, idle)):
            base_steps = [_interp(r.val[::-1], r.steps[::-1], target) if math.isfinite(t) else r.steps[-1]
                          for r, t in zip(runs["nanoGPT"], reach["nanoGPT"])]
            idle_ratio = (f"{bound}{statistics.mean(idle) / (statistics.mean(base_steps) * costs['nanoGPT'] / 1000):.2f}x")
        rows.append([n, mean_std(reach[n], "{:.1f} s"), mean_std(steps, "{:.0f}"), ratio,
                     f"{cost:.1f}" if cost else "-", mean_std(idle, "{:.1f} s") if cost else "-", idle_ratio])
    out.append(table(["recipe", "training time to target", "at step", "ratio", "ms/step (best round)",
                      "steps x best ms/step", "ratio"], rows))
    if costs:
        out += ["", "ms/step (best round): the fastest of interleaved timing rounds of the recipes (--cost-rounds); "
                "steps x best ms/step estimates the time on an idle machine. '<=': nanoGPT's recipe never reached "
                "the target, so its whole run stands in for its time."]
    return "\n".join(out)


def report_dickens(runs: dict[str, list[Run]]) -> str:
    names = list(runs)
    equal_s = min(r.train_s[-1] for rs in runs.values() for r in rs)
    out = [f"dickens, GPT-2 BPE: val bits per byte (mean ± std over {len(runs[names[0]])} seeds)", ""]
    rows = [[n, f"{runs[n][0].params:,}", runs[n][0].precision, str(runs[n][0].steps[-1]),
             mean_std([r.train_s[-1] for r in runs[n]], "{:.1f}"), mean_std([r.bpb[-1] for r in runs[n]]),
             mean_std([r.at_time(equal_s, "bpb") for r in runs[n]])] for n in names]
    out.append(table(["recipe", "params", "precision", "steps", "training s", "val bpb at the end",
                      f"val bpb at {equal_s:.1f} s"], rows))
    for name in [n for n in names if n.startswith("GPT-2")] if "modern" in runs else []:
        gain = [g.at_time(equal_s, "bpb") - m.at_time(equal_s, "bpb") for g, m in zip(runs[name], runs["modern"])]
        out += ["", f"modern vs {name} at {equal_s:.1f} s of training: {mean_std(gain)} bpb lower (target >= 0.05)"]
    return "\n".join(out)


def plot(parts: dict[str, dict[str, list[Run]]], path: Path, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(parts), figsize=(6.5 * len(parts), 4.5), squeeze=False)
    for ax, (part, runs) in zip(axes[0], parts.items()):
        key = "bpb" if part == "dickens" else "val"
        for i, (name, rs) in enumerate(runs.items()):
            for j, r in enumerate(rs):
                ax.plot(r.train_s, getattr(r, key), color=f"C{i}", alpha=0.8, lw=1.2,
                        label=name if j == 0 else None)
        if part == "shakespeare":
            ax.axhline(target, color="gray", ls="--", lw=0.8, label=f"nanoGPT {target}")
            ax.set_ylim(top=min(3.0, ax.get_ylim()[1]))
        else:
            ax.set_ylim(top=min(4.0, ax.get_ylim()[1]))
        ax.set_xlabel("training wall time (s, evaluation excluded)")
        ax.set_ylabel("val bits per byte" if key == "bpb" else "val loss")
        ax.set_title(part)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> str:
    name, flags = platform.processor() or "?", ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        name = next((l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("model name")), name)
        flags = next((l for l in text.splitlines() if l.startswith("flags")), "")
    except OSError:
        pass
    bf16 = "avx512_bf16" in flags.split() or "amx_bf16" in flags.split()
    return (f"CPU: {name}, {os.cpu_count()} cores, AVX-512 BF16: {'yes' if bf16 else 'no'}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f}; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


# ------------------------------------------------------------------------------------------------ main


def parse_variant(text: str, base: dict) -> tuple[str, tuple[str, list]]:
    """'name:base:key=value,key=value' -> a recipe `base` with extra overrides."""
    try:
        name, parent, rest = (text.split(":", 2) + [""])[:3]
        preset, overrides = base[parent]
        extra = [tuple(kv.split("=", 1)) for kv in rest.split(",") if kv]
        assert all(len(kv) == 2 for kv in extra)
    except (ValueError, KeyError, AssertionError):
        raise SystemExit(f"--variant {text!r}: expected NAME:BASE:key=value,... with BASE one of {', '.join(base)}")
    return name, (preset, [*overrides, *extra])


def run_part(part: str, recipes: dict, data: Path, args, tmp: Path) -> tuple[dict[str, list[Run]], dict]:
    runs: dict[str, list[Run]] = {name: [] for name in recipes}
    extra = QUICK if args.quick else []
    steps_for = {}
    if part == "dickens":  # equal training time: each recipe's max_steps from a probe of its step time
        for name, (preset, overrides) in recipes.items():
            config = build_config(preset, [*overrides, *extra], data, 0)
            steps, ms = steps_for_seconds(config, tmp / "probe", args.dickens_seconds, 3 if args.quick else 20)
            steps_for[name] = max(steps, 4) if args.quick else steps  # a smoke run on a busy machine still learns
            print(f"  {name}: {ms:.1f} ms/step -> {steps} steps for {args.dickens_seconds:g} s", flush=True)
    costs = {}
    if part == "shakespeare" and args.cost_rounds:
        configs = {name: build_config(preset, [*overrides, *extra], data, 1337)
                   for name, (preset, overrides) in recipes.items()}
        costs = step_costs(configs, tmp / "cost", 3 if args.quick else 20, 2 if args.quick else args.cost_rounds)
        print("  ms/step, best of interleaved rounds: " + ", ".join(f"{n} {c:.1f}" for n, c in costs.items()),
              flush=True)
    for seed in range(args.seeds):
        for name, (preset, overrides) in recipes.items():
            more = [("train.max_steps", str(steps_for[name]))] if name in steps_for else []
            config = build_config(preset, [*overrides, *extra, *more], data, 1337 + args.first_seed + seed)
            if part == "shakespeare":  # the whole val split (111,540 characters), --eval-points times a run
                eval_every, val_tokens = max(1, config.train.max_steps // args.eval_points), None
            else:  # the first --dickens-val-tokens of the val split, 4 times a run (50k-token logits are costly)
                eval_every, val_tokens = max(1, config.train.max_steps // 4), args.dickens_val_tokens
            if args.quick:
                eval_every, val_tokens = 4, 2048
            run = train_and_time(config, tmp / f"{part}-{name}", eval_every, val_tokens, args.verbose)
            run.recipe = name
            runs[name].append(run)
            print(f"  {part} seed {args.first_seed + seed} {name}: val {run.val[-1]:.4f} (bpb {run.bpb[-1]:.4f}) after "
                  f"{run.steps[-1]} steps, {run.train_s[-1]:.1f} s training + {run.eval_s:.1f} s evaluating",
                  flush=True)
    return runs, costs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3, help="seeds per recipe (default 3)")
    p.add_argument("--quick", action="store_true", help="tiny models and a few steps: a smoke test of the script")
    p.add_argument("--only", choices=["shakespeare", "dickens"], action="append", help="run one part")
    p.add_argument("--out", default=None, help="where results.json and recipes.png go (default: a temp dir)")
    p.add_argument("--cache", default=None, help="prepared datasets are kept here (default: ~/.cache/scalegpt/bench)")
    p.add_argument("--shakespeare", default=str(SHARED / "tinyshakespeare.txt"), help="tinyshakespeare.txt")
    p.add_argument("--dickens", default=str(SHARED / "dickens" / "dickens.txt"), help="dickens.txt (cp437)")
    p.add_argument("--eval-points", type=int, default=20, help="shakespeare: evaluations per run (default 20)")
    p.add_argument("--dickens-seconds", type=float, default=120.0, help="training seconds per dickens run")
    p.add_argument("--dickens-val-tokens", type=int, default=32768, help="dickens: val tokens per evaluation")
    p.add_argument("--recipes", default=None, help="comma-separated subset of the shipped recipes ('' = none)")
    p.add_argument("--variant", action="append", default=[], help="NAME:BASE:key=value,...: an extra recipe")
    p.add_argument("--verbose", action="store_true", help="print each evaluation as it happens")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--cost-rounds", type=int, default=10,
                   help="shakespeare: interleaved timing rounds of 20 steps per recipe before training (0 = skip)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds are 1337 + first_seed + i (one process per seed)")
    p.add_argument("--combine", nargs="+", metavar="DIR", help="report the results.json of earlier --out DIRs together")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.dickens_seconds = min(args.dickens_seconds, 0.5)
    parts = args.only or ["shakespeare", "dickens"]
    cache = Path(args.cache or Path.home() / ".cache" / "scalegpt" / "bench")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_recipes_"))
    out.mkdir(parents=True, exist_ok=True)
    print(machine(), flush=True)

    results: dict[str, dict[str, list[Run]]] = {}
    costs: dict[str, dict[str, float]] = {}
    if args.combine:  # merge the runs of earlier invocations (e.g. one process per seed)
        for directory in args.combine:
            saved = json.loads((Path(directory) / "results.json").read_text())
            print(f"{directory}: {saved.get('machine', '?')}")
            for part, runs in saved["parts"].items():
                for name, rs in runs.items():
                    results.setdefault(part, {}).setdefault(name, []).extend(Run(**r) for r in rs)
            for part, by_recipe in saved.get("costs", {}).items():  # several measurements: the best of them
                for name, ms in by_recipe.items():
                    costs.setdefault(part, {})[name] = min(ms, costs.get(part, {}).get(name, math.inf))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for part in parts:
                shipped = SHAKESPEARE if part == "shakespeare" else DICKENS
                base = {n: r for n, r in shipped.items() if not args.recipes or n in args.recipes.split(",")}
                for text in args.variant:
                    name, recipe = parse_variant(text, shipped)
                    base[name] = recipe
                if part == "shakespeare":
                    data = prepared(Path(args.shakespeare), "char", cache)
                else:
                    data = prepared(Path(args.dickens), "gpt2", cache, encoding="cp437")
                print(f"{part}: {len(base)} recipes x {args.seeds} seeds on {data}", flush=True)
                results[part], costs[part] = run_part(part, base, data, args, Path(tmp))
        (out / "results.json").write_text(json.dumps({"machine": machine(), "costs": costs, "parts": {
            part: {n: [r.__dict__ for r in rs] for n, rs in runs.items()} for part, runs in results.items()}}))
    print()
    print(machine())
    for part, runs in results.items():
        print()
        print(report_shakespeare(runs, NANOGPT_VAL_LOSS, costs.get(part, {})) if part == "shakespeare"
              else report_dickens(runs))
    plot(results, out / "recipes.png", NANOGPT_VAL_LOSS)
    print(f"\nwrote {out / 'results.json'} and {out / 'recipes.png'}" if not args.combine else
          f"\nwrote {out / 'recipes.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
