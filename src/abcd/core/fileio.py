"""Atomic outputs: write beside the target, then rename into place.

A stage killed half-way (SIGKILL, power loss) then leaves either the previous complete
output or none, never a truncated file that looks complete.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from abcd.core.errors import DiskFullError

# A full disk or quota: the writer's own error names no path (a write() fails, not an open()).
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _no_space(err: BaseException, path: Path) -> DiskFullError | None:
    if isinstance(err, OSError) and err.errno in _NO_SPACE:
        return DiskFullError(f"no space left on the device writing {path}: free some space, then run it again")
    return None


@contextlib.contextmanager
def atomic_file(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; it replaces ``path`` when the block succeeds.

    The temporary is ``path`` + ``suffix`` (``.tmp`` is git-ignored). Its name is fixed, not
    random: ``torch.save`` names the archive inside the file after it, so a checkpoint's bytes
    depend on it. Writers that pick a format by suffix (PIL, matplotlib) must be told the format.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + suffix)
    try:
        yield tmp
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        full = _no_space(err, path)
        if full:
            raise full from None
        raise
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield an empty staging directory that replaces ``path`` when the block succeeds."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        full = _no_space(err, path)
        if full:
            raise full from None
        raise
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
