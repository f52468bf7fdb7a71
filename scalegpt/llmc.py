"""llm.c / modded-nanogpt token shards used in place: `scalegpt prepare --from-llmc DIR --out OUT`.

The `.bin` format (llm.c dev/data/data_common.py, modded-nanogpt's fineweb shards): a header of 256 little-endian
int32 (header[0] = magic 20240520, header[1] = version 1, header[2] = number of tokens, the rest zero), then that many
GPT-2 token ids as little-endian uint16. Every document starts with <|endoftext|> (50256), as in scalegpt's shards.

Nothing is copied. OUT gets a meta.json in today's dataset format whose shard entries name the `.bin` files with
`offset` = 1024 (where the tokens start; scalegpt.data maps the files from there) and symbolic links to them in DIR
(no links when OUT is DIR). The sha256 and largest id of every file are computed once, here; `scalegpt check OUT`
verifies them again, and opening the dataset checks every file's size against its token count.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from scalegpt._fs import fsync_dir, write_text_atomically
from scalegpt.errors import ScalegptError
from scalegpt.outputs import check_output
from scalegpt.prepare import FORMAT, FORMAT_VERSION
from scalegpt.tokenizer import GPT2Tokenizer

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TRAIN_GLOB, VAL_GLOB = "*_train_*.bin", "*_val_*.bin"


def read_header(path: Path) -> int:
    """The token count of a `.bin` shard, after checking magic, version and the file size against the count."""
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
        size = path.stat().st_size
    except OSError as e:
        raise ScalegptError(f"{path}: cannot read ({e.strerror or e})") from None
    if len(raw) < HEADER_BYTES:
        raise ScalegptError(f"{path}: {len(raw)} bytes, shorter than the {HEADER_BYTES}-byte llm.c header")
    header = np.frombuffer(raw, dtype="<i4")
    if header[0] != MAGIC:
        raise ScalegptError(f"{path}: magic number {int(header[0])}, expected {MAGIC} (not an llm.c token shard)")
    if header[1] != VERSION:
        raise ScalegptError(f"{path}: version {int(header[1])}, expected {VERSION} (uint16 GPT-2 tokens)")
    n = int(header[2])
    expected = HEADER_BYTES + 2 * n
    if n <= 0:
        raise ScalegptError(f"{path}: its header says {n} tokens; expected a positive token count")
    if size != expected:
        what = "truncated" if size < expected else "longer than its header says"
        raise ScalegptError(f"{path}: {size} bytes, but its header says {n} tokens ({expected} bytes): {what}")
    return n


def hash_and_max(path: Path, eot_id: int) -> tuple[str, int, int]:
    """sha256 of the whole file, the largest token id and the number of documents (EOT ids), in one read."""
    h = hashlib.sha256()
    largest = -1
    documents = 0
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
        h.update(head)
        while block := f.read(1 << 22):
            h.update(block)
            tokens = np.frombuffer(block, dtype="<u2")
            largest = max(largest, int(tokens.max()))
            documents += int(np.count_nonzero(tokens == eot_id))
    return h.hexdigest(), largest, documents


def find_shards(src: Path) -> dict[str, list[Path]]:
    if not src.is_dir():
        raise ScalegptError(f"--from-llmc {src}: no such directory (expected llm.c shards {TRAIN_GLOB}, {VAL_GLOB})")
    found = {"train": sorted(src.glob(TRAIN_GLOB)), "val": sorted(src.glob(VAL_GLOB))}
    if not found["train"]:
        raise ScalegptError(f"--from-llmc {src}: no training shards ({TRAIN_GLOB}) in it")
    return found


def prepare_llmc(src, out, overwrite: bool = False, command: list[str] | None = None) -> dict:
    """Write OUT/meta.json (and links) describing the `.bin` shards of `src`; returns the meta dict."""
    src, out = Path(src), Path(out)
    in_place = out.exists() and out.resolve() == src.resolve()
    if in_place:  # only meta.json is written beside the shards, which are never touched
        if (out / "meta.json").exists() and not overwrite:
            raise ScalegptError(f"--out {out}: already holds a prepared dataset (meta.json); "
                                f"pass --overwrite to replace it, or choose another --out")
    else:  # the one output rule (scalegpt.outputs): never inside the shards' folder, never over foreign files
        check_output(out, kind="dataset", inputs=[src], overwrite=overwrite)
    found = find_shards(src)
    tok = GPT2Tokenizer()
    splits = {}
    for split, paths in found.items():
        shards = []
        for path in paths:
            n = read_header(path)
            sha, largest, documents = hash_and_max(path, tok.eot_id)
            if largest >= tok.vocab_size:
                raise ScalegptError(f"{path}: holds token id {largest}, beyond GPT-2's {tok.vocab_size} ids")
            shards.append({"file": path.name, "num_tokens": n, "sha256": sha, "max_token": largest,
                           "offset": HEADER_BYTES, "num_documents": documents})
        splits[split] = {"num_tokens": sum(s["num_tokens"] for s in shards),
                         "num_documents": sum(s.pop("num_documents") for s in shards), "shards": shards}
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION, "tokenizer": tok.spec(), "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id, "dtype": "uint16", "shard_tokens": None, "split_rule": "llmc files",
        "val_tokens": None, "val_fraction": None, "splits": splits,
        "inputs": [{"llmc": str(src.resolve()), "files": sum(map(len, found.values()))}],
        "command": command if command is not None else sys.argv,
    }
    if not in_place:
        for path in (p for paths in found.values() for p in paths):
            if (out / path.name).exists() and not (out / path.name).is_symlink():
                raise ScalegptError(f"--out {out}: holds a file {path.name} that is not a link to {src}; "
                                    f"choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    if (out / "meta.json").exists():
        os.remove(out / "meta.json")  # --overwrite: not a dataset until the new meta.json is in
    if not in_place:
        for paths in found.values():
            for path in paths:
                link = out / path.name
                if link.is_symlink():
                    os.remove(link)
                os.symlink(path.resolve(), link)
        fsync_dir(out)
    write_text_atomically(out / "meta.json", json.dumps(meta, indent=1) + "\n")
    fsync_dir(out)
    return meta
