"""scalegpt compare RUN... [--group NAME=PATTERN[,PATTERN...] ...] [--out compare.png] [--json]"""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("compare", help="compare runs: final/best val loss, bpb, HellaSwag, speed; groups with "
                                       "mean ± std and Welch's t-test")
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="run directories (each with a metrics.jsonl)")
    p.add_argument("--group", action="append", default=[], metavar="NAME=PATTERN",
                   help="a group of runs (e.g. seeds of one recipe): NAME='runs/a/seed*' (glob patterns, comma-"
                        "separated; quote them); repeatable")
    p.add_argument("--out", default=None, metavar="PNG", help="also draw the val loss of every run against steps, "
                   "tokens and wall time into this image")
    p.add_argument("--json", action="store_true", help="print JSON instead of the tables")
    p.set_defaults(func=run_compare)


def parse_groups(items: list[str]) -> dict[str, list[str]]:
    import glob

    from scalegpt.errors import ScalegptError

    groups: dict[str, list[str]] = {}
    for item in items:
        name, sep, patterns = item.partition("=")
        name = name.strip()
        if not sep or not name or not patterns.strip():
            raise ScalegptError(f"--group expects NAME=PATTERN (e.g. A='runs/a/seed*'), got '{item}'")
        if name in groups:
            raise ScalegptError(f"--group {name} is given twice")
        runs: list[str] = []
        for pattern in (p.strip() for p in patterns.split(",") if p.strip()):
            matched = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            if not matched:
                raise ScalegptError(f"--group {name}: '{pattern}' matches no run directory")
            runs += [m.rstrip("/") for m in matched if m.rstrip("/") not in runs]
        groups[name] = runs
    return groups


def run_compare(args) -> int:
    import json

    from scalegpt.compare import condition_notes, format_groups, format_runs, group_stats, summarize_run, summary_json
    from scalegpt.errors import ScalegptError

    groups = parse_groups(args.group)
    group_of = {run: name for name, runs in groups.items() for run in runs}
    order = [r.rstrip("/") for r in args.runs] + [r for runs in groups.values() for r in runs]
    order = list(dict.fromkeys(order))
    if not order:
        raise ScalegptError("give run directories and/or --group NAME=PATTERN")
    if args.out is not None:  # before any work: the image must not replace a file it reads or one of the user's
        from pathlib import Path

        from scalegpt.outputs import check_output

        check_output(args.out, kind="image", inputs=[Path(r) / "metrics.jsonl" for r in order])
    summaries = {run: summarize_run(run) for run in order}
    stats = group_stats({n: [summaries[r] for r in runs] for n, runs in groups.items()}) if groups else None
    notes = condition_notes(list(summaries.values()))
    if args.json:
        print(json.dumps({**summary_json(list(summaries.values()), group_of, stats), "conditions": notes}, indent=1))
    else:
        print(format_runs(list(summaries.values()), group_of))
        if stats is not None:
            print()
            print(format_groups(stats))
        for note in notes:
            print(f"note: {note}")
    if args.out:
        import sys

        from scalegpt.plot import plot_val_curves

        out = plot_val_curves({run: s.val_curve for run, s in summaries.items()}, args.out, group_of)
        print(f"wrote {out}", file=sys.stderr)
    return 0
