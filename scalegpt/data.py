"""Token datasets written by `scalegpt prepare`, and the rank-aware, resumable loader that feeds training.

Windows. A shard of n tokens holds (n - 1) // T windows of T + 1 tokens at stride T (x = window[:-1], y = window[1:]);
a window never crosses a shard boundary, so at most T tokens at the end of each shard are never an input (with the
default 100M-token shards, 0.001%) and a shard shorter than T + 1 tokens contributes no window.

Order. Epoch e visits every window exactly once: the shard order is a permutation seeded by (seed, e), and the windows
of each shard a permutation seeded by (seed, e, shard), generated only when the walk enters that shard (never one
permutation of all windows). The sequence of global windows g = 0, 1, 2, ... (epoch g // num_windows) is therefore a
pure function of the seed, not of the world size: optimizer step s uses windows [s*G, (s+1)*G), and micro-step m of
rank r reads windows s*G + m*B*W + r*B ... + B. Two ranks together draw exactly the batch one process draws, and
the loader state is one global window index, valid at any world size. A corpus with fewer windows than a batch simply
wraps into the next epoch. `shuffle=False` walks shards and windows in order.

Offsets. Shuffled, epoch e shifts every window of a shard by a seeded offset in [0, T) (one window per shard is kept
as slack for it), so repeated epochs see new window boundaries, as nanoGPT's random offsets give, while an epoch's
windows stay disjoint and the order stays a pure function of (seed, epoch).

Rows. With align="bos" the windows of a shard are instead its best-fit rows of whole documents (scalegpt.packing),
walked in the same order without offsets. Several datasets by weight: scalegpt.mixture, on the same `Batches` base.
"""
from __future__ import annotations

import mmap
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from scalegpt._fs import MISSING, os_error_message, path_problem, read_json
from scalegpt.batches import Batches, _int_arg, _to_device
from scalegpt.errors import ScalegptError
from scalegpt.tokenizer import check_same_tokenizer, tokenizer_from_spec

FORMAT = "scalegpt-tokens"
SUPPORTED_VERSIONS = (1,)
DTYPES = ("uint16", "uint32")
RELEASE_EVERY = 8  # window reads between drops of the mapped pages


def _load_meta(data_dir: Path) -> dict:
    meta_path = data_dir / "meta.json"
    if data_dir.exists() and not data_dir.is_dir():
        raise ScalegptError(f"{data_dir}: is a file, expected a dataset directory written by `scalegpt prepare`")
    why = path_problem(data_dir, "dir")  # the true cause: a symlink loop or a denied folder is not "missing"
    if why is not None:
        what = "no such dataset directory" if why == MISSING else why
        raise ScalegptError(f"{data_dir}: {what} (create one with `scalegpt prepare`)")
    why = path_problem(meta_path)
    if why is not None and why != MISSING:  # a FIFO, a folder, a symlink loop: the true cause, not "missing"
        raise ScalegptError(f"{meta_path}: {why}, expected a dataset meta.json")
    if why == MISSING:
        hint = (" (a preparation was interrupted: re-run the same `scalegpt prepare` command)"
                if (data_dir / ".partial").exists() else " (create one with `scalegpt prepare`)")
        raise ScalegptError(f"{meta_path}: missing, so {data_dir} is not a prepared dataset{hint}")
    meta = read_json(meta_path, "a dataset meta.json")  # the one JSON reader: any depth, FIFOs, errno causes
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ScalegptError(f"{meta_path}: key 'format' should be '{FORMAT}'; not a scalegpt token dataset")
    if meta.get("version") not in SUPPORTED_VERSIONS:
        raise ScalegptError(f"{meta_path}: key 'version' is {meta.get('version')!r}; this scalegpt reads "
                            f"{SUPPORTED_VERSIONS}")
    if meta.get("dtype") not in DTYPES:
        raise ScalegptError(f"{meta_path}: key 'dtype' is {meta.get('dtype')!r}, expected one of {DTYPES}")
    if not isinstance(meta.get("tokenizer"), dict) or "kind" not in meta["tokenizer"]:
        raise ScalegptError(f"{meta_path}: key 'tokenizer' should be a tokenizer spec (a dict with 'kind')")
    splits = meta.get("splits")
    if not isinstance(splits, dict):
        raise ScalegptError(f"{meta_path}: key 'splits' should map split names to their shards")
    for name, info in splits.items():
        shards = info.get("shards") if isinstance(info, dict) else None
        if not isinstance(shards, list) or not all(
                isinstance(s, dict) and isinstance(s.get("file"), str) and isinstance(s.get("num_tokens"), int)
                and isinstance(s.get("sha256"), str) and "/" not in s["file"] and "\\" not in s["file"]
                and (type(s.get("offset", 0)) is int and s.get("offset", 0) >= 0)  # offset: a raw file (llm.c)
                for s in shards):
            raise ScalegptError(f"{meta_path}: key 'splits.{name}.shards' should be a list of "
                                f"{{file, num_tokens, sha256}} entries")
        for s in shards:  # written by prepare since max_token was recorded; older datasets are checked per batch
            if "max_token" in s and (not isinstance(s["max_token"], int) or s["max_token"] < 0):
                raise ScalegptError(f"{meta_path}: key 'splits.{name}.shards' entry {s['file']}: 'max_token' should "
                                    f"be an integer >= 0, got {s['max_token']!r}")
    _check_vocab(meta_path, meta)
    return meta


def _check_vocab(meta_path: Path, meta: dict) -> None:
    """meta.json's vocabulary must agree with its tokenizer spec, and every shard's recorded largest id fit it."""
    spec = meta["tokenizer"]
    vocab = spec.get("vocab_size")
    if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 1:
        raise ScalegptError(f"{meta_path}: key 'tokenizer.vocab_size' should be an integer >= 1, got {vocab!r}")
    implied = {"char": len(spec["chars"]) + 1 if isinstance(spec.get("chars"), str) else None,
               "gpt2": 50257}.get(spec["kind"])
    for key, value in (("vocab_size", meta.get("vocab_size", vocab)), ("tokenizer.chars", implied)):
        if value is not None and value != vocab:
            raise ScalegptError(f"{meta_path}: key '{key}' implies a vocabulary of {value} ids but "
                                f"'tokenizer.vocab_size' is {vocab}; meta.json was edited or is corrupted")
    for name, info in meta["splits"].items():
        for s in info["shards"]:
            if s.get("max_token", -1) >= vocab:
                raise ScalegptError(f"{meta_path}: shard {s['file']} holds token id {s['max_token']}, beyond the "
                                    f"tokenizer's {vocab} ids (0..{vocab - 1}); prepare the dataset again")


def check_token_rows(ds: "Dataset", rows: np.ndarray, where: list[tuple[int, int]]) -> None:
    """Refuse a batch holding an id beyond the vocabulary (a corrupted shard) with the shard file and token offset,
    before the embedding raises an IndexError mid-run: one max per batch."""
    if rows.size and int(rows.max()) >= ds.vocab_size:
        j, i = divmod(int(np.argmax(rows >= ds.vocab_size)), rows.shape[1])
        shard, start = where[j]
        raise ScalegptError(f"{ds.shard_files[shard]}: token id {int(rows[j, i])} at token offset {start + i} is "
                            f"beyond the tokenizer's {ds.vocab_size} ids; the shard is corrupted (`scalegpt check "
                            f"{ds.data_dir}` hashes every shard)")


def _check_shard(path: Path, dtype: str, num_tokens: int, offset: int | None = None) -> None:
    """Length and dtype from the .npy header against meta.json: cheap (reads the header, maps nothing). A raw shard
    (an `offset` in meta.json: llm.c's .bin, see scalegpt.llmc) has its tokens from `offset` to the end of the file."""
    why = path_problem(path)  # before np.load: a FIFO would block, a symlink loop is not "missing"
    if why is not None:
        raise ScalegptError(f"{path}: shard listed in meta.json is {'missing' if why == MISSING else why}")
    if offset is not None:
        expected_size = offset + num_tokens * np.dtype(dtype).itemsize
        if path.stat().st_size != expected_size:
            raise ScalegptError(f"{path}: {path.stat().st_size} bytes, expected {expected_size} for a {offset}-byte "
                                f"header and {num_tokens} {dtype} tokens (truncated?)")
        return
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except OSError as e:
        if e.errno is not None:  # unreadable (permissions, I/O error): say so, not "not a token array"
            raise ScalegptError(os_error_message(e)) from None
        raise ScalegptError(f"{path}: not a token array (.npy) ({e})") from None
    except (ValueError, EOFError) as e:
        reason = "truncated" if "larger than" in str(e) or "greater than" in str(e) else "not a token array (.npy)"
        raise ScalegptError(f"{path}: {reason} ({str(e).splitlines()[0]})") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 1:
        raise ScalegptError(f"{path}: not a token array (expected 1-D {dtype}, got shape {getattr(arr, 'shape', '?')})")
    if arr.dtype != np.dtype(dtype):
        raise ScalegptError(f"{path}: dtype {arr.dtype}, but meta.json says {dtype}")
    if len(arr) != num_tokens:
        raise ScalegptError(f"{path}: {len(arr)} tokens, but meta.json says {num_tokens}")
    expected_size = arr.offset + arr.nbytes
    actual = path.stat().st_size
    if actual != expected_size:
        raise ScalegptError(f"{path}: {actual} bytes, expected {expected_size} for {num_tokens} {dtype} tokens")


class Dataset:
    """One split of a prepared dataset: its shards, memory-mapped on demand (at most two maps open at a time)."""

    def __init__(self, data_dir: Path, split: str, meta: dict):
        self.data_dir, self.split, self.meta = data_dir, split, meta
        info = meta["splits"][split]
        self.shard_files = [data_dir / s["file"] for s in info["shards"]]
        self.shard_lengths = [int(s["num_tokens"]) for s in info["shards"]]
        self.shard_sha256 = [s["sha256"] for s in info["shards"]]
        self.shard_offsets = [s.get("offset") for s in info["shards"]]  # None: a .npy file
        self.dtype = np.dtype(meta["dtype"])
        self.tokenizer_spec: dict = meta["tokenizer"]
        self.num_tokens = sum(self.shard_lengths)
        self._maps: OrderedDict[int, tuple[np.ndarray, mmap.mmap]] = OrderedDict()
        self._reads = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"Dataset({str(self.data_dir)!r}, split={self.split!r}, tokens={self.num_tokens:,}, "
                f"shards={len(self.shard_files)}, dtype={self.dtype.name})")

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer_spec.get("vocab_size", self.meta.get("vocab_size")))

    def tokenizer(self):
        return tokenizer_from_spec(self.tokenizer_spec)

    def check_vocab(self, vocab_size: int, what: str) -> None:
        """ScalegptError when a model with `vocab_size` embeddings cannot take every id of this split."""
        if vocab_size < self.vocab_size:
            raise ScalegptError(f"{what} has a vocabulary of {vocab_size} ids, smaller than the {self.vocab_size} of "
                                f"the tokenizer of {self.data_dir}")

    def check_tokenizer(self, spec: dict, what: str = "the model") -> None:
        """ScalegptError when `spec` is not the tokenizer this data was prepared with."""
        check_same_tokenizer(spec, self.tokenizer_spec, what, f"the data in {self.data_dir}")

    def _map(self, shard: int) -> np.ndarray:
        entry = self._maps.get(shard)
        if entry is None:
            # The header was validated by np.load at open; map the file ourselves to be able to madvise it.
            offset = self.shard_offsets[shard]
            if offset is None:
                offset = np.load(self.shard_files[shard], mmap_mode="r", allow_pickle=False).offset
            with open(self.shard_files[shard], "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            entry = (np.frombuffer(mm, dtype=self.dtype, count=self.shard_lengths[shard], offset=offset), mm)
            self._maps[shard] = entry
            while len(self._maps) > 2:
                self._maps.popitem(last=False)  # unmapped once the array and the map are garbage
        else:
            self._maps.move_to_end(shard)
        return entry[0]

    def read(self, shard: int, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of one shard, copied out of the map (still in the on-disk dtype)."""
        with self._lock:
            out = np.array(self._map(shard)[start:stop])
            self._reads += 1
            if self._reads >= RELEASE_EVERY and hasattr(mmap, "MADV_DONTNEED"):
                # Pages touched through a map count as this process's resident memory until unmapped, and one
                # touch can map a whole large folio (MBs), so a shuffled walk would creep up to the shard size.
                # Unmap them every few reads: they stay in the OS page cache, and this costs ~1 us.
                for _, mm in self._maps.values():
                    mm.madvise(mmap.MADV_DONTNEED)
                self._reads = 0
            return out

    def window_counts(self, seq_len: int) -> list[int]:
        return [(n - 1) // seq_len if n > seq_len else 0 for n in self.shard_lengths]


def open_dataset(data_dir, split: str = "train") -> Dataset:
    """Open one split of a prepared dataset, checking meta.json against every shard's header (length, dtype, size);
    checksums are verified by `check_dataset` / `scalegpt check DIR`, which reads every byte."""
    data_dir = Path(data_dir)
    meta = _load_meta(data_dir)
    if split not in meta["splits"]:
        raise ScalegptError(f"{data_dir}: no split '{split}' (has {', '.join(meta['splits'])})")
    info = meta["splits"][split]
    if not info["shards"]:
        raise ScalegptError(f"{data_dir}: the {split} split is empty (prepared with --val-fraction 0 or "
                            f"--val-tokens 0?)")
    for s in info["shards"]:
        _check_shard(data_dir / s["file"], meta["dtype"], s["num_tokens"], s.get("offset"))
    return Dataset(data_dir, split, meta)


def check_dataset(data_dir) -> list[dict]:
    """Every shard of every split: header checks, the sha256 of the whole file and its largest token id against the
    vocabulary. Returns one row per shard with `ok`, `problem` and `largest` (the id found; absent when the shard could
    not be read); raises only when meta.json itself is unusable."""
    import hashlib

    data_dir = Path(data_dir)
    meta = _load_meta(data_dir)
    rows = []
    for split, info in meta["splits"].items():
        for s in info["shards"]:
            path = data_dir / s["file"]
            row = {"split": split, "file": s["file"], "num_tokens": s["num_tokens"], "dtype": meta["dtype"],
                   "ok": True, "problem": ""}
            try:
                _check_shard(path, meta["dtype"], s["num_tokens"], s.get("offset"))
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    while block := f.read(1 << 22):
                        h.update(block)
                problems = []
                if h.hexdigest() != s["sha256"]:
                    problems.append(f"sha256 {h.hexdigest()[:16]}... does not match meta.json ({s['sha256'][:16]}...)")
                tokens = (np.load(path, mmap_mode="r", allow_pickle=False) if s.get("offset") is None else
                          np.memmap(path, dtype=meta["dtype"], mode="r", offset=s["offset"], shape=(s["num_tokens"],)))
                vocab = meta["tokenizer"]["vocab_size"]
                row["largest"] = int(tokens.max()) if len(tokens) else -1
                if row["largest"] >= vocab:  # what train and eval would stop at
                    offset = int(np.argmax(tokens >= vocab))
                    problems.append(f"token id {int(tokens[offset])} at token offset {offset} is beyond the "
                                    f"tokenizer's {vocab} ids")
                elif s.get("max_token", row["largest"]) != row["largest"]:
                    problems.append(f"largest token id {row['largest']}, but meta.json says {s['max_token']}")
                del tokens
                if problems:
                    raise ScalegptError(f"{path}: {'; '.join(problems)}: the shard is corrupted")
            except ScalegptError as e:
                row["ok"], row["problem"] = False, str(e)
            rows.append(row)
    return rows


ALIGNS = ("none", "bos")


class DataLoader(Batches):
    """Rank-aware, exactly resumable batches of (B, T) int64 windows; see the module docstring for the order.
    align="bos": the windows are the rows of scalegpt.packing (each begins at a document start), in the same order."""

    def __init__(self, ds: Dataset, seq_len: int, global_batch_size: int, micro_batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 1337, shuffle: bool = True, device="cpu", prefetch: bool = True,
                 align: str = "none"):
        self.ds = ds
        if align not in ALIGNS:
            raise ScalegptError(f"align must be one of {' | '.join(ALIGNS)}, got {align!r}")
        self.align = align
        self._init_batches(seq_len, global_batch_size, micro_batch_size, rank, world_size, seed, shuffle, device,
                           prefetch)
        lengths = np.array(ds.shard_lengths, dtype=np.int64)
        self.counts = np.array(ds.window_counts(self.T), dtype=np.int64)
        self.max_offset = np.zeros_like(self.counts)
        self.packing = None
        if align == "bos":
            from scalegpt.packing import BosPacking

            self.packing = BosPacking(ds, self.T)
            self.counts = np.array(self.packing.counts, dtype=np.int64)
        elif self.shuffle:
            # Each epoch shifts a shard's windows by a seeded offset in [0, T), so a second epoch does not replay
            # the first one's exact windows (nanoGPT gets the same effect from random offsets). That needs one
            # window of slack per shard; a shard too short for it keeps its windows (and offsets up to its slack).
            self.counts = np.where(lengths >= 2 * self.T, (lengths - self.T) // self.T, self.counts)
            self.max_offset = np.minimum(self.T - 1, lengths - 1 - self.counts * self.T)
        self.num_windows = int(self.counts.sum())
        if self.num_windows == 0:
            raise ScalegptError(
                f"{ds.data_dir} ({ds.split}): no shard holds seq_len+1 = {self.T + 1} tokens (largest "
                f"{max(ds.shard_lengths)}); use a shorter seq_len or prepare with a larger --shard-tokens")
        self._layouts: OrderedDict = OrderedDict()
        self._perms: OrderedDict = OrderedDict()

    @property
    def epoch(self) -> int:
        return self.position // self.num_windows

    def _identity(self) -> dict:
        return {"seed": self.seed, "shuffle": int(self.shuffle), "seq_len": self.T,
                "align_bos": int(self.align == "bos"), "num_windows": self.num_windows}

    # ------------------------------------------------------------------------------------------- window order

    def _layout(self, epoch: int):
        lay = self._layouts.get(epoch)
        if lay is None:
            n = len(self.counts)
            order = (np.random.default_rng([self.seed, epoch, 0, 0]).permutation(n) if self.shuffle
                     else np.arange(n))
            offsets = np.random.default_rng([self.seed, epoch, 2, 0]).integers(0, self.max_offset + 1)
            lay = (order, np.cumsum(self.counts[order]), offsets)
            self._layouts[epoch] = lay
            while len(self._layouts) > 2:
                self._layouts.popitem(last=False)
        return lay

    def _perm(self, epoch: int, shard: int) -> np.ndarray:
        key = (epoch, shard)
        p = self._perms.get(key)
        if p is None:
            p = np.random.default_rng([self.seed, epoch, 1, shard]).permutation(int(self.counts[shard]))
            self._perms[key] = p
            while len(self._perms) > 3:
                self._perms.popitem(last=False)
        return p

    def window_index(self, g: int) -> tuple[int, int, int]:
        """(shard, window within the shard, epoch) of global window g."""
        epoch, i = divmod(g, self.num_windows)
        order, cum, _ = self._layout(epoch)
        k = int(np.searchsorted(cum, i, side="right"))
        shard = int(order[k])
        local = i - (int(cum[k - 1]) if k else 0)
        return shard, int(self._perm(epoch, shard)[local]) if self.shuffle else local, epoch

    def locate(self, g: int) -> tuple[int, int]:
        """(shard, start token) of global window g (its first piece with align="bos")."""
        shard, w, epoch = self.window_index(g)
        if self.packing is not None:
            return shard, self.packing.pieces(shard, w)[0][0]
        return shard, int(self._layout(epoch)[2][shard]) + w * self.T

    def read_row(self, g: int) -> np.ndarray:
        shard, w, epoch = self.window_index(g)
        if self.packing is None:
            start = int(self._layout(epoch)[2][shard]) + w * self.T
            pieces = [(start, self.T + 1)]
        else:
            pieces = self.packing.pieces(shard, w)
        parts = [self.ds.read(shard, start, start + n) for start, n in pieces]
        for (start, _), part in zip(pieces, parts):
            check_token_rows(self.ds, part[None], [(shard, start)])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def eval_batches(ds: Dataset, batch_size: int, seq_len: int, max_tokens: int | None = None, rank: int = 0,
                 world_size: int = 1, device="cpu"):
    """Deterministic evaluation batches: the first max_tokens // seq_len windows of the split in order (all windows
    when max_tokens is None), window i going to rank i % world_size; batches of up to batch_size windows (the last
    may be smaller, and a rank may get none). The windows do not depend on the batch size."""
    B = _int_arg("batch_size", batch_size, 1)
    T = _int_arg("seq_len", seq_len, 1)
    W = _int_arg("world_size", world_size, 1)
    r = _int_arg("rank", rank, 0)
    if r >= W:
        raise ScalegptError(f"rank {rank} is out of range for world_size {world_size}")
    counts = ds.window_counts(T)
    total = sum(counts)
    if total == 0:
        raise ScalegptError(f"{ds.data_dir} ({ds.split}): no shard holds seq_len+1 = {T + 1} tokens")
    n = total if max_tokens is None else min(total, _int_arg("max_tokens", max_tokens, 0) // T)
    device = torch.device(device)
    mine = range(r, n, W)
    cum = np.cumsum(counts)
    for b in range(0, len(mine), B):
        idx = mine[b:b + B]
        rows = np.empty((len(idx), T + 1), dtype=ds.dtype)
        where = []
        for j, i in enumerate(idx):
            k = int(np.searchsorted(cum, i, side="right"))
            local = i - (int(cum[k - 1]) if k else 0)
            rows[j] = ds.read(k, local * T, local * T + T + 1)
            where.append((k, local * T))
        check_token_rows(ds, rows, where)
        t = torch.from_numpy(rows.astype(np.int64))
        x, y = t[:, :-1].contiguous(), t[:, 1:].contiguous()
        if device.type == "cuda":
            x, y = x.pin_memory(), y.pin_memory()
        yield _to_device(x, device), _to_device(y, device)
