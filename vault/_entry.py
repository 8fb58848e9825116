"""The ``vault`` command's entry point: the CLI, with Ctrl-C one line even while it is still loading.

Importing the CLI takes a moment (cryptography, click, rich); a Ctrl-C in
that moment would otherwise end in a Python traceback. A station install
(``pip install vault``, the library alone) has no CLI: the command says
which install it needs instead.
"""

from __future__ import annotations

import os
import signal
import sys

# The distributions of the `cli` extra, by the module the CLI imports from each.
_CLI_MODULES = frozenset(
    {"click", "yaml", "sigstore", "sigstore_models", "pydantic", "shamir_mnemonic", "pkilint", "rich"}
)


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
    except ModuleNotFoundError as e:
        if (e.name or "").partition(".")[0] not in _CLI_MODULES:
            raise
        sys.stderr.write(
            f"vault: the vault command needs the full install (pip install 'vault[cli]'); this one is the station "
            f"library alone (no module {e.name!r})\n"
        )
        sys.exit(2)
    try:
        run()
    finally:  # the outcome is decided: a Ctrl-C while the interpreter shuts down (the worker pools' clean-up)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # would otherwise end it silently with -SIGINT
