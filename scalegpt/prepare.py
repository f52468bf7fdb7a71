"""`scalegpt prepare`: text corpus -> token shards + meta.json, streaming, parallel, deterministic, atomic.

Layout of an output directory:
    train_000000.npy ...   uint16 (vocabulary <= 65536) or uint32 token arrays of exactly `shard_tokens` tokens,
    val_000000.npy ...     except the last shard of each split; every document is preceded by the EOT id
    meta.json              written last: format version, tokenizer spec, dtype, per-shard token counts, sha256
                           and largest token id (`max_token`), inputs with sizes, the command line. No meta.json = not a dataset.
    tokenizer.json         (char tokenizer only) the vocabulary, usable as `--tokenizer DIR/tokenizer.json`

Work happens in DIR/.partial/ (shards are written to a temp name, fsync'ed, then renamed). Only when every shard is
complete are they moved into DIR and meta.json written, so an interrupted run never leaves something that looks like a
dataset, and an existing dataset is replaced (with --overwrite) only once its replacement is complete. Re-running the
same command after an interruption redoes the work (tokenization is deterministic) and checks that the shards the
interrupted run had finished come out byte-identical; an input error removes .partial and leaves DIR as it was.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np

from scalegpt._fs import atomic_file, fsync_dir, read_json_object, write_text_atomically
from scalegpt.errors import ScalegptError
from scalegpt.outputs import check_output, check_output_path
from scalegpt.sources import Source, describe_skipped, discover
from scalegpt.tokenizer import CharTokenizer, GPT2Tokenizer, Tokenizer, get_tokenizer, tokenizer_from_spec

FORMAT = "scalegpt-tokens"
FORMAT_VERSION = 1
PARTIAL = ".partial"
BATCH_CHARS = 1 << 19  # characters per work item sent to a worker


def shard_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


class ShardWriter:
    """Fills fixed-size shards of one split; each full shard is written atomically (temp name, fsync, rename)."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int, expected: list[dict],
                 on_shard):
        self.directory, self.split, self.dtype, self.shard_tokens = directory, split, dtype, shard_tokens
        self.buf = np.empty(shard_tokens, dtype=dtype)  # untouched pages cost nothing until filled
        self.fill = 0
        self.shards: list[dict] = []
        self.expected = expected  # shards an interrupted run of the same command finished: must match
        self.on_shard = on_shard
        self.num_tokens = 0
        self.num_documents = 0

    def write(self, tokens: np.ndarray) -> None:
        self.num_tokens += len(tokens)
        while len(tokens):
            n = min(self.shard_tokens - self.fill, len(tokens))
            self.buf[self.fill:self.fill + n] = tokens[:n]
            self.fill += n
            tokens = tokens[n:]
            if self.fill == self.shard_tokens:
                self.flush()

    def flush(self) -> None:
        if self.fill == 0:
            return
        name = f"{self.split}_{len(self.shards):06d}.npy"
        final = self.directory / name
        with atomic_file(final) as tmp:  # committed only if it matches what an interrupted run recorded
            with open(tmp, "wb") as f:
                np.save(f, self.buf[:self.fill])
            record = {"file": name, "num_tokens": int(self.fill), "sha256": file_sha256(tmp)}
            i = len(self.shards)
            if i < len(self.expected) and any(self.expected[i].get(k) != v for k, v in record.items()):
                raise ScalegptError(f"{final}: resumed run produced a different shard than the interrupted run "
                                    f"(inputs changed?); re-run with --overwrite to start afresh")
        # The largest id lets a reader refuse ids beyond a vocabulary without reading the shard (scalegpt.data).
        self.shards.append({**record, "max_token": int(self.buf[:self.fill].max())})
        self.fill = 0
        self.on_shard()

    def summary(self) -> dict:
        return {"num_tokens": self.num_tokens, "num_documents": self.num_documents, "shards": self.shards}


# ------------------------------------------------------------------------------------------------ tokenizing workers

_WORKER_TOK: Tokenizer | None = None


def _worker_init(spec: dict) -> None:
    global _WORKER_TOK
    if _WORKER_TOK is None or _WORKER_TOK.spec() != spec:
        _WORKER_TOK = tokenizer_from_spec(spec)


def _encode_texts(texts: list[tuple[str, bool]], dtype: str, tok: Tokenizer | None = None) -> list[np.ndarray]:
    """Token arrays of (text, continues) pairs: `continues` marks a piece that carries on the document of the piece
    before it. `tok` is given in thread mode, None in a worker process."""
    in_thread = tok is not None and threading.current_thread() is not threading.main_thread()
    tok = tok or _WORKER_TOK
    enc = getattr(tok, "enc", None)
    if isinstance(tok, GPT2Tokenizer) and not in_thread and hasattr(enc, "encode_to_numpy"):
        # Straight into an array, skipping a Python list of ints (~7% of the time). With no special token
        # allowed nor disallowed, this is exactly encode_ordinary ("<|endoftext|>" in a document stays text).
        # Not in threads: unlike encode_ordinary, it keeps the GIL while it works.
        return [enc.encode_to_numpy(t, allowed_special=set(), disallowed_special=()).astype(dtype, copy=False)
                for t, _ in texts]
    return [np.asarray(tok.encode_continuation(t) if continues else tok.encode(t), dtype=dtype)
            for t, continues in texts]


class OrderedPool:
    """Tokenizes work items in `workers` processes, or threads for GPT-2 (tiktoken's encode_ordinary releases the
    GIL, so threads run in parallel without copying text and tokens between processes). Results come back in
    submission order, which makes the output independent of the worker count, with at most 2 items per worker in
    flight (Pool.imap would read the whole corpus ahead into its queue)."""

    def __init__(self, tok: Tokenizer, workers: int, dtype: np.dtype, threads: bool | None = None):
        self.dtype = dtype.name
        self.pool = None
        self.tok = tok
        _worker_init(tok.spec())
        if threads is None:
            threads = isinstance(tok, GPT2Tokenizer)
        if workers > 1 and threads:
            from multiprocessing.pool import ThreadPool

            self.pool = ThreadPool(workers)
        elif workers > 1:
            import multiprocessing as mp

            # fork shares the already-loaded BPE tables; elsewhere each worker loads them once from the spec.
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None)
            self.pool = ctx.Pool(workers, initializer=_worker_init, initargs=(tok.spec(),))
        self.threads = threads
        self.depth = 2 * workers

    def map(self, items):
        if self.pool is None:
            for item, texts in items:
                yield item, _encode_texts(texts, self.dtype, self.tok)
            return
        pending = deque()
        for item, texts in items:
            args = (texts, self.dtype, self.tok if self.threads else None)  # processes use their own copy
            pending.append((item, self.pool.apply_async(_encode_texts, args)))
            if len(pending) >= self.depth:
                it, fut = pending.popleft()
                yield it, fut.get()
        while pending:
            it, fut = pending.popleft()
            yield it, fut.get()

    def close(self):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def _batches(pieces):
    """Groups pieces into work items of about BATCH_CHARS characters."""
    group, size = [], 0
    for p in pieces:
        group.append(p)
        size += len(p.text)
        if size >= BATCH_CHARS:
            yield group, [(q.text, not q.new_doc) for q in group]
            group, size = [], 0
    if group:
        yield group, [(q.text, not q.new_doc) for q in group]


# ------------------------------------------------------------------------------------------------------- the job


def _check_output_dir(out: Path, overwrite: bool, fingerprint: str) -> dict | None:
    """Refuses to touch an existing dataset without --overwrite; returns the state of a resumable run, if any."""
    state_file = out / PARTIAL / "state.json"
    state = None
    if state_file.is_file():
        try:
            state = read_json_object(state_file)
        except ScalegptError:  # damaged scratch: start afresh rather than trust it
            state = None
    resumable = state is not None and state.get("fingerprint") == fingerprint and not overwrite
    strays = sorted(p.name for p in out.glob("*.npy")) if out.is_dir() else []
    if strays and not overwrite and not resumable:
        raise ScalegptError(f"--out {out}: holds {strays[0]} but no meta.json (from another command?); "
                            f"pass --overwrite to replace it, or choose another --out")
    return state if resumable else None


def build_tokenizer(tokenizer: "str | Tokenizer", source: Source) -> tuple[Tokenizer, int | None]:
    """The tokenizer of a prepare run, and the inputs' character count when finding it read them all: `char` builds
    its vocabulary from every character of the inputs (one pass), a name or path loads, a Tokenizer is used as is."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer, None
    if tokenizer != "char":
        return get_tokenizer(tokenizer), None
    chars, n_chars = source.char_stats()
    if not chars:
        raise ScalegptError(f"no text found in the inputs {[d.get('path') for d in source.describe()]}")
    return CharTokenizer("".join(sorted(chars))), n_chars


def _fill_val(ids: np.ndarray, val: "ShardWriter", train: "ShardWriter", val_tokens: int,
              eot: np.ndarray) -> np.ndarray:
    """--val-tokens N: write to val the part of a val document's tokens that keeps val under 2 N; return the rest,
    which starts a new train document. Documents are taken whole until val has N tokens, but one huge document
    taken whole could swallow the corpus. (--val-fraction splits a large text file by position instead:
    Source.pieces.)"""
    room = max(0, 2 * val_tokens - val.num_tokens)
    if len(ids) <= room:
        val.write(ids)
        return ids[:0]
    val.write(ids[:room])
    train.num_documents += 1
    train.write(eot)
    return ids[room:]


def prepare(inputs=(), out="data", tokenizer: str | Tokenizer = "gpt2", *, text_field: str = "text",
            hf_dataset: str | None = None, hf_config: str | None = None, hf_split: str = "train",
            shard_tokens: int = 100_000_000, val_tokens: int | None = None, val_fraction: float | None = None,
            workers: int = 1, encoding: str = "utf-8", errors: str = "strict", overwrite: bool = False,
            command: list[str] | None = None, progress: bool = True, files: list | None = None,
            split_by_position: bool | None = None) -> dict:
    """Prepare a dataset directory; returns its meta dict. See the module docstring for the layout and guarantees.

    This is the one tokenize-and-shard step: `scalegpt.executors` runs it once per task of a datatrove pipeline with
    the task's share of the inputs (`files`: already discovered `InputFile`s, parquet row groups included), a
    `Tokenizer` built once for all tasks, and `split_by_position` saying how the whole corpus (not the task's share)
    is split into train and val."""
    out = check_output_path(out)  # before Path(): Path("") is "."
    if shard_tokens < 1:
        raise ScalegptError(f"--shard-tokens must be >= 1, got {shard_tokens}")
    if workers < 1:
        raise ScalegptError(f"--workers must be >= 1, got {workers}")
    if val_tokens is not None and val_fraction is not None:
        raise ScalegptError("give --val-tokens or --val-fraction, not both")
    if val_tokens is not None and val_tokens < 0:
        raise ScalegptError(f"--val-tokens must be >= 0, got {val_tokens}")
    if val_tokens is None and val_fraction is None:
        val_fraction = 0.1
    if val_fraction is not None and not 0 <= val_fraction < 1:
        raise ScalegptError(f"--val-fraction must be in [0, 1), got {val_fraction}")

    # A directory holding only the scratch of an interrupted prepare is continued (or restarted) without --overwrite.
    check_output(out, kind="dataset", inputs=list(inputs), overwrite=overwrite,
                 reuse=not os.path.lexists(out / "meta.json"))
    skipped: list[Path] = []
    if hf_dataset:
        if inputs:
            raise ScalegptError("give --input or --hf-dataset, not both")
        source = Source(hf=(hf_dataset, hf_config, hf_split), text_field=text_field, encoding=encoding, errors=errors)
    else:
        found = files if files is not None else discover(list(inputs), exclude=out, skipped=skipped)
        source = Source(found, text_field=text_field, encoding=encoding, errors=errors)
        if describe_skipped(skipped):
            print(f"prepare: {describe_skipped(skipped)}")

    tok, n_chars = build_tokenizer(tokenizer, source)
    spec = tok.spec()
    dtype = shard_dtype(tok.vocab_size)

    single = source.single_document if split_by_position is None else split_by_position
    cut_at = None
    if single and val_fraction:
        if n_chars is None:
            n_chars = source.char_count()
        cut_at = int(n_chars * (1 - val_fraction))  # nanoGPT: train = data[:int(n*0.9)]
    split_rule = ("position" if single else "documents")
    options = {"tokenizer": spec, "text_field": text_field, "encoding": encoding, "errors": errors,
               "shard_tokens": shard_tokens, "val_tokens": val_tokens, "val_fraction": val_fraction}
    fingerprint = hashlib.sha256(json.dumps([FORMAT_VERSION, source.identity(), options],
                                            sort_keys=True).encode()).hexdigest()
    state = _check_output_dir(out, overwrite, fingerprint)

    partial = out / PARTIAL
    created_out = not out.exists()
    if state is None and partial.exists():
        shutil.rmtree(partial)  # scratch of a different or overwritten command: never a dataset
    partial.mkdir(parents=True, exist_ok=True)
    expected = (state or {}).get("shards", {})

    def save_state():
        # Until a re-run has regenerated them, the shards of the interrupted run stay on record for the next check.
        s = {"fingerprint": fingerprint,
             "shards": {w.split: max(w.shards, w.expected, key=len) for w in (train, val)}}
        write_text_atomically(partial / "state.json", json.dumps(s))

    train = ShardWriter(partial, "train", dtype, shard_tokens, expected.get("train", []), lambda: save_state())
    val = ShardWriter(partial, "val", dtype, shard_tokens, expected.get("val", []), lambda: save_state())
    save_state()

    pool = OrderedPool(tok, workers, dtype)  # before tqdm starts its monitor thread: fork a thread-free process
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=source.total_bytes, unit="B", unit_scale=True, desc="prepare", file=sys.stderr,
                   dynamic_ncols=True, mininterval=0.5)
    eot = np.array([tok.eot_id], dtype=dtype)
    t0 = time.time()
    docs = 0
    holdback: deque = deque()  # single document + --val-tokens: the last N tokens, held back for val
    held = 0
    ok = False
    try:
        current = train
        pieces = source.pieces(cut_at=cut_at, progress=bar.update if bar else None,
                               val_fraction=val_fraction if not single and val_tokens is None else None)
        for group, arrays in pool.map(_batches(pieces)):
            for piece, ids in zip(group, arrays):
                if piece.new_doc:
                    docs += piece.side != "val"
                    if piece.side is not None:
                        current = train if piece.side == "train" else val
                    elif single or (val_fraction is not None and val_fraction == 0) or val_tokens == 0:
                        current = train
                    elif val_tokens is not None:
                        current = val if val.num_tokens < val_tokens else train
                    else:  # val takes a document whenever it is behind its share of the tokens so far
                        current = val if val.num_tokens < val_fraction * (train.num_tokens + val.num_tokens) else train
                    current.num_documents += 1
                    current.write(eot)
                if current is val and piece.side is None and not single and val_tokens is not None:
                    ids = _fill_val(ids, val, train, val_tokens, eot)
                    current = val if len(ids) == 0 else train  # a large document's rest goes to train
                if single and val_tokens:
                    holdback.append(ids)
                    held += len(ids)
                    while held - len(holdback[0]) >= val_tokens:
                        held -= len(holdback[0])
                        train.write(holdback.popleft())
                else:
                    current.write(ids)
            if bar:
                bar.set_postfix_str(f"docs={docs:,} tokens={train.num_tokens + val.num_tokens:,} "
                                    f"tok/s={(train.num_tokens + val.num_tokens) / max(1e-9, time.time() - t0):,.0f}",
                                    refresh=False)
        if holdback:
            tail = np.concatenate(list(holdback))
            split = max(0, len(tail) - val_tokens)
            train.write(tail[:split])
            val.num_documents += 1
            val.write(eot)
            val.write(tail[split:])
        if train.num_tokens + val.num_tokens == 0:
            raise ScalegptError(f"no text found in the inputs {[d.get('path') for d in source.describe()]}")
        if train.num_tokens <= train.num_documents:  # nothing but EOT separators
            raise ScalegptError(f"the train split is empty ({val.num_documents} document(s), all taken for "
                                f"validation); lower --val-tokens/--val-fraction or add documents")
        train.flush()
        val.flush()
        ok = True
    except (ScalegptError, OSError):  # bad input, unreadable file, full disk: leave --out as it was
        shutil.rmtree(partial, ignore_errors=True)
        if created_out:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        pool.close()
        if bar:
            bar.close()
    assert ok
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION, "tokenizer": spec, "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id, "dtype": dtype.name, "shard_tokens": shard_tokens,
        "split_rule": split_rule, "val_tokens": val_tokens, "val_fraction": val_fraction,
        "splits": {"train": train.summary(), "val": val.summary()},
        "val_share": round(val.num_tokens / max(1, train.num_tokens + val.num_tokens), 4),  # as realised
        "skipped_inputs": [str(p) for p in skipped],
        "inputs": source.describe(), "text_field": text_field, "encoding": encoding, "errors": errors,
        "command": command if command is not None else sys.argv,
    }
    try:
        _stage_metadata(partial, meta, tok)
    except (ScalegptError, OSError):
        shutil.rmtree(partial, ignore_errors=True)
        if created_out:
            shutil.rmtree(out, ignore_errors=True)
        raise
    _swap_in(out, partial, meta, tok)
    return meta


def _stage_metadata(partial: Path, meta: dict, tok: Tokenizer) -> None:
    """meta.json (and a char tokenizer's tokenizer.json) into .partial: the last bytes the dataset needs are written
    before the old dataset is touched, so a full disk here leaves it as it was."""
    if isinstance(tok, CharTokenizer):
        tok.save(partial / "tokenizer.json")
    write_text_atomically(partial / "meta.json", json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    fsync_dir(partial)


def _swap_in(out: Path, partial: Path, meta: dict, tok: Tokenizer) -> None:
    """Renames only, so nothing here needs disk space: old meta.json out (the old set stops being a dataset), old
    shards out, the new shards in, and the new meta.json last."""
    old_meta = out / "meta.json"
    if old_meta.exists():
        os.remove(old_meta)
    for p in list(out.glob("train_*.npy")) + list(out.glob("val_*.npy")) + [out / "tokenizer.json"]:
        if p.exists():
            os.remove(p)
    for split in ("train", "val"):
        for shard in meta["splits"][split]["shards"]:
            os.replace(partial / shard["file"], out / shard["file"])
    if isinstance(tok, CharTokenizer):
        os.replace(partial / "tokenizer.json", out / "tokenizer.json")
    fsync_dir(out)  # the shards' renames are durable before meta.json names them
    os.replace(partial / "meta.json", out / "meta.json")
    fsync_dir(out)
    shutil.rmtree(partial, ignore_errors=True)
