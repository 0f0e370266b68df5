"""Atomic file output: write to a temporary file in the destination's directory, fsync, rename.

A reader never sees a half-written file at the destination: either the old file (or none) or
the complete new one.
"""

from __future__ import annotations

import contextlib
import os
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


@contextlib.contextmanager
def atomic_output(dest: Path) -> Iterator[Path]:
    """Yield a temporary path next to dest; on normal exit fsync it and rename it onto dest.

    On an exception the temporary file is removed and dest is left untouched.
    """
    dest = Path(dest)
    if not dest.parent.is_dir():
        raise CarvqError(f"output directory {dest.parent} does not exist")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
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
