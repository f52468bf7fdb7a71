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


def register(sub) -> None:
    from scalegpt.cli.numbers import add_integer, add_real

    p = sub.add_parser("prepare", help="tokenize a text corpus into token shards for training",
                       description="Tokenize text into train_*.npy / val_*.npy shards and meta.json.")
    src = p.add_argument_group("input")
    src.add_argument("--input", nargs="+", action="extend", default=[], metavar="PATH",
                     help="files or folders (recursive): .txt, .jsonl/.json, .parquet, optionally .gz/.zst/.bz2")
    src.add_argument("--text-field", default="text", help="field/column holding the text (JSON lines, parquet, HF)")
    src.add_argument("--hf-dataset", metavar="NAME", help="stream a HuggingFace dataset (needs `datasets`, online)")
    src.add_argument("--hf-config", metavar="NAME", help="configuration of --hf-dataset (e.g. sample-10BT)")
    src.add_argument("--hf-split", default="train", metavar="SPLIT", help="split of --hf-dataset (default train)")
    src.add_argument("--from-llmc", metavar="DIR", help="use llm.c / modded-nanogpt .bin shards (*_train_*.bin, "
                     "*_val_*.bin) in place: writes only meta.json and links into --out")
    src.add_argument("--recipe", choices=sorted(RECIPES), help="; ".join(f"{k}: {v}" for k, v in RECIPES.items()))
    src.add_argument("--encoding", default="utf-8", help="text encoding of the inputs (default utf-8)")
    src.add_argument("--errors", choices=["strict", "replace"], default="strict",
                     help="undecodable bytes: stop with an error naming the byte offset (strict) or replace them")
    p.add_argument("--tokenizer", default="gpt2", help="gpt2, char (vocabulary built from the inputs), or a "
                                                       "SentencePiece .model / char .json file (default gpt2)")
    p.add_argument("--out", help="output directory (default data/RECIPE for a recipe)")
    add_integer(p, "--shard-tokens", 1, 2**31, default=100_000_000, help="tokens per shard (default 100M; 1e8 and 100_000_000 also work)")
    val = p.add_mutually_exclusive_group()
    add_integer(val, "--val-tokens", 0, 2**50, help="validation tokens: whole documents from the start (a single "
                                                     "document: its last N tokens)")
    add_real(val, "--val-fraction", 0.0, 1.0, high_open=True, help="validation share (default 0.1): whole documents, or the "
                                                        "last fraction of the characters of a single document")
    add_integer(p, "--workers", 1, 1024, default=min(8, os.cpu_count() or 1),
                   help="parallel tokenizers: threads for gpt2, processes otherwise (default: CPU count, at "
                        "most 8); the output is identical for any count")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    scale = p.add_argument_group("distributed (datatrove; pip install 'scalegpt[scale]')")
    scale.add_argument("--executor", choices=["local", "ray", "slurm"],
                       help="run as datatrove tasks: local processes, a Ray cluster or SLURM job arrays; --workers "
                            "is then the number of tasks running at once")
    add_integer(scale, "--tasks", 1, 100_000, help="number of tasks, each tokenizing a contiguous share of the input "
                                                  "files / parquet row groups (default: one per file or row group, "
                                                  "at most 256); the bytes depend on it, not on the executor")
    scale.add_argument("--ray-address", metavar="HOST:PORT", help="join this Ray cluster (default: start a local "
                                                                   "one with --workers CPUs on 127.0.0.1)")
    scale.add_argument("--slurm-partition", help="SLURM partition (default: the cluster's default)")
    scale.add_argument("--slurm-time", default="24:00:00", help="time limit per task (default 24:00:00)")
    add_integer(scale, "--slurm-cpus", 1, 4096, default=1, help="CPUs per task (default 1)")
    scale.add_argument("--slurm-sbatch-args", metavar="ARGS", help='extra #SBATCH options, e.g. '
                       '--slurm-sbatch-args="--account=a --qos=high" (with "=": the value starts with --)')
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

    if args.from_llmc:
        return _run_llmc(args)
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
    out = args.out if args.out is not None else (f"data/{args.recipe}" if args.recipe else None)
    if out is None:
        raise ScalegptError("--out DIR is required (where the shards and meta.json go)")
    if not inputs and not hf:
        raise ScalegptError("nothing to prepare: give --input FILE_OR_DIR..., --hf-dataset NAME or --recipe NAME")

    if args.tasks is not None and not args.executor:
        raise ScalegptError("--tasks splits the work between the tasks of an --executor (local, ray or slurm)")
    t0 = time.time()
    if args.executor:
        from scalegpt.executors import prepare_with_executor

        if hf:
            raise ScalegptError("--executor reads --input files; --hf-dataset is not split into tasks yet")
        meta = prepare_with_executor(
            inputs, out, args.tokenizer, executor=args.executor, tasks=args.tasks, workers=args.workers,
            ray_address=args.ray_address, overwrite=args.overwrite, command=_command_line(args), quiet=args.quiet,
            slurm={"partition": args.slurm_partition, "time": args.slurm_time, "cpus": args.slurm_cpus,
                   "sbatch_args": args.slurm_sbatch_args},
            text_field=args.text_field, shard_tokens=args.shard_tokens, val_tokens=val_tokens,
            val_fraction=args.val_fraction, encoding=args.encoding, errors=args.errors)
        if meta is None:
            print(f"submitted the SLURM jobs; {out}/meta.json appears when the merge job ends "
                  f"(logs in {out}/.prepare-logs); rerun the same command to resubmit unfinished tasks")
            return 0
    else:
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


def _run_llmc(args) -> int:
    from scalegpt.errors import ScalegptError
    from scalegpt.llmc import prepare_llmc

    if args.input or args.hf_dataset or args.recipe or args.executor:
        raise ScalegptError("--from-llmc uses already tokenized shards: drop --input/--hf-dataset/--recipe/--executor")
    if not args.out:
        raise ScalegptError("--out DIR is required (where meta.json and the links to the shards go)")
    t0 = time.time()
    meta = prepare_llmc(args.from_llmc, args.out, overwrite=args.overwrite, command=_command_line(args))
    s = meta["splits"]
    print(f"wrote {args.out}/meta.json for the llm.c shards in {args.from_llmc} (not copied): train "
          f"{s['train']['num_tokens']:,} tokens ({len(s['train']['shards'])} files), val {s['val']['num_tokens']:,} "
          f"tokens ({len(s['val']['shards'])} files); gpt2, uint16; {time.time() - t0:.1f} s")
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
