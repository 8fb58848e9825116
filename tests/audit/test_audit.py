"""The audit on real exports: a clean multi-station run, then one crafted export per finding."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.audit.conftest import Forge, Report, SoftSigner, serious
from tests.verify.conftest import World
from vault.manifest import ImageRecord
from vault.verify._simulate import run_simulation

Audit = Callable[..., Report]


def _simulate(world: World, folder: Path, station_id: str, **kwargs: object) -> list[Path]:
    exports = []
    with world.station(folder / station_id, station_id) as station:
        station.load(world.bundle_path, world.policy)
        run_simulation(station, **kwargs)  # type: ignore[arg-type]
        exports.append(station.export(folder / "evidence").path)
        run_simulation(station, count=2, fixtures=1, label_prefix=f"{station_id}-B-")
        exports.append(station.export(folder / "evidence").path)
    return exports


@pytest.fixture(scope="module")
def clean_exports(world: World, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two stations' real exports: station-1 with a failure, a label mismatch and a rework."""
    folder = tmp_path_factory.mktemp("clean")
    one = _simulate(
        world, folder, "station-1", count=5, fixtures=1, fail={3: "program"}, label_mismatch={4}, rework=[2]
    )
    two = _simulate(world, folder, "station-2", count=3, fixtures=1)
    return one + two


def test_a_clean_multi_station_export_has_no_serious_finding(clean_exports: list[Path], run_audit: Audit) -> None:
    report = run_audit(clean_exports)
    assert not report.at_or_above("high"), [f.message for f in report.at_or_above("high")]
    assert serious(report) == set()
    assert report.codes() == {"label-mismatch", "unit-failed", "unit-reworked"}
    assert report.passed("high") and report.passed("medium")
    stations = {s.station_id: s for s in report.stations}
    one, two = stations["station-1"], stations["station-2"]
    assert one.exports == 2 and one.manifests == one.verified == one.log_size
    assert one.events == {"provisioned": 5, "failed": 1, "label-mismatch": 1, "rework": 1}
    r = one.reconciliation
    assert (r.allocation, r.reserved, r.provisioned, r.failed, r.reworked, r.label_mismatch) == (20, 6, 5, 1, 1, 1)
    assert (r.units_provisioned, r.units_failed, r.units_open) == (5, 1, 0)
    assert one.quality.attempted == 7 and one.quality.first_pass == 5
    assert one.quality.failures == (("program", 1),)
    assert two.reconciliation.provisioned == 5 and two.quality.first_pass_yield == 1.0
    assert report.manifests == report.verified == sum(s.log_size or 0 for s in report.stations)
    assert [e.status for e in report.exports] == ["verified"] * 4


def test_workers_in_processes_give_the_same_report(clean_exports: list[Path], run_audit: Audit) -> None:
    alone, pooled = run_audit(clean_exports), run_audit(clean_exports, workers=2)
    assert alone.to_json_value()["findings"] == pooled.to_json_value()["findings"]
    assert alone.stations == pooled.stations


def test_pool_workers_leave_ctrl_c_to_the_parent_and_the_parent_keeps_it() -> None:
    """A terminal's Ctrl-C reaches every worker too: they ignore it, so only the parent's one line is printed."""
    import multiprocessing.pool
    import signal

    from vault.audit._worker import Context, start_pool

    started: list[multiprocessing.pool.Pool] = []
    start_pool(2, Context(stations=(), releases=(), jump_seconds=0), started)
    (pool,) = started
    try:
        assert pool.apply(signal.getsignal, (signal.SIGINT,)) == signal.SIG_IGN
    finally:
        pool.terminate()
        pool.join()
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())  # held back only while starting
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_forkserver_starts_with_ctrl_c_held_back() -> None:
    """Ctrl-C while the forkserver imports would print its traceback: the first pool of a process (which
    also starts the resource tracker, and that unblocks Ctrl-C) must start the forkserver with it held back."""
    import subprocess
    import sys

    first_pool = (
        "import signal\n"
        "from multiprocessing import forkserver\n"
        "from vault.audit._worker import Context, start_pool\n"
        "started = []\n"
        "start_pool(1, Context(stations=(), releases=(), jump_seconds=0), started)\n"
        "status = open(f'/proc/{forkserver._forkserver._forkserver_pid}/status').read().splitlines()\n"
        "blocked = int(next(line for line in status if line.startswith('SigBlk:')).split()[1], 16)\n"
        "started[0].terminate()\n"
        "print(bool(blocked & 1 << signal.SIGINT - 1))\n"
    )
    run = subprocess.run([sys.executable, "-c", first_pool], capture_output=True, text=True, timeout=60, check=True)
    assert run.stdout.strip() == "True"


def test_ctrl_c_taken_by_another_thread_while_the_pool_starts_leaves_the_pool_to_be_terminated() -> None:
    """Blocking Ctrl-C in the starting thread does not hold it back when another thread of the process (a
    hashing library's, say) takes the signal: the pool must still be handed over before Ctrl-C is answered,
    or its workers, left starting, print a traceback when the process exits."""
    import subprocess
    import sys

    script = (
        "import os, signal, threading, time, multiprocessing.context as mc\n"
        "from vault.audit._worker import Context, start_pool\n"
        "threading.Thread(target=time.sleep, args=(5,), daemon=True).start()  # can take the signal\n"
        "real = mc.ForkServerContext.Pool\n"
        "def pool(self, *a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C just as the pool starts\n"
        "    time.sleep(0.2)\n"
        "    return real(self, *a, **k)\n"
        "mc.ForkServerContext.Pool = pool\n"
        "started = []\n"
        "try:\n"
        "    start_pool(2, Context(stations=(), releases=(), jump_seconds=0), started)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', len(started))\n"
        "for p in started:\n"
        "    p.terminate(); p.join()\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "interrupted 1", (run.stdout, run.stderr[-2000:])
    assert "Traceback" not in run.stderr


# --- one crafted export per finding ------------------------------------------------------------


def test_forged_signature(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    forge.provision(2)
    forged = forge.add("provisioned", forge_as_station=True)
    forge.provision(1)
    report = run_audit([forge.export(tmp_path)])
    assert serious(report) == {"signature-invalid", "unit-hole"}  # unit 3 has no manifest that holds
    (finding,) = [f for f in report.findings if f.code == "signature-invalid"]
    assert finding.severity == "critical" and finding.evidence[0].position == 2
    (hole,) = [f for f in report.findings if f.code == "unit-hole"]
    assert hole.message.endswith("no manifest: 3")
    assert forged.manifest.serial not in {s for f in report.findings for s in f.serials}


def test_unknown_station(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    forge.provision(2)
    report = run_audit([forge.export(tmp_path, station_id="station-9")])
    assert serious(report) == {"unknown-station"}
    assert report.exports[0].status == "unknown-station" and report.verified == 0


def test_manifest_signed_by_a_key_that_is_not_the_stations(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    forge.provision(1)
    forge.add("provisioned", signer=SoftSigner())
    report = run_audit([forge.export(tmp_path)])
    assert serious(report) == {"unknown-station"}


def test_deleted_manifest(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    forge.provision(4)
    path = forge.export(tmp_path, entries=lambda listed: [e for e in listed if e[0] != 2])
    report = run_audit([path])
    assert serious(report) == {"log-gap", "unit-hole"}
    assert report.at_or_above("medium")[0].evidence[0].position == 2
    (hole,) = [f for f in report.findings if f.code == "unit-hole"]
    assert hole.message.endswith("no manifest: 3")  # the deleted entry's unit is named


def test_missing_export_between_two(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    forge.provision(2)
    first = forge.export(tmp_path / "a")
    forge.provision(2)
    forge.export(tmp_path / "b")  # never handed to the auditor
    forge.provision(2)
    third = forge.export(tmp_path / "a")
    report = run_audit([first, third])
    assert serious(report) == {"log-gap"}


def test_rewritten_log(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    forge.provision(4)
    # a validly signed manifest, not the one the log holds at position 1
    other = forge.manifest("provisioned", sequence=1, unit=2, when=forge.log[1].manifest.time)

    def rewrite(listed: list) -> list:
        return [(i, other if i == 1 else e) for i, e in listed]

    report = run_audit([forge.export(tmp_path, entries=rewrite)])
    assert serious(report) == {"log-rewritten"}


def test_forked_log(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    forge.provision(2)
    first = forge.export(tmp_path / "a")
    trunk = list(forge.log)
    forge.provision(2)
    second = forge.export(tmp_path / "a")
    forge.log = trunk  # the station shows another history from entry 2 on
    forge.exports.pop()
    forge.provision(2)
    fork = forge.export(tmp_path / "b")
    report = run_audit([first, second, fork])
    assert serious(report) == {"log-forked"}


def test_over_allocation(world: World, forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    forge.provision(21)  # the world's bundle allocates station-1 20 units
    report = run_audit([forge.export(tmp_path)])
    assert serious(report) == {"over-allocation"}
    station = report.stations[0].reconciliation
    assert (station.allocation, station.reserved, station.provisioned, station.left) == (20, 21, 21, -1)


def test_duplicate_hardware_id(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    device = forge.provision(2)[0]
    clone = forge.device(device.serial, hardware_id=device.hardware_id)  # same identity, its own key
    forge.add("provisioned", clone)
    report = run_audit([forge.export(tmp_path)])
    assert serious(report) == {"duplicate-hardware-id"}
    assert all(device.hwid in f.hardware_ids for f in report.at_or_above("medium"))


def test_duplicate_serial(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    device = forge.provision(2)[0]
    forge.add("provisioned", forge.device(device.serial))
    report = run_audit([forge.export(tmp_path)])
    assert serious(report) == {"duplicate-serial"}
    assert report.at_or_above("medium")[0].serials == (device.serial,)


def test_reused_device_key(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    device = forge.provision(1)[0]
    twin = forge.device()
    twin.key = device.key
    forge.add("provisioned", twin)
    report = run_audit([forge.export(tmp_path)])
    assert serious(report) == {"device-key-reused"}
    assert set(report.at_or_above("medium")[0].hardware_ids) == {device.hwid, twin.hwid}


def test_digest_not_in_the_allowlist(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    forge.provision(1)
    rogue = (ImageRecord("app.bin", "ab" * 32, "ab" * 32), ImageRecord("config.bin", "cd" * 32, None))
    forge.add("provisioned", images=rogue)
    report = run_audit([forge.export(tmp_path)])
    assert serious(report) == {"image-not-allowed"}
    assert report.at_or_above("medium")[0].count == 2


def test_time_regression(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    forge.provision(2)
    forge.add("provisioned", when=forge.time - datetime.timedelta(hours=2))
    forge.provision(1)
    report = run_audit([forge.export(tmp_path)])
    assert serious(report) == {"time-regression"}


def test_label_mismatch_is_listed_but_not_serious(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    device = forge.provision(1)[0]
    forge.add("label-mismatch", forge.device(), label=device.serial, serial=None, detail="label belongs to another")
    report = run_audit([forge.export(tmp_path)])
    assert report.codes() == {"label-mismatch", "label-misbound", "station-no-evidence"}  # station-2: none given
    assert serious(report) == set()
    (finding,) = [f for f in report.findings if f.code == "label-mismatch"]
    assert finding.severity == "low" and finding.evidence[0].position == 1


# --- beyond one finding per type ---------------------------------------------------------------


def test_an_incremental_audit_still_recomputes_the_log(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    forge.provision(3)
    forge.export(tmp_path / "old")  # audited last month, not handed over again
    forge.provision(3)
    second = forge.export(tmp_path / "new")
    assert serious(run_audit([second])) == set()
    forge.provision(2)
    other = forge.manifest("provisioned", sequence=7, unit=8, when=forge.log[7].manifest.time)
    third = forge.export(tmp_path / "newer", entries=lambda listed: [(i, other if i == 7 else e) for i, e in listed])
    assert serious(run_audit([third])) == {"log-rewritten"}  # the frontier comes from the consistency proof


def test_an_altered_export_is_reported_and_the_rest_audited(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    forge.provision(40)
    path = forge.export(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    altered = tmp_path / "altered" / path.name
    altered.parent.mkdir()
    altered.write_bytes(bytes(data))
    report = run_audit([altered])
    assert serious(report) == {"export-invalid"}
    assert report.exports[0].status == "invalid" and 0 < report.exports[0].entries < 40


def test_a_bundle_that_is_not_promoted(world: World, forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    unpromoted = world.bundle(allocation="{station-1: 5}", promote=False)
    forge.provision(1)
    report = run_audit([forge.export(tmp_path)], bundle=unpromoted)
    assert "bundle-not-promoted" in serious(report) and not report.bundle.promoted


def test_time_jump_and_window(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    forge.provision(1)
    forge.time += datetime.timedelta(days=29)
    forge.provision(1)
    first = forge.export(tmp_path)
    assert serious(run_audit([first])) == set()
    forge.time += datetime.timedelta(days=31)
    forge.provision(1)
    second = forge.export(tmp_path)
    assert serious(run_audit([first, second])) == {"time-jump"}  # across the two exports
    early = datetime.datetime(2025, 12, 1, tzinfo=datetime.UTC)  # before the release's not_before
    forge.add("failed", failed_step="program", when=early, unit=4)
    report = run_audit([first, second, forge.export(tmp_path)])
    assert serious(report) == {"time-jump", "time-outside-window", "time-regression"}
