"""Prove and measure scalegpt's CUDA paths on one GPU, in stages that each run as a subprocess with its own timeout.

    python scripts/gpu_check.py --out DIR             # a 1-GPU H100/H200 machine, torch preinstalled, no network
    python scripts/gpu_check.py --dry-run --out DIR   # CPU, tiny model, few steps (CI runs this)

Stages (docs/gpu_check.md has what each one checks and the targets):
    probe          torch/CUDA/GPU, the datasheet peak scalegpt.metrics.peak_flops uses, the model's FLOPs per token
    cuda_tests     pytest -m cuda tests/test_cuda.py
    data           `scalegpt prepare` on a generated synthetic text (gpt2 tokenizer)
    train_compile  `scalegpt train` GPT-2 124M, bf16, compile on: tokens/s, MFU, peak memory, loss finite and falling
    train_eager    the same with compile off (its checkpoint feeds sample and hellaswag)
    ddp_resume     torchrun --nproc_per_node 1, DDP: N steps straight vs N/2 + resume N/2, bit-exact losses and weights
    fsdp_resume    the same with FSDP2
    sample         KV-cache sampling tokens/s at batch 1 and 16; cached greedy == uncached greedy
    hellaswag      `scalegpt eval hellaswag` (batched) on the repo's fixture tasks

Everything goes to DIR/gpu_check.md and DIR/gpu_check.json; the exit code is 1 when any check failed.
The worker modes (`_cli`, `_dist`, `_probe`, `_sample`) are this file's own subprocesses, not a public interface.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HELLASWAG_FIXTURES = [ROOT / "tests/data/hellaswag_val_sample.jsonl", ROOT.parent / "shared/data/hellaswag_val_sample.jsonl",
                      ROOT / "shared/data/hellaswag_val_sample.jsonl"]
MFU_TARGET = 0.45  # GPT-2 124M, bf16, compile on, H100/H200 (docs/gpu_check.md)

# Per-mode settings. "full": GPT-2 124M on the GPU; "dry": a tiny model on the CPU, fast enough for CI.
PROFILES = {
    "full": dict(
        model=dict(n_layer=12, n_head=12, n_embd=768, block_size=1024), device="cuda", precision="bf16",
        seq_len=1024, micro_batch=32, accum=2, train_steps=60, log_interval=10, warmup=10, lr=6e-4,
        dist_micro_batch=8, dist_steps=6, corpus_words=1_500_000, sample_tokens=200, greedy_tokens=32,
        compile_stage="true",
        # seconds per subprocess (the whole run is also capped by --budget)
        limits=dict(probe=90, cuda_tests=180, data=90, train_compile=240, train_eager=150, dist_run=150,
                    sample=120, hellaswag=120),
    ),
    "dry": dict(
        model=dict(n_layer=2, n_head=2, n_embd=64, block_size=64), device="cpu", precision="fp32",
        seq_len=64, micro_batch=8, accum=1, train_steps=9, log_interval=3, warmup=2, lr=3e-3,
        dist_micro_batch=4, dist_steps=4, corpus_words=40_000, sample_tokens=8, greedy_tokens=8,
        compile_stage="false",  # inductor on a 2-core CPU takes ~45 s for even the tiny model
        limits=dict(probe=60, cuda_tests=90, data=60, train_compile=90, train_eager=90, dist_run=90,
                    sample=60, hellaswag=60),
    ),
}


# ------------------------------------------------------------------------------------------------------ helpers


DRY_RUN = False  # set by Check: CPU children then run single-threaded (tiny models gain nothing from threads)


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra)
    if DRY_RUN:
        env.setdefault("OMP_NUM_THREADS", "1")
    path = env.get("PYTHONPATH", "")
    if str(ROOT) not in path.split(os.pathsep):
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + path if path else "")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
              "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_USE_AGENT_STORE"):
        env.pop(k, None)
    return env


class Budget:
    """The whole run's time cap: a stage gets min(its own limit, what is left)."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


class StageFailed(Exception):
    pass


def run_proc(cmd: list, log: Path, timeout: float, env: dict | None = None) -> tuple[int, str, float]:
    """(exit code, output, seconds); output also goes to `log`. A timeout kills the whole process group."""
    cmd = [str(c) for c in cmd]
    if timeout < 5:
        raise StageFailed(f"out of time budget ({timeout:.0f} s left)")
    start = time.monotonic()
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                env=env or _env(), start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            import signal

            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the group this call started (torchrun and its workers)
            except ProcessLookupError:
                pass
            out, _ = proc.communicate()
            f.write(out or "")
            raise StageFailed(f"timed out after {timeout:.0f} s: {' '.join(cmd[:6])} ... (log: {log.name})")
        f.write(out)
        f.write(f"[exit {proc.returncode}, {time.monotonic() - start:.1f} s]\n\n")
    return proc.returncode, out, time.monotonic() - start


def check_proc(cmd: list, log: Path, timeout: float, env: dict | None = None) -> tuple[str, float]:
    rc, out, seconds = run_proc(cmd, log, timeout, env)
    if rc != 0:
        tail = " | ".join(line for line in out.strip().splitlines()[-3:])
        raise StageFailed(f"exit {rc}: {tail[-400:]} (log: {log.name})")
    return out, seconds


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise StageFailed(f"{path.name} missing or unreadable ({e})") from None


def read_metrics(run_dir: Path) -> dict[str, list[dict]]:
    """metrics.jsonl by kind; for a resumed run the last record of a step wins."""
    by_kind: dict[str, dict[int, dict]] = {}
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise StageFailed(f"{path} was not written")
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        by_kind.setdefault(rec["kind"], {})[rec["step"]] = rec
    return {k: [v[s] for s in sorted(v)] for k, v in by_kind.items()}


def scalegpt_cmd(*args) -> list:
    return [sys.executable, "-m", "scalegpt", *args]


def worker_cmd(mode: str, *args) -> list:
    return [sys.executable, str(Path(__file__).resolve()), mode, *args]


def torchrun_cmd(*args) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", *args]


def hellaswag_fixture(work: Path, dry_run: bool) -> tuple[Path, str]:
    for path in HELLASWAG_FIXTURES:
        if path.is_file():
            return path, str(path.relative_to(ROOT.parent) if ROOT.parent in path.parents else path)
    if not dry_run:
        raise StageFailed("no HellaSwag fixture (looked for " + ", ".join(str(p) for p in HELLASWAG_FIXTURES) + ")")
    path = work / "hellaswag_synthetic.jsonl"
    rows = [{"ind": 0, "activity_label": "Synthetic", "ctx": "A man is sitting on a roof. he", "label": 3,
             "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                         "is holding a rubik's cube.", "starts pulling up roofing on a roof."], "split": "val"},
            {"ind": 1, "activity_label": "Synthetic", "ctx": "A lady walks to a barbell. She", "label": 0,
             "endings": ["bends down and grabs the pole.", "swings and lands in her arms.",
                         "pulls a rope attached to the barbell.", "stands and lifts the weight over her head."],
             "split": "val"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, "synthetic (2 generated tasks; no fixture file found)"


def synthetic_corpus(path: Path, words: int, seed: int = 0) -> None:
    """Random text with structure to learn: 800 made-up words, each followed by one of 4 successors 90% of the time."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 7))) for _ in range(800)]
    succ = {w: rng.sample(vocab, 4) for w in vocab}
    out, w = [], vocab[0]
    for i in range(words):
        out.append(w)
        w = rng.choice(succ[w]) if rng.random() < 0.9 else rng.choice(vocab)
        if i % 24 == 23:
            out.append(".\n")
    path.write_text(" ".join(out), encoding="utf-8")


def config_toml(p: dict, micro_batch: int, accum: int, steps: int) -> str:
    m = p["model"]
    return f"""# written by scripts/gpu_check.py
[model]
n_layer = {m['n_layer']}
n_head = {m['n_head']}
n_embd = {m['n_embd']}
block_size = {m['block_size']}
dropout = 0.0
bias = true
vocab_size = 0

[optim]
lr = {p['lr']}
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0

[schedule]
kind = "cosine"
warmup_steps = {p['warmup']}

[train]
max_steps = {steps}
global_batch_tokens = {micro_batch * p['seq_len'] * accum}
micro_batch_size = {micro_batch}
seq_len = {p['seq_len']}
seed = 1337
device = "{p['device']}"
precision = "{p['precision']}"
compile = "false"
tf32 = true

[eval]
interval = 0
at_start = false
samples = 0

[log]
interval = {p['log_interval']}
plot = false
progress = "false"

[checkpoint]
interval = 0
keep_last = 0
at_end = true
"""


# ------------------------------------------------------------------------------------------------------ stages


class Check:
    def __init__(self, args):
        global DRY_RUN
        self.args = args
        self.dry = DRY_RUN = args.dry_run
        self.p = dict(PROFILES["dry" if self.dry else "full"])
        if args.steps:
            self.p["train_steps"] = args.steps
        if args.micro_batch:
            self.p["micro_batch"] = args.micro_batch
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work).resolve() if args.work else self.out / "work"
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        self.logs = self.out / "logs"
        self.logs.mkdir(exist_ok=True)
        self.budget = Budget(args.budget)
        self.stages: dict[str, dict] = {}
        self.info: dict = {}

    def limit(self, name: str) -> float:
        return max(0.0, min(self.p["limits"][name], self.budget.left()))

    def stage(self, name: str, fn, needs: tuple[str, ...] = ()):
        start = time.monotonic()
        rec = {"name": name, "status": "fail", "seconds": 0.0, "checks": {}, "figures": {}, "message": ""}
        self.stages[name] = rec
        missing = [n for n in needs if self.stages.get(n, {}).get("status") != "pass"]
        print(f"== {name}", flush=True)
        if missing:
            rec["message"] = f"not run: needs {', '.join(missing)}"
        else:
            try:
                note = fn(rec)
                failed = [k for k, v in rec["checks"].items() if v is False]
                rec["status"] = "skip" if note == "skip" else ("fail" if failed else "pass")
                if failed:
                    rec["message"] = (rec["message"] + "; " if rec["message"] else "") + "failed: " + ", ".join(failed)
            except StageFailed as e:
                rec["message"] = str(e)
            except Exception as e:  # a bug here must still leave a report
                rec["message"] = f"{type(e).__name__}: {e}"
        rec["seconds"] = round(time.monotonic() - start, 1)
        print(f"   {rec['status']} ({rec['seconds']} s) {rec['message']}", flush=True)

    def parallel(self, stages, needs: tuple[str, ...] = ()):
        import threading

        for name, _ in stages:  # table order is the order given, whichever finishes first
            self.stages[name] = {"name": name, "status": "fail", "seconds": 0.0, "checks": {}, "figures": {},
                                 "message": "did not finish"}
        threads = [threading.Thread(target=self.stage, args=(name, fn, needs)) for name, fn in stages]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    # ---------------------------------------------------------------------------------------------- probe

    def probe(self, rec):
        path = self.work / "probe.json"
        m = self.p["model"]
        check_proc(worker_cmd("_probe", path, "--precision", self.p["precision"], "--device", self.p["device"],
                              "--model", json.dumps(m), "--seq-len", self.p["seq_len"]),
                   self.logs / "probe.log", self.limit("probe"))
        info = read_json(path)
        self.info = info
        rec["figures"] = info
        rec["checks"]["cuda_available"] = info["cuda_available"] or self.dry
        if not info["cuda_available"] and not self.dry:
            rec["message"] = "CUDA is not available (use --dry-run on a CPU machine)"

    def cuda_tests(self, rec):
        xml = self.work / "pytest_cuda.xml"
        rc, out, _ = run_proc([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                               f"--junitxml={xml}", "tests/test_cuda.py"], self.logs / "cuda_tests.log",
                              self.limit("cuda_tests"))
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        try:
            import xml.etree.ElementTree as ET

            root = ET.parse(xml).getroot()
            suite = root if root.tag == "testsuite" else root.find("testsuite")
            counts = {k: int(suite.get(k, 0)) for k in counts}
        except (OSError, ET.ParseError, AttributeError):
            raise StageFailed(f"pytest exit {rc} and no junit report (log: cuda_tests.log)")
        passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        rec["figures"] = {**counts, "passed": passed}
        rec["checks"]["pytest_exit_0"] = rc == 0
        rec["checks"]["no_failures"] = counts["failures"] + counts["errors"] == 0
        if self.dry and not self.info.get("cuda_available"):
            rec["message"] = f"{counts['skipped']} skipped on CPU (as intended)"
            return "skip" if rc == 0 else None
        rec["checks"]["all_ran"] = counts["skipped"] == 0 and passed > 0
        return None

    def data(self, rec):
        corpus = self.work / "synthetic.txt"
        synthetic_corpus(corpus, self.p["corpus_words"])
        self.data_dir = self.work / "data"
        check_proc(scalegpt_cmd("prepare", "--input", corpus, "--tokenizer", "gpt2", "--out", self.data_dir,
                                "--quiet", "--val-fraction", "0.05"), self.logs / "data.log", self.limit("data"))
        meta = read_json(self.data_dir / "meta.json")
        rec["figures"] = {"train_tokens": meta["splits"]["train"]["num_tokens"], "vocab_size": meta["vocab_size"]}
        rec["checks"]["has_tokens"] = meta["splits"]["train"]["num_tokens"] > 10 * self.p["seq_len"]

    def _train(self, rec, name: str, compile_: str, save: bool):
        p = self.p
        config = self.work / f"{name}.toml"
        config.write_text(config_toml(p, p["micro_batch"], p["accum"], p["train_steps"]))
        run_dir = self.work / name
        mem = self.work / f"{name}.json"
        out, seconds = check_proc(worker_cmd("_cli", mem, "--", "train", "--config", config, "--data.dir",
                                             self.data_dir, "--out", run_dir, "--train.compile", compile_,
                                             "--checkpoint.at_end", "true" if save else "false"),
                                  self.logs / f"{name}.log", self.limit(name))
        worker = read_json(mem)
        metrics = read_metrics(run_dir)
        losses = [r["loss"] for r in metrics.get("train", [])]
        speeds = metrics.get("speed", [])
        steady = speeds[1:] or speeds  # the first window holds compilation and warm-up
        tps = statistics.median(r["tokens_per_s"] for r in steady) if steady else float("nan")
        fpt, peak = self.info.get("flops_per_token"), self.info.get("peak_flops")
        mfu = tps * fpt / peak if fpt and peak else float("nan")
        finite = all(isinstance(x, float) and math.isfinite(x) for x in losses)
        first, last = (losses[0], statistics.mean(losses[-5:])) if losses else (float("nan"), float("nan"))
        rec["figures"] = {
            "compile": "on" if compile_ == "true" else "off", "steps": len(losses),
            "tokens_per_step": p["micro_batch"] * p["seq_len"] * p["accum"], "tokens_per_s": round(tps, 1),
            "mfu": round(mfu, 4), "mfu_logged": round(statistics.median(r["mfu"] for r in steady), 4) if steady else None,
            "peak_mem_gib": round(worker["max_memory_allocated"] / 2**30, 2) if worker.get("max_memory_allocated")
            else None, "loss_first": round(first, 4), "loss_last5": round(last, 4), "wall_s": round(seconds, 1),
            "precision": p["precision"],
        }
        rec["checks"]["steps_logged"] = len(losses) == p["train_steps"]
        rec["checks"]["loss_finite"] = finite and bool(losses)
        rec["checks"]["loss_falling"] = finite and bool(losses) and last < first - 0.5
        rec["checks"]["speed_logged"] = bool(steady)
        if "torch.compile: on" not in out and compile_ == "true":
            rec["checks"]["compile_on"] = False
        if not self.dry and compile_ == "true":
            rec["figures"]["mfu_target"] = MFU_TARGET
            rec["checks"]["mfu_target"] = mfu >= MFU_TARGET
        if save:
            self.checkpoint_run = run_dir

    def train_compile(self, rec):
        self._train(rec, "train_compile", self.p["compile_stage"], save=False)
        if self.p["compile_stage"] != "true":
            rec["message"] = "dry-run: compile off (CPU inductor is too slow for CI); the GPU run compiles"

    def train_eager(self, rec):
        self._train(rec, "train_eager", "false", save=True)

    def dist_resume(self, rec, strategy: str):
        p = self.p
        n = p["dist_steps"]
        half = n // 2
        config = self.work / f"{strategy}.toml"
        config.write_text(config_toml(p, p["dist_micro_batch"], 1, n))
        straight, resumed = self.work / f"{strategy}_straight", self.work / f"{strategy}_resumed"
        # cuBLAS needs this workspace setting to be deterministic (torch.use_deterministic_algorithms in the worker).
        env = _env(CUBLAS_WORKSPACE_CONFIG=":4096:8")
        common = ["--", "--config", config, "--data.dir", self.data_dir, "--checkpoint.interval", half]
        log = self.logs / f"{strategy}_resume.log"
        res_a = self.work / f"{strategy}_straight.json"
        check_proc(torchrun_cmd(Path(__file__).resolve(), "_dist", res_a, "--strategy", strategy, "--deterministic",
                                *common, "--out", straight), log, self.limit("dist_run"), env)
        # The resumed run starts from a copy of the straight run as it stood at step N/2 (logs and that checkpoint).
        resumed.mkdir()
        for f in ("config.toml", "log.txt", "metrics.jsonl"):
            shutil.copy2(straight / f, resumed / f)
        src = straight / "checkpoints" / f"step_{half:06d}"
        if not src.is_dir():
            raise StageFailed(f"the straight run wrote no checkpoint at step {half}")
        shutil.copytree(src, resumed / "checkpoints" / src.name, copy_function=_link_or_copy)
        res_b = self.work / f"{strategy}_resumed.json"
        out, _ = check_proc(torchrun_cmd(Path(__file__).resolve(), "_dist", res_b, "--strategy", strategy,
                                         "--deterministic", *common, "--out", resumed, "--resume"),
                            log, self.limit("dist_run"), env)
        a, b = read_json(res_a), read_json(res_b)
        la = {r["step"]: r["loss"] for r in read_metrics(straight).get("train", [])}
        lb = {r["step"]: r["loss"] for r in read_metrics(resumed).get("train", [])}
        steps = list(range(half + 1, n + 1))
        mismatched = [s for s in steps if la.get(s) != lb.get(s)]
        weights = compare_weights(straight / "checkpoints" / f"step_{n:06d}", resumed / "checkpoints" / f"step_{n:06d}")
        rec["figures"] = {"strategy": a.get("kind"), "world_size": a.get("world_size"), "steps": n,
                          "resumed_at": half, "deterministic": a.get("deterministic"),
                          "first_loss_mismatch": mismatched[0] if mismatched else None,
                          "weights_max_abs_diff": weights["max_abs_diff"], "weights_equal": weights["equal"],
                          "final_loss": la.get(n)}
        rec["checks"][f"{strategy}_used"] = a.get("kind") == strategy and b.get("kind") == strategy
        rec["checks"]["resumed_at_half"] = f"at step {half}" in out
        rec["checks"]["losses_bit_exact"] = not mismatched and all(s in la for s in steps)
        rec["checks"]["weights_bit_exact"] = weights["equal"]
        if strategy == "fsdp":
            rec["checks"]["dcp_written"] = (src / "dcp").is_dir()

    def sample(self, rec):
        path = self.work / "sample.json"
        check_proc(worker_cmd("_sample", path, "--checkpoint", self.checkpoint_run, "--device", self.p["device"],
                              "--new-tokens", self.p["sample_tokens"], "--greedy-tokens", self.p["greedy_tokens"],
                              "--batches", "1,16"), self.logs / "sample.log", self.limit("sample"))
        r = read_json(path)
        rec["figures"] = r
        rec["checks"]["greedy_cache_equals_no_cache"] = r["greedy_equal"]
        rec["checks"]["tokens_produced"] = all(v > 0 for v in r["tokens_per_s"].values())

    def hellaswag(self, rec):
        fixture, label = hellaswag_fixture(self.work, self.dry)
        expected = sum(1 for line in fixture.read_text().splitlines() if line.strip())
        out, seconds = check_proc(scalegpt_cmd("eval", "hellaswag", "--checkpoint", self.checkpoint_run, "--file",
                                               fixture, "--batch-size", 16, "--device", self.p["device"],
                                               "--no-progress"), self.logs / "hellaswag.log", self.limit("hellaswag"))
        result = None
        for line in reversed(out.splitlines()):
            if line.startswith("{"):
                result = json.loads(line)
                break
        if result is None:
            raise StageFailed("no JSON result line (log: hellaswag.log)")
        rec["figures"] = {**result, "fixture": label, "wall_s": round(seconds, 1)}
        rec["checks"]["all_examples_scored"] = result.get("examples") == expected
        rec["checks"]["acc_in_range"] = 0.0 <= result.get("acc_norm", -1) <= 1.0

    # ---------------------------------------------------------------------------------------------- run

    def run(self) -> int:
        self.stage("probe", self.probe)
        self.stage("cuda_tests", self.cuda_tests, needs=("probe",))
        self.stage("data", self.data, needs=("probe",))
        self.stage("train_compile", self.train_compile, needs=("data",))
        self.stage("train_eager", self.train_eager, needs=("data",))
        # DDP and FSDP2 side by side (two 1-rank jobs; nothing in them is timed): the slowest part, halved.
        self.parallel([("ddp_resume", lambda rec: self.dist_resume(rec, "ddp")),
                       ("fsdp_resume", lambda rec: self.dist_resume(rec, "fsdp"))], needs=("data",))
        self.stage("sample", self.sample, needs=("train_eager",))
        self.stage("hellaswag", self.hellaswag, needs=("train_eager",))
        failed = [n for n, s in self.stages.items() if s["status"] == "fail"]
        report = {"mode": "dry-run" if self.dry else "gpu", "ok": not failed, "failed": failed,
                  "budget_s": self.args.budget, "total_s": round(sum(s["seconds"] for s in self.stages.values()), 1),
                  "env": self.info, "stages": self.stages,
                  "targets": {"mfu_124m_bf16_compile": MFU_TARGET, "resume": "bit-exact (DDP and FSDP2)"}}
        (self.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        md = markdown(report)
        (self.out / "gpu_check.md").write_text(md)
        print()
        print(md)
        if not self.args.keep_work:
            shutil.rmtree(self.work, ignore_errors=True)
        if failed:
            print("FAILED: " + "; ".join(f"{n} ({self.stages[n]['message']})" for n in failed), file=sys.stderr)
            return 1
        print(f"all checks passed ({report['total_s']} s); {self.out / 'gpu_check.json'}")
        return 0


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)  # the resumed run only reads the checkpoint it starts from
    except OSError:
        shutil.copy2(src, dst)


def compare_weights(a: Path, b: Path) -> dict:
    from safetensors.torch import load_file

    try:
        wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    except Exception as e:
        raise StageFailed(f"cannot read final weights ({e})") from None
    if wa.keys() != wb.keys():
        return {"equal": False, "max_abs_diff": None}
    diff = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    return {"equal": all(wa[k].dtype == wb[k].dtype and bool((wa[k] == wb[k]).all()) for k in wa), "max_abs_diff": diff}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def summary(name: str, s: dict) -> str:
    f = s["figures"]
    if name == "probe" and f:
        peak = f.get("peak_flops")
        return (f"torch {f.get('torch')}, {f.get('device_name')}, peak {_fmt(peak / 1e12 if peak else None)} TFLOP/s "
                f"({f.get('peak_source')}), {_fmt(f.get('params'))} params, {_fmt(f.get('flops_per_token'))} FLOP/token")
    if name == "cuda_tests" and f:
        return f"{f['passed']} passed, {f['failures']} failed, {f['errors']} errors, {f['skipped']} skipped"
    if name == "data" and f:
        return f"{f['train_tokens']:,} synthetic gpt2 tokens"
    if name.startswith("train_") and f:
        mem = f"{f['peak_mem_gib']} GiB" if f.get("peak_mem_gib") is not None else "-"
        return (f"{f['precision']}, compile {f['compile']}: {_fmt(f['tokens_per_s'])} tok/s, MFU {f['mfu']:.1%}"
                f"{' (target ' + format(f['mfu_target'], '.0%') + ')' if 'mfu_target' in f else ''}, "
                f"peak mem {mem}, loss {f['loss_first']:.3f} -> {f['loss_last5']:.3f} over {f['steps']} steps")
    if name.endswith("_resume") and f:
        exact = "bit-exact" if f["weights_equal"] and f["first_loss_mismatch"] is None else (
            f"NOT exact (first loss mismatch at step {f['first_loss_mismatch']}, "
            f"max weight diff {_fmt(f['weights_max_abs_diff'])})")
        return (f"{f['strategy']} x{f['world_size']}: {f['steps']} steps vs {f['resumed_at']} + resume "
                f"{f['steps'] - f['resumed_at']}: {exact}")
    if name == "sample" and f:
        tps = ", ".join(f"batch {b}: {_fmt(v)} tok/s" for b, v in f["tokens_per_s"].items())
        return f"KV cache, {f['new_tokens']} new tokens: {tps}; greedy cache == no cache: {f['greedy_equal']}"
    if name == "hellaswag" and f:
        return (f"{f['examples']} examples ({f['fixture']}): acc_norm {f['acc_norm']:.3f}, acc {f['acc']:.3f}, "
                f"{f['wall_s']} s")
    return ""


def markdown(report: dict) -> str:
    env = report["env"] or {}
    lines = [f"# scalegpt GPU check ({report['mode']}): {'PASS' if report['ok'] else 'FAIL'}", "",
             f"{env.get('device_name', '?')}, torch {env.get('torch', '?')}, CUDA {env.get('cuda_version', '-')}; "
             f"{report['total_s']} s of a {report['budget_s']} s budget", "",
             "| stage | status | seconds | result | notes |", "| --- | --- | ---: | --- | --- |"]
    for name, s in report["stages"].items():
        note = s["message"].replace("|", "/").replace("\n", " ")
        lines.append(f"| {name} | {s['status'].upper()} | {s['seconds']} | {summary(name, s).replace('|', '/')} | "
                     f"{note} |")
    if report["failed"]:
        lines += ["", "Failed: " + ", ".join(report["failed"])]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------ workers


def worker_probe(args) -> int:
    import torch

    from scalegpt.metrics import peak_flops
    from scalegpt.model import GPT, GPTConfig

    info = {"torch": torch.__version__, "python": sys.version.split()[0], "cuda_available": torch.cuda.is_available(),
            "cuda_version": torch.version.cuda, "device_name": "cpu"}
    device = torch.device(args.device if args.device != "cuda" or torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(0)
        info["device_count"] = torch.cuda.device_count()
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    peak, source = peak_flops(device, args.precision, True)
    with torch.device("meta"):
        model = GPT(GPTConfig(vocab_size=50257, **json.loads(args.model)))
    info.update(peak_flops=peak, peak_source=source, flops_per_token=model.flops_per_token(args.seq_len),
                params=model.num_params())
    Path(args.result).write_text(json.dumps(info))
    return 0


def worker_cli(args, argv: list[str]) -> int:
    """`scalegpt ARGV` in this process, then its peak CUDA memory."""
    import torch

    from scalegpt.cli import main

    start = time.perf_counter()
    rc = main(argv)
    rec = {"rc": rc, "seconds": time.perf_counter() - start}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rec["max_memory_allocated"] = torch.cuda.max_memory_allocated()
        rec["max_memory_reserved"] = torch.cuda.max_memory_reserved()
    Path(args.result).write_text(json.dumps(rec))
    return rc


def worker_dist(args, argv: list[str]) -> int:
    """Under torchrun: train with DistributedStrategy forced to args.strategy, even at one rank.

    scalegpt itself trains single-process when WORLD_SIZE is 1 (no process group, choose_strategy -> 'single'),
    so on a 1-GPU machine the DDP/FSDP2 paths are reached only by building the strategy here."""
    import torch
    import torch.distributed as dist

    from scalegpt.cli import leave
    from scalegpt.config import load_config, parse_override_args
    from scalegpt.distributed import parallelize
    from scalegpt.strategy import DistributedStrategy
    from scalegpt.train import Trainer, exit_code

    p = argparse.ArgumentParser(prog="gpu_check.py _dist")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true")
    known, rest = p.parse_known_args(argv)
    if args.deterministic:
        torch.use_deterministic_algorithms(True)  # e.g. flash attention's backward takes its deterministic path
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world == 1 and not dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo")

    class ForcedStrategy(DistributedStrategy):
        def __init__(self, config):
            super().__init__(config)
            if cuda:
                self.info.device = torch.device("cuda", self.local_rank)

        def wrap_model(self, model, precision):
            self.kind = args.strategy
            print(f"parallelism: {self.kind} over {self.world_size} rank(s) (forced by gpu_check)", flush=True)
            return parallelize(model, self.config, self.info, precision, self.kind)

    config = load_config(known.config, parse_override_args(rest))
    strategy = ForcedStrategy(config.dist)
    trainer = Trainer(config, known.out, resume=known.resume, strategy=strategy)
    result = trainer.fit()
    rc = exit_code(result)
    if strategy.is_main:
        Path(args.result).write_text(json.dumps({"rc": rc, "kind": strategy.kind, "world_size": strategy.world_size,
                                                 "step": result.step, "deterministic": bool(args.deterministic)}))
    strategy.teardown()
    if dist.is_initialized():
        dist.destroy_process_group()
    leave(rc)
    return rc


def worker_sample(args) -> int:
    import torch

    from scalegpt.checkpoint import load_model_dir, resolve_checkpoint
    from scalegpt.generate import generate_tokens

    device = torch.device(args.device)
    model, _ = load_model_dir(resolve_checkpoint(args.checkpoint), device=args.device)
    model.eval()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(batch: int, new: int, **kw) -> tuple[float, torch.Tensor]:
        prompt = torch.randint(0, vocab, (batch, 16), generator=g).to(device)
        gen = torch.Generator(device=device).manual_seed(1)
        sync()
        start = time.perf_counter()
        toks = [t for t in generate_tokens(model, prompt, new, generator=gen, **kw)]
        sync()
        return time.perf_counter() - start, torch.stack(toks, 1)

    timed(1, 8, temperature=1.0, top_k=50)  # warm-up (kernels, allocator)
    tps = {}
    for b in [int(x) for x in args.batches.split(",")]:
        seconds, toks = timed(b, args.new_tokens, temperature=1.0, top_k=50)
        tps[str(b)] = round(b * args.new_tokens / seconds, 1)
    prompt = torch.randint(0, vocab, (2, 8), generator=g).to(device)
    cached = torch.stack(list(generate_tokens(model, prompt, args.greedy_tokens, temperature=0)), 1)
    plain = torch.stack(list(generate_tokens(model, prompt, args.greedy_tokens, temperature=0, use_cache=False)), 1)
    rec = {"tokens_per_s": tps, "new_tokens": args.new_tokens, "greedy_equal": bool(torch.equal(cached, plain)),
           "param_dtype": str(next(model.parameters()).dtype).replace("torch.", "")}
    Path(args.result).write_text(json.dumps(rec))
    return 0


# ------------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("_"):
        mode, rest = argv[0], argv[1:]
        passthrough = []
        if "--" in rest:
            i = rest.index("--")
            rest, passthrough = rest[:i], rest[i + 1:]
        w = argparse.ArgumentParser(prog=f"gpu_check.py {mode}")
        w.add_argument("result")
        if mode == "_probe":
            w.add_argument("--precision", default="bf16")
            w.add_argument("--device", default="cuda")
            w.add_argument("--model", required=True)
            w.add_argument("--seq-len", type=int, default=1024)
            return worker_probe(w.parse_args(rest))
        if mode == "_cli":
            return worker_cli(w.parse_args(rest), passthrough)
        if mode == "_dist":
            w.add_argument("--strategy", choices=["ddp", "fsdp"], required=True)
            w.add_argument("--deterministic", action="store_true")
            return worker_dist(w.parse_args(rest), passthrough)
        if mode == "_sample":
            w.add_argument("--checkpoint", required=True)
            w.add_argument("--device", default="cuda")
            w.add_argument("--new-tokens", type=int, default=200)
            w.add_argument("--greedy-tokens", type=int, default=32)
            w.add_argument("--batches", default="1,16")
            return worker_sample(w.parse_args(rest))
        print(f"unknown worker mode {mode}", file=sys.stderr)
        return 2

    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu_check_out", help="where gpu_check.md, gpu_check.json and logs/ go")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny model, few steps: checks the script itself")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole run; each stage gets min(its limit, what is left) (default 470; dry "
                        "run 300)")
    p.add_argument("--steps", type=int, default=0, help="training steps of the 124M runs (default 60)")
    p.add_argument("--micro-batch", type=int, default=0, help="sequences per micro-step of the 124M runs (default 32)")
    p.add_argument("--work", default=None, help="scratch directory (default OUT/work; deleted unless --keep-work)")
    p.add_argument("--keep-work", action="store_true", help="keep the datasets, runs and checkpoints")
    args = p.parse_args(argv)
    if args.budget is None:
        args.budget = 300.0 if args.dry_run else 470.0
    return Check(args).run()


if __name__ == "__main__":
    sys.exit(main())
