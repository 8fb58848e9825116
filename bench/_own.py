"""What each benchmark here sets up for itself, whatever the caller's shell holds.

A benchmark is run by hand, from whatever shell and interpreter is at hand,
and its figures are tracked run after run, so it must not measure something
else because of the caller: another interpreter without the project's
packages, ``SOFTHSM2_CONF`` naming the caller's tokens, an ``OPENSSL_*``
variable changing what ``openssl`` does, a ``--dir`` not made yet.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
"""The repository."""

CALLERS = ("OPENSSL_", "P11_KIT_", "PYTHON", "SOFTHSM2_", "VAULT_")
"""Prefixes of the caller's variables a benchmark never inherits: they would change what it measures."""


def clean_environment() -> dict[str, str]:
    """The caller's environment without :data:`CALLERS`' variables, with the repository on the path."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(CALLERS)}
    env["PYTHONPATH"] = str(ROOT)
    return env


def own_interpreter(*modules: str) -> None:
    """Run the script again in the repository's ``.venv`` if this interpreter lacks one of ``modules``."""
    if all(importlib.util.find_spec(name) is not None for name in modules):
        return
    venv = ROOT / ".venv" / "bin" / "python"
    if not venv.exists() or Path(sys.executable) == venv:
        raise SystemExit(f"{Path(sys.argv[0]).name}: needs the project's packages: run `make setup` first")
    os.execve(venv, [str(venv), *sys.argv], clean_environment())


def at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number of at least ``low``, else argparse's one-line usage error."""

    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return whole


def own_dir(parser: argparse.ArgumentParser, folder: Path | None) -> None:
    """Make ``--dir`` if it is missing; one line and exit 2 if it cannot be."""
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        parser.error(f"--dir {folder}: {e.strerror or e}")


def own_environment(softhsm: Path) -> None:
    """Fresh SoftHSM2 tokens in ``softhsm``, and this process's environment pointing at them and nothing else."""
    for name in [name for name in os.environ if name.startswith(CALLERS)]:
        del os.environ[name]
    subprocess.run(["bash", str(ROOT / "softhsm" / "setup.sh"), "--dir", str(softhsm), "--quiet"], check=True)
    for line in (softhsm / "env").read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        os.environ[name] = shlex.split(value)[0]
