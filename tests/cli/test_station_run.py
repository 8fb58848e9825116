"""``vault station load|provision|status|export`` on the enrolled world, through ``main(argv)``: the wrong turns."""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from tests.cli.test_token_cli import assert_one_line_error, run
from tests.conftest import forget_heads
from tests.verify import conftest as verify_conftest
from tests.verify.conftest import POLICIES, World, vault
from vault import merkle
from vault.manifest import open_manifest, sign_manifest
from vault.token import format_uri, open_token
from vault.verify import SIGNING_LABEL, SimulatedDevice

world = verify_conftest.world  # the station tests' session-scoped enrolled world, shared


def station_args(world: World, state: Path, station_id: str = "station-1") -> list[str]:
    token = format_uri(world.tokens[station_id], redact_pin=False)
    return ["--state", str(state), "--token", token, "--station-id", station_id,
            "--root-cert", str(world.root_cert_path)]  # fmt: skip


def station(capsys: pytest.CaptureFixture[str], world: World, command: str, state: Path, *extra: str,
            station_id: str = "station-1") -> tuple[int, str, str]:  # fmt: skip
    return run(capsys, "station", command, *station_args(world, state, station_id), *extra)


def load(capsys: pytest.CaptureFixture[str], world: World, state: Path, bundle: Path, policy: Path | None = None,
         station_id: str = "station-1") -> tuple[int, str, str]:  # fmt: skip
    return station(capsys, world, "load", state, "--policy", str(policy or world.policy_path),
                   "--bundle", str(bundle), station_id=station_id)  # fmt: skip


def log_size(state: Path) -> int:
    with sqlite3.connect(state / "station.sqlite") as db:
        return int(db.execute("SELECT COUNT(*) FROM log").fetchone()[0])


# --- past the allocation ------------------------------------------------------------------------------


def test_provisioning_past_the_allocation_exits_4_and_shows_refusals_as_refusals(
    capsys: pytest.CaptureFixture[str], world: World, tmp_path: Path
) -> None:
    bundle = world.bundle(allocation="{station-1: 3}")
    state = tmp_path / "state"
    assert load(capsys, world, state, bundle)[0] == 0
    code, out, err = station(capsys, world, "provision", state, "--count", "5", "--fixtures", "1")
    assert code == 4
    lines = out.splitlines()
    assert sum(line.endswith(" provisioned") for line in lines) == 3
    refused = [line for line in lines if " refused: the allocation of 3 units" in line]
    assert len(refused) == 2 and not any(" failed" in line for line in lines)
    assert lines[-1] == "log          5 manifests: 3 provisioned, 2 refused: 2 over the allocation; 0 units left"
    assert_one_line_error(err, "vault: 2 of 5 units were refused: the allocation of 3 units for example-sensor")

    code, out, _ = station(capsys, world, "status", state)
    assert code == 0
    assert "5 manifests: 3 provisioned, 2 refused: 2 over the allocation; root" in out
    code, out, _ = station(capsys, world, "status", state, "--json")
    status = json.loads(out)
    assert status["events"] == {"provisioned": 3, "failed": 2}  # as the manifests record them
    assert status["refused"] == {"allocation": 2}

    # a run inside the allocation exits 0, and a failed unit is a failure, not a refusal
    state2 = tmp_path / "state2"
    bundle2 = world.bundle(allocation="{station-1: 3}", version="1.4.1")
    forget_heads(world.tokens["station-1"])
    assert load(capsys, world, state2, bundle2)[0] == 0
    code, out, err = station(capsys, world, "provision", state2, "--count", "2", "--fail", "2:program")
    assert code == 0, err
    assert "2 manifests: 1 failed, 1 provisioned; 1 units left" in out


# --- a missing state folder, a failed load ---------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [["status"], ["provision", "--count", "1"], ["export", "--out", "evidence"]], ids=lambda c: c[0]
)
def test_a_command_on_a_missing_state_folder_is_refused_and_makes_nothing(
    capsys: pytest.CaptureFixture[str], world: World, tmp_path: Path, command: list[str]
) -> None:
    state = tmp_path / "no-such-state"
    code, out, err = station(capsys, world, command[0], state, *command[1:])
    assert code == 1 and out == ""
    assert_one_line_error(err, f"vault: error: no station state in {state}: run 'vault station load' first")
    assert not state.exists() and not (tmp_path / "evidence").exists()


def test_a_failed_load_into_a_new_folder_leaves_no_folder(
    capsys: pytest.CaptureFixture[str], world: World, tmp_path: Path
) -> None:
    state = tmp_path / "new" / "state"
    not_a_bundle = world.root_cert_path
    code, _, err = load(capsys, world, state, not_a_bundle)
    assert code == 1
    assert_one_line_error(err, "not a vault bundle")
    assert not (tmp_path / "new").exists()

    unpromoted = world.bundle(allocation="{station-1: 2}", version="1.5.0", promote=False)
    code, _, err = load(capsys, world, state, unpromoted)
    assert code == 1
    assert_one_line_error(err, "never promoted")
    assert not (tmp_path / "new").exists()

    # an existing folder is never removed by a failed load
    assert load(capsys, world, state, world.bundle_path)[0] == 0
    code, _, err = load(capsys, world, state, unpromoted)
    assert code == 1
    assert (state / "station.sqlite").is_file()
    assert station(capsys, world, "status", state)[0] == 0


# --- Ctrl-C ---------------------------------------------------------------------------------------------


def test_ctrl_c_during_provisioning_names_the_units_in_flight_and_exits_130(
    capsys: pytest.CaptureFixture[str], world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    assert load(capsys, world, state, world.bundle_path)[0] == 0
    program = SimulatedDevice.program
    calls: list[bytes] = []
    lock = threading.Lock()

    def program_then_ctrl_c(self: SimulatedDevice, image: object, chunks: object) -> None:
        with lock:
            calls.append(self.hardware_id)
            if len(calls) == 7:  # the fourth device's first image: Ctrl-C while it is on its fixture
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)  # the main thread takes the signal while this unit is still in flight
        program(self, image, chunks)  # type: ignore[arg-type]

    monkeypatch.setattr(SimulatedDevice, "program", program_then_ctrl_c)
    code, out, err = station(capsys, world, "provision", state, "--count", "15", "--fixtures", "1")
    assert code == 130, err
    units = [line for line in out.splitlines() if line.startswith("fixture ")]
    assert len(units) == 4 and all(line.endswith(" provisioned") for line in units)  # unit 4 finished too
    errors = err.strip().splitlines()
    assert errors[0].startswith("vault: on a fixture at Ctrl-C: fixture 1  unit    4 ")
    assert errors[0].endswith(" provisioned") and "Traceback" not in err
    assert errors[1] == (
        "vault: interrupted: 1 units were on the fixtures and finished; their manifests say 1 provisioned "
        "(1 counted against the allocation); 11 units were not started (nothing counted or logged)"
    )
    assert len(errors) == 2
    assert log_size(state) == 4
    with sqlite3.connect(state / "station.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM units WHERE done = 0").fetchone()[0] == 0
    assert "4 manifests: 4 provisioned; root" in station(capsys, world, "status", state)[1]


# --- a revoked station, a label swap on unit 1, choosing the release ---------------------------------------


def test_after_station_2_is_revoked_station_1_still_loads_and_station_2_is_told_it_was_revoked(
    capsys: pytest.CaptureFixture[str], softhsm_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "world").mkdir()
    world = World(tmp_path / "world")  # its own: the revocation moves the root token's policy head to v5
    shares = ["--share", str(world.folder / "root" / "shares" / "officer-1.txt")]
    shares += ["--share", str(world.folder / "root" / "shares" / "officer-2.txt")]
    vault("ceremony", "run", str(POLICIES / "revoke.yaml"), "--credentials", str(world.folder / "creds.yaml"),
          "--policy", str(world.policy_path), "--root-cert", str(world.root_cert_path), *shares,
          "--out", str(tmp_path / "revoke"), "--rehearsal", "--yes")  # fmt: skip
    v5 = tmp_path / "revoke" / "policy-v5.json"
    assert load(capsys, world, tmp_path / "s1", world.bundle_path)[0] == 0

    code, out, err = load(capsys, world, tmp_path / "s1", world.bundle_path, v5)  # the shared bundle, reloaded
    assert code == 0, err
    assert "policy       v5;" in out and "allocation   20 units for station-1: 0 used, 20 left" in out

    assert load(capsys, world, tmp_path / "s2", world.bundle_path, station_id="station-2")[0] == 0
    code, _, err = load(capsys, world, tmp_path / "s2", world.bundle_path, v5, station_id="station-2")
    assert code == 1
    assert_one_line_error(
        err, "vault: error: station 'station-2' was revoked in trust policy v5 (line closed, token destroyed)"
    )


def test_a_label_swap_on_unit_1_is_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], world: World, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    assert load(capsys, world, state, world.bundle_path)[0] == 0
    code, out, err = station(capsys, world, "provision", state, "--count", "3", "--label-mismatch", "1")
    assert code == 1 and out == ""
    assert_one_line_error(err, "--label-mismatch N gives unit N the label of unit N-1: unit 1 has none before it")
    assert log_size(state) == 0

    code, out, _ = station(capsys, world, "provision", state, "--count", "3", "--label-mismatch", "2", "--rework", "3")
    assert code == 0
    assert " unit    2  " in out and "label-mismatch: label " in out
    assert out.splitlines()[-2].startswith("fixture 1  unit    3  ") and out.splitlines()[-2].endswith(" rework")


def test_provision_chooses_a_loaded_release_by_bundle_id(
    capsys: pytest.CaptureFixture[str], world: World, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    other = world.bundle(allocation="{station-1: 5}", version="1.4.2")
    assert load(capsys, world, state, world.bundle_path)[0] == 0
    assert load(capsys, world, state, other)[0] == 0
    first_id = json.loads(station(capsys, world, "status", state, "--json")[1])["releases"][0]["bundle_id"]
    other_id = json.loads(station(capsys, world, "status", state, "--json")[1])["releases"][1]["bundle_id"]

    code, out, _ = station(capsys, world, "provision", state, "--count", "1")  # the last loaded by default
    assert code == 0 and f"(bundle {other_id})" in out.splitlines()[0]
    code, out, _ = station(capsys, world, "provision", state, "--count", "2", "--bundle-id", first_id[:6])
    assert code == 0 and f"(bundle {first_id})" in out.splitlines()[0]
    releases = {r["bundle_id"]: r["used"] for r in json.loads(station(capsys, world, "status", state, "--json")[1])
                ["releases"]}  # fmt: skip
    assert releases == {first_id: 2, other_id: 1}

    common = os.path.commonprefix([first_id, other_id])
    code, out, err = station(capsys, world, "provision", state, "--count", "1", "--bundle-id", common)
    assert code == 1 and out == ""
    assert_one_line_error(err, f"2 loaded releases have a bundle id starting with '{common}'")
    code, _, err = station(capsys, world, "provision", state, "--count", "1", "--bundle-id", "zz")
    assert code == 1
    assert_one_line_error(err, "no loaded release has a bundle id starting with 'zz' (loaded here: ")
    assert log_size(state) == 3


# --- export re-checks what it seals ---------------------------------------------------------------------


def provisioned(capsys: pytest.CaptureFixture[str], world: World, state: Path, count: int = 4) -> None:
    assert load(capsys, world, state, world.bundle_path)[0] == 0
    assert station(capsys, world, "provision", state, "--count", str(count), "--fixtures", "1")[0] == 0


def assert_nothing_exported(capsys: pytest.CaptureFixture[str], world: World, state: Path, out: Path,
                            expected: str) -> None:  # fmt: skip
    code, stdout, err = station(capsys, world, "export", state, "--out", str(out))
    assert code == 1 and stdout == ""
    assert_one_line_error(err, expected)
    assert not out.exists() or not any(out.iterdir())


def test_export_refuses_a_row_replayed_in_the_database(
    capsys: pytest.CaptureFixture[str], world: World, tmp_path: Path
) -> None:
    state, out = tmp_path / "state", tmp_path / "evidence"
    provisioned(capsys, world, state)
    assert station(capsys, world, "export", state, "--out", str(out))[0] == 0  # export 1: entries 0..3
    assert station(capsys, world, "provision", state, "--count", "2", "--fixtures", "1")[0] == 0
    with sqlite3.connect(state / "station.sqlite") as db:  # entry 5 becomes entry 4's envelope again
        envelope, leaf = db.execute("SELECT envelope, leaf_hash FROM log WHERE sequence = 4").fetchone()
        db.execute("UPDATE log SET envelope = ?, leaf_hash = ?, manifest_id = 'x' WHERE sequence = 5", (envelope, leaf))
    before = sorted(p.name for p in out.iterdir())
    code, stdout, err = station(capsys, world, "export", state, "--out", str(out))
    assert code == 1 and stdout == ""
    assert_one_line_error(err, "the station log's entry 5 is manifest 4 (replayed); nothing was exported")
    assert sorted(p.name for p in out.iterdir()) == before


def test_export_refuses_a_row_an_insider_rewrote_and_signed_again(
    capsys: pytest.CaptureFixture[str], world: World, tmp_path: Path
) -> None:
    """The envelope re-signed with the station key (an insider with the PIN) and its leaf hash set to match."""
    state, out = tmp_path / "state", tmp_path / "evidence"
    provisioned(capsys, world, state)
    with open_token(world.tokens["station-1"]) as token:
        key = token.key(label=SIGNING_LABEL)
        with sqlite3.connect(state / "station.sqlite") as db:
            (envelope,) = db.execute("SELECT envelope FROM log WHERE sequence = 2").fetchone()
            manifest = open_manifest(bytes(envelope), {key.key_id: key.public_key})
            forged = manifest.__class__(**{**manifest.__dict__, "operator": "mallory"})
            rewritten = sign_manifest(forged, key)
            db.execute("UPDATE log SET envelope = ?, leaf_hash = ? WHERE sequence = 2",
                       (rewritten, merkle.leaf_hash(rewritten)))  # fmt: skip
    assert_nothing_exported(capsys, world, state, out, "the station log's entry 2 was rewritten (the root after it)")

    # the stored roots rewritten as well: the log is no longer the one the station token holds
    with sqlite3.connect(state / "station.sqlite") as db:
        tree = merkle.TreeBuilder()
        for sequence, leaf in db.execute("SELECT sequence, leaf_hash FROM log ORDER BY sequence").fetchall():
            tree.append(bytes(leaf))
            db.execute("UPDATE log SET root = ? WHERE sequence = ?", (tree.root(), sequence))
    assert_nothing_exported(capsys, world, state, out, "diverges from the station token")


def test_export_refuses_an_envelope_edited_without_its_signature(
    capsys: pytest.CaptureFixture[str], world: World, tmp_path: Path
) -> None:
    state, out = tmp_path / "state", tmp_path / "evidence"
    provisioned(capsys, world, state, 2)
    with sqlite3.connect(state / "station.sqlite") as db:
        (envelope,) = db.execute("SELECT envelope FROM log WHERE sequence = 1").fetchone()
        document = json.loads(bytes(envelope))
        payload = json.loads(base64.b64decode(document["payload"]))
        payload["predicate"]["operator"] = "mallory"
        document["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
        edited = json.dumps(document).encode()
        db.execute("UPDATE log SET envelope = ? WHERE sequence = 1", (edited,))
    assert_nothing_exported(capsys, world, state, out, "the station log's entry 1 was rewritten (its leaf hash)")
    with sqlite3.connect(state / "station.sqlite") as db:
        db.execute("UPDATE log SET leaf_hash = ? WHERE sequence = 1", (merkle.leaf_hash(edited),))
    assert_nothing_exported(capsys, world, state, out, "the station log's entry 1 does not verify")
