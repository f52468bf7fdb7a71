"""Guards that keep bad numbers out of the weights: skip an optimizer step whose loss or gradient norm is NaN/inf
(or, optionally, a z-score spike), count it, and abort after too many skipped steps in a row.

The trainer asks the guard before every optimizer update:

    norm = clip_grad_norm_(...)                # the *global* norm (after unscale_ under fp16)
    if guard.should_step(loss, norm, step=step):
        optimizer.step()                       # or scaler.step(optimizer)
    if scaler is not None:
        scaler.update()                        # also on a skipped step: unscale_ recorded the infs, the scale backs off
    optimizer.zero_grad(set_to_none=True)      # a skipped step's gradients must not leak into the next one

Under DDP/FSDP the trainer passes values that are already the same on every rank: the global gradient norm is computed
from all-reduced (DDP) or sharded-then-reduced (FSDP) gradients, and the loss is all-reduced before the call. So every
rank takes the same decision and the replicas never diverge; the guard itself never communicates.

The guard reads two Python floats per step, i.e. one host sync, which the GradScaler already pays under fp16; with both
checks off (`enabled` is False) the trainer need not call it at all.
"""
from __future__ import annotations

import math

from scalegpt.config import GuardConfig
from scalegpt.errors import ScalegptError


# Each fp16 overflow halves the GradScaler's scale; 30 in a row take it from 2**16 to below 1e-4, where no useful
# gradient survives. Past that the run is not recovering by itself and would silently stop learning.
MAX_SCALER_OVERFLOWS_IN_A_ROW = 30

# A perfectly flat window has std 0, which would make any rounding-level rise an "infinite" z-score; a spike must
# stand out by more than this fraction of the mean as well.
_MIN_REL_STD = 1e-3


def _zscore(window: list[float], value: float) -> float:
    n = len(window)
    mean = sum(window) / n
    var = sum((x - mean) ** 2 for x in window) / n
    std = max(math.sqrt(var), _MIN_REL_STD * abs(mean), 1e-12)
    return (value - mean) / std


def _fmt(x: float) -> str:
    return f"{x:.6g}"


class StepGuard:
    """Decides whether the optimizer may apply this step's gradients, and keeps the counts for logging.

    skipped_total      steps skipped since the run began (survives resume through state_dict)
    consecutive_skips  skipped steps since the last applied one
    last_reason        why the latest step was skipped (None when it was applied)
    last_checkpoint    set by the trainer to the latest checkpoint whose weights are verified (finite, and a forward
                       pass on them gave a finite loss), so the abort message points at one that loads and evaluates

    The spike windows hold only *accepted* steps: a skipped spike never raises the mean that the next value is judged
    against. The windows are kept as plain lists and the mean/std recomputed each step (cheap at these sizes) rather
    than as running sums, so a resumed run takes exactly the decisions an uninterrupted one would.

    `grad_scaler=True` (fp16): a finite loss with an inf/NaN grad norm is the GradScaler's normal overflow, not a bad
    step; the guard lets scaler.step() skip it and lower the scale, and counts it in `scaler_overflows` only.
    """

    def __init__(self, config: GuardConfig | None = None, grad_scaler: bool = False):
        self.config = config if config is not None else GuardConfig()
        self.grad_scaler = grad_scaler
        self.skipped_total = 0
        self.skipped_nonfinite = 0
        self.skipped_spike = 0
        self.scaler_overflows = 0
        self.consecutive_skips = 0
        self.consecutive_overflows = 0
        self.last_reason: str | None = None
        self.last_checkpoint: str | None = None
        self._skips_before_accept = 0
        self._loss_window: list[float] = []
        self._norm_window: list[float] = []

    @property
    def enabled(self) -> bool:
        return self.config.skip_nonfinite or self.config.spike_guard

    def should_step(self, loss: float, grad_norm: float, step: int | None = None) -> bool:
        """True: apply the update. False: skip it (the trainer zeroes the gradients and moves on).

        Raises ScalegptError once max_consecutive_skips steps in a row have been skipped."""
        loss, grad_norm = float(loss), float(grad_norm)
        cfg = self.config
        reason = None
        loss_ok, norm_ok = math.isfinite(loss), math.isfinite(grad_norm)
        if not (loss_ok and norm_ok):
            if self.grad_scaler and loss_ok:
                self.scaler_overflows += 1
                self.consecutive_overflows += 1
                self.last_reason = None
                if cfg.max_consecutive_skips and self.consecutive_overflows >= MAX_SCALER_OVERFLOWS_IN_A_ROW:
                    where = f" up to step {step}" if step is not None else ""
                    raise ScalegptError(
                        f"aborting: fp16 gradients overflowed {self.consecutive_overflows} steps in a row{where}, "
                        f"more than the GradScaler recovers from; {self.checkpoint_note()}. "
                        "Use bf16 or fp32, or lower the learning rate")
                return True  # scaler.step() sees the infs, skips the update and lowers the scale
            if cfg.skip_nonfinite:
                reason = f"non-finite {'loss' if not loss_ok else 'grad norm'}"
                self.skipped_nonfinite += 1
        elif cfg.spike_guard:
            reason = self._spike_reason(loss, grad_norm)
            if reason is not None:
                self.skipped_spike += 1
        if reason is None:
            self._skips_before_accept = self.consecutive_skips  # reject_update may yet find this update was bad
            self.consecutive_skips = 0
            self.consecutive_overflows = 0
            self.last_reason = None
            if loss_ok and norm_ok:
                self._remember(loss, grad_norm)
            return True
        where = f" at step {step}" if step is not None else ""
        self._count_skip(f"{reason} (loss={_fmt(loss)}, grad_norm={_fmt(grad_norm)}{where})")
        return False

    def reject_update(self, step: int | None = None, restored_from: str | None = None) -> None:
        """An update made the weights or the optimizer state non-finite (the trainer checks them when a loss is
        non-finite and before every checkpoint): count a skipped step. The trainer has put the weights back."""
        self.skipped_nonfinite += 1
        # The update accepted last made them so: the skips before it still count, the run is not recovering.
        self.consecutive_skips = max(self.consecutive_skips, self._skips_before_accept)
        where = f" at step {step}" if step is not None else ""
        how = f"; weights and optimizer state restored from {restored_from}" if restored_from else ""
        self._count_skip(f"non-finite weights or optimizer state{where}{how}")

    def _count_skip(self, reason: str) -> None:
        cfg = self.config
        self.skipped_total += 1
        self.consecutive_skips += 1
        self.last_reason = reason
        if cfg.max_consecutive_skips and self.consecutive_skips >= cfg.max_consecutive_skips:
            raise ScalegptError(
                f"aborting: {self.consecutive_skips} consecutive steps skipped (last: {self.last_reason}); "
                f"{self.checkpoint_note()}. "
                "Lower the learning rate, use bf16/fp32 instead of fp16, or check the data, then resume with --resume"
            )

    def checkpoint_note(self) -> str:
        if self.last_checkpoint:
            return f"the last good checkpoint is intact at {self.last_checkpoint}"
        return "no checkpoint had been written yet"

    def _spike_reason(self, loss: float, grad_norm: float) -> str | None:
        cfg = self.config
        # The windows fill together, so one length check covers both. Until full, the mean is too noisy to judge by.
        if len(self._loss_window) < cfg.spike_window:
            return None
        z_loss = _zscore(self._loss_window, loss)
        z_norm = _zscore(self._norm_window, grad_norm)
        if z_loss > cfg.spike_zscore:
            return f"loss spike (z-score {z_loss:.1f} > {cfg.spike_zscore:g})"
        if z_norm > cfg.spike_zscore:
            return f"grad norm spike (z-score {z_norm:.1f} > {cfg.spike_zscore:g})"
        return None

    def _remember(self, loss: float, grad_norm: float) -> None:
        if not self.config.spike_guard:
            return
        for window, value in ((self._loss_window, loss), (self._norm_window, grad_norm)):
            window.append(value)
            if len(window) > self.config.spike_window:
                del window[0]

    def stats(self) -> dict:
        """The figures worth logging (metrics.jsonl) next to each step."""
        return {"skipped_total": self.skipped_total, "consecutive_skips": self.consecutive_skips,
                "skipped_nonfinite": self.skipped_nonfinite, "skipped_spike": self.skipped_spike,
                "scaler_overflows": self.scaler_overflows}

    def state_dict(self) -> dict:
        """Plain ints, floats and lists only, so torch.load(weights_only=True) reads it back."""
        return {**self.stats(), "consecutive_overflows": self.consecutive_overflows,
                "loss_window": list(self._loss_window), "norm_window": list(self._norm_window)}

    def load_state_dict(self, state: dict) -> None:
        try:
            counts = {k: int(state[k]) for k in ("skipped_total", "consecutive_skips", "skipped_nonfinite",
                                                   "skipped_spike", "scaler_overflows")}
            counts["consecutive_overflows"] = int(state.get("consecutive_overflows", 0))
            loss_window = [float(x) for x in state["loss_window"]]
            norm_window = [float(x) for x in state["norm_window"]]
        except (KeyError, TypeError, ValueError) as e:
            raise ScalegptError(f"guard state in the checkpoint is malformed ({e!r})") from None
        if len(loss_window) != len(norm_window):
            raise ScalegptError("guard state in the checkpoint is malformed "
                                "(loss and grad-norm windows differ in length)")
        for k, v in counts.items():
            setattr(self, k, v)
        # A resumed run may use a smaller window than the one that saved the state: keep the most recent values.
        keep = self.config.spike_window
        self._loss_window, self._norm_window = loss_window[-keep:], norm_window[-keep:]
        self.last_reason = None
