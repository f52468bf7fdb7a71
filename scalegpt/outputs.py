"""The one rule for where a command may write: `check_output` decides, before anything is written, whether an output
path may be created, written into or replaced. Every writing command asks it (prepare, train, export, tokenizer train,
plot, compare, quickstart).

An output is refused when
- its path is empty, or is the current directory, one of its parents, the home directory or `/`;
- it is, contains or lies inside one of the command's inputs (symlinks resolved): writing it could destroy what the
  command reads;
- it exists and is not the kind of thing the command writes: a directory replaces only a directory scalegpt wrote
  (recognised by its own files: a dataset's meta.json, a run's config.toml, an export's scalegpt_export.json) or an
  empty one, and the refusal names what would have been deleted; an image replaces only an image;
- it exists, is scalegpt's own, and neither --overwrite nor a continuation (--resume, an interrupted prepare) was asked.
"""
from __future__ import annotations

import os
from pathlib import Path

from scalegpt._fs import file_type, os_error_cause
from scalegpt.errors import ScalegptError

EXPORT_MARKER = "scalegpt_export.json"  # written into every HF export: what makes a directory an export of ours

_NOUNS = {"dataset": "dataset", "run": "run directory", "export": "export", "image": "image",
          "tokenizer": "SentencePiece model", "results": "JSON results file", "gguf": "GGUF file"}
_FILE_KINDS = ("image", "tokenizer", "results", "gguf")
_IMAGE_MAGIC = (b"\x89PNG", b"%PDF", b"\xff\xd8\xff", b"<?xml", b"<svg", b"%!PS", b"GIF8", b"II*\x00", b"MM\x00*",
                b"RIFF")


def check_output(out, *, kind: str, inputs=(), overwrite: bool = False, reuse: bool = False,
                 flag: str = "--out") -> Path:
    """Raise one ScalegptError unless the command may write `out` (a `kind` directory: dataset, run, export; or a
    file: image, tokenizer, results, gguf); returns `out` as a Path.

    overwrite: an existing output of ours may be replaced.  reuse: an existing output of ours may be continued
    (train --resume, a prepare that picks up its own interrupted work)."""
    path = check_output_path(out, flag)
    where = f"{flag} {out}"
    real = _real(path)
    for item in inputs:
        if item is None or str(item) == "":
            continue
        src = _real(Path(item))
        if real == src:
            raise ScalegptError(f"{where}: is the input {item}; writing it would destroy what the command reads")
        if src.is_relative_to(real):
            raise ScalegptError(f"{where}: contains the input {item}; writing it could destroy what the command "
                                "reads; choose another output")
        if real.is_relative_to(src):
            raise ScalegptError(f"{where}: lies inside the input {item}; choose an output outside the inputs")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ScalegptError(f"{where}: a symlink to a missing target ({os.readlink(path)}); remove it or choose "
                                "another output") from None
        return path
    except OSError as e:
        raise ScalegptError(f"{where}: {os_error_cause(e)}") from None
    if kind in _FILE_KINDS:  # a re-run replaces its own image or results file
        return _check_file_output(path, st, kind, where, overwrite or reuse or kind in ("image", "results"))
    import stat

    if not stat.S_ISDIR(st.st_mode):
        raise ScalegptError(f"{where}: exists and is not a directory ({file_type(st)})")
    try:
        entries = sorted(os.listdir(path))
    except OSError as e:
        raise ScalegptError(f"{where}: {os_error_cause(e)}") from None
    if not entries:
        return path
    noun = _NOUNS[kind]
    if not _RECOGNISERS[kind](path):
        shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
        action = "replace it even with --overwrite" if overwrite else "write into it"
        raise ScalegptError(f"{where}: not empty and not a scalegpt {noun}; refusing to {action} (it holds {shown}); "
                            f"choose a new or empty {flag}")
    if overwrite or reuse:
        return path
    if kind == "run":
        raise ScalegptError(f"{where}: run directory exists; pass --resume to continue it or --overwrite to delete it "
                            "and start again")
    what = "prepared dataset (meta.json)" if kind == "dataset" else f"scalegpt {noun}"
    raise ScalegptError(f"{where}: already holds a {what}; pass --overwrite to replace it, or choose another {flag}")


def check_output_path(out, flag: str = "--out") -> Path:
    """Refuse an output path that is empty, or names the current directory, one of its parents, home or `/`: replacing
    any of those would take the user's files with it."""
    text = os.fspath(out) if out is not None else ""
    if not str(text).strip():
        raise ScalegptError(f"{flag}: empty path; give a new directory or file name")
    if "\x00" in str(text):
        raise ScalegptError(f"{flag} {text!r}: not a valid path (NUL byte)")
    path = Path(text)
    real, cwd = _real(path), _real(Path.cwd())
    if real == cwd:
        raise ScalegptError(f"{flag} {text}: is the current directory; give a new directory or file name")
    if cwd.is_relative_to(real):
        raise ScalegptError(f"{flag} {text}: is a parent of the current directory; give a new directory or file name")
    if real == _real(Path.home()) or real == Path(real.anchor):
        raise ScalegptError(f"{flag} {text}: is the home or root directory; give a new directory or file name")
    return path


def _real(path: Path) -> Path:
    return Path(os.path.realpath(os.path.abspath(path)))


def _check_file_output(path: Path, st, kind: str, where: str, may_replace: bool) -> Path:
    import stat

    if stat.S_ISDIR(st.st_mode):
        what = {"image": "give an image path", "tokenizer": "give a file prefix"}.get(kind, "give a file path")
        raise ScalegptError(f"{where}: is a directory; {what}")
    if not stat.S_ISREG(st.st_mode):
        raise ScalegptError(f"{where}: exists and is not a regular file ({file_type(st)})")
    if st.st_size == 0:
        return path
    if not _RECOGNISERS[kind](path):
        raise ScalegptError(f"{where}: exists and is not a{'n' if kind == 'image' else ''} {_NOUNS[kind]}; refusing "
                            "to replace it; choose another path")
    if not may_replace:
        raise ScalegptError(f"{where}: already exists; pass --overwrite to replace it, or choose another path")
    return path


def _head(path: Path, n: int = 16) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _is_dataset(path: Path) -> bool:
    from scalegpt._fs import read_json_object

    partial = path / ".partial"
    if ((partial / "state.json").is_file() or (partial / "plan.json").is_file()) and not (path / "meta.json").exists():
        return True  # the scratch of an interrupted `scalegpt prepare` (plan.json: its --executor tasks)
    try:
        return read_json_object(path / "meta.json").get("format") == "scalegpt-tokens"
    except ScalegptError:
        return False


def _is_run(path: Path) -> bool:
    from scalegpt._fs import read_toml

    if not (path / "config.toml").is_file():
        return False
    try:
        config = read_toml(path / "config.toml")
    except ScalegptError:
        return False
    return isinstance(config.get("model"), dict) and isinstance(config.get("train"), dict)


def _is_export(path: Path) -> bool:
    from scalegpt._fs import read_json_object

    try:
        return read_json_object(path / EXPORT_MARKER).get("format") == "scalegpt-hf-export"
    except ScalegptError:
        return False


def _is_image(path: Path) -> bool:
    head = _head(path).lstrip()
    return any(head.startswith(m) for m in _IMAGE_MAGIC)


def _is_results(path: Path) -> bool:
    from scalegpt._fs import read_json_object

    try:
        read_json_object(path)
        return True
    except ScalegptError:
        return False


def _is_sentencepiece(path: Path) -> bool:
    if path.suffix == ".vocab":  # PREFIX.vocab: "piece<TAB>score" lines
        try:
            lines = path.read_text(encoding="utf-8").splitlines()[:3]
        except (OSError, UnicodeDecodeError):
            return False
        return bool(lines) and all(line.count("\t") == 1 for line in lines)
    try:
        import sentencepiece as spm

        spm.SentencePieceProcessor(model_proto=path.read_bytes())
        return True
    except Exception:  # sentencepiece raises RuntimeError or others for a file that is not a model
        return False


def _is_gguf(path: Path) -> bool:
    return _head(path, 4) == b"GGUF"


_RECOGNISERS = {"dataset": _is_dataset, "run": _is_run, "export": _is_export, "image": _is_image,
                "tokenizer": _is_sentencepiece, "results": _is_results, "gguf": _is_gguf}
