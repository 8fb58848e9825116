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
    device_key_id TEXT,
    unit INTEGER,
    in_bundle INTEGER NOT NULL,    -- 1 when the manifest is for the audited bundle
    time TEXT NOT NULL
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
            f"INSERT INTO entries VALUES ({int(station)}, {int(export)}, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
        )

    def finish_loading(self) -> None:
        """Commit what was loaded; queries may follow."""
        self._db.execute("COMMIT")

    def _query(self, sql: str, *args: Any) -> Iterator[tuple[Any, ...]]:
        yield from self._db.execute(sql, args)

    # --- identities ----------------------------------------------------------------------------

    def replayed_ids(self, limit: int) -> Iterator[tuple[str, int]]:
        """Manifest ids at more than one log position: (id, positions)."""
        return self._query(
            "SELECT manifest_id, COUNT(DISTINCT station || ':' || position) AS n FROM entries "
            "GROUP BY manifest_id HAVING n > 1 LIMIT ?",
            limit,
        )

    def twice_provisioned(self, limit: int) -> Iterator[tuple[str, int]]:
        """Hardware ids with more than one 'provisioned' manifest: (hardware id, manifests)."""
        return self._query(
            "SELECT hardware_id, COUNT(DISTINCT manifest_id) AS n FROM entries WHERE event = 'provisioned' "
            "GROUP BY hardware_id HAVING n > 1 LIMIT ?",
            limit,
        )

    def two_keys(self, limit: int) -> Iterator[tuple[str, int]]:
        """Hardware ids provisioned or reworked with more than one device key: (hardware id, keys)."""
        return self._query(
            f"SELECT hardware_id, COUNT(DISTINCT device_key_id) AS n FROM entries WHERE event IN {_ASSIGNING} "
            "AND device_key_id IS NOT NULL GROUP BY hardware_id HAVING n > 1 LIMIT ?",
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

    def reworked_unknown(self, limit: int) -> Iterator[tuple[str]]:
        """Hardware ids reworked but never provisioned in the evidence."""
        return self._query(
            "SELECT hardware_id FROM entries WHERE event = 'rework' "
            "EXCEPT SELECT hardware_id FROM entries WHERE event = 'provisioned' LIMIT ?",
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

    def units(self) -> dict[int, dict[str, int]]:
        """Per station, for the audited bundle: units reserved, the highest unit, devices provisioned,
        and how many units ended in each event (the event of the unit's last manifest)."""
        out: dict[int, dict[str, int]] = {}
        for station, reserved, highest, devices in self._query(
            "SELECT station, COUNT(DISTINCT unit), MAX(unit), "
            "COUNT(DISTINCT CASE WHEN event = 'provisioned' THEN hardware_id END) "
            "FROM entries WHERE in_bundle = 1 GROUP BY station"
        ):
            out[station] = {"reserved": reserved, "max_unit": highest or 0, "provisioned_devices": devices}
        # SQLite returns the other columns of the row that holds MAX(position)
        for station, event, count in self._query(
            "SELECT station, event, COUNT(*) FROM (SELECT station, unit, event, MAX(position) FROM entries "
            "WHERE in_bundle = 1 AND unit IS NOT NULL GROUP BY station, unit) GROUP BY station, event"
        ):
            out.setdefault(station, {"reserved": 0, "max_unit": 0, "provisioned_devices": 0})[f"final:{event}"] = count
        return out

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
