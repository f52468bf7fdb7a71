"""HellaSwag throughput: scalegpt's batched scorer vs one example per forward, on the same examples in one run.

    python benchmarks/bench_hellaswag.py [--preset mini] [--examples 100] [--batch-size 16] [--device cpu]

The model is a random-init preset with GPT-2's vocabulary (throughput does not depend on the weights); the examples are
the first N of shared/data/hellaswag_val_full.txt.bz2. The baseline is build-nanogpt's loop: one example (its 4
candidate rows, padded to the longest) per forward, logits for every position, the loss masked to the ending.
All three rows must agree on acc and acc_norm.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from scalegpt.hellaswag import evaluate_hellaswag, load_hellaswag
from scalegpt.model import GPT
from scalegpt.tokenizer import get_tokenizer

DEFAULT_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "hellaswag_val_full.txt.bz2"


@torch.no_grad()
def one_example_per_forward(model, tok, examples, device) -> dict:
    """The straightforward loop, for comparison."""
    block = model.config.block_size
    correct = correct_norm = 0
    for ex in examples:
        ctx = tok.encode(ex.ctx)
        rows, masks = [], []
        for ending in ex.endings:
            end = tok.encode(" " + ending)
            tokens, mask = (ctx + end)[-block:], ([0] * len(ctx) + [1] * len(end))[-block:]
            rows.append(tokens)
            masks.append(mask)
        width = max(len(r) for r in rows)
        x = torch.zeros(4, width, dtype=torch.long)
        m = torch.zeros(4, width)
        for i, (r, mk) in enumerate(zip(rows, masks)):
            x[i, :len(r)] = torch.tensor(r)
            m[i, :len(mk)] = torch.tensor(mk, dtype=torch.float)
        x, m = x.to(device), m.to(device)
        logits = model(x)
        losses = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten(), reduction="none").view(4, -1)
        mask = m[:, 1:]
        sums = (losses * mask).sum(dim=1)
        correct += int(sums.argmin()) == ex.label
        correct_norm += int((sums / mask.sum(dim=1)).argmin()) == ex.label
    return {"examples": len(examples), "acc": correct / len(examples), "acc_norm": correct_norm / len(examples)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="mini")
    ap.add_argument("--examples", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--file", default=str(DEFAULT_FILE))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads (default: torch's); on a busy machine 1 thread avoids OpenMP oversubscription")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = GPT.from_preset(args.preset, vocab_size=50257).to(args.device).eval()
    tok = get_tokenizer("gpt2")
    examples = load_hellaswag(args.file, limit=args.examples)
    evaluate_hellaswag(model, tok, examples[:8], device=args.device, progress=False)  # warm-up

    runs = []
    t0 = time.perf_counter()
    base = one_example_per_forward(model, tok, examples, args.device)
    runs.append(("one example per forward (build-nanogpt loop)", time.perf_counter() - t0, base))
    for bs in (1, args.batch_size):
        t0 = time.perf_counter()
        r = evaluate_hellaswag(model, tok, examples, device=args.device, batch_size=bs, progress=False)
        runs.append((f"scalegpt evaluate_hellaswag, batch {bs} example{'s' if bs > 1 else ''}",
                     time.perf_counter() - t0, r))
    for _, _, r in runs[1:]:
        assert (r["acc"], r["acc_norm"]) == (base["acc"], base["acc_norm"]), (r, base)

    c = model.config
    print(f"preset {args.preset} ({c.n_layer} layers, width {c.n_embd}, block {c.block_size}, vocab {c.vocab_size}; "
          f"{model.num_params() / 1e6:.1f}M parameters), {len(examples)} HellaSwag examples; "
          f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, device {args.device}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print()
    print("| scorer | seconds | examples/s | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for name, t, _ in runs:
        print(f"| {name} | {t:.1f} | {len(examples) / t:.1f} | {runs[0][1] / t:.1f}x |")
    print(f"acc {base['acc']:.4f}, acc_norm {base['acc_norm']:.4f} from all three (random weights: chance is 0.25)")


if __name__ == "__main__":
    main()
