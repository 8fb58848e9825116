"""The station token holds the log's head and the units reserved: a state folder cannot be swapped behind it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.verify.conftest import World
from vault.errors import StateError
from vault.token import open_token
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
