"""softhsm/setup.sh: makes the development tokens once; a second run changes nothing; --reset makes them again."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
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
    assert first.stdout.count("created token") == 12
    assert f"export SOFTHSM2_CONF={directory}/softhsm2.conf" in first.stdout
    slots, files = _slots(directory), _snapshot(directory)
    assert [label for label, _ in slots if label] == sorted(
        ["vault-root", "vault-release", "vault-auditor", "vault-backend", "vault-station-1", "vault-station-2"]
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


def _setup(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SETUP), *argv], capture_output=True, text=True)


def test_reset_remakes_the_tokens_inside_the_project_only(tmp_path: Path) -> None:
    project = SETUP.parents[1]
    directory = Path(tempfile.mkdtemp(prefix=".softhsm-test-", dir=project))
    try:
        assert _setup("--dir", str(directory), "--quiet").returncode == 0
        before = _slots(directory)
        old_pin = (directory / "pins" / "vault-root.pin").read_text()
        (directory / "notes.txt").write_text("not the script's")
        reset = _setup("--dir", str(directory), "--reset")
        assert reset.returncode == 0, reset.stderr
        assert f"removed the development tokens and PIN files in {directory}" in reset.stdout
        assert reset.stdout.count("created token") == 12
        after = _slots(directory)
        assert [label for label, _ in after] == [label for label, _ in before]
        assert not {s for s in after if s[0]} & set(before)  # every token is new (a new serial)
        assert (directory / "pins" / "vault-root.pin").read_text() != old_pin
        assert (directory / "notes.txt").read_text() == "not the script's"  # only what the script made goes
    finally:
        shutil.rmtree(directory)

    # outside the project folder (also through a symlink), nothing is removed
    outside = tmp_path / "hsm"
    assert _setup("--dir", str(outside), "--quiet").returncode == 0
    files = _snapshot(outside)
    link = Path(tempfile.mkdtemp(prefix=".softhsm-link-", dir=project))
    try:
        (link / "to").symlink_to(outside)
        for given in (str(outside), str(link / "to"), str(project), str(project / "softhsm" / ".." / "..")):
            refused = _setup("--dir", given, "--reset")
            assert refused.returncode == 1
            assert refused.stderr.strip().splitlines() == [
                f"setup.sh: --reset removes development tokens only inside the project folder {project}; "
                f"'{given}' is not inside it"
            ]
        assert _snapshot(outside) == files
    finally:
        shutil.rmtree(link)
    # inside the project, a folder the script did not make is left alone
    refused = _setup("--dir", str(project / "docs"), "--reset")
    assert refused.returncode == 1
    assert "is not a token folder this script made" in refused.stderr and "nothing removed" in refused.stderr
    assert (project / "docs" / "demo.sh").is_file()
