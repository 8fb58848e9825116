"""Writing files the safe way: atomically, durably, never over an existing file unless asked."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from vault.errors import InputError

__all__ = ["write_new"]


def write_new(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = False, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically and fsync it.

    The bytes go to a temporary file beside ``path`` first, so a reader never
    sees half a file and a crash never leaves one. Without ``overwrite`` an
    existing file is refused (and the check cannot race: the final step is a
    hard link, which fails if the name exists).

    Raises:
        InputError: ``path`` exists and ``overwrite`` is false, or the folder
            cannot be written.
    """
    target = Path(path)
    if not overwrite and target.exists():
        raise InputError(f"{target} exists; vault does not write over files (remove it, or pass --force)")
    directory = target.parent if str(target.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as e:
        raise InputError(f"cannot write in {directory}: {e.strerror}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if overwrite:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)
            except FileExistsError as e:
                raise InputError(f"{target} exists; vault does not write over files") from e
            os.unlink(tmp)
        fsync_dir(directory)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def fsync_dir(directory: Path) -> None:
    """Make a new or renamed entry in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
