"""scalegpt prepare --input FILE_OR_DIR... | --hf-dataset NAME | --recipe shakespeare|fineweb-edu  --out DIR ..."""
from __future__ import annotations

import os
import time
from pathlib import Path

RECIPES = {
    # name: what it reads, and defaults that differ from the general ones
    "shakespeare": "Tiny Shakespeare (--input FILE, else downloaded from char-rnn); 90/10 split by position",
    "fineweb-edu": "HuggingFaceFW/fineweb-edu sample-10BT streamed (needs `datasets`); first 100M tokens = val",
}


def _int(text: str) -> int:
    """Accepts 100_000_000, 100,000,000 and 1e8 as well as 100000000."""
    import argparse

    try:
        value = float(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
    if value != int(value):
        raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'")
    return int(value)


def register(sub) -> None:
    p = sub.add_parser("prepare", help="tokenize a text corpus into token shards for training",
                       description="Tokenize text into train_*.npy / val_*.npy shards and meta.json.")
    src = p.add_argument_group("input")
    src.add_argument("--input", nargs="+", action="extend", default=[], metavar="PATH",
                     help="files or folders (recursive): .txt, .jsonl/.json, .parquet, optionally .gz/.zst/.bz2")
    src.add_argument("--text-field", default="text", help="field/column holding the text (JSON lines, parquet, HF)")
    src.add_argument("--hf-dataset", metavar="NAME", help="stream a HuggingFace dataset (needs `datasets`, online)")
    src.add_argument("--hf-config", metavar="NAME", help="configuration of --hf-dataset (e.g. sample-10BT)")
    src.add_argument("--hf-split", default="train", metavar="SPLIT", help="split of --hf-dataset (default train)")
    src.add_argument("--recipe", choices=sorted(RECIPES), help="; ".join(f"{k}: {v}" for k, v in RECIPES.items()))
    src.add_argument("--encoding", default="utf-8", help="text encoding of the inputs (default utf-8)")
    src.add_argument("--errors", choices=["strict", "replace"], default="strict",
                     help="undecodable bytes: stop with an error naming the byte offset (strict) or replace them")
    p.add_argument("--tokenizer", default="gpt2", help="gpt2, char (vocabulary built from the inputs), or a "
                                                       "SentencePiece .model / char .json file (default gpt2)")
    p.add_argument("--out", help="output directory (default data/RECIPE for a recipe)")
    p.add_argument("--shard-tokens", type=_int, default=100_000_000, help="tokens per shard (default 100M; 1e8 and 100_000_000 also work)")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val-tokens", type=_int, help="validation tokens: whole documents from the start (a single "
                                                     "document: its last N tokens)")
    val.add_argument("--val-fraction", type=float, help="validation share (default 0.1): whole documents, or the "
                                                        "last fraction of the characters of a single document")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="parallel tokenizers: threads for gpt2, processes otherwise (default: CPU count, at "
                        "most 8); the output is identical for any count")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _command_line(args) -> list[str]:
    """The command as parsed (main() may be called with an argv that is not sys.argv), for meta.json."""
    cmd = ["scalegpt", "prepare"]
    for key, value in sorted(vars(args).items()):
        if key in ("func", "command") or value is None or value is False or value == []:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            cmd.append(flag)
        elif isinstance(value, list):
            cmd += [flag, *map(str, value)]
        else:
            cmd += [flag, str(value)]
    return cmd


def run(args) -> int:
    from scalegpt.errors import ScalegptError
    from scalegpt.prepare import prepare
    from scalegpt.sources import download_shakespeare

    inputs, hf = list(args.input), args.hf_dataset
    config, split, val_tokens = args.hf_config, args.hf_split, args.val_tokens
    if args.recipe == "shakespeare":
        if hf:
            raise ScalegptError("--recipe shakespeare reads a text file, not --hf-dataset")
        if not inputs:
            cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "scalegpt"
            path = cache / "tinyshakespeare.txt"
            inputs = [str(path if path.is_file() else download_shakespeare(path))]
    elif args.recipe == "fineweb-edu":
        if inputs:
            raise ScalegptError("--recipe fineweb-edu streams from HuggingFace; drop --input")
        hf, config = hf or "HuggingFaceFW/fineweb-edu", config or "sample-10BT"
        if val_tokens is None and args.val_fraction is None:
            val_tokens = args.shard_tokens  # build-nanogpt: the first shard is the validation set
    out = args.out or (f"data/{args.recipe}" if args.recipe else None)
    if out is None:
        raise ScalegptError("--out DIR is required (where the shards and meta.json go)")
    if not inputs and not hf:
        raise ScalegptError("nothing to prepare: give --input FILE_OR_DIR..., --hf-dataset NAME or --recipe NAME")

    t0 = time.time()
    meta = prepare(inputs, out, args.tokenizer, text_field=args.text_field, hf_dataset=hf, hf_config=config,
                   hf_split=split, shard_tokens=args.shard_tokens, val_tokens=val_tokens,
                   val_fraction=args.val_fraction, workers=args.workers, encoding=args.encoding, errors=args.errors,
                   overwrite=args.overwrite, command=_command_line(args), progress=not args.quiet)
    dt = time.time() - t0
    s = meta["splits"]
    total = s["train"]["num_tokens"] + s["val"]["num_tokens"]
    print(f"wrote {out}: train {s['train']['num_tokens']:,} tokens ({s['train']['num_documents']:,} documents, "
          f"{len(s['train']['shards'])} shards), val {s['val']['num_tokens']:,} tokens "
          f"({s['val']['num_documents']:,} documents, {len(s['val']['shards'])} shards); "
          f"{meta['tokenizer']['kind']} vocab {meta['vocab_size']}, {meta['dtype']}; "
          f"{dt:.1f} s, {total / max(dt, 1e-9):,.0f} tokens/s")
    print(val_share_line(meta))
    return 0


def val_share_line(meta: dict) -> str:
    """'validation share: 10.0% of the tokens (asked 10.0%)', with a warning when it is far from the asked one."""
    share, asked = meta.get("val_share", 0.0), meta.get("val_fraction")
    line = f"validation share: {100 * share:.1f}% of the tokens"
    if asked is not None:
        line += f" (asked {100 * asked:.1f}%)"
        if abs(share - asked) > 0.03:
            line += ("; WARNING: far from the asked share (too few documents to split finely?); "
                     "choose --val-fraction or --val-tokens to fit")
    return line
