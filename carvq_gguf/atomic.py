"""Atomic file output: write to a temporary file in the destination's directory, fsync, rename.

A reader never sees a half-written file at the destination: either the old file (or none) or
the complete new one. Temporaries carry the writer's process id, so the next run can remove
those a killed process left behind (SIGKILL runs no cleanup).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import CarvqError


def same_file(a: Path, b: Path) -> bool:
    """True if a and b name the same file (b need not exist)."""
    if not b.exists():
        return False
    return a.resolve() == b.resolve() or os.path.samefile(a, b)


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def process_alive(pid: int) -> bool:
    """True if a process with this id runs on this machine (or might: one we may not signal)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owned_prefix(prefix: str) -> str:
    """prefix + this process's id + "-": a temporary name remove_stale_temporaries can attribute."""
    return f"{prefix}{os.getpid()}-"


def remove_stale_temporaries(directory: Path, prefix: str) -> list[Path]:
    """Remove the files and directories in directory named owned_prefix(prefix) + ... by a process
    that is gone; returns what was removed."""
    removed = []
    for path in Path(directory).glob(glob.escape(prefix) + "*"):
        pid = path.name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit() or process_alive(int(pid)):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_output(dest: Path) -> Iterator[Path]:
    """Yield a temporary path next to dest; on normal exit fsync it and rename it onto dest.

    On an exception the temporary file is removed and dest is left untouched.
    """
    dest = Path(dest)
    if not dest.parent.is_dir():
        raise CarvqError(f"output directory {dest.parent} does not exist")
    remove_stale_temporaries(dest.parent, f".{dest.name}.")
    fd, tmp_name = tempfile.mkstemp(prefix=owned_prefix(f".{dest.name}."), suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes the file private; give it the mode a plain open() would have
        os.chmod(tmp, dest.stat().st_mode & 0o777 if dest.exists() else 0o666 & ~current_umask())
        fsync_file(tmp)
        os.replace(tmp, dest)
        dir_fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(out: Path, write: Callable[[Path], None]) -> None:
    """Write out through write(tmp_path) with atomic_output (never half-written)."""
    with atomic_output(Path(out)) as tmp:
        write(tmp)
