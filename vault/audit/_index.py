"""The audit's identity index: one row per verified manifest, on disk, queried once at the end.

The main process appends rows as chunks come back from the workers (no
index is maintained while loading, so each insert is cheap); the questions
that span all stations and exports (the same hardware id provisioned twice,
one serial or one device key on two devices, a manifest id seen twice, the
units each station reserved and how each ended, the first-pass yield) are
answered by a handful of grouped queries over the whole table at the end.
SQLite sorts on disk, so memory stays bounded however many manifests there are.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from vault.audit._worker import Row

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
    device_key_id TEXT
)
"""

_ASSIGNING = "('provisioned', 'rework')"  # events after which the device holds its serial and key


class Index:
    """A temporary SQLite table of manifests (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / "audit-index.sqlite"
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.executescript(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA temp_store = FILE;"
            "PRAGMA cache_size = -32768;" + _SCHEMA
        )
        self._db.execute("BEGIN")

    def __enter__(self) -> Index:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._db.close()

    def add(self, station: int, export: int, rows: Sequence[Row]) -> None:
        """Append the rows of one chunk."""
        # station and export are this audit's own integers, so they can be spelled into the statement
        self._db.executemany(
            f"INSERT INTO entries VALUES ({int(station)}, {int(export)}, ?, ?, ?, ?, ?, ?)", rows
        )

    def finish_loading(self) -> None:
        """Commit what was loaded; queries may follow."""
        self._db.execute("COMMIT")

    def _query(self, sql: str, *args: Any) -> Iterator[tuple[Any, ...]]:
        yield from self._db.execute(sql, args)

    # --- identities ----------------------------------------------------------------------------

    def replayed_ids(self, limit: int) -> Iterator[tuple[str, int]]:
        """Manifest ids in more than one row: (id, rows); the same manifest exported twice is one of them."""
        return self._query(
            "SELECT manifest_id, COUNT(*) AS n FROM entries GROUP BY manifest_id HAVING n > 1 LIMIT ?", limit
        )

    def devices(self, limit: int) -> Iterator[tuple[str, int, int, int]]:
        """Hardware ids that are suspect, in one pass: provisioned by more than one manifest, holding more
        than one device key, or reworked but never provisioned: (hardware id, provisioned manifests, 2 when it
        has several keys, reworks). The same manifest exported twice counts twice here; the caller looks closer."""
        key = f"CASE WHEN event IN {_ASSIGNING} THEN device_key_id END"
        return self._query(
            f"SELECT hardware_id, SUM(event = 'provisioned') AS p, 1 + (MIN({key}) <> MAX({key})) AS k, "
            "SUM(event = 'rework') AS r FROM entries GROUP BY hardware_id HAVING p > 1 OR k > 1 OR (r > 0 AND p = 0) "
            "LIMIT ?",
            limit,
        )

    def shared(self, column: str, limit: int) -> Iterator[tuple[str, int]]:
        """Serials or device keys held by more than one hardware id: (value, devices)."""
        if column not in ("serial", "device_key_id"):
            raise ValueError(column)
        return self._query(
            f"SELECT {column}, COUNT(DISTINCT hardware_id) AS n FROM entries WHERE event IN {_ASSIGNING} "
            f"AND {column} IS NOT NULL GROUP BY {column} HAVING n > 1 LIMIT ?",
            limit,
        )

    def rows_where(self, column: str, value: str, limit: int) -> list[tuple[Any, ...]]:
        """(station, export, position, manifest id, event, hardware id, serial) of the rows with ``column = value``."""
        if column not in ("manifest_id", "hardware_id", "serial", "device_key_id"):
            raise ValueError(column)
        return list(
            self._query(
                "SELECT station, export, position, manifest_id, event, hardware_id, serial FROM entries "
                f"WHERE {column} = ? ORDER BY station, position LIMIT ?",
                value,
                limit,
            )
        )

    # --- counts --------------------------------------------------------------------------------

    def first_pass(self) -> dict[int, tuple[int, int]]:
        """Per station: (devices attempted, devices provisioned at their first attempt)."""
        return {
            station: (attempted, first)
            for station, attempted, first in self._query(
                "SELECT station, COUNT(*), SUM(event = 'provisioned') FROM ("
                "SELECT station, hardware_id, event, MIN(position) FROM entries "
                "WHERE event IN ('provisioned', 'failed', 'label-mismatch') GROUP BY station, hardware_id"
                ") GROUP BY station"
            )
        }
