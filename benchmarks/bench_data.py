"""Data pipeline benchmark: prepare throughput, loader cost per batch, loader memory vs dataset size.

    python benchmarks/bench_data.py            # everything (writes and deletes ~4 GB of synthetic shards)
    python benchmarks/bench_data.py --quick    # smaller synthetic shards (0.5 GB)

1. `prepare` with gpt2 on shared/data/dickens/dickens.txt (cp437, 10 MB) against raw tiktoken
   `encode_ordinary_batch` on the same pieces of text with the same number of threads, in one run (best of 3 each,
   interleaved). prepare's time includes everything: reading and decoding the file twice (one pass counts the
   characters for the 90/10 split), tokenizing, writing and checksumming the shards, meta.json. Target >= 90%.
2. Loader time per batch next to a training step of the quickstart CPU model (4 layers, 128 wide, 16 x 128 tokens,
   AdamW): the raw cost of building a batch, and the time `next_batch` actually blocks the training loop with the
   background prefetch on. Target <= 1% of a step.
3. Resident memory of a process reading 2,000 shuffled (8 x 1024) batches from small and from large synthetic
   datasets (one fresh process each): it must not grow with the number or size of the shards.
4. Executors (`prepare --executor local|ray`, needs scalegpt[scale]): a JSON-lines corpus made of Tiny Shakespeare's
   paragraphs (8 files; x1 and x4 in size), 4 tasks on 2 workers, gpt2. Per worker: the tokens/s of each task as its
   log line reports it (tokenize + shard writing + hashing, without executor start-up), mean over tasks; the wall
   time includes the executor (Ray: starting a local cluster). Peak RSS: the largest task process's, from the task
   logs; it must stay flat when the corpus grows. `--skip executors` leaves this out.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def table(title: str, header: list[str], rows: list[list]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(x).rjust(w) for x, w in zip(r, widths)) + " |")


# ------------------------------------------------------------------------------------------------------ prepare


def bench_prepare(tmp: Path, repeats: int = 3) -> None:
    from scalegpt.prepare import prepare
    from scalegpt.sources import Source, discover
    from scalegpt.tokenizer import gpt2_encoding

    src = DATA / "dickens" / "dickens.txt"
    enc = gpt2_encoding()  # loaded once, outside every timing
    pieces = [p.text for p in Source(discover([src]), encoding="cp437").pieces()]
    rows = []
    for workers in sorted({1, min(2, os.cpu_count() or 1), os.cpu_count() or 1}):
        raw_best = prep_best = float("inf")
        n_raw = n_prep = 0
        for _ in range(repeats):
            t = time.perf_counter()
            n_raw = sum(map(len, enc.encode_ordinary_batch(pieces, num_threads=workers)))
            raw_best = min(raw_best, time.perf_counter() - t)
            out = tmp / f"prep{workers}"
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            meta = prepare([src], out, "gpt2", encoding="cp437", workers=workers, progress=False)
            prep_best = min(prep_best, time.perf_counter() - t)
            s = meta["splits"]
            n_prep = s["train"]["num_tokens"] + s["val"]["num_tokens"]
        rows.append([workers, f"{n_raw / raw_best:,.0f}", f"{n_prep / prep_best:,.0f}",
                     f"{100 * (n_prep / prep_best) / (n_raw / raw_best):.0f}%"])
    table(f"prepare, gpt2, dickens.txt ({src.stat().st_size:,} bytes, {n_raw:,} tokens), best of {repeats}",
          ["workers", "raw tiktoken tok/s", "scalegpt prepare tok/s", "prepare / raw"], rows)


# ------------------------------------------------------------------------------------------------------- loader


def bench_loader_vs_step(tmp: Path, steps: int = 30) -> None:
    import torch

    from scalegpt.data import DataLoader, open_dataset
    from scalegpt.model import GPT
    from scalegpt.prepare import prepare

    torch.manual_seed(0)
    out = tmp / "shk"
    prepare([DATA / "tinyshakespeare.txt"], out, "char", shard_tokens=100_000, progress=False)
    ds = open_dataset(out)
    B, T = 16, 128
    raw = DataLoader(ds, T, B, B, prefetch=False)
    for _ in range(20):
        raw.next_batch()
    n = 2000
    t = time.perf_counter()
    for _ in range(n):
        raw.next_batch()
    raw_ms = (time.perf_counter() - t) / n * 1e3

    model = GPT.from_preset("micro", block_size=T, vocab_size=ds.vocab_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = DataLoader(ds, T, B, B)
    waits, step_times = [], []
    for i in range(steps + 3):
        t0 = time.perf_counter()
        x, y = loader.next_batch()
        t1 = time.perf_counter()
        loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        if i >= 3:  # warm-up
            waits.append(t1 - t0)
            step_times.append(t2 - t0)
    step_ms = float(np.median(step_times)) * 1e3
    wait_ms = float(np.median(waits)) * 1e3
    loader.close()
    table(f"loader vs training step (quickstart model, {B} x {T} tokens, CPU, median of {steps} steps)",
          ["measure", "ms", "% of step"],
          [["training step (fwd+bwd+AdamW, incl. next_batch)", f"{step_ms:.2f}", "100%"],
           ["next_batch, blocking time in the loop (prefetch on)", f"{wait_ms:.3f}", f"{100 * wait_ms / step_ms:.2f}%"],
           ["next_batch, full cost without prefetch", f"{raw_ms:.3f}", f"{100 * raw_ms / step_ms:.2f}%"]])


def _write_synthetic(root: Path, shards: int, tokens: int) -> None:
    """uint16 shards in scalegpt's format, filled with a cheap pattern (content does not matter here)."""
    from scalegpt.prepare import file_sha256

    root.mkdir(parents=True)
    block = (np.arange(1 << 22, dtype=np.int64) * 7919 % 50257).astype(np.uint16)
    meta_shards = []
    for i in range(shards):
        name = f"train_{i:06d}.npy"
        arr = np.lib.format.open_memmap(root / name, mode="w+", dtype=np.uint16, shape=(tokens,))
        for start in range(0, tokens, len(block)):
            n = min(len(block), tokens - start)
            arr[start:start + n] = block[:n]
        arr.flush()
        del arr
        meta_shards.append({"file": name, "num_tokens": tokens, "sha256": file_sha256(root / name)})
    meta = {"format": "scalegpt-tokens", "version": 1, "dtype": "uint16", "vocab_size": 50257, "eot_id": 50256,
            "tokenizer": {"kind": "gpt2", "vocab_size": 50257, "eot_id": 50256},
            "splits": {"train": {"num_tokens": shards * tokens, "shards": meta_shards}}}
    (root / "meta.json").write_text(json.dumps(meta))


def _rss_child(data_dir: str) -> None:
    from scalegpt.data import DataLoader, open_dataset

    base = rss_mb()
    t = time.perf_counter()
    ds = open_dataset(data_dir)
    open_ms = (time.perf_counter() - t) * 1e3
    loader = DataLoader(ds, 1024, 8, 8, seed=0)
    t = time.perf_counter()
    for _ in range(2000):
        loader.next_batch()
    per_batch = (time.perf_counter() - t) / 2000 * 1e3
    loader.close()
    print(json.dumps({"base": base, "after": rss_mb(), "open_ms": open_ms, "batch_ms": per_batch,
                      "tokens": ds.num_tokens, "shards": len(ds.shard_files)}))


def bench_rss(tmp: Path, quick: bool) -> None:
    configs = [(2, 16_000_000), (8, 32_000_000)] if quick else [(2, 16_000_000), (64, 16_000_000), (16, 128_000_000)]
    rows = []
    for shards, tokens in configs:
        root = tmp / f"syn_{shards}x{tokens}"
        t = time.perf_counter()
        _write_synthetic(root, shards, tokens)
        write_s = time.perf_counter() - t
        out = subprocess.run([sys.executable, __file__, "--rss-child", str(root)], capture_output=True, text=True,
                             check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append([shards, f"{tokens:,}", f"{shards * tokens * 2 / 1e9:.2f}", f"{r['base']:.0f}",
                     f"{r['after']:.0f}", f"{r['after'] - r['base']:+.0f}", f"{r['open_ms']:.1f}",
                     f"{r['batch_ms']:.3f}"])
        shutil.rmtree(root)
        print(f"  (wrote {shards * tokens * 2 / 1e9:.2f} GB of shards in {write_s:.1f} s, measured, deleted)",
              file=sys.stderr)
    table("loader resident memory, 2,000 shuffled batches of 8 x 1024 tokens (fresh process each)",
          ["shards", "tokens/shard", "GB on disk", "RSS before MB", "RSS after MB", "growth MB", "open_dataset ms",
           "ms/batch"], rows)


# ---------------------------------------------------------------------------------------------------- executors


def _executor_corpus(root: Path, scale: int) -> int:
    """8 JSON-lines files of Tiny Shakespeare's paragraphs, repeated `scale` times; returns the bytes written."""
    paragraphs = [p for p in (ROOT / "tests" / "data" / "tinyshakespeare.txt").read_text().split("\n\n") if p]
    root.mkdir(parents=True)
    for i in range(8):
        with open(root / f"part{i}.jsonl", "w") as f:
            for _ in range(scale):
                for p in paragraphs[i::8]:
                    f.write(json.dumps({"text": p}) + "\n")
    return sum(f.stat().st_size for f in root.iterdir())


def bench_executors(tmp: Path, quick: bool) -> None:
    import re

    rows = []
    for scale in ((1, 2) if quick else (1, 4)):
        corpus = tmp / f"corpus{scale}"
        size = _executor_corpus(corpus, scale)
        for executor in ("local", "ray"):
            out = tmp / f"ds_{executor}_{scale}"
            cmd = [sys.executable, "-m", "scalegpt", "prepare", "--input", str(corpus), "--out", str(out),
                   "--executor", executor, "--tasks", "4", "--workers", "2", "--shard-tokens", "1000000", "--quiet"]
            t = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            wall = time.perf_counter() - t
            logs = "".join(p.read_text() for p in (out / ".prepare-logs" / "logs").glob("task_*.log"))
            per_task = [float(x.replace(",", "")) for x in re.findall(r"s, ([\d,]+) tokens/s", logs)]
            rss = [float(x) for x in re.findall(r"peak RSS (\d+) MB", logs)]
            meta = json.loads((out / "meta.json").read_text())
            tokens = meta["splits"]["train"]["num_tokens"] + meta["splits"]["val"]["num_tokens"]
            rows.append([executor, f"{size / 1e6:.1f}", f"{tokens:,}", f"{wall:.1f}", f"{np.mean(per_task):,.0f}",
                         f"{max(rss):.0f}"])
            shutil.rmtree(out)
    table("prepare --executor: 4 tasks, 2 workers, gpt2 (tokens/s per worker = mean of the tasks' own rates)",
          ["executor", "corpus MB", "tokens", "wall s", "tokens/s per worker", "peak task RSS MB"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller synthetic datasets for the memory table")
    ap.add_argument("--skip", nargs="*", default=[], choices=["prepare", "loader", "rss", "executors"])
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        return _rss_child(args.rss_child)
    import platform

    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}")
    with tempfile.TemporaryDirectory(prefix="scalegpt-bench-") as d:
        tmp = Path(d)
        if "prepare" not in args.skip:
            bench_prepare(tmp)
        if "loader" not in args.skip:
            bench_loader_vs_step(tmp)
        if "rss" not in args.skip:
            bench_rss(tmp, args.quick)
        if "executors" not in args.skip:
            bench_executors(tmp, args.quick)


if __name__ == "__main__":
    main()
