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
its manifest) and the per-unit latency p50/p99.

Usage::

    python bench/station_bench.py                # 400 units, 4 fixtures
    python bench/station_bench.py --units 1000 --fixtures 4 --image-kib 64
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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
    parser.add_argument("--units", type=int, default=400)
    parser.add_argument("--fixtures", type=int, default=4)
    parser.add_argument("--image-kib", type=int, default=300, help="size of the bundle's main image")
    parser.add_argument("--processes", action="store_true", help="each fixture in its own process")
    parser.add_argument("--dir", type=Path, default=None, help="where to work (default: a temporary folder)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vault-station-bench-", dir=args.dir))
    subprocess.run(["bash", str(ROOT / "softhsm" / "setup.sh"), "--dir", str(work / "softhsm"), "--quiet"], check=True)
    for line in (work / "softhsm" / "env").read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        os.environ[name] = value

    from tests.verify.conftest import World
    from vault.verify import SimulatedDevice

    print(f"setting up: ceremonies, two stations, a promoted bundle ({args.image_kib} KiB image) in {work}")
    world_dir = work / "world"
    world_dir.mkdir()
    world = World(world_dir)
    (world.images / "app.bin").write_bytes(os.urandom(args.image_kib * 1024))
    bundle = world.bundle(allocation=f"{{station-1: {args.units + args.fixtures}}}")  # + the warm-up units

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
        return
    durations: list[float] = []
    lock = threading.Lock()
    with world.station(work / "state") as station:
        station.load(bundle, world.policy)
        remaining = list(range(args.units))

        def fixture(slot: int) -> None:
            while True:
                with lock:
                    if not remaining:
                        return
                    remaining.pop()
                device = SimulatedDevice()
                t0 = time.perf_counter()
                station.provision(device, fixture=slot)
                elapsed = time.perf_counter() - t0
                with lock:
                    durations.append(elapsed)

        threads = [threading.Thread(target=fixture, args=(i + 1,)) for i in range(args.fixtures)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        assert station.status().releases[-1].used == args.units

    report(per_commit, args.units, args.fixtures, wall, durations, "threads")


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
