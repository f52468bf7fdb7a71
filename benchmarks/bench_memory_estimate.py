"""How honest is scalegpt.resources' memory estimate? Peak RSS of real AdamW training steps on the CPU against it.

    python3 benchmarks/bench_memory_estimate.py            # 6 x 512 model, 16 x 512 tokens, fp32, gelu and swiglu
    python3 benchmarks/bench_memory_estimate.py --quick    # a small shape, seconds

Each variant runs in its own process (peak RSS is per process): build the model and AdamW, take two steps, read
ru_maxrss. "torch" is the RSS before the model is built (the library itself), which the estimate does not count.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import contextlib, json, resource, sys, torch
from scalegpt.config import GPTConfig
from scalegpt.model import GPT
from scalegpt.resources import estimate_training
shape, mlp, precision = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
B, T = shape.pop("batch"), shape["block_size"]
before = int(open("/proc/self/statm").read().split()[1]) * 4096
config = GPTConfig(**shape, mlp=mlp)
model = GPT(config)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
x = torch.randint(0, config.vocab_size, (B, T))
ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
for _ in range(2):
    with ctx:
        loss = model(x, x)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"torch": before, "peak": peak, "estimate": estimate_training(config, B, T, precision).total}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a small shape (seconds)")
    p.add_argument("--bf16", action="store_true", help="also bf16 autocast (slow on most CPUs)")
    args = p.parse_args()
    shape = (dict(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=500, batch=4) if args.quick else
             dict(n_layer=6, n_head=8, n_embd=512, block_size=512, vocab_size=8000, batch=16))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"CPU: {cpu}; load average {os.getloadavg()[0]:.1f}; shape {shape}")
    print(f"{'mlp':<10} {'precision':<9} {'torch MiB':>10} {'peak MiB':>9} {'estimate MiB':>13} {'estimate / (peak - torch)':>26}")
    for precision in ("fp32", "bf16") if args.bf16 else ("fp32",):
        for mlp in ("gelu_tanh", "swiglu"):
            out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(shape), mlp, precision], env=env,
                                 capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            mib = 1 << 20
            print(f"{mlp:<10} {precision:<9} {r['torch'] / mib:>10.0f} {r['peak'] / mib:>9.0f} "
                  f"{r['estimate'] / mib:>13.0f} {r['estimate'] / (r['peak'] - r['torch']):>26.2f}")


if __name__ == "__main__":
    main()
