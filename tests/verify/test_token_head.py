"""The station token holds the log's head and the units reserved: a state folder cannot be swapped behind it."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.verify._station_child import Child
from tests.verify.conftest import World
from vault.errors import PolicyError, StateError
from vault.token import format_uri, open_token
from vault.verify import SimulatedDevice, Station
from vault.verify._state import LogHead, State


def token_head(world: World, station_id: str = "station-1") -> LogHead | None:
    with open_token(world.tokens[station_id]) as token:
        record = token.head(f"station-log:{station_id}")
    return None if record is None else LogHead.from_value(record.value)


def db_head(station: Station) -> LogHead:
    db = station.state.read()
    db.execute("BEGIN")
    try:
        return State.head_in(db)
    finally:
        db.execute("ROLLBACK")


def provision(world: World, state: Path, count: int) -> LogHead:
    with world.station(state) as station:
        station.load(world.bundle_path, world.policy)
        for _ in range(count):
            station.provision(SimulatedDevice())
        head = db_head(station)
    assert token_head(world) == head  # every commit is in the token
    return head


def test_each_unit_advances_the_token_head_with_the_log_and_the_count(world: World, tmp_path: Path) -> None:
    assert token_head(world) is None
    head = provision(world, tmp_path / "s", 3)
    assert head.size == 3 and head.reserved == {next(iter(head.reserved)): 3}
    with world.station(tmp_path / "s") as station:
        assert station.verify_log() == (3, head.root)


def test_a_new_state_folder_is_refused_once_the_token_has_a_head_and_is_not_left_behind(
    world: World, tmp_path: Path
) -> None:
    provision(world, tmp_path / "s", 2)
    with pytest.raises(StateError) as refused:
        world.station(tmp_path / "other").__enter__()
    message = str(refused.value)
    assert "is new" in message and "2 log entries" in message and "2 units reserved" in message
    assert "vault station recover" in message and "\n" not in message
    assert not (tmp_path / "other").exists()
    (tmp_path / "mine").mkdir()  # a folder the user made is kept, empty
    with pytest.raises(StateError, match="is new"):
        world.station(tmp_path / "mine").__enter__()
    assert list((tmp_path / "mine").iterdir()) == []
    assert provision(world, tmp_path / "s", 1).size == 3  # the real folder goes on


def test_a_restored_older_copy_is_refused(world: World, tmp_path: Path) -> None:
    provision(world, tmp_path / "s", 2)
    shutil.copytree(tmp_path / "s", tmp_path / "backup")
    provision(world, tmp_path / "s", 2)
    shutil.rmtree(tmp_path / "s")
    shutil.copytree(tmp_path / "backup", tmp_path / "s")
    with pytest.raises(StateError, match=r"is behind the station token.*2 log entries.*4 log entries"):
        world.station(tmp_path / "s").__enter__()


def test_a_copied_folder_used_beside_the_original_is_refused_at_its_first_write(world: World, tmp_path: Path) -> None:
    provision(world, tmp_path / "a", 1)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    with world.station(tmp_path / "a") as a, world.station(tmp_path / "b") as b:  # both open: both are the head
        a.load(world.bundle_path, world.policy)
        b.load(world.bundle_path, world.policy)
        a.provision(SimulatedDevice())
        before = db_head(b)
        device = SimulatedDevice()
        with pytest.raises(StateError, match="is behind the station token"):
            b.provision(device)
        assert device.flash == {} and db_head(b) == before  # nothing touched, nothing recorded
        a.provision(SimulatedDevice())  # the original goes on
    assert token_head(world).size == 3  # type: ignore[union-attr]


def test_a_crash_between_the_commit_and_the_token_write_is_repaired(world: World, tmp_path: Path) -> None:
    provision(world, tmp_path / "s", 1)
    with world.station(tmp_path / "s") as station:
        station.load(world.bundle_path, world.policy)
        station.state.anchor = None  # as if the process died after each commit, before the token write
        station.provision(SimulatedDevice())
        station.provision(SimulatedDevice())
        ahead = db_head(station)
    assert token_head(world).size == 1  # type: ignore[union-attr]
    with world.station(tmp_path / "s") as station:  # the database extends the token's head: accepted, repaired
        assert token_head(world) == ahead
        station.load(world.bundle_path, world.policy)
        assert station.provision(SimulatedDevice()).unit == 4


def test_a_folder_that_went_its_own_way_is_refused_as_diverging(world: World, tmp_path: Path) -> None:
    provision(world, tmp_path / "a", 1)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    with world.station(tmp_path / "b") as b:
        b.load(world.bundle_path, world.policy)
        b.state.anchor = None  # an insider writes to the copy without the token
        b.provision(SimulatedDevice())
        b.provision(SimulatedDevice())
    provision(world, tmp_path / "a", 1)  # the token follows the original: 2 entries; the copy has 3, another 2nd
    with pytest.raises(StateError, match="diverges from the station token"):
        world.station(tmp_path / "b").__enter__()
    provision(world, tmp_path / "a", 1)


def test_each_station_of_a_token_pair_keeps_its_own_head(world: World, tmp_path: Path) -> None:
    provision(world, tmp_path / "one", 1)
    assert token_head(world, "station-2") is None
    with world.station(tmp_path / "two", "station-2") as station:
        station.load(world.bundle_path, world.policy)
        station.provision(SimulatedDevice())
    assert token_head(world, "station-2").size == 1  # type: ignore[union-attr]
    assert token_head(world).size == 1  # type: ignore[union-attr]


def test_two_copies_provisioning_at_once_never_exceed_the_allocation(world: World, tmp_path: Path) -> None:
    """The token's head is shared by every folder: one lock per token, and a second writer withdraws."""
    allocation = 4
    bundle = world.bundle(allocation=f"{{station-1: {allocation}, station-2: 1}}")
    with world.station(tmp_path / "a") as a:
        a.load(bundle, world.policy)
        a.provision(SimulatedDevice())
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    base = {"mode": "race", "token": format_uri(world.tokens["station-1"]), "station_id": "station-1",
            "root": str(world.root_cert_path), "bundle": str(bundle), "policy": str(world.policy_path),
            "devices": allocation}  # fmt: skip
    children = [Child({**base, "state": str(tmp_path / s), "fixture": n}, stdin=True) for n, s in ((1, "a"), (2, "b"))]
    try:
        for child in children:
            assert child.next_line() == {"ready": True}
        for child in children:
            child.send("go\n")
        for child in children:
            child.wait(timeout=120)
    finally:
        for child in children:
            if child.process.poll() is None:
                child.kill()
    done = [line for child in children for line in child.lines if line.get("event") == "provisioned"]
    assert len(done) + 1 <= allocation  # never more devices certified than allocated, across both folders
    errors = {line["error"] for child in children for line in child.lines if "error" in line}
    assert errors <= {"StateError", "AllocationError"} and "StateError" in errors
    head = token_head(world)
    assert head is not None and sum(head.reserved.values()) <= allocation
    opened = 0
    for name in ("a", "b"):
        try:
            with world.station(tmp_path / name):
                opened += 1
        except StateError:
            pass
    assert opened == 1  # exactly one folder is the token's; the other is refused


def test_a_line_running_on_a_stale_copy_stops_at_the_first_refusal(world: World, tmp_path: Path) -> None:
    from vault.verify._simulate import run_simulation

    provision(world, tmp_path / "a", 1)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    with world.station(tmp_path / "a") as a, world.station(tmp_path / "b") as b:
        a.load(world.bundle_path, world.policy)
        b.load(world.bundle_path, world.policy)
        a.provision(SimulatedDevice())
        before = db_head(b)
        with pytest.raises(StateError, match="is behind the station token"):
            run_simulation(b, count=6, fixtures=2)
        assert db_head(b) == before


def test_a_refused_new_folder_and_the_parents_it_made_are_removed(world: World, tmp_path: Path) -> None:
    provision(world, tmp_path / "s", 1)
    with pytest.raises(StateError, match="is new"):
        world.station(tmp_path / "typo" / "a" / "b").__enter__()
    assert not (tmp_path / "typo").exists()


def test_the_wrong_token_is_refused_before_any_head_is_written_to_it(world: World, tmp_path: Path) -> None:
    provision(world, tmp_path / "s", 1)
    wrong = Station(tmp_path / "s", token=world.tokens["station-2"], station_id="station-1", root=world.root_cert)
    with pytest.raises(PolicyError, match="is not the one trust policy"):
        wrong.__enter__()
    with open_token(world.tokens["station-2"]) as token:
        assert token.head("station-log:station-1") is None


@pytest.mark.parametrize("after", [0.8, 1.2, 1.6])
def test_ctrl_c_during_provisioning_finishes_the_units_on_the_fixtures(
    world: World, tmp_path: Path, after: float
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    with world.station(tmp_path / "s") as station:
        station.load(world.bundle_path, world.policy)
    argv = [sys.executable, "-m", "vault", "station", "provision", "--state", str(tmp_path / "s"),
            "--token", format_uri(world.tokens["station-1"], redact_pin=False), "--station-id", "station-1",
            "--root-cert", str(world.root_cert_path), "--count", "19", "--fixtures", "2"]  # fmt: skip
    run = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    time.sleep(after)
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=60)
    db = sqlite3.connect(tmp_path / "s" / "station.sqlite")  # as the process left it, before any reopening
    try:
        assert db.execute("SELECT COUNT(*) FROM units WHERE done = 0").fetchone() == (0,)  # none left on a fixture
        started = db.execute("SELECT COUNT(*) FROM units").fetchone()[0]
    finally:
        db.close()
    if run.returncode == -signal.SIGINT and not err.strip():
        # a loaded machine: the signal came while Python itself was starting (before vault ran) or
        # finishing (after vault ended): either way no unit is left open, as checked above
        return
    assert started or run.returncode != 0
    assert "Traceback" not in err and "Exception in thread" not in err, err
    if run.returncode != 0:  # interrupted (it may also have finished first)
        last = err.strip().splitlines()[-1]
        assert run.returncode == 130 and last.startswith(("vault: interrupted", "vault: aborted")), err
    with world.station(tmp_path / "s") as station:
        assert station.verify_log()[0] == len(station.state.read().execute("SELECT 1 FROM log").fetchall())


def test_an_export_from_a_copy_is_refused_and_its_files_removed(world: World, tmp_path: Path) -> None:
    provision(world, tmp_path / "a", 2)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    with world.station(tmp_path / "a") as a, world.station(tmp_path / "b") as b:
        a.export(tmp_path / "ex-a")
        with pytest.raises(StateError, match="is behind the station token"):
            b.export(tmp_path / "ex-b")
    assert list((tmp_path / "ex-b").iterdir()) == []  # no second "export 1" for an auditor to find
    assert token_head(world).exports == 1  # type: ignore[union-attr]
