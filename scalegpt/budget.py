"""A wall-clock budget for training (`train.time_budget = "3m"`), turned into a step count once, early in the run.

The trainer times a few of its first steps and fixes `max_steps` from the measured speed; from then on the run is an
ordinary max_steps run (the schedule a pure function of the step), and the number is stored in every checkpoint, so a
resumed run reads it back instead of measuring again and stays bit-identical to an uninterrupted one.

Which steps are timed: the first SKIP_STEPS are left out (allocations, the optimizer state's first touch,
torch.compile), then up to MAX_MEASURED_STEPS are timed. While max_steps is unknown, the learning rate must not depend
on it, so when the decay follows max_steps (schedule.decay_steps = 0 with a cosine or wsd schedule) the timed steps
must all lie inside the linear warmup, which is a function of the step alone. A warmup too short for that is refused
at start; an explicit schedule.decay_steps or the constant schedule lifts the limit.

The budget covers the whole of training from the first evaluation or step on: the steps (the untimed first ones
included) and the evaluations, whose cost is planned from the last one seen before the decision (the one at step 0
when eval.at_start): one every eval.interval steps plus one at the end. Checkpoint writes are not planned for (they
are short and rare). So a run takes about the budget on a fast machine and on a slow one; the fast one trains more
steps.
"""
from __future__ import annotations

from scalegpt.config import parse_duration
from scalegpt.errors import ScalegptError

SKIP_STEPS = 2  # first steps left out of the timing: allocations, optimizer-state init, compilation
MAX_MEASURED_STEPS = 8  # steps timed; more steady the figure, but the later the decision


class TimeBudget:
    """Decides max_steps from the speed of steps [first, last] (1-based update numbers, both timed).

    The trainer calls start(now) before its first evaluation or step, pause(seconds, evaluation) for time spent
    outside training steps, and after_step(step, now) after each update with the device synchronised at the window's
    edges (`needs_sync`); once after_step returns a number, that is max_steps."""

    def __init__(self, text: str, start_step: int, schedule_kind: str, warmup_steps: int, decay_steps: int,
                 eval_interval: int = 0):
        self.text, self.seconds = text, parse_duration(text, "train.time_budget")
        self.eval_interval = eval_interval
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
        self.paused = self.window_paused = 0.0
        self.last_eval = 0.0  # seconds of the latest evaluation
        self.ms_per_step: float | None = None

    def needs_sync(self, step: int) -> bool:
        """Whether the device must be synchronised after update `step` for an honest clock reading."""
        return step in (self.first - 1, self.last)

    def start(self, now: float) -> None:
        self.started = now

    def pause(self, seconds: float, evaluation: bool = False) -> None:
        """Time outside training steps (kept out of the step timing); an evaluation's is remembered to plan with."""
        self.paused += seconds
        if evaluation:
            self.last_eval = seconds

    def after_step(self, step: int, now: float) -> int | None:
        if step == self.first - 1:
            self.window_start, self.window_paused = now, self.paused
        if step != self.last or self.window_start is None:
            return None
        step_time = (now - self.window_start - (self.paused - self.window_paused)) / (self.last - self.first + 1)
        self.ms_per_step = step_time * 1000
        evals = self.last_eval if self.eval_interval else 0.0
        remaining = self.seconds - (now - self.started) - evals  # the evaluation after the last step included
        per_step = step_time + evals / max(1, self.eval_interval)
        return step + max(0, int(remaining / max(per_step, 1e-9)))

    def describe(self, max_steps: int) -> str:
        evals = (f" and {self.last_eval:.1f} s per evaluation every {self.eval_interval} steps"
                 if self.eval_interval and self.last_eval else "")
        return (f"time budget {self.text}: measured {self.ms_per_step:.1f} ms/step over "
                f"{self.last - self.first + 1} steps{evals} -> max_steps = {max_steps}")
