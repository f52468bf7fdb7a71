"""Comparing runs: one summary per run from its metrics.jsonl, and for groups of runs (seeds of one recipe) the mean
and standard deviation of each figure and Welch's t-test on the final validation loss.

    summaries = [summarize_run(d) for d in ("runs/a/seed1", "runs/a/seed2")]
    stats = group_stats({"A": [...], "B": [...]})       # mean, std, n per figure and group
    welch(stats_a_losses, stats_b_losses)               # (t, p): scipy.stats.ttest_ind(equal_var=False)

Figures of a run (None when the run did not record them):
- final / best val loss and bits per byte: the last and the lowest of its `val` records;
- hellaswag: acc_norm of the last `hella` record;
- tokens: tokens_seen of the last `train` record; steps: its step;
- wall_s: elapsed_s of the last record (wall-clock seconds of the run, the time between a kill and a resume excluded);
- tokens_per_s: the mean of the `speed` records' training throughput (evaluation and checkpoint time excluded).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scalegpt._fs import MISSING, path_problem
from scalegpt.errors import ScalegptError
from scalegpt.metrics import METRICS_FILE, read_metrics_file

FIGURES = ("final_val_loss", "best_val_loss", "final_bpb", "best_bpb", "hellaswag", "tokens", "wall_s", "tokens_per_s")


@dataclass
class RunSummary:
    run: str
    steps: int | None = None
    final_val_loss: float | None = None
    best_val_loss: float | None = None
    final_bpb: float | None = None
    best_bpb: float | None = None
    hellaswag: float | None = None
    tokens: int | None = None
    wall_s: float | None = None
    tokens_per_s: float | None = None
    precision: str | None = None  # from the run's "runtime" record
    threads: int | None = None
    dataset: str | None = None
    # val loss curve: (step, tokens seen, elapsed seconds or None, loss)
    val_curve: list[tuple[int, int | None, float | None, float]] = field(default_factory=list)


def read_metrics(run_dir) -> list[dict]:
    """The records of RUN/metrics.jsonl. A torn last line (a run killed mid-write) is skipped; any other bad line, a
    missing or an empty file is a one-line error naming the file."""
    run_dir = Path(run_dir)
    why = path_problem(run_dir, "dir")
    if why is not None:
        raise ScalegptError(f"{run_dir}: {'no such run directory' if why == MISSING else why}")
    path = run_dir / METRICS_FILE
    if path_problem(path) == MISSING:
        raise ScalegptError(f"{path}: not found; is it a scalegpt run directory?")
    records = [row for _, row in read_metrics_file(path)]
    if not records:
        raise ScalegptError(f"{path}: empty (no records); did the run log anything?")
    return records


def _number(row: dict, key: str) -> float | None:
    value = row.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def summarize_run(run_dir) -> RunSummary:
    records = read_metrics(run_dir)
    s = RunSummary(run=str(run_dir))
    by_kind: dict[str, list[dict]] = {}
    for row in records:
        by_kind.setdefault(row["kind"], []).append(row)
    val = [r for r in by_kind.get("val", []) if _number(r, "loss") is not None]
    if val:
        losses = [_number(r, "loss") for r in val]
        s.final_val_loss, s.best_val_loss = losses[-1], min(losses)
        s.val_curve = [(r["step"], r.get("tokens_seen"), _number(r, "elapsed_s"), _number(r, "loss")) for r in val]
    bpb = [_number(r, "bpb") for r in val if _number(r, "bpb") is not None]
    if bpb:
        s.final_bpb, s.best_bpb = bpb[-1], min(bpb)
    hella = [_number(r, "acc_norm") for r in by_kind.get("hella", []) if _number(r, "acc_norm") is not None]
    s.hellaswag = hella[-1] if hella else None
    train = by_kind.get("train", [])
    if train:
        s.steps = train[-1]["step"]
        tokens = _number(train[-1], "tokens_seen")
        s.tokens = int(tokens) if tokens is not None else None
    elapsed = [_number(r, "elapsed_s") for r in records if _number(r, "elapsed_s") is not None]
    s.wall_s = elapsed[-1] if elapsed else None
    speeds = [_number(r, "tokens_per_s") for r in by_kind.get("speed", []) if _number(r, "tokens_per_s") is not None]
    s.tokens_per_s = sum(speeds) / len(speeds) if speeds else None
    runtime = by_kind.get("runtime", [{}])[-1]  # how the run computed and on what (the trainer's "runtime" record)
    plain = lambda v: v if isinstance(v, (str, int)) and not isinstance(v, bool) else None
    s.precision, s.threads = plain(runtime.get("precision")), plain(runtime.get("threads"))
    s.dataset = (f"{runtime['data_dir']} ({runtime.get('data_tokens')} tokens)"
                 if isinstance(runtime.get("data_dir"), str) else None)
    return s


# Differences that make a comparison of losses unfair, named beside the table (and before any t-test is trusted).
CONDITIONS = {"steps": "steps", "precision": "precision", "dataset": "dataset"}


def condition_notes(summaries: list[RunSummary]) -> list[str]:
    """One note per condition in which the runs differ (steps, precision, dataset), naming the values."""
    notes = []
    for fig, name in CONDITIONS.items():
        values = {getattr(s, fig) for s in summaries if getattr(s, fig) is not None}
        if len(values) > 1:
            shown = ", ".join(f"{s.run}: {getattr(s, fig)}" for s in summaries if getattr(s, fig) is not None)
            notes.append(f"the runs differ in {name} ({shown}): their losses are not a like-for-like comparison")
    return notes


# ------------------------------------------------------------------------------------------------------ statistics


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1; None for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """(t, two-sided p) of Welch's unequal-variance t-test, by scipy."""
    from scipy import stats

    result = stats.ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.pvalue)


def group_stats(groups: dict[str, list[RunSummary]]) -> dict:
    """{"groups": {name: {"runs": n, figure: {"mean", "std", "n"}}}, "tests": [...], "notes": [...]}.

    tests: Welch's t-test on the final val loss for every pair of groups with >= 2 runs each having one."""
    out: dict = {"groups": {}, "tests": [], "notes": []}
    finals: dict[str, list[float]] = {}
    for name, runs in groups.items():
        entry: dict = {"runs": len(runs)}
        for fig in FIGURES:
            values = [getattr(r, fig) for r in runs if getattr(r, fig) is not None]
            if values:
                mean, std = mean_std(values)
                entry[fig] = {"mean": mean, "std": std, "n": len(values)}
        out["groups"][name] = entry
        finals[name] = [r.final_val_loss for r in runs if r.final_val_loss is not None]
        if len(finals[name]) < 2:
            out["notes"].append(f"group {name} has {len(finals[name])} run(s) with a final val loss: no standard "
                                "deviation and no t-test for it (needs >= 2 runs)")
    names = [n for n in groups if len(finals[n]) >= 2]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            undefined = len(set(finals[a])) == 1 and len(set(finals[b])) == 1
            t, p = (math.nan, math.nan) if undefined else welch(finals[a], finals[b])
            undefined = undefined or math.isnan(p)
            out["tests"].append({"a": a, "b": b, "metric": "final_val_loss", "test": "Welch's t-test (two-sided)",
                                 "t": None if undefined else t, "p": None if undefined else p,
                                 "n_a": len(finals[a]), "n_b": len(finals[b])})
            if undefined:
                out["notes"].append(f"{a} vs {b}: the t-test is undefined (both groups have zero variance)")
    return out


# ------------------------------------------------------------------------------------------------------ formatting


def _fmt(value, fig: str) -> str:
    if value is None:
        return "-"
    if fig == "tokens":
        return f"{value:,.0f}"
    if fig == "wall_s":
        return f"{value:.1f}s"
    if fig == "tokens_per_s":
        return f"{value:,.0f}"
    return f"{value:.4f}"


HEADERS = {"final_val_loss": "final val", "best_val_loss": "best val", "final_bpb": "final bpb", "best_bpb": "best bpb",
           "hellaswag": "hellaswag", "tokens": "tokens", "wall_s": "wall", "tokens_per_s": "tok/s"}


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def format_runs(summaries: list[RunSummary], group_of: dict[str, str]) -> str:
    header = ["run"] + (["group"] if group_of else []) + ["steps"] + [HEADERS[f] for f in FIGURES]
    rows = [[s.run] + ([group_of.get(s.run, "")] if group_of else []) + [_fmt(s.steps, "tokens")]
            + [_fmt(getattr(s, f), f) for f in FIGURES] for s in summaries]
    return _table(header, rows)


def format_groups(stats: dict) -> str:
    header = ["group", "runs"] + [HEADERS[f] for f in FIGURES]
    rows = []
    for name, entry in stats["groups"].items():
        cells = [name, str(entry["runs"])]
        for fig in FIGURES:
            m = entry.get(fig)
            cells.append("-" if m is None else _fmt(m["mean"], fig) + ("" if m["std"] is None
                                                                          else " ± " + _fmt(m["std"], fig)))
        rows.append(cells)
    lines = [_table(header, rows), "(mean ± sample standard deviation over the runs of each group)"]
    for t in stats["tests"]:
        if t["p"] is None:
            continue  # explained by a note
        lines.append(f"{t['a']} vs {t['b']}: final val loss, {t['test']}: t = {t['t']:.3f}, p = {t['p']:.4g} "
                     f"(n = {t['n_a']}, {t['n_b']})")
    lines += [f"note: {n}" for n in stats["notes"]]
    return "\n".join(lines)


def summary_json(summaries: list[RunSummary], group_of: dict[str, str], stats: dict | None) -> dict:
    runs = []
    for s in summaries:
        d = asdict(s)
        d.pop("val_curve")
        if group_of:
            d["group"] = group_of.get(s.run)
        runs.append(d)
    return {"runs": runs, **(stats or {})}
