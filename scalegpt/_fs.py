"""Files that are whole or absent, and read in one way: the one atomic writer (for a file or a directory), the one
reader per file kind (`read_json_object`/`read_json`, `read_jsonl`, `read_toml`), and the true cause of an OS error
(`os_error_message`, `path_problem`: from the errno and the file type, never guessed).

Everything scalegpt writes that a crash must not leave half-written (checkpoints, dataset shards and meta.json, run
logs, plots, downloads) goes through `atomic_file` or `write_dir_atomically`: write beside the target under a hidden
temporary name, fsync, then rename over it. A disk that refuses the write becomes one ScalegptError line.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
from pathlib import Path

from scalegpt.errors import ScalegptError


@contextlib.contextmanager
def atomic_file(path):
    """`with atomic_file(p) as tmp:` write to `tmp`; on success it replaces `p` in one rename, on failure it is
    removed and `p` keeps its previous contents."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        why = _write_error(path, e, "file") if isinstance(e, OSError) else None
        with contextlib.suppress(OSError):
            tmp.unlink()
        if why is not None:
            raise ScalegptError(why) from None
        raise


def write_text_atomically(path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_dir_atomically(final: Path, write_into, label: str = "checkpoint") -> None:
    """Call write_into(tmp_dir), then rename tmp_dir to `final`: a crash midway never leaves `final` half-written.

    An existing `final` is replaced only after the new directory is complete on disk."""
    final = Path(final)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    except OSError as e:
        if e.errno in _WRITE_ERRNOS:
            raise ScalegptError(_write_error(final, e, label)) from None
        raise
    try:
        write_into(tmp)
        for f in tmp.iterdir():  # flush file contents before the rename makes them visible
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if final.exists():
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except OSError:
            if old is not None:  # put the previous version back rather than leave no `final` at all
                os.replace(old, final)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        fsync_dir(final.parent)
    except BaseException as e:
        # Diagnose before rmtree frees the space; a ScalegptError from write_into is already the clear message.
        why = _write_error(final, e, label) if isinstance(e, Exception) and not isinstance(e, ScalegptError) else None
        shutil.rmtree(tmp, ignore_errors=True)
        if why is not None:
            raise ScalegptError(why) from None
        raise


# errno values that mean "this disk cannot take the write". A bare "[Errno 28]" buried in a traceback is easy to
# misread as a bug in the trainer, and the writers report it differently: Python raises OSError, safetensors a
# SafetensorError naming "(os error 28)", torch.save a RuntimeError with a strerror or only "unexpected pos".
_WRITE_ERRNOS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied (read-only directory?)",
    errno.EPERM: "permission denied (read-only directory?)",
}
_LOW_SPACE_BYTES = 1 << 20


def _write_error(final: Path, e: Exception, label: str = "checkpoint") -> str | None:
    """A one-line message when `e` means the disk refused the write, else None (the original error is re-raised)."""
    code = e.errno if isinstance(e, OSError) else None
    if code is None:
        text = str(e)
        m = re.search(r"os error (\d+)", text)
        if m:
            code = int(m.group(1))
        else:
            code = next((c for c in _WRITE_ERRNOS if os.strerror(c) in text), None)
    what = _WRITE_ERRNOS.get(code)
    if what is None and code is None:  # torch.save's "unexpected pos", numpy's "N requested and M written"
        try:
            st = os.statvfs(final.parent)
            if st.f_bavail * st.f_frsize < _LOW_SPACE_BYTES:
                what = "disk full"
        except OSError:
            pass
    if what is None:
        return None
    detail = " ".join(str(e).split())
    return f"cannot write {label} {final}: {what} ({detail}); any previous {label} is untouched"


def os_error_message(e: OSError) -> str:
    """One line for an OSError: 'PATH: cause', the cause taken from its errno (never guessed from the type)."""
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {os_error_cause(e)}" if paths else os_error_cause(e)


def os_error_cause(e: OSError) -> str:
    return _CAUSES.get(e.errno) or e.strerror or str(e) or type(e).__name__


MISSING = "no such file or directory"  # path_problem's answer for a path that does not exist
_CAUSES = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOENT: MISSING,
    errno.EISDIR: "is a directory, expected a file",
    errno.ENOTDIR: "a component of the path is not a directory",
    errno.EEXIST: "already exists",
    errno.ELOOP: "too many levels of symbolic links (a symlink loop?)",
    errno.ENAMETOOLONG: "file name too long",
    errno.EIO: "input/output error (a failing disk?)",
    errno.ENXIO: "no such device (a socket or device file?)",
    errno.EMFILE: "too many open files",
    errno.ENOTEMPTY: "directory not empty",
    errno.EBUSY: "device or resource busy",
    errno.ETXTBSY: "text file busy",
}


def path_problem(path, want: str = "file") -> str | None:
    """Why `path` is not a readable `want` ("file": a regular file, "dir": a directory), or None when it is one.

    The cause comes from stat's errno and the file type, so a symlink loop, a denied parent or a FIFO is named as
    such rather than guessed to be missing. Checking before opening matters for a FIFO: opening one blocks."""
    try:
        st = os.stat(path)
    except OSError as e:
        return os_error_cause(e)
    except ValueError:  # an embedded NUL byte
        return "not a valid path"
    if want == "dir":
        return None if stat.S_ISDIR(st.st_mode) else f"not a directory ({file_type(st)})"
    if stat.S_ISREG(st.st_mode):
        return None
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, expected a file"
    return f"not a regular file ({file_type(st)})"


def file_type(st: os.stat_result) -> str:
    m = st.st_mode
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symlink")):
        if test(m):
            return name
    return "an unknown kind of file"


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (best effort: not every filesystem allows fsync on a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------ the one reader per kind
# Every JSON, JSON-lines and TOML file scalegpt reads comes through here: one place that names the file (and line),
# reports OS errors by errno, refuses what is not a regular file, and turns any decoding failure into one line —
# including those json/tomllib raise as RecursionError (deep nesting) or plain ValueError (a 5000-digit integer).

MAX_TEXT_BYTES = 1 << 30  # a metadata file this large is not one of ours; reading it could exhaust memory


def read_text(path, what: str = "file", missing_hint: str | None = None, kind: str | None = None) -> str:
    """The UTF-8 text of a regular file, or one ScalegptError naming the file and the true cause (bytes that are not
    UTF-8 are "not valid `kind`" when the caller expects a format)."""
    path = Path(path)
    why = path_problem(path, "file")
    if why is not None:
        if why == _CAUSES[errno.ENOENT]:
            why = f"not found ({missing_hint})" if missing_hint else "not found"
        elif why.startswith("is a directory"):
            why = "is a directory"
        raise ScalegptError(f"{path}: {why}, expected {what}")
    try:
        if path.stat().st_size > MAX_TEXT_BYTES:
            raise ScalegptError(f"{path}: {path.stat().st_size:,} bytes, too large for {what}")
        data = path.read_bytes()
    except OSError as e:
        raise ScalegptError(f"{path}: cannot read ({os_error_cause(e)}), expected {what}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if kind:
            raise ScalegptError(f"{path}: not valid {kind} (not UTF-8 text at byte {e.start})") from None
        raise ScalegptError(f"{path}: not UTF-8 text (byte {e.start}), expected {what}") from None


def parse_json(text: str, where: str, what: str = "JSON", bad: str | None = None):
    """json.loads, with every decoding failure as one ScalegptError naming `where` (a path or path:line)."""
    bad = bad or f"not valid {what}"
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        at = f" at line {e.lineno} column {e.colno}" if "\n" in text.strip() else f" at column {e.colno}"
        raise ScalegptError(f"{where}: {bad} ({e.msg}{at})") from None
    except RecursionError:
        raise ScalegptError(f"{where}: {bad} (nested too deeply)") from None
    except ValueError as e:
        raise ScalegptError(f"{where}: {bad} ({e})") from None


def shape_problem(data, keys: dict) -> str | None:
    """What keeps `data` from being an object with each key of `keys` holding a value of its type(s) (bool is never
    taken for an int or a number), or None."""
    if not isinstance(data, dict):
        return f"expected an object, got {_type_name(data)}"
    for key, types in keys.items():
        types = types if isinstance(types, tuple) else (types,)
        if key not in data:
            return f"missing key '{key}'"
        value = data[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return f"key '{key}' should be {' or '.join(_type_name(t) for t in types)}, got {_type_name(value)}"
    return None


def check_keys(data, keys: dict, where: str) -> dict:
    problem = shape_problem(data, keys)
    if problem is not None:
        raise ScalegptError(f"{where}: {problem}")
    return data


_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
               bool: "true/false", type(None): "null"}


def _type_name(value_or_type) -> str:
    t = value_or_type if isinstance(value_or_type, type) else type(value_or_type)
    return _TYPE_NAMES.get(t, t.__name__)


def read_json(path, what: str = "a JSON file", missing_hint: str | None = None):
    """Any JSON value from a file (the caller checks the shape), or one ScalegptError."""
    return parse_json(read_text(path, what, missing_hint, kind="JSON"), str(path))


def read_json_object(path, missing_hint: str | None = None, keys: dict | None = None,
                     what: str = "a JSON object") -> dict:
    """A JSON file holding an object (with `keys` of the given types), or one clear error naming the file: not found
    (with `missing_hint`), not a regular file, not JSON, too deep, not an object, a key missing or of the wrong type."""
    return check_keys(read_json(path, what, missing_hint), keys or {}, str(path))


def read_jsonl(path, keys: dict | None = None, what: str = "a JSON-lines file", record: str = "record",
               text: str | None = None) -> list[tuple[int, dict]]:
    """[(line number, object)] of a JSON-lines file whose every line is an object with `keys` (`text`: its content,
    when the caller has read it already).

    A bad line is one error naming path:line, not skipped: a record silently dropped would change what a comparison,
    a plot or a resumed log reports. The one exception is a torn last line without its newline: that is what a run
    killed mid-write leaves, and the writer starts a fresh line after it."""
    text = read_text(path, what, kind="JSON lines") if text is None else text
    lines = text.split("\n")
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = parse_json(line, where, bad=f"not a JSON line; is the file {what}?")
        except ScalegptError:
            if n == len(lines):  # no newline after it: a torn final write
                continue
            raise
        problem = shape_problem(row, keys or {})
        if problem is not None:
            raise ScalegptError(f"{where}: not a {record} ({problem})")
        out.append((n, row))
    return out


def read_toml(path, what: str = "a TOML file") -> dict:
    """A TOML file as a dict, or one ScalegptError naming the file (and the line tomllib reports)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    text = read_text(path, what, kind="TOML")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScalegptError(f"{path}: not valid TOML ({e})") from None
    except RecursionError:
        raise ScalegptError(f"{path}: not valid TOML (nested too deeply)") from None
    except ValueError as e:
        raise ScalegptError(f"{path}: not valid TOML ({e})") from None
