"""Four fixture processes race for one allocation on one station: never more units than allocated."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.verify._station_child import Child
from tests.verify.conftest import World
from vault.manifest import Manifest, open_manifest
from vault.token import format_uri
from vault.verify import Station

PROCESSES = 4
DEVICES_EACH = 8
ALLOCATION = 12


def logged(station: Station) -> list[Manifest]:
    trusted = {station.enrolled.signing.key_id: station.enrolled.signing.public_key}
    rows = station.state.read().execute("SELECT sequence, envelope FROM log ORDER BY sequence").fetchall()
    assert [r[0] for r in rows] == list(range(len(rows)))  # contiguous from 0
    return [open_manifest(bytes(r[1]), trusted) for r in rows]


def test_four_processes_never_provision_more_than_the_allocation(world: World, tmp_path: Path) -> None:
    bundle = world.bundle(allocation=f"{{station-1: {ALLOCATION}, station-2: 3}}")
    state = tmp_path / "state"
    base = {
        "mode": "race",
        "state": str(state),
        "token": format_uri(world.tokens["station-1"]),
        "station_id": "station-1",
        "root": str(world.root_cert_path),
        "bundle": str(bundle),
        "policy": str(world.policy_path),
        "devices": DEVICES_EACH,
    }
    children = [Child({**base, "fixture": n}, stdin=True) for n in range(1, PROCESSES + 1)]
    try:
        for child in children:  # every process has its own Station open and the bundle loaded ...
            assert child.next_line() == {"ready": True}
        for child in children:  # ... before any of them starts provisioning
            child.send("go\n")
        for child in children:
            assert child.wait(timeout=120) == 0, child.stderr
    finally:
        for child in children:
            if child.process.poll() is None:
                child.kill()
    reports = [child.lines[1:] for child in children]

    outcomes = [outcome for report in reports for outcome in report]
    assert [len(report) for report in reports] == [DEVICES_EACH] * PROCESSES
    provisioned = [o for o in outcomes if "error" not in o]
    refused = [o for o in outcomes if "error" in o]
    assert len(provisioned) == ALLOCATION
    assert {o["error"] for o in refused} == {"AllocationError"}
    assert len(refused) == PROCESSES * DEVICES_EACH - ALLOCATION
    assert all(o["event"] == "provisioned" for o in provisioned)
    assert sorted(o["unit"] for o in provisioned) == list(range(1, ALLOCATION + 1))

    with world.station(state) as station:
        release = station.load(bundle, world.policy)
        assert (release.used, release.left) == (ALLOCATION, 0)
        manifests = logged(station)
        size, _ = station.verify_log()
    assert size == len(manifests) == PROCESSES * DEVICES_EACH  # one manifest per attempt, refusals included
    done = [m for m in manifests if m.event == "provisioned"]
    assert len(done) == ALLOCATION
    assert {m.id for m in done} == {o["manifest"] for o in provisioned}
    assert sorted(m.unit for m in done if m.unit is not None) == list(range(1, ALLOCATION + 1))
    hardware_ids = Counter(m.hardware_id for m in done)
    assert hardware_ids.most_common(1)[0][1] == 1  # no hardware id twice
    assert {m.hardware_id for m in done} == {o["hwid"] for o in provisioned}
    stopped = [m for m in manifests if m.event != "provisioned"]
    assert {(m.event, m.failed_step, m.unit) for m in stopped} == {("failed", "allocation", None)}
    assert {m.hardware_id for m in stopped} == {o["hwid"] for o in refused}
    assert {m.fixture for m in manifests} == set(range(1, PROCESSES + 1))
    assert not any(m.certificate_serial for m in stopped)
    assert len({m.certificate_serial for m in done}) == ALLOCATION
