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

import time

from scalegpt.config import parse_duration
from scalegpt.errors import ScalegptError

# The trainer reads time through this name only, so a test can swap in a clock that advances a fixed amount per
# reading and get the same max_steps on a loaded machine as on a quiet one (tests/test_budget.py).
clock = time.perf_counter
MAX_WARMUP_SHARE = 0.2  # a warmup longer than this share of max_steps is shortened to it (time budget)

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


def fit_schedule(max_steps: int, warmup_steps: int, decay_steps: int) -> tuple[int, int, str | None]:
    """(warmup, decay, note): the schedule a time budget's max_steps gets. The preset's warmup was sized for the steps
    a typical machine trains; on a slower one it could outlast the run (the learning rate would never reach its
    peak nor decay). So the warmup is cut to MAX_WARMUP_SHARE of the steps and an explicit decay that ends after
    the last step to the last step. A pure function of max_steps: a resumed run computes the same schedule."""
    warmup = min(warmup_steps, max(1, int(max_steps * MAX_WARMUP_SHARE)))
    decay = min(decay_steps, max_steps) if decay_steps else 0
    if (warmup, decay) == (warmup_steps, decay_steps):
        return warmup, decay, None
    note = (f"schedule fitted to the {max_steps} steps: warmup {warmup_steps} -> {warmup} steps"
            + (f", decay {decay_steps} -> {decay} steps" if decay != decay_steps else ""))
    if max_steps < warmup_steps:
        note += (f". WARNING: {max_steps} steps is far fewer than this config expects (its warmup alone is "
                 f"{warmup_steps}): expect an undertrained model; give a longer train.time_budget, or a fixed "
                 "--train.max_steps")
    return warmup, decay, note


def schedule_note(max_steps: int, warmup_steps: int, decay_steps: int) -> str | None:
    """A one-line warning for an explicit max_steps the schedule does not fit (kept as asked: the user chose it)."""
    if warmup_steps >= max_steps:
        return (f"WARNING: schedule.warmup_steps ({warmup_steps}) >= train.max_steps ({max_steps}): the learning rate "
                "never reaches optim.lr; lower schedule.warmup_steps")
    if decay_steps > max_steps:
        return (f"note: schedule.decay_steps ({decay_steps}) > train.max_steps ({max_steps}): the run ends before "
                "the learning rate has decayed")
    return None


def plan_steps(config, step: int, budget_max_steps: int | None) -> tuple[int | None, "TimeBudget | None", list[str]]:
    """(max_steps, the budget still to measure, lines to print) of a run at `step`: train.max_steps; with a time
    budget the number it fixed (from the checkpoint), or None and a TimeBudget that will measure it."""
    c = config
    if not c.train.time_budget:
        note = schedule_note(c.train.max_steps, c.schedule.warmup_steps, c.schedule.decay_steps)
        return c.train.max_steps, None, [note] if note else []
    if budget_max_steps is not None:
        return budget_max_steps, None, [f"time budget {c.train.time_budget}: max_steps = {budget_max_steps} (fixed "
                                        "when the run measured its speed; read from the checkpoint)"]
    s = c.schedule
    budget = TimeBudget(c.train.time_budget, step, s.kind, s.warmup_steps, s.decay_steps, c.eval.interval)
    return None, budget, [f"time budget {c.train.time_budget}: max_steps will be fixed from the speed of updates "
                          f"{budget.first}-{budget.last} (train.max_steps is ignored)"]
