"""The loader: windows, ranks, world-size independence, exact resume, wrap-around, and dataset integrity checks."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scalegpt.cli import main
from scalegpt.data import DataLoader, eval_batches, open_dataset
from scalegpt.errors import ScalegptError
from scalegpt.prepare import prepare

GPT2_SPEC = {"kind": "gpt2", "vocab_size": 50257, "eot_id": 50256}


def make_dataset(root: Path, lengths, split="train", dtype="uint32") -> Path:
    """Shards whose token at global position p is p, so every window is recognisable by its first token."""
    root.mkdir(parents=True, exist_ok=True)
    shards, pos = [], 0
    for i, n in enumerate(lengths):
        name = f"{split}_{i:06d}.npy"
        np.save(root / name, np.arange(pos, pos + n, dtype=dtype))
        pos += n
        shards.append({"file": name, "num_tokens": n,
                       "sha256": hashlib.sha256((root / name).read_bytes()).hexdigest()})
    meta = {"format": "scalegpt-tokens", "version": 1, "tokenizer": GPT2_SPEC, "vocab_size": 50257,
            "eot_id": 50256, "dtype": dtype, "splits": {split: {"num_tokens": pos, "shards": shards}}}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def window_starts(lengths, T):
    """Global position of the first token of every window (windows stay inside their shard)."""
    starts, base = [], 0
    for n in lengths:
        starts += [base + w * T for w in range((n - 1) // T if n > T else 0)]
        base += n
    return starts


def firsts(x: torch.Tensor) -> list[int]:
    return x[:, 0].tolist()


def shuffled_counts(lengths, T):
    """Windows per shard when shuffled: one window of slack for the per-epoch offset, unless the shard is too short."""
    return [(n - T) // T if n >= 2 * T else ((n - 1) // T if n > T else 0) for n in lengths]


def assert_one_epoch(windows, lengths, T):
    """Every window (by first token) lies inside one shard, none overlaps another, and each shard has its count."""
    bounds = np.cumsum([0, *lengths])
    per_shard = [sorted(w for w in windows if bounds[i] <= w < bounds[i + 1]) for i in range(len(lengths))]
    assert [len(p) for p in per_shard] == shuffled_counts(lengths, T)
    for i, starts in enumerate(per_shard):
        assert all(w + T + 1 <= bounds[i + 1] for w in starts)  # x and y stay inside the shard
        assert all(b - a >= T for a, b in zip(starts, starts[1:]))  # disjoint inputs


LENGTHS = [1000, 1000, 1000, 517]  # a short last shard
T = 16


@pytest.fixture
def ds(tmp_path):
    return open_dataset(make_dataset(tmp_path / "d", LENGTHS))


def test_batches_are_shifted_windows_inside_shards(ds):
    loader = DataLoader(ds, seq_len=T, global_batch_size=8, micro_batch_size=4)
    bounds = np.cumsum([0, *LENGTHS])
    for _ in range(50):
        x, y = loader.next_batch()
        assert x.shape == y.shape == (4, T) and x.dtype == y.dtype == torch.int64
        assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)  # contiguous tokens
        for w in firsts(x):  # the window and its last target inside one shard
            assert np.searchsorted(bounds, w, side="right") == np.searchsorted(bounds, w + T, side="right")
    assert ds.num_tokens == sum(LENGTHS) and ds.tokenizer_spec == GPT2_SPEC and ds.meta["version"] == 1


def test_one_epoch_covers_every_window_once_and_ranks_are_disjoint(ds):
    starts = list(range(sum(shuffled_counts(LENGTHS, T))))  # 61 + 61 + 61 + 31 = 214 windows
    W, B, G = 2, 3, 12
    loaders = [DataLoader(ds, T, G, B, rank=r, world_size=W, seed=7) for r in range(W)]
    order = []  # (rank, window) in global order
    while len(order) < len(starts):
        for _ in range(loaders[0].accum_steps):
            for r in range(W):
                order += [(r, w) for w in firsts(loaders[r].next_batch()[0])]
    epoch = order[:len(starts)]
    assert_one_epoch([w for _, w in epoch], LENGTHS, T)  # each window once, disjoint, inside its shard
    by_rank = [{w for r, w in epoch if r == rank} for rank in range(W)]
    assert not by_rank[0] & by_rank[1] and len(by_rank[0]) > 100 and len(by_rank[1]) > 100
    assert [w for _, w in epoch] != sorted(w for _, w in epoch)  # shuffled
    assert loaders[0].epoch == 1 and loaders[0].num_windows == len(starts)
    next_epoch = [w for _, w in order[len(starts):2 * len(starts)]]
    while len(next_epoch) < len(starts):
        next_epoch += [w for w in firsts(loaders[0].next_batch()[0])] + [w for w in firsts(loaders[1].next_batch()[0])]
    assert_one_epoch(next_epoch[:len(starts)], LENGTHS, T)
    offsets = lambda ws: {w % T for w in ws if w < LENGTHS[0]}  # shard 0's window offset in each epoch
    assert len(offsets(w for _, w in epoch)) == 1 and offsets(w for _, w in epoch) != offsets(next_epoch[:len(starts)])


def test_global_batch_does_not_depend_on_world_size(ds):
    G = 24
    single = DataLoader(ds, T, G, micro_batch_size=6, seed=3)
    quad = [DataLoader(ds, T, G, micro_batch_size=3, rank=r, world_size=4, seed=3) for r in range(4)]
    assert single.accum_steps == 4 and quad[0].accum_steps == 2
    for step in range(30):  # past the end of the first epoch
        one = torch.cat([single.next_batch()[0] for _ in range(single.accum_steps)])
        many = torch.cat([quad[r].next_batch()[0] for _ in range(quad[0].accum_steps) for r in range(4)])
        assert sorted(firsts(one)) == sorted(firsts(many)), step
        assert torch.equal(one.sort(dim=0).values, many.sort(dim=0).values)


def test_exact_resume_same_world_size_even_mid_step(ds):
    ref = DataLoader(ds, T, 16, 4, seed=11)
    expected = [ref.next_batch() for _ in range(40)]
    first = DataLoader(ds, T, 16, 4, seed=11)
    for _ in range(13):  # mid-step: accum is 4
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))  # survives JSON, as in a checkpoint
    assert state["micro_step"] == 1 and all(isinstance(v, int) for v in state.values())
    resumed = DataLoader(ds, T, 16, 4, seed=11, prefetch=False)
    resumed.load_state_dict(state)
    for i in range(13, 40):
        x, y = resumed.next_batch()
        assert torch.equal(x, expected[i][0]) and torch.equal(y, expected[i][1]), i


def test_resume_at_another_world_size_is_remapped(ds):
    ref = DataLoader(ds, T, 16, 8, seed=5)
    for _ in range(2 * 5):  # 5 optimizer steps
        ref.next_batch()
    state = ref.state_dict()
    after = [firsts(ref.next_batch()[0]) for _ in range(2 * 6)]
    two = [DataLoader(ds, T, 16, 4, rank=r, world_size=2, seed=5) for r in range(2)]
    for loader in two:
        loader.load_state_dict(state)
    for step in range(6):
        one = after[2 * step] + after[2 * step + 1]
        many = [w for _ in range(2) for r in range(2) for w in firsts(two[r].next_batch()[0])]
        assert one == many
    # the other way round: a 2-rank state resumes in one process
    back = DataLoader(ds, T, 16, 16, seed=5)
    back.load_state_dict(two[0].state_dict())
    assert back.position == ref.position


def test_resume_refusals(ds):
    loader = DataLoader(ds, T, 16, 4, seed=5)
    loader.next_batch()
    state = loader.state_dict()
    with pytest.raises(ScalegptError, match="middle of an optimizer step.*micro-step 1"):
        DataLoader(ds, T, 16, 4, rank=0, world_size=2, seed=5).load_state_dict(state)
    with pytest.raises(ScalegptError, match="seq_len was 16 when saved, now 8"):
        DataLoader(ds, 8, 16, 4, seed=5).load_state_dict(state)
    with pytest.raises(ScalegptError, match="seed was 5 when saved, now 6"):
        DataLoader(ds, T, 16, 4, seed=6).load_state_dict(state)
    with pytest.raises(ScalegptError, match="global_batch_size 16 is not divisible by micro_batch_size 3 x "
                                            "world_size 2 = 6"):
        DataLoader(ds, T, 16, 3, world_size=2)


def test_corpus_smaller_than_a_batch_wraps_around(tmp_path):
    small = open_dataset(make_dataset(tmp_path / "s", [50]))  # shuffled: 2 windows of 16 plus slack for the offset
    loader = DataLoader(small, T, 8, 8, seed=1)
    x, _ = loader.next_batch()
    got = firsts(x)
    for e in range(4):  # epoch after epoch, two disjoint windows inside the shard
        assert_one_epoch(got[2 * e:2 * e + 2], [50], T)
    assert len({w % T for w in got}) > 1  # the offset moves between epochs
    assert loader.epoch == 4
    seq = DataLoader(small, T, 4, 4, shuffle=False)
    assert firsts(seq.next_batch()[0]) == [0, 16, 32, 0]


def test_sequential_mode_and_short_last_shard(tmp_path):
    lengths = [40, 40, 20, 10]  # the 10-token shard is shorter than a window and holds none
    d = open_dataset(make_dataset(tmp_path / "q", lengths))
    loader = DataLoader(d, T, 2, 2, shuffle=False)
    got = [w for _ in range(6) for w in firsts(loader.next_batch()[0])]
    assert window_starts(lengths, T) == [0, 16, 40, 56, 80] and got == ([0, 16, 40, 56, 80] * 3)[:12]
    shuffled = DataLoader(d, T, 3, 3, seed=4)  # the window-less shard must not disturb the shuffled walk
    assert shuffled_counts(lengths, T) == [1, 1, 1, 0]
    for _ in range(4):
        assert_one_epoch(firsts(shuffled.next_batch()[0]), lengths, T)
    with pytest.raises(ScalegptError, match="no shard holds seq_len\\+1 = 51 tokens"):
        DataLoader(d, 50, 2, 2)


def test_prefetch_gives_the_same_batches(ds):
    a = DataLoader(ds, T, 8, 4, seed=2, prefetch=True)
    b = DataLoader(ds, T, 8, 4, seed=2, prefetch=False)
    for _ in range(30):
        assert torch.equal(a.next_batch()[0], b.next_batch()[0])
    a.close()


def test_eval_batches_are_deterministic_and_split_across_ranks(ds):
    starts = window_starts(LENGTHS, T)
    all4 = [w for x, _ in eval_batches(ds, 4, T, max_tokens=50 * T) for w in firsts(x)]
    all7 = [w for x, _ in eval_batches(ds, 7, T, max_tokens=50 * T) for w in firsts(x)]
    assert all4 == all7 == starts[:50]
    ranks = [[w for x, _ in eval_batches(ds, 4, T, max_tokens=50 * T, rank=r, world_size=3) for w in firsts(x)]
             for r in range(3)]
    assert sorted(ranks[0] + ranks[1] + ranks[2]) == starts[:50] and not set(ranks[0]) & set(ranks[1])
    assert list(eval_batches(ds, 4, T, max_tokens=2 * T, rank=2, world_size=3)) == []  # a rank with nothing
    assert sum(1 for _ in eval_batches(ds, 8, T)) == -(-len(starts) // 8)  # whole split


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_are_on_device(ds):
    x, y = DataLoader(ds, T, 8, 4, device="cuda").next_batch()
    assert x.is_cuda and y.is_cuda and torch.equal(y[:, :-1], x[:, 1:])


# ------------------------------------------------------------------------------------------------ integrity


@pytest.fixture
def prepared(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    out = tmp_path / "p"
    prepare([f], out, "char", shard_tokens=2000, progress=False)
    return out


def test_open_dataset_checks_shards_against_meta(prepared):
    ds = open_dataset(prepared)
    assert ds.num_tokens == json.loads((prepared / "meta.json").read_text())["splits"]["train"]["num_tokens"]
    shard = prepared / "train_000001.npy"
    good = shard.read_bytes()
    shard.write_bytes(good[:-10])
    with pytest.raises(ScalegptError, match="train_000001.npy: truncated"):
        open_dataset(prepared)
    shard.write_bytes(b"definitely not numpy")
    with pytest.raises(ScalegptError, match="train_000001.npy: not a token array"):
        open_dataset(prepared)
    np.save(shard, np.zeros(2000, dtype=np.int32))
    with pytest.raises(ScalegptError, match="train_000001.npy: dtype int32, but meta.json says uint16"):
        open_dataset(prepared)
    np.save(shard, np.zeros(1999, dtype=np.uint16))
    with pytest.raises(ScalegptError, match="train_000001.npy: 1999 tokens, but meta.json says 2000"):
        open_dataset(prepared)
    shard.unlink()
    with pytest.raises(ScalegptError, match="train_000001.npy: shard listed in meta.json is missing"):
        open_dataset(prepared)
    shard.write_bytes(good)
    meta = json.loads((prepared / "meta.json").read_text())
    meta["dtype"] = "float16"
    (prepared / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ScalegptError, match="meta.json: key 'dtype' is 'float16'"):
        open_dataset(prepared)
    (prepared / "meta.json").write_text("{not json")
    with pytest.raises(ScalegptError, match="meta.json: not valid JSON"):
        open_dataset(prepared)
    with pytest.raises(ScalegptError, match="no such dataset directory"):
        open_dataset(prepared / "nope")


def test_check_command_finds_the_corrupted_shard(prepared, capsys):
    assert main(["check", str(prepared)]) == 0
    assert "all 6 shards ok" in capsys.readouterr().out
    shard = prepared / "train_000001.npy"
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0xFF  # same length, same header: only the checksum can tell
    shard.write_bytes(bytes(data))
    open_dataset(prepared)  # the cheap check at open passes
    assert main(["check", str(prepared)]) == 2
    cap = capsys.readouterr()
    assert "BAD" in cap.out and "train_000001.npy: sha256" in cap.err and cap.err.count("\n") == 1


def test_tokenizer_mismatch_is_refused(prepared):
    ds = open_dataset(prepared)
    ds.check_tokenizer(ds.tokenizer().spec())
    with pytest.raises(ScalegptError, match="tokenizer mismatch: the model uses gpt2"):
        ds.check_tokenizer(GPT2_SPEC)
    with pytest.raises(ScalegptError, match="no split 'test'"):
        open_dataset(prepared, "test")


# ------------------------------------------------------------------ token ids beyond the vocabulary


def _flip(shard: Path, offset: int, value: int) -> None:
    """Overwrite one token in place (what flipped bytes on disk do), leaving header, length and meta.json as they were."""
    tokens = np.load(shard, mmap_mode="r+")
    tokens[offset] = value
    tokens.flush()


def _forget_max_token(data: Path) -> None:
    """meta.json as prepare wrote it before it recorded each shard's largest id."""
    meta = json.loads((data / "meta.json").read_text())
    for split in meta["splits"].values():
        for s in split["shards"]:
            del s["max_token"]
    (data / "meta.json").write_text(json.dumps(meta))


def test_prepare_records_each_shards_largest_id(prepared):
    meta = json.loads((prepared / "meta.json").read_text())
    for split in meta["splits"].values():
        for s in split["shards"]:
            assert s["max_token"] == int(np.load(prepared / s["file"]).max()) < meta["vocab_size"]


@pytest.mark.parametrize("recorded", [True, False], ids=["meta-with-max_token", "meta-without-max_token"])
def test_loader_and_eval_batches_refuse_an_out_of_range_id_naming_shard_and_offset(prepared, recorded):
    if not recorded:
        _forget_max_token(prepared)  # an older dataset still opens; the per-batch check covers it
    _flip(prepared / "train_000001.npy", 1234, 60000)
    ds = open_dataset(prepared)  # the recorded max is from prepare time: flipped bytes only show when read
    loader = DataLoader(ds, seq_len=16, global_batch_size=4, micro_batch_size=4, shuffle=False, prefetch=False)
    message = (f"{prepared / 'train_000001.npy'}: token id 60000 at token offset 1234 is beyond the tokenizer's "
               f"{ds.vocab_size} ids; the shard is corrupted")
    with pytest.raises(ScalegptError, match=message):
        for _ in range(ds.num_tokens // 64 + 1):
            loader.next_batch()
    with pytest.raises(ScalegptError, match=message):
        list(eval_batches(ds, batch_size=8, seq_len=16))


def test_meta_whose_vocabulary_disagrees_with_its_tokenizer_is_refused(prepared):
    meta = json.loads((prepared / "meta.json").read_text())
    good_vocab = meta["vocab_size"]
    for edit, fragment in [({"vocab_size": 5}, "key 'vocab_size' implies a vocabulary of 5 ids"),
                           ({"tokenizer": {**meta["tokenizer"], "vocab_size": 5}},
                            f"key 'vocab_size' implies a vocabulary of {good_vocab} ids but 'tokenizer.vocab_size' is 5"),
                           ({"vocab_size": 5, "tokenizer": {**meta["tokenizer"], "vocab_size": 5}},
                            f"key 'tokenizer.chars' implies a vocabulary of {good_vocab} ids but "
                            "'tokenizer.vocab_size' is 5"),
                           ({"tokenizer": {**meta["tokenizer"], "vocab_size": "many"}},
                            "key 'tokenizer.vocab_size' should be an integer >= 1, got 'many'")]:
        (prepared / "meta.json").write_text(json.dumps({**meta, **edit}))
        with pytest.raises(ScalegptError, match=f"meta.json: {fragment}"):
            open_dataset(prepared)
    # A recorded largest id beyond the vocabulary (an edited chars list would give it) is refused at open.
    shards = meta["splits"]["train"]["shards"]
    shards[2] = {**shards[2], "max_token": good_vocab}
    (prepared / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ScalegptError, match=f"shard train_000002.npy holds token id {good_vocab}, beyond the "
                                            f"tokenizer's {good_vocab} ids"):
        open_dataset(prepared)


def test_check_command_reports_the_out_of_range_id(prepared, capsys):
    _forget_max_token(prepared)
    assert main(["check", str(prepared)]) == 0
    assert "every id within the vocabulary" in capsys.readouterr().out
    _flip(prepared / "val_000000.npy", 7, 999)
    assert main(["check", str(prepared)]) == 2
    cap = capsys.readouterr()
    assert [line.split()[-2:] for line in cap.out.splitlines() if line.startswith("val ")] == [["999", "BAD"]]
    assert "val_000000.npy: sha256" in cap.err and "token id 999 at token offset 7 is beyond the tokenizer's" in cap.err


def test_cli_train_and_eval_on_a_corrupted_shard_are_one_line(prepared, tmp_path, capsys):
    """Issue 14: flipped bytes gave `IndexError: index out of range in self` mid-run in train and eval loss."""
    _flip(prepared / "train_000000.npy", 100, 65535)
    _flip(prepared / "val_000000.npy", 5, 65535)
    run = tmp_path / "run"
    args = ["train", "--data.dir", str(prepared), "--out", str(run), "--model.n_layer", "1", "--model.n_head", "2",
            "--model.n_embd", "16", "--model.block_size", "16", "--train.global_batch_tokens", "64",
            "--train.micro_batch_size", "4", "--train.max_steps", "200", "--train.device", "cpu",
            "--train.compile", "false", "--eval.interval", "0", "--eval.at_start", "false", "--log.plot", "false",
            "--data.shuffle", "false", "--checkpoint.interval", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("scalegpt: error:")]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == errors[0]
    assert f"{prepared / 'train_000000.npy'}: token id 65535 at token offset 100 is beyond" in errors[0]
    # The steps before the bad batch are kept (the checkpoint waiting for its next step is written on the way out);
    # eval loss on the corrupted val shard is one line too.
    assert (run / "checkpoints").is_dir()
    assert main(["eval", "loss", "--checkpoint", str(run), "--data", str(prepared), "--split", "train",
                 "--tokens", "64"]) == 0
    assert main(["eval", "loss", "--checkpoint", str(run), "--data", str(prepared)]) == 2
    err = capsys.readouterr().err
    vocab = json.loads((prepared / "meta.json").read_text())["vocab_size"]
    assert err.strip().splitlines()[-1] == (f"scalegpt: error: {prepared / 'val_000000.npy'}: token id 65535 at token "
                                            f"offset 5 is beyond the tokenizer's {vocab} ids; the shard is corrupted "
                                            f"(`scalegpt check {prepared}` hashes every shard)")
