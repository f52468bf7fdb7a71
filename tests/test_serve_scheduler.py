"""Continuous batching (scalegpt.serve.scheduler) and the KV cache rows it relies on, in-process: sequences of
different lengths decoded together give each the tokens it gets alone."""
from __future__ import annotations

import threading

import pytest
import torch

from scalegpt.generate import generate_tokens
from scalegpt.model import GPT, KVCache, preset_config
from scalegpt.serve.scheduler import QueueFull, SamplingParams, Scheduler, Sequence, ShuttingDown, prefill_groups

MODELS = {"gpt2": {}, "modern": dict(pos_emb="rope", norm="rmsnorm", n_kv_head=2, mlp="swiglu", qk_norm=True)}


def _model(kind):
    torch.manual_seed(0)
    model = GPT(preset_config("tiny", vocab_size=100, block_size=64, **MODELS[kind])).eval()
    with torch.no_grad():  # wider weights than init: spread-out logits, no near-ties for argmax
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    return model


@pytest.mark.parametrize("kind", MODELS)
def test_rows_at_different_lengths_match_each_sequence_alone(kind):
    """One decode step over rows holding 3, 7 and 12 tokens gives the logits each row gets in its own cache."""
    model = _model(kind)
    prompts = [torch.randint(0, 100, (1, n)) for n in (3, 7, 12)]
    batched = KVCache(model.config, 3, "cpu")
    lengths = torch.tensor([p.size(1) for p in prompts])
    alone = []
    with torch.no_grad():
        for row, p in enumerate(prompts):
            model(p, cache=batched.rows(row, row + 1))
            cache = KVCache(model.config, 1, "cpu")
            model(p, cache=cache)
            alone.append(model(torch.tensor([[5]]), cache=cache)[0, -1])
        together = model(torch.tensor([[5], [5], [5]]), cache=batched.rows(0, 3, lengths))[:, -1]
    for row in range(3):
        torch.testing.assert_close(together[row], alone[row], atol=1e-5, rtol=1e-5)
        assert int(together[row].argmax()) == int(alone[row].argmax())


def _collect(scheduler, prompts, max_tokens, temperature=0.0, seeds=None, stagger=None):
    outs = [[] for _ in prompts]
    reasons = [None] * len(prompts)
    done = threading.Semaphore(0)

    def emitter(i):
        def emit(token, reason):
            if token is not None:
                outs[i].append(token)
            else:
                reasons[i] = reason
                done.release()
        return emit

    for i, p in enumerate(prompts):
        seed = None if seeds is None else seeds[i]
        scheduler.submit([Sequence(p, SamplingParams(max_tokens[i], temperature, seed=seed), emitter(i))])
        if stagger:
            stagger(i)
    for _ in prompts:
        assert done.acquire(timeout=120), "a sequence never finished"
    return outs, reasons


@pytest.mark.parametrize("kind", MODELS)
def test_batched_greedy_tokens_equal_each_request_alone(kind):
    """Seven requests of different prompt lengths and lengths through a 3-row batch: they join and leave at
    different steps, and every one gets exactly generate_tokens' greedy tokens for its prompt."""
    model = _model(kind)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 100, (n,), generator=gen).tolist() for n in (1, 5, 9, 3, 17, 2, 11)]
    max_tokens = [30 - 3 * i for i in range(len(prompts))]
    refs = [torch.cat(list(generate_tokens(model, torch.tensor([p]), m, temperature=0))).tolist()
            for p, m in zip(prompts, max_tokens)]
    scheduler = Scheduler(model, max_batch=3, max_queue=16)
    scheduler.start()
    try:
        outs, reasons = _collect(scheduler, prompts, max_tokens)
    finally:
        scheduler.close()
    assert outs == refs
    assert reasons == ["length"] * len(prompts)
    assert scheduler.steps < sum(max_tokens)  # decode steps were shared


@pytest.mark.parametrize("kind", MODELS)
def test_requests_arriving_together_share_one_padded_prefill(kind):
    """Six prompts of 4-7 tokens queued before the scheduler starts join in one prefill pass (padded to 7 tokens);
    each still gets its own greedy tokens."""
    model = _model(kind)
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 100, (n,), generator=gen).tolist() for n in (7, 4, 6, 5, 7, 4)]
    refs = [torch.cat(list(generate_tokens(model, torch.tensor([p]), 12, temperature=0))).tolist() for p in prompts]
    scheduler = Scheduler(model, max_batch=8, max_queue=16)
    outs = [[] for _ in prompts]
    done = threading.Semaphore(0)
    for i, p in enumerate(prompts):
        scheduler.submit([Sequence(p, SamplingParams(12, 0.0), lambda t, r, i=i: outs[i].append(t) if t is not None
                                   else done.release())])
    scheduler.start()
    try:
        for _ in prompts:
            assert done.acquire(timeout=120)
    finally:
        scheduler.close()
    assert outs == refs
    assert scheduler.stats()["prefill_passes"] == 1 and scheduler.steps == 11


def test_prefill_groups_keep_padding_at_most_double_the_prompt_tokens():
    seqs = [Sequence([0] * n, SamplingParams(1), lambda t, r: None) for n in (3, 500, 4, 5, 600, 3)]
    groups = [[len(s.prompt) for s in group] for group in prefill_groups(seqs)]
    assert groups == [[3, 3, 4, 5], [500, 600]]
    for group in groups:
        assert len(group) * max(group) <= 2 * sum(group)


def test_a_seeded_sample_is_the_same_alone_and_in_a_batch():
    model = _model("gpt2")
    prompts = [[1, 2, 3], [4, 5], [6]]
    scheduler = Scheduler(model, max_batch=4, max_queue=16)
    scheduler.start()
    try:
        together, _ = _collect(scheduler, prompts, [20, 20, 20], temperature=1.0, seeds=[7, 8, 9])
        alone = [_collect(scheduler, [p], [20], temperature=1.0, seeds=[s])[0][0]
                 for p, s in zip(prompts, [7, 8, 9])]
    finally:
        scheduler.close()
    assert together == alone
    assert together[0] != together[1]


def test_the_queue_is_bounded_and_closing_cancels_what_waits():
    model = _model("gpt2")
    scheduler = Scheduler(model, max_batch=2, max_queue=3)  # not started: everything stays queued
    ended = []
    seqs = [Sequence([1], SamplingParams(5), lambda t, r: ended.append(r) if t is None else None) for _ in range(3)]
    scheduler.submit(seqs)
    with pytest.raises(QueueFull, match="3 sequences waiting"):
        scheduler.submit([Sequence([1], SamplingParams(5), lambda t, r: None)])
    scheduler.start()
    scheduler.close()
    assert not scheduler.thread.is_alive()
    assert len(ended) == 3  # each one finished ('length' if it ran, 'cancelled' if it was still waiting)
    with pytest.raises(ShuttingDown):
        scheduler.submit([Sequence([1], SamplingParams(5), lambda t, r: None)])


def test_a_cancelled_sequence_leaves_and_the_others_go_on():
    model = _model("gpt2")
    scheduler = Scheduler(model, max_batch=2, max_queue=4)
    victim = []

    def cancel_first(i):
        if i == 1:
            scheduler.cancel(first)

    first = Sequence([1, 2], SamplingParams(60, 0.0), lambda t, r: victim.append(t))
    scheduler.submit([first])
    scheduler.start()
    try:
        outs, reasons = _collect(scheduler, [[3], [4, 5]], [20, 20], stagger=cancel_first)
    finally:
        scheduler.close()
    assert reasons == ["length", "length"]
    assert len([t for t in victim if t is not None]) < 60
    refs = [torch.cat(list(generate_tokens(model, torch.tensor([p]), 20, temperature=0))).tolist()
            for p in ([3], [4, 5])]
    assert outs == refs
