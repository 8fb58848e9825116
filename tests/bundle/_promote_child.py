"""Run ``vault bundle promote ...`` in this process and SIGKILL it at one step of the promotion (test code only).

Run as ``python -m tests.bundle._promote_child STEP ARGV...`` from the
repository root, with the SoftHSM2 environment inherited from the test.
STEP names where the process kills itself, with SIGKILL, so nothing of
Python's (no ``finally``, no ``atexit``) runs after it:

- ``before-append``: before the entry is appended to the promotion log;
- ``after-append``: after the entry is in the log, before the token's head is written;
- ``after-head``: after the token's head is written, before the bundle is rewritten;
- ``after-rewrite``: after the bundle is rewritten, before the command prints;
- ``none``: not at all.

The product code knows nothing of this: the child wraps the functions the
promotion calls for its three writes.
"""

from __future__ import annotations

import os
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
    elif step != "none":
        raise SystemExit(f"unknown step {step!r}")
    vault(argv)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
