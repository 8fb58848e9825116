"""Closing a release: a signed close-out over the token's head, and no unit of the release after it."""

from __future__ import annotations

import shutil
import stat
import threading
from pathlib import Path

import pytest

from tests.verify.conftest import World
from tests.verify.test_token_head import token_head
from vault.closeout import closeout_name, verify_closeout
from vault.errors import BundleClosedError, StateError
from vault.policy import load_policy
from vault.verify import SimulatedDevice, Station
from vault.verify import _closing as closing


def log_size(station: Station) -> int:
    return int(station.state.read().execute("SELECT COUNT(*) FROM log").fetchone()[0])


def test_close_exports_what_is_left_signs_the_token_head_and_refuses_every_further_unit(
    world: World, station: Station, tmp_path: Path
) -> None:
    evidence = tmp_path / "evidence"
    for _ in range(3):
        station.provision(SimulatedDevice())
    with pytest.raises(Exception):  # noqa: B017 (any step failure): a failed unit is counted and logged
        station.provision(SimulatedDevice(fail_at="program"))
    station.export(evidence)
    scrapped = SimulatedDevice()
    station.provision(scrapped)
    station.scrap(scrapped.hardware_id, reason="dropped")
    bundle_id = station.release.release.bundle_id

    result = station.close(bundle_id[:10], evidence)

    assert result.export is not None and result.export.sequence == 2  # the entries no export carried
    assert result.export.to_size == log_size(station) == 6 and not result.already
    c = result.closeout
    head = token_head(world)
    assert head is not None and head.closed == (bundle_id,)
    assert (c.log_size, c.log_root, c.exports) == (head.size, head.root.hex(), 2)
    assert (c.units.used, c.units.provisioned, c.units.failed, c.units.scrapped, c.units.unrecorded) == (5, 3, 1, 1, 0)
    assert (c.station_id, c.bundle_id, c.allocation) == ("station-1", bundle_id, 20)
    assert c.statement_sha256 == station.release.release.statement_sha256
    assert result.path == evidence / closeout_name("station-1", bundle_id)
    assert not result.path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    policy = load_policy(world.policy, world.root_cert, now=c.time)
    assert verify_closeout(result.path.read_bytes(), policy) == c

    with pytest.raises(BundleClosedError, match="closed bundle .* no further unit") as refused:
        station.provision(SimulatedDevice())
    assert "\n" not in str(refused.value)
    assert log_size(station) == 6  # refused before the device was touched: nothing logged or counted
    assert [a.closed for a in station.status().releases] == [True]
    again = station.close(bundle_id, evidence)  # run again: the same close-out
    assert again.already and again.envelope == result.envelope and again.export is None


def test_a_copy_of_the_folder_cannot_reopen_a_closed_release(world: World, tmp_path: Path) -> None:
    state, after = tmp_path / "state", tmp_path / "after"
    with world.station(state) as station:
        station.load(world.bundle_path, world.policy)
        station.provision(SimulatedDevice())
        station.close(station.release.release.bundle_id, tmp_path / "evidence")
        shutil.copytree(state, after, ignore=shutil.ignore_patterns("owners"))
    with world.station(after) as copy:  # a copy made after the close: closed in the folder too
        copy.load(world.bundle_path, world.policy)
        with pytest.raises(BundleClosedError):
            copy.provision(SimulatedDevice())


def test_a_folder_copied_before_the_close_is_behind_the_token(world: World, tmp_path: Path) -> None:
    state, before = tmp_path / "state", tmp_path / "before"
    with world.station(state) as station:
        station.load(world.bundle_path, world.policy)
        station.provision(SimulatedDevice())
        station.export(tmp_path / "evidence")
        shutil.copytree(state, before, ignore=shutil.ignore_patterns("owners"))
        station.close(station.release.release.bundle_id, tmp_path / "evidence")
    with pytest.raises(StateError, match="behind the station token"):
        world.station(before).__enter__()


def test_the_clean_twin_provisions_on(world: World, station: Station, tmp_path: Path) -> None:
    station.provision(SimulatedDevice())
    station.export(tmp_path / "evidence")
    station.provision(SimulatedDevice())  # no close: units go on
    head = token_head(world)
    assert head is not None and head.closed == () and "closed" not in head.to_value()  # the head as before


class Held(SimulatedDevice):
    """A device whose programming waits until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.on_fixture, self.go = threading.Event(), threading.Event()

    def program(self, image: object, chunks: object) -> None:  # type: ignore[override]
        self.on_fixture.set()
        self.go.wait(30)
        super().program(image, chunks)  # type: ignore[arg-type]


def test_close_is_refused_while_a_unit_of_the_release_is_on_a_fixture(
    world: World, station: Station, tmp_path: Path
) -> None:
    device = Held()
    worker = threading.Thread(target=station.provision, args=(device,), kwargs={"fixture": 3})
    worker.start()
    try:
        assert device.on_fixture.wait(30)
        with pytest.raises(StateError, match="unit 1 of bundle .* is still on fixture 3") as refused:
            station.close(station.release.release.bundle_id, tmp_path / "evidence")
        assert "\n" not in str(refused.value)
    finally:
        device.go.set()
        worker.join(30)
    assert not list((tmp_path / "evidence").glob("*.vault-closeout"))
    head = token_head(world)
    assert head is not None and head.closed == ()  # nothing was recorded
    result = station.close(station.release.release.bundle_id, tmp_path / "evidence")  # the unit done: now it closes
    assert result.closeout.units.provisioned == 1


@pytest.mark.parametrize("stop_in", ["export", "write"])
def test_an_interrupted_close_is_completed_by_running_it_again(
    world: World, station: Station, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop_in: str
) -> None:
    evidence = tmp_path / "evidence"
    station.provision(SimulatedDevice())
    bundle_id = station.release.release.bundle_id

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    if stop_in == "export":
        monkeypatch.setattr(station, "export", interrupted)
    else:
        monkeypatch.setattr(closing, "_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        station.close(bundle_id, evidence)
    monkeypatch.undo()
    head = token_head(world)
    assert head is not None and head.closed == (bundle_id,)  # recorded first: no unit starts meanwhile
    with pytest.raises(BundleClosedError):
        station.provision(SimulatedDevice())
    assert not list(evidence.glob("*.vault-closeout"))

    result = station.close(bundle_id, evidence)

    assert result.already == (stop_in == "write")  # the close-out was signed before the stop, or is signed now
    assert result.path.read_bytes() == result.envelope
    assert result.closeout.log_size == log_size(station) == 1 and result.closeout.exports == 1
