"""softhsm/setup.sh: makes the development tokens once; a second run changes nothing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import SETUP, read_env_file


def _slots(directory: Path) -> list[tuple[str, str]]:
    env = dict(os.environ, **read_env_file(directory / "env"))
    out = subprocess.run(["softhsm2-util", "--show-slots"], env=env, capture_output=True, text=True, check=True).stdout
    labels = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.strip().startswith("Label:")]
    serials = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.strip().startswith("Serial number:")]
    return sorted(zip(labels, serials, strict=True))


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_setup_twice_leaves_the_same_tokens(tmp_path: Path) -> None:
    directory = tmp_path / "hsm"
    first = subprocess.run(["bash", str(SETUP), "--dir", str(directory)], capture_output=True, text=True, check=True)
    assert first.stdout.count("created token") == 11
    assert f"export SOFTHSM2_CONF={directory}/softhsm2.conf" in first.stdout
    slots, files = _slots(directory), _snapshot(directory)
    assert [label for label, _ in slots if label] == sorted(
        ["vault-root", "vault-release", "vault-auditor", "vault-station-1", "vault-station-2"]
        + [f"vault-{role}-{i}" for role in ("officer", "approver") for i in (1, 2, 3)]
    )

    second = subprocess.run(["bash", str(SETUP), "--dir", str(directory)], capture_output=True, text=True, check=True)
    assert "created token" not in second.stdout
    assert _slots(directory) == slots
    assert _snapshot(directory) == files

    pins = directory / "pins"
    assert oct(pins.stat().st_mode & 0o777) == "0o700"
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in pins.iterdir())
    assert str(directory / "tokens") in (directory / "softhsm2.conf").read_text()
