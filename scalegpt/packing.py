"""BOS-aligned training rows (`data.align = "bos"`): every row of T + 1 tokens begins at a document start.

A prepared dataset puts the tokenizer's end-of-text id before every document (scalegpt.prepare), so that id is the
BOS: a shard's documents are the spans from one BOS to the next (tokens before a shard's first BOS are the tail of a
document begun in the previous shard and are skipped). Rows are packed best-fit, the idea of nanochat's BOS-aligned
loader: documents stream through a buffer of BUFFER_DOCS; a row takes the longest buffered document that still fits
whole, again and again, and when none fits it takes the shortest one cropped to the space left (the rest of that
document is dropped). So no row starts mid-document, nothing is padded, and what is lost is the cropped tails: little
when documents are short against T, most of a corpus whose documents are much longer than T.

The plan of a shard depends only on its tokens and T (not on the seed or epoch): its row count is fixed, and the
loader shuffles rows exactly as it shuffles windows (scalegpt.data). Plans are rebuilt when the walk enters a shard
(two cached), after one pass at start that counts the rows of every shard.
"""
from __future__ import annotations

import bisect
import threading
from collections import OrderedDict

import numpy as np

from scalegpt.errors import ScalegptError

BUFFER_DOCS = 1000  # documents the best fit chooses among (nanochat's buffer is of this order)
SCAN_TOKENS = 1 << 24  # the shard is scanned for BOS ids this many tokens at a time


def document_spans(ds, shard: int, bos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) of every document that begins in this shard (a document runs to the next BOS or the end)."""
    n = ds.shard_lengths[shard]
    starts = []
    for lo in range(0, n, SCAN_TOKENS):
        chunk = ds.read(shard, lo, min(n, lo + SCAN_TOKENS))
        starts.append(np.flatnonzero(chunk == bos_id) + lo)
    starts = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
    return starts, np.diff(np.append(starts, n))


def best_fit(lengths: list[int], row_len: int, buffer_docs: int = BUFFER_DOCS):
    """Pack documents (by length, in order) into rows of exactly row_len tokens, each starting with a document.

    Returns (row_ptr, piece_doc, piece_len): row r is the pieces row_ptr[r]:row_ptr[r+1], piece i being the first
    piece_len[i] tokens of document piece_doc[i]. A last row that the documents cannot fill is dropped."""
    keys: list[tuple[int, int]] = []  # (length, document) of the buffered documents, sorted
    n, nxt = len(lengths), 0
    row_ptr, piece_doc, piece_len = [0], [], []
    while True:
        pieces, remaining = [], row_len
        while remaining > 0:
            while len(keys) < buffer_docs and nxt < n:
                bisect.insort(keys, (lengths[nxt], nxt))
                nxt += 1
            if not keys:
                break
            i = bisect.bisect_right(keys, (remaining, n)) - 1  # the longest document that fits whole
            if i >= 0:
                length, doc = keys.pop(i)
            else:  # none fits: crop the shortest to the space left
                (_, doc), length = keys.pop(0), remaining
            pieces.append((doc, length))
            remaining -= length
        if remaining > 0:
            break
        piece_doc += [d for d, _ in pieces]
        piece_len += [length for _, length in pieces]
        row_ptr.append(len(piece_doc))
    return np.array(row_ptr, dtype=np.int64), np.array(piece_doc, dtype=np.int64), np.array(piece_len, dtype=np.int64)


class BosPacking:
    """The best-fit rows of every shard of a Dataset for sequences of T tokens (rows of T + 1)."""

    def __init__(self, ds, seq_len: int):
        self.ds, self.row_len = ds, seq_len + 1
        self.bos_id = int(ds.tokenizer_spec.get("eot_id", -1))
        if self.bos_id < 0:
            self.bos_id = int(ds.tokenizer().eot_id)
        self._plans: OrderedDict[int, tuple] = OrderedDict()
        self._lock = threading.Lock()  # the prefetch thread and the caller may both ask
        self.counts, self.documents, self.tokens_in_rows = [], 0, 0
        for shard in range(len(ds.shard_lengths)):  # one pass to count rows; plans are rebuilt when needed
            row_ptr, _, starts, _ = self._build(shard)
            self.counts.append(len(row_ptr) - 1)
            self.documents += len(starts)
            self.tokens_in_rows += (len(row_ptr) - 1) * self.row_len
        if not any(self.counts):
            raise ScalegptError(f"{ds.data_dir} ({ds.split}): data.align = \"bos\" found no document start (token id "
                                f"{self.bos_id}) followed by {self.row_len} tokens; use data.align = \"none\"")

    def describe(self) -> str:
        share = self.tokens_in_rows / max(1, self.ds.num_tokens)
        return (f"{sum(self.counts):,} rows of {self.row_len} tokens from {self.documents:,} documents start at a "
                f"document start; {share:.1%} of the tokens are in them (the rest: cropped document tails)")

    def _build(self, shard: int):
        starts, lengths = document_spans(self.ds, shard, self.bos_id)
        row_ptr, piece_doc, piece_len = best_fit(lengths.tolist(), self.row_len)
        return row_ptr, piece_doc, starts, piece_len

    def pieces(self, shard: int, row: int) -> list[tuple[int, int]]:
        """[(start token, length)] of one row, in order; the lengths sum to T + 1."""
        with self._lock:
            plan = self._plans.get(shard)
            if plan is None:
                plan = self._plans[shard] = self._build(shard)
                while len(self._plans) > 2:
                    self._plans.popitem(last=False)
            else:
                self._plans.move_to_end(shard)
        row_ptr, piece_doc, starts, piece_len = plan
        lo, hi = int(row_ptr[row]), int(row_ptr[row + 1])
        return [(int(starts[piece_doc[i]]), int(piece_len[i])) for i in range(lo, hi)]
