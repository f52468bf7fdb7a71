"""scalegpt eval loss --checkpoint CKPT --data DIR [--split val] [--tokens N]
scalegpt eval hellaswag (--checkpoint CKPT | --hf NAME_OR_DIR) [--file PATH] [--limit N]"""
from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model: validation loss or HellaSwag")
    esub = p.add_subparsers(dest="eval_command", metavar="WHAT", required=True)

    loss = esub.add_parser("loss", help="mean loss and perplexity on a fixed token budget of a prepared dataset")
    loss.add_argument("--checkpoint", required=True, help="a checkpoint directory, or a run directory (its latest)")
    loss.add_argument("--data", required=True, help="a prepared dataset directory")
    loss.add_argument("--split", default="val", help="which split (default val)")
    loss.add_argument("--tokens", type=int, default=None, help="token budget from the split start (default: all)")
    loss.add_argument("--batch-size", type=int, default=8, help="sequences per forward")
    loss.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the block size)")
    loss.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda when available)")
    loss.set_defaults(func=run_loss)

    hs = esub.add_parser("hellaswag", help="HellaSwag accuracy, completion style (prints a JSON line)")
    src = hs.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint directory, or a run directory (its latest)")
    src.add_argument("--hf", metavar="NAME_OR_DIR", help="a HuggingFace GPT-2 directory or hub name (gpt2, gpt2-xl...)")
    hs.add_argument("--file", default=None,
                    help="HellaSwag jsonl or 6-line text file (.txt/.txt.bz2); default: download the official val set")
    hs.add_argument("--limit", type=int, default=None, help="only the first N examples")
    hs.add_argument("--batch-size", type=int, default=16, help="examples (x 4 endings) per forward")
    hs.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda when available)")
    hs.add_argument("--no-progress", action="store_true", help="no progress bar")
    hs.set_defaults(func=run_hellaswag)


def pick_device(name: str | None) -> str:
    import torch

    from scalegpt.errors import ScalegptError

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ScalegptError(f"--device: unknown device '{name}'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ScalegptError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ScalegptError(f"--device {name}: MPS is not available on this machine")
    return name


def load_model(checkpoint: str | None, hf: str | None, device: str):
    """(model, tokenizer) from a scalegpt checkpoint/run directory or a HF GPT-2 model; the spec must be known."""
    from scalegpt.errors import ScalegptError
    from scalegpt.tokenizer import tokenizer_from_spec

    if checkpoint is not None:
        from scalegpt.checkpoint import load_model_dir, resolve_checkpoint

        where = resolve_checkpoint(checkpoint)
        model, spec = load_model_dir(where, device=device)
    else:
        from scalegpt.hf import load_pretrained_with_tokenizer

        where = hf
        model, spec = load_pretrained_with_tokenizer(hf, device=device)
    if spec is None:
        raise ScalegptError(f"{where}: the checkpoint has no tokenizer spec, so its text cannot be encoded "
                            "(save it with tokenizer_spec=..., or re-export it)")
    model.eval()
    try:
        tokenizer = tokenizer_from_spec(spec)
    except ScalegptError as e:
        raise ScalegptError(f"{where}: {e}") from None
    return model, tokenizer, spec, where


def run_loss(args) -> int:
    from scalegpt.checkpoint import load_model_dir, resolve_checkpoint
    from scalegpt.data import eval_batches, open_dataset
    from scalegpt.errors import ScalegptError
    from scalegpt.evaluate import evaluate_loss
    from scalegpt.tokenizer import check_same_tokenizer, token_byte_lengths, tokenizer_from_spec

    device = pick_device(args.device)
    for name in ("tokens", "batch_size", "seq_len"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ScalegptError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    where = resolve_checkpoint(args.checkpoint)
    model, spec = load_model_dir(where, device=device)
    ds = open_dataset(args.data, split=args.split)
    if spec is None:
        raise ScalegptError(f"{where}: the checkpoint has no tokenizer spec; cannot check it matches {args.data}")
    check_same_tokenizer(spec, ds.tokenizer_spec, f"checkpoint {where}", f"dataset {args.data}")
    ds.check_vocab(model.config.vocab_size, f"checkpoint {where}")
    seq_len = args.seq_len or model.config.block_size
    if seq_len > model.config.block_size:
        raise ScalegptError(f"--seq-len {seq_len} exceeds the model's block_size {model.config.block_size}")
    batches = eval_batches(ds, batch_size=args.batch_size, seq_len=seq_len, max_tokens=args.tokens, device=device)
    result = evaluate_loss(model, batches, device=device, byte_lengths=token_byte_lengths(tokenizer_from_spec(spec)))
    print(f"checkpoint {where}, {args.split} split of {args.data}: {result['tokens']:,} tokens "
          f"({result['bytes']:,} bytes), loss {result['loss']:.4f}, perplexity {result['perplexity']:.2f}, "
          f"bits per byte {result['bpb']:.4f}", file=sys.stderr)
    print(json.dumps(result))
    return 0


def run_hellaswag(args) -> int:
    from scalegpt.hellaswag import evaluate_hellaswag, load_hellaswag

    device = pick_device(args.device)
    examples = load_hellaswag(args.file, limit=args.limit)  # before the model: a bad file fails fast
    model, tokenizer, _, where = load_model(args.checkpoint, args.hf, device)
    print(f"HellaSwag: {len(examples)} examples, model {where} on {device}", file=sys.stderr)
    result = evaluate_hellaswag(model, tokenizer, examples, device=device, batch_size=args.batch_size,
                                progress=not args.no_progress)
    print("convention: completion-style scoring as in build-nanogpt (sum and mean loss of each ending's tokens; "
          "GPT-2 124M acc_norm 0.2955), not lm-evaluation-harness's multiple-choice normalisation (0.311)",
          file=sys.stderr)
    print(json.dumps(result))
    return 0
