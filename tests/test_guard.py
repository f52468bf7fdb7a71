"""The step guard: non-finite skips, the abort, the spike z-score, state that survives torch.save/load, and the same
through the trainer (NaN injected into the forward or a gradient in-process, fp16 GradScaler ordering, resume)."""
import io
import json
import math
import random

import pytest
import torch

from scalegpt.errors import ScalegptError
from scalegpt.guard import GuardConfig, StepGuard

NAN, INF = float("nan"), float("inf")


def test_finite_steps_pass_and_nonfinite_are_skipped_and_counted():
    g = StepGuard(GuardConfig(max_consecutive_skips=10))
    assert g.should_step(3.0, 1.0, step=0)
    assert g.should_step(NAN, 1.0, step=1) is False
    assert "non-finite loss" in g.last_reason and "step 1" in g.last_reason
    assert g.should_step(3.0, INF, step=2) is False
    assert "non-finite grad norm" in g.last_reason
    assert g.should_step(3.0, -INF) is False
    assert (g.skipped_total, g.consecutive_skips, g.skipped_nonfinite) == (3, 3, 3)
    assert g.should_step(2.9, 1.0)
    assert (g.skipped_total, g.consecutive_skips, g.last_reason) == (3, 0, None)


def test_tensors_are_accepted():
    g = StepGuard()
    assert g.should_step(torch.tensor(2.0), torch.tensor(0.5))
    assert not g.should_step(torch.tensor(float("nan")), torch.tensor(0.5))


def test_abort_after_k_consecutive_skips_names_the_checkpoint():
    g = StepGuard(GuardConfig(max_consecutive_skips=3))
    g.last_checkpoint = "runs/x/checkpoints/step_000010"
    assert not g.should_step(NAN, NAN, step=11)
    assert not g.should_step(NAN, NAN, step=12)
    with pytest.raises(ScalegptError) as e:
        g.should_step(NAN, 1.0, step=13)
    msg = str(e.value)
    assert msg.startswith("aborting: 3 consecutive steps skipped (last: non-finite loss (loss=nan")
    assert "step 13" in msg and "intact at runs/x/checkpoints/step_000010" in msg
    assert "\n" not in msg


def test_an_applied_step_resets_the_run_of_skips():
    g = StepGuard(GuardConfig(max_consecutive_skips=2))
    for _ in range(10):  # alternating bad/good never reaches 2 in a row
        assert not g.should_step(NAN, 1.0)
        assert g.should_step(1.0, 1.0)
    assert g.skipped_total == 10


def test_abort_without_a_checkpoint_says_so():
    g = StepGuard(GuardConfig(max_consecutive_skips=1))
    with pytest.raises(ScalegptError, match="no checkpoint had been written yet"):
        g.should_step(INF, 1.0)


def test_zero_max_consecutive_never_aborts_and_skip_nonfinite_off_lets_nan_through():
    g = StepGuard(GuardConfig(max_consecutive_skips=0))
    for _ in range(50):
        assert not g.should_step(NAN, NAN)
    assert g.skipped_total == 50
    off = StepGuard(GuardConfig(skip_nonfinite=False))
    assert not off.enabled
    assert off.should_step(NAN, NAN)
    assert off.skipped_total == 0


def test_grad_scaler_overflow_is_left_to_the_scaler():
    g = StepGuard(GuardConfig(max_consecutive_skips=2), grad_scaler=True)
    for _ in range(5):  # fp16 backs off its scale several times at the start; that is no reason to abort
        assert g.should_step(4.0, INF)
    assert (g.scaler_overflows, g.skipped_total) == (5, 0)
    assert not g.should_step(NAN, INF)  # a NaN loss is still never stepped on
    assert g.skipped_total == 1


@pytest.mark.parametrize("bad", [dict(max_consecutive_skips=-1), dict(spike_window=1), dict(spike_zscore=0.0)])
def test_bad_config_is_a_clear_error(bad):
    with pytest.raises(ScalegptError, match="guard."):
        GuardConfig(**bad)


def _noisy(rng, n, mean=3.0, sd=0.05):
    return [mean + rng.gauss(0, sd) for _ in range(n)]


def test_spike_guard_skips_outliers_only_after_warmup():
    rng = random.Random(0)
    g = StepGuard(GuardConfig(spike_guard=True, spike_window=20, spike_zscore=6.0, max_consecutive_skips=3))
    assert g.should_step(50.0, 1.0)  # during warm-up nothing is a spike: early losses move fast
    g = StepGuard(GuardConfig(spike_guard=True, spike_window=20, spike_zscore=6.0, max_consecutive_skips=3))
    for loss, norm in zip(_noisy(rng, 20), _noisy(rng, 20, 1.0, 0.02)):
        assert g.should_step(loss, norm)
    assert g.should_step(3.05, 1.01)  # ordinary noise
    assert g.should_step(1.0, 1.0)  # a sudden *drop* is not a spike
    assert not g.should_step(6.0, 1.0, step=40)
    assert g.last_reason.startswith("loss spike (z-score") and g.skipped_spike == 1
    assert not g.should_step(3.0, 10.0)
    assert g.last_reason.startswith("grad norm spike")
    assert g.should_step(3.0, 1.0)
    assert (g.skipped_total, g.skipped_spike, g.skipped_nonfinite) == (2, 2, 0)


def test_spikes_do_not_enter_the_window():
    g = StepGuard(GuardConfig(spike_guard=True, spike_window=5, spike_zscore=3.0, max_consecutive_skips=0))
    for v in [3.0, 3.1, 2.9, 3.0, 3.1]:
        assert g.should_step(v, 1.0 + (v - 3.0))
    # If skipped values were remembered, repeated spikes would drag the mean up until they passed.
    for _ in range(20):
        assert not g.should_step(9.0, 1.0)
    assert g.skipped_total == 20


def test_flat_window_does_not_flag_rounding_noise():
    g = StepGuard(GuardConfig(spike_guard=True, spike_window=4))
    for _ in range(4):
        assert g.should_step(2.0, 1.0)
    assert g.should_step(2.0 + 1e-6, 1.0 + 1e-7)
    assert not g.should_step(2.5, 1.0)


def test_state_round_trips_through_weights_only_load_and_decides_identically():
    rng = random.Random(1)
    cfg = GuardConfig(spike_guard=True, spike_window=8, spike_zscore=4.0, max_consecutive_skips=0)
    values = [(l, n) for l, n in zip(_noisy(rng, 60), _noisy(rng, 60, 1.0, 0.03))]
    for i in (15, 30, 31, 45):
        values[i] = (values[i][0] * 3, values[i][1])
    values[20] = (NAN, 1.0)
    whole = StepGuard(cfg)
    expected = [whole.should_step(l, n) for l, n in values]

    first = StepGuard(cfg)
    got = [first.should_step(l, n) for l, n in values[:25]]
    buf = io.BytesIO()
    torch.save({"guard": first.state_dict()}, buf)
    buf.seek(0)
    resumed = StepGuard(cfg)
    resumed.load_state_dict(torch.load(buf, weights_only=True)["guard"])
    got += [resumed.should_step(l, n) for l, n in values[25:]]
    assert got == expected
    assert resumed.state_dict() == whole.state_dict()
    assert not all(expected) and whole.skipped_spike >= 3 and whole.skipped_nonfinite == 1


def test_load_state_dict_rejects_garbage_and_trims_to_a_smaller_window():
    g = StepGuard()
    with pytest.raises(ScalegptError, match="guard state"):
        g.load_state_dict({"skipped_total": 1})
    big = StepGuard(GuardConfig(spike_guard=True, spike_window=10))
    for i in range(10):
        big.should_step(3.0 + i / 100, 1.0)
    small = StepGuard(GuardConfig(spike_guard=True, spike_window=4))
    small.load_state_dict(big.state_dict())
    assert small.state_dict()["loss_window"] == big.state_dict()["loss_window"][-4:]
    assert math.isclose(small.state_dict()["loss_window"][-1], 3.09)


# ------------------------------------------------------------------------------------ through the trainer


def _tiny_run_config(data_dir, steps: int, **guard):
    from scalegpt.config import config_from_dict

    return config_from_dict({
        "model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32},
        "data": {"dir": str(data_dir)},
        "train": {"max_steps": steps, "global_batch_tokens": 4 * 32, "micro_batch_size": 4, "device": "cpu",
                  "precision": "fp32", "compile": "false"},
        "schedule": {"warmup_steps": 2},
        "eval": {"interval": 0, "at_start": False, "samples": 0},
        "log": {"interval": 1, "plot": False, "progress": "false"},
        "checkpoint": {"interval": 2, "keep_last": 0},
        "guard": guard,
    })


@pytest.fixture(scope="module")
def char_data(tmp_path_factory, shakespeare_text):
    from scalegpt.prepare import prepare

    root = tmp_path_factory.mktemp("guard-data")
    (root / "corpus.txt").write_text(shakespeare_text[:50_000], encoding="utf-8")
    prepare([str(root / "corpus.txt")], out=root / "data", tokenizer="char", progress=False)
    return root / "data"


def _poison(trainer, steps, kind="loss", scale=float("nan")):
    """Make the forward (kind='loss') or one gradient (kind='grad') of the given 1-based steps bad, in-process."""
    if kind == "loss":
        forward = trainer.raw_model.forward

        def poisoned(idx, targets=None, **kw):
            out = forward(idx, targets, **kw)
            if targets is not None and trainer.step + 1 in steps:
                out = out * scale  # the loss
            return out

        trainer.raw_model.forward = poisoned
    else:
        param = trainer.raw_model.transformer.h[0].mlp.c_fc.weight
        param.register_hook(lambda g: g * scale if trainer.step + 1 in steps else g)


def _count_updates(trainer):
    calls = []
    step = trainer.optimizer.step

    def counted(*a, **k):
        calls.append(trainer.step + 1)
        return step(*a, **k)

    trainer.optimizer.step = counted
    return calls


def _finite(model):
    return all(torch.isfinite(p).all() for p in model.parameters())


def test_trainer_skips_nan_loss_and_nan_grad_steps(char_data, tmp_path):
    from scalegpt.metrics import read_log
    from scalegpt.train import Trainer

    said = []
    trainer = Trainer(_tiny_run_config(char_data, 6), tmp_path / "run", echo=said.append)
    _poison(trainer, {3}, "loss")
    _poison(trainer, {5}, "grad")
    updates = _count_updates(trainer)
    trainer.fit()
    assert updates == [1, 2, 4, 6]  # steps 3 and 5 never reached the optimizer
    assert (trainer.guard.skipped_total, trainer.guard.skipped_nonfinite, trainer.guard.consecutive_skips) == (2, 2, 0)
    assert _finite(trainer.raw_model)
    assert any(s.startswith("step 3: skipped (non-finite loss") for s in said)
    assert any(s.startswith("step 5: skipped (non-finite grad norm") for s in said)
    log = read_log(tmp_path / "run" / "log.txt")
    assert log["skip"] == [(3, 1.0), (5, 2.0)]
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    skips = [r for r in rows if r["kind"] == "skip"]
    assert [r["step"] for r in skips] == [3, 5] and "non-finite grad norm" in skips[1]["reason"]
    assert skips[1]["skipped_total"] == 2


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_skipped_step_leaves_weights_and_optimizer_untouched(char_data, tmp_path, optimizer):
    from scalegpt.checkpoint import load_model_dir
    from scalegpt.train import Trainer
    from scalegpt.checkpoint import load_state

    config = _tiny_run_config(char_data, 3)
    config.optim.name = optimizer
    trainer = Trainer(config, tmp_path / "run", echo=lambda s: None)
    _poison(trainer, {3}, "loss")
    trainer.fit()
    ckpts = tmp_path / "run" / "checkpoints"
    before, after = load_model_dir(ckpts / "step_000002")[0], load_model_dir(ckpts / "step_000003")[0]
    assert all(torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values()))
    opt_before = load_state(ckpts / "step_000002")["optimizer"]["state"]
    opt_after = load_state(ckpts / "step_000003")["optimizer"]["state"]
    assert opt_before.keys() == opt_after.keys()
    # AdamW's step count and moments, Muon's momentum buffer: every tensor of the state as it was
    assert all(torch.equal(opt_before[i][k], opt_after[i][k]) for i in opt_after for k in opt_after[i])
    assert any("momentum_buffer" in s for s in opt_after.values()) == (optimizer == "muon")
    assert all(p.grad is None for p in trainer.raw_model.parameters())  # nothing leaks into the next step


def test_trainer_aborts_after_consecutive_skips_and_the_checkpoint_survives(char_data, tmp_path):
    from scalegpt.checkpoint import load_model_dir
    from scalegpt.train import Trainer

    trainer = Trainer(_tiny_run_config(char_data, 20, max_consecutive_skips=3), tmp_path / "run",
                      echo=lambda s: None)
    _poison(trainer, set(range(4, 100)), "loss")
    with pytest.raises(ScalegptError) as e:
        trainer.fit()
    msg = str(e.value)
    assert msg.startswith("aborting: 3 consecutive steps skipped (last: non-finite loss (loss=nan")
    assert "at step 6" in msg and "step_000004" in msg
    model, _ = load_model_dir(tmp_path / "run" / "checkpoints" / "step_000004")
    assert _finite(model)


def test_cli_abort_is_one_line_and_exit_code_2(char_data, tmp_path, monkeypatch, run_cli):
    from scalegpt.model import GPT

    forward = GPT.forward
    calls = []

    def nan_after_two(self, idx, targets=None, **kw):
        out = forward(self, idx, targets, **kw)
        calls.append(1)
        return out * float("nan") if targets is not None and len(calls) > 2 else out

    monkeypatch.setattr(GPT, "forward", nan_after_two)
    rc, out, err = run_cli("train", "--data.dir", char_data, "--out", tmp_path / "run", "--model.n_layer", "1",
                           "--model.n_head", "2", "--model.n_embd", "16", "--model.block_size", "16",
                           "--train.global_batch_tokens", "32", "--train.micro_batch_size", "2",
                           "--train.max_steps", "50", "--train.device", "cpu", "--train.compile", "false",
                           "--eval.interval", "0", "--eval.at_start", "false", "--log.plot", "false",
                           "--guard.max_consecutive_skips", "2")
    assert rc == 2
    assert err.strip().splitlines()[-1].startswith("scalegpt: error: aborting: 2 consecutive steps skipped")


def test_trainer_spike_guard_skips_a_loss_spike(char_data, tmp_path):
    from scalegpt.train import Trainer

    trainer = Trainer(_tiny_run_config(char_data, 14, spike_guard=True, spike_window=5, spike_zscore=6.0),
                      tmp_path / "run", echo=lambda s: None)
    _poison(trainer, {12}, "loss", scale=50.0)
    updates = _count_updates(trainer)
    trainer.fit()
    assert 12 not in updates and len(updates) == 13
    assert trainer.guard.skipped_spike == 1 and trainer.guard.skipped_nonfinite == 0


def test_guard_counters_survive_resume(char_data, tmp_path):
    from scalegpt.train import Trainer

    trainer = Trainer(_tiny_run_config(char_data, 4), tmp_path / "run", echo=lambda s: None)
    _poison(trainer, {3}, "loss")
    trainer.fit()
    cfg = _tiny_run_config(char_data, 6)
    resumed = Trainer(cfg, tmp_path / "run", resume=True, echo=lambda s: None)
    assert resumed.step == 4 and resumed.guard.skipped_total == 1
    assert resumed.guard.last_checkpoint is not None and resumed.guard.last_checkpoint.endswith("step_000004")


def test_fp16_nan_step_is_skipped_and_the_scaler_still_backs_off(char_data, tmp_path):
    # CPU autocast + GradScaler("cpu") run the same code path as CUDA fp16, so this checks the trainer's ordering:
    # unscale_ -> guard -> no scaler.step on a bad step -> scaler.update() anyway.
    from scalegpt.train import Trainer

    cfg = _tiny_run_config(char_data, 4)
    cfg.train.precision = "fp16"
    trainer = Trainer(cfg, tmp_path / "run", echo=lambda s: None)
    assert trainer.scaler is not None and trainer.guard.grad_scaler
    _poison(trainer, {2}, "loss")
    scales = {}
    update = trainer.scaler.update

    def recorded_update(*a, **k):
        update(*a, **k)
        scales[trainer.step + 1] = trainer.scaler.get_scale()  # trainer.step counts the update after this call

    trainer.scaler.update = recorded_update
    updates = _count_updates(trainer)
    trainer.fit()
    assert 2 not in updates and trainer.guard.skipped_nonfinite == 1
    assert scales[2] == scales[1] / 2  # the NaN step's update() still ran and halved the scale
    assert _finite(trainer.raw_model)


def test_endless_fp16_overflow_aborts_instead_of_silently_stalling():
    from scalegpt.guard import MAX_SCALER_OVERFLOWS_IN_A_ROW

    g = StepGuard(GuardConfig(max_consecutive_skips=5), grad_scaler=True)
    for _ in range(MAX_SCALER_OVERFLOWS_IN_A_ROW - 1):
        assert g.should_step(3.0, INF)
    assert g.should_step(3.0, 1.0)  # one good step: the scaler found its level, the count starts again
    assert g.state_dict()["consecutive_overflows"] == 0
    for _ in range(MAX_SCALER_OVERFLOWS_IN_A_ROW - 1):
        g.should_step(3.0, NAN)
    restored = StepGuard(GuardConfig(max_consecutive_skips=5), grad_scaler=True)
    restored.load_state_dict(g.state_dict())  # the count survives a resume
    with pytest.raises(ScalegptError, match=r"fp16 gradients overflowed 30 steps in a row up to step 99.*bf16"):
        restored.should_step(3.0, INF, step=99)
