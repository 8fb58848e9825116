"""The audit's identity index: one row per verified manifest, on disk, queried once at the end.

The main process appends rows as chunks come back from the workers (no
index is maintained while loading, so each insert is cheap); the questions
that span all stations and exports (the same hardware id provisioned twice,
one serial or one device key on two devices, a manifest id seen twice, the
first-pass yield) are answered by a handful of grouped queries over the
whole table at the end, run side by side.
SQLite sorts on disk, so memory stays bounded however many manifests there are.

An index kept in an audit state (``--state``) also indexes its grouping
columns and keeps every operator's stretches of work: the next run asks the
questions only about the groups its new rows touch and merges with the
answers and tallies the state kept (:meth:`Index.grouped_since`, ADR 0014).

A kept index is layered (:meth:`Index.keep`): a base file that later runs
only read (an audit state links it from one generation to the next, and
authenticates it once a run) and a small file of the rows added since,
which each run copies and extends. The questions reach both through
temporary views; those an incremental run asks of the new rows' groups look
each kind of group up in both files' indexes, once. When the added rows
reach an eighth of the base, a run merges them into a new base.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import chain
from pathlib import Path
from types import TracebackType
from typing import Any

from vault.audit._worker import Label, LotRow, Row

__all__ = ["Index"]

_SCHEMA = """
CREATE TABLE entries (
    station INTEGER NOT NULL,      -- the station's number in this audit
    export INTEGER NOT NULL,       -- the export's number in this audit
    position INTEGER NOT NULL,     -- the manifest's position in the station's log
    manifest_id TEXT NOT NULL,
    event TEXT NOT NULL,
    hardware_id TEXT NOT NULL,
    serial TEXT,
    device_key_id TEXT,
    has_unit INTEGER NOT NULL,     -- 1 when the manifest names a unit
    in_bundle INTEGER NOT NULL,    -- the number (from 1) of the audited release it is for; 0 for none
    unit INTEGER,                  -- the unit it names, or NULL
    failed_step TEXT,              -- the step a failed unit failed at (a refusal names none)
    week TEXT,                     -- the ISO week of an exception event (neither provisioned nor a retry)
    time INTEGER NOT NULL,         -- seconds since 1970
    fixture INTEGER NOT NULL,
    operator TEXT                  -- who acted; NULL for a unit the station closed as interrupted
);
CREATE TABLE labels (              -- the label-mismatch manifests that name the label read
    station INTEGER NOT NULL,
    export INTEGER NOT NULL,
    position INTEGER NOT NULL,
    manifest_id TEXT NOT NULL,
    hardware_id TEXT NOT NULL,     -- the device refused
    serial TEXT,
    label TEXT NOT NULL            -- the serial its label read
);
CREATE TABLE lots (                -- the component lots each unit's manifest records
    station INTEGER NOT NULL,
    export INTEGER NOT NULL,
    position INTEGER NOT NULL,
    manifest_id TEXT NOT NULL,
    component TEXT NOT NULL,
    lot TEXT NOT NULL
)
"""

_ASSIGNING = "('provisioned', 'retry', 'rework')"  # events after which the device holds its serial and key
_PRAGMAS = "PRAGMA temp_store = FILE; PRAGMA cache_size = -32768;"
INDEX_FILE = "audit-index.sqlite"  # the index; in a layered one, the rows added since its base
BASE_FILE = "audit-index-base.sqlite"  # a layered index's base: only read
MERGE_SHARE = 1 / 8  # a layered index is merged into one file when its own file grows past this share of its base
_MERGE_CACHE = "PRAGMA cache_size = -524288;"  # KiB of SQLite's cache while merging (after _PRAGMAS' own)
_TABLES = ("entries", "labels", "lots")
_VIEWS = "".join(f"CREATE TEMP VIEW {t} AS SELECT * FROM base.{t} UNION ALL SELECT * FROM main.{t};" for t in _TABLES)
_ROWS_FILE = "touched-{}.sqlite"  # one kind of touched group and its rows, beside the index while they are asked
_KEPT_MAP = 1 << 30  # bytes of a kept (audit state's) index mapped at most; its pages are the page cache's
_KEY = f"CASE WHEN event IN {_ASSIGNING} THEN device_key_id END"

_TOP = 256  # failed steps and weeks listed per station before "other"


def _top_per_station(column: str, manifests: str = "COUNT(DISTINCT manifest_id)") -> str:
    where = f"FROM entries WHERE {column} IS NOT NULL GROUP BY station"
    return (
        f"SELECT station, {column}, n FROM (SELECT station, {column}, {manifests} AS n, "
        f"ROW_NUMBER() OVER (PARTITION BY station ORDER BY {manifests} DESC, {column}) AS r "
        f"{where}, {column}) WHERE r <= {_TOP} UNION ALL SELECT station, NULL, {manifests} {where}"
    )


def _cycles(manifests: str) -> str:
    return (
        "SELECT station, fixture, MAX(n), time, position, manifest_id, hardware_id, serial, export, COUNT(*) FROM ("
        "SELECT *, COUNT(*) OVER (PARTITION BY station, fixture ORDER BY time "
        f"RANGE BETWEEN 59 PRECEDING AND CURRENT ROW) AS n FROM ({manifests})"
        ") WHERE n > :per_minute GROUP BY station, fixture LIMIT :limit"
    )


QUESTIONS = {
    # (station, devices attempted, devices whose first attempt was provisioned): the first-pass yield; a
    # refusal (a failed manifest that names no unit: no unit was left, or the device was not taken) is no attempt.
    # SQLite returns the other columns of the row that holds MIN(position).
    "first_pass": (
        "SELECT station, COUNT(*), SUM(event = 'provisioned') FROM ("
        "SELECT station, hardware_id, event, MIN(position) FROM entries "
        "WHERE event IN ('provisioned', 'label-mismatch') OR (event = 'failed' AND has_unit) "
        "GROUP BY station, hardware_id"
        ") GROUP BY station"
    ),
    # (station, audited release or 0, event, names a unit, rows, distinct manifests): the reconciliation's
    # counts per station and release, each manifest once whatever forks or replays repeat it (a provisioned
    # manifest that names no unit still consumed a device: it is counted)
    "counts": (
        "SELECT station, in_bundle, event, has_unit, COUNT(*), COUNT(DISTINCT manifest_id) FROM entries "
        "GROUP BY station, in_bundle, event, has_unit"
    ),
    # (station, failed step, distinct manifests) and (station, ISO week, distinct exception manifests): the
    # failure Pareto and the exceptions per week, each manifest once; the most frequent per station first,
    # and each station's total (its step or week NULL), so that what is beyond the limit shows as "other"
    "pareto": _top_per_station("failed_step"),
    "weeks": _top_per_station("week"),
    # (hardware id, provisioned or retried rows, 2 when it holds several device keys, reworks): suspect
    # devices, and every retried one (the caller checks a retry follows a failure). The same manifest
    # exported twice counts twice here; the caller looks at the rows.
    "devices": (
        f"SELECT hardware_id, SUM(event IN ('provisioned', 'retry')) AS p, 1 + (MIN({_KEY}) <> MAX({_KEY})) AS k, "
        "SUM(event = 'rework') AS r FROM entries GROUP BY hardware_id "
        "HAVING p > 1 OR k > 1 OR (r > 0 AND p = 0) OR SUM(event = 'retry') > 0 LIMIT ?"
    ),
    # (device key id, devices) and (serial, devices): one key or one serial on several devices
    "keys": (
        f"SELECT device_key_id, COUNT(DISTINCT hardware_id) AS n FROM entries WHERE event IN {_ASSIGNING} "
        "AND device_key_id IS NOT NULL GROUP BY device_key_id HAVING n > 1 LIMIT ?"
    ),
    # (station, release, unit, devices): one unit number of a station and an audited release on several devices
    "units": (
        "SELECT station, in_bundle, unit, COUNT(DISTINCT hardware_id) AS n FROM entries "
        "WHERE in_bundle AND unit IS NOT NULL GROUP BY station, in_bundle, unit HAVING n > 1 LIMIT ?"
    ),
    # a label read on one device that is another device's serial: (the label-mismatch manifest's station, export,
    # position, manifest id, hardware id, serial, label; the other device's station, export, position, manifest
    # id, event, hardware id, serial), one row per manifest that gave the other device that serial
    "misbound": (
        "SELECT DISTINCT l.station, l.export, l.position, l.manifest_id, l.hardware_id, l.serial, l.label, "
        "e.station, e.export, e.position, e.manifest_id, e.event, e.hardware_id, e.serial FROM labels l "
        f"JOIN entries e ON e.serial = l.label AND e.hardware_id <> l.hardware_id AND e.event IN {_ASSIGNING} "
        # then every column: the order is total, so the rows kept under the limit are the same however
        # SQLite plans it (two label rows may share a station and position: a rewritten log)
        "ORDER BY 1, 3, 8, 10, 2, 4, 5, 6, 7, 9, 11, 12, 13, 14 LIMIT ?"
    ),
    # (component, lot, devices attempted, devices whose first attempt was provisioned): the first-pass yield per
    # component lot, over the devices whose first attempt (as in "first_pass") records its lots
    "lot_yield": (
        "SELECT l.component, l.lot, COUNT(*), SUM(f.event = 'provisioned') FROM ("
        "SELECT station, hardware_id, event, MIN(position) AS position FROM entries "
        "WHERE event IN ('provisioned', 'label-mismatch') OR (event = 'failed' AND has_unit) "
        "GROUP BY station, hardware_id) f JOIN (SELECT DISTINCT station, position, component, lot FROM lots) l "
        "ON l.station = f.station AND l.position = f.position GROUP BY l.component, l.lot "
        "ORDER BY l.component, l.lot LIMIT ?"
    ),
    # (component, lot, failed step, distinct manifests): the failures per component lot and step
    "lot_failures": (
        "SELECT l.component, l.lot, e.failed_step, COUNT(DISTINCT e.manifest_id) FROM entries e JOIN lots l "
        "ON l.station = e.station AND l.position = e.position AND l.manifest_id = e.manifest_id "
        "WHERE e.failed_step IS NOT NULL GROUP BY l.component, l.lot, e.failed_step LIMIT ?"
    ),
    # (manifest id, rows): a manifest id in several rows (one manifest exported twice is one of them)
    "replayed": "SELECT manifest_id, COUNT(*) AS n FROM entries GROUP BY manifest_id HAVING n > 1 LIMIT ?",
    "serials": (
        f"SELECT serial, COUNT(DISTINCT hardware_id) AS n FROM entries WHERE event IN {_ASSIGNING} "
        "AND serial IS NOT NULL GROUP BY serial HAVING n > 1 LIMIT ?"
    ),
    # (hardware id, manifests): devices provisioned, retried or reworked after they were scrapped: later in
    # the scrapping station's log, or later in time at another station
    "scrapped": (
        "SELECT a.hardware_id, COUNT(DISTINCT a.manifest_id) FROM entries a JOIN ("
        "SELECT DISTINCT hardware_id, station, position, time FROM entries WHERE event = 'scrap') s "
        f"ON a.hardware_id = s.hardware_id WHERE a.event IN {_ASSIGNING} AND CASE WHEN a.station = s.station "
        "THEN a.position > s.position ELSE a.time > s.time END GROUP BY a.hardware_id LIMIT :limit"
    ),
    # (hardware id, reworks): devices reworked more than :max_reworks times
    "reworks": (
        "SELECT hardware_id, COUNT(DISTINCT manifest_id) AS n FROM entries WHERE event = 'rework' "
        "GROUP BY hardware_id HAVING n > :max_reworks LIMIT :limit"
    ),
    # (station, fixture, most units finished within one minute, then the time, position, manifest id,
    # hardware id, serial and export of the unit that ends that minute, units that end a minute over the
    # limit): fixtures faster than :per_minute units a minute. Each distinct manifest once.
    "cycles": _cycles(
        "SELECT station, fixture, time, position, manifest_id, hardware_id, serial, MIN(export) AS export "
        f"FROM entries WHERE event IN {_ASSIGNING} GROUP BY station, manifest_id"
    ),
    # (operator, station, time) of every act, in that order: read by _overlaps, which gives (operator, station,
    # other station, overlap start, overlap end) of an operator's stretches of work at two stations (manifests
    # no more than :window seconds apart) that overlap by more than :window seconds
    "operators": (
        "SELECT DISTINCT operator, station, time FROM entries WHERE operator IS NOT NULL "
        "ORDER BY operator, station, time"
    ),
}
"""The questions asked of the whole index at the end, longest first."""

UNIQUE = {
    "counts": (
        "SELECT station, in_bundle, event, has_unit, COUNT(*), COUNT(*) FROM entries "
        "GROUP BY station, in_bundle, event, has_unit"
    ),
    "pareto": _top_per_station("failed_step", "COUNT(*)"),
    "weeks": _top_per_station("week", "COUNT(*)"),
    "cycles": _cycles(
        "SELECT station, fixture, time, position, manifest_id, hardware_id, serial, export "
        f"FROM entries WHERE event IN {_ASSIGNING}"
    ),
}
"""The questions that count each distinct manifest once, as asked when no manifest id is in two rows (no
``replayed`` answer): then every row is a distinct manifest, and the same answers need no de-duplication, the
costliest part of those questions over a large index."""


def _stretches(acts: Iterable[tuple[str, int, int]], window: float) -> Iterator[tuple[str, int, int, int]]:
    """Each (operator, station, start, end) stretch of work (acts no more than ``window`` seconds apart) of
    ``acts`` sorted by operator, station and time, streamed: the acts may be millions."""
    current: list[Any] = []
    for operator, station, time in chain(acts, [(None, None, None)]):
        if current and operator == current[0] and station == current[1] and time - current[3] <= window:
            current[3] = time
            continue
        if current:
            yield current[0], current[1], current[2], current[3]
        current = [operator, station, time, time]


def _pairs(stretches: Iterable[tuple[str, int, int, int]], window: float, limit: int) -> list[tuple[Any, ...]]:
    """The first ``limit`` pairs of stretches (sorted by operator, station and start) longer than ``window``
    of one operator at two stations (the first station's number lower) that overlap by more than ``window``."""
    long: dict[str, list[tuple[int, int, int]]] = {}  # operator -> (station, start, end), in order
    for operator, station, start, end in stretches:
        if end - start > window:
            long.setdefault(operator, []).append((station, start, end))
    pairs: list[tuple[Any, ...]] = []
    for operator, spans in long.items():
        for one, start, end in spans:
            for other, other_start, other_end in spans:
                if one < other and min(end, other_end) - max(start, other_start) > window:
                    pairs.append((operator, one, other, max(start, other_start), min(end, other_end)))
                    if len(pairs) >= limit:
                        return pairs
    return pairs


def _overlaps(acts: Iterable[tuple[str, int, int]], window: float, limit: int) -> list[tuple[Any, ...]]:
    """The answer to "operators" from its acts (sorted by operator, station and time), in one pass."""
    return _pairs(_stretches(acts, window), window, limit)


def _joined(spans: Iterable[tuple[int, int]], window: float) -> list[tuple[int, int]]:
    """Spans (stretches, and single acts as (t, t)) joined where less than ``window`` seconds apart."""
    joined: list[list[int]] = []
    for start, end in sorted(spans):
        if joined and start - joined[-1][1] <= window:
            joined[-1][1] = max(joined[-1][1], end)
        else:
            joined.append([start, end])
    return [(start, end) for start, end in joined]


_INDEXES = """
CREATE INDEX IF NOT EXISTS main.entries_by_hardware_id ON entries (hardware_id, station);
CREATE INDEX IF NOT EXISTS main.entries_by_manifest_id ON entries (manifest_id);
CREATE INDEX IF NOT EXISTS main.entries_by_serial ON entries (serial);
CREATE INDEX IF NOT EXISTS main.entries_by_key ON entries (device_key_id);
CREATE INDEX IF NOT EXISTS main.entries_by_unit ON entries (station, in_bundle, unit);
CREATE INDEX IF NOT EXISTS main.entries_by_position ON entries (station, position);
CREATE INDEX IF NOT EXISTS main.entries_by_fixture ON entries (station, fixture, time);
CREATE INDEX IF NOT EXISTS main.lots_by_position ON lots (station, position);
"""
_STRETCHES = """
CREATE TABLE IF NOT EXISTS main.stretches (  -- every operator's stretches of work per station (see _stretches)
    operator TEXT NOT NULL,
    station INTEGER NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    PRIMARY KEY (operator, station, start)
) WITHOUT ROWID
"""
# the identity and grouping columns, indexed in a kept (--state) index: an incremental audit asks about the
# groups its new rows touch, each a lookup

# the groups the new rows (this file's, rowid > :last: NOT INDEXED, or SQLite may read a whole index for the
# DISTINCT) touch, one table each; {entries}: see Index._both
_TOUCHED = {
    "hardware_id": "SELECT DISTINCT hardware_id FROM main.entries NOT INDEXED WHERE rowid > :last",
    "device_key_id": (
        "SELECT DISTINCT device_key_id FROM main.entries NOT INDEXED WHERE rowid > :last AND device_key_id IS NOT NULL"
    ),
    "serial": "SELECT DISTINCT serial FROM main.entries NOT INDEXED WHERE rowid > :last AND serial IS NOT NULL",
    "manifest_id": "SELECT DISTINCT manifest_id FROM main.entries NOT INDEXED WHERE rowid > :last",
    "unit": (
        "SELECT DISTINCT station, in_bundle, unit FROM main.entries NOT INDEXED WHERE rowid > :last "
        "AND unit IS NOT NULL"
    ),
    # a device's first attempt at a station, and the lots of that attempt's position: every device of a
    # station position the new rows fill (a new export may restate or rewrite an audited position)
    "device": (
        "SELECT DISTINCT e.station, e.hardware_id FROM (SELECT DISTINCT station, position FROM main.entries "
        "NOT INDEXED WHERE rowid > :last) n CROSS JOIN {entries} e ON e.station = n.station AND e.position = n.position"
    ),
    # labels read by new label-mismatch manifests, and serials new manifests assign (the two sides of "misbound")
    "label": (
        "SELECT label FROM main.labels NOT INDEXED WHERE rowid > :last_label UNION "
        "SELECT serial FROM main.entries NOT INDEXED WHERE rowid > :last AND serial IS NOT NULL "
        f"AND event IN {_ASSIGNING}"
    ),
}

_TOUCHED_COLUMNS = {"unit": "station, in_bundle, unit", "device": "station, hardware_id"}

_LOOK_UP = {  # the rows of each kind of touched group (of _TOUCHED), looked up once (Index._look_up); {entries}: _both
    "hardware_id": "SELECT e.* FROM looked.touched t CROSS JOIN {entries} e ON e.hardware_id = t.value",
    "device_key_id": "SELECT e.* FROM looked.touched t CROSS JOIN {entries} e ON e.device_key_id = t.value",
    "serial": "SELECT e.* FROM looked.touched t CROSS JOIN {entries} e ON e.serial = t.value",
    "manifest_id": "SELECT e.* FROM looked.touched t CROSS JOIN {entries} e ON e.manifest_id = t.value",
    "unit": (
        "SELECT e.* FROM looked.touched t CROSS JOIN {entries} e "
        "ON e.station = t.station AND e.in_bundle = t.in_bundle AND e.unit = t.unit"
    ),
    "device": (
        "SELECT e.* FROM looked.touched t CROSS JOIN {entries} e "
        "ON e.hardware_id = t.hardware_id AND e.station = t.station"
    ),
    "label": "SELECT e.* FROM looked.touched t CROSS JOIN {entries} e ON e.serial = t.value",  # misbound's other side
}
# the lots recorded at the positions of the rows looked up for the tallies that join them (after those)
_LOOK_UP_LOTS = (
    "SELECT l.* FROM (SELECT station, position FROM rows_device.rows UNION SELECT station, position "
    "FROM rows_manifest_id.rows) p CROSS JOIN {lots} l ON l.station = p.station AND l.position = p.position"
)

_ROWS_OF = {group: f"rows_{group}.rows" for group in (*_LOOK_UP, "lots")}
"""The rows of the touched groups as the questions read them (standing for "entries", or "lots"): the
tables the look-ups filled, each in a database of its own that a question's connection attaches."""

BY_GROUP = {  # question: the groups its answers are per, and how many leading columns of an answer name one
    "devices": ("hardware_id", 1),
    "keys": ("device_key_id", 1),
    "serials": ("serial", 1),
    "replayed": ("manifest_id", 1),
    "scrapped": ("hardware_id", 1),
    "reworks": ("hardware_id", 1),
    "units": ("unit", 3),
}
"""The questions whose answers are per group (a hardware id, a serial...): an incremental audit asks them
about the groups the new rows touch and keeps the others' answers."""

KEPT = (*BY_GROUP, "misbound", "operators", "cycles")
"""The answers an incremental audit keeps for the next run (with the tallies)."""

_FIRST_ATTEMPTS = (
    "SELECT station, hardware_id, event, MIN(position) AS position FROM {entries} "
    "WHERE event IN ('provisioned', 'label-mismatch') OR (event = 'failed' AND has_unit) GROUP BY station, hardware_id"
)


def _tally_top(column: str) -> str:
    where = f"FROM {{entries}} WHERE {column} IS NOT NULL GROUP BY station"
    return (
        f"SELECT station, {column}, COUNT(DISTINCT manifest_id) {where}, {column} "
        f"UNION ALL SELECT station, NULL, COUNT(DISTINCT manifest_id) {where}"
    )


TALLIES = {  # question: (the groups it sums over, key columns, the tally over the rows {entries} and {lots})
    "counts": ("manifest_id", 4, QUESTIONS["counts"].replace("FROM entries", "FROM {entries}")),
    "pareto": ("manifest_id", 2, _tally_top("failed_step")),
    "weeks": ("manifest_id", 2, _tally_top("week")),
    "first_pass": (
        "device",
        1,
        f"SELECT station, COUNT(*), SUM(event = 'provisioned') FROM ({_FIRST_ATTEMPTS}) GROUP BY station",
    ),
    "lot_yield": (
        "device",
        2,
        "SELECT component, lot, COUNT(*), SUM(p) FROM (SELECT DISTINCT f.station, f.hardware_id, l.component, "
        f"l.lot, f.event = 'provisioned' AS p FROM ({_FIRST_ATTEMPTS}) f JOIN {{lots}} l "
        "ON l.station = f.station AND l.position = f.position) GROUP BY component, lot",
    ),
    "lot_failures": (
        "manifest_id",
        3,
        "SELECT l.component, l.lot, e.failed_step, COUNT(DISTINCT e.manifest_id) FROM {entries} e JOIN {lots} l "
        "ON l.station = e.station AND l.position = e.position AND l.manifest_id = e.manifest_id "
        "WHERE e.failed_step IS NOT NULL GROUP BY l.component, l.lot, e.failed_step",
    ),
}
"""The questions whose answers are sums over groups (a manifest's contribution, a device's first attempt):
an incremental audit keeps them whole as running tallies, takes out what the touched groups contributed
before and adds what they contribute now."""


def _tally_add(tally: dict[tuple[Any, ...], list[int]], rows: Iterable[tuple[Any, ...]], keys: int, sign: int) -> None:
    for row in rows:
        values = tally.setdefault(tuple(row[:keys]), [0] * (len(row) - keys))
        for at, value in enumerate(row[keys:]):
            values[at] += sign * int(value or 0)


def _key(value: Any) -> tuple[Any, ...]:
    """Sorts as SQLite's GROUP BY does (NULL first, then numbers, then text by code point)."""
    return tuple((0, 0) if v is None else (1, v) if isinstance(v, int) else (2, v) for v in value)


def _from_tallies(name: str, tally: dict[tuple[Any, ...], list[int]], limit: int) -> list[tuple[Any, ...]]:
    """The answer to question ``name`` (as :data:`QUESTIONS` words it) from its whole tally."""
    rows = sorted(
        ((*key, *values) for key, values in tally.items() if values[0]), key=lambda r: _key(r[: TALLIES[name][1]])
    )
    if name in ("pareto", "weeks"):  # each station's most frequent first, then each station's total
        listed = [r for r in rows if r[1] is not None]
        listed.sort(key=lambda r: (r[0], -r[2], r[1]))
        top: list[tuple[Any, ...]] = []
        per: dict[int, int] = {}
        for row in listed:
            per[row[0]] = per.get(row[0], 0) + 1
            if per[row[0]] <= _TOP:
                top.append(row)
        return top + [r for r in rows if r[1] is None]
    if name in ("lot_yield", "lot_failures"):
        return rows[:limit]
    return rows


class Index:
    """A temporary SQLite table of manifests (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike[str], *, existing: bool = False) -> None:
        """The index in ``directory``: a new one, or (``existing``) the one an earlier audit left there, to
        add to (an incremental audit's): one file, or layered (:meth:`keep`); a layered one whose own rows
        have grown past an eighth of its base is merged into one file first."""
        self.path = Path(directory).resolve() / INDEX_FILE
        self.base = self.path.with_name(BASE_FILE)
        self.layered = existing and self.base.exists()
        if self.layered and self.path.stat().st_size > self.base.stat().st_size * MERGE_SHARE:
            self._merge()
        self._db = self._connect(kept=existing)
        self._indexed = existing  # whether the grouping columns are indexed (those of a kept index are)
        if not existing:
            self._db.executescript(_SCHEMA)
        # the rows an earlier audit left: those after them are this run's (rowids grow as rows are appended)
        self._last = {
            table: self._db.execute(f"SELECT COALESCE(MAX(rowid), 0) FROM main.{table}").fetchone()[0]
            for table in ("entries", "labels")
        }
        self._db.execute("BEGIN")

    def _connect(self, *, kept: bool = True) -> sqlite3.Connection:
        """A connection to the index; a layered one's base attached (read only) and the views that join the
        two files' rows; a ``kept`` index's pages read through a map (new rows land all over its indexes)."""
        db = sqlite3.connect(self.path, isolation_level=None, uri=True)  # a resolved path: never taken as a URI
        try:
            db.executescript("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;" + _PRAGMAS)
            if kept:
                db.execute(f"PRAGMA mmap_size = {_KEPT_MAP}")
            if self.layered:
                base = f"file:{urllib.parse.quote(str(self.base))}?mode=ro&immutable=1"
                db.execute("ATTACH DATABASE ? AS base", (base,))
                db.executescript(f"PRAGMA base.mmap_size = {_KEPT_MAP};" + _VIEWS)
        except BaseException:
            db.close()
            raise
        return db

    def _both(self, template: str, table: str = "entries") -> str:
        """``template`` over every row of ``table`` (``{entries}`` or ``{lots}`` in it): in a layered index, the
        union of the template over the base's table and over this file's, each reached through its own
        indexes (SQLite would read a view of the two whole to join it)."""
        mark = "{" + table + "}"
        if mark not in template:  # of this file's rows only
            return template
        if not self.layered:
            return template.replace(mark, f"main.{table}")
        return f"{template.replace(mark, f'base.{table}')} UNION ALL {template.replace(mark, f'main.{table}')}"

    def _merge(self) -> None:
        """Make a layered index one file again: a copy of its base with its own rows appended."""
        merged = self.path.with_name(".merging-" + INDEX_FILE)
        shutil.copyfile(self.base, merged)
        db = sqlite3.connect(merged, isolation_level=None)
        try:
            # the added rows land all over the base's indexes: a cache that holds most of their pages (the
            # merge of 125,000 rows into 1,000,000 took 3.2 s with the default cache, 2.2 s with this one)
            db.executescript("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;" + _PRAGMAS + _MERGE_CACHE)
            db.execute("ATTACH DATABASE ? AS added", (str(self.path),))
            db.execute("BEGIN")
            for table in _TABLES:
                db.execute(f"INSERT INTO main.{table} SELECT * FROM added.{table} ORDER BY rowid")
            db.execute("DELETE FROM main.stretches")
            db.execute("INSERT INTO main.stretches SELECT * FROM added.stretches")
            db.execute("COMMIT")
        finally:
            db.close()
        os.replace(merged, self.path)
        self.base.unlink()
        self.layered = False

    def keep(self) -> None:
        """Leave a kept index (an audit state's) layered: when it is one file, that file becomes the base
        (:data:`BASE_FILE`, which later runs only read) and an empty file takes its place for the rows of
        later runs, with the operators' stretches (which every run rewrites). The index is closed."""
        if self.layered:
            self._db.close()
            return
        self._db.executescript(_INDEXES)  # for the next run's lookups (see finish_loading)
        self._db.close()
        os.replace(self.path, self.base)
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.executescript(
                "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;" + _SCHEMA + ";" + _INDEXES + _STRETCHES
            )
            db.execute("ATTACH DATABASE ? AS base", (str(self.base),))
            db.execute("BEGIN")
            db.execute("INSERT INTO main.stretches SELECT * FROM base.stretches")
            db.execute("DELETE FROM base.stretches")
            db.execute("COMMIT")
        finally:
            db.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._db.close()

    def add(self, station: int, export: int, rows: Sequence[Row]) -> None:
        """Append the rows of one chunk."""
        # station and export are this audit's own integers, so they can be spelled into the statement
        values = f"{int(station)}, {int(export)}, " + ", ".join("?" * 14)
        self._db.executemany(f"INSERT INTO main.entries VALUES ({values})", rows)

    def add_labels(self, station: int, export: int, labels: Sequence[Label]) -> None:
        """Append the label-mismatch manifests of one chunk that name the label read."""
        values = f"{int(station)}, {int(export)}, ?, ?, ?, ?, ?"
        self._db.executemany(f"INSERT INTO main.labels VALUES ({values})", labels)

    def add_lots(self, station: int, export: int, lots: Sequence[LotRow]) -> None:
        """Append the component lots the manifests of one chunk record."""
        values = f"{int(station)}, {int(export)}, ?, ?, ?, ?"
        self._db.executemany(f"INSERT INTO main.lots VALUES ({values})", lots)

    def finish_loading(self, *, kept: bool = False) -> None:
        """Commit what was loaded; queries may follow. A ``kept`` index (an audit state's) keeps its
        operators' stretches; a new one gets the indexes of its grouping columns only when it is kept
        (:meth:`keep`): the whole-table questions of its first run sort the table faster without them
        (SQLite would walk an index and read the rows out of order)."""
        self._db.execute("COMMIT")
        if kept:
            self._db.executescript(_STRETCHES)

    def _ask(self, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        return self._db.execute(sql, params).fetchall()

    def tallies(self, window: float) -> dict[str, dict[tuple[Any, ...], list[int]]]:
        """The whole tallies of :data:`TALLIES`, and every operator's stretches of work (``window``) in the
        index itself: kept for the next run's :meth:`grouped_since`."""
        self._db.execute("DELETE FROM main.stretches")
        stretches = list(_stretches(self._db.execute(QUESTIONS["operators"]), window))  # the acts streamed
        self._db.executemany("INSERT INTO main.stretches VALUES (?, ?, ?, ?)", stretches)
        tallies: dict[str, dict[tuple[Any, ...], list[int]]] = {}
        for name, (_, keys, sql) in TALLIES.items():
            tallies[name] = {}
            whole = sql.replace("{entries}", "entries").replace("{lots}", "lots")
            _tally_add(tallies[name], self._ask(whole, {}), keys, 1)
        return tallies

    def grouped_since(
        self, first_export: int, kept: Mapping[str, Any], limit: int, params: Mapping[str, float]
    ) -> tuple[dict[str, list[tuple[Any, ...]]], dict[str, Any]]:
        """The answers of :meth:`grouped` for an index that holds rows of an earlier audit, whose answers
        and tallies are ``kept`` (as this returns them for the next run): the questions of :data:`BY_GROUP`
        are asked about the groups the new rows (of exports from ``first_export``) touch and merged with
        the kept answers of the others; the tallies of :data:`TALLIES` are brought up to date with what
        the touched groups contributed before and contribute now. The rest are asked of the whole index,
        as is a question whose kept answer was capped at ``limit`` (the groups past the cap are unknown)."""
        values = {"last": self._last["entries"], "last_label": self._last["labels"], "first": int(first_export)}
        try:
            self._look_up(values)
            kept_answers = dict(kept["answers"])
            touched = self._touched_of(kept_answers)
            ask_params = {"limit": limit, **params}
            # every question, asked two at a time: (its SQL, parameters, the touched groups whose rows it reads)
            asks: dict[tuple[str, str], tuple[str, Mapping[str, Any], tuple[str, ...]]] = {}
            for name, (group, _) in BY_GROUP.items():
                if len(kept_answers[name]) >= limit:  # capped: which groups past the cap answer is not known
                    asks[name, "whole"] = (QUESTIONS[name].replace("?", ":limit"), ask_params, ())
                else:
                    sql = QUESTIONS[name].replace("?", ":limit").replace("FROM entries", f"FROM {_ROWS_OF[group]}")
                    asks[name, "touched"] = (sql, ask_params, (group,))
            if len(kept_answers["misbound"]) >= limit:
                asks["misbound", "whole"] = (QUESTIONS["misbound"].replace("?", ":limit"), ask_params, ())
            else:
                labels = "(SELECT * FROM labels WHERE label IN (SELECT value FROM rows_label.touched))"
                sql = QUESTIONS["misbound"].replace("?", ":limit").replace("FROM labels", f"FROM {labels}")
                sql = sql.replace("JOIN entries e", f"JOIN {_ROWS_OF['label']} e")
                asks["misbound", "touched"] = (sql, ask_params, ("label",))
            for name, (group, _, sql) in TALLIES.items():
                rows, lots = _ROWS_OF[group], _ROWS_OF["lots"]
                before = sql.replace("{entries}", f"(SELECT * FROM {rows} WHERE export < :first)")
                before = before.replace("{lots}", f"(SELECT * FROM {lots} WHERE export < :first)")
                asks[name, "now"] = (sql.replace("{entries}", rows).replace("{lots}", lots), values, (group, "lots"))
                asks[name, "before"] = (before, values, (group, "lots"))
            first = sorted(asks, key=lambda key: key[0] != "replayed")  # cycles waits for it
            with ThreadPoolExecutor(2, thread_name_prefix="audit-index") as pool:
                futures = {key: pool.submit(self._ask_apart, *asks[key]) for key in first}
                unique = not self._fresh_replayed(futures, kept_answers, touched)
                cycles = self._cycles_since(kept_answers["cycles"], unique, values, ask_params)  # meanwhile
                got = {key: future.result() for key, future in futures.items()}
        finally:
            for path in map(self._rows_path, _ROWS_OF):
                path.unlink(missing_ok=True)
        answers: dict[str, list[tuple[Any, ...]]] = {}
        for name, (group, keys) in BY_GROUP.items():
            if (name, "whole") in got:
                answers[name] = got[name, "whole"]
                continue
            ours = touched[group]
            merged = [r for r in kept_answers[name] if (r[:keys] if keys > 1 else r[0]) not in ours]
            merged += got[name, "touched"]
            answers[name] = sorted(merged, key=lambda r, k=keys: _key(r[:k]))[:limit]  # type: ignore[misc]
        if ("misbound", "whole") in got:
            answers["misbound"] = got["misbound", "whole"]
        else:
            merged = [r for r in kept_answers["misbound"] if r[6] not in touched["label"]] + got["misbound", "touched"]
            merged = list(dict.fromkeys(merged))
            answers["misbound"] = sorted(merged, key=lambda r: (r[0], r[2], r[7], r[9], *_key(r)))[:limit]
        tallies = {name: {key: list(v) for key, v in tally.items()} for name, tally in kept["tallies"].items()}
        for name, (_, keys, _) in TALLIES.items():
            _tally_add(tallies[name], got[name, "now"], keys, 1)
            _tally_add(tallies[name], got[name, "before"], keys, -1)
            answers[name] = _from_tallies(name, tallies[name], limit)
        answers["operators"] = self._operators_since(kept_answers["operators"], params["window"], limit)
        answers["cycles"] = cycles
        kept_now = {"answers": {name: answers[name] for name in KEPT}, "tallies": tallies}
        return {name: answers[name] for name in QUESTIONS}, kept_now

    def _touched_of(self, kept: Mapping[str, list[tuple[Any, ...]]]) -> dict[str, set[Any]]:
        """Of the groups the ``kept`` answers name, those the new rows touch (each looked up in its table of
        touched groups): the kept answers about them are asked again, the others stand."""
        named: dict[str, set[Any]] = {group: set() for group in ("label", *(g for g, _ in BY_GROUP.values()))}
        for name, (group, keys) in BY_GROUP.items():
            named[group].update(r[:keys] if keys > 1 else r[0] for r in kept[name])
        named["label"].update(r[6] for r in kept["misbound"])
        touched: dict[str, set[Any]] = {group: set() for group in named}
        for group, values in named.items():
            if not values:
                continue
            columns = [c.strip() for c in _TOUCHED_COLUMNS.get(group, "value").split(",")]
            sql = "SELECT 1 FROM looked.touched WHERE " + " AND ".join(f"{c} = ?" for c in columns)
            self._db.execute("ATTACH DATABASE ? AS looked", (str(self._rows_path(group)),))
            try:
                for value in values:
                    if self._db.execute(sql, value if len(columns) > 1 else (value,)).fetchone() is not None:
                        touched[group].add(value)
            finally:
                self._db.execute("DETACH DATABASE looked")
        return touched

    def _fresh_replayed(
        self,
        futures: Mapping[tuple[str, str], Future[list[tuple[Any, ...]]]],
        kept: Mapping[str, list[tuple[Any, ...]]],
        touched: Mapping[str, set[Any]],
    ) -> bool:
        """Whether the "replayed" answer (as :meth:`grouped_since` merges it) names any manifest."""
        if ("replayed", "whole") in futures:
            return bool(futures["replayed", "whole"].result())
        ours = touched[BY_GROUP["replayed"][0]]
        return any(r[0] not in ours for r in kept["replayed"]) or bool(futures["replayed", "touched"].result())

    def _rows_path(self, group: str) -> Path:
        return self.path.with_name(_ROWS_FILE.format(group))

    def _look_up(self, values: Mapping[str, int]) -> None:
        """Fill the tables of :data:`_ROWS_OF`: for each kind of group (:data:`_TOUCHED`), the groups the new
        rows touch and their rows, looked up once in the kept index, and then the lots at their positions;
        two kinds at a time, each in a database of its own, so that the questions that follow read those
        rows rather than each looking them up."""

        def look_up(group: str) -> None:
            path = self._rows_path(group)
            path.unlink(missing_ok=True)
            db = self._apart(("device", "manifest_id") if group == "lots" else ())
            try:
                db.execute("ATTACH DATABASE ? AS looked", (str(path),))
                db.executescript("PRAGMA looked.journal_mode = OFF; PRAGMA looked.synchronous = OFF; BEGIN;")
                if group == "lots":
                    db.execute(f"CREATE TABLE looked.rows AS {self._both(_LOOK_UP_LOTS, 'lots')}")
                else:
                    columns = _TOUCHED_COLUMNS.get(group, "value")
                    db.execute(f"CREATE TABLE looked.touched ({columns}, PRIMARY KEY ({columns})) WITHOUT ROWID")
                    db.execute(f"INSERT OR IGNORE INTO looked.touched {self._both(_TOUCHED[group])}", values)
                    db.execute(f"CREATE TABLE looked.rows AS {self._both(_LOOK_UP[group])}")
                db.execute("COMMIT")
            finally:
                db.close()

        with ThreadPoolExecutor(2, thread_name_prefix="audit-index") as pool:
            list(pool.map(look_up, _LOOK_UP))
        look_up("lots")

    def _apart(self, groups: Sequence[str]) -> sqlite3.Connection:
        """A connection of its own to the kept index (SQLite works outside the GIL), the touched groups of
        ``groups`` and their rows attached (:data:`_ROWS_OF`)."""
        db = self._connect()
        try:
            for group in groups:
                db.execute(f"ATTACH DATABASE ? AS rows_{group}", (str(self._rows_path(group)),))
        except BaseException:
            db.close()
            raise
        return db

    def _ask_apart(self, sql: str, params: Mapping[str, Any], groups: Sequence[str]) -> list[tuple[Any, ...]]:
        """``sql`` asked on a connection of its own (:meth:`_apart`), the rows of ``groups`` attached."""
        db = self._apart(groups)
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()

    def _query(self, sql: str, *args: Any) -> Iterator[tuple[Any, ...]]:
        yield from self._db.execute(sql, args)

    # --- the grouped questions ---------------------------------------------------------------

    def grouped(
        self, limit: int, parallel: int = 1, params: Mapping[str, float] | None = None
    ) -> dict[str, list[tuple[Any, ...]]]:
        """Answer every question of :data:`QUESTIONS`, each capped at ``limit`` answers; ``params`` are the
        thresholds the questions name (``:max_reworks``, ``:per_minute``, ``:window``).

        Each sorts the whole table once; they run ``parallel`` at a time, each
        on its own connection (SQLite works outside the GIL), longest first.
        """

        params = dict(params or {})

        def ask(name: str, unique: bool = False) -> tuple[str, list[tuple[Any, ...]]]:
            db = self._connect(kept=self.layered)
            try:
                sql = UNIQUE[name] if unique else QUESTIONS[name]
                args = (limit,) if "?" in sql else {"limit": limit, **params} if ":" in sql else ()
                if name == "operators":
                    return name, _overlaps(db.execute(sql), params["window"], limit)
                return name, db.execute(sql, args).fetchall()
            finally:
                db.close()

        # "replayed" first: when it finds no manifest id twice, the questions of UNIQUE are asked without
        # de-duplicating; the others meanwhile
        others = [name for name in QUESTIONS if name != "replayed" and name not in UNIQUE]
        if parallel <= 1:
            answers = dict([ask("replayed")])
            answers.update(map(ask, others))
            answers.update(ask(name, not answers["replayed"]) for name in UNIQUE)
        else:
            with ThreadPoolExecutor(parallel, thread_name_prefix="audit-index") as pool:
                replayed = pool.submit(ask, "replayed")
                rest = [pool.submit(ask, name) for name in others]
                unique = not replayed.result()[1]
                rest += [pool.submit(ask, name, unique) for name in UNIQUE]
                answers = dict([replayed.result(), *(future.result() for future in rest)])
        return {name: answers[name] for name in QUESTIONS}

    def _operators_since(self, kept: list[tuple[Any, ...]], window: float, limit: int) -> list[tuple[Any, ...]]:
        """The "operators" answer: the stretches of each operator and station the new rows name joined with
        their acts, the pairs of the operators they name asked again, the others' kept."""
        acts: dict[tuple[str, int], list[int]] = {}
        for operator, station, time in self._db.execute(
            "SELECT DISTINCT operator, station, time FROM main.entries NOT INDEXED WHERE rowid > ? "
            "AND operator IS NOT NULL",
            (self._last["entries"],),
        ):
            acts.setdefault((operator, station), []).append(time)
        for (operator, station), times in acts.items():
            low, high = min(times) - window, max(times) + window  # further stretches cannot join them
            near = self._db.execute(
                "DELETE FROM main.stretches WHERE operator = ? AND station = ? AND start <= ? AND end >= ? "
                "RETURNING start, end",
                (operator, station, high, low),
            ).fetchall()
            joined = _joined([*near, *((t, t) for t in times)], window)
            self._db.executemany(
                "INSERT INTO main.stretches VALUES (?, ?, ?, ?)", [(operator, station, a, b) for a, b in joined]
            )
        operators = sorted({operator for operator, _ in acts})
        if len(kept) >= limit:  # capped: ask every operator's stretches
            operators, kept = [], []
            where = ""
        else:
            where = f"operator IN ({', '.join('?' * len(operators))}) AND " if operators else "0 AND "
        fresh = _pairs(
            self._db.execute(
                f"SELECT operator, station, start, end FROM main.stretches WHERE {where}end - start > ? "
                "ORDER BY operator, station, start",
                (*operators, window),
            ),
            window,
            limit,
        )
        named = set(operators)
        return sorted([p for p in kept if p[0] not in named] + fresh, key=lambda p: p[0])[:limit]

    def _cycles_since(
        self, kept: list[tuple[Any, ...]], unique: bool, values: Mapping[str, int], params: Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        """The "cycles" answer: for each fixture the new rows name, the units from the first new one's minute
        on counted again (with the rows before them in that minute), the rest of its answer kept; asked of
        the whole index when a manifest is in two rows, a kept answer was capped, or a fixture's fastest
        minute the state kept is among those counted again."""
        whole = (UNIQUE if unique else QUESTIONS)["cycles"]
        if not unique or len(kept) >= params["limit"]:
            return self._ask(whole, params)
        self._db.execute("DROP TABLE IF EXISTS temp.touched_fixture")
        self._db.execute(
            "CREATE TEMP TABLE touched_fixture (station, fixture, since, PRIMARY KEY (station, fixture)) WITHOUT ROWID"
        )
        self._db.execute(
            "INSERT INTO touched_fixture SELECT station, fixture, MIN(time) FROM main.entries NOT INDEXED "
            f"WHERE rowid > :last AND event IN {_ASSIGNING} GROUP BY station, fixture",
            values,
        )
        since = {(s, f): t for s, f, t in self._db.execute("SELECT * FROM touched_fixture")}
        if any(row[3] >= since.get((row[0], row[1]), row[3] + 1) for row in kept):
            return self._ask(whole, params)

        def minutes(old: bool) -> dict[tuple[int, int], tuple[Any, ...]]:
            matching = self._both(
                "SELECT e.station, e.fixture, e.time, e.position, e.manifest_id, e.hardware_id, e.serial, e.export, "
                "t.since FROM touched_fixture t CROSS JOIN {entries} e "
                "ON e.station = t.station AND e.fixture = t.fixture AND e.time >= t.since - 59 "
                f"WHERE e.event IN {_ASSIGNING}" + (" AND e.export < :first" if old else "")
            )
            sql = _cycles(matching).replace(") WHERE n > :per_minute", ") WHERE n > :per_minute AND time >= since")
            return {(r[0], r[1]): r for r in self._ask(sql, {**params, **values, "limit": -1})}

        now, before = minutes(False), minutes(True)
        answers = [row for row in kept if (row[0], row[1]) not in since]
        for group in since:
            old = next((row for row in kept if (row[0], row[1]) == group), None)
            over = (old[9] if old else 0) - (before[group][9] if group in before else 0)
            new = now.get(group)
            over += new[9] if new else 0
            if over:
                best = new if new is not None and (old is None or new[2] > old[2]) else old
                assert best is not None
                answers.append((*best[:9], over))
        return sorted(answers, key=lambda r: (r[0], r[1]))[: params["limit"]]

    def rows_for_units(
        self, units: Sequence[tuple[int, int, int]], limit: int
    ) -> dict[tuple[int, int, int], list[Any]]:
        """For each (station, audited release, unit), its first ``limit`` rows in the form of
        :meth:`rows_for` (station, export, position, manifest id, event, hardware id, serial), in log order."""
        found: dict[tuple[int, int, int], list[Any]] = {(int(s), int(b), int(u)): [] for s, b, u in units}
        if not found:
            return found
        self._db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted_units (station INTEGER, bundle INTEGER, unit INTEGER)")
        self._db.execute("DELETE FROM wanted_units")
        self._db.executemany("INSERT INTO wanted_units VALUES (?, ?, ?)", list(found))
        join = "CROSS JOIN" if self._indexed else "JOIN"  # through the kept index's, or SQLite's own choice
        matching = self._both(
            "SELECT e.unit, e.in_bundle, e.station, e.export, e.position, e.manifest_id, e.event, e.hardware_id, "
            f"e.serial FROM wanted_units w {join} {{entries}} e "
            "ON e.station = w.station AND e.in_bundle = w.bundle AND e.unit = w.unit"
        )
        for row in self._query(f"SELECT * FROM ({matching}) ORDER BY station, position"):
            rows = found[(row[2], row[1], row[0])]
            if len(rows) < limit:
                rows.append(row[2:])
        return found

    def rows_during(
        self, spans: Sequence[tuple[int, str, int, int]], limit: int
    ) -> dict[tuple[int, str, int, int], list[Any]]:
        """For each (station, operator, start, end), the first ``limit`` rows of that operator at that station
        with a time from start to end, in the form of :meth:`rows_for`, in log order."""
        found: dict[tuple[int, str, int, int], list[Any]] = {span: [] for span in spans}
        if not found:
            return found
        self._db.execute(
            "CREATE TEMP TABLE IF NOT EXISTS spans (station INTEGER, operator TEXT, t0 INTEGER, t1 INTEGER)"
        )
        self._db.execute("DELETE FROM spans")
        self._db.executemany("INSERT INTO spans VALUES (?, ?, ?, ?)", list(found))
        for row in self._query(
            "SELECT s.station, s.operator, s.t0, s.t1, e.station, e.export, e.position, e.manifest_id, e.event, "
            "e.hardware_id, e.serial FROM entries e JOIN spans s ON e.station = s.station AND e.operator = s.operator "
            "AND e.time BETWEEN s.t0 AND s.t1 ORDER BY e.station, e.position"
        ):
            rows = found[row[:4]]
            if len(rows) < limit:
                rows.append(row[4:])
        return found

    def vanished(
        self, station: int, later: int, earlier: Sequence[int], ranges: Sequence[tuple[int, int]], limit: int
    ) -> tuple[int, list[tuple[Any, ...]]]:
        """The entries of a station's ``earlier`` exports at positions in ``ranges`` that export ``later``
        does not carry at the same position: how many (each distinct manifest once), and the first
        ``limit`` as (export, position, manifest id, hardware id, serial), in log order."""
        if not earlier or not ranges:
            return 0, []
        self._db.execute(
            "CREATE TEMP TABLE IF NOT EXISTS kept (position INTEGER, manifest_id TEXT, "
            "PRIMARY KEY (position, manifest_id)) WITHOUT ROWID"
        )
        self._db.execute("DELETE FROM kept")
        self._db.execute(
            "INSERT OR IGNORE INTO kept SELECT position, manifest_id FROM entries WHERE station = ? AND export = ?",
            (int(station), int(later)),
        )
        exports = ", ".join(str(int(e)) for e in earlier)  # this audit's own integers
        where = " OR ".join(f"(position >= {int(a)} AND position < {int(b)})" for a, b in ranges)
        sql = (
            "SELECT MIN(export), position, manifest_id, hardware_id, serial FROM entries "
            f"WHERE station = {int(station)} AND export IN ({exports}) AND ({where}) "
            "AND NOT EXISTS (SELECT 1 FROM kept k WHERE k.position = entries.position "
            "AND k.manifest_id = entries.manifest_id) GROUP BY position, manifest_id ORDER BY position"
        )
        count = self._db.execute(f"SELECT COUNT(*) FROM ({sql})").fetchone()[0]
        return int(count), self._db.execute(f"{sql} LIMIT ?", (int(limit),)).fetchall()

    def rows_for(self, column: str, values: Sequence[str], limit: int) -> dict[str, list[tuple[Any, ...]]]:
        """For each of ``values``, the first ``limit`` rows (station, export, position, manifest id, event,
        hardware id, serial) with ``column`` equal to it, in log order; one pass over the table for all."""
        if column not in ("manifest_id", "hardware_id", "serial", "device_key_id"):
            raise ValueError(column)
        found: dict[str, list[tuple[Any, ...]]] = {value: [] for value in values}
        if not values:
            return found
        self._db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted (value TEXT PRIMARY KEY)")
        self._db.execute("DELETE FROM wanted")
        self._db.executemany("INSERT OR IGNORE INTO wanted VALUES (?)", [(v,) for v in values])
        matching = self._both(
            f"SELECT {column}, station, export, position, manifest_id, event, hardware_id, serial FROM {{entries}} "
            f"WHERE {column} IN (SELECT value FROM wanted)"
        )
        for row in self._query(f"SELECT * FROM ({matching}) ORDER BY station, position"):
            rows = found[row[0]]
            if len(rows) < limit:
                rows.append(row[1:])
        return found

    def unit_rows(self, serials: Sequence[str], limit: int) -> dict[str, tuple[int, list[tuple[Any, ...]]]]:
        """For each of ``serials``, how many distinct manifests name it and the first ``limit`` of them
        (station, export, position, manifest id, event, hardware id, time, fixture, operator, failed step), in
        log order; a manifest exported twice is listed once (from its first export). One query for all."""
        found: dict[str, tuple[int, list[tuple[Any, ...]]]] = {}
        if not serials:
            return found
        self._db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted_serials (value TEXT PRIMARY KEY)")
        self._db.execute("DELETE FROM wanted_serials")
        self._db.executemany("INSERT OR IGNORE INTO wanted_serials VALUES (?)", [(s,) for s in serials])
        sql = (
            "SELECT serial, n, station, export, position, manifest_id, event, hardware_id, time, fixture, operator, "
            "failed_step FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY serial ORDER BY station, position) AS r, "
            "COUNT(*) OVER (PARTITION BY serial) AS n FROM ("
            "SELECT serial, station, MIN(export) AS export, position, manifest_id, event, hardware_id, time, "
            "fixture, operator, failed_step FROM ("
            + self._both("SELECT * FROM {entries} WHERE serial IN (SELECT value FROM wanted_serials)")
            + ") "
            "GROUP BY serial, station, position, manifest_id)) WHERE r <= ? ORDER BY serial, station, position"
        )
        for row in self._query(sql, int(limit)):
            total, rows = found.setdefault(row[0], (int(row[1]), []))
            rows.append(row[2:])
        return found
