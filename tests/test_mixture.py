"""Weighted mixtures ([[data.mix]]): proportions, ranks, exact resume, wrap-around, config round trip, bad input."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from scalegpt.config import load_config, to_toml
from scalegpt.data import open_dataset
from scalegpt.errors import ScalegptError
from scalegpt.mixture import Assignment, MixtureLoader

GPT2_SPEC = {"kind": "gpt2", "vocab_size": 50257, "eot_id": 50256}
T = 16


def make_source(root: Path, first_token: int, lengths, spec=GPT2_SPEC, splits=("train",)) -> Path:
    """A dataset whose tokens count up from first_token, so every token says which source (and where) it is from."""
    root.mkdir(parents=True, exist_ok=True)
    meta_splits, pos = {}, first_token
    for split in splits:
        shards = []
        for i, n in enumerate(lengths):
            name = f"{split}_{i:06d}.npy"
            np.save(root / name, np.arange(pos, pos + n, dtype=np.uint32))
            pos += n
            digest = hashlib.sha256((root / name).read_bytes()).hexdigest()
            shards.append({"file": name, "num_tokens": n, "sha256": digest})
        meta_splits[split] = {"num_tokens": sum(lengths), "shards": shards}
    meta = {"format": "scalegpt-tokens", "version": 1, "tokenizer": spec, "vocab_size": spec["vocab_size"],
            "eot_id": spec["eot_id"], "dtype": "uint32", "splits": meta_splits}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


BASES = (0, 10_000, 20_000)  # source k's tokens lie in [BASES[k], BASES[k] + 10_000)


@pytest.fixture
def sources(tmp_path):
    return [open_dataset(make_source(tmp_path / name, base, lengths))
            for name, base, lengths in (("web", 0, [3000, 2000]), ("code", 10_000, [1200]), ("books", 20_000, [700]))]


def source_of(x) -> list[int]:
    return (x[:, 0] // 10_000).tolist()


@pytest.mark.parametrize("weights", [[0.7, 0.3], [0.5, 0.3, 0.2], [1, 2, 7]])
def test_proportions_over_10k_sequences_are_the_weights(sources, weights):
    loader = MixtureLoader(sources[:len(weights)], weights, T, 40, 40, seed=3, prefetch=False)
    drawn = []
    for _ in range(250):  # 10,000 sequences
        drawn += source_of(loader.next_batch()[0])
    share = np.bincount(drawn, minlength=len(weights)) / len(drawn)
    assert len(drawn) == 10_000
    for got, w in zip(share, np.array(weights) / sum(weights)):
        assert abs(got - w) <= 0.01, (share, weights)


def test_assignment_counts_are_exact_at_block_ends_and_indices_consecutive():
    a = Assignment([1 / 3, 0.5, 1 / 6], seed=1, shuffle=True)
    seen = [0, 0, 0]
    for g in range(3 * a.block):
        k, j = a(g)
        assert j == seen[k]  # each source's sequences are taken in order, none skipped or repeated
        seen[k] += 1
        if (g + 1) % a.block == 0:
            assert seen == a.counts_before(g + 1)
            assert all(abs(c - (g + 1) * w) <= 1 for c, w in zip(seen, (1 / 3, 0.5, 1 / 6)))


def test_tiny_weight_keeps_its_share():
    a = Assignment([0.999, 0.001], seed=0, shuffle=True)
    counts = a.counts_before(10 * a.block)
    assert counts[1] == math.floor(10 * a.block * 0.001) or abs(counts[1] - 10 * a.block * 0.001) <= 1


def test_two_ranks_draw_exactly_what_one_process_draws(sources):
    one = MixtureLoader(sources, [0.5, 0.3, 0.2], T, 16, 4, seed=9)
    two = [MixtureLoader(sources, [0.5, 0.3, 0.2], T, 16, 4, rank=r, world_size=2, seed=9) for r in range(2)]
    for _ in range(5):  # steps: 4 micro-steps of 4 in one process, 2 micro-steps of 2 x 4 in two ranks
        ref = np.concatenate([one.next_batch()[0].numpy() for _ in range(4)])
        got = np.concatenate([np.concatenate([two[r].next_batch()[0].numpy() for r in range(2)]) for _ in range(2)])
        assert np.array_equal(ref, got)
    for loader in (one, *two):
        loader.close()


def test_exact_resume_mid_step_and_at_another_world_size(sources):
    ref = MixtureLoader(sources, [0.7, 0.2, 0.1], T, 16, 4, seed=11)
    expected = [ref.next_batch()[0] for _ in range(60)]
    first = MixtureLoader(sources, [0.7, 0.2, 0.1], T, 16, 4, seed=11)
    for _ in range(21):  # mid-step: 4 micro-steps per step
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))  # as in a checkpoint
    resumed = MixtureLoader(sources, [0.7, 0.2, 0.1], T, 16, 4, seed=11)
    resumed.load_state_dict(state)
    assert all(np.array_equal(resumed.next_batch()[0], expected[i]) for i in range(21, 60))
    at_step = MixtureLoader(sources, [0.7, 0.2, 0.1], T, 16, 4, seed=11)
    for _ in range(20):
        at_step.next_batch()
    state = at_step.state_dict()
    two = [MixtureLoader(sources, [0.7, 0.2, 0.1], T, 16, 4, rank=r, world_size=2, seed=11) for r in range(2)]
    for loader in two:
        loader.load_state_dict(state)
    for i in range(20, 60, 2):  # two ranks' micro-steps cover the one-process micro-steps pairwise
        got = np.concatenate([two[r].next_batch()[0].numpy() for r in range(2)])
        assert np.array_equal(got, np.concatenate([expected[i].numpy(), expected[i + 1].numpy()]))


def test_changed_mixture_or_seed_refuses_the_state(sources):
    loader = MixtureLoader(sources, [0.7, 0.3, 0.1], T, 16, 4, seed=1)
    loader.next_batch()
    state = loader.state_dict()
    with pytest.raises(ScalegptError, match="the mixture changed"):
        MixtureLoader(sources, [0.6, 0.3, 0.1], T, 16, 4, seed=1).load_state_dict(state)
    with pytest.raises(ScalegptError, match="the mixture changed"):
        MixtureLoader(sources[:2], [0.7, 0.3], T, 16, 4, seed=1).load_state_dict(state)
    with pytest.raises(ScalegptError, match="seed changed"):
        MixtureLoader(sources, [0.7, 0.3, 0.1], T, 16, 4, seed=2).load_state_dict(state)


def test_a_source_that_runs_out_wraps_and_counts_its_epochs(sources):
    loader = MixtureLoader(sources[:2], [0.5, 0.5], T, 8, 8, seed=4)
    windows_code = loader.num_windows[1]
    firsts_code = []
    while len(firsts_code) < 3 * windows_code:
        x, _ = loader.next_batch()
        firsts_code += [int(v) for v in x[:, 0] if v >= 10_000]
    assert loader.epochs[1] >= 2 and loader.epochs[0] < loader.epochs[1]  # the small source is ahead
    for e in range(3):  # every epoch of the small source visits each of its windows once
        epoch = firsts_code[e * windows_code:(e + 1) * windows_code]
        assert len(set(epoch)) == windows_code


def test_mixed_tokenizers_are_one_line_naming_both(tmp_path):
    chars = "".join(chr(0x4e00 + i) for i in range(30000))
    char = {"kind": "char", "vocab_size": 30001, "eot_id": 30000, "chars": chars}
    a = open_dataset(make_source(tmp_path / "web", 0, [500]))
    b = open_dataset(make_source(tmp_path / "notes", 0, [500], spec=char))
    with pytest.raises(ScalegptError, match=r"web and .*notes were prepared with different tokenizers") as e:
        MixtureLoader([a, b], [1, 1], T, 8, 8)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------- config

MIX_TOML = """
[data]
align = "bos"
[[data.mix]]
dir = "data/web"
weight = 0.7
[[data.mix]]
dir = "data/code"
weight = 0.3
"""


def test_mix_tables_round_trip_through_the_echoed_config(tmp_path):
    (tmp_path / "mix.toml").write_text(MIX_TOML)
    config = load_config(tmp_path / "mix.toml")
    assert [(m.dir, m.weight) for m in config.data.mix] == [("data/web", 0.7), ("data/code", 0.3)]
    assert config.data.align == "bos" and config.data.dir == ""
    echoed = to_toml(config)
    assert "[[data.mix]]" in echoed
    (tmp_path / "echo.toml").write_text(echoed)
    assert load_config(tmp_path / "echo.toml") == config
    # on the command line: DIR:WEIGHT pairs or TOML's inline array; "" clears a mixture for data.dir
    short = load_config(tmp_path / "mix.toml", [("data.mix", "a:1,b:3")])
    assert [(m.dir, m.weight) for m in short.data.mix] == [("a", 1.0), ("b", 3.0)]
    inline = load_config(None, [("data.mix", '[{dir = "a", weight = 2}]')])
    assert [(m.dir, m.weight) for m in inline.data.mix] == [("a", 2.0)]
    single = load_config(tmp_path / "mix.toml", [("data.mix", ""), ("data.dir", "data/web")])
    assert single.data.mix == [] and single.data.dir == "data/web"


@pytest.mark.parametrize("weight,message", [
    ("-0.3", "data.mix[1].weight must be a positive finite number, got -0.3"),
    ("0", "data.mix[1].weight must be a positive finite number, got 0"),
    ("nan", "data.mix[1].weight must be a positive finite number, got nan"),
    ("inf", "data.mix[1].weight must be a positive finite number, got inf"),
    ('"heavy"', "data.mix[1].weight must be a positive finite number, got 'heavy'"),
    ("true", "data.mix[1].weight must be a positive finite number, got True"),
])
def test_weights_not_positive_finite_are_one_line_exit_2(tmp_path, run_cli, weight, message):
    (tmp_path / "mix.toml").write_text(MIX_TOML.replace("weight = 0.3", f"weight = {weight}"))
    rc, out, err = run_cli("train", "--config", tmp_path / "mix.toml", "--out", tmp_path / "run")
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args,message", [
    (["--data.dir", "data/web"], "data.dir and data.mix are both set"),
    (["--data.mix", "data/web:x"], "--data.mix: expected DIR:WEIGHT,DIR:WEIGHT"),
    (["--data.mix", "data/web:1,data/web:2"], "lists data/web twice"),
    (["--data.align", "doc"], "data.align must be one of none | bos"),
])
def test_bad_mix_options_are_one_line_exit_2(tmp_path, run_cli, args, message):
    (tmp_path / "mix.toml").write_text(MIX_TOML)
    rc, out, err = run_cli("train", "--config", tmp_path / "mix.toml", *args, "--out", tmp_path / "run")
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
