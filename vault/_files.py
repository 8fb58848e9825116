"""Writing files the safe way: atomically, durably, never over an existing file unless asked."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from vault.errors import InputError

__all__ = ["append_whole", "cut_back", "write_new"]


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


def append_whole(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` (made if missing) and fsync it: all of it, or nothing.

    A short write goes on with the rest. Any failure (a full disk, an I/O
    error, an interrupt) cuts the file back to the length it had, fsynced (a
    file this call made is removed), and raises again; the caller must hold
    whatever lock keeps others from appending meanwhile. A power cut can still
    leave part of ``data`` at the end: readers must know a last line without
    its end.

    Raises:
        OSError: the append failed and the file is as it was; if cutting it
            back failed too, the error says so and part of ``data`` is left.
    """
    made = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                if written <= 0:
                    raise OSError(errno.EIO, "the write made no progress")
                view = view[written:]
            os.fsync(fd)
        except BaseException as e:
            try:
                if made:
                    os.unlink(path)
                    with contextlib.suppress(OSError):
                        fsync_dir(path.parent)
                else:
                    os.ftruncate(fd, start)
                    os.fsync(fd)
            except OSError as undo:
                if not isinstance(e, OSError):
                    raise e from undo
                raise OSError(e.errno, f"{e.strerror}, and cutting the file back failed too ({undo.strerror})") from e
            raise
    finally:
        os.close(fd)
    if made:
        fsync_dir(path.parent)


def cut_back(path: Path, length: int) -> None:
    """Cut ``path`` back to its first ``length`` bytes and fsync it (the caller holds the file's lock).

    Raises:
        OSError: the file could not be opened, cut or synced.
    """
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, length)
        os.fsync(fd)
    finally:
        os.close(fd)
