"""loss.png: train and validation loss against steps and against tokens, for one run or several side by side, and
a third panel of validation bits per byte against steps when metrics.jsonl has it. A mixture's runs ([[data.mix]])
add a dotted val line per source (log.txt's `val:NAME` lines, metrics.jsonl's "sources").

    scalegpt plot runs/a runs/b --out compare.png

Reads each run's log.txt; tokens per step come from the run's resolved config.toml (global_batch_tokens).
"""
from __future__ import annotations

from pathlib import Path

from scalegpt._fs import MISSING, atomic_file, path_problem
from scalegpt.errors import ScalegptError
from scalegpt.metrics import LOG_FILE, read_log


def tokens_per_step(run_dir: Path) -> int | None:
    from scalegpt.config import load_toml

    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        return None
    return load_toml(path).get("train", {}).get("global_batch_tokens")


def val_bpb(run_dir: Path, source: str | None = None) -> list[tuple[int, float]]:
    """[(step, bits per byte)] of the val records of a run's metrics.jsonl (empty without the file or the figure);
    with `source`, that source's figure of a mixture's records."""
    import os

    from scalegpt.metrics import METRICS_FILE, read_metrics_file

    path, out = Path(run_dir) / METRICS_FILE, []
    if not os.path.lexists(path):
        return out
    for _, row in read_metrics_file(path):
        if row["kind"] != "val":
            continue
        step = row["step"]
        if source is not None:
            row = (row.get("sources") or {}).get(source) if isinstance(row.get("sources"), dict) else None
        bpb = row.get("bpb") if isinstance(row, dict) else None
        if isinstance(bpb, (int, float)) and not isinstance(bpb, bool):
            out.append((step, float(bpb)))
    return out


def mixture_sources(series: dict) -> list[str]:
    """The source names of a mixture's per-source val lines in log.txt (`{step} val:NAME {loss}`)."""
    return [kind.split(":", 1)[1] for kind in series if kind.startswith("val:")]


def smooth(values: list[float], weight: float) -> list[float]:
    """Exponential moving average with bias correction (as TensorBoard draws it), so the first points are not
    pulled towards 0."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def plot_runs(run_dirs, out_path, smoothing: float | None = None) -> Path:
    """Draw loss.png for the given run directories and return its path (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and never steal focus from a terminal
    import matplotlib.pyplot as plt

    out_path = Path(out_path)
    if out_path.is_dir():
        raise ScalegptError(f"{out_path}: is a directory; give an image path such as {out_path / 'loss.png'}")
    image_format = out_path.suffix.lstrip(".").lower() or "png"
    supported = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    if image_format not in supported:
        raise ScalegptError(f"{out_path}: unknown image format '.{image_format}'; use one of "
                            f"{', '.join('.' + f for f in sorted(supported))}")
    runs = []
    for run in map(Path, run_dirs):
        log = run / LOG_FILE
        why = path_problem(log)
        if why is not None:
            why = "not found" if why == MISSING else why
            raise ScalegptError(f"{log}: {why}; is {run} a scalegpt run directory?")
        runs.append((run, read_log(log), tokens_per_step(run)))
    bpb = [val_bpb(run) for run, _, _ in runs]
    if any(bpb):
        fig, (by_step, by_tokens, bpb_ax) = plt.subplots(1, 3, figsize=(17, 4.5))
    else:
        fig, (by_step, by_tokens) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (run, series, per_step) in enumerate(runs):
        color = colors[i % len(colors)]
        label = run.name if len(runs) > 1 else ""
        per_source = [(f"val:{name}", dict(marker=".", ms=3, lw=1, ls=":")) for name in mixture_sources(series)]
        for kind, style in (("train", dict(alpha=0.9, lw=1)), ("val", dict(marker="o", ms=3, lw=1.5, ls="--")),
                            *per_source):
            points = series.get(kind, [])
            if not points:
                continue
            steps = [s for s, _ in points]
            values = [v for _, v in points]
            if kind == "train":
                weight = smoothing if smoothing is not None else (0.9 if len(points) > 200 else 0.0)
                values = smooth(values, weight) if weight else values
            name = f"{label} {kind}".strip()
            by_step.plot(steps, values, color=color, label=name, **style)
            if per_step:
                by_tokens.plot([s * per_step for s in steps], values, color=color, label=name, **style)
    if any(bpb):
        for i, ((run, _, _), points) in enumerate(zip(runs, bpb)):
            if points:
                bpb_ax.plot([p[0] for p in points], [p[1] for p in points], color=colors[i % len(colors)],
                            marker="o", ms=3, lw=1.5, ls="--", label=f"{run.name if len(runs) > 1 else ''} val".strip())
            for name in mixture_sources(runs[i][1]):  # a mixture: each source's bpb too
                points = val_bpb(run, name)
                bpb_ax.plot([p[0] for p in points], [p[1] for p in points], color=colors[i % len(colors)],
                            marker=".", ms=3, lw=1, ls=":", label=f"{run.name if len(runs) > 1 else ''} val:{name}".strip())
        bpb_ax.set_xlabel("step")
        bpb_ax.set_ylabel("val bits per byte")
        bpb_ax.grid(alpha=0.3)
        bpb_ax.legend()
    by_step.set_xlabel("step")
    by_tokens.set_xlabel("tokens")
    for ax in (by_step, by_tokens):
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    if not by_tokens.lines:
        by_tokens.set_title("tokens per step unknown (no config.toml)")
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(out_path) as tmp:  # a viewer never sees a half-written image
            fig.savefig(tmp, dpi=110, format=image_format)
    finally:
        plt.close(fig)
    return out_path


def plot_val_curves(curves: dict[str, list[tuple[int, int | None, float | None, float]]], out_path,
                    group_of: dict[str, str] | None = None) -> Path:
    """compare.png: the val loss of several runs against steps, tokens seen and wall-clock time, overlaid.

    curves: run -> [(step, tokens seen, elapsed seconds, loss)]; runs of one group share a colour and a legend entry."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    group_of = group_of or {}
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    keys = list(dict.fromkeys(group_of.get(run, run) for run in curves))
    labelled = set()
    for run, points in curves.items():
        key = group_of.get(run, run)
        color = colors[keys.index(key) % len(colors)]
        label = None if key in labelled else key
        labelled.add(key)
        for ax, column in zip(axes, (0, 1, 2)):
            xy = [(p[column], p[3]) for p in points if p[column] is not None]
            if xy:
                ax.plot([x for x, _ in xy], [y for _, y in xy], color=color, marker="o", ms=3, lw=1.3, alpha=0.85,
                        label=label if ax is axes[0] else None)
    for ax, xlabel in zip(axes, ("step", "tokens", "wall-clock seconds")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("val loss")
        ax.grid(alpha=0.3)
        if not ax.lines:
            ax.set_title(f"no {xlabel} recorded")
    if axes[0].lines:
        axes[0].legend()
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(out_path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return out_path
