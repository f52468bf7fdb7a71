"""train.time_budget: which steps are timed, and the max_steps decided from a clock (driven by hand here)."""
from __future__ import annotations

import pytest

from scalegpt.budget import MAX_MEASURED_STEPS, SKIP_STEPS, TimeBudget
from scalegpt.errors import ScalegptError


def run_clock(budget: TimeBudget, step_seconds: float, first_steps_seconds: float = 0.0, pause_at: int = -1,
              pause_seconds: float = 100.0, eval_at_start: float = 0.0):
    """Feed the budget a fake clock: each update takes step_seconds (the untimed first ones first_steps_seconds);
    an evaluation of eval_at_start seconds comes first, and one of pause_seconds after update `pause_at`.
    Returns (decided max_steps, at update)."""
    now = 1000.0
    budget.start(now)
    if eval_at_start:
        now += eval_at_start
        budget.pause(eval_at_start, evaluation=True)
    step = budget.first - 1 - SKIP_STEPS
    while True:
        step += 1
        now += first_steps_seconds if step < budget.first else step_seconds
        decided = budget.after_step(step, now)
        if decided is not None:
            return decided, step
        if step == pause_at:
            now += pause_seconds
            budget.pause(pause_seconds, evaluation=True)


def test_the_timed_window_and_the_decision():
    budget = TimeBudget("1m", 0, "cosine", warmup_steps=100, decay_steps=0)
    assert (budget.first, budget.last) == (SKIP_STEPS + 1, SKIP_STEPS + MAX_MEASURED_STEPS)
    assert budget.needs_sync(SKIP_STEPS) and budget.needs_sync(budget.last) and not budget.needs_sync(budget.first)
    # 2 slow first steps (compilation: 5 s), then 0.5 s per step; a 3 s evaluation in the window is no step time
    max_steps, at = run_clock(budget, 0.5, first_steps_seconds=5.0, pause_at=budget.first + 1, pause_seconds=3.0)
    assert at == budget.last
    assert budget.ms_per_step == pytest.approx(500.0)
    spent = 2 * 5.0 + MAX_MEASURED_STEPS * 0.5 + 3.0
    assert max_steps == budget.last + int((60 - spent) / 0.5)  # eval.interval 0: no evaluations to plan for
    assert budget.describe(max_steps) == f"time budget 1m: measured 500.0 ms/step over 8 steps -> max_steps = {max_steps}"


def test_evaluations_are_planned_into_the_budget():
    """A 10 s evaluation at step 0 and eval.interval 20: every 20 steps cost 20 x 0.5 s + 10 s, and the last
    evaluation is paid for too."""
    budget = TimeBudget("2m", 0, "cosine", warmup_steps=100, decay_steps=0, eval_interval=20)
    max_steps, at = run_clock(budget, 0.5, first_steps_seconds=0.5, eval_at_start=10.0)
    spent = 10.0 + (SKIP_STEPS + MAX_MEASURED_STEPS) * 0.5
    assert max_steps == at + int((120 - spent - 10.0) / (0.5 + 10.0 / 20))
    assert "and 10.0 s per evaluation every 20 steps -> max_steps" in budget.describe(max_steps)


def test_a_resumed_run_measures_from_where_it_is():
    budget = TimeBudget("20s", 40, "constant", warmup_steps=0, decay_steps=0)
    assert budget.first == 40 + SKIP_STEPS + 1
    max_steps, _ = run_clock(budget, 1.0, first_steps_seconds=1.0)
    assert max_steps == budget.last + (20 - (SKIP_STEPS + MAX_MEASURED_STEPS))


def test_a_spent_budget_stops_at_once():
    budget = TimeBudget("3s", 0, "cosine", warmup_steps=50, decay_steps=0)
    max_steps, at = run_clock(budget, 1.0)
    assert max_steps == at  # no time left: no further step


def test_timed_steps_stay_inside_the_warmup_when_the_decay_follows_max_steps():
    short = TimeBudget("1m", 0, "cosine", warmup_steps=5, decay_steps=0)
    assert short.last == 5  # update 5 uses lr(4): still warmup, which does not depend on max_steps
    assert TimeBudget("1m", 0, "cosine", warmup_steps=5, decay_steps=1000).last == SKIP_STEPS + MAX_MEASURED_STEPS
    assert TimeBudget("1m", 0, "constant", warmup_steps=0, decay_steps=0).last == SKIP_STEPS + MAX_MEASURED_STEPS
    for kind in ("cosine", "wsd"):
        with pytest.raises(ScalegptError, match="raise schedule.warmup_steps, set schedule.decay_steps"):
            TimeBudget("1m", 0, kind, warmup_steps=SKIP_STEPS, decay_steps=0)


# ------------------------------------------------------------------------------------- the schedule a budget gets


def test_a_warmup_longer_than_a_fifth_of_the_budget_steps_is_fitted_to_them():
    from scalegpt.budget import fit_schedule

    assert fit_schedule(1500, 100, 0) == (100, 0, None)  # the preset on a machine as fast as it expects
    warmup, decay, note = fit_schedule(200, 100, 0)
    assert (warmup, decay) == (40, 0) and note == "schedule fitted to the 200 steps: warmup 100 -> 40 steps"
    warmup, decay, note = fit_schedule(43, 100, 500)  # the quickstart on a loaded 2-core CPU
    assert (warmup, decay) == (8, 43)
    assert note.startswith("schedule fitted to the 43 steps: warmup 100 -> 8 steps, decay 500 -> 43 steps. WARNING: "
                           "43 steps is far fewer than this config expects (its warmup alone is 100)")
    assert fit_schedule(3, 100, 0)[0] == 1


def test_a_fixed_step_count_shorter_than_its_warmup_is_kept_with_a_warning():
    from scalegpt.budget import schedule_note

    assert schedule_note(500, 100, 0) is None
    assert schedule_note(10, 100, 0).startswith("WARNING: schedule.warmup_steps (100) >= train.max_steps (10)")
    assert "ends before the learning rate has decayed" in schedule_note(100, 10, 200)


def test_quickstart_with_too_few_steps_says_so(tmp_path, run_cli, data_dir):
    rc, out, err = run_cli("quickstart", "--input", data_dir / "tinyshakespeare.txt", "--max-steps", "3",
                           "--out", tmp_path / "run", "--data-dir", tmp_path / "data", "--sample-tokens", "8",
                           "--set", "eval.interval=0", "--set", "eval.at_start=false", "--set", "model.n_layer=1",
                           "--set", "model.n_embd=32", "--set", "eval.samples=0")
    assert rc == 0, err
    assert "WARNING: schedule.warmup_steps (100) >= train.max_steps (3): the learning rate never reaches optim.lr" in out
