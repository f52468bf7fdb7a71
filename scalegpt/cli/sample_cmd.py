"""scalegpt sample (--checkpoint CKPT | --hf NAME_OR_DIR) [--prompt TEXT] [--num-samples N | --seeds 42,100,...]
[--max-new-tokens N] [--seed S] [--temperature T] [--top-k K] [--top-p P] [--stop TEXT] [--interactive]"""
from __future__ import annotations

import sys

SEPARATOR = "-" * 40


def register(sub) -> None:
    from scalegpt.cli.numbers import add_integer, add_real, add_seed, temperature
    from scalegpt.config.sections import MAX_NEW_TOKENS

    p = sub.add_parser("sample", help="generate text from a checkpoint or a HuggingFace GPT-2, Llama or Qwen3 model")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint directory, or a run directory (its latest)")
    src.add_argument("--hf", metavar="NAME_OR_DIR",
                     help="a HuggingFace GPT-2, Llama or Qwen3 directory, or a GPT-2 hub name")
    p.add_argument("--prompt", default="", help="text to continue (empty: start a new document from end-of-text)")
    add_integer(p, "--num-samples", 1, 1024, default=1, help="samples drawn as one batch")
    p.add_argument("--seeds", default=None, help="comma-separated seeds, one sample per seed (e.g. 42,100,200,300)")
    add_seed(p, "--seed", default=None, help="seed for reproducible samples (default: random)")
    add_integer(p, "--max-new-tokens", 1, MAX_NEW_TOKENS, default=100,
                help=f"new tokens per sample (at most {MAX_NEW_TOKENS:,}; beyond the block size the window slides)")
    p.add_argument("--temperature", type=temperature(), default=1.0, help="0 = greedy decoding, else in [1e-4, 100]")
    add_integer(p, "--top-k", None, 2**32, default=None, help="sample among the k most likely tokens only")
    add_real(p, "--top-p", 0.0, 1.0, low_open=True, default=None, help="nucleus sampling: the smallest set holding this mass")
    p.add_argument("--stop", action="append", default=None,
                   help="stop at this text (repeatable; '<|endoftext|>' = the end-of-text token)")
    p.add_argument("--interactive", action="store_true", help="a prompt loop that streams tokens; Ctrl-D exits")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda when available)")
    p.set_defaults(func=run_sample)


def parse_seeds(text: str) -> list[int]:
    from scalegpt.errors import ScalegptError

    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ScalegptError(f"--seeds must be comma-separated integers, got '{text}'") from None
    if not seeds:
        raise ScalegptError("--seeds is empty")
    from scalegpt.cli.numbers import SEED_MAX

    for seed in seeds:
        if not 0 <= seed <= SEED_MAX:
            raise ScalegptError(f"--seeds: each seed must be in [0, 2^64), got {seed}")
    if len(seeds) > 1024:
        raise ScalegptError(f"--seeds: at most 1024 seeds (one sample each), got {len(seeds)}")
    return seeds


def run_sample(args) -> int:
    from scalegpt.cli.eval_cmd import load_model, pick_device
    from scalegpt.errors import ScalegptError
    from scalegpt.generate import check_sampling_args, encode_prompt, for_cpu_decoding, generate

    if args.max_new_tokens < 1:
        raise ScalegptError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.num_samples < 1:
        raise ScalegptError(f"--num-samples must be >= 1, got {args.num_samples}")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    device = pick_device(args.device)
    model, tokenizer, _, _ = load_model(args.checkpoint, args.hf, device)
    model = for_cpu_decoding(model)  # the same matmuls as `scalegpt serve`, so both give the same greedy text
    check_sampling_args(args.temperature, args.top_k, args.top_p, model.config.vocab_size)
    settings = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, stop=args.stop, device=device)
    if args.interactive:
        return interactive(model, tokenizer, settings, args.seed)
    _warn_long_prompt(tokenizer, args.prompt, model.config.block_size, encode_prompt)
    if seeds is not None:
        texts = [generate(model, tokenizer, args.prompt, num_samples=1, seed=s, **settings)[0] for s in seeds]
        labels = [f"seed {s}" for s in seeds]
    else:
        texts = generate(model, tokenizer, args.prompt, num_samples=args.num_samples, seed=args.seed, **settings)
        labels = [f"sample {i + 1}" for i in range(len(texts))]
    for label, text in zip(labels, texts):
        print(f"{SEPARATOR} {label}")
        print(args.prompt + text)
    return 0


def _warn_long_prompt(tokenizer, prompt: str, block_size: int, encode_prompt) -> None:
    _, dropped = encode_prompt(tokenizer, prompt, block_size)
    if dropped:
        print(f"scalegpt: warning: the prompt is longer than the block size; its first {dropped} tokens are "
              f"dropped and the last {block_size} kept", file=sys.stderr)


def interactive(model, tokenizer, settings: dict, seed: int | None) -> int:
    """Read a prompt per line, stream the completion as it is produced; EOF (Ctrl-D) ends the loop."""
    from scalegpt.generate import encode_prompt, stream

    out = sys.stdout
    print("Type a prompt and press Enter (empty line: start from end-of-text). Ctrl-D exits.", file=sys.stderr)
    turn = 0
    while True:
        try:
            print("> ", end="", file=sys.stderr, flush=True)
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 0
        if not line:  # EOF
            print(file=sys.stderr)
            return 0
        prompt = line.rstrip("\n")
        _warn_long_prompt(tokenizer, prompt, model.config.block_size, encode_prompt)
        out.write(prompt)
        out.flush()
        try:
            for piece in stream(model, tokenizer, prompt, seed=None if seed is None else seed + turn, **settings):
                out.write(piece)
                out.flush()
        except KeyboardInterrupt:  # Ctrl-C stops this completion, not the session
            pass
        out.write("\n")
        out.flush()
        turn += 1
