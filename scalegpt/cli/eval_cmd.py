"""scalegpt eval loss --checkpoint CKPT --data DIR [--split val] [--tokens N]
scalegpt eval hellaswag (--checkpoint CKPT | --hf NAME_OR_DIR) [--file PATH] [--limit N] [--convention harness]
scalegpt eval harness (--checkpoint CKPT | --hf NAME_OR_DIR) --tasks T1,T2 [--task-file TASK=FILE] [--limit N]"""
from __future__ import annotations

import json
import sys


def register(sub) -> None:
    from scalegpt.cli.numbers import add_integer

    p = sub.add_parser("eval", help="evaluate a model: validation loss, HellaSwag, lm-evaluation-harness tasks")
    esub = p.add_subparsers(dest="eval_command", metavar="WHAT", required=True)

    loss = esub.add_parser("loss", help="mean loss and perplexity on a fixed token budget of a prepared dataset")
    loss.add_argument("--checkpoint", required=True, help="a checkpoint directory, or a run directory (its latest)")
    loss.add_argument("--data", required=True, help="a prepared dataset directory")
    loss.add_argument("--split", default="val", help="which split (default val)")
    add_integer(loss, "--tokens", 1, 2**50, default=None, help="token budget from the split start (default: all)")
    add_integer(loss, "--batch-size", 1, 2**30, default=8, help="sequences per forward")
    add_integer(loss, "--seq-len", 1, 2**30, default=None, help="tokens per sequence (default: the block size)")
    loss.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda when available)")
    loss.set_defaults(func=run_loss)

    hs = esub.add_parser("hellaswag", help="HellaSwag accuracy (prints a JSON line)")
    src = hs.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint directory, or a run directory (its latest)")
    src.add_argument("--hf", metavar="NAME_OR_DIR",
                     help="a HuggingFace GPT-2, Llama or Qwen3 directory, or a GPT-2 hub name (gpt2, gpt2-xl...)")
    hs.add_argument("--file", default=None,
                    help="HellaSwag jsonl or 6-line text file (.txt/.txt.bz2); default: download the official val set")
    add_integer(hs, "--limit", 1, 10**9, default=None, help="only the first N examples")
    add_integer(hs, "--batch-size", None, 2**30, default=16, help="examples (x 4 endings) per forward")
    hs.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda when available)")
    hs.add_argument("--no-progress", action="store_true", help="no progress bar")
    hs.add_argument("--convention", choices=("completion", "harness"), default="completion",
                    help="completion: build-nanogpt's scoring (GPT-2 124M acc_norm 0.2955); harness: "
                         "lm-evaluation-harness's hellaswag task (0.311)")
    hs.set_defaults(func=run_hellaswag)

    hv = esub.add_parser("harness", help="lm-evaluation-harness tasks on the model, in-process (needs scalegpt[eval])")
    src = hv.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint directory, or a run directory (its latest)")
    src.add_argument("--hf", metavar="NAME_OR_DIR", help="a HuggingFace GPT-2 directory (e.g. from scalegpt export)")
    hv.add_argument("--tasks", default="", help="comma-separated harness tasks (hellaswag,arc_easy,lambada_openai)")
    hv.add_argument("--task-file", action="append", default=[], metavar="TASK=FILE",
                    help="run harness task TASK on a local JSON-lines file of its dataset's rows, as TASK_local "
                         "(offline; repeatable)")
    hv.add_argument("--include-path", default=None, metavar="DIR", help="a directory of your own task YAML files")
    add_integer(hv, "--limit", 1, 10**9, default=None, help="only the first N examples of each task")
    add_integer(hv, "--num-fewshot", 0, 10_000, default=None, help="few-shot examples (default: each task's own)")
    add_integer(hv, "--batch-size", None, 2**30, default=16, help="rows per forward")
    hv.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda when available)")
    hv.add_argument("--output", default=None, metavar="FILE", help="also write the JSON results to FILE")
    hv.set_defaults(func=run_harness)


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
    """(model, tokenizer) from a scalegpt checkpoint/run directory or a HF GPT-2/Llama/Qwen3 model; the spec must
    be known."""
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


def _with_progress(batches, ds, args, seq_len: int, model):
    """The batches behind a progress bar with an ETA on stderr, after one line saying how much work it is: a whole
    large split is minutes of silence on a CPU otherwise."""
    from tqdm import tqdm

    windows = sum(ds.window_counts(seq_len))
    if args.tokens is not None:
        windows = min(windows, args.tokens // seq_len)
    n_batches = -(-windows // args.batch_size)
    gflop = model.flops_per_token(seq_len) / 3 * windows * seq_len / 1e9  # forward only: a third of training's
    print(f"eval loss: {windows * seq_len:,} tokens in {n_batches:,} batches of {args.batch_size} x {seq_len} "
          f"(~{gflop:,.0f} GFLOP forward; --tokens N evaluates the first N only)", file=sys.stderr)
    return tqdm(batches, total=n_batches, unit="batch", desc="eval loss", file=sys.stderr, mininterval=2,
                disable=n_batches < 2)


def run_loss(args) -> int:
    from scalegpt.resources import check_forward
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
    check_forward(model.config, args.batch_size, seq_len, device, ("--batch-size", "--seq-len"), "eval loss")
    batches = eval_batches(ds, batch_size=args.batch_size, seq_len=seq_len, max_tokens=args.tokens, device=device)
    if str(device).startswith("cpu"):  # two threads on a busy 2-core CPU ran ~4x slower than one (pick_threads)
        from scalegpt.runtime import pick_threads

        threads, why = pick_threads(0, args.batch_size * seq_len, model.config.n_embd)
        print(f"threads: {threads} ({why})", file=sys.stderr)
    batches = _with_progress(batches, ds, args, seq_len, model)
    result = evaluate_loss(model, batches, device=device, byte_lengths=token_byte_lengths(tokenizer_from_spec(spec)))
    print(f"checkpoint {where}, {args.split} split of {args.data}: {result['tokens']:,} tokens "
          f"({result['bytes']:,} bytes), loss {result['loss']:.4f}, perplexity {result['perplexity']:.2f}, "
          f"bits per byte {result['bpb']:.4f}", file=sys.stderr)
    print(json.dumps(result))
    return 0


def run_hellaswag(args) -> int:
    from scalegpt.resources import check_forward
    from scalegpt.hellaswag import evaluate_hellaswag, load_hellaswag

    device = pick_device(args.device)
    examples = load_hellaswag(args.file, limit=args.limit)  # before the model: a bad file fails fast
    model, tokenizer, _, where = load_model(args.checkpoint, args.hf, device)
    # 4 endings per example; rows are at most block_size wide (an upper bound: most are far shorter)
    check_forward(model.config, 4 * max(args.batch_size, 1), model.config.block_size, device, ("--batch-size",),
                  "eval hellaswag", logits=False)
    print(f"HellaSwag: {len(examples)} examples, model {where} on {device}", file=sys.stderr)
    result = evaluate_hellaswag(model, tokenizer, examples, device=device, batch_size=args.batch_size,
                                progress=not args.no_progress, convention=args.convention)
    if args.convention == "completion":
        print("convention: completion-style scoring as in build-nanogpt (sum and mean loss of each ending's tokens; "
              "GPT-2 124M acc_norm 0.2955), not lm-evaluation-harness's multiple-choice normalisation (0.311)",
              file=sys.stderr)
    else:
        print("convention: lm-evaluation-harness's hellaswag task (cleaned prompt; acc_norm = log-likelihood per "
              "character of the ending; GPT-2 124M acc_norm 0.311), not build-nanogpt's completion style (0.2955)",
              file=sys.stderr)
    print(json.dumps({**result, "convention": args.convention}))
    return 0


HARNESS_MISSING = "scalegpt eval harness needs lm-evaluation-harness: pip install 'scalegpt[eval]'"


def run_harness(args) -> int:
    from pathlib import Path

    from scalegpt._fs import write_text_atomically
    from scalegpt.errors import ScalegptError

    try:
        from lm_eval.utils import make_table

        from scalegpt import harness
    except ImportError as e:
        if (e.name or "").split(".")[0] == "lm_eval":
            raise ScalegptError(HARNESS_MISSING) from None
        raise
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    task_files = {}
    for item in args.task_file:
        task, sep, path = item.partition("=")
        if not sep or not task or not path:
            raise ScalegptError(f"--task-file expects TASK=FILE (e.g. hellaswag=hellaswag_val.jsonl), got '{item}'")
        task_files[task.strip()] = path
    if not tasks and not task_files:
        raise ScalegptError("give --tasks (e.g. hellaswag,arc_easy) and/or --task-file TASK=FILE")
    if args.output is not None:  # before the evaluation: it must not replace an input or a file of the user's
        from scalegpt.outputs import check_output

        check_output(args.output, kind="results", flag="--output",
                     inputs=[p for p in (args.checkpoint, args.hf, *task_files.values()) if p])
    from scalegpt.resources import check_forward

    device = pick_device(args.device)
    model, tokenizer, _, where = load_model(args.checkpoint, args.hf, device)
    check_forward(model.config, max(args.batch_size, 1), model.config.block_size, device, ("--batch-size",),
                  "eval harness", logits=False)
    lm = harness.HarnessLM(model, tokenizer, batch_size=args.batch_size, device=device)
    print(f"lm-evaluation-harness: model {where} on {device}", file=sys.stderr)
    results = harness.run_harness(lm, tasks, task_files, include_path=args.include_path, limit=args.limit,
                                  num_fewshot=args.num_fewshot)
    print(make_table(results), file=sys.stderr)
    if harness.mentions_hellaswag(results):
        print(harness.HELLASWAG_CONVENTION, file=sys.stderr)
    summary = {**harness.results_json(results), "model": str(where)}
    text = json.dumps(summary, default=str)
    if args.output:
        write_text_atomically(Path(args.output), text + "\n")
    print(text)
    return 0
