"""The audit state's merge: the rows later runs added folded into the base, as one run in many does it.

An incremental audit keeps its identity index in two files (ADR 0014, item
7): a base no run writes, and a small file of the rows added since. When the
small file grows past ``MERGE_SHARE`` of the base, the run merges it into a
copy of the base first. This bench measures that merge on a real base: the
state an ``audit_bench.py --incremental`` work folder made (``--reuse``),
beside a small file of ``--rows`` rows made from the base's own rows with
fresh identities (ids, serials, keys, positions and times moved past the
base's), as the run that merges finds it after many incremental runs (by
default an eighth of the base's rows and one run's more). It prints the
merge's wall and CPU time, the main process's peak RSS, what that costs
each of the runs that filled the small file (``--per-run`` manifests each),
and, as its last line, that cost against an audit of one such export alone
when ``--alone`` seconds are given (``ratio merge-per-run/alone ...``).

Usage::

    python bench/state_merge_bench.py --reuse /var/tmp/audit-bench/vault-audit-bench-XXXX
    python bench/state_merge_bench.py --reuse DIR --rows 135000 --per-run 10000 --alone 1.54
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _own import at_least, own_interpreter  # noqa: E402


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reuse", type=Path, required=True, help="an audit_bench.py --incremental work folder")
    parser.add_argument(
        "--rows", type=at_least(1), default=None, help="rows in the small file (default: the share, plus one run's)"
    )
    parser.add_argument("--per-run", type=at_least(1), default=10000, help="manifests each run added (10,000)")
    parser.add_argument("--alone", type=float, default=None, help="seconds one such export takes audited alone")
    args = parser.parse_args()
    own_interpreter("cryptography")

    import vault.audit._index as index_module
    from vault.audit._index import _INDEXES, _SCHEMA, _STRETCHES, BASE_FILE, INDEX_FILE, Index

    state = args.reuse.resolve() / "audit-state"
    try:
        generation = state / (state / "current").read_text().strip()
    except OSError:
        raise SystemExit(f"{args.reuse} holds no audit state: run audit_bench.py --incremental on it first") from None
    base = generation / BASE_FILE
    if not base.is_file():
        raise SystemExit(f"{generation} holds no {BASE_FILE}: its state was made by another version of vault")
    with tempfile.TemporaryDirectory(prefix="vault-merge-bench-", dir=args.reuse) as scratch:
        work = Path(scratch)
        os.link(base, work / BASE_FILE)  # as a run's staging folder holds it: linked, never written
        db = sqlite3.connect(work / INDEX_FILE, isolation_level=None)
        db.executescript("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;" + _SCHEMA + ";" + _INDEXES + _STRETCHES)
        db.execute("ATTACH DATABASE ? AS base", (str(work / BASE_FILE),))
        offset = db.execute("SELECT MAX(position) + 1, MAX(time) + 1 FROM base.entries").fetchone()
        base_rows = db.execute("SELECT COUNT(*) FROM base.entries").fetchone()[0]
        wanted = args.rows or int(base_rows * index_module.MERGE_SHARE) + args.per_run
        db.execute("BEGIN")
        db.execute(
            "INSERT INTO main.entries SELECT station, export + 1, position + ?, lower(hex(randomblob(32))), event, "
            "lower(hex(randomblob(8))), serial || '-n', lower(hex(randomblob(32))), has_unit, in_bundle, unit + ?, "
            "failed_step, week, time + ?, fixture, operator FROM base.entries ORDER BY rowid LIMIT ?",
            (offset[0], offset[0], offset[1], wanted),
        )
        db.execute("INSERT INTO main.stretches SELECT * FROM base.stretches")
        db.execute("COMMIT")
        rows = db.execute("SELECT COUNT(*) FROM main.entries").fetchone()[0]
        db.close()
        small, big = (work / INDEX_FILE).stat().st_size, (work / BASE_FILE).stat().st_size
        print(f"base         {base_rows} rows, {big / 2**20:.0f} MiB ({base})")
        print(f"small file   {rows} rows, {small / 2**20:.0f} MiB ({small / big:.3f} of the base)")
        index_module.MERGE_SHARE = 0.0  # merge whatever the share, as the run past the share does
        started, cpu = time.perf_counter(), time.process_time()
        with Index(work, existing=True) as merged:
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
            assert not merged.layered
            total = merged._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        if total != base_rows + rows:
            raise SystemExit(f"the merge holds {total} rows, not {base_rows + rows}")
        shutil.rmtree(work, ignore_errors=True)
    runs = max(1, rows // args.per_run)
    peak = _peak_rss_mib()
    print(f"merge        {wall:8.2f} s  (CPU {cpu:.2f} s; peak RSS {peak:.0f} MiB, making the small file included)")
    print(f"per run      {wall / runs:8.3f} s  (the {runs} runs of {args.per_run} manifests that filled it)")
    if args.alone is not None:
        print(f"ratio merge-per-run/alone {wall / runs / args.alone:.2f}")


if __name__ == "__main__":
    main()
