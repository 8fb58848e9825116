"""The ``vault`` command's entry point: the CLI, with Ctrl-C one line even while it is still loading.

Importing the CLI takes a moment (cryptography, click, rich); a Ctrl-C in
that moment would otherwise end in a Python traceback.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    """Load and run the CLI (:func:`vault.cli.main`)."""
    try:
        from vault.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("vault: interrupted\n")
        sys.stderr.flush()
        # Nothing has run yet, so there is nothing to clean up; a half-imported module could
        # otherwise turn interpreter shutdown into a second KeyboardInterrupt (exit -SIGINT).
        os._exit(130)
    run()
