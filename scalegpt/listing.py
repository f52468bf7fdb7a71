"""Which files a command reads: a folder walk in name order, each file's kind from its name, and what is skipped.

A folder contributes its files of a known kind (text, JSON lines, parquet, optionally compressed); the other entries
(hidden ones, files of no known kind, FIFOs) are collected for the command to name in one line. A folder that cannot
be listed is an error, never a skip. A file named on its own is read as text whatever its name. Each InputFile records
its size and modification time when listed, so a reader can refuse a file that changes while it is read
(sources.check_unchanged).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from scalegpt._fs import os_error_cause, path_problem
from scalegpt.errors import ScalegptError

TEXT_SUFFIXES = {".txt", ".text", ".md"}
JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}
PARQUET_SUFFIXES = {".parquet"}
COMPRESSED_SUFFIXES = {".gz", ".zst", ".bz2"}
KNOWN = "text (.txt/.text/.md), JSON lines (.jsonl/.json), .parquet, optionally compressed (.gz/.zst/.bz2)"


@dataclass(frozen=True)
class InputFile:
    path: Path
    kind: str  # "text" | "jsonl" | "parquet"
    compression: str | None
    size: int
    mtime_ns: int | None = None  # when it was listed: a file that changes while it is read is refused
    row_groups: tuple[int, ...] | None = None  # parquet: only these row groups (a task's share); None = all


def classify(path: Path, explicit: bool) -> tuple[str, str | None] | None:
    """(kind, compression) from the file name; None for a file a folder walk should skip."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes[-1][1:] if suffixes and suffixes[-1] in COMPRESSED_SUFFIXES else None
    if compression:
        inner = suffixes[-2] if len(suffixes) >= 2 else ""
    else:
        inner = suffixes[-1] if suffixes else ""
    if inner in TEXT_SUFFIXES:
        return "text", compression
    if inner in JSONL_SUFFIXES:
        return "jsonl", compression
    if inner in PARQUET_SUFFIXES:
        if compression:
            raise ScalegptError(f"{path}: compressed parquet is not supported (parquet compresses internally)")
        return "parquet", None
    # A file named explicitly is read as text whatever its name; a folder walk only takes known kinds.
    return ("text", compression) if explicit else None


def discover(inputs: list[str | os.PathLike], exclude: Path | None = None,
             skipped: list[Path] | None = None) -> list[InputFile]:
    """Expand files and folders (recursively, sorted) into the ordered list of input files. A folder walk takes the
    known kinds only: it appends the other files, and the hidden entries it does not enter (.git), to `skipped` for
    the command to name; a sub-folder it cannot read is an error, never a skip. It skips `exclude` (the output
    directory, when it lies inside an input folder)."""
    exclude = exclude.resolve() if exclude is not None else None
    if not inputs:
        raise ScalegptError("no inputs: give --input FILE_OR_DIR..., --hf-dataset NAME or --recipe NAME")
    files: list[InputFile] = []
    skipped = skipped if skipped is not None else []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = []
            for f in _walk(p, exclude, skipped):
                c = classify(f, explicit=False)
                if c:
                    found.append(InputFile(f, c[0], c[1], stat_input(f).st_size, stat_input(f).st_mtime_ns))
                else:
                    skipped.append(f)
            if not found:
                raise ScalegptError(f"{p}: folder contains no input files; expected {KNOWN}")
            files.extend(found)
        elif p.is_file():
            kind, comp = classify(p, explicit=True)
            files.append(InputFile(p, kind, comp, stat_input(p).st_size, stat_input(p).st_mtime_ns))
        else:  # the true cause from stat: missing, a symlink loop, a denied folder, a FIFO or a device
            raise ScalegptError(f"{p}: {path_problem(p) or 'not a regular file or folder'}")
    return files


def _walk(root: Path, exclude: Path | None, skipped: list[Path]) -> Iterator[Path]:
    """The regular files under `root` in sorted order; an unreadable folder raises (os.walk alone would skip it)."""
    def fail(e: OSError):
        raise ScalegptError(f"{e.filename}: cannot read folder ({os_error_cause(e)}); fix its permissions or leave it "
                            "out of --input") from None

    seen: set[str] = set()  # real paths of the folders walked: a symlink loop is walked once
    for folder, dirs, names in os.walk(root, onerror=fail, followlinks=True):
        here = Path(folder)
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            skipped.append(here)
            continue
        seen.add(real)
        hidden = [d for d in dirs if d.startswith(".")]
        skipped.extend(here / d for d in sorted(hidden))
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and not (exclude is not None and (here / d).resolve() == exclude))
        for name in sorted(names):
            f = here / name
            if name.startswith("."):
                skipped.append(f)
            elif f.is_file():
                yield f
            else:
                skipped.append(f)  # a FIFO, socket or broken link


def stat_input(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except OSError as e:
        raise ScalegptError(f"{path}: cannot read ({os_error_cause(e)})") from None


def describe_skipped(skipped: list[Path], limit: int = 5) -> str | None:
    """'skipped 17 inputs not of a known kind: a, b, ... (name a file on its own to read it as text)', or None."""
    if not skipped:
        return None
    shown = ", ".join(str(p) for p in skipped[:limit]) + (f", ... ({len(skipped) - limit} more)"
                                                          if len(skipped) > limit else "")
    return (f"skipped {len(skipped)} folder entr{'y' if len(skipped) == 1 else 'ies'} that are hidden or not of a "
            f"known kind ({KNOWN}): {shown}; give a file by name to read it as text")
