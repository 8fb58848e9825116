"""Benchmark the station library: provisioning throughput on 4 fixtures against a bare SQLite commit loop.

Not a test. It sets up fresh SoftHSM2 tokens, runs the ceremonies and
builds a promoted bundle exactly as the test suite does (``tests/verify``),
then, in one state folder on the same disk:

1. **baseline**: a bare loop of single-row SQLite commits in WAL mode with
   ``synchronous=FULL`` (what one durable step costs on this disk);
2. **station**: ``--fixtures`` threads each calling ``Station.provision`` on
   simulated devices (which take no time themselves), so everything measured
   is the library: identity checks, the durable reservation, streaming
   decrypt of every image to the device, the CSR check, the device
   certificate signed in the token, the manifest signed in the token, and
   the commit that appends it to the log.

It prints units per second against commits per second (target >= 0.5: a
unit needs two durable commits, one before the device is touched and one for
its manifest) and the per-unit latency p50/p99. The last line is that ratio,
``ratio units/commits 0.13``, to track run after run.

It sets up its own environment whatever the caller's shell holds: its own
SoftHSM2 tokens under ``--dir`` (made if missing), and none of the caller's
``OPENSSL_*``, ``P11_KIT_*``, ``PYTHON*``, ``SOFTHSM2_*`` or ``VAULT_*``
variables (``bench/_own.py``); it runs from the repository's ``.venv`` when
started with an interpreter that lacks the project's packages.

With threads (the default) it also measures, in the same run, what the
station token's head record costs: the same units are provisioned in
alternating rounds by station-1 (its state anchored in its token: each
commit reads the token's head and writes the next one) and by station-2
with the anchor switched off (a bare state folder, as before the head
existed). It prints both rates and the difference per unit.

Usage::

    python bench/station_bench.py                # 400 units, 4 fixtures
    python bench/station_bench.py --units 1000 --fixtures 4 --image-kib 64 --dir /var/tmp/bench
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from _own import ROOT, at_least, own_dir, own_environment, own_interpreter

if __name__ == "__main__":
    own_interpreter("cryptography", "pkcs11")
sys.path.insert(0, str(ROOT))


def baseline(folder: Path, commits: int) -> float:
    """Seconds per durable commit: one row per transaction, WAL, synchronous=FULL."""
    db = sqlite3.connect(folder / "baseline.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB)")
    payload = os.urandom(2048)  # about one manifest
    start = time.perf_counter()
    for _ in range(commits):
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t (payload) VALUES (?)", (payload,))
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return elapsed / commits


def _fixture_process(args: tuple[Path, object, Path, Path, bytes, int, int]) -> list[float]:
    """One fixture as its own process with its own Station on the shared state folder."""
    from cryptography import x509

    from vault.verify import SimulatedDevice, Station

    state, token, root_path, bundle, policy, units, slot = args
    root = x509.load_pem_x509_certificate(root_path.read_bytes())
    durations = []
    with Station(state, token=token, station_id="station-1", root=root) as station:  # type: ignore[arg-type]
        station.load(bundle, policy)
        for _ in range(units):
            t0 = time.perf_counter()
            station.provision(SimulatedDevice(), fixture=slot)
            durations.append(time.perf_counter() - t0)
    return durations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=at_least(2), default=400)
    parser.add_argument("--fixtures", type=at_least(1), default=4)
    parser.add_argument("--image-kib", type=at_least(0), default=300, help="size of the bundle's main image")
    parser.add_argument("--processes", action="store_true", help="each fixture in its own process")
    parser.add_argument("--dir", type=Path, default=None, help="where to work, made if missing (default: temporary)")
    args = parser.parse_args()
    if args.units < 2 * args.fixtures:
        parser.error("--units must be at least twice --fixtures (each fixture times two units or more)")

    own_dir(parser, args.dir)
    work = Path(tempfile.mkdtemp(prefix="vault-station-bench-", dir=args.dir))
    own_environment(work / "softhsm")

    from tests.verify.conftest import World

    print(f"setting up: ceremonies, two stations, a promoted bundle ({args.image_kib} KiB image) in {work}")
    world_dir = work / "world"
    world_dir.mkdir()
    world = World(world_dir)
    (world.images / "app.bin").write_bytes(os.urandom(args.image_kib * 1024))
    n = args.units + args.fixtures  # + the warm-up units
    bundle = world.bundle(allocation=f"{{station-1: {n}, station-2: {n}}}", total=2 * n)

    per_commit = baseline(work, max(200, args.units))
    if args.processes:
        import multiprocessing

        with world.station(work / "state") as station:  # load once: the release and its allocation
            station.load(bundle, world.policy)
        share = args.units // args.fixtures
        jobs = [
            (work / "state", world.tokens["station-1"], world.root_cert_path, bundle, world.policy, share, i + 1)
            for i in range(args.fixtures)
        ]
        with multiprocessing.get_context("spawn").Pool(args.fixtures) as pool:
            pool.map(_fixture_process, [(*jobs[0][:5], 1, 1)] * args.fixtures)  # start-up and load, not timed
            start = time.perf_counter()
            durations = [d for part in pool.map(_fixture_process, jobs) for d in part]
            wall = time.perf_counter() - start
        report(per_commit, share * args.fixtures, args.fixtures, wall, durations, "processes")
        print(f"ratio units/commits {share * args.fixtures / wall * per_commit:.2f}")
        return
    anchored: list[float] = []
    bare: list[float] = []
    walls = {"anchored": 0.0, "bare": 0.0}
    rounds = max(1, args.units // 100)
    with world.station(work / "state") as station, world.station(work / "bare", "station-2") as plain:
        station.load(bundle, world.policy)
        plain.load(bundle, world.policy)
        plain.state.anchor = None  # the same library without the token head record
        for r in range(rounds):
            share = args.units // rounds + (1 if r < args.units % rounds else 0)
            for name, opened, sink in (("anchored", station, anchored), ("bare", plain, bare))[:: 1 if r % 2 else -1]:
                walls[name] += run_threads(opened, share, args.fixtures, sink)
        assert station.status().releases[-1].used == args.units
        assert plain.status().releases[-1].used == args.units

    report(per_commit, args.units, args.fixtures, walls["anchored"], anchored, "threads")
    bare_rate, head_rate = args.units / walls["bare"], args.units / walls["anchored"]
    extra = (walls["anchored"] - walls["bare"]) / args.units * 1000
    print(f"no head      {bare_rate:8.1f} units/s    (station-2, state not anchored in its token, same run)")
    print(f"token head   {extra:+8.2f} ms per unit  ({head_rate / bare_rate:.2f}x the rate without it)")
    print(f"ratio units/commits {head_rate * per_commit:.2f}")


def run_threads(station: object, units: int, fixtures: int, durations: list[float]) -> float:
    """Provision ``units`` simulated devices on ``fixtures`` threads; returns the wall time."""
    from vault.verify import SimulatedDevice, Station

    assert isinstance(station, Station)
    lock = threading.Lock()
    remaining = list(range(units))

    def fixture(slot: int) -> None:
        while True:
            with lock:
                if not remaining:
                    return
                remaining.pop()
            t0 = time.perf_counter()
            station.provision(SimulatedDevice(), fixture=slot)
            elapsed = time.perf_counter() - t0
            with lock:
                durations.append(elapsed)

    threads = [threading.Thread(target=fixture, args=(i + 1,)) for i in range(fixtures)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def report(per_commit: float, units: int, fixtures: int, wall: float, durations: list[float], how: str) -> None:
    commits_per_s = 1 / per_commit
    units_per_s = units / wall
    cuts = statistics.quantiles(durations, n=100)
    print(f"baseline     {commits_per_s:8.1f} commits/s  ({per_commit * 1000:.2f} ms per full-sync commit)")
    print(f"station      {units_per_s:8.1f} units/s    ({units} units, {fixtures} fixtures as {how}, {wall:.2f} s)")
    print(f"ratio        {units_per_s / commits_per_s:8.2f}            (target >= 0.5)")
    print(
        f"per unit     p50 {cuts[49] * 1000:.1f} ms, p99 {cuts[98] * 1000:.1f} ms (waits for other fixtures included)"
    )


if __name__ == "__main__":
    main()
