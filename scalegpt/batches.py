"""What every training loader shares (scalegpt.data's DataLoader, scalegpt.mixture's MixtureLoader): the layout of an
optimizer step over ranks and micro-steps, batches built one ahead by a background thread, and a resumable state
that is one global sequence index (see scalegpt.data's docstring for the numbering)."""
from __future__ import annotations

import numbers
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from scalegpt.errors import ScalegptError

STATE_VERSION = 1
IDENTITY_DEFAULTS = {"align_bos": 0}  # keys a state saved before they existed lacks: their value then


def _int_arg(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ScalegptError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t if device.type == "cpu" else t.to(device, non_blocking=True)


class Batches:
    """What every training loader shares: the layout of a step over ranks and micro-steps, batches built by a
    background thread, and a resumable state (one global sequence index). Subclasses say what global sequence g is
    (`read_row`) and what a saved state must agree on (`_identity`)."""

    def _init_batches(self, seq_len, global_batch_size, micro_batch_size, rank, world_size, seed, shuffle, device,
                      prefetch) -> None:
        self.T = _int_arg("seq_len", seq_len, 1)
        self.G = _int_arg("global_batch_size", global_batch_size, 1)
        self.B = _int_arg("micro_batch_size", micro_batch_size, 1)
        self.W = _int_arg("world_size", world_size, 1)
        self.rank = _int_arg("rank", rank, 0)
        self.seed = _int_arg("seed", seed, 0)
        if self.rank >= self.W:
            raise ScalegptError(f"rank {rank} is out of range for world_size {world_size}")
        if self.G % (self.B * self.W):
            raise ScalegptError(
                f"global_batch_size {self.G} is not divisible by micro_batch_size {self.B} x world_size {self.W} "
                f"= {self.B * self.W}")
        self.accum_steps = self.G // (self.B * self.W)
        self.shuffle = bool(shuffle)
        self.device = torch.device(device)
        self.position = 0  # global index of the first window of the next micro-step (rank independent)
        self.micro_step = 0
        self._pin = self.device.type == "cuda"
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="scalegpt-data") if prefetch else None
        self._future = None
        self._future_pos = -1

    def read_row(self, g: int) -> np.ndarray:
        """The T + 1 tokens of global sequence g (checked against the vocabulary)."""
        raise NotImplementedError

    def _identity(self) -> dict:
        """What a saved state must have been saved with to resume exactly."""
        raise NotImplementedError

    def _make_batch(self, position: int):
        first = position + self.rank * self.B
        rows = np.stack([self.read_row(first + j) for j in range(self.B)]).astype(np.int64)
        t = torch.from_numpy(rows)
        x, y = t[:, :-1].contiguous(), t[:, 1:].contiguous()
        if self._pin:
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next micro-batch of this rank: x, y of shape (B, T), int64, on the device."""
        if self._future is not None and self._future_pos == self.position:
            x, y = self._future.result()
        else:
            x, y = self._make_batch(self.position)
        self._future = None
        self.position += self.B * self.W
        self.micro_step = (self.micro_step + 1) % self.accum_steps
        if self._executor is not None:
            self._future_pos = self.position
            self._future = self._executor.submit(self._make_batch, self.position)
        return _to_device(x, self.device), _to_device(y, self.device)

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "position": self.position, "micro_step": self.micro_step,
                "epoch": self.epoch, **self._identity(), "global_batch_size": self.G, "micro_batch_size": self.B,
                "world_size": self.W}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where `state` left off. A state saved at another world size or micro batch is re-mapped
        (the position is a global window index) when it was saved between optimizer steps, refused otherwise."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ScalegptError(f"loader state: expected a dict with version {STATE_VERSION}, got "
                                f"{str(state)[:80]}")
        now = self._identity()
        for key in ("position", "micro_step"):
            if not isinstance(state.get(key), numbers.Integral) or state[key] < 0:
                raise ScalegptError(f"loader state: key '{key}' should be an integer >= 0, got {state.get(key)!r}")
        for key, value in now.items():
            saved = state.get(key, IDENTITY_DEFAULTS.get(key))
            if saved != value:
                what = ("the dataset changed" if key == "num_windows" else
                        "the mixture changed" if key == "sources" else f"{key} changed")
                raise ScalegptError(f"loader state: {key} was {saved} when saved, now {value} ({what}); "
                                    f"the saved position cannot be resumed exactly")
        position, micro = int(state["position"]), int(state["micro_step"])
        same_layout = (state.get("world_size"), state.get("micro_batch_size"), state.get("global_batch_size")) == \
                      (self.W, self.B, self.G)
        if not same_layout and micro != 0:
            raise ScalegptError(
                f"loader state was saved in the middle of an optimizer step (micro-step {micro} at world_size "
                f"{state.get('world_size')}, micro_batch_size {state.get('micro_batch_size')}); it can only resume "
                f"with that same layout, now world_size {self.W}, micro_batch_size {self.B}")
        if self._future is not None:
            self._future.cancel()
            try:
                self._future.result()
            except Exception:
                pass
            self._future = None
        self.position, self.micro_step = position, micro

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
            self._future = None
