"""What a run writes about itself: log.txt (the seed format), metrics.jsonl, optional TensorBoard, and MFU figures.

log.txt, one line per event, losses with 6 decimals:
    {step} train {loss}
    {step} val {loss}
    {step} hella {acc}
metrics.jsonl: one JSON object per logged event with every figure ({"step": .., "kind": "train" | "val" | ..., ...}),
and "elapsed_s": wall-clock seconds since the run started (a resumed run continues from its last record, so the time
between the kill and the restart is not counted).
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import time
from pathlib import Path

import torch

from scalegpt._fs import read_jsonl, read_text, write_text_atomically
from scalegpt.errors import ScalegptError

LOG_FILE = "log.txt"
METRICS_FILE = "metrics.jsonl"


class RunLog:
    """Appends to log.txt and metrics.jsonl in a run directory. Only rank 0 creates one.

    On resume, lines about steps after the checkpoint (written before the run died) are dropped first, so the files
    read as one uninterrupted run."""

    def __init__(self, run_dir, tensorboard: bool = False, resume_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            truncate_after(self.run_dir / LOG_FILE, resume_step, lambda line: int(line.split()[0]))
            truncate_metrics_after(self.run_dir / METRICS_FILE, resume_step)
        self._clock_start = time.monotonic() - (last_elapsed(self.run_dir / METRICS_FILE) if resume_step is not None
                                                else 0.0)
        self._log = open(self.run_dir / LOG_FILE, "a", encoding="utf-8")
        self._metrics = open(self.run_dir / METRICS_FILE, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("log.tensorboard = true but tensorboard is not installed (pip install 'scalegpt[tensorboard]'); "
                      "skipping TensorBoard")
            else:
                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=resume_step)

    def line(self, step: int, kind: str, value: float) -> None:
        with _naming(self._log):
            self._log.write(f"{step} {kind} {value:.6f}\n")

    def record(self, step: int, kind: str, **figures) -> None:
        row = {"step": step, "kind": kind, **{k: _json_safe(v) for k, v in figures.items()},
               "elapsed_s": round(time.monotonic() - self._clock_start, 3)}
        with _naming(self._metrics):
            self._metrics.write(json.dumps(row, allow_nan=False) + "\n")
        if self._tb is not None:
            for name, value in figures.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._tb.add_scalar(f"{kind}/{name}", value, step)

    def flush(self) -> None:
        for f in (self._log, self._metrics):
            with _naming(f):
                f.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            for f in (self._log, self._metrics):
                with contextlib.suppress(OSError):  # the buffer that could not be flushed: already reported
                    f.close()
        if self._tb is not None:
            self._tb.close()


@contextlib.contextmanager
def _naming(f):
    """A write error (a full disk: the kernel says ENOSPC, but not which file) names the file it hit."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror, f.name) from None
        raise


def truncate_after(path: Path, step: int, step_of) -> None:
    """Rewrite `path` keeping only lines whose step is <= `step` (and dropping a torn last line)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():  # garbage lines are dropped
        try:
            if step_of(line) <= step:
                kept.append(line + "\n")
        except (ValueError, IndexError, KeyError, json.JSONDecodeError):
            continue
    write_text_atomically(path, "".join(kept))


def read_metrics_file(path, text: str | None = None) -> list[tuple[int, dict]]:
    """The one reader of a metrics.jsonl: [(line number, record)], each record an object with an integer step and a
    string kind. A line that is not (a list, a number, no step, deep nesting...) is one error naming path:line; a torn
    last line is skipped (see _fs.read_jsonl)."""
    return read_jsonl(path, {"step": int, "kind": str}, what="a scalegpt metrics.jsonl", record="metrics record",
                      text=text)


def truncate_metrics_after(path: Path, step: int) -> None:
    """Rewrite a metrics.jsonl keeping the records up to `step`. Every line is checked before anything is written, so
    a damaged file stops the resume with one line and is left as it was."""
    if not os.path.lexists(path):
        return
    text = read_text(path, "a scalegpt metrics.jsonl", kind="JSON lines")
    lines = text.split("\n")
    kept = [lines[n - 1] + "\n" for n, row in read_metrics_file(path, text) if row["step"] <= step]
    write_text_atomically(path, "".join(kept))


def last_elapsed(path: Path) -> float:
    """The elapsed_s of the last record of a metrics.jsonl that has one (0 without)."""
    if not os.path.lexists(path):
        return 0.0
    for _, row in reversed(read_metrics_file(path)):
        value = row.get("elapsed_s")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return 0.0


def read_log(path) -> dict[str, list[tuple[int, float]]]:
    """{kind: [(step, value), ...]} from a log.txt."""
    out: dict[str, list[tuple[int, float]]] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ScalegptError(f"{path}: not a scalegpt log (not UTF-8 text at byte {e.start})") from None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        try:
            out.setdefault(parts[1], []).append((int(parts[0]), float(parts[2])))
        except ValueError:
            continue
    return out


# ------------------------------------------------------------------------------------------------------ MFU


# Dense peak FLOP/s (no sparsity) per GPU model: (bf16/fp16 tensor cores, tf32 tensor cores, plain fp32).
# From the vendors' datasheets; matched as a substring of torch.cuda.get_device_name(), first match wins.
GPU_PEAK_FLOPS = [
    ("B200", 2250e12, 1100e12, 80e12),
    ("H200", 989e12, 494e12, 67e12),
    ("H100 PCIe", 756e12, 378e12, 51e12),
    ("H100", 989e12, 494e12, 67e12),
    ("H800", 989e12, 494e12, 67e12),
    ("A100", 312e12, 156e12, 19.5e12),
    ("A800", 312e12, 156e12, 19.5e12),
    ("L40S", 362e12, 183e12, 91.6e12),
    ("L4", 121e12, 60e12, 30.3e12),
    ("A10G", 70e12, 35e12, 31.2e12),
    ("A10", 125e12, 62.5e12, 31.2e12),
    ("RTX 4090", 165e12, 82.6e12, 82.6e12),
    ("RTX 3090", 71e12, 35.6e12, 35.6e12),
    ("V100", 125e12, 15.7e12, 15.7e12),
    ("T4", 65e12, 8.1e12, 8.1e12),
]


def measure_matmul_peak(device: torch.device, dtype=torch.float32, size: int = 1024, seconds: float = 0.4) -> float:
    """Achieved FLOP/s of a square matmul on this device: the CPU's (or an unknown GPU's) practical peak.

    The best of many short bursts, not their average: on a shared machine other processes steal whole time slices,
    and the peak is what the hardware does when it is not interrupted."""
    # Constant operands: the speed does not depend on the values, and drawing random ones would move the global
    # RNG between seeding and training (a run would then differ depending on whether the peak was cached).
    a = torch.full((size, size), 0.5, device=device, dtype=dtype)
    b = torch.full((size, size), 0.25, device=device, dtype=dtype)
    for _ in range(2):
        a @ b  # warm up the kernels and thread pool
    _sync(device)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0.0:
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def peak_flops(device: torch.device, precision: str, tf32: bool) -> tuple[float, str]:
    """(peak FLOP/s for MFU, where the figure comes from)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, low_precision, tf32_peak, fp32_peak in GPU_PEAK_FLOPS:
            if key in name:
                if precision in ("bf16", "fp16"):
                    return low_precision, f"{name} {precision} datasheet peak"
                return (tf32_peak, f"{name} tf32 datasheet peak") if tf32 else (fp32_peak, f"{name} fp32 peak")
    if device.type != "cpu":
        precision = "fp32"  # an unknown GPU or MPS: the fp32 peak, quick to measure and comparable across runs
    return _measured_peak(device, precision), f"measured {precision} matmul peak on {device.type}"


@functools.lru_cache(maxsize=None)
def _measured_peak(device: torch.device, precision: str) -> float:
    """measure_matmul_peak once per (device, precision) and process, however many trainers it builds."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    return measure_matmul_peak(torch.device(device), dtype)


# ------------------------------------------------------------------------------------------------------ console


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    """Per-step bookkeeping of the trainer: buffers the step losses as device tensors and turns them into log lines,
    metrics and one console line every log.interval steps (one host sync per interval, not per step).

    Every rank keeps one (so that the loss reduction happens on all ranks together); only rank 0 writes."""

    def __init__(self, trainer, max_steps: int | None):
        self.trainer, self.max_steps = trainer, max_steps  # None: not known yet (a time budget is measuring)
        self.interval = trainer.config.log.interval or 1
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor, float]] = []
        self.window_start, self.window_steps, self.excluded = time.perf_counter(), 0, 0.0
        self.bar = None
        wanted = trainer.config.log.progress
        import sys

        if trainer.strategy.is_main and (wanted == "true" or (wanted == "auto" and sys.stdout.isatty())):
            from tqdm import tqdm

            self.bar = tqdm(total=max_steps, initial=trainer.step, unit="step", dynamic_ncols=True, leave=False)

    def after_step(self, loss: torch.Tensor, norm: torch.Tensor, lr: float) -> None:
        step = self.trainer.step
        self.pending.append((step, loss, norm, lr))
        self.window_steps += 1
        if self.bar is not None:
            self.bar.update(1)
        if step % self.interval == 0 or step == self.max_steps:
            self.flush(console=True)

    def set_max_steps(self, max_steps: int) -> None:
        self.max_steps = max_steps
        if self.bar is not None:
            self.bar.total = max_steps
            self.bar.refresh()

    def exclude(self, seconds: float) -> None:
        """Time spent evaluating or checkpointing, kept out of tokens/s and MFU."""
        self.excluded += seconds

    def flush(self, console: bool = False) -> None:
        if not self.pending:
            return
        t = self.trainer
        losses = t.strategy.reduce_mean(torch.stack([p[1] for p in self.pending])).tolist()
        norms = torch.stack([p[2].float() for p in self.pending]).tolist()
        log = t.run_log
        for (step, _, _, lr), loss, norm in zip(self.pending, losses, norms):
            if log is not None:
                log.line(step, "train", loss)
                log.record(step, "train", loss=loss, lr=lr, grad_norm=norm,
                           tokens_seen=step * t.tokens_per_step, **({} if t.guard is None else t.guard.stats()))
        step, _, _, lr = self.pending[-1]
        self.pending = []
        if not console:
            return
        elapsed = time.perf_counter() - self.window_start - self.excluded
        steps = self.window_steps
        self.window_start, self.window_steps, self.excluded = time.perf_counter(), 0, 0.0
        if elapsed <= 0 or steps == 0:
            return
        step_time = elapsed / steps
        tokens_per_s = t.tokens_per_step / step_time
        mfu = t.flops_per_step / step_time / (t.peak_flops * t.strategy.world_size)
        eta = format_duration((self.max_steps - step) * step_time) if self.max_steps is not None else "?"
        of = self.max_steps if self.max_steps is not None else "?"
        if log is not None:
            log.record(step, "speed", tokens_per_s=tokens_per_s, mfu=mfu, ms_per_step=step_time * 1000)
            log.flush()
        line = (f"step {step:>{len(str(of))}}/{of} | loss {losses[-1]:.4f} | "
                      f"lr {lr:.2e} | norm {norms[-1]:.3f} | {tokens_per_s:,.0f} tok/s | MFU {mfu:.1%} | "
                      f"{step_time * 1000:.1f} ms/step | ETA {eta}")
        self.write(line)

    def write(self, line: str) -> None:
        if not self.trainer.strategy.is_main:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            self.trainer.echo(line)

    def close(self) -> None:
        self.flush(console=True)
        if self.bar is not None:
            self.bar.close()


def _json_safe(value):
    """Strict JSON has no NaN/Infinity (jq and most parsers reject them): non-finite floats become "nan"/"inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):  # per-source figures of a mixture's validation
        return {k: _json_safe(v) for k, v in value.items()}
    return value
