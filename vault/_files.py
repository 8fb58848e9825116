"""Files the safe way: read in bounded memory; written atomically, durably, never over an existing file unless asked.

Every whole file vault reads goes through :func:`read_capped`, which reads at
most the file's cap plus one byte from any kind of file (a regular file, a
pipe, ``/dev/zero``), so no input can make vault hold more than its cap.

Example:
    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = os.path.join(d, "policy.json")
    ...     _ = write_new(path, b"{}")
    ...     read_capped(path, 16, "trust policy")
    b'{}'
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
from pathlib import Path

from vault.errors import FormatError, InputError

__all__ = [
    "append_whole",
    "cut_back",
    "ends_with",
    "open_to_read",
    "read_capped",
    "size_text",
    "write_folder",
    "write_new",
]

_BLOCK = 64 * 1024


def size_text(size: int) -> str:
    """``size`` bytes in words a person reads at a glance: ``4 MiB``, ``256 KiB``, ``1000 bytes``."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"


def open_to_read(path: str | os.PathLike[str]) -> int:
    """A read-only file descriptor for ``path``, opened without waiting (a FIFO with no writer, a tty).

    The descriptor is in blocking mode once open; the caller closes it.

    Raises:
        OSError: it cannot be opened.
    """
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def ends_with(path: str | os.PathLike[str], data: bytes) -> bool:
    """Whether the regular file ``path`` ends with ``data`` (only its last ``len(data)`` bytes are read).

    Raises:
        OSError: it cannot be opened or read.
    """
    fd = open_to_read(path)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size < len(data):
            return False
        return os.pread(fd, len(data), info.st_size - len(data)) == data
    finally:
        os.close(fd)


def read_capped(path: str | os.PathLike[str], cap: int, what: str) -> bytes:
    """The whole of ``path``, refused when it holds more than ``cap`` bytes.

    At most ``cap + 1`` bytes are ever read, whatever ``path`` is: a regular
    file larger than ``cap`` is refused from its size alone, and a pipe or a
    device (``/dev/zero``) is read only until it has given one byte too many.
    Opening never waits for a writer (a FIFO nobody writes to reads as empty).

    Args:
        path: the file to read.
        cap: the largest size accepted, in bytes.
        what: names the file's role in errors ("trust policy").

    Raises:
        InputError: the file cannot be opened or read, or is a folder.
        FormatError: it holds more than ``cap`` bytes.
    """
    name = os.fspath(path)
    try:
        fd = open_to_read(name)
    except OSError as e:
        raise InputError(f"cannot read {what} {name}: {e.strerror}") from e
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise InputError(f"{name}: {what} is a folder, not a file")
        if stat.S_ISREG(info.st_mode) and info.st_size > cap:
            raise FormatError(f"{name}: {what} is larger than the {size_text(cap)} limit ({info.st_size} bytes)")
        parts: list[bytes] = []
        got = 0
        while got <= cap:
            block = os.read(fd, min(_BLOCK, cap + 1 - got))
            if not block:
                break
            parts.append(block)
            got += len(block)
    except OSError as e:
        raise InputError(f"cannot read {what} {name}: {e.strerror}") from e
    finally:
        os.close(fd)
    if got > cap:
        raise FormatError(f"{name}: {what} is larger than the {size_text(cap)} limit")
    return b"".join(parts)


def write_folder(folder: str | os.PathLike[str], files: dict[str, bytes], *, overwrite: bool = False) -> Path:
    """Write a new folder whole: ``files`` (relative path to bytes) into a temporary folder, then renamed.

    A reader never sees half the folder, and a crash leaves only a hidden
    ``.<name>.*`` folder beside it. Without ``overwrite`` an existing folder is
    refused, also one another writer finished meanwhile (two exports into one
    folder: the second is refused, the first kept); with it, the old folder is
    replaced.

    Raises:
        InputError: the folder exists and ``overwrite`` is false, a path
            escapes the folder, or it cannot be written.
    """
    target = Path(folder)
    if target.exists() and not overwrite:
        raise _exists(target)
    parent = target.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=parent))
    except OSError as e:
        raise InputError(f"cannot write {target}: {e.strerror or e}") from e
    try:
        for name, data in files.items():
            path = work / name
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise InputError(f"{name!r} is not a path inside {target}")
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
        if target.exists() and overwrite:
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=parent))
            os.rename(target, old / target.name)
            os.rename(work, target)
            _remove_tree(old)
        else:
            try:  # a folder another writer finished meanwhile (not empty) is never replaced
                os.rename(work, target)
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                    raise
                raise _exists(target) from e
        fsync_dir(parent)
    except BaseException as e:
        _remove_tree(work)
        if isinstance(e, OSError):
            raise InputError(f"cannot write {target}: {e.strerror or e}") from e
        raise
    return target


def _exists(target: Path) -> InputError:
    return InputError(f"{target} exists; vault does not write over files (remove it, or pass --force)")


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


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
