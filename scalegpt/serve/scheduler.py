"""Continuous batching: one thread runs the model for every in-flight sequence, one decode step for all of them at a
time, over one preallocated KV cache of `max_batch` rows.

    scheduler = Scheduler(model, max_batch=16, max_queue=64); scheduler.start()
    scheduler.submit([Sequence(prompt_ids, SamplingParams(max_tokens=32, temperature=0), emit=callback)])
    ... callback(token_id) per token, then callback(None, finish_reason) once ...
    scheduler.close()

Sequences join by a prefill of their prompts into free rows (each at its own positions, from 0), then take part in
every decode step until they stop (a stop token, max_tokens, or cancel()). Sequences that arrive together are
prefilled together, in one forward pass over their prompts padded to the longest (the padding's keys land past each
row's length, where the row's next tokens overwrite them before any query can see them), and only the last real
position of each prompt goes through lm_head. A leaving sequence's row is refilled by moving the last active row into
it, so the active rows are always 0..n-1 and a step runs over exactly the batch it needs. Rows
hold sequences of different lengths: the cache keeps a length per row and masks each row's keys past its own
(`scalegpt.model.KVCache`), so a sequence's tokens do not depend on what it is batched with (up to float rounding).

Sampling is `scalegpt.generate.sample_next` per row, with the row's own settings and its own seeded generator, so a
greedy or seeded request gives what `scalegpt sample` gives for the same prompt and settings.
"""
from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

import torch

from scalegpt.generate import model_config, sample_next
from scalegpt.model import KVCache

log = logging.getLogger("scalegpt.serve")


class QueueFull(Exception):
    """More sequences are waiting than the queue holds (HTTP 429)."""


class ShuttingDown(Exception):
    """The scheduler no longer takes requests (HTTP 503)."""


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None  # None: fresh entropy
    stop_ids: frozenset[int] = frozenset()  # tokens that end the sequence (not emitted)


@dataclass(eq=False)
class Sequence:
    """One completion being generated. emit(token, None) for each token, then emit(None, reason) once, with reason
    "stop" (a stop token), "length" (max_tokens), "cancelled" or "error"; emit is called on the scheduler's thread."""
    prompt: list[int]
    params: SamplingParams
    emit: Callable[[int | None, str | None], None]
    generated: int = 0
    cancelled: bool = False
    next_token: int = -1  # sampled, not yet fed to the model
    generator: torch.Generator | None = field(default=None, repr=False)


class Scheduler:
    def __init__(self, model, max_batch: int = 16, max_queue: int = 64):
        self.model = model.eval()
        self.config = model_config(model)
        param = next(model.parameters())
        self.device, self.max_batch, self.max_queue = param.device, max_batch, max_queue
        self.cache = KVCache(self.config, max_batch, param.device, dtype=param.dtype)
        self.lengths = torch.zeros(max_batch, dtype=torch.long, device=param.device)
        self.active: list[Sequence] = []  # row i of the cache holds active[i]
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.cond = threading.Condition()
        self.closing = False
        self.steps = 0  # decode steps run (a step over k rows counts once)
        self.prefills = 0  # prefill forward passes run (sequences joining together share one)
        self.thread = threading.Thread(target=self._run, name="scalegpt-scheduler", daemon=True)

    # ------------------------------------------------------------------------------------------- the HTTP side
    def start(self) -> None:
        self.thread.start()

    def submit(self, seqs: list[Sequence]) -> None:
        """Queue sequences (all or none). Raises QueueFull or ShuttingDown."""
        with self.cond:
            if self.closing:
                raise ShuttingDown("the server is shutting down")
            if len(self.waiting) + len(seqs) > self.max_queue:
                raise QueueFull(f"the request queue is full ({self.max_queue} sequences waiting); retry later")
            for seq in seqs:
                seq.generator = torch.Generator(device=self.device)
                if seq.params.seed is None:
                    seq.generator.seed()
                else:
                    seq.generator.manual_seed(seq.params.seed)
            self.waiting.extend(seqs)
            self.cond.notify()

    def cancel(self, seq: Sequence) -> None:
        """Stop a sequence (client gone, stop text found): its row is freed before the next step."""
        seq.cancelled = True

    def stats(self) -> dict:
        return {"running": len(self.active), "waiting": len(self.waiting), "max_batch": self.max_batch,
                "max_queue": self.max_queue, "decode_steps": self.steps, "prefill_passes": self.prefills}

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new sequences, cancel those waiting or running, and wait for the thread to end."""
        with self.cond:
            self.closing = True
            self.cond.notify()
        if self.thread.is_alive():
            self.thread.join(timeout)

    # -------------------------------------------------------------------------------------- the model's side
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self.cond:
                    while not self.closing and not self.waiting and not self.active:
                        self.cond.wait()
                    if self.closing:
                        break
                    joining = []
                    while self.waiting and len(self.active) + len(joining) < self.max_batch:
                        joining.append(self.waiting.popleft())
                try:
                    for seq in joining:
                        if seq.cancelled:
                            _emit(seq, None, "cancelled")
                    for group in prefill_groups([seq for seq in joining if not seq.cancelled]):
                        self._prefill(group)
                    self._leave_finished()
                    if self.active:
                        self._decode_step()
                        self._leave_finished()
                except Exception:  # a bug or an out-of-memory: fail the requests in flight, keep serving
                    log.exception("scheduler step failed; ending the sequences in flight")
                    for seq in self.active:
                        _emit(seq, None, "error")
                    self.active.clear()
        with self.cond:
            left = list(self.active) + list(self.waiting)
            self.active.clear()
            self.waiting.clear()
        for seq in left:
            _emit(seq, None, "cancelled")

    def _prefill(self, seqs: list[Sequence]) -> None:
        """One forward pass over the prompts of sequences joining together, into rows n..n+k-1."""
        first, lengths = len(self.active), [len(seq.prompt) for seq in seqs]
        ids = torch.zeros(len(seqs), max(lengths), dtype=torch.long)  # right-padded with token 0
        for row, seq in enumerate(seqs):
            ids[row, :lengths[row]] = torch.tensor(seq.prompt, dtype=torch.long)
        ids = ids.to(self.device)
        start = torch.zeros(len(seqs), dtype=torch.long, device=self.device)
        hidden = self.model.hidden_states(ids, cache=self.cache.rows(first, first + len(seqs), start))
        filled = torch.tensor(lengths, device=self.device)
        logits = self.model.head(hidden[torch.arange(len(seqs), device=self.device), filled - 1])  # (k, V)
        self.lengths[first:first + len(seqs)] = filled
        self.active.extend(seqs)
        self.prefills += 1
        self._take_rows(seqs, logits)

    def _decode_step(self) -> None:
        n = len(self.active)
        tokens = torch.tensor([[s.next_token] for s in self.active], dtype=torch.long, device=self.device)
        logits = self.model(tokens, cache=self.cache.rows(0, n, self.lengths[:n]))[:, -1]
        self.lengths[:n] += 1
        self.steps += 1
        self._take_rows(self.active, logits)

    def _take_rows(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        """Hand each sequence its next token from its row of the (k, V) logits."""
        greedy = logits.argmax(dim=-1).tolist()  # one call for every greedy row
        for i, seq in enumerate(seqs):
            self._take(seq, logits[i:i + 1], greedy[i])

    def _take(self, seq: Sequence, logits: torch.Tensor, greedy: int) -> None:
        """Sample the sequence's next token from its (1, V) logits and hand it out."""
        if seq.cancelled:
            return
        p = seq.params
        if p.temperature == 0:
            token = greedy
        else:
            token = int(sample_next(logits, p.temperature, p.top_k, p.top_p, seq.generator))
        seq.generated += 1
        seq.next_token = token
        if token in p.stop_ids:
            seq.cancelled = True
            _emit(seq, None, "stop")
            return
        _emit(seq, token, None)
        if seq.generated >= p.max_tokens:
            seq.cancelled = True
            _emit(seq, None, "length")

    def _leave_finished(self) -> None:
        """Free the rows of finished and cancelled sequences: the last active row moves into each freed one."""
        for i in range(len(self.active) - 1, -1, -1):
            if not self.active[i].cancelled:
                continue
            last = len(self.active) - 1
            if i != last:
                filled = int(self.lengths[last])
                self.cache.k[:, i, :, :filled] = self.cache.k[:, last, :, :filled]
                self.cache.v[:, i, :, :filled] = self.cache.v[:, last, :, :filled]
                self.lengths[i] = self.lengths[last]
                self.active[i] = self.active[last]
            self.active.pop()


def prefill_groups(seqs: list[Sequence]) -> list[list[Sequence]]:
    """Split joining sequences into prefill batches, shortest prompts first, so that padding to a batch's longest
    prompt at most doubles the tokens it computes (a long prompt does not make short ones pay its length)."""
    groups: list[list[Sequence]] = []
    real = 0
    for seq in sorted(seqs, key=lambda seq: len(seq.prompt)):
        if groups and (len(groups[-1]) + 1) * len(seq.prompt) <= 2 * (real + len(seq.prompt)):
            groups[-1].append(seq)
            real += len(seq.prompt)
        else:
            groups.append([seq])
            real = len(seq.prompt)
    return groups


def _emit(seq: Sequence, token: int | None, reason: str | None) -> None:
    try:
        seq.emit(token, reason)
    except Exception:  # a consumer that is gone (its event loop closed) must not stop the others
        log.debug("dropped an event for a finished consumer", exc_info=True)
