"""`scalegpt prepare`: every input kind, exact Tiny Shakespeare counts, determinism, interruption, bad input."""
from __future__ import annotations

import bz2
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import scalegpt.prepare as prep
import scalegpt.sources as sources
from scalegpt.cli import main
from scalegpt.data import open_dataset
from scalegpt.errors import ScalegptError
from scalegpt.prepare import prepare
from scalegpt.tokenizer import get_tokenizer

SHAKESPEARE = Path(__file__).resolve().parent / "data" / "tinyshakespeare.txt"  # tests/data/README.md
DICKENS = "dickens/dickens.txt"  # in ../shared/data only: the `shared_data` fixture skips without it


def tokens(out: Path, split: str) -> np.ndarray:
    meta = json.loads((out / "meta.json").read_text())
    arrays = [np.load(out / s["file"]) for s in meta["splits"][split]["shards"]]
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype=meta["dtype"])


def documents(out: Path, split: str = "train") -> list[str]:
    """Decode a split back into its documents (each one follows an EOT)."""
    meta = json.loads((out / "meta.json").read_text())
    tok = open_dataset(out, split).tokenizer()
    ids = tokens(out, split).tolist()
    docs, cur = [], None
    for i in ids:
        if i == meta["eot_id"]:
            if cur is not None:
                docs.append(tok.decode(cur))
            cur = []
        else:
            cur.append(i)
    if cur is not None:
        docs.append(tok.decode(cur))
    return docs


def run_cli(capsys, *args) -> tuple[int, str, str]:
    rc = main(["prepare", "--quiet", *map(str, args)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


# ------------------------------------------------------------------------------------------- exact counts (real data)


def test_shakespeare_gpt2_exact_counts(tmp_path, capsys):
    out = tmp_path / "ts"
    rc, stdout, _ = run_cli(capsys, "--input", SHAKESPEARE, "--out", out, "--shard-tokens", 100_000, "--workers", 1)
    assert rc == 0 and "train 301,967 tokens" in stdout
    meta = json.loads((out / "meta.json").read_text())
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    # nanoGPT's numbers, plus the one EOT that starts each split's document
    assert (train["num_tokens"] - train["num_documents"], val["num_tokens"] - val["num_documents"]) == (301_966, 36_059)
    assert [s["num_tokens"] for s in train["shards"]] == [100_000, 100_000, 100_000, 1_967]
    assert meta["dtype"] == "uint16" and meta["tokenizer"]["kind"] == "gpt2" and meta["split_rule"] == "position"
    assert meta["inputs"][0]["bytes"] == 1_115_394 and meta["command"][:2] == ["scalegpt", "prepare"]
    t = tokens(out, "train")
    assert t[:11].tolist() == [50256, 5962, 22307, 25, 198, 8421, 356, 5120, 597, 2252, 11]
    text = SHAKESPEARE.read_text()
    tok = get_tokenizer("gpt2")
    assert tok.decode(t[1:].tolist()) + tok.decode(tokens(out, "val")[1:].tolist()) == text
    assert main(["check", str(out)]) == 0


def test_shakespeare_char_exact_counts_and_vocab(tmp_path):
    out = tmp_path / "ts"
    meta = prepare([SHAKESPEARE], out, "char", shard_tokens=300_000, workers=2, progress=False)
    s = meta["splits"]
    assert (s["train"]["num_tokens"] - 1, s["val"]["num_tokens"] - 1) == (1_003_854, 111_540)
    assert meta["vocab_size"] == 66 and meta["eot_id"] == 65
    assert get_tokenizer(str(out / "tokenizer.json")).spec() == meta["tokenizer"]
    text = SHAKESPEARE.read_text()
    assert "".join(documents(out, "train") + documents(out, "val")) == text


def test_cp437_and_undecodable_bytes(tmp_path, capsys, monkeypatch):
    # Tiny Shakespeare with cp437 letters (0x88 "ê", 0x82 "é") spread over it, read in ~12 pieces by 2 processes.
    monkeypatch.setattr(sources, "PIECE_CHARS", 100_000)
    raw = bytearray(SHAKESPEARE.read_bytes())
    for at in (900_001, 400_000, 166_668):
        raw[at:at] = b"Gen\x88t caf\x82 "
    src = tmp_path / "cp437.txt"
    src.write_bytes(bytes(raw))
    out = tmp_path / "d"
    rc, _, err = run_cli(capsys, "--input", src, "--out", out)
    assert rc == 2 and "byte offset 166671" in err and str(src) in err and "Traceback" not in err
    assert err.count("\n") == 1 and not out.exists()
    rc, _, _ = run_cli(capsys, "--input", src, "--out", out, "--encoding", "cp437", "--workers", 2,
                       "--shard-tokens", 100_000, "--val-fraction", 0)
    meta = json.loads((out / "meta.json").read_text())
    text = bytes(raw).decode("cp437")
    assert text.count("Genêt café ") == 3
    train = meta["splits"]["train"]
    ids = get_tokenizer("gpt2").encode(text)
    assert rc == 0 and train["num_tokens"] == len(ids) + 1 and len(train["shards"]) == 4
    assert tokens(out, "train")[1:].tolist() == ids


def test_dickens_cp437_and_undecodable_bytes(tmp_path, capsys, shared_data):
    dickens = shared_data(DICKENS)
    out = tmp_path / "d"
    rc, _, err = run_cli(capsys, "--input", dickens, "--out", out)
    assert rc == 2 and "byte offset 166668" in err and str(dickens) in err and "Traceback" not in err
    assert err.count("\n") == 1 and not out.exists()
    rc, _, _ = run_cli(capsys, "--input", dickens, "--out", out, "--encoding", "cp437", "--workers", 2,
                       "--shard-tokens", 1_000_000, "--val-fraction", 0)
    meta = json.loads((out / "meta.json").read_text())
    # the whole file, tokenized in ~40 pieces over 2 processes, gives exactly the tokens of the whole text
    train = meta["splits"]["train"]
    assert rc == 0 and train["num_tokens"] == 2_879_558 + 1 and len(train["shards"]) == 3


# --------------------------------------------------------------------------------------------------- input kinds

DOCS = ["First document.\nIt has two lines.", "Second, with <|endoftext|> inside as text.", "Third: ünïcödé ✓",
        "4th document\r\nwith CRLF\r\n"]


def _write_jsonl(path: Path, docs, opener=open, field="text"):
    with opener(path, "wt", encoding="utf-8") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"id": i, field: d}) + "\n")
            if i == 0:
                f.write("\n")  # blank lines are skipped


def test_every_input_kind_round_trips(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    src = tmp_path / "src"
    (src / "nested" / "deeper").mkdir(parents=True)
    (src / "a.txt").write_text(DOCS[0], encoding="utf-8")
    (src / "nested" / "b.md").write_text(DOCS[1], encoding="utf-8")
    with gzip.open(src / "nested" / "c.txt.gz", "wt", encoding="utf-8") as f:
        f.write(DOCS[2])
    (src / "nested" / "deeper" / "d.txt.bz2").write_bytes(bz2.compress(DOCS[3].encode()))
    (src / "nested" / ".hidden.txt").write_text("never read")
    (src / "notes.bin").write_bytes(b"\x00\x01 skipped: unknown kind in a folder walk")
    _write_jsonl(src / "e.jsonl", DOCS)
    with open(src / "g.jsonl.zst", "wb") as raw:
        with zstandard.ZstdCompressor().stream_writer(raw) as w:
            w.write("".join(json.dumps({"text": d}) + "\n" for d in DOCS).encode())
    _write_jsonl(src / "h.jsonl.gz", DOCS[:2], opener=gzip.open)
    table = pa.table({"id": list(range(4)), "text": DOCS})
    pq.write_table(table, src / "i.parquet", row_group_size=2)
    out = tmp_path / "out"
    meta = prepare([src], out, "gpt2", val_fraction=0, shard_tokens=16, progress=False)
    # sorted walk: a.txt, e.jsonl, g.jsonl.zst, h.jsonl.gz, i.parquet, nested/b.md, nested/c.txt.gz, nested/deeper/...
    expected = [DOCS[0]] + DOCS + DOCS + DOCS[:2] + DOCS + [DOCS[1], DOCS[2], DOCS[3]]
    assert documents(out) == expected
    assert meta["splits"]["train"]["num_documents"] == len(expected) and meta["splits"]["val"]["num_tokens"] == 0
    assert all(s["num_tokens"] == 16 for s in meta["splits"]["train"]["shards"][:-1])
    kinds = {Path(i["path"]).name: (i["kind"], i["compression"]) for i in meta["inputs"]}
    assert kinds["g.jsonl.zst"] == ("jsonl", "zst") and kinds["i.parquet"] == ("parquet", None)
    assert ".hidden.txt" not in kinds and "notes.bin" not in kinds


def test_output_inside_an_input_folder_is_refused(tmp_path):
    # issue 20: a dataset inside its input folder would be read back as input by the next run, and an output that
    # is or holds an input could destroy it; so an output that is, contains or lies inside an input is refused.
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("some text here")
    for out, why in ((tmp_path / "in" / "data", "lies inside the input"), (tmp_path / "in", "is the input"),
                     (tmp_path, "contains the input")):
        with pytest.raises(ScalegptError, match=why):
            prepare([tmp_path / "in"], out, "char", val_fraction=0, overwrite=True, progress=False)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "in"]  # nothing written, nothing removed


def test_text_field_and_explicit_json_file(tmp_path):
    f = tmp_path / "docs.json"
    _write_jsonl(f, DOCS, field="content")
    out = tmp_path / "out"
    prepare([f], out, "char", text_field="content", val_fraction=0, progress=False)
    assert documents(out) == DOCS


def test_pieces_tokenize_exactly_like_the_whole_file_and_workers_do_not_matter(tmp_path, monkeypatch):
    # Small pieces and work items: Tiny Shakespeare becomes ~56 pieces spread over the workers.
    monkeypatch.setattr(sources, "PIECE_CHARS", 20_000)
    monkeypatch.setattr(prep, "BATCH_CHARS", 30_000)
    metas = {}
    for w in (1, 2):
        metas[w] = prepare([SHAKESPEARE], tmp_path / f"w{w}", "gpt2", shard_tokens=50_000, workers=w,
                           progress=False, command=["same"])
    assert metas[1] == metas[2]
    for name in os.listdir(tmp_path / "w1"):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name
    text = SHAKESPEARE.read_text()
    cut = int(len(text) * 0.9)
    assert tokens(tmp_path / "w1", "train")[1:].tolist() == get_tokenizer("gpt2").encode(text[:cut])


def test_multi_document_validation_split(tmp_path):
    docs = [f"document number {i} " + "word " * (i % 7 + 1) for i in range(40)]
    src = tmp_path / "docs.jsonl"
    _write_jsonl(src, docs)
    meta = prepare([src], tmp_path / "f", "char", val_fraction=0.25, progress=False)
    train, val = documents(tmp_path / "f", "train"), documents(tmp_path / "f", "val")
    assert sorted(train + val) == sorted(docs) and val[0] == docs[1]  # whole documents; from the 2nd on
    share = meta["splits"]["val"]["num_tokens"] / (meta["splits"]["val"]["num_tokens"] +
                                                   meta["splits"]["train"]["num_tokens"])
    assert 0.2 < share < 0.3 and meta["split_rule"] == "documents"
    prepare([src], tmp_path / "t", "char", val_tokens=100, progress=False)
    val = documents(tmp_path / "t", "val")
    n = sum(len(d) + 1 for d in val)
    assert val == docs[:len(val)] and n >= 100 and n - len(val[-1]) - 1 < 100


def test_single_document_val_tokens_takes_the_last_tokens(tmp_path, monkeypatch):
    f = tmp_path / "one.txt"
    text = "".join(f"line {i} of a single document\n" for i in range(300))
    f.write_text(text)
    monkeypatch.setattr(sources, "PIECE_CHARS", 1000)  # many pieces: the held-back tail spans several
    prepare([f], tmp_path / "o", "gpt2", val_tokens=123, shard_tokens=500, progress=False)
    ids = get_tokenizer("gpt2").encode(text)
    assert tokens(tmp_path / "o", "val")[1:].tolist() == ids[-123:]
    assert tokens(tmp_path / "o", "train")[1:].tolist() == ids[:-123]


# ------------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("setup, message", [
    (lambda d: (d / "empty.txt").write_text(""), "no text found"),
    (lambda d: (d / "sub").mkdir(), "folder contains no input files"),
    (lambda d: (d / "x.jsonl").write_text('{"text": "ok"}\n{"text": "ok"}\n{"text": broken\n'),
     "x.jsonl:3: not valid JSON"),
    (lambda d: (d / "x.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n'), "x.jsonl:2: no field 'text'"),
    (lambda d: (d / "x.jsonl").write_text('["a list"]\n'), "x.jsonl:1: expected a JSON object"),
    (lambda d: (d / "x.jsonl").write_text('{"text": 5}\n'), "x.jsonl:1: field 'text' is int"),
    (lambda d: (d / "x.txt.gz").write_bytes(b"not gzip at all"), "x.txt.gz: cannot read gz data"),
    (lambda d: (d / "x.parquet").write_bytes(b"PAR1 nope"), "x.parquet: not a readable parquet file"),
    (lambda d: (d / "x.txt").write_bytes(b"caf\xc3\xa9 ok then \xff bad"),
     "x.txt: cannot decode as utf-8 at byte offset 14"),
])
def test_bad_input_is_one_clear_line(tmp_path, capsys, setup, message):
    src = tmp_path / "in"
    src.mkdir()
    setup(src)
    target = src / "sub" if (src / "sub").is_dir() else src
    rc, _, err = run_cli(capsys, "--input", target, "--out", tmp_path / "out", "--tokenizer", "char")
    assert rc == 2 and message in err and err.startswith("scalegpt: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_bad_options(tmp_path, capsys):
    f = tmp_path / "a.txt"
    f.write_text("hello there")
    for args, message in [(["--input", tmp_path / "missing.txt"], "no such file"),
                          (["--input", f, "--tokenizer", "nope"], "unknown tokenizer 'nope'"),
                          (["--input", f, "--val-fraction", "1.5"], "--val-fraction must be in [0, 1)"),
                          (["--input", f, "--encoding", "klingon"], "unknown text encoding"),
                          (["--input", f, "--shard-tokens", "0"], "--shard-tokens must be >= 1"),
                          ([], "nothing to prepare")]:
        rc, _, err = run_cli(capsys, *args, "--out", tmp_path / "o")
        assert rc == 2 and message in err, (args, err)
    with pytest.raises(ScalegptError, match="train split is empty"):
        prepare([f], tmp_path / "o", "char", val_tokens=1000, progress=False)


def test_existing_dataset_is_never_lost(tmp_path, capsys):
    a, b, bad = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "bad.jsonl"
    a.write_text("alpha " * 50)
    b.write_text("beta " * 80)
    bad.write_text('{"text": "fine"}\n{oops\n')
    out = tmp_path / "out"
    prepare([a], out, "char", shard_tokens=64, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    rc, _, err = run_cli(capsys, "--input", b, "--out", out)
    assert rc == 2 and "already holds a prepared dataset" in err
    rc, _, err = run_cli(capsys, "--input", bad, "--out", out, "--overwrite")  # fails midway: old data intact
    assert rc == 2 and "bad.jsonl:2" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main(["check", str(out)]) == 0
    capsys.readouterr()
    rc, _, _ = run_cli(capsys, "--input", b, "--out", out, "--overwrite", "--tokenizer", "char")
    assert rc == 0 and "".join(documents(out) + documents(out, "val")) == "beta " * 80
    assert (out / "tokenizer.json").read_bytes() != before["tokenizer.json"]


# ---------------------------------------------------------------------------------------- interruption and resume


def test_interrupted_run_leaves_no_dataset_and_rerun_finishes(tmp_path, monkeypatch, capsys):
    f = tmp_path / "a.txt"
    f.write_text("".join(f"line {i} with some words in it\n" for i in range(2000)))
    ref = tmp_path / "ref"
    prepare([f], ref, "gpt2", shard_tokens=2000, progress=False, command=["x"])
    out = tmp_path / "out"
    real_flush, calls = prep.ShardWriter.flush, []

    def crashing_flush(self):
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if Ctrl-C or a kill arrived after three shards
        calls.append(self.fill)
        real_flush(self)

    monkeypatch.setattr(prep.ShardWriter, "flush", crashing_flush)
    with pytest.raises(KeyboardInterrupt):
        prepare([f], out, "gpt2", shard_tokens=2000, progress=False, command=["x"])
    monkeypatch.setattr(prep.ShardWriter, "flush", real_flush)
    assert not (out / "meta.json").exists() and not list(out.glob("*.npy"))
    assert len(list((out / ".partial").glob("train_*.npy"))) == 3
    with pytest.raises(ScalegptError, match="interrupted"):
        open_dataset(out)
    prepare([f], out, "gpt2", shard_tokens=2000, progress=False, command=["x"])  # same command: no --overwrite needed
    assert not (out / ".partial").exists()
    for p in ref.iterdir():
        assert (out / p.name).read_bytes() == p.read_bytes(), p.name


def test_sigkill_during_prepare_then_rerun(tmp_path):
    # Five copies of Tiny Shakespeare as five documents: 1.7M GPT-2 tokens, enough to kill the run midway.
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"copy{i}.txt").write_bytes(SHAKESPEARE.read_bytes())
    meta = _kill_midway_then_rerun(tmp_path / "out", ["--input", str(src), "--tokenizer", "gpt2"])
    assert meta["splits"]["train"]["num_tokens"] == 5 * (338_025 + 1)  # each document follows an EOT


def _kill_midway_then_rerun(out, args: list[str]) -> dict:
    """SIGKILL `scalegpt prepare ARGS` once its second shard is on disk, check nothing half-done is visible, re-run
    it to completion and `scalegpt check` the result; returns its meta.json."""
    cmd = [sys.executable, "-m", "scalegpt", "prepare", *args, "--out", str(out), "--shard-tokens", "200000",
           "--workers", "1", "--val-fraction", "0", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not (out / ".partial" / "train_000001.npy").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "prepare ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "meta.json").exists() and not list(out.glob("*.npy"))
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert main(["check", str(out)]) == 0
    return json.loads((out / "meta.json").read_text())


def test_sigkill_during_prepare_of_dickens_then_rerun(tmp_path, shared_data):
    meta = _kill_midway_then_rerun(tmp_path / "out", ["--input", str(shared_data(DICKENS)), "--encoding", "cp437"])
    assert meta["splits"]["train"]["num_tokens"] == 2_879_558 + 1


# ------------------------------------------------------------------------------------------- recipes and HF (offline)


def test_shakespeare_recipe_with_local_file_and_offline_download(tmp_path, capsys, monkeypatch):
    rc, out, _ = run_cli(capsys, "--recipe", "shakespeare", "--input", SHAKESPEARE, "--tokenizer", "char",
                         "--out", tmp_path / "r")
    assert rc == 0 and "train 1,003,855 tokens" in out and "val 111,541 tokens" in out
    import urllib.request

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    rc, _, err = run_cli(capsys, "--recipe", "shakespeare", "--out", tmp_path / "r2")
    assert rc == 2 and "cannot download Tiny Shakespeare" in err and "--input" in err and not (tmp_path / "r2").exists()


def test_hf_dataset_without_the_datasets_package_is_a_clear_error(tmp_path, capsys, monkeypatch):
    import importlib.util

    # The dev install has `datasets` (lm-eval needs it): simulate an install without it.
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "datasets" else find_spec(name, *a))
    monkeypatch.setitem(sys.modules, "datasets", None)
    for args in (["--hf-dataset", "HuggingFaceFW/fineweb-edu", "--hf-config", "sample-10BT"],
                 ["--recipe", "fineweb-edu"]):
        rc, _, err = run_cli(capsys, *args, "--out", tmp_path / "hf")
        assert rc == 2 and "needs the optional `datasets` package" in err, err
        assert not (tmp_path / "hf").exists()


def test_errors_replace_keeps_going(tmp_path):
    f = tmp_path / "x.txt"
    f.write_bytes(b"caf\xc3\xa9 ok then \xff bad")
    prepare([f], tmp_path / "o", "char", errors="replace", val_fraction=0, progress=False)
    assert documents(tmp_path / "o") == ["café ok then \ufffd bad"]


def test_sentencepiece_tokenizer_over_worker_processes(tmp_path):
    from scalegpt.tokenizer import train_sentencepiece

    corpus = tmp_path / "c.txt"
    corpus.write_text(SHAKESPEARE.read_text()[:200_000])
    model = train_sentencepiece([corpus], 400, tmp_path / "sp")
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(12):
        (docs / f"{i:02d}.txt").write_text(SHAKESPEARE.read_text()[i * 5000:(i + 1) * 5000])
    metas = [prepare([docs], tmp_path / f"o{w}", str(model), workers=w, shard_tokens=3000, progress=False,
                     command=["x"]) for w in (1, 2)]
    assert metas[0] == metas[1] and metas[0]["tokenizer"]["kind"] == "sentencepiece"
    tok = open_dataset(tmp_path / "o1").tokenizer()
    got = sorted(documents(tmp_path / "o1") + documents(tmp_path / "o1", "val"))
    assert got == sorted(SHAKESPEARE.read_text()[i * 5000:(i + 1) * 5000] for i in range(12)) and tok.eot_id == 2


def test_progress_bar_reports_documents_and_tokens(tmp_path, capsys):
    f = tmp_path / "docs.jsonl"
    _write_jsonl(f, DOCS * 50)
    prepare([f], tmp_path / "o", "gpt2", progress=True)
    err = capsys.readouterr().err
    assert "prepare: 100%" in err and "docs=" in err and "tokens=" in err and "tok/s=" in err


@pytest.mark.parametrize("options", [
    "scalegpt",  # `scalegpt tokenizer train`: identity normalisation, whitespace kept
    {"model_type": "unigram", "normalization_rule_name": "identity", "remove_extra_whitespaces": False,
     "byte_fallback": True},
    {"model_type": "bpe"},  # sentencepiece's defaults: NFKC, whitespace squeezed (a typical downloaded .model)
])
def test_sentencepiece_pieces_tokenize_exactly_like_the_whole_file(tmp_path, monkeypatch, options):
    # A long file is cut into pieces just before whitespace; SentencePiece must not see each piece as a new
    # sentence (an extra or a missing "▁" at every cut). Reference: sentencepiece's own processor on the whole text.
    import sentencepiece as spm

    from scalegpt.tokenizer import train_sentencepiece

    text = SHAKESPEARE.read_text()
    sample = tmp_path / "sample.txt"
    sample.write_text(text[:300_000])
    if options == "scalegpt":
        model = train_sentencepiece([sample], 500, tmp_path / "sp")
    else:
        spm.SentencePieceTrainer.train(input=str(sample), model_prefix=str(tmp_path / "sp"), vocab_size=500,
                                       eos_id=2, minloglevel=2, **options)
        model = tmp_path / "sp.model"
    sp = spm.SentencePieceProcessor(model_file=str(model))
    monkeypatch.setattr(sources, "PIECE_CHARS", 40_000)  # ~25 cuts in Tiny Shakespeare
    monkeypatch.setattr(prep, "BATCH_CHARS", 60_000)
    cut = int(len(text) * 0.9)
    for workers in (1, 3):
        out = tmp_path / f"w{workers}"
        prepare([SHAKESPEARE], out, str(model), workers=workers, progress=False)
        assert tokens(out, "train").tolist() == [2] + sp.encode(text[:cut])
        assert tokens(out, "val").tolist() == [2] + sp.encode(text[cut:])
        if options != {"model_type": "bpe"}:  # NFKC and squeezed whitespace are lossy by design
            assert documents(out) == [text[:cut]]


# ------------------------------------------------------------------------ validation share and inputs not read (issue 25)


def test_a_large_document_does_not_swallow_the_validation_split(tmp_path, capsys, shakespeare_text):
    """A folder of small files and one file of most of the tokens: that file is split by position (its last tenth to
    val), so the realised share stays near the asked one (before: the large file went to val whole, 92%)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(30):
        (folder / f"doc{i:02d}.txt").write_text(shakespeare_text[i * 2000:(i + 1) * 2000])
    (folder / "doc15_large.txt").write_text(shakespeare_text[:600_000])
    rc, out, err = run_cli(capsys, "--input", folder, "--out", tmp_path / "d", "--tokenizer", "char")
    assert rc == 0, err
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert abs(meta["val_share"] - 0.1) < 0.02, meta["val_share"]
    assert f"validation share: {100 * meta['val_share']:.1f}% of the tokens (asked 10.0%)\n" in out
    val = "".join(documents(tmp_path / "d", "val"))
    assert shakespeare_text[540_000:600_000] in val  # the large file's tail


def test_folder_entries_not_read_are_named(tmp_path, capsys):
    folder = tmp_path / "in"
    (folder / ".git").mkdir(parents=True)
    (folder / "a.txt").write_text("some text to read\n")
    (folder / "README").write_text("no extension: not read from a folder walk\n")
    (folder / ".hidden.txt").write_text("hidden\n")
    rc, out, err = run_cli(capsys, "--input", folder, "--out", tmp_path / "d", "--tokenizer", "char")
    assert rc == 0, err
    assert (f"prepare: skipped 3 folder entries that are hidden or not of a known kind (text (.txt/.text/.md), JSON "
            f"lines (.jsonl/.json), .parquet, optionally compressed (.gz/.zst/.bz2)): {folder / '.git'}, "
            f"{folder / '.hidden.txt'}, {folder / 'README'}; give a file by name to read it as text") in out
    assert json.loads((tmp_path / "d" / "meta.json").read_text())["skipped_inputs"] == [
        str(folder / ".git"), str(folder / ".hidden.txt"), str(folder / "README")]


def test_an_unreadable_sub_folder_is_an_error_not_a_skip(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "in"
    (folder / "locked").mkdir(parents=True)
    (folder / "a.txt").write_text("text\n")
    real_scandir = os.scandir

    def scandir(path="."):  # as chmod 000 would do for a user other than root
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    rc, out, err = run_cli(capsys, "--input", folder, "--out", tmp_path / "d", "--tokenizer", "char")
    assert rc == 2 and err.count("\n") == 1
    assert f"{folder / 'locked'}: cannot read folder (permission denied)" in err
    assert not (tmp_path / "d").exists()


def test_a_file_that_changes_while_it_is_read_is_refused(tmp_path, capsys, monkeypatch):
    src = tmp_path / "growing.txt"
    src.write_text("first version of the text\n" * 100)
    real = sources.iter_text_chars

    def read_then_append(inp, *args, **kwargs):
        yield from real(inp, *args, **kwargs)
        with open(inp.path, "a") as f:  # a writer still at work
            f.write("more\n")

    monkeypatch.setattr(sources, "iter_text_chars", read_then_append)
    rc, _, err = run_cli(capsys, "--input", src, "--out", tmp_path / "d", "--tokenizer", "gpt2")
    assert rc == 2 and f"{src}: changed while it was read (size 2,600 -> 2,605 bytes)" in err, err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("command", [
    ["prepare", "--quiet", "--tokenizer", "gpt2", "--out", "{tmp}/d"],
    ["tokenizer", "train", "--vocab-size", "64", "--out", "{tmp}/tok/sp"],
])
def test_binary_input_is_refused_by_every_command(tmp_path, capsys, command):
    shard = tmp_path / "train_000000.npy"
    np.save(shard, np.arange(1000, dtype=np.uint16))
    rc = main([c.replace("{tmp}", str(tmp_path)) for c in command] + ["--input", str(shard)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert f"{shard}: looks binary (a NUL byte at byte offset " in err and "expected text" in err
    assert not (tmp_path / "tok" / "sp.model").exists()
