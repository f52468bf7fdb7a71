"""scalegpt train --config configs/X.toml|PRESET [--section.key VALUE ...] [--out RUN_DIR] [--resume | --overwrite] [--device D]

Every config field is also a command-line option (`--optim.lr 3e-4`); `scalegpt train --help` lists them all with
their docs, read from scalegpt/config.py."""
from __future__ import annotations

import argparse
from pathlib import Path

DEST_PREFIX = "config:"


def register(sub) -> None:
    from scalegpt.config import CHOICES, fields_table

    p = sub.add_parser(
        "train", help="train a GPT from a config (single device, or under torchrun)", allow_abbrev=False,
        usage="scalegpt train [--config FILE] [--section.key VALUE ...] [--out RUN_DIR] [--resume | --overwrite]",
        description="Train a GPT. Values come from the defaults, then --config, then --section.key options.",
        epilog="examples:\n  scalegpt train --config configs/shakespeare-char.toml --data.dir data/shakespeare-char "
               "--out runs/shakespeare\n  scalegpt train --out runs/shakespeare --resume\n"
               "  torchrun --standalone --nproc_per_node=8 -m scalegpt train --config configs/gpt2-124m.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="a TOML file ([model], [train], ... sections), or the name of a shipped preset "
                   "(quickstart, shakespeare-char, gpt2-124m; see configs/)")
    p.add_argument("--out", help="the run directory (default: runs/<config name>)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the run in --out from its latest checkpoint (start it if it has none)")
    mode.add_argument("--overwrite", action="store_true", help="delete an existing run in --out and start again")
    p.add_argument("--device", help="shorthand for --train.device (cpu, cuda, cuda:N, mps)")
    p.add_argument("--seeds", metavar="S1,S2,...", help="train the same config once per seed, one after the other, "
                   "into OUT/seed<S> (for scalegpt compare --group NAME='OUT/seed*'); not under torchrun")
    groups = {}
    for f in fields_table():
        if f.section not in groups:
            groups[f.section] = p.add_argument_group(f"[{f.section}]")
        choices = CHOICES.get(f.key)
        metavar = "|".join(choices) if choices else f.type.__name__.upper()
        default = repr(f.default) if isinstance(f.default, str) else f.default
        groups[f.section].add_argument(f"--{f.key}", dest=DEST_PREFIX + f.key, metavar=metavar,
                                       default=argparse.SUPPRESS, help=f"{f.doc} (default {default})")
    groups["model"].add_argument("--model.preset", dest=DEST_PREFIX + "model.preset", metavar="NAME",
                                 default=argparse.SUPPRESS, help="a named shape (gpt2, gpt2-medium, ..., tiny); "
                                 "model keys given beside it win")
    p.set_defaults(func=run_train)
    _suggest_on_unknown(p)


def _suggest_on_unknown(parser: argparse.ArgumentParser) -> None:
    """A misspelt option becomes a one-line ScalegptError naming the closest valid option (argparse alone prints the
    whole usage and only says 'unrecognized'). The error is raised when the command runs, like every other one."""
    original = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        namespace, extras = original(args, namespace)
        if extras:
            message = _unknown_message(parser, extras)

            def fail(_args):
                from scalegpt.errors import ScalegptError

                raise ScalegptError(message)

            namespace.func = fail
        return namespace, []

    parser.parse_known_args = parse_known_args


def _unknown_message(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    unknown = [a for a in extras if a.startswith("-")]
    if not unknown:
        return f"unexpected argument {extras[0]!r}; options look like --section.key VALUE"
    name = unknown[0].split("=", 1)[0]
    options = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
    from scalegpt.config import PRESET_KEY, suggest

    hint = suggest(name, [o[2:] for o in options] + [PRESET_KEY], prefix="--").replace("'", "")
    return f"unknown option {name}{hint or '; see scalegpt train --help for every option'}"


def config_overrides(args) -> list[tuple[str, str]]:
    overrides = [(k[len(DEST_PREFIX):], v) for k, v in vars(args).items() if k.startswith(DEST_PREFIX)]
    if args.device:
        overrides.append(("train.device", args.device))
    return overrides


def run_train(args) -> int:
    from scalegpt.config import load_config
    from scalegpt.errors import ScalegptError
    from scalegpt.outputs import check_output_path
    from scalegpt.train import Trainer, exit_code

    config_path = args.config
    if args.out is None:
        if config_path is None:
            raise ScalegptError("pass --out RUN_DIR (or --config FILE, whose name then names runs/<name>)")
        args.out = str(Path("runs") / Path(config_path).stem)
    check_output_path(args.out)  # '' or '.' would make the current directory the run (or the parent of the seeds)
    run_dir = Path(args.out)
    if config_path is None and args.resume and (run_dir / "config.toml").is_file():
        config_path = run_dir / "config.toml"  # resuming with no --config: the run's own resolved config
    if args.seeds is not None:
        return _train_seeds(args, config_path, run_dir)
    notes: list[str] = []
    config = load_config(config_path, config_overrides(args), notes)
    for note in notes:
        print(note)
    if config_path is None and not args.resume:
        print(cost_warning(config))
    trainer = Trainer(config, run_dir, resume=args.resume, overwrite=args.overwrite)
    result = trainer.fit()
    if trainer.strategy.is_main:
        print_summary(result)
    trainer.strategy.teardown()
    return exit_code(result)


def cost_warning(config) -> str:
    """One line on what a config-less run (the default model, GPT-2 124M-sized) costs, before it starts."""
    m = config.model
    params = 12 * m.n_layer * m.n_embd ** 2 / 1e6
    return (f"no --config: training the default model (~{params:.0f}M non-embedding parameters in {m.n_layer} layers, "
            f"{config.train.global_batch_tokens:,} tokens per step, {config.train.max_steps:,} steps): days on a CPU; "
            "for a first run use --config quickstart (minutes) or --config shakespeare-char")


def parse_seeds(text: str) -> list[int]:
    from scalegpt.errors import ScalegptError

    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ScalegptError(f"--seeds expects comma-separated integers like 1,2,3, got '{text}'") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ScalegptError(f"--seeds expects distinct comma-separated integers like 1,2,3, got '{text}'")
    return seeds


def _train_seeds(args, config_path, out: Path) -> int:
    """One run per seed into OUT/seed<S>, sequentially in this process; stops at the first run that does not finish."""
    import os

    from scalegpt.config import load_config
    from scalegpt.errors import ScalegptError
    from scalegpt.train import Trainer, exit_code

    if "LOCAL_RANK" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ:
        raise ScalegptError("--seeds runs the seeds one after the other in one process: launch it without torchrun "
                            "(or loop over --train.seed under torchrun yourself)")
    seeds = parse_seeds(args.seeds)
    if any(key == "train.seed" for key, _ in config_overrides(args)):
        raise ScalegptError("give either --seeds or --train.seed, not both")
    for seed in seeds:
        run_dir = out / f"seed{seed}"
        if args.resume and config_path is None and (run_dir / "config.toml").is_file():
            config = load_config(run_dir / "config.toml", config_overrides(args))
        else:
            config = load_config(config_path, config_overrides(args) + [("train.seed", str(seed))], notes := [])
            for note in notes:
                print(note)
        print(f"=== seed {seed}: {run_dir}")
        trainer = Trainer(config, run_dir, resume=args.resume, overwrite=args.overwrite)
        result = trainer.fit()
        print_summary(result)
        trainer.strategy.teardown()
        if exit_code(result) != 0:
            return exit_code(result)
    print(f"{len(seeds)} runs in {out}; compare them with: scalegpt compare --group A='{out}/seed*'")
    return 0


def print_summary(result) -> None:
    run = result.run_dir
    print(f"run directory: {run}")
    if result.checkpoint is not None:
        print(f"  checkpoint: {result.checkpoint}  (scalegpt sample --checkpoint {run})")
    print(f"  log:        {run / 'log.txt'}  (metrics: {run / 'metrics.jsonl'})")
    if (run / "loss.png").is_file():
        print(f"  plot:       {run / 'loss.png'}")
