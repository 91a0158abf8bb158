"""Atomic outputs: write beside the target, then rename into place.

A stage killed half-way (SIGKILL, power loss) then leaves either the previous complete
output or none, never a truncated file that looks complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


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
    except BaseException:
        tmp.unlink(missing_ok=True)
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
