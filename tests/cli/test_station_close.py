"""``vault station close`` and ``vault bundle closeout`` on the enrolled world, through ``main(argv)``."""

from __future__ import annotations

import base64
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from tests.cli.test_station_run import load, log_size, station
from tests.cli.test_token_cli import assert_one_line_error, run
from tests.verify import conftest as verify_conftest
from tests.verify.conftest import World
from vault.closeout import open_closeout, sign_closeout
from vault.container import BundleReader
from vault.token import open_token
from vault.verify import SIGNING_LABEL

world = verify_conftest.world  # the station tests' session-scoped enrolled world, shared
EXIT_REFUSED = 4


def bundle_id(path: Path) -> str:
    with BundleReader(path) as reader:
        return reader.header.bundle_id


def read(capsys: pytest.CaptureFixture[str], world: World, path: Path, *extra: str) -> tuple[int, str, str]:
    return run(capsys, "bundle", "closeout", str(path), "--policy", str(world.policy_path),
               "--root-cert", str(world.root_cert_path), *extra)  # fmt: skip


@pytest.fixture
def closed(capsys: pytest.CaptureFixture[str], world: World, tmp_path: Path) -> tuple[Path, Path]:
    """station-1 provisioned 3 units (one failing), exported once, then closed: (state folder, close-out)."""
    state, evidence = tmp_path / "state", tmp_path / "evidence"
    assert load(capsys, world, state, world.bundle_path)[0] == 0
    assert station(capsys, world, "provision", state, "--count", "3", "--fixtures", "2", "--fail", "2:lock")[0] == 0
    assert station(capsys, world, "export", state, "--out", str(evidence))[0] == 0
    assert station(capsys, world, "provision", state, "--count", "1", "--fixtures", "1")[0] == 0
    code, out, err = station(capsys, world, "close", state, str(world.bundle_path), "--out", str(evidence))
    assert code == 0, err
    assert "export       2: manifests 3 to 3 (the last before closing)" in out
    assert "units        4 of 20 used: 3 provisioned, 1 failed, 0 scrapped, 0 unrecorded" in out
    assert "log          size 4, root " in out and "(export 2's checkpoint)" in out
    (path,) = evidence.glob("*.vault-closeout")
    assert f"written      {path}" in out
    return state, path


def test_a_closed_release_provisions_nothing_more_and_exits_4(
    capsys: pytest.CaptureFixture[str], world: World, closed: tuple[Path, Path], tmp_path: Path
) -> None:
    state, _ = closed
    copy = tmp_path / "copy"
    shutil.copytree(state, copy, ignore=shutil.ignore_patterns("owners"))
    for folder in (state, copy):  # the folder, and a copy of it made after the close
        code, out, err = station(capsys, world, "provision", folder, "--count", "2")
        assert code == EXIT_REFUSED and out == ""
        assert_one_line_error(err, "closed bundle")
        assert log_size(folder) == 4
    code, out, _ = station(capsys, world, "status", state)
    assert code == 0 and "4 of 20 used, closed" in out
    again = station(capsys, world, "close", state, bundle_id(world.bundle_path)[:8], "--out", str(tmp_path / "e"))
    assert again[0] == 0 and "closed before; this is its close-out" in again[1]


def test_close_of_an_unknown_release_is_one_line(
    capsys: pytest.CaptureFixture[str], world: World, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    assert load(capsys, world, state, world.bundle_path)[0] == 0
    code, _, err = station(capsys, world, "close", state, "ffff", "--out", str(tmp_path / "evidence"))
    assert code == 1
    assert_one_line_error(err, "no loaded release has a bundle id starting with 'ffff'")
    code, out, _ = station(capsys, world, "provision", state, "--count", "1")  # the clean twin: not closed
    assert code == 0 and "1 provisioned" in out


def test_the_release_manager_reads_a_close_out_with_the_policy_alone(
    capsys: pytest.CaptureFixture[str], world: World, closed: tuple[Path, Path]
) -> None:
    _, path = closed
    code, out, err = read(capsys, world, path, "--bundle", str(world.bundle_path))
    assert code == 0, err
    assert "close-out   station station-1: signed by its key in trust policy" in out and "verified" in out
    assert "units       4 of 20 used: 3 provisioned, 1 failed" in out and "log         size 4, root" in out
    code, out, _ = read(capsys, world, path, "--json")
    value = json.loads(out)
    assert value["units"]["used"] == 4 and value["log"]["size"] == 4 and value["exports"] == 2
    assert value["bundle_id"] == bundle_id(world.bundle_path)


def test_a_forged_or_altered_close_out_is_one_line(
    capsys: pytest.CaptureFixture[str], world: World, closed: tuple[Path, Path], tmp_path: Path
) -> None:
    _, path = closed
    envelope = json.loads(path.read_bytes())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["units"]["provisioned"], statement["predicate"]["units"]["failed"] = 4, 0
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    altered = tmp_path / "altered.vault-closeout"
    altered.write_text(json.dumps(envelope))
    code, out, err = read(capsys, world, altered)
    assert code == 1 and out == ""
    assert_one_line_error(err, "close-out")

    # station-2's own key, signing a close-out in station-1's name
    with open_token(world.tokens["station-2"]) as token:
        other = token.key(label=SIGNING_LABEL)
        c = open_closeout(path.read_bytes(), {other.key_id: other.public_key} | _station_1_key(world))
        forged = tmp_path / "forged.vault-closeout"
        forged.write_bytes(sign_closeout(replace(c, log_size=3), other))
    code, _, err = read(capsys, world, forged)
    assert code == 1
    assert_one_line_error(err, "is not that station's signing key")

    code, _, err = read(capsys, world, world.policy_path)  # not a close-out at all
    assert code == 1
    assert_one_line_error(err, "close-out")


def test_a_close_out_is_refused_under_a_policy_that_does_not_enrol_the_station(
    capsys: pytest.CaptureFixture[str], world: World, closed: tuple[Path, Path]
) -> None:
    _, path = closed
    v1 = world.folder / "root" / "policy-v1.json"  # the root ceremony's policy: no station enrolled yet
    code, out, err = run(capsys, "bundle", "closeout", str(path), "--policy", str(v1),
                         "--root-cert", str(world.root_cert_path))  # fmt: skip
    assert code == 1 and out == ""
    assert_one_line_error(err, "close-out")
    other = world.bundle(allocation="{station-1: 2}", version="1.9.0")
    code, _, err = read(capsys, world, path, "--bundle", str(other))
    assert code == 1
    assert_one_line_error(err, "closes bundle")


def _station_1_key(world: World) -> dict[str, object]:
    with open_token(world.tokens["station-1"]) as token:
        key = token.key(label=SIGNING_LABEL)
        return {key.key_id: key.public_key}
