"""Weighted mixtures of prepared datasets (`[[data.mix]]`): which source each training sequence comes from.

Global sequence g (the same numbering as scalegpt.data: step s uses [s*G, (s+1)*G), rank r of micro-step m reads
s*G + m*B*W + r*B ... + B) is drawn from source k, as that source's j-th sequence, where both are a pure function of
(weights, seed, g), never of the world size or of what came before:

- Shares. The weights are normalised and fixed as integers u_k summing to 2^32 (exact arithmetic from there on).
  Among the first n sequences, sources 0..k hold F_k(n) = floor(n * (u_0 + ... + u_k) / 2^32), so source k holds
  N_k(n) = F_k(n) - F_{k-1}(n): within one sequence of n * share_k at every n.
- Blocks. Sequences come in blocks of L (at least 1024, and at least 2^32 / min u_k, so that every source's count
  per block, N_k((b+1)L) - N_k(bL), is >= 0). Block b holds those counts of each source in an order permuted from
  (seed, b) (unshuffled: evenly interleaved). Sequence g = bL + o is source k's (N_k(bL) + its rank among block b's
  sequences of source k before o)-th.
- Sources. Source k walks its own sequences exactly as a single dataset does (scalegpt.data.DataLoader: shuffled
  windows or BOS-aligned rows, seeded from (seed, k)); a source that runs out wraps into its next epoch, so source k
  is in epoch j // num_windows_k.

So proportions hold to within one sequence at block ends (and over any 10k consecutive sequences within a few
sequences per block), ranks split every step exactly as a single process would draw it, and the loader state is one
global index: resume is exact at any world size, as for one dataset.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from scalegpt.batches import Batches
from scalegpt.data import DataLoader, Dataset
from scalegpt.errors import ScalegptError

UNIT = 1 << 32
MIN_BLOCK = 1024


def integer_shares(weights: list[float]) -> list[int]:
    """The weights as integers summing to 2^32 (largest remainders get the rounding), each >= 1."""
    total = math.fsum(weights)
    exact = [w / total * UNIT for w in weights]
    units = [max(1, int(x)) for x in exact]
    for i in sorted(range(len(units)), key=lambda i: (units[i] - exact[i], i))[:max(0, UNIT - sum(units))]:
        units[i] += 1
    while sum(units) > UNIT:  # only when a tiny share was raised to 1: take it from the largest
        units[units.index(max(units))] -= 1
    return units


class Assignment:
    """Source and per-source index of every global sequence (see the module docstring)."""

    def __init__(self, weights: list[float], seed: int, shuffle: bool):
        self.units = integer_shares(weights)
        self.cum = np.cumsum(self.units).tolist()
        self.K, self.seed, self.shuffle = len(weights), seed, shuffle
        self.block = max(MIN_BLOCK, -(-UNIT // min(self.units)))
        self._blocks: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def counts_before(self, n: int) -> list[int]:
        """N_k(n): sequences of each source among the first n."""
        below = [0] + [(n * c) // UNIT for c in self.cum]
        return [below[k + 1] - below[k] for k in range(self.K)]

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(source of each position, that sequence's index in its source) for block b."""
        got = self._blocks.get(b)
        if got is not None:
            return got
        L = self.block
        start, end = self.counts_before(b * L), self.counts_before((b + 1) * L)
        per = [e - s for s, e in zip(start, end)]
        if self.shuffle:
            source = np.random.default_rng([self.seed, b, 3]).permutation(np.repeat(np.arange(self.K), per))
        else:  # evenly interleaved: the i-th of c sequences of a source sits near (i + 0.5) / c of the block
            where = np.concatenate([(np.arange(c) + 0.5) / c for c in per])
            source = np.repeat(np.arange(self.K), per)[np.argsort(where, kind="stable")]
        order = np.argsort(source, kind="stable")
        index = np.empty(L, dtype=np.int64)
        firsts = np.concatenate([[0], np.cumsum(per)[:-1]])
        index[order] = np.arange(L) - np.repeat(firsts, per) + np.repeat(start, per)
        self._blocks[b] = got = (source, index)
        while len(self._blocks) > 2:
            self._blocks.popitem(last=False)
        return got

    def __call__(self, g: int) -> tuple[int, int]:
        """(source, index in that source) of global sequence g."""
        b, o = divmod(g, self.block)
        source, index = self._block(b)
        return int(source[o]), int(index[o])


def source_names(dirs: list[str]) -> list[str]:
    """A short name per source: the directory's last part, or the whole path where two last parts are equal."""
    from pathlib import Path

    last = [Path(d).name or d for d in dirs]
    return [n if last.count(n) == 1 else d for n, d in zip(last, dirs)]


def check_same_tokenizers(datasets: list[Dataset], dirs: list[str]) -> None:
    """One tokenizer for the whole mixture, or one line naming the first two datasets that differ."""
    first = datasets[0].tokenizer_spec
    for ds, d in zip(datasets[1:], dirs[1:]):
        if ds.tokenizer_spec != first:
            def name(spec):
                return f"{spec.get('kind')} ({spec.get('vocab_size')} ids)"

            raise ScalegptError(f"data.mix: {dirs[0]} and {d} were prepared with different tokenizers "
                                f"({name(first)} vs {name(ds.tokenizer_spec)}" +
                                (", same kind and size but different vocabularies" if name(first) ==
                                 name(ds.tokenizer_spec) else "") + "); prepare them with the same --tokenizer")


class MixtureLoader(Batches):
    """DataLoader's interface (next_batch, state_dict, load_state_dict, close) over several datasets by weight."""

    def __init__(self, datasets: list[Dataset], weights: list[float], seq_len: int, global_batch_size: int,
                 micro_batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 1337, shuffle: bool = True,
                 device="cpu", prefetch: bool = True, align: str = "none", names: list[str] | None = None):
        if not datasets or len(datasets) != len(weights):
            raise ScalegptError(f"a mixture needs one weight per dataset, got {len(datasets)} and {len(weights)}")
        dirs = [str(ds.data_dir) for ds in datasets]
        check_same_tokenizers(datasets, dirs)
        self._init_batches(seq_len, global_batch_size, micro_batch_size, rank, world_size, seed, shuffle, device,
                           prefetch)
        self.names = names or source_names(dirs)
        self.weights = [float(w) for w in weights]
        self.assign = Assignment(self.weights, self.seed, self.shuffle)
        seeds = [int(np.random.SeedSequence([self.seed, k]).generate_state(1)[0]) for k in range(len(datasets))]
        self.sources = [DataLoader(ds, self.T, 1, 1, seed=s, shuffle=shuffle, prefetch=False, align=align)
                        for ds, s in zip(datasets, seeds)]  # walked by this loader's own (prefetch) thread
        self.align = align

    @property
    def num_windows(self) -> list[int]:
        return [s.num_windows for s in self.sources]

    def consumed(self, position: int | None = None) -> list[int]:
        """Sequences drawn from each source before global sequence `position` (default: the current one)."""
        p = self.position if position is None else position
        b, o = divmod(p, self.assign.block)
        counts = self.assign.counts_before(b * self.assign.block)
        if o:
            source, _ = self.assign._block(b)
            counts = [c + int(n) for c, n in zip(counts, np.bincount(source[:o], minlength=self.assign.K))]
        return counts

    @property
    def epochs(self) -> list[int]:
        """The epoch each source is in (0 = its first pass; it wraps around when it runs out)."""
        return [c // n for c, n in zip(self.consumed(), self.num_windows)]

    @property
    def epoch(self) -> int:
        return min(self.epochs)

    def _identity(self) -> dict:
        return {"seed": self.seed, "shuffle": int(self.shuffle), "seq_len": self.T,
                "align_bos": int(self.align == "bos"),
                "sources": [f"{s.ds.data_dir}:{w}:{s.num_windows}" for s, w in zip(self.sources, self.weights)]}

    def read_row(self, g: int) -> np.ndarray:
        k, j = self.assign(g)
        return self.sources[k].read_row(j)
