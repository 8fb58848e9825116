"""The station's durable state: one SQLite database in WAL mode with full sync.

It holds what must survive a crash at any instant and be shared by every
fixture process on the station:

- ``meta``: the station id and root fingerprint it was made for, the highest
  trust policy version seen and the policy itself;
- ``products``: the highest security counter loaded per product;
- ``releases``: each release loaded, with this station's allocation;
- ``devices``: every identity the station has bound: hardware id, serial,
  device key (each unique);
- ``units``: the units reserved from each release's allocation, with the
  process that reserved them and whether their manifest is written;
- ``log``: the manifests in log order (the Merkle tree's leaves);
- ``exports``: each evidence export's tree size, root and checkpoint.

A unit is reserved in its own ``BEGIN IMMEDIATE`` transaction, committed
before the device is touched, so the allocation is never exceeded however
many processes race and whenever one dies. The manifest that ends a unit is
appended in the transaction that marks the unit done. A unit reserved by a
process that died is found by :meth:`State.orphans` (its owner's lock file
is free) and closed with an "interrupted" manifest.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vault.errors import StateError

__all__ = ["DeviceRecord", "State"]

_SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS products (product TEXT PRIMARY KEY, security_counter INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS releases (
    bundle_id TEXT PRIMARY KEY, product TEXT NOT NULL, version TEXT NOT NULL,
    security_counter INTEGER NOT NULL, allocation INTEGER NOT NULL,
    not_before TEXT NOT NULL, expires TEXT NOT NULL, statement_sha256 TEXT NOT NULL, loaded TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    hardware_id TEXT PRIMARY KEY, serial TEXT NOT NULL UNIQUE, device_key_id TEXT UNIQUE,
    state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS units (
    bundle_id TEXT NOT NULL, unit INTEGER NOT NULL, hardware_id TEXT NOT NULL, owner TEXT NOT NULL,
    fixture INTEGER NOT NULL, operator TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bundle_id, unit), UNIQUE (bundle_id, hardware_id));
CREATE TABLE IF NOT EXISTS log (
    sequence INTEGER PRIMARY KEY, manifest_id TEXT NOT NULL UNIQUE, event TEXT NOT NULL,
    hardware_id TEXT NOT NULL, time TEXT NOT NULL, envelope BLOB NOT NULL, leaf_hash BLOB NOT NULL,
    certificate BLOB);
CREATE TABLE IF NOT EXISTS exports (
    sequence INTEGER PRIMARY KEY, size INTEGER NOT NULL, root BLOB NOT NULL, checkpoint BLOB NOT NULL,
    path TEXT NOT NULL, created TEXT NOT NULL);
"""


@dataclass(frozen=True)
class DeviceRecord:
    """An identity the station has bound."""

    hardware_id: str
    serial: str
    device_key_id: str | None
    state: str  # reserved, provisioned, failed, scrapped


class State:
    """The station's state folder: the database and the lock files of the processes using it.

    Each thread gets its own connection; each :class:`State` holds an
    exclusive lock on its owner file for as long as it is open, which is how
    another process tells a live fixture's reservation from a dead one's.

    Raises:
        StateError: the folder cannot be used, or belongs to another station or root.
    """

    def __init__(self, directory: str | os.PathLike[str], *, station_id: str, root_sha256: str) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            (self.directory / "owners").mkdir(mode=0o700, exist_ok=True)
        except OSError as e:
            raise StateError(f"cannot use the station state folder {self.directory}: {e.strerror or e}") from e
        self.path = self.directory / "station.sqlite"
        self.owner = uuid.uuid4().hex
        self._local = threading.local()
        self._writing = threading.Lock()
        self._owner_file = open(self.directory / "owners" / f"{self.owner}.lock", "wb")  # noqa: SIM115 (held open)
        fcntl.flock(self._owner_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            with self.write() as db:
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(statement)
                self._pin(db, "schema", _SCHEMA_VERSION, "state schema version")
                self._pin(db, "station_id", station_id, "station id")
                self._pin(db, "root_sha256", root_sha256, "root certificate")
        except BaseException:
            self.close()
            raise

    # --- connections and transactions ---------------------------------------

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=True)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.execute("PRAGMA foreign_keys=ON")
            except sqlite3.Error as e:
                raise StateError(f"cannot open the station state {self.path}: {e}") from e
            self._local.db = db
            connections = self.__dict__.setdefault("_connections", [])
            connections.append(db)
        return db

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): commits when the block ends, rolls back on an error."""
        db = self._connection()
        with self._writing:  # threads queue here; SQLite's own busy wait (sleeps) is left to other processes
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise StateError(f"cannot lock the station state {self.path}: {e}") from e
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            try:
                db.execute("COMMIT")
            except sqlite3.Error as e:
                raise StateError(f"cannot commit to the station state {self.path}: {e}") from e

    def read(self) -> sqlite3.Connection:
        """A connection for reads outside a transaction (each statement sees a consistent snapshot)."""
        return self._connection()

    def close(self) -> None:
        """Close every connection and release the owner lock."""
        for db in self.__dict__.get("_connections", []):
            with contextlib.suppress(sqlite3.Error):
                db.close()
        self.__dict__["_connections"] = []
        self._local = threading.local()
        if not self._owner_file.closed:
            self._owner_file.close()
            with contextlib.suppress(OSError):
                (self.directory / "owners" / f"{self.owner}.lock").unlink()

    # --- meta ----------------------------------------------------------------

    @staticmethod
    def _pin(db: sqlite3.Connection, key: str, value: str, what: str) -> None:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
        elif row[0] != value:
            raise StateError(f"the station state folder was made for another {what} ({row[0][:16]}, not {value[:16]})")

    def meta(self, key: str, default: Any = None) -> Any:
        """A value from ``meta``."""
        row = self.read().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    @staticmethod
    def meta_in(db: sqlite3.Connection, key: str) -> Any:
        """A value from ``meta`` read inside the caller's transaction."""
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    @staticmethod
    def set_meta(db: sqlite3.Connection, key: str, value: Any) -> None:
        """Set a ``meta`` value inside a write transaction."""
        db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = ?", (key, value, value)
        )

    # --- devices and units ---------------------------------------------------

    @staticmethod
    def device(
        db: sqlite3.Connection,
        *,
        hardware_id: str | None = None,
        serial: str | None = None,
        device_key_id: str | None = None,
    ) -> DeviceRecord | None:
        """The bound identity with that hardware id, serial or device key, if any."""
        column, value = next(
            (c, v)
            for c, v in (("hardware_id", hardware_id), ("serial", serial), ("device_key_id", device_key_id))
            if v is not None
        )
        row = db.execute(
            f"SELECT hardware_id, serial, device_key_id, state FROM devices WHERE {column} = ?", (value,)
        ).fetchone()
        return None if row is None else DeviceRecord(*row)

    def orphans(self) -> list[tuple[str, int, str, int, str]]:
        """Units reserved by processes that are gone, without a manifest: (bundle, unit, hwid, fixture, operator)."""
        rows = (
            self.read()
            .execute("SELECT bundle_id, unit, hardware_id, owner, fixture, operator FROM units WHERE done = 0")
            .fetchall()
        )
        alive: dict[str, bool] = {}
        found = []
        for bundle_id, unit, hardware_id, owner, fixture, operator in rows:
            if owner not in alive:
                alive[owner] = owner == self.owner or self._owner_alive(owner)
            if not alive[owner]:
                found.append((bundle_id, unit, hardware_id, fixture, operator))
        return found

    def _owner_alive(self, owner: str) -> bool:
        path = self.directory / "owners" / f"{owner}.lock"
        try:
            with open(path, "rb") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return True
        except FileNotFoundError:
            return False
        with contextlib.suppress(OSError):
            path.unlink()
        return False
