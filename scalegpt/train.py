"""The training loop: `Trainer(config, run_dir).fit()`.

One step = `accum_steps` micro-steps of forward/backward (gradient sync only on the last one), unscale (fp16), clip,
the guard's verdict, then the optimizer update with the step's learning rate. Everything that changes under
multi-process training goes through a `Strategy` (process group, wrapping, no_sync, clipping, reductions, checkpoint
I/O); the default is one process on one device, and `DistributedStrategy` the DDP/FSDP one (scalegpt.strategy).

No NaN reaches a checkpoint: updates that make weights non-finite are undone, and a checkpoint is written once a
forward pass on its weights gave a finite loss (docs/checkpoints.md, "Non-finite weights and verified checkpoints").

Steps are counted as updates done: step 1 is the first update, `checkpoints/step_000500` holds the state after 500,
and the evaluation logged at step s sees the weights after s updates (step 0: before any).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path

import torch

from scalegpt import config as cfg_mod
from scalegpt._fs import write_text_atomically
from scalegpt.checkpoint import recorded_precision, rng_state, set_rng_state
from scalegpt.checkpoint.train_state import load_state, prepare_run_dir
from scalegpt.config import Config
from scalegpt.errors import ScalegptError
from scalegpt import budget as budget_mod
from scalegpt.metrics import Progress, RunLog, peak_flops
from scalegpt.model import GPT
from scalegpt.optim import build_optimizers, lr_at
from scalegpt.resources import check_training_memory
from scalegpt.signals import StopSignals, TrainResult, run_exit_code as exit_code  # noqa: F401 (exit_code: CLI)
from scalegpt.runtime import (autocast_context, keep_freed_memory, pick_device, pick_precision, pick_threads,
                              seed_everything)
from scalegpt.strategy import Strategy, make_strategy

class Trainer:
    """Builds data, model, optimizer and logs from a Config, then `fit()` trains.

    Attributes worth knowing when extending it: `raw_model` (the plain GPT, for evaluation, sampling and saving),
    `model` (what trains: maybe compiled, maybe wrapped), `optimizer` (a scalegpt.optim.CombinedOptimizer: AdamW,
    or Muon + AdamW), `scaler` (fp16 only), `loader`, `guard`, `strategy`, `step` (updates done), `max_steps` (None
    while a time budget is measuring), `accum_steps`, `tokens_per_step`."""

    def __init__(self, config: Config, run_dir, resume: bool = False, overwrite: bool = False,
                 strategy: Strategy | None = None, echo=print):
        cfg_mod.validate(config)
        self.config, self.run_dir, self.echo = config, Path(run_dir), echo
        self.strategy = strategy if strategy is not None else make_strategy(config.dist)
        if self.strategy.restart_count > 0:  # torchrun --max-restarts brought the job back: continue it
            resume, overwrite = True, False
        self.stops = StopSignals()  # SIGTERM/SIGINT: save at the end of the step, then exit
        self.progress: Progress | None = None  # set by fit()
        resume_from = prepare_run_dir(self.run_dir, resume, overwrite, [config.data.dir]) if self.strategy.is_main else None
        resume_from = self.strategy.broadcast_object(resume_from)
        self._build(resume_from)

    # ------------------------------------------------------------------------------------------------ building

    def _build(self, resume_from: Path | None) -> None:
        c = self.config
        device, device_reason = pick_device(c.train.device, self.strategy.local_rank)
        self.device = self.strategy.setup(device)
        self.threads = None
        if self.device.type == "cpu":  # before the precision probe, which runs at this count
            recorded = load_state(resume_from).get("threads") if resume_from else None
            self.threads, why = pick_threads(c.train.threads, c.train.micro_batch_size * cfg_mod.seq_len(c),
                                             c.model.n_embd, recorded)
            self.say(f"threads: {self.threads} ({why})")
        # Rank 0 chooses for all: on a CPU, auto rests on a timing that could land either side of the line per rank.
        picked = self._pick_precision(resume_from) if self.strategy.is_main else None
        self.precision, precision_reason = self.strategy.broadcast_object(picked)
        self.say(f"device: {self.device} ({device_reason}); precision: {self.precision} ({precision_reason})")
        if self.device.type == "cpu":
            keep_freed_memory()  # no page faults on the step's large re-allocations (see its docstring)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = c.train.tf32
            torch.backends.cudnn.allow_tf32 = c.train.tf32
        seed_everything(c.train.seed + self.strategy.rank)
        self.autocast = autocast_context(self.device, self.precision)

        self._build_data()
        self._build_model()
        self._build_optimizer()
        self.step, self.tokens_seen, self.val_loss, self.last_checkpoint, self.samples = 0, 0, None, None, []
        self.budget_max_steps = self.max_steps = None  # as a time budget fixed it; as planned (both in checkpoints)
        # A checkpoint (step, state, config) waiting for a finite loss on its weights; the checkpoint resumed from.
        self.pending_checkpoint, self.pending_suspect, self.unverified_resume = None, False, None
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        elif self.strategy.is_main and self.run_dir.exists() and any(self.run_dir.iterdir()):
            self.say(f"{self.run_dir} has no checkpoint yet: starting from step 0")
        self.resumed = resume_from is not None
        self._plan_steps()
        self.run_log = None
        if self.strategy.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomically(self.run_dir / "config.toml", cfg_mod.to_toml(c))  # a full disk keeps the old one
            self.run_log = RunLog(self.run_dir, c.log.tensorboard, resume_step=self.step if self.resumed else -1)
            self.run_log.record(self.step, "runtime", device=str(self.device), precision=self.precision,
                                precision_reason=precision_reason, threads=self.threads,
                                data_dir=str(c.data.dir) or ",".join(f"{m.dir}:{m.weight:g}" for m in c.data.mix),
                                data_tokens=sum(s.train.num_tokens for s in self.data.sources),
                                tokenizer=self.tokenizer_spec.get("kind"))
        self.peak_flops, peak_source = peak_flops(self.device, self.precision, c.train.tf32)
        self.flops_per_step = self.raw_model.flops_per_token(self.seq_len) * self.tokens_per_step
        self.say(f"MFU baseline: {self.peak_flops / 1e12:.2f} TFLOP/s ({peak_source})")

    def _pick_precision(self, resume_from: Path | None) -> tuple[str, str]:
        requested = self.config.train.precision
        kept = recorded_precision(resume_from) if requested == "auto" and resume_from else None
        if kept:  # a resumed run computes as it started, so its steps match an uninterrupted run's
            return pick_precision(kept, self.device)[0], f"auto: as the run started (recorded in {resume_from})"
        return pick_precision(requested, self.device)

    def _build_data(self) -> None:
        from scalegpt.tokenizer import token_byte_lengths, tokenizer_from_spec
        from scalegpt.train_data import RunData

        c = self.config
        self.seq_len = cfg_mod.seq_len(c)
        world = self.strategy.world_size
        self.data = RunData(c, self.seq_len, self.strategy.rank, world, self.device, say=self.say)
        self.train_data = self.data.sources[0].train
        self.tokenizer_spec = self.data.tokenizer_spec
        self.tokenizer = tokenizer_from_spec(self.tokenizer_spec)
        tokens_per_micro_step = c.train.micro_batch_size * self.seq_len * world
        if c.train.global_batch_tokens % tokens_per_micro_step:
            raise ScalegptError(
                f"train.global_batch_tokens ({c.train.global_batch_tokens}) must be a multiple of micro_batch_size x "
                f"seq_len x world_size = {c.train.micro_batch_size} x {self.seq_len} x {world} = {tokens_per_micro_step}"
            )
        self.accum_steps = c.train.global_batch_tokens // tokens_per_micro_step
        self.tokens_per_step = c.train.global_batch_tokens
        self.loader = self.data.make_loader(c, c.train.global_batch_tokens // self.seq_len)
        self.val_data = None  # the (first) source's val split: scalegpt.train_data validates every source
        if (c.eval.interval or c.eval.at_start) and self.data.open_validation(c):
            self.val_data = self.data.sources[0].val
            self.byte_lengths = token_byte_lengths(self.tokenizer)  # bytes per token id, for bits per byte
        self.hellaswag = None
        if c.eval.hellaswag:
            from scalegpt.hellaswag import load_hellaswag

            self.hellaswag = load_hellaswag(c.eval.hellaswag, limit=c.eval.hellaswag_examples or None)
        self.say(f"data: {sum(s.train.num_tokens for s in self.data.sources):,} training tokens in "
                 f"{self.data.description}; {self.tokens_per_step:,} tokens per step = {c.train.micro_batch_size} "
                 f"sequences x {self.seq_len} tokens x {world} rank(s) x {self.accum_steps} accumulation step(s)")

    def _build_model(self) -> None:
        c = self.config
        vocab = self.tokenizer_spec["vocab_size"]
        if c.model.vocab_size and c.model.vocab_size < vocab:
            raise ScalegptError(f"model.vocab_size ({c.model.vocab_size}) is smaller than the dataset's tokenizer "
                                f"vocabulary ({vocab}); set it to 0 to take the tokenizer's")
        self.model_config = dataclasses.replace(c.model, vocab_size=c.model.vocab_size or vocab)
        self.say(check_training_memory(self.model_config, c, self.device, self.precision, self.strategy.world_size))
        self.raw_model = GPT(self.model_config).to(self.device)
        self.model = self.strategy.wrap_model(self.raw_model, self.precision)
        self.say(f"model: {self.raw_model.num_params():,} parameters ({c.model.n_layer} layers, {c.model.n_head} heads, "
                 f"{c.model.n_embd} wide, block {c.model.block_size}, vocab {self.model_config.vocab_size}"
                 + "".join(f", {o}" for o in self.model_config.options_changed()) + ")")
        use_compile = c.train.compile == "true" or (c.train.compile == "auto" and self.device.type == "cuda")
        if use_compile:
            # Only the training path is compiled: evaluation and sampling use raw_model, whose variable shapes
            # would otherwise trigger recompiles (and `_orig_mod.` never reaches a checkpoint).
            self.model = torch.compile(self.model)
        self.say(f"torch.compile: {'on' if use_compile else 'off'}")

    def _build_optimizer(self) -> None:
        self.optimizer, lines = build_optimizers(self.raw_model, self.config.optim, self.device.type)
        for line in lines:
            self.say(line)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        from scalegpt.guard import StepGuard

        self.guard = StepGuard(self.config.guard, grad_scaler=self.scaler is not None)

    def say(self, message: str) -> None:
        if not self.strategy.is_main:
            return
        progress = self.progress
        progress.write(message) if progress is not None else self.echo(message)

    # ------------------------------------------------------------------------------------------------ state

    def _plan_steps(self) -> None:
        """self.max_steps (None while a time budget measures it: self.budget) and the schedule it gets."""
        from scalegpt.budget import plan_steps

        planned = self.max_steps if self.resumed else None  # what the checkpoint was trained towards
        self.max_steps, self.budget, lines = plan_steps(self.config, self.step, self.budget_max_steps)
        self._fit_schedule()
        for line in lines:
            self.say(line)
        if planned and self.max_steps and self.max_steps > planned > self.step - 1:
            self.say(f"resumed run planned for {planned} steps now goes to {self.max_steps}: the schedule is "
                     f"stretched to it (lr at step {self.step}: {self.lr(self.step):.3g})")

    def _fit_schedule(self) -> None:
        s = self.config.schedule
        self.warmup_steps, self.decay_steps, note = s.warmup_steps, s.decay_steps, None
        if self.config.train.time_budget and self.max_steps:
            from scalegpt.budget import fit_schedule

            self.warmup_steps, self.decay_steps, note = fit_schedule(self.max_steps, s.warmup_steps, s.decay_steps)
        if note:
            self.say(note)

    def lr(self, step_index: int, peak: float | None = None) -> float:
        """Learning rate of the update made after `step_index` updates, for the peak `peak` (default optim.lr).
        Before a time budget has fixed max_steps, only steps whose lr does not depend on it are asked for."""
        s, c = self.config.schedule, self.config
        decay_steps = self.decay_steps or self.max_steps or 0
        return lr_at(step_index, s.kind, c.optim.lr if peak is None else peak, s.min_lr_ratio, self.warmup_steps,
                     decay_steps, s.wsd_decay_fraction)

    def state_dict(self) -> dict:
        """Everything but the weights and the optimizer that the next step depends on (weights_only-loadable)."""
        return {
            "step": self.step, "tokens_seen": self.tokens_seen,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "loader": self.loader.state_dict(), "guard": self.guard.state_dict(), "rng": rng_state(),
            "val_loss": self.val_loss, "budget_max_steps": self.budget_max_steps, "max_steps": self.max_steps,
            "threads": self.threads,
        }

    def checkpoint_config_toml(self) -> str:
        """The config a checkpoint records: this run's, with an `auto` precision resolved to the one in use."""
        resolved = dataclasses.replace(self.config, train=dataclasses.replace(
            self.config.train, precision=self.precision, max_steps=self.max_steps or self.config.train.max_steps))
        return cfg_mod.to_toml(resolved)

    def save_checkpoint(self, captured: tuple[int, dict, str] | None = None) -> Path:
        self._restored_nonfinite(captured[0] if captured else self.step)  # never a NaN on disk
        step, state, config_toml = captured or (self.step, self.state_dict(), self.checkpoint_config_toml())
        path = self.strategy.save_checkpoint(self.run_dir, step, self.raw_model, self.optimizer, state,
                                             self.tokenizer_spec, config_toml, self.config.checkpoint.keep_last)
        self.last_checkpoint = path
        self.guard.last_checkpoint = str(path)
        self.say(f"saved checkpoint {path}")
        return path

    def load_checkpoint(self, directory: Path) -> None:
        state = self.strategy.load_checkpoint(directory, self.raw_model, self.optimizer, self.model_config.to_dict(),
                                              self.tokenizer_spec, self.data.description)
        try:
            if self.scaler is not None and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.loader.load_state_dict(state["loader"])
            self.guard.load_state_dict(state["guard"])
            set_rng_state(state["rng"])
            self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
            self.val_loss = state.get("val_loss")
            self.budget_max_steps, self.max_steps = state.get("budget_max_steps"), state.get("max_steps")
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise ScalegptError(f"{directory}: training state does not fit this run ({str(e).splitlines()[0]})") from None
        self.unverified_resume = directory  # the guard names it once a forward pass on it gives a finite loss
        self.say(f"resumed from {directory} at step {self.step}")

    # ------------------------------------------------------------------------------------------------ the loop

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One optimizer update; returns (mean loss, grad norm) as device tensors (no host sync) and the lr."""
        model, optimizer, scaler = self.model, self.optimizer, self.scaler
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.accum_steps):
            x, y = self.loader.next_batch()
            last = micro == self.accum_steps - 1
            with contextlib.nullcontext() if last else self.strategy.no_sync(model):
                with self.autocast:
                    loss = model(x, y)
                loss = loss / self.accum_steps  # the sum over micro-steps is the mean over the global batch
                (scaler.scale(loss) if scaler is not None else loss).backward()
            loss_sum += loss.detach()
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        grad_clip = self.config.optim.grad_clip
        norm = self.strategy.clip_grad_norm(model, grad_clip if grad_clip > 0 else math.inf)
        apply = True
        if self.guard.enabled:  # the one host sync per step, paid only with a guard on
            loss_f, norm_f = self.strategy.reduce_mean(loss_sum).item(), norm.item()
            finite = math.isfinite(loss_f) and (math.isfinite(norm_f) or scaler is not None)  # fp16: inf = overflow
            # Weights are checked when a checkpoint waits on them or the loss is NaN (bad weights or a bad batch?),
            # not after every update (~25% of a small CPU step; benchmarks/bench_train.py).
            if (self.pending_checkpoint or not finite) and self._restored_nonfinite(self.step + 1):
                apply = False
            else:
                self._verified(finite)
                apply = self.guard.should_step(loss_f, norm_f, step=self.step + 1)
                if not apply:
                    self._log_skip(self.step + 1)
        lr = self.lr(self.step)
        optimizer.set_lr(lambda peak: self.lr(self.step, peak))  # one schedule; AdamW's and Muon's own peaks
        if apply:
            scaler.step(optimizer) if scaler is not None else optimizer.step()
        if scaler is not None:
            scaler.update()
        optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += self.tokens_per_step
        return loss_sum, norm, lr

    def _checkpoint_due(self, now: bool) -> None:
        """Write a checkpoint now (no next step will judge its weights), or keep it for the next step's verdict."""
        if not now:
            self.pending_checkpoint = self.step, self.state_dict(), self.checkpoint_config_toml()
            self.pending_suspect = False
            return
        with self._paused():
            pending, self.pending_checkpoint = self.pending_checkpoint, None
            if pending is not None:  # the same weights: only skipped steps since
                self.save_checkpoint(pending)
            self.save_checkpoint()

    def _verified(self, finite_loss: bool) -> None:
        """A forward pass on the weights (untouched since the last update) gave a finite loss: write the checkpoint
        waiting for it. A non-finite loss keeps it waiting (a skipped step leaves the weights as they were)."""
        self.pending_suspect |= not finite_loss
        if finite_loss and self.unverified_resume is not None:
            self.guard.last_checkpoint, self.unverified_resume = str(self.unverified_resume), None
        if finite_loss and self.pending_checkpoint is not None:
            pending, self.pending_checkpoint = self.pending_checkpoint, None
            with self._paused() if self.progress is not None else contextlib.nullcontext():
                self.save_checkpoint(pending)

    def _restored_nonfinite(self, step: int) -> bool:
        """False when weights and optimizer state are finite. Else both come back from the last verified checkpoint
        (a pre-step copy would cost 3x the weights' memory and a copy per step), the guard counts a skip: True."""
        if self.strategy.all_finite(self.raw_model, self.optimizer):
            return False
        self.pending_checkpoint = None  # it would record the broken weights
        source = self.guard.last_checkpoint
        if source is None or not self.config.guard.skip_nonfinite:
            raise ScalegptError(f"aborting: the weights or optimizer state are non-finite (NaN or inf) at step {step}"
                                f", so no checkpoint is written; {self.guard.checkpoint_note()}. Lower the learning "
                                "rate or check the optim settings, then resume with --resume")
        self.strategy.load_checkpoint(Path(source), self.raw_model, self.optimizer, self.model_config.to_dict(),
                                      self.tokenizer_spec, self.data.description)
        self.guard.reject_update(step, restored_from=source)
        self._log_skip(step)
        return True

    def _log_skip(self, step: int) -> None:
        """A skipped update is rare and worth finding later: console, log.txt (`{step} skip {total}`), metrics.jsonl."""
        g = self.guard
        if self.progress is not None:  # earlier steps' buffered train lines first, so log.txt stays in step order
            self.progress.flush()
        self.say(f"step {step}: skipped ({g.last_reason}); {g.skipped_total} skipped so far, "
                 f"{g.consecutive_skips} in a row (abort at {g.config.max_consecutive_skips or 'never'})")
        if self.run_log is not None:
            self.run_log.line(step, "skip", g.skipped_total)
            self.run_log.record(step, "skip", reason=g.last_reason, **g.stats())

    def fit(self) -> TrainResult:
        c = self.config
        self.stops.install()
        self.progress = progress = Progress(self, self.max_steps)
        try:
            if self.max_steps is not None and self.step >= self.max_steps:
                self.say(f"already at step {self.step} of {self.max_steps}: nothing to train; to train further, "
                         f"resume with --train.max_steps N (N > {self.step})")
            if self.budget is not None:
                self.budget.start(budget_mod.clock())
            if not self.resumed and c.eval.at_start and self.step == 0:
                with self._paused(evaluation=True):
                    self.evaluate()
            self.model.train()
            while (self.max_steps is None or self.step < self.max_steps) and self.stops.name is None:
                loss, norm, lr = self.train_step()
                if self.budget is not None:
                    self._time_budget_step(loss)
                if self.strategy.world_size > 1:  # a signal may reach ranks a step apart: all stop (and save) together
                    if self.strategy.any_rank(self.stops.name is not None):
                        self.stops.name = self.stops.name or "SIGTERM"
                progress.after_step(loss, norm, lr)
                self.data.log_epochs(self.step, self.run_log)
                last = self.step == self.max_steps
                if c.eval.interval and (self.step % c.eval.interval == 0 or last):
                    with self._paused(evaluation=True):
                        self.evaluate()
                interval = c.checkpoint.interval
                if (interval and self.step % interval == 0) or (last and c.checkpoint.at_end) or self.stops.name:
                    self._checkpoint_due(now=last or self.stops.name is not None or not self.guard.enabled)
            progress.close()
            if self.stops.name:
                self.say(f"stopped by {self.stops.name} at step {self.step}; continue with --resume")
        except Exception:  # e.g. a corrupted batch: a checkpoint no forward pass has judged yet is not lost
            pending, self.pending_checkpoint = self.pending_checkpoint, None
            if pending is not None and not self.pending_suspect and self.strategy.world_size == 1 \
                    and self.strategy.all_finite(self.raw_model, self.optimizer):
                self.save_checkpoint(pending)
            raise
        finally:
            self.stops.restore()
            if self.run_log is not None:
                self.run_log.close()
            self.progress = None
        return TrainResult(self.run_dir, self.step, self.last_checkpoint, self.val_loss, self.stops.name)

    def _time_budget_step(self, loss: torch.Tensor) -> None:
        """Feed the budget this update's clock reading; fix max_steps (the same on every rank) once it decides."""
        budget = self.budget
        if budget.needs_sync(self.step):
            loss.item()  # waits for the step's device work: the clock then measures computing, not launching
        decided = budget.after_step(self.step, budget_mod.clock())
        if decided is None:
            return
        self.max_steps = self.budget_max_steps = int(self.strategy.broadcast_object(decided))  # rank 0's clock
        self.budget = None
        self.progress.set_max_steps(self.max_steps)
        self.say(budget.describe(self.max_steps))
        self._fit_schedule()

    @contextlib.contextmanager
    def _paused(self, evaluation: bool = False):
        """Flush pending train losses first (log order) and keep evaluation time out of the throughput figures."""
        self.progress.flush()
        start = budget_mod.clock()
        yield
        self.progress.exclude(budget_mod.clock() - start)
        if self.budget is not None:
            self.budget.pause(budget_mod.clock() - start, evaluation)

    def evaluate(self) -> None:
        """Validation loss on the fixed token budget, HellaSwag when configured, samples; logged at self.step.

        Always through raw_model (never the compiled or wrapped one), and inside fork_rng so that evaluating
        leaves the training RNG streams exactly where they were (exact resume does not depend on eval settings)."""
        from scalegpt.hellaswag import evaluate_hellaswag

        c, step = self.config, self.step
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if self.val_data is not None:
                result = self.data.validate(self.raw_model, c.eval.batch_size or c.train.micro_batch_size,
                                            c.eval.tokens, self.autocast, self.byte_lengths)
                self.val_loss = result["loss"]
                self.data.log_validation(step, result, self.run_log, self.tokens_seen)
            if self.hellaswag is not None:
                result = evaluate_hellaswag(self.raw_model, self.tokenizer, self.hellaswag, self.device,
                                            autocast=self.autocast, rank=self.strategy.rank,
                                            world_size=self.strategy.world_size, progress=False)
                self.say(f"step {step}: HellaSwag acc_norm {result['acc_norm']:.4f} (acc {result['acc']:.4f}, "
                         f"{result['examples']} examples)")
                if self.run_log is not None:
                    self.run_log.line(step, "hella", result["acc_norm"])
                    self.run_log.record(step, "hella", **result, tokens_seen=self.tokens_seen)
            # Under FSDP every rank must run the forward passes (they all-gather the weights); only rank 0 prints.
            if c.eval.samples and (self.strategy.is_main or self.strategy.kind == "fsdp"):
                self._sample(step)
        if self.run_log is not None:
            self.run_log.flush()
            if self.config.log.plot:
                from scalegpt.plot import plot_runs

                plot_runs([self.run_dir], self.run_dir / "loss.png")

    def _sample(self, step: int) -> None:
        from scalegpt.generate import generate

        c = self.config
        try:
            texts = generate(self.raw_model, self.tokenizer, c.eval.prompt, max_new_tokens=c.eval.sample_tokens,
                             num_samples=c.eval.samples, temperature=c.eval.temperature,
                             top_k=min(c.eval.top_k, self.model_config.vocab_size) or None,
                             seed=c.train.seed, device=self.device)
        except ScalegptError as e:  # a prompt the tokenizer cannot encode must not end a long run
            self.say(f"step {step}: sampling skipped ({e})")
            return
        self.samples = texts
        for i, text in enumerate(texts):
            self.say(f"step {step}: sample {i}: {c.eval.prompt + text!r}")
        if self.run_log is not None:
            self.run_log.record(step, "sample", prompt=c.eval.prompt, samples=texts)

