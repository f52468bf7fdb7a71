"""The `scalegpt` command. Each sub-command lives in its own module here and exposes `register(subparsers)`,
which adds its parser and sets `func` (called with the parsed args; returns an exit code or None)."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from scalegpt._fs import os_error_message
from scalegpt.errors import ScalegptError

COMMAND_MODULES = [
    "scalegpt.cli.tokenizer_cmd",  # scalegpt tokenizer train
    "scalegpt.cli.prepare_cmd",  # scalegpt prepare
    "scalegpt.cli.check_cmd",  # scalegpt check DIR
    "scalegpt.cli.export_cmd",  # scalegpt export
    "scalegpt.cli.eval_cmd",  # scalegpt eval loss|hellaswag|harness
    "scalegpt.cli.sample_cmd",  # scalegpt sample
    "scalegpt.cli.train_cmd",  # scalegpt train
    "scalegpt.cli.plot_cmd",  # scalegpt plot
    "scalegpt.cli.compare_cmd",  # scalegpt compare
    "scalegpt.cli.quickstart_cmd",  # scalegpt quickstart
    "scalegpt.cli.serve_cmd",  # scalegpt serve
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scalegpt", description="Pretrain GPT-style language models.")
    from scalegpt import __version__

    parser.add_argument("--version", action="version", version=f"scalegpt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)  # inside: a numeric flag out of its range raises (scalegpt.cli.numbers)
        return args.func(args) or 0
    except (ScalegptError, OSError) as e:
        # Under torchrun every rank prints it: torchrun stops the others as soon as one rank exits, so printing on
        # rank 0 alone could lose the message. An OSError that reaches here is one the user caused and can fix (a
        # missing or unreadable path, a read-only or full disk): the writers have already put back what they had.
        message = os_error_message(e) if isinstance(e, OSError) else str(e)
        print(f"scalegpt: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scalegpt: interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """The console entry point (`scalegpt ...`, `python -m scalegpt ...`): main(), then leave with its exit code."""
    leave(main())


def leave(code: int) -> None:
    """sys.exit(code); under torchrun, os._exit(code) after flushing. There the work is done and the process group
    destroyed, and C++ static destructors could still find a joinable gloo/store thread and call std::terminate,
    turning a finished rank's exit code 0 into SIGABRT (seen now and then on CPU/gloo)."""
    if "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
