"""scalegpt plot RUN_DIR... [--out PNG] [--smoothing W]"""
from __future__ import annotations


def register(sub) -> None:
    from scalegpt.cli.numbers import add_real

    p = sub.add_parser("plot", help="draw train/val loss against steps and tokens for one or several runs")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (each with a log.txt)")
    p.add_argument("--out", default=None, help="image path (default: RUN_DIR/loss.png for one run, loss.png for several)")
    add_real(p, "--smoothing", 0.0, 1.0, high_open=True, default=None,
                   help="EMA weight in [0, 1) for the train curve (default: 0.9 for long runs, none for short ones)")
    p.set_defaults(func=run_plot)


RUN_FILES_READ = ("log.txt", "metrics.jsonl", "config.toml")


def run_plot(args) -> int:
    from pathlib import Path

    from scalegpt.errors import ScalegptError
    from scalegpt.plot import plot_runs

    if args.smoothing is not None and not 0 <= args.smoothing < 1:
        raise ScalegptError(f"--smoothing must be in [0, 1), got {args.smoothing}")
    from scalegpt.outputs import check_output

    out = args.out if args.out is not None else (Path(args.runs[0]) / "loss.png" if len(args.runs) == 1
                                                 else Path("loss.png"))
    check_output(out, kind="image", inputs=[Path(r) / name for r in args.runs for name in RUN_FILES_READ])
    print(f"wrote {plot_runs(args.runs, out, args.smoothing)}")
    return 0
