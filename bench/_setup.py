"""What the benchmarks share: fresh SoftHSM2 tokens in their own folder, whatever the caller's environment."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def fresh_tokens(work: Path) -> None:
    """Make the development tokens in ``work/softhsm`` and point this process at them (``SOFTHSM2_CONF``...)."""
    os.environ.pop("SOFTHSM2_CONF", None)
    subprocess.run(["bash", str(ROOT / "softhsm" / "setup.sh"), "--dir", str(work / "softhsm"), "--quiet"], check=True)
    for line in (work / "softhsm" / "env").read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        os.environ[name] = value


def fresh_world(work: Path) -> Any:
    """Fresh tokens, then the test suite's enrolled world in ``work/world`` (ceremonies, two stations, a bundle).

    Returns:
        A ``tests.verify.conftest.World``.
    """
    fresh_tokens(work)
    from tests.verify.conftest import World

    (work / "world").mkdir()
    return World(work / "world")
