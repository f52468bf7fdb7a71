"""`scalegpt prepare --from-llmc`: llm.c / modded-nanogpt `.bin` shards as a dataset, in place, checked against an
independent reader of the format."""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from scalegpt.data import DataLoader, open_dataset
from scalegpt.tokenizer import get_tokenizer

TEXTS = ["The quick brown fox jumps over the lazy dog. " * 7, "Data at scale needs shards.\n" * 13,
         "llm.c writes uint16 tokens after a 256-int header. " * 11, "Short one.", "Another document here " * 20]


def write_llmc_shard(path: Path, tokens: list[int], magic: int = 20240520, version: int = 1,
                     count: int | None = None) -> None:
    """The format as documented in llm.c (dev/data/data_common.py): 256 little-endian int32 header (magic, version,
    token count), then uint16 tokens. Written with struct, independently of scalegpt."""
    header = [magic, version, len(tokens) if count is None else count] + [0] * 253
    path.write_bytes(struct.pack("<256i", *header) + struct.pack(f"<{len(tokens)}H", *tokens))


def read_llmc_shard(path: Path) -> list[int]:
    """An independent reader: header via struct, token count from the header."""
    raw = path.read_bytes()
    magic, version, n = struct.unpack("<3i", raw[:12])
    assert (magic, version) == (20240520, 1)
    return list(struct.unpack(f"<{n}H", raw[1024:1024 + 2 * n]))


@pytest.fixture
def llmc_dir(tmp_path) -> Path:
    enc = get_tokenizer("gpt2")
    docs = [[50256] + enc.encode(t) for t in TEXTS]
    src = tmp_path / "fineweb10B"
    src.mkdir()
    write_llmc_shard(src / "fineweb_val_000000.bin", docs[0])
    write_llmc_shard(src / "fineweb_train_000001.bin", docs[1] + docs[2])
    write_llmc_shard(src / "fineweb_train_000002.bin", docs[3] + docs[4])
    return src


def test_from_llmc_references_shards_in_place_and_trains_on_the_same_stream(run_cli, llmc_dir, tmp_path):
    out = tmp_path / "ds"
    rc, stdout, err = run_cli("prepare", "--from-llmc", llmc_dir, "--out", out)
    assert rc == 0, err
    assert "not copied" in stdout
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokenizer"]["kind"] == "gpt2" and meta["dtype"] == "uint16"
    train = meta["splits"]["train"]["shards"]
    assert [s["file"] for s in train] == ["fineweb_train_000001.bin", "fineweb_train_000002.bin"]
    for split in ("train", "val"):
        for s in meta["splits"][split]["shards"]:
            link = out / s["file"]
            assert link.is_symlink() and link.resolve() == (llmc_dir / s["file"]).resolve()  # no copy
            assert s["sha256"] == hashlib.sha256((llmc_dir / s["file"]).read_bytes()).hexdigest()
            assert s["num_tokens"] == len(read_llmc_shard(llmc_dir / s["file"]))
            assert s["max_token"] == max(read_llmc_shard(llmc_dir / s["file"]))
    assert meta["splits"]["train"]["num_documents"] == 4
    assert run_cli("check", out)[0] == 0

    # The training stream (in order) against the independent reader: windows of T+1 at stride T inside each shard.
    T = 16
    expected = []
    for s in train:
        toks = read_llmc_shard(llmc_dir / s["file"])
        expected += [toks[i * T:i * T + T + 1] for i in range((len(toks) - 1) // T)]
    loader = DataLoader(open_dataset(out, "train"), seq_len=T, global_batch_size=1, micro_batch_size=1,
                        shuffle=False, prefetch=False)
    got = []
    for _ in range(len(expected)):
        x, y = loader.next_batch()
        got.append(x[0].tolist() + [y[0, -1].item()])
    assert got == expected
    val = open_dataset(out, "val")
    assert val.read(0, 0, val.num_tokens).tolist() == read_llmc_shard(llmc_dir / "fineweb_val_000000.bin")

    # `train` itself runs on it (a tiny model with GPT-2's vocabulary).
    values = {"model.n_layer": 1, "model.n_head": 2, "model.n_embd": 32, "model.block_size": 16,
              "train.global_batch_tokens": 32, "train.micro_batch_size": 2, "train.max_steps": 2,
              "train.device": "cpu", "train.precision": "fp32", "schedule.warmup_steps": 1, "schedule.decay_steps": 2,
              "eval.interval": 2, "eval.tokens": 32, "eval.samples": 0, "log.plot": False, "log.progress": "false",
              "checkpoint.interval": 2, "data.dir": str(out)}
    args = [a for k, v in values.items() for a in (f"--{k}", str(v).lower())]
    rc, _, err = run_cli("train", *args, "--out", tmp_path / "run")
    assert rc == 0, err


def test_from_llmc_into_its_own_directory_needs_no_links(run_cli, llmc_dir):
    rc, _, err = run_cli("prepare", "--from-llmc", llmc_dir, "--out", llmc_dir)
    assert rc == 0, err
    assert not any(p.is_symlink() for p in llmc_dir.iterdir())
    assert open_dataset(llmc_dir, "train").num_tokens == sum(
        len(read_llmc_shard(p)) for p in sorted(llmc_dir.glob("*_train_*.bin")))


@pytest.mark.parametrize("damage, message", [
    (lambda p: write_llmc_shard(p, [1, 2, 3], magic=20240521), "magic number 20240521, expected 20240520"),
    (lambda p: write_llmc_shard(p, [1, 2, 3], version=2), "version 2, expected 1"),
    (lambda p: p.write_bytes(p.read_bytes()[:-3]), "truncated"),
    (lambda p: p.write_bytes(b"\x00" * 100), "shorter than the 1024-byte llm.c header"),
    (lambda p: write_llmc_shard(p, [1, 2, 3], count=5), "header says 5 tokens"),
])
def test_bad_llmc_shard_is_one_line_naming_the_file_and_writes_nothing(run_cli, llmc_dir, tmp_path, damage, message):
    bad = llmc_dir / "fineweb_train_000002.bin"
    damage(bad)
    out = tmp_path / "ds"
    rc, _, err = run_cli("prepare", "--from-llmc", llmc_dir, "--out", out)
    assert rc == 2
    line = err.strip()
    assert "\n" not in line and str(bad) in line and message in line, line
    assert not out.exists()


def test_llmc_errors_for_directory_output_and_later_damage(run_cli, llmc_dir, tmp_path):
    rc, _, err = run_cli("prepare", "--from-llmc", tmp_path / "nowhere", "--out", tmp_path / "a")
    assert rc == 2 and "no such directory" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = run_cli("prepare", "--from-llmc", empty, "--out", tmp_path / "a")
    assert rc == 2 and "no training shards" in err
    out = tmp_path / "ds"
    assert run_cli("prepare", "--from-llmc", llmc_dir, "--out", out)[0] == 0
    rc, _, err = run_cli("prepare", "--from-llmc", llmc_dir, "--out", out)
    assert rc == 2 and "--overwrite" in err
    assert run_cli("prepare", "--from-llmc", llmc_dir, "--out", out, "--overwrite")[0] == 0
    # A shard cut short after prepare: opening the dataset names it (before any training step).
    shard = llmc_dir / "fineweb_train_000001.bin"
    os.truncate(shard, shard.stat().st_size - 2)
    rc, stdout, err = run_cli("check", out)
    assert rc != 0 and "fineweb_train_000001.bin" in stdout + err
    with pytest.raises(Exception, match="fineweb_train_000001.bin.*truncated"):
        open_dataset(out, "train")
