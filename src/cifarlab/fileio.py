"""Files written whole or not at all. Below every package: train, report and studies all write this way.

A crash (or kill -9) at any moment leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from cifarlab.errors import WriteFailed

TEMP_SUFFIX = ".tmp"
# like tempfile.mkstemp, but created with mode 0o666 so the kernel applies the caller's umask (and any
# default ACL) itself: the file gets the usual permissions without reading the umask, which needs a
# process-wide os.umask() set-and-restore that races with other threads
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _create_temp(path: Path) -> tuple[int, str]:
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            return os.open(tmp, _TEMP_FLAGS, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name beside {path}")


def atomic_write(path: Path, write) -> None:
    """Call write(file_object) on a temp file beside `path`, fsync, then rename over `path`."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = _create_temp(path)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself survives a power cut, not just a killed process
    except OSError as err:  # disk full, read-only, quota: the old file is untouched, say so in one line
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise WriteFailed.from_os_error(path, err) from None
    except BaseException:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def remove_stale_temps(folder: Path) -> None:
    """Temp files of writes a kill -9 cut short; only call while holding the folder's lock."""
    for p in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        p.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)
