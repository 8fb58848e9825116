"""Run ``vault bundle promote ...`` in this process and SIGKILL it at one step of the promotion (test code only).

Run as ``python -m tests.bundle._promote_child STEP ARGV...`` from the
repository root, with the SoftHSM2 environment inherited from the test.
STEP names where the process kills itself, with SIGKILL, so nothing of
Python's (no ``finally``, no ``atexit``) runs after it:

- ``before-append``: before the entry is appended to the promotion log;
- ``after-append``: after the entry is in the log, before the token's head is written;
- ``after-head``: after the token's head is written, before the bundle is rewritten;
- ``after-rewrite``: after the bundle is rewritten, before the command prints;
- ``mid-append``: during the append, once a third of the line is written
  (what a power cut leaves: a last line without its newline);
- ``none``: not at all.

One more STEP does not kill: ``file-limit`` lets the process write files
only up to 300 bytes past the log's length (``RLIMIT_FSIZE``, ``SIGXFSZ``
ignored), so the kernel itself answers the append with a short write and
then ``EFBIG``, as a full disk does with a short write and ``ENOSPC``.

The product code knows nothing of this: the child wraps the functions the
promotion calls for its three writes, or ``os.write`` for the log's file.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
from collections.abc import Callable
from typing import Any

STEPS = ("before-append", "after-append", "after-head", "after-rewrite")


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _wrap(owner: Any, name: str, *, before: bool) -> None:
    real: Callable[..., Any] = getattr(owner, name)

    def killing(*args: Any, **kwargs: Any) -> Any:
        if before:
            _die()
        result = real(*args, **kwargs)
        _die()
        return result

    setattr(owner, name, killing)


def _tear(log: str) -> None:
    """Make the first write to ``log`` write a third of its bytes and die."""
    real = os.write
    target = os.path.realpath(log)

    def tearing(fd: int, data: Any) -> int:
        if os.path.realpath(f"/proc/self/fd/{fd}") == target:
            real(fd, bytes(data)[: len(data) // 3])
            _die()
        return real(fd, data)

    os.write = tearing


def _limit(log: str) -> None:
    size = os.path.getsize(log) if os.path.exists(log) else 0
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 300, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def main(step: str, argv: list[str]) -> None:
    import vault.bundle._promotion as promotion
    import vault.container as container
    from vault.cli import main as vault
    from vault.token import TokenSession

    if step == "before-append":
        _wrap(promotion, "append_promotion", before=True)
    elif step == "after-append":
        _wrap(promotion, "append_promotion", before=False)
    elif step == "after-head":
        _wrap(TokenSession, "write_head", before=False)
    elif step == "after-rewrite":
        _wrap(container, "replace_envelope", before=False)
    elif step == "mid-append":
        _tear(argv[argv.index("--log") + 1])
    elif step == "file-limit":
        _limit(argv[argv.index("--log") + 1])
    elif step != "none":
        raise SystemExit(f"unknown step {step!r}")
    vault(argv)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
