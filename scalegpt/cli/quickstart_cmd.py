"""scalegpt quickstart [--modern] [--recipe stdlib|shakespeare] [--input FILE_OR_DIR...] [--out RUN_DIR] [--time-budget 2m]

The whole path in one command, offline, on CPU: prepare a corpus (by default the Python standard library's own source
files, present wherever Python is), train the shipped quickstart preset (scalegpt/configs/quickstart.toml; with
--modern quickstart-modern.toml: RoPE, RMSNorm, ReLU^2, QK-norm, untied head, Muon), sample, and say where everything
is. The preset trains for a time budget (train.time_budget), not a step count, so it takes about as long on a fast
machine as on a slow one; the fast one simply trains more steps."""
from __future__ import annotations

import shlex
import sysconfig
import time
from pathlib import Path

STDLIB_MAX_BYTES = 4_000_000  # the top-level stdlib modules, sorted by name, up to this size: a few minutes of data
QUICKSTART_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quickstart.toml"  # package data
MODERN_CONFIG = QUICKSTART_CONFIG.with_name("quickstart-modern.toml")


def register(sub) -> None:
    from scalegpt.cli.numbers import add_integer
    from scalegpt.config.sections import MAX_NEW_TOKENS

    p = sub.add_parser("quickstart", help="prepare, train and sample a small GPT on CPU in a few minutes (offline)")
    p.add_argument("--recipe", choices=["stdlib", "shakespeare"], default="stdlib",
                   help="stdlib: the Python standard library's *.py files (default); shakespeare: Tiny Shakespeare "
                        "(give --input PATH/tinyshakespeare.txt when offline)")
    p.add_argument("--modern", action="store_true",
                   help="train the modern recipe (configs/quickstart-modern.toml: RoPE, RMSNorm, ReLU^2, QK-norm, "
                        "untied head, Muon) instead of GPT-2's")
    p.add_argument("--input", nargs="+", default=None, metavar="FILE_OR_DIR",
                   help="train on these text files or folders instead")
    p.add_argument("--out", default="runs/quickstart", help="run directory (default runs/quickstart)")
    p.add_argument("--data-dir", default=None, help="where the prepared tokens go (default data/quickstart-NAME)")
    p.add_argument("--tokenizer", default="char", help="char (default: fast and readable on CPU), gpt2, or a path")
    p.add_argument("--time-budget", default=None, metavar="DURATION",
                   help="train for this long instead of the preset's budget, e.g. 90s, 5m (evaluation adds a little)")
    add_integer(p, "--max-steps", 1, 10**12, default=None,
                   help="train for exactly N steps instead of a time budget (the same run on every machine)")
    p.add_argument("--device", default=None, help="cpu (default in the preset), cuda, mps")
    add_integer(p, "--sample-tokens", 1, MAX_NEW_TOKENS, default=400, help="length of the final sample")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any preset value, e.g. --set model.n_layer=6 (repeatable; see scalegpt train --help)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory (and stale data)")
    p.set_defaults(func=run_quickstart)


def stdlib_files(max_bytes: int = STDLIB_MAX_BYTES) -> list[Path]:
    """The standard library's top-level modules in name order, stopping before max_bytes (deterministic per Python)."""
    from scalegpt.errors import ScalegptError

    root = Path(sysconfig.get_paths()["stdlib"])
    chosen, total = [], 0
    for path in sorted(root.glob("*.py")):
        size = path.stat().st_size
        if total + size > max_bytes:
            continue
        chosen.append(path)
        total += size
    if not chosen:
        raise ScalegptError(f"no *.py files found in the standard library folder {root}; use --input FILES")
    return chosen


def choose_inputs(args) -> tuple[list[str], str, str]:
    """(input paths, dataset name, sampling prompt)."""
    from scalegpt.errors import ScalegptError

    if args.input:
        return [str(p) for p in args.input], "custom", "\n"
    if args.recipe == "shakespeare":
        import os

        # the same cache `scalegpt prepare --recipe shakespeare` uses
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "scalegpt" / "tinyshakespeare.txt"
        if not cache.is_file():
            from scalegpt.sources import download_shakespeare

            try:
                download_shakespeare(cache)
            except Exception as e:
                raise ScalegptError(f"cannot download Tiny Shakespeare ({e}); pass --input PATH/tinyshakespeare.txt")
        return [str(cache)], "shakespeare", "\n"
    return [str(p) for p in stdlib_files()], "stdlib", "def "


def prepare_data(inputs: list[str], data_dir: Path, tokenizer: str, overwrite: bool) -> None:
    """Prepare once; a later quickstart on the same files reuses the tokens."""
    from scalegpt._fs import read_json_object
    from scalegpt.errors import ScalegptError
    from scalegpt.prepare import prepare

    meta_path = data_dir / "meta.json"
    if meta_path.is_file():
        meta = read_json_object(meta_path, what="a dataset meta.json")
        from scalegpt.sources import discover

        # the same files with the same sizes (folders expanded as prepare expands them)
        wanted = sorted((str(f.path.resolve()), f.size) for f in discover(inputs))
        have = sorted((str(Path(i["path"]).resolve()), i.get("bytes")) for i in meta.get("inputs", []))
        same_files = wanted == have
        made_with = meta.get("tokenizer", {}) if isinstance(meta.get("tokenizer"), dict) else {}
        same_tokenizer = _same_tokenizer(made_with, tokenizer)
        if same_files and same_tokenizer:
            print(f"data: reusing {data_dir} ({meta['splits']['train']['num_tokens']:,} training tokens)")
            return
        if not overwrite:
            why = ("tokens of other files" if not same_files else
                   f"tokens made with another tokenizer ({made_with.get('kind')}, asked {tokenizer})")
            raise ScalegptError(f"{data_dir} holds {why}; pass --overwrite or --data-dir DIR")
    start = time.time()
    meta = prepare(inputs, out=str(data_dir), tokenizer=tokenizer, overwrite=overwrite, progress=False,
                   command=["scalegpt", "quickstart"])
    s = meta["splits"]
    print(f"data: prepared {len(inputs)} input(s) into {data_dir} in {time.time() - start:.1f} s: "
          f"{s['train']['num_tokens']:,} training and {s['val']['num_tokens']:,} validation tokens, "
          f"{meta['tokenizer']['kind']} vocabulary of {meta['vocab_size']}")


def _same_tokenizer(made_with: dict, asked: str) -> bool:
    """Whether a dataset's tokenizer spec is the one `--tokenizer asked` builds (a char vocabulary follows the text:
    the kind is enough; a SentencePiece model is compared by its bytes)."""
    if asked == "char":
        return made_with.get("kind") == "char"
    from scalegpt.tokenizer import get_tokenizer

    return made_with == get_tokenizer(asked).spec()


def run_quickstart(args) -> int:
    from scalegpt.config import load_config
    from scalegpt.errors import ScalegptError
    from scalegpt.generate import generate
    from scalegpt.train import Trainer, exit_code

    preset = MODERN_CONFIG if args.modern else QUICKSTART_CONFIG
    if not preset.is_file():
        raise ScalegptError(f"{preset}: preset not found (quickstart runs from a source checkout: pip install -e .)")
    if args.max_steps is not None and args.max_steps < 1:
        raise ScalegptError(f"--max-steps must be >= 1, got {args.max_steps}")
    if args.max_steps is not None and args.time_budget is not None:
        raise ScalegptError("--max-steps and --time-budget contradict each other; pass one")
    if args.sample_tokens < 1:
        raise ScalegptError(f"--sample-tokens must be >= 1, got {args.sample_tokens}")
    started = time.time()
    from scalegpt.outputs import check_output

    try:
        check_output(args.out, kind="run", inputs=args.input or (), overwrite=args.overwrite)  # fail before any work
    except ScalegptError as e:
        if "--resume" not in str(e):
            raise
        raise ScalegptError(f"--out {args.out}: a run is already there; pass --overwrite to start it again, or "
                            f"--out DIR for a new one (to train it further: scalegpt train --out {args.out} "
                            "--resume --train.max_steps N)") from None
    inputs, name, prompt = choose_inputs(args)
    data_dir = Path(args.data_dir or Path("data") / f"quickstart-{name}")
    overrides = [("data.dir", str(data_dir)), ("eval.prompt", prompt)]
    if args.max_steps is not None:
        overrides += [("train.max_steps", str(args.max_steps)), ("train.time_budget", "")]
    if args.time_budget is not None:
        overrides.append(("train.time_budget", args.time_budget))
    if args.device is not None:
        overrides.append(("train.device", args.device))
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq:
            raise ScalegptError(f"--set {item}: expected SECTION.KEY=VALUE")
        overrides.append((key.strip(), value))
    config = load_config(preset, overrides)  # every bad value fails here, before any work
    from scalegpt.resources import check_config_memory

    check_config_memory(config)  # a model or batch that cannot fit fails before the data is prepared
    prepare_data(inputs, data_dir, args.tokenizer, args.overwrite)
    budget = config.train.time_budget
    if budget:
        print(f"quickstart: training for {budget} of steps (train.time_budget): the step count follows this machine's "
              "speed, so a fast and a slow machine take about the same time (--max-steps N for a fixed count)")
    trainer = Trainer(config, args.out, overwrite=args.overwrite)
    result = trainer.fit()
    if result.stopped_by is not None:
        return exit_code(result)
    sample = generate(trainer.raw_model, trainer.tokenizer, prompt, max_new_tokens=args.sample_tokens, temperature=0.8,
                      seed=config.train.seed, device=trainer.device)[0]
    run = Path(args.out)
    print("\n" + "=" * 72)
    steps = f"{result.step} steps" + (f" (time budget {budget})" if budget else "")
    print(f"quickstart done in {time.time() - started:.0f} s: {steps}, "
          f"val loss {result.val_loss:.4f}" if result.val_loss is not None else steps)
    print(f"  checkpoint: {result.checkpoint}")
    print(f"  log:        {run / 'log.txt'}")
    print(f"  plot:       {run / 'loss.png'}")
    prompt_arg = f" --prompt {shlex.quote(prompt)}" if prompt.strip() else ""
    print(f"  sample it:  scalegpt sample --checkpoint {run}{prompt_arg}")
    if result.step < config.schedule.warmup_steps:
        print(f"  WARNING:    only {result.step} steps (the preset's warmup alone is {config.schedule.warmup_steps}): "
              "expect noise below; train longer (--time-budget 5m, or --max-steps 1500)")
    print("-" * 72 + f"\n{prompt}{sample}\n" + "=" * 72)
    return exit_code(result)
