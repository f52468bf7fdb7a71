"""A wall-clock budget for training (`train.time_budget = "3m"`), turned into a step count once, early in the run.

The trainer times a few of its first steps and fixes `max_steps` from the measured speed; from then on the run is an
ordinary max_steps run (the schedule a pure function of the step), and the number is stored in every checkpoint, so a
resumed run reads it back instead of measuring again and stays bit-identical to an uninterrupted one.

Which steps are timed: the first SKIP_STEPS are left out (allocations, the optimizer state's first touch,
torch.compile), then up to MAX_MEASURED_STEPS are timed. While max_steps is unknown, the learning rate must not depend
on it, so when the decay follows max_steps (schedule.decay_steps = 0 with a cosine or wsd schedule) the timed steps
must all lie inside the linear warmup, which is a function of the step alone. A warmup too short for that is refused
at start; an explicit schedule.decay_steps or the constant schedule lifts the limit.

The budget covers training steps from the first one on (the untimed first steps included); evaluations, samples and
checkpoints are extra, as they are kept out of tokens/s.
"""
from __future__ import annotations

from scalegpt.config import parse_duration
from scalegpt.errors import ScalegptError

SKIP_STEPS = 2  # first steps left out of the timing: allocations, optimizer-state init, compilation
MAX_MEASURED_STEPS = 8  # steps timed; more steady the figure, but the later the decision


class TimeBudget:
    """Decides max_steps from the speed of steps [first, last] (1-based update numbers, both timed).

    The trainer calls start(now) before its first step, exclude(seconds) for time spent outside training steps, and
    after_step(step, now) after each update with the device synchronised at the window's edges (`needs_sync`); once
    after_step returns a number, that is max_steps."""

    def __init__(self, text: str, start_step: int, schedule_kind: str, warmup_steps: int, decay_steps: int):
        self.text, self.seconds = text, parse_duration(text, "train.time_budget")
        self.first = start_step + SKIP_STEPS + 1
        self.last = start_step + SKIP_STEPS + MAX_MEASURED_STEPS
        if decay_steps == 0 and schedule_kind != "constant":
            # the update made after `s` updates uses lr(s): the last timed update is number `last`, at lr(last - 1)
            self.last = min(self.last, warmup_steps)
            if self.last < self.first:
                raise ScalegptError(
                    f"train.time_budget needs the throughput measured inside the warmup (its learning rate does not "
                    f"depend on max_steps), but schedule.warmup_steps = {warmup_steps} ends before update "
                    f"{self.first}; raise schedule.warmup_steps, set schedule.decay_steps, or use "
                    "schedule.kind = constant")
        self.started = self.window_start = None
        self.excluded = self.window_excluded = 0.0
        self.ms_per_step: float | None = None

    def needs_sync(self, step: int) -> bool:
        """Whether the device must be synchronised after update `step` for an honest clock reading."""
        return step in (self.first - 1, self.last)

    def start(self, now: float) -> None:
        self.started = now

    def exclude(self, seconds: float) -> None:
        self.excluded += seconds

    def after_step(self, step: int, now: float) -> int | None:
        if step == self.first - 1:
            self.window_start, self.window_excluded = now, self.excluded
        if step != self.last or self.window_start is None:
            return None
        step_time = (now - self.window_start - (self.excluded - self.window_excluded)) / (self.last - self.first + 1)
        self.ms_per_step = step_time * 1000
        spent = now - self.started - self.excluded
        remaining = max(0.0, self.seconds - spent)
        return step + int(remaining / max(step_time, 1e-9))

    def describe(self, max_steps: int) -> str:
        return (f"time budget {self.text}: measured {self.ms_per_step:.1f} ms/step over "
                f"{self.last - self.first + 1} steps -> max_steps = {max_steps}")
