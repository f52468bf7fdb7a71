"""Decoding speed: KV cache vs a nanoGPT-style no-cache loop, against the memory-bandwidth bound.

    python benchmarks/bench_generate.py [--preset gpt2] [--new-tokens 200] [--device cpu]

Batch 1, fp32, random init (speed does not depend on the weights), greedy so both loops must produce the same tokens.
Decoding one token reads every parameter once, so parameter bytes / memory bandwidth is a lower bound on the time per
token; the bandwidth is measured here, in the same run, with a large tensor copy.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from scalegpt.generate import generate_tokens
from scalegpt.model import GPT


def measure_bandwidth(device: str, mib: int = 512, repeats: int = 5) -> float:
    """Bytes/s of a large copy (each byte read once and written once)."""
    src = torch.ones(mib * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: page in both buffers
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best


@torch.no_grad()
def nanogpt_generate(model, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """nanoGPT's `generate`, greedy: the whole (cropped) sequence through the model for every new token."""
    for _ in range(max_new_tokens):
        idx_cond = idx if idx.size(1) <= model.config.block_size else idx[:, -model.config.block_size:]
        logits = model(idx_cond)
        idx = torch.cat([idx, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    return idx


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="gpt2")
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--prompt-tokens", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads (default: torch's); on a busy machine 1 thread avoids OpenMP oversubscription")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = GPT.from_preset(args.preset).to(args.device).eval()
    prompt = torch.randint(0, model.config.vocab_size, (1, args.prompt_tokens), device=args.device)
    n = args.new_tokens
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = measure_bandwidth(args.device)

    list(generate_tokens(model, prompt, 5, temperature=0))  # warm-up
    cached, t_cache = timed(lambda: torch.stack(list(generate_tokens(model, prompt, n, temperature=0)), dim=1))
    plain, t_plain = timed(lambda: nanogpt_generate(model, prompt, n)[:, args.prompt_tokens:])
    assert torch.equal(cached, plain), "KV-cache and no-cache greedy decoding disagree"
    bound = bandwidth / param_bytes

    print(f"{args.preset} ({model.num_params() / 1e6:.1f}M parameters, {param_bytes / 2**20:.0f} MiB fp32), batch 1, "
          f"{args.prompt_tokens}-token prompt, {n} new tokens, greedy; {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, device {args.device}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"measured copy bandwidth: {bandwidth / 1e9:.2f} GB/s -> bound {bound:.1f} tokens/s "
          f"({1e3 / bound:.1f} ms/token)")
    print()
    print("| decoding | tokens/s | ms/token | vs no cache | share of bandwidth bound |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, t in [("nanoGPT loop, no cache", t_plain), ("scalegpt KV cache", t_cache)]:
        print(f"| {name} | {n / t:.1f} | {1e3 * t / n:.1f} | {t_plain / t:.1f}x | {(n / t) / bound:.0%} |")
    print("tokens identical: yes")


if __name__ == "__main__":
    main()
