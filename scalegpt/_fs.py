"""Files that are whole or absent: the one atomic writer (for a file or a directory) and the one JSON-object reader.

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
    """One line for an OSError: 'PATH: cause', the cause in words for the errors a user meets."""
    cause = _CAUSES.get(e.errno) or e.strerror or str(e) or type(e).__name__
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {cause}" if paths else cause


_CAUSES = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOENT: "no such file or directory",
    errno.EISDIR: "is a directory, expected a file",
    errno.ENOTDIR: "not a directory",
    errno.EEXIST: "already exists",
}


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


def read_json_object(path, missing_hint: str) -> dict:
    """A JSON file holding an object, or one clear error: not found (with `missing_hint`), not JSON, not an object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScalegptError(f"{path}: not found ({missing_hint})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ScalegptError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ScalegptError(f"{path}: expected a JSON object")
    return data


