"""Input readers for `scalegpt prepare`: text, JSON lines, parquet (optionally .gz/.zst/.bz2) and HF streaming.

Every reader streams. A source yields `Piece`s: a piece of text and whether it starts a new document. A document is
one text file, or one record of a JSON-lines/parquet file, or one HF row. Long text files are cut into pieces of about
`piece_chars` characters, always just before a whitespace character that follows a non-whitespace one: GPT-2's
pre-tokenizer never lets a pre-token span such a point, so tokenizing the pieces one by one gives exactly the tokens of
the whole file (for `char` any cut is exact; SentencePiece encodes a piece behind an anchor word so that it is not
taken for a new sentence: `Tokenizer.encode_continuation`).
"""
from __future__ import annotations

import bz2
import codecs
import gzip
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from scalegpt._fs import atomic_file, parse_json
from scalegpt.errors import ScalegptError
from scalegpt.listing import (  # noqa: F401 (the listing is part of this module's interface)
    COMPRESSED_SUFFIXES, JSONL_SUFFIXES, KNOWN, PARQUET_SUFFIXES, TEXT_SUFFIXES, InputFile, classify,
    describe_skipped, discover, stat_input,
)

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
READ_BLOCK = 1 << 20
PIECE_CHARS = 1 << 18  # big enough to amortise inter-process traffic, small enough to spread one file over workers

Progress = Callable[[int], None]  # called with the number of on-disk bytes just consumed


@dataclass
class Piece:
    text: str
    new_doc: bool
    side: str | None = None  # "train"/"val" when a single document is split by position


class _Counting(io.RawIOBase):
    """Wraps the on-disk file so progress follows the bytes actually read, compressed or not."""

    def __init__(self, raw, progress: Progress | None):
        super().__init__()
        self.raw, self.progress = raw, progress

    def readinto(self, b):
        n = self.raw.readinto(b)
        if self.progress and n:
            self.progress(n)
        return n

    def readable(self):
        return True

    def close(self):
        self.raw.close()
        super().close()


def open_binary(inp: InputFile, progress: Progress | None = None):
    """A buffered, line-iterable binary stream of the (decompressed) file contents."""
    raw = io.BufferedReader(_Counting(open(inp.path, "rb", buffering=0), progress), READ_BLOCK)
    if inp.compression == "gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if inp.compression == "bz2":
        return bz2.BZ2File(raw, mode="rb")
    if inp.compression == "zst":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True), READ_BLOCK)
    return raw


def _read_blocks(inp: InputFile, progress: Progress | None) -> Iterator[bytes]:
    where = inp.path
    f = open_binary(inp, progress)
    try:
        while True:
            try:
                block = f.read(READ_BLOCK)
            except (OSError, EOFError, ValueError) as e:
                raise ScalegptError(f"{where}: cannot read {inp.compression or ''} data: {e}") from None
            except Exception as e:  # zstandard raises its own ZstdError
                raise ScalegptError(f"{where}: cannot read {inp.compression or ''} data: {e}") from None
            if not block:
                return
            yield block
    finally:
        f.close()


def _decoder(encoding: str, errors: str):
    try:
        return codecs.getincrementaldecoder(encoding)(errors=errors)
    except LookupError:
        raise ScalegptError(f"--encoding: unknown text encoding '{encoding}'") from None


BINARY_SNIFF = 8192  # a NUL byte in a text file's first bytes: it is binary (a .npy shard, an image, a model)


def binary_error(inp: InputFile, offset: int) -> ScalegptError:
    where = "uncompressed byte offset" if inp.compression else "byte offset"
    return ScalegptError(f"{inp.path}: looks binary (a NUL byte at {where} {offset}), expected text; leave it out "
                         f"of --input (the readers take {KNOWN})")


def check_unchanged(inp: InputFile) -> None:
    """Refuse a file whose size or modification time changed since it was listed: its tokens would mix two
    versions (or be cut short by a writer still at work)."""
    st = stat_input(inp.path)
    if st.st_size != inp.size or (inp.mtime_ns is not None and st.st_mtime_ns != inp.mtime_ns):
        raise ScalegptError(f"{inp.path}: changed while it was read (size {inp.size:,} -> {st.st_size:,} bytes"
                            f"{'' if st.st_size != inp.size else ', modified'}); run again once it is complete")


def decode_error(inp: InputFile, encoding: str, offset: int, e: UnicodeDecodeError) -> ScalegptError:
    what = "uncompressed byte offset" if inp.compression else "byte offset"
    bad = e.object[e.start:e.start + 1].hex()
    return ScalegptError(
        f"{inp.path}: cannot decode as {encoding} at {what} {offset} (byte 0x{bad}); "
        f"pass --encoding ENCODING (e.g. cp437, latin-1) or --errors replace"
    )


def iter_text_chars(inp: InputFile, encoding: str, errors: str, progress: Progress | None = None) -> Iterator[str]:
    """Decoded blocks of a text file, verbatim (no newline translation); decode errors name the byte offset."""
    dec = _decoder(encoding, errors)
    consumed = 0
    wide = codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))  # NUL bytes are text there
    for block in _read_blocks(inp, progress):
        if consumed == 0 and not wide and b"\0" in block[:BINARY_SNIFF]:
            raise binary_error(inp, block.index(b"\0"))
        pending = len(dec.getstate()[0])
        try:
            text = dec.decode(block)
        except UnicodeDecodeError as e:
            raise decode_error(inp, encoding, consumed - pending + e.start, e) from None
        consumed += len(block)
        if text:
            yield text
    try:
        tail = dec.decode(b"", final=True)
    except UnicodeDecodeError as e:
        pending = len(e.object)
        raise decode_error(inp, encoding, consumed - pending + e.start, e) from None
    if tail:
        yield tail


def _safe_cut(text: str, target: int) -> int:
    """The largest cut <= target just before whitespace that follows non-whitespace; 0 if there is none."""
    i = target
    while i > 0:
        if text[i].isspace() and not text[i - 1].isspace():
            return i
        i -= 1
    return 0


def text_pieces(inp: InputFile, encoding: str, errors: str, piece_chars: int | None = None,
                cut_at: int | None = None, progress: Progress | None = None) -> Iterator[Piece]:
    """One text file as one document, in pieces; with `cut_at`, the piece boundary at that character position is
    exact and the pieces after it are marked `val` (nanoGPT's split of a single-document corpus)."""
    piece_chars = piece_chars or PIECE_CHARS
    buf = ""
    pos = 0  # characters already yielded
    first = True
    side = "train" if cut_at is not None else None

    def emit(n: int):
        nonlocal buf, pos, first
        piece = Piece(buf[:n], new_doc=first, side=side)
        buf, pos, first = buf[n:], pos + n, False
        return piece

    for chunk in iter_text_chars(inp, encoding, errors, progress):
        buf += chunk
        while True:
            if side == "train" and pos + len(buf) >= cut_at:
                if cut_at - pos > 0:
                    yield emit(cut_at - pos)
                side, first = "val", True
                continue
            if len(buf) <= piece_chars:
                break
            cut = _safe_cut(buf, piece_chars)
            if cut == 0:
                if len(buf) < 4 * piece_chars:
                    break  # wait for whitespace; a cut in the middle of a word could change its tokens
                cut = piece_chars
            yield emit(cut)
    if buf:
        yield emit(len(buf))


def jsonl_records(inp: InputFile, text_field: str, encoding: str, errors: str,
                  progress: Progress | None = None) -> Iterator[str]:
    """The `text_field` of every JSON object line; blank lines are skipped; errors name the file and line."""
    f = open_binary(inp, progress)
    offset = 0
    try:
        for lineno, raw in enumerate(f, 1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            try:
                line = raw.decode(encoding, errors)
            except UnicodeDecodeError as e:
                raise ScalegptError(
                    f"{inp.path}:{lineno}: cannot decode as {encoding} at byte offset {start + e.start}; "
                    f"pass --encoding ENCODING or --errors replace") from None
            except LookupError:
                raise ScalegptError(f"--encoding: unknown text encoding '{encoding}'") from None
            record = parse_json(line, f"{inp.path}:{lineno}")  # the one JSON parser: any nesting depth is one line
            if not isinstance(record, dict):
                raise ScalegptError(f"{inp.path}:{lineno}: expected a JSON object with a '{text_field}' field, "
                                    f"got {type(record).__name__}")
            if text_field not in record:
                keys = ", ".join(list(record)[:8]) or "none"
                raise ScalegptError(f"{inp.path}:{lineno}: no field '{text_field}' (fields: {keys}); "
                                    f"choose one with --text-field")
            text = record[text_field]
            if not isinstance(text, str):
                raise ScalegptError(f"{inp.path}:{lineno}: field '{text_field}' is {type(text).__name__}, "
                                    f"expected a string")
            yield text
    except (OSError, EOFError) as e:
        raise ScalegptError(f"{inp.path}: cannot read {inp.compression or ''} data: {e}") from None
    finally:
        f.close()


def parquet_records(inp: InputFile, text_field: str, progress: Progress | None = None) -> Iterator[str]:
    """The `text_field` column, read one record batch at a time (never the whole file); nulls are skipped."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(inp.path)
    except (pa.ArrowInvalid, OSError) as e:
        raise ScalegptError(f"{inp.path}: not a readable parquet file ({e})") from None
    names = pf.schema_arrow.names
    if text_field not in names:
        raise ScalegptError(f"{inp.path}: no column '{text_field}' (columns: {', '.join(names[:8])}); "
                            f"choose one with --text-field")
    per_group = inp.size // max(1, pf.num_row_groups)
    for g in (range(pf.num_row_groups) if inp.row_groups is None else inp.row_groups):
        for batch in pf.iter_batches(batch_size=1024, row_groups=[g], columns=[text_field]):
            col = batch.column(0)
            if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
                raise ScalegptError(f"{inp.path}: column '{text_field}' has type {col.type}, expected strings")
            for text in col.to_pylist():
                if text is not None:
                    yield text
        if progress:
            progress(per_group)


HF_MISSING = ("--hf-dataset needs the optional `datasets` package: pip install 'scalegpt[datasets]' "
              "(and network access)")


def hf_records(name: str, config: str | None, split: str, text_field: str) -> Iterator[str]:
    """Rows of a HuggingFace dataset, streamed (needs the optional `datasets` package and network access)."""
    try:
        import datasets
    except ImportError:
        raise ScalegptError(HF_MISSING) from None
    try:
        ds = datasets.load_dataset(name, name=config, split=split, streaming=True)
    except Exception as e:
        raise ScalegptError(f"--hf-dataset {name} (config {config}, split {split}): cannot open: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    for i, row in enumerate(ds):
        if text_field not in row:
            raise ScalegptError(f"--hf-dataset {name}: row {i} has no field '{text_field}' "
                                f"(fields: {', '.join(list(row)[:8])}); choose one with --text-field")
        if row[text_field]:
            yield row[text_field]


class Source:
    """The ordered stream of documents of a prepare run (files or a HF dataset)."""

    def __init__(self, files: list[InputFile] | None = None, hf: tuple[str, str | None, str] | None = None,
                 text_field: str = "text", encoding: str = "utf-8", errors: str = "strict"):
        if errors not in ("strict", "replace"):
            raise ScalegptError(f"--errors must be 'strict' or 'replace', got '{errors}'")
        _decoder(encoding, errors)
        if hf:
            import importlib.util

            if importlib.util.find_spec("datasets") is None:
                raise ScalegptError(HF_MISSING)  # before anything is loaded or created
        self.files, self.hf = files or [], hf
        self.text_field, self.encoding, self.errors = text_field, encoding, errors

    @property
    def single_document(self) -> bool:
        """One text file is one document: it is split into train/val by position instead of by documents."""
        return not self.hf and len(self.files) == 1 and self.files[0].kind == "text"

    @property
    def total_bytes(self) -> int | None:
        return None if self.hf else sum(f.size for f in self.files)

    def describe(self) -> list[dict]:
        if self.hf:
            return [{"hf_dataset": self.hf[0], "config": self.hf[1], "split": self.hf[2]}]
        return [{"path": str(f.path), "bytes": f.size, "kind": f.kind, "compression": f.compression}
                for f in self.files]

    def identity(self) -> list:
        """What a resumed run must find unchanged (paths, sizes, modification times)."""
        if self.hf:
            return [list(self.hf)]
        return [[str(f.path.resolve()), f.size, f.path.stat().st_mtime_ns] for f in self.files]

    def pieces(self, cut_at: int | None = None, progress: Progress | None = None,
               val_fraction: float | None = None) -> Iterator[Piece]:
        """The documents in order. With `val_fraction`, a text file too large to go to one split whole (larger than
        the validation share of all the bytes: alone it would overfill val) is split by position like a single
        document: its last val_fraction of characters marked `val`, the rest `train`."""
        if self.hf:
            for text in hf_records(*self.hf, self.text_field):
                yield Piece(text, True)
            return
        large = val_fraction * (self.total_bytes or 0) if val_fraction else None
        for inp in self.files:
            check_unchanged(inp)
            if inp.kind == "text":
                cut = cut_at
                if large is not None and inp.size > large:
                    cut = int(self.file_chars(inp) * (1 - val_fraction))
                yield from text_pieces(inp, self.encoding, self.errors, cut_at=cut, progress=progress)
            elif inp.kind == "jsonl":
                for text in jsonl_records(inp, self.text_field, self.encoding, self.errors, progress):
                    if text:
                        yield Piece(text, True)
            else:
                for text in parquet_records(inp, self.text_field, progress):
                    if text:
                        yield Piece(text, True)
            check_unchanged(inp)

    def char_count(self) -> int:
        """Characters in the inputs (of the one file of a single-document source: file_chars)."""
        if len(self.files) == 1:
            return self.file_chars(self.files[0])
        return sum(len(p.text) for p in self.pieces())

    def file_chars(self, inp: InputFile) -> int:
        """Characters in one text file. Uncompressed in UTF-8 or a one-byte encoding: counted from the bytes without
        decoding (a 10 GB file costs seconds, not a decode pass); invalid bytes fail later, in the real pass."""
        if not inp.compression and self.errors == "strict":
            name = codecs.lookup(self.encoding).name
            if name == "utf-8":
                import numpy as np

                n = 0
                with open(inp.path, "rb") as f:
                    while block := f.read(1 << 24):
                        b = np.frombuffer(block, dtype=np.uint8)
                        n += len(b) - int(np.count_nonzero((b & 0xC0) == 0x80))  # continuation bytes start no char
                return n
            if len(bytes(range(256)).decode(self.encoding, "replace")) == 256 and not name.startswith("utf"):
                return inp.size  # one byte, one character
        return sum(len(t) for t in iter_text_chars(inp, self.encoding, self.errors))

    def char_stats(self) -> tuple[set[str], int]:
        """A first streaming pass: the set of characters (for the char vocabulary) and the number of characters."""
        chars: set[str] = set()
        n = 0
        for p in self.pieces():
            chars.update(p.text)
            n += len(p.text)
        return chars, n


def download_shakespeare(dest: Path) -> Path:
    """Tiny Shakespeare from char-rnn (what nanoGPT downloads); a clear error when offline."""
    import urllib.request

    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(SHAKESPEARE_URL, timeout=30) as r:
            data = r.read()
    except OSError as e:
        raise ScalegptError(f"cannot download Tiny Shakespeare from {SHAKESPEARE_URL} ({e}); "
                            f"offline? pass a local copy with --input input.txt") from None
    with atomic_file(dest) as tmp:
        tmp.write_bytes(data)
    return dest
