"""Hostile promotion logs and policies against the enrolled world: one line and exit 1, never exit 70."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from tests.ceremony.test_transcript_input import unknown_curve
from tests.cli.test_token_cli import assert_one_line_error, run
from tests.verify.conftest import World
from vault.formats import canonical_json

_BODY_FIELDS_EXCLUDED = ("hash", "signature")


def _log_verify(capsys: pytest.CaptureFixture[str], world: World, log: Path) -> tuple[int, str, str]:
    return run(capsys, "bundle", "log", "verify", str(log), "--policy", str(world.policy_path),
               "--root-cert", str(world.root_cert_path))  # fmt: skip


def test_a_log_line_whose_signer_key_names_an_unknown_curve_is_one_line(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = json.loads(world.promotions.read_bytes().splitlines()[0])
    spki = base64.b64decode(first["signer_spki"])
    first["signer_spki"] = base64.b64encode(unknown_curve(spki)).decode()
    body = {k: v for k, v in first.items() if k not in _BODY_FIELDS_EXCLUDED}
    first["hash"] = hashlib.sha256(canonical_json(body)).hexdigest()  # the chain is unkeyed: re-hashing is easy
    log = tmp_path / "promotions.log"
    log.write_bytes(canonical_json(first) + b"\n")
    code, _, err = _log_verify(capsys, world, log)
    assert code == 1
    assert_one_line_error(err, f"{log}:1: signer_spki names a key type or curve vault does not support")


@pytest.mark.parametrize("size", [200 * 1024 * 1024, 1024**3])
def test_a_huge_log_line_is_refused_without_reading_it_whole(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], size: int
) -> None:
    log = tmp_path / "promotions.log"
    with log.open("wb") as f:
        f.truncate(size)  # sparse: one line of zero bytes, under and over the log's own cap
    code, _, err = _log_verify(capsys, world, log)
    assert code == 1
    expected = f"{log}:1: line longer than" if size < 256 * 1024 * 1024 else "the promotion log is larger than 256 MiB"
    assert_one_line_error(err, expected)


def test_dev_zero_as_the_log_is_one_line(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _log_verify(capsys, world, Path("/dev/zero"))
    assert code == 1
    assert_one_line_error(err, "/dev/zero:1: line longer than 65536 bytes")
