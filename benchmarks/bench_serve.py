"""Serving throughput: continuous batching vs one request at a time, with 1, 4 and 16 concurrent clients.

    python benchmarks/bench_serve.py [--preset gpt2] [--clients 1,4,16] [--requests 2] [--max-tokens 32]

Two `scalegpt serve` processes on the same random-weight model (speed does not depend on the weights): `batched`
(--max-batch 16: in-flight requests share decode steps) and `one-at-a-time` (--max-batch 1: the baseline, each
request waits for the one before). Each client sends --requests streamed completions one after the other (a ~8-token
prompt, --max-tokens new tokens, greedy). The runs are interleaved (clients 1: baseline, batched; clients 4: ...) so
the machine's load falls on both alike. Reported per run: aggregate tokens/s (all completion tokens / wall time),
time to first token (TTFT) and request latency, p50 and p99; `x single` = aggregate tokens/s over the same server's
1-client figure. `--quick` runs the tiny preset (a smoke test of this script).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
import torch

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["The history of the city begins with", "In a small village by the sea there lived",
           "The experiment was designed to measure", "She opened the letter and read the first line:",
           "The committee met on Tuesday to discuss", "Once upon a time, in a kingdom far away,",
           "The recipe calls for two cups of flour and", "According to the latest report, the market"]


def start_server(ckpt: Path, max_batch: int):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "scalegpt", "serve", "--checkpoint", str(ckpt), "--port", "0",
                             "--max-batch", str(max_batch), "--max-queue", "256", "--device", "cpu"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "http://" in line:
            url = "http://" + line.split("http://", 1)[1].split()[0]
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # drain
            return proc, url
    raise SystemExit(f"the server (max-batch {max_batch}) did not start: exit code {proc.wait()}")


def one_request(url: str, model: str, prompt: str, max_tokens: int) -> tuple[float, float, int]:
    """(time to first token, latency, completion tokens) of one streamed completion."""
    t0 = time.perf_counter()
    first, tokens = None, 0
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    with requests.post(url + "/v1/completions", json=body, stream=True, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines(decode_unicode=True):
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and first is None:
                first = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return first or 0.0, time.perf_counter() - t0, tokens


def run_clients(url: str, model: str, clients: int, per_client: int, max_tokens: int) -> dict:
    results, errors = [], []

    def client(c):
        for i in range(per_client):
            try:
                results.append(one_request(url, model, PROMPTS[(c + i) % len(PROMPTS)], max_tokens))
            except Exception as e:  # reported, not hidden
                errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{len(errors)} requests failed: {errors[0]}")
    ttft = sorted(r[0] for r in results)
    lat = sorted(r[1] for r in results)
    return {"tok_s": sum(r[2] for r in results) / wall, "ttft_p50": _pct(ttft, 50), "lat_p50": _pct(lat, 50),
            "lat_p99": _pct(lat, 99), "requests": len(results), "wall": wall}


def _pct(values: list[float], p: float) -> float:
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="gpt2", help="model shape (default gpt2: GPT-2 124M)")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=2, help="requests per client, one after the other")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="tiny model, few tokens: checks that the script runs")
    args = ap.parse_args()
    if args.quick:
        args.preset, args.max_tokens, args.requests = "tiny", 8, 1
    clients = [int(c) for c in args.clients.split(",")]
    load_before = os.getloadavg()[0]

    from scalegpt.checkpoint import save_model_dir
    from scalegpt.model import GPT, preset_config
    from scalegpt.tokenizer import GPT2Tokenizer

    tok = GPT2Tokenizer()
    torch.manual_seed(0)
    model = GPT(preset_config(args.preset, vocab_size=tok.vocab_size))
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / f"bench-{args.preset}"
        save_model_dir(model, ckpt, tokenizer_spec=tok.spec())
        n_params = model.num_params()
        del model
        servers = {}
        try:
            for name, batch in (("one-at-a-time", 1), ("batched", max(clients))):
                servers[name] = start_server(ckpt, batch)
            for _, url in servers.values():  # warm-up: first forwards allocate
                run_clients(url, ckpt.name, 1, 1, 4)
            rows = []
            for n in clients:
                for name, (_, url) in servers.items():
                    rows.append((name, n, run_clients(url, ckpt.name, n, args.requests, args.max_tokens)))
                    print(f"{name}, {n} clients: {rows[-1][2]['tok_s']:.1f} tokens/s", file=sys.stderr, flush=True)
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(60)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    print(f"\n{args.preset} ({n_params / 1e6:.0f}M params, random weights), {args.max_tokens} new tokens a request, "
          f"{args.requests} requests a client, greedy, CPU, torch {torch.__version__}, {os.cpu_count()} cores: "
          f"{cpu}; load average (1 min) before/after: {load_before:.1f}/{os.getloadavg()[0]:.1f}")
    print(f"| server | clients | requests | tokens/s | x single | TTFT p50 (s) | latency p50 (s) | latency p99 (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    single = {name: r["tok_s"] for name, n, r in rows if n == clients[0]}
    for name, n, r in rows:
        print(f"| {name} | {n} | {r['requests']} | {r['tok_s']:.1f} | {r['tok_s'] / single[name]:.2f} | "
              f"{r['ttft_p50']:.2f} | {r['lat_p50']:.2f} | {r['lat_p99']:.2f} |")
    top = {name: r["tok_s"] for name, n, r in rows if n == clients[-1]}
    print(f"\nbatching at {clients[-1]} clients: {top['batched'] / single['batched']:.1f}x the batched server's "
          f"{clients[0]}-client tokens/s; {top['batched'] / top['one-at-a-time']:.1f}x one-at-a-time at "
          f"{clients[-1]} clients")


if __name__ == "__main__":
    main()
