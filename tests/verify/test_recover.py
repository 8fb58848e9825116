"""``vault station recover``: a lost state folder rebuilt from the station's export copies and older folders,
exactly to the station token's head, or refused without writing anything."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from tests.cli.test_token_cli import assert_one_line_error, run
from tests.verify.conftest import World
from vault.errors import IdentityError, LogError, RollbackError, StateError
from vault.token import format_uri
from vault.verify import COPY_SUFFIX, ImageToProgram, SimulatedDevice, Station, recover_state


def snapshot(station: Station) -> tuple[object, ...]:
    db = station.state.read()
    return (
        db.execute("SELECT sequence, envelope, leaf_hash, certificate, root FROM log ORDER BY sequence").fetchall(),
        db.execute("SELECT * FROM devices ORDER BY hardware_id").fetchall(),
        db.execute("SELECT bundle_id, unit, hardware_id, done FROM units ORDER BY bundle_id, unit").fetchall(),
        db.execute("SELECT * FROM reserved ORDER BY bundle_id").fetchall(),
        db.execute("SELECT sequence, size, root, checkpoint FROM exports ORDER BY sequence").fetchall(),
        db.execute("SELECT * FROM products").fetchall(),
        station.state.meta("last_time"),
        station.state.meta("policy_version"),
    )


def work(world: World, state: Path, units: int, *, export: Path | None = None) -> None:
    with world.station(state) as station:
        station.load(world.bundle_path, world.policy)
        for _ in range(units):
            station.provision(SimulatedDevice())
        if export is not None:
            station.export(export)


def recover(world: World, state: Path, *sources: Path, station_id: str = "station-1") -> object:
    return recover_state(
        state, token=world.tokens[station_id], station_id=station_id, root=world.root_cert, sources=sources
    )


def test_a_lost_folder_comes_back_exactly_from_the_export_copies_and_the_station_goes_on(
    world: World, tmp_path: Path
) -> None:
    state, evidence = tmp_path / "state", tmp_path / "evidence"
    work(world, state, 3, export=evidence)
    with world.station(state) as station:
        station.load(world.bundle_path, world.policy)
        known = SimulatedDevice()
        station.provision(known)
        station.scrap(known.hardware_id, reason="cracked")
        station.provision(SimulatedDevice(), label="SN-LABEL-1")
        station.export(evidence)
        before = snapshot(station)
        size, root = station.verify_log()
    assert sorted(p.suffix for p in evidence.iterdir()) == [COPY_SUFFIX] * 2 + [".vault-evidence"] * 2
    shutil.rmtree(state)

    result = recover(world, state, evidence)
    assert (result.size, result.root, result.exports) == (size, root.hex(), 2)  # type: ignore[attr-defined]
    with world.station(state) as station:
        assert snapshot(station) == before  # the log, bindings, units, counts and exports, exactly
        release = station.load(world.bundle_path, world.policy)
        assert release.used == 5
        with pytest.raises(IdentityError, match="scrapped"):
            station.provision(known, rework=True)
        assert station.provision(SimulatedDevice()).unit == 6
        third = station.export(evidence)  # the chain of exports goes on from the recovered checkpoint
        assert (third.sequence, third.from_size) == (3, size)
        assert station.verify_log()[0] == third.to_size


def test_entries_never_exported_are_taken_from_an_older_or_damaged_folder(world: World, tmp_path: Path) -> None:
    state, evidence = tmp_path / "state", tmp_path / "evidence"
    work(world, state, 2, export=evidence)
    work(world, state, 2)
    shutil.copytree(state, tmp_path / "damaged")
    with world.station(state) as station:
        before = snapshot(station)
    shutil.rmtree(state)
    with pytest.raises(StateError, match=r"reach log entry 2, .* 4 log entries.*entries 2 to 3 were never exported"):
        recover(world, state, evidence)
    assert not state.exists()  # nothing written
    (tmp_path / "damaged" / "station.sqlite-wal").unlink(missing_ok=True)
    recover(world, state, evidence, tmp_path / "damaged")
    with world.station(state) as station:
        assert snapshot(station) == before


def test_a_unit_reserved_without_a_manifest_stays_counted(world: World, tmp_path: Path) -> None:
    class PowerCut(SimulatedDevice):
        def program(self, image: ImageToProgram, chunks: object) -> None:
            raise KeyboardInterrupt  # the process stops with the unit on the fixture

    state, evidence = tmp_path / "state", tmp_path / "evidence"
    work(world, state, 1, export=evidence)
    with world.station(state) as station:
        station.load(world.bundle_path, world.policy)
        with pytest.raises(KeyboardInterrupt):
            station.provision(PowerCut())
    shutil.rmtree(state)  # lost before any station closed the unit
    result = recover(world, state, evidence)
    assert list(result.reserved.values()) == [2]  # type: ignore[attr-defined]
    with world.station(state) as station:
        assert station.load(world.bundle_path, world.policy).used == 2
        assert station.provision(SimulatedDevice()).unit == 3


def test_sources_that_are_not_the_tokens_log_are_refused_and_nothing_is_written(
    world: World, tmp_path: Path
) -> None:
    state, evidence = tmp_path / "state", tmp_path / "evidence"
    work(world, state, 2, export=evidence)
    with world.station(tmp_path / "two", "station-2") as other:
        other.load(world.bundle_path, world.policy)
        other.provision(SimulatedDevice())
        other.export(tmp_path / "other-evidence")
    copy = next((tmp_path / "other-evidence").glob(f"*{COPY_SUFFIX}"))
    shutil.copy(copy, evidence / "station-1-000009.station-copy")
    with pytest.raises(StateError, match="is a copy of station 'station-2'"):
        recover(world, tmp_path / "new", evidence)
    (evidence / "station-1-000009.station-copy").unlink()

    with pytest.raises(StateError, match="already holds a station state"):
        recover(world, state, evidence)

    shutil.copytree(state, tmp_path / "fork")
    with world.station(tmp_path / "fork") as fork:  # a folder that went its own way, without the token
        fork.load(world.bundle_path, world.policy)
        fork.state.anchor = None
        fork.provision(SimulatedDevice())
    work(world, state, 1)
    shutil.rmtree(state)
    with pytest.raises((LogError, StateError), match="disagree|another root"):
        recover(world, state, tmp_path / "fork", evidence)
    assert not state.exists()


def test_recover_from_the_command_line(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state, evidence = tmp_path / "state", tmp_path / "evidence"
    work(world, state, 2, export=evidence)
    shutil.rmtree(state)
    common = ["--token", format_uri(world.tokens["station-1"], redact_pin=False), "--station-id", "station-1",
              "--root-cert", str(world.root_cert_path)]  # fmt: skip
    code, out, err = run(capsys, "station", "load", "--state", str(state), *common,
                         "--bundle", str(world.bundle_path), "--policy", str(world.policy_path))  # fmt: skip
    assert code != 0
    assert_one_line_error(err, "is new, but the station token")
    code, out, err = run(capsys, "station", "recover", "--state", str(state), *common, "--from", str(tmp_path))
    assert code != 0
    assert_one_line_error(err, "holds neither a station state nor copies")
    code, out, err = run(capsys, "station", "recover", "--state", str(state), *common, "--from", str(evidence))
    assert code == 0, err
    assert "recovered" in out and "2 log entries" in out and "vault station load" in out
    code, out, err = run(capsys, "station", "load", "--state", str(state), *common,
                         "--bundle", str(world.bundle_path), "--policy", str(world.policy_path))  # fmt: skip
    assert code == 0, err
    assert "2 used" in out
    code, out, err = run(capsys, "station", "status", "--state", str(state), *common, "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["token_head"] == {"size": shown["log_size"], "root": shown["root"],
                                   "reserved": {shown["releases"][0]["bundle_id"]: 2},
                                   "counters": {"example-sensor": 7}, "policy_version": 4, "exports": 1}  # fmt: skip
    code, out, err = run(capsys, "station", "status", "--state", str(state), *common)
    assert "token        holds this folder's head: 2 log entries" in out


def test_an_entry_the_lost_folder_committed_after_the_tokens_head_is_kept(world: World, tmp_path: Path) -> None:
    state, evidence = tmp_path / "state", tmp_path / "evidence"
    work(world, state, 2, export=evidence)
    with world.station(state) as station:
        station.load(world.bundle_path, world.policy)
        station.state.anchor = None  # the power went after this unit's commits, before the token writes
        kept = station.provision(SimulatedDevice())
        before = snapshot(station)
    shutil.move(state, tmp_path / "lost")
    result = recover(world, state, evidence, tmp_path / "lost")
    assert result.size == 3  # type: ignore[attr-defined]
    with world.station(state) as station:
        assert snapshot(station) == before
        assert station.state.read().execute(
            "SELECT manifest_id FROM log WHERE sequence = 2"
        ).fetchone() == (kept.manifest_id,)
        assert station.status().token_head.size == 3  # type: ignore[union-attr]  # the token caught up


def test_a_unit_left_open_in_the_lost_folder_is_closed_as_interrupted(world: World, tmp_path: Path) -> None:
    class PowerCut(SimulatedDevice):
        def program(self, image: ImageToProgram, chunks: object) -> None:
            raise KeyboardInterrupt

    state, evidence = tmp_path / "state", tmp_path / "evidence"
    work(world, state, 1, export=evidence)
    device = PowerCut()
    with world.station(state) as station:
        station.load(world.bundle_path, world.policy)
        with pytest.raises(KeyboardInterrupt):
            station.provision(device)
    shutil.move(state, tmp_path / "lost")  # lost before a station opened it again
    recover(world, state, evidence, tmp_path / "lost")
    with world.station(state) as station:
        rows = station.state.read().execute("SELECT event, hardware_id, envelope FROM log ORDER BY sequence").fetchall()
        assert [(r[0], r[1]) for r in rows][-1] == ("failed", device.hardware_id.hex())
        assert b"interrupted" in base64.b64decode(json.loads(bytes(rows[-1][2]))["payload"])
        assert station.state.read().execute("SELECT COUNT(*) FROM units WHERE done = 0").fetchone() == (0,)
        assert station.load(world.bundle_path, world.policy).used == 2


def test_the_recovered_folder_keeps_the_highest_counter_and_policy_the_token_saw(world: World, tmp_path: Path) -> None:
    from tests.verify.test_load_threats import signed_beside_the_log

    newer = signed_beside_the_log(world, tmp_path, counter=12, version="2.0.0")
    state, evidence = tmp_path / "state", tmp_path / "evidence"
    work(world, state, 1, export=evidence)
    with world.station(state) as station:
        station.load(newer, world.policy)  # loaded, nothing provisioned under it yet
    shutil.rmtree(state)
    recover(world, state, evidence)  # the copies know counter 7 only; the token knows 12
    with world.station(state) as station:
        with pytest.raises(RollbackError, match="counter 12"):
            station.load(world.bundle_path, world.policy)


def test_sources_in_any_order_and_by_any_path_agree(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, evidence = tmp_path / "state", tmp_path / "evidence"
    work(world, state, 2, export=evidence)
    shutil.move(state, tmp_path / "lost")
    monkeypatch.chdir(tmp_path)
    recover(world, state, Path("lost"), Path("evidence"))  # relative paths, the folder first
    assert recover is not None and (state / "station.sqlite").exists()


def test_recover_never_writes_into_an_evidence_folder(world: World, tmp_path: Path) -> None:
    state, evidence = tmp_path / "state", tmp_path / "evidence"
    work(world, state, 1, export=evidence)
    shutil.rmtree(state)
    with pytest.raises(StateError, match="is an evidence folder"):
        recover(world, evidence, evidence)
    assert not (evidence / "station.sqlite").exists()


def test_a_folder_still_in_use_is_not_a_source(world: World, tmp_path: Path) -> None:
    state, evidence = tmp_path / "state", tmp_path / "evidence"
    work(world, state, 1, export=evidence)
    with world.station(state):  # a station is running on it
        with pytest.raises(StateError, match="is open in a running station"):
            recover(world, tmp_path / "new", evidence, state)
    assert not (tmp_path / "new").exists()


def test_a_missing_export_copy_is_named(world: World, tmp_path: Path) -> None:
    state, evidence = tmp_path / "state", tmp_path / "evidence"
    work(world, state, 1, export=evidence)
    with world.station(state) as station:
        station.export(evidence)  # export 2: no new manifests
    copies = sorted(evidence.glob(f"*{COPY_SUFFIX}"))
    shutil.move(copies[1], tmp_path / "kept-aside")
    shutil.rmtree(state)
    with pytest.raises(StateError, match=r"counts 2 evidence exports, the sources give 1.*station-1-000002"):
        recover(world, state, evidence)
    assert not state.exists()
    shutil.move(tmp_path / "kept-aside", copies[1])
    assert recover(world, state, evidence).exports == 2  # type: ignore[attr-defined]


def test_a_counted_unit_whose_manifest_was_only_in_the_lost_folder_is_named(world: World, tmp_path: Path) -> None:
    state, evidence = tmp_path / "state", tmp_path / "evidence"
    work(world, state, 1, export=evidence)
    with world.station(state) as station:
        station.load(world.bundle_path, world.policy)

        class PowerCutAfterManifest(SimulatedDevice):
            def lock(self) -> None:  # the reservation reached the token; the manifest will not
                super().lock()
                station.state.anchor = None

        station.provision(PowerCutAfterManifest())
    shutil.rmtree(state)  # lost, and its last manifest was never exported
    result = recover(world, state, evidence)
    (note,) = result.notes  # type: ignore[attr-defined]
    assert "1 unit(s) of bundle" in note and "(unit 2)" in note and "tell the auditor" in note
    with world.station(state) as station:
        assert station.load(world.bundle_path, world.policy).used == 2  # it stays counted
