"""Tokenizers: GPT-2 BPE ids, char vocabularies, SentencePiece training, specs and bad input."""
from __future__ import annotations

import json

import pytest

from scalegpt.errors import ScalegptError
from scalegpt.tokenizer import (
    check_same_tokenizer, get_tokenizer, gpt2_bpe_files, tokenizer_from_spec,
)

# ------------------------------------------------------------------------------------------------------------ gpt2


def test_gpt2_known_ids():
    tok = get_tokenizer("gpt2")
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" the") == [262]
    assert (tok.vocab_size, tok.eot_id) == (50257, 50256)
    assert tok.decode([15496, 995]) == "Hello world"
    # A literal end-of-text marker inside a document is ordinary text, not the separator id.
    assert 50256 not in tok.encode("a <|endoftext|> b")


def test_gpt2_tiny_shakespeare(shakespeare_text):
    tok = get_tokenizer("gpt2")
    ids = tok.encode(shakespeare_text)
    assert len(ids) == 338_025  # tests/data/README.md
    assert ids[:10] == [5962, 22307, 25, 198, 8421, 356, 5120, 597, 2252, 11]
    assert tok.decode(ids) == shakespeare_text
    # nanoGPT's 90/10 character split: 301,966 train and 36,059 val tokens.
    n = len(shakespeare_text)
    train, val = shakespeare_text[: int(n * 0.9)], shakespeare_text[int(n * 0.9):]
    assert [len(x) for x in tok.encode_batch([train, val], num_threads=2)] == [301_966, 36_059]


def test_gpt2_files_are_the_genuine_ones():
    import hashlib

    vocab_bpe, encoder_json = gpt2_bpe_files()
    assert hashlib.sha256(vocab_bpe.read_bytes()).hexdigest().startswith("1ce1664773c5")
    assert hashlib.sha256(encoder_json.read_bytes()).hexdigest().startswith("196139668be6")


def test_gpt2_decode_bytes_keeps_partial_utf8():
    tok = get_tokenizer("gpt2")
    ids = tok.encode("héllo 🙂")
    assert b"".join(tok.decode_bytes([i]) for i in ids) == "héllo 🙂".encode()


# ------------------------------------------------------------------------------------------------------------ char


def test_char_tokenizer_on_tiny_shakespeare(shakespeare_text, tmp_path):
    tok = get_tokenizer("char", text=shakespeare_text)
    assert len(tok.chars) == 65  # tests/data/README.md
    assert (tok.vocab_size, tok.eot_id) == (66, 65)
    ids = tok.encode(shakespeare_text[:5000])
    assert max(ids) < 65 and tok.decode(ids) == shakespeare_text[:5000]
    assert tok.encode("\n !") == [0, 1, 2]  # sorted symbols: newline, space, '!' come first

    path = tmp_path / "vocab.json"
    tok.save(path)
    again = get_tokenizer(str(path))
    assert again.spec() == tok.spec()
    assert again.encode("First Citizen:") == tok.encode("First Citizen:")


def test_char_unknown_character_is_a_clear_error(shakespeare_text):
    tok = get_tokenizer("char", text=shakespeare_text)
    with pytest.raises(ScalegptError, match=r"character '€' is not in the char vocabulary \(65 symbols\)"):
        tok.encode("fixe€")


def test_char_needs_text_or_file(tmp_path):
    with pytest.raises(ScalegptError, match="pass text="):
        get_tokenizer("char")
    with pytest.raises(ScalegptError, match="empty text"):
        get_tokenizer("char", text="")
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"kind": "gpt2"}))
    with pytest.raises(ScalegptError, match="other.json: expected a char vocabulary"):
        get_tokenizer(str(bad))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ScalegptError, match="broken.json: not a char vocabulary JSON"):
        get_tokenizer(str(broken))


# --------------------------------------------------------------------------------------------------- SentencePiece


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory, shakespeare_text):
    """A 512-piece BPE model trained through the CLI on the first 200 KB of Tiny Shakespeare."""
    from scalegpt.cli import main

    d = tmp_path_factory.mktemp("sp")
    corpus = d / "corpus"
    corpus.mkdir()
    (corpus / "part.txt").write_text(shakespeare_text[:200_000], encoding="utf-8")
    args = ["tokenizer", "train", "--input", str(corpus), "--vocab-size", "512", "--out", str(d / "tok" / "sp")]
    assert main(args) == 0
    return d / "tok" / "sp.model"


def test_sentencepiece_train_load_round_trip(sp_model, shakespeare_text):
    assert sp_model.is_file() and sp_model.with_suffix(".vocab").is_file()
    tok = get_tokenizer(str(sp_model))
    assert tok.vocab_size == 512
    assert tok.eot_id == 2  # the EOS id the trainer reserves
    text = shakespeare_text[500_000:502_000]  # not in the training slice
    ids = tok.encode(text)
    assert 0 < len(ids) < len(text)  # merges learned: fewer pieces than characters
    assert tok.decode(ids) == text
    # byte fallback: characters never seen in training still round-trip
    assert tok.decode(tok.encode("naïve café ☃")) == "naïve café ☃"
    # lossless whitespace: newlines, indentation and double spaces survive (no NFKC, no squeezing)
    for s in ("  two  spaces\n\nand\tTab ", " x", "x\n"):
        assert tok.decode(tok.encode(s)) == s
    assert tok.encode_batch([text, "hello"]) == [ids, tok.encode("hello")]


def test_sentencepiece_spec_round_trip(sp_model):
    tok = get_tokenizer(str(sp_model))
    spec = json.loads(json.dumps(tok.spec()))  # it must survive JSON, as in config.json
    again = tokenizer_from_spec(spec)
    assert again.spec() == tok.spec()
    assert again.encode("To be, or not to be") == tok.encode("To be, or not to be")
    spec["sha256"] = "0" * 64
    with pytest.raises(ScalegptError, match="does not match its sha256"):
        tokenizer_from_spec(spec)


def test_sentencepiece_cli_reports_what_it_wrote(sp_model, run_cli, tmp_path, shakespeare_text):
    src = tmp_path / "a.txt"
    src.write_text(shakespeare_text[:50_000], encoding="utf-8")
    rc, out, err = run_cli("tokenizer", "train", "--input", src, "--vocab-size", "400", "--model-type", "unigram",
                           "--out", tmp_path / "uni")
    assert rc == 0, err
    assert "vocab_size 400" in out and str(tmp_path / "uni.model") in out
    rc, out, err = run_cli("tokenizer", "train", "--input", tmp_path / "missing", "--vocab-size", "100",
                           "--out", tmp_path / "x")
    assert rc == 2 and err.strip() == f"scalegpt: error: {tmp_path / 'missing'}: no such file or directory"


def test_not_a_sentencepiece_model(tmp_path):
    fake = tmp_path / "fake.model"
    fake.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    with pytest.raises(ScalegptError, match="fake.model: not a SentencePiece model file"):
        get_tokenizer(str(fake))


# ----------------------------------------------------------------------------------------------------------- specs


def test_spec_round_trips(shakespeare_text):
    for tok in (get_tokenizer("gpt2"), get_tokenizer("char", text=shakespeare_text)):
        spec = json.loads(json.dumps(tok.spec()))
        again = tokenizer_from_spec(spec)
        assert again.spec() == spec
        assert again.encode("First Citizen:") == tok.encode("First Citizen:")
        check_same_tokenizer(spec, tok.spec(), "a", "b")  # no error


def test_spec_mismatch_and_bad_specs(shakespeare_text):
    gpt2 = get_tokenizer("gpt2").spec()
    char = get_tokenizer("char", text=shakespeare_text).spec()
    with pytest.raises(ScalegptError, match="tokenizer mismatch: checkpoint uses gpt2 .* but dataset uses char"):
        check_same_tokenizer(gpt2, char, "checkpoint", "dataset")
    with pytest.raises(ScalegptError, match="unknown tokenizer kind 'wordpiece'"):
        tokenizer_from_spec({"kind": "wordpiece"})
    with pytest.raises(ScalegptError, match="not a tokenizer spec"):
        tokenizer_from_spec(["gpt2"])
    with pytest.raises(ScalegptError, match="vocab_size 100 but the tokenizer has 50257"):
        tokenizer_from_spec({"kind": "gpt2", "vocab_size": 100})


def test_unknown_tokenizer_name():
    with pytest.raises(ScalegptError, match="unknown tokenizer 'gpt3'; expected 'gpt2', 'char'"):
        get_tokenizer("gpt3")


def test_tokenizer_train_reads_inputs_as_prepare_does(tmp_path, run_cli, shakespeare_text):
    """Compressed JSON lines give the trainer their `text` field, decompressed (not gzip bytes, nor keys and
    escapes); a folder entry of no known kind is named, not read; the text seen is the text prepare tokenizes."""
    import gzip
    import json

    from scalegpt.sources import Source, discover
    from scalegpt.tokenizer import _document_lines

    folder = tmp_path / "corpus"
    folder.mkdir()
    lines = shakespeare_text[:120_000].split("\n\n")
    with gzip.open(folder / "part.jsonl.gz", "wt", encoding="utf-8") as f:
        for doc in lines:
            f.write(json.dumps({"id": 7, "text": doc}) + "\n")
    (folder / "notes").write_bytes(b"\x00\x01binary garbage")
    rc, out, err = run_cli("tokenizer", "train", "--input", folder, "--vocab-size", "512", "--out", tmp_path / "sp")
    assert rc == 0, err
    assert f"tokenizer train: skipped 1 folder entry that are hidden or not of a known kind" in out
    assert str(folder / "notes") in out
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    assert not any(p for p in pieces if '"' in p or "\\n" in p or "\ufffd" in p or "{" in p)
    # the trainer's lines are the documents prepare reads, line by line
    seen = list(_document_lines(Source(discover([folder])).pieces()))
    assert seen == [line for doc in lines for line in doc.split("\n")]
