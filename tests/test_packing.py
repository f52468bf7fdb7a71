"""data.align = "bos": best-fit packing, rows that start at document starts, ranks, exact resume."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from scalegpt.data import DataLoader, open_dataset
from scalegpt.errors import ScalegptError
from scalegpt.packing import best_fit

EOT = 50256
T = 16


def make_docs(root: Path, doc_lengths_per_shard, lead: int = 0) -> Path:
    """Shards of documents [EOT, then counting tokens]; every non-EOT token is unique, so a row says where it came
    from. `lead` tokens before a shard's first EOT are the tail of a document begun in the previous shard."""
    root.mkdir(parents=True, exist_ok=True)
    shards, counter = [], 0
    for i, lengths in enumerate(doc_lengths_per_shard):
        parts = [np.arange(counter, counter + lead)]
        counter += lead
        for n in lengths:
            parts.append(np.concatenate([[EOT], np.arange(counter, counter + n - 1)]))
            counter += n - 1
        tokens = np.concatenate(parts).astype(np.uint32)
        name = f"train_{i:06d}.npy"
        np.save(root / name, tokens)
        shards.append({"file": name, "num_tokens": len(tokens),
                       "sha256": hashlib.sha256((root / name).read_bytes()).hexdigest()})
    meta = {"format": "scalegpt-tokens", "version": 1, "tokenizer": {"kind": "gpt2", "vocab_size": 50257,
            "eot_id": EOT}, "vocab_size": 50257, "eot_id": EOT, "dtype": "uint32",
            "splits": {"train": {"num_tokens": sum(s["num_tokens"] for s in shards), "shards": shards}}}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def test_best_fit_rows_are_full_and_start_with_documents():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 20, size=1000).tolist()  # all shorter than a row
    row_ptr, doc, piece = best_fit(lengths, 33, buffer_docs=50)
    assert len(row_ptr) > 100
    used = set()
    for r in range(len(row_ptr) - 1):
        pieces = list(zip(doc[row_ptr[r]:row_ptr[r + 1]], piece[row_ptr[r]:row_ptr[r + 1]]))
        assert sum(n for _, n in pieces) == 33  # no padding
        assert all(n == lengths[d] for d, n in pieces[:-1])  # whole documents, but for a cropped last one
        assert all(d not in used for d, _ in pieces)  # a document is used once (its cropped tail is dropped)
        used |= {d for d, _ in pieces}
    # best fit wastes little on documents much shorter than the row: under 10% cropped here
    assert sum(lengths[d] for d in used) - int(piece.sum()) < 0.1 * int(piece.sum())


def test_best_fit_takes_the_longest_document_that_fits():
    row_ptr, doc, piece = best_fit([5, 3, 8, 2], 10, buffer_docs=10)
    assert doc[:row_ptr[1]].tolist() == [2, 3]  # 8 then 2 fill 10 exactly


@pytest.fixture
def docs(tmp_path):
    rng = np.random.default_rng(1)
    return open_dataset(make_docs(tmp_path / "d", [rng.integers(2, 40, 120).tolist(), rng.integers(2, 40, 90).tolist()],
                                  lead=7))


def test_every_row_starts_at_a_document_start(docs):
    loader = DataLoader(docs, T, 8, 8, seed=3, align="bos")
    tokens = np.concatenate([np.load(f) for f in docs.shard_files])
    starts = set(np.flatnonzero(tokens == EOT).tolist())
    position_of = {int(t): i for i, t in enumerate(tokens) if t != EOT}
    for _ in range(3 * loader.num_windows // 8):
        x, y = loader.next_batch()
        assert (x[:, 0] == EOT).all()
        for row in np.concatenate([x.numpy(), y.numpy()[:, -1:]], axis=1):
            for i in np.flatnonzero(row == EOT):  # each piece: a document's first tokens, in order
                j = i + 1
                while j < len(row) and row[j] != EOT:
                    assert position_of[int(row[j])] == position_of[int(row[i + 1])] + (j - i - 1) if j > i + 1 \
                        else position_of[int(row[j])] - 1 in starts
                    j += 1
    assert 7 not in {int(v) for v in x.flatten()}  # the leading tail of a document never starts a row


def test_each_epoch_visits_every_row_once(docs):
    loader = DataLoader(docs, T, 4, 4, seed=2, align="bos")
    n = loader.num_windows
    firsts = []
    while len(firsts) < 2 * n:
        firsts += loader.next_batch()[0][:, 1].tolist()
    assert sorted(firsts[:n]) == sorted(firsts[n:2 * n]) and len(set(firsts[:n])) == n


def test_bos_two_ranks_and_exact_resume(docs):
    ref = DataLoader(docs, T, 8, 2, seed=5, align="bos")
    expected = [ref.next_batch()[0] for _ in range(40)]
    ranks = [DataLoader(docs, T, 8, 2, rank=r, world_size=2, seed=5, align="bos") for r in range(2)]
    for i in range(0, 40, 2):
        got = np.concatenate([ranks[r].next_batch()[0].numpy() for r in range(2)])
        assert np.array_equal(got, np.concatenate([expected[i].numpy(), expected[i + 1].numpy()]))
    first = DataLoader(docs, T, 8, 2, seed=5, align="bos")
    for _ in range(13):
        first.next_batch()
    resumed = DataLoader(docs, T, 8, 2, seed=5, align="bos")
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert all(np.array_equal(resumed.next_batch()[0], expected[i]) for i in range(13, 40))
    with pytest.raises(ScalegptError, match="align_bos was 1 when saved, now 0"):
        DataLoader(docs, T, 8, 2, seed=5).load_state_dict(first.state_dict())


def test_no_document_start_is_one_line(tmp_path):
    root = make_docs(tmp_path / "d", [[]], lead=500)  # 500 tokens, no EOT
    with pytest.raises(ScalegptError, match='data.align = "bos" found no document start'):
        DataLoader(open_dataset(root), T, 8, 8, align="bos")
