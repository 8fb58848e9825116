"""A provisioning process killed (SIGKILL) at random moments loses nothing it committed and never over-counts."""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from pathlib import Path

from tests.verify._station_child import Child
from tests.verify.conftest import World
from vault.manifest import Manifest, open_manifest
from vault.token import format_uri, open_token
from vault.verify import SimulatedDevice, Station

ALLOCATION = 250
KILLS = 5
SEED = 20261121
DELAY = 0.02  # seconds per image: most of a unit's time is spent on the fixture, between reserve and manifest


def logged(station: Station) -> list[Manifest]:
    trusted = {station.enrolled.signing.key_id: station.enrolled.signing.public_key}
    rows = station.state.read().execute("SELECT sequence, envelope FROM log ORDER BY sequence").fetchall()
    assert [r[0] for r in rows] == list(range(len(rows)))  # contiguous from 0
    return [open_manifest(bytes(r[1]), trusted) for r in rows]


def loop_config(world: World, bundle: Path, state: Path, *, delay: float) -> dict[str, object]:
    """A fixture process in "loop" mode on station-1 (see tests/verify/_station_child.py)."""
    return {
        "mode": "loop",
        "state": str(state),
        "token": format_uri(world.tokens["station-1"]),
        "station_id": "station-1",
        "root": str(world.root_cert_path),
        "bundle": str(bundle),
        "policy": str(world.policy_path),
        "delay": delay,
    }


def test_sigkill_at_random_moments_loses_nothing_committed(world: World, tmp_path: Path) -> None:
    bundle = world.bundle(allocation=f"{{station-1: {ALLOCATION}, station-2: 3}}")
    state = tmp_path / "state"
    base = loop_config(world, bundle, state, delay=DELAY)
    rng = random.Random(SEED)
    runs: list[Child] = []
    try:
        # 1. one kill while a device is certainly on the fixture: its unit is reserved, its manifest not written
        run = Child({**base, "hang_at": 3})
        runs.append(run)
        while "programming" not in run.next_line():
            pass
        assert run.kill() == -signal.SIGKILL
        # 2. kills at random moments, each on a process that reopened the same folder
        for _ in range(KILLS):
            run = Child({**base, "fixture": len(runs) + 1})
            runs.append(run)
            assert run.next_line() == {"ready": True}
            time.sleep(rng.uniform(0.2, 1.5))
            assert run.kill() == -signal.SIGKILL  # still provisioning when it was killed
        # 3. a last process, not killed, provisions until the allocation is used up
        run = Child({**base, "delay": 0.0, "fixture": len(runs) + 1})
        runs.append(run)
        assert run.wait(timeout=120) == 0, run.stderr
        assert run.lines[-1] == {"exhausted": True}
    finally:
        for r in runs:
            if r.process.poll() is None:
                r.kill()

    printed = [line for r in runs for line in r.lines if "manifest" in line]
    assert not [line for r in runs for line in r.lines if "error" in line]  # no other refusal on the way
    assert len(printed) > 0

    with world.station(state) as station:  # closes what the last kills left open
        release = station.load(bundle, world.policy)
        manifests = logged(station)
        size, root = station.verify_log()
        units = station.state.read().execute("SELECT unit, hardware_id, done FROM units ORDER BY unit").fetchall()
        exported = station.export(tmp_path / "evidence")
        assert station.verify_log() == (size, root)

    by_id = {m.id: m for m in manifests}
    for line in printed:  # nothing committed is lost
        m = by_id[line["manifest"]]
        assert (m.event, m.unit, m.hardware_id) == ("provisioned", line["unit"], line["hwid"])
    assert release.used == ALLOCATION and release.left == 0  # used up, never exceeded
    assert [u[0] for u in units] == list(range(1, ALLOCATION + 1))
    assert all(done == 1 for _, _, done in units)  # no unit left open
    closing = Counter(m.unit for m in manifests if m.event in ("provisioned", "failed") and m.unit is not None)
    assert closing == Counter(range(1, ALLOCATION + 1))  # exactly one closing manifest per reserved unit
    for unit, hwid, _ in units:
        (m,) = [m for m in manifests if m.unit == unit]
        assert m.hardware_id == hwid
    interrupted = [m for m in manifests if m.failed_step == "interrupted"]
    assert len(interrupted) >= 1  # the unit on the fixture in step 1, at least
    assert all(m.event == "failed" and m.unit is not None and not m.images for m in interrupted)
    provisioned = Counter(m.hardware_id for m in manifests if m.event == "provisioned")
    assert provisioned.most_common(1)[0][1] == 1  # no hardware id provisioned twice
    assert not set(provisioned) & {m.hardware_id for m in interrupted}
    refusals = [m for m in manifests if m.unit is None]
    assert {(m.event, m.failed_step) for m in refusals} == {("failed", "allocation")}
    assert len(manifests) == ALLOCATION + len(refusals)
    assert (exported.from_size, exported.to_size) == (0, size) and exported.path.is_file()


def test_a_live_process_keeps_its_unit_while_another_opens_the_station(world: World, tmp_path: Path) -> None:
    bundle = world.bundle(allocation="{station-1: 3}")
    state = tmp_path / "state"
    config = {
        "mode": "loop",
        "state": str(state),
        "token": format_uri(world.tokens["station-1"]),
        "station_id": "station-1",
        "root": str(world.root_cert_path),
        "bundle": str(bundle),
        "policy": str(world.policy_path),
        "hang_at": 1,
        "fixture": 7,
    }
    run = Child(config)
    try:
        assert run.next_line() == {"ready": True}
        held = run.next_line()["programming"]  # the other process has unit 1 on its fixture, and lives
        with world.station(state) as station:
            assert logged(station) == []  # its unit was not taken for an orphan
            station.load(bundle, world.policy)
            outcome = station.provision(SimulatedDevice(), fixture=2)
            assert outcome.unit == 2
            units = station.state.read().execute("SELECT unit, hardware_id, done FROM units ORDER BY unit").fetchall()
            assert units == [(1, held, 0), (2, outcome.hardware_id, 1)]
    finally:
        status = run.kill()
    assert status == -signal.SIGKILL  # it was alive, on its fixture, until now
    with world.station(state) as station:  # now it is gone: its unit is closed, once
        manifests = logged(station)
        assert [(m.unit, m.event, m.failed_step, m.fixture) for m in manifests] == [
            (2, "provisioned", None, 2),
            (1, "failed", "interrupted", 7),
        ]
        assert manifests[1].hardware_id == held
        station.load(bundle, world.policy)
        assert station.release.left == 1
    with world.station(state) as station:
        assert len(logged(station)) == 2  # closed exactly once


KILL_ROUNDS = 200
FIXTURES = 4


def test_200_kills_across_four_fixture_processes_never_over_count_lose_or_falsely_refuse(
    world: World, tmp_path: Path
) -> None:
    """SIGKILL lands anywhere: in a reservation, a manifest append, the token head write, an open."""
    allocation = 100000  # not used up while the kills go on: each kill lands on a process at work
    bundle = world.bundle(allocation=f"{{station-1: {allocation}, station-2: 3}}", total=allocation + 3)
    state = tmp_path / "state"
    base = loop_config(world, bundle, state, delay=0.01)
    rng = random.Random(SEED + 1)
    runs: list[Child] = []
    fixtures: dict[int, Child] = {}
    kills = 0
    try:
        for n in range(1, FIXTURES + 1):
            fixtures[n] = Child({**base, "fixture": n})
            runs.append(fixtures[n])
        while kills < KILL_ROUNDS:
            at_work = [n for n, child in fixtures.items() if child.drain()]
            if rng.random() < 0.1:  # some kills while a process opens the station (or closes orphans)
                n = rng.randint(1, FIXTURES)
                time.sleep(rng.uniform(0.0, 0.3))
            else:  # most while it provisions
                if not at_work:
                    n = rng.randint(1, FIXTURES)
                    assert fixtures[n].next_line() == {"ready": True}, fixtures[n].stderr
                    at_work = [n]
                n = rng.choice(at_work)
                time.sleep(rng.uniform(0.0, 0.1))
            assert fixtures[n].kill() == -signal.SIGKILL, (fixtures[n].lines[-3:], fixtures[n].stderr[-2000:])
            kills += 1
            fixtures[n] = Child({**base, "fixture": n})
            runs.append(fixtures[n])
        for child in fixtures.values():
            child.kill()
        last = Child({**base, "delay": 0.0, "fixture": FIXTURES + 1, "limit": 20})  # the restart
        runs.append(last)
        assert last.wait(timeout=120) == 0, last.stderr
        assert last.lines[-1] == {"done": True}
    finally:
        for r in runs:
            if r.process.poll() is None:
                r.kill()

    assert not [r.stderr[-3000:] for r in runs if "Error" in r.stderr]  # never a refusal of the folder, of any kind
    assert not [line for r in runs for line in r.lines if "error" in line]
    printed = [line for r in runs for line in r.lines if "manifest" in line]
    killed = [r for r in runs if r.process.returncode == -signal.SIGKILL]
    at_work = [r for r in killed if {"ready": True} in r.lines]
    assert len(killed) >= KILL_ROUNDS and len(at_work) >= KILL_ROUNDS * 3 // 4  # most kills land while units are done

    with world.station(state) as station:
        release = station.load(bundle, world.policy)
        manifests = logged(station)
        size, root = station.verify_log()
        units = station.state.read().execute("SELECT unit, hardware_id, done FROM units ORDER BY unit").fetchall()
    with open_token(world.tokens["station-1"]) as token:
        head = token.head("station-log:station-1")
    assert head is not None and head.value["size"] == size and head.value["root"] == root.hex()
    assert head.value["reserved"] == {release.release.bundle_id: release.used}

    by_id = {m.id: m for m in manifests}
    assert all(by_id[line["manifest"]].unit == line["unit"] for line in printed)  # no committed manifest lost
    used = release.used
    assert used >= len(printed) + 20  # every unit a process reported, and the restart's 20
    assert [u[0] for u in units] == list(range(1, used + 1)) and all(u[2] == 1 for u in units)
    closing = Counter(m.unit for m in manifests if m.event in ("provisioned", "failed") and m.unit is not None)
    assert closing == Counter(range(1, used + 1))  # no unit counted twice, none left open
    provisioned = Counter(m.hardware_id for m in manifests if m.event == "provisioned")
    assert provisioned.most_common(1)[0][1] == 1
