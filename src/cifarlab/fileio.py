"""Files written whole or not at all. Below every package: train, report and studies all write this way.

A crash (or kill -9) at any moment leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from cifarlab.errors import UserError, WriteFailed

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


@contextlib.contextmanager
def replaced_when_done(path: Path):
    """For writers that want a file name (the ONNX and TorchScript exporters): yields a temp path beside
    `path`, renamed over `path` when the block ends without an exception and removed when it raises."""
    path = Path(path)
    try:
        fd, tmp = _create_temp(path)
        os.close(fd)
    except OSError as err:
        raise WriteFailed.from_os_error(path, err) from None
    try:
        yield Path(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as err:  # disk full mid-export: the file already there is untouched
        raise WriteFailed.from_os_error(path, err) from None
    finally:
        Path(tmp).unlink(missing_ok=True)


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


# ---------------------------------------------------------------- where a command may write

# The files of a run directory (train/rundir.py): only the command that owns the run may write them.
RUN_RECORD = frozenset({"config.yaml", "environment.json", "metrics.csv", "best.pt", "last.pt", "summary.json",
                        "train.log", ".lock", "report.html", "report.md", "resume_history.json"})


def is_run_dir(folder: Path) -> bool:
    """A folder written by `cifarlab train`: a checkpoint, a summary, or a config with its metrics."""
    folder = Path(folder)
    try:
        if not folder.is_dir():
            return False
        return any((folder / n).exists() for n in ("last.pt", "best.pt", "summary.json")) or (
            (folder / "config.yaml").exists() and (folder / "metrics.csv").exists())
    except OSError:
        return False


def _same(a: Path, b: Path | None) -> bool:
    if b is None:
        return False
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _enclosing_run(path: Path) -> Path | None:
    for d in path.parents:
        if is_run_dir(d):
            return d
    return None


def _probe_writable(folder: Path, target: Path) -> None:
    """Create and remove a temp file: the only honest test (root passes os.access on a read-only mode)."""
    try:
        fd, tmp = _create_temp(folder / ".probe")
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise UserError(f"cannot write '{target}' ({err.strerror or err}): choose another -o/--out") from None


def check_output_file(path: str | Path, owner: str | Path | None = None) -> Path:
    """A file a command is about to write: refuse (one line) what cannot be written or would overwrite
    a run's checkpoints or record (unless the command owns that run, `owner`). Returns the path."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"'{path}' is a folder: give a file name with -o/--out")
    parent = path.parent
    if not parent.exists():
        raise UserError(f"cannot write '{path}': folder '{parent}' does not exist")
    if not parent.is_dir():
        raise UserError(f"cannot write '{path}': '{parent}' is a file, not a folder")
    run = parent if is_run_dir(parent) else _enclosing_run(parent)
    if run is not None and not _same(run, owner) and (
            run != parent or path.name in RUN_RECORD or path.name.startswith(".")):
        raise UserError(f"'{path}' would overwrite part of run '{run}' (its checkpoints and record belong to "
                        "that run): write somewhere else with -o/--out")
    if path.exists() and not path.is_file():
        raise UserError(f"'{path}' is not a regular file: give another -o/--out")
    _probe_writable(parent, path)
    return path


def check_output_dir(path: str | Path, owner: str | Path | None = None, create: bool = True) -> Path:
    """A folder a command is about to write files into (a report, a study, an lr-find): refuse (one line)
    a file in its place, a folder that cannot be created or written, and a run directory the command
    does not own (or any folder inside one). Creates it when `create`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"'{path}' is a file, not a folder: give a folder with -o/--out")
    for d in (path, *path.parents):
        if is_run_dir(d) and not _same(d, owner):
            raise UserError(f"'{path}' is {'' if d == path else 'inside '}run directory '{d}', whose files belong "
                            "to that run: write somewhere else with -o/--out")
    if create:
        for d in path.parents:  # a file where a folder of the path is meant
            if d.exists() and not d.is_dir():
                raise UserError(f"cannot create '{path}': '{d}' is a file, not a folder")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create folder '{path}' ({err.strerror or err}): choose another -o/--out") from None
        _probe_writable(path, path)
    return path
