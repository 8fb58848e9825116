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
- ``exports``: each evidence export's tree size, root and checkpoint;
- ``sealed_secrets``: each per-device secret a manifest records, sealed to the
  device maker's secrets recipient (never the secret itself), by log position;
- ``closed``: the releases this station closed (or is closing), each with
  its signed close-out once made (see :meth:`vault.verify.Station.close`);
- ``reserved``: units reserved per release (units recovered without a
  manifest count here too, see :mod:`vault.verify._recover`).

**The head in the token.** The log's size and root and the units reserved
per release are also kept in the station token (a head record, see
:mod:`vault.token._heads`). Every write transaction runs under the folder's
lock (``head.lock``) and the anchor's own (one per token on the machine);
inside them the token's head is read and
checked against the database *before* the caller's changes, and the new head
is written to the token *after* the commit. So the database is never behind
the token except when it is an older copy or another folder, and it is
ahead of it only after a crash between the commit and the token write, which
the next transaction repairs: the database then extends the token's head
(the root the token names is the root of the database's log at that size,
and no release has fewer units). See docs/adr/0005-token-heads.md.

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
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from vault import merkle
from vault.errors import StateError

__all__ = ["STATE_FILES", "Anchor", "DeviceRecord", "LogHead", "State"]

_SCHEMA_VERSION = "2"
_BUNDLE_ID = re.compile(r"[0-9a-f]{32}")
STATE_FILES = ("station.sqlite", "station.sqlite-wal", "station.sqlite-shm", "head.lock")  # beside owners/
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
    certificate BLOB, root BLOB);
CREATE TABLE IF NOT EXISTS reserved (bundle_id TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS exports (
    sequence INTEGER PRIMARY KEY, size INTEGER NOT NULL, root BLOB NOT NULL, checkpoint BLOB NOT NULL,
    path TEXT NOT NULL, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS closed (bundle_id TEXT PRIMARY KEY, started TEXT NOT NULL, closeout BLOB);
CREATE TABLE IF NOT EXISTS sealed_secrets (
    sequence INTEGER NOT NULL, name TEXT NOT NULL, sealed BLOB NOT NULL, PRIMARY KEY (sequence, name));
"""


@dataclass(frozen=True)
class DeviceRecord:
    """An identity the station has bound."""

    hardware_id: str
    serial: str
    device_key_id: str | None
    state: str  # reserved, provisioned, failed, scrapped


@dataclass(frozen=True)
class LogHead:
    """What the station token vouches for: the log's size and root, and the units reserved per release."""

    size: int
    root: bytes
    reserved: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)  # the highest security counter loaded per product
    policy_version: int = 0  # the highest trust policy version loaded
    exports: int = 0  # the last evidence export's sequence
    closed: tuple[str, ...] = ()  # the releases (bundle ids, sorted) closed: no further unit of them

    @property
    def empty(self) -> bool:
        """Nothing was ever logged, reserved, loaded or closed."""
        loaded = self.counters or self.policy_version or self.exports or self.closed
        return self.size == 0 and not any(self.reserved.values()) and not loaded

    def to_value(self) -> dict[str, Any]:
        """The head record's value."""
        return {
            "size": self.size,
            "root": self.root.hex(),
            "reserved": dict(sorted(self.reserved.items())),
            "counters": dict(sorted(self.counters.items())),
            "policy_version": self.policy_version,
            "exports": self.exports,
            # only once a release is closed, so heads of stations that never closed one stay as they were
            **({"closed": list(self.closed)} if self.closed else {}),
        }

    def behind(self, other: LogHead) -> bool:
        """Whether this head lacks something ``other`` has: log entries, units, a counter or a policy version."""
        return (
            self.size < other.size
            or any(self.reserved.get(b, 0) < n for b, n in other.reserved.items())
            or any(self.counters.get(p, -1) < c for p, c in other.counters.items())
            or self.policy_version < other.policy_version
            or self.exports < other.exports
            or not set(other.closed) <= set(self.closed)
        )

    @classmethod
    def from_value(cls, value: dict[str, Any]) -> LogHead:
        """The head a record holds.

        Raises:
            StateError: the record is not a station log head.
        """
        try:
            size, root, reserved = value["size"], bytes.fromhex(value["root"]), value["reserved"]
            if not (isinstance(size, int) and size >= 0 and len(root) == merkle.HASH_SIZE):
                raise ValueError("out of range")
            counts = _counts(reserved)
            counters = _counts(value.get("counters", {}))
            policy_version, exports = value.get("policy_version", 0), value.get("exports", 0)
            if not isinstance(policy_version, int) or policy_version < 0:
                raise ValueError("bad policy version")
            if not isinstance(exports, int) or exports < 0:
                raise ValueError("bad export count")
            closed = _bundle_ids(value.get("closed", []))  # absent from heads written before close-outs
        except (KeyError, TypeError, ValueError) as e:
            raise StateError(f"the station token's head record is malformed ({e})") from e
        return cls(size, root, counts, counters, policy_version, exports, closed)

    def describe(self) -> str:
        """One line for people: ``12 log entries (root 3fa4…), 9 units reserved``."""
        units = sum(self.reserved.values())
        text = f"{self.size} log entries (root {self.root.hex()[:12]}), {units} units reserved"
        if self.size == 0 and not units and (self.counters or self.policy_version):
            seen = ", ".join(f"{product} {counter}" for product, counter in sorted(self.counters.items()))
            text += f", trust policy v{self.policy_version} and security counters {seen or 'none'} loaded"
        if self.closed:
            text += f", {len(self.closed)} release(s) closed"
        return text


def _bundle_ids(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(b, str) and _BUNDLE_ID.fullmatch(b) for b in value):
        raise ValueError("bad closed releases")
    return tuple(sorted(set(value)))


def _counts(value: object) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ValueError("counts are not a mapping")
    counts = {str(k): v for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool) and v >= 0}
    if len(counts) != len(value):
        raise ValueError("bad count")
    return counts


class Anchor(Protocol):
    """Where a state folder's head is kept outside the folder (the station token)."""

    def read(self) -> LogHead | None:
        """The head the anchor holds, if any."""

    def check(self, db: sqlite3.Connection, held: LogHead | None, mine: LogHead) -> None:
        """Refuse (StateError) a database that is not the anchored one; ``mine`` is its head before any change."""

    def advance(self, held: LogHead | None, new: LogHead) -> None:
        """Record ``new`` (after the commit); ``held`` is what :meth:`read` returned under the same lock."""

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """Hold the anchor for one write: shared by every folder and process that writes to it."""


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
        self.made_directories = [p for p in (*reversed(self.directory.parents), self.directory) if not p.exists()]
        self.created = not (self.directory / "station.sqlite").exists()
        self.anchor: Anchor | None = None
        self._local = threading.local()
        self._writing = threading.Lock()
        self.path = self.directory / "station.sqlite"
        self.owner = uuid.uuid4().hex
        try:
            try:
                self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                (self.directory / "owners").mkdir(mode=0o700, exist_ok=True)
                self._owner_file = open(self.directory / "owners" / f"{self.owner}.lock", "wb")  # noqa: SIM115
                fcntl.flock(self._owner_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._head_lock = open(self.directory / "head.lock", "ab")  # noqa: SIM115 (held open)
            except OSError as e:
                raise StateError(f"cannot use the station state folder {self.directory}: {e.strerror or e}") from e
            with self.write() as db:
                if State.meta_in_if_any(db, "schema") == "1":
                    _migrate_from_1(db)
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(statement)
                self._pin(db, "schema", _SCHEMA_VERSION, "state schema version")
                self._pin(db, "station_id", station_id, "station id")
                self._pin(db, "root_sha256", root_sha256, "root certificate")
        except BaseException:  # a refusal, an error or Ctrl-C: a folder this call made is not left behind
            self.close()
            if self.created:
                self.discard_new()
            raise

    def discard_new(self) -> None:
        """Remove what opening a new folder made (call after :meth:`close`, before anything was recorded).

        Nothing is removed while another process has the folder open (several
        fixture processes may be opening one new folder at once).
        """
        if folder_in_use(self.directory):
            return
        for name in STATE_FILES:
            with contextlib.suppress(OSError):
                (self.directory / name).unlink()
        with contextlib.suppress(OSError):
            (self.directory / "owners").rmdir()
        for directory in reversed(self.made_directories):  # the folder and any parents this open made
            with contextlib.suppress(OSError):
                directory.rmdir()

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
        """A write transaction (``BEGIN IMMEDIATE``): commits when the block ends, rolls back on an error.

        With an :attr:`anchor`, the anchor's head is checked against the
        database's before the block runs, and advanced after the commit, all
        under the folder's head lock and the anchor's own lock (one writer at
        a time across processes, and across folders using one token).
        """
        db = self._connection()
        with self._writing:  # threads queue here, processes on the head lock below
            fcntl.flock(self._head_lock, fcntl.LOCK_EX)
            try:
                try:
                    db.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as e:
                    raise StateError(f"cannot lock the station state {self.path}: {e}") from e
                anchor = self.anchor
                with anchor.exclusive() if anchor is not None else contextlib.nullcontext():
                    try:
                        if anchor is not None:
                            held = anchor.read()
                            before = self.head_in(db)
                            anchor.check(db, held, before)
                        yield db
                        after = self.head_in(db) if anchor is not None else None
                    except BaseException:
                        db.execute("ROLLBACK")
                        raise
                    try:
                        db.execute("COMMIT")
                    except sqlite3.Error as e:
                        raise StateError(f"cannot commit to the station state {self.path}: {e}") from e
                    changed = after is not None and held != after and not (held is None and after.empty)
                    if anchor is not None and after is not None and changed:
                        anchor.advance(held, after)
            finally:
                fcntl.flock(self._head_lock, fcntl.LOCK_UN)

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
        head_lock = self.__dict__.get("_head_lock")
        if head_lock is not None and not head_lock.closed:
            head_lock.close()
        owner_file = self.__dict__.get("_owner_file")
        if owner_file is None:
            return
        if not owner_file.closed:
            owner_file.close()
            with contextlib.suppress(OSError):
                (self.directory / "owners" / f"{self.owner}.lock").unlink()

    # --- the log's head ---------------------------------------------------------

    @staticmethod
    def head_in(db: sqlite3.Connection) -> LogHead:
        """The database's head inside the caller's transaction."""
        row = db.execute("SELECT sequence, root FROM log ORDER BY sequence DESC LIMIT 1").fetchone()
        size, root = (0, merkle.EMPTY_ROOT) if row is None else (int(row[0]) + 1, bytes(row[1]))
        reserved = dict(db.execute("SELECT bundle_id, count FROM reserved WHERE count > 0").fetchall())
        counters = dict(db.execute("SELECT product, security_counter FROM products").fetchall())
        version = db.execute("SELECT value FROM meta WHERE key = 'policy_version'").fetchone()
        exports = db.execute("SELECT COALESCE(MAX(sequence), 0) FROM exports").fetchone()[0]
        closed = tuple(r[0] for r in db.execute("SELECT bundle_id FROM closed ORDER BY bundle_id"))
        version_seen = 0 if version is None else int(version[0])
        return LogHead(size, root, reserved, counters, version_seen, int(exports), closed)

    @staticmethod
    def root_at(db: sqlite3.Connection, size: int) -> bytes | None:
        """The log's root when it had ``size`` entries, if it has that many."""
        if size == 0:
            return merkle.EMPTY_ROOT
        row = db.execute("SELECT root FROM log WHERE sequence = ?", (size - 1,)).fetchone()
        return None if row is None else bytes(row[0])

    @staticmethod
    def append_leaf(db: sqlite3.Connection, sequence: int, leaf: bytes) -> bytes:
        """Grow the stored tree by the leaf at ``sequence`` (the next one); returns the new root."""
        frontier = State.meta_in(db, "log_frontier")
        hashes = bytes(frontier or b"")
        tree = merkle.TreeBuilder.from_frontier(
            sequence, [hashes[i : i + merkle.HASH_SIZE] for i in range(0, len(hashes), merkle.HASH_SIZE)]
        )
        tree.append(leaf)
        State.set_meta(db, "log_frontier", b"".join(tree.frontier))
        return tree.root()

    @staticmethod
    def used(db: sqlite3.Connection, bundle_id: str) -> int:
        """Units reserved from a release's allocation."""
        row = db.execute("SELECT count FROM reserved WHERE bundle_id = ?", (bundle_id,)).fetchone()
        return 0 if row is None else int(row[0])

    @staticmethod
    def reserve_next(db: sqlite3.Connection, bundle_id: str) -> int:
        """Count one more unit of the release; returns its number (from 1)."""
        db.execute(
            "INSERT INTO reserved (bundle_id, count) VALUES (?, 1) "
            "ON CONFLICT(bundle_id) DO UPDATE SET count = count + 1",
            (bundle_id,),
        )
        return State.used(db, bundle_id)

    # --- meta ----------------------------------------------------------------

    @staticmethod
    def _pin(db: sqlite3.Connection, key: str, value: str, what: str) -> None:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
        elif row[0] != value:
            raise StateError(f"the station state folder was made for another {what} ({row[0][:16]}, not {value[:16]})")

    @staticmethod
    def meta_in_if_any(db: sqlite3.Connection, key: str) -> Any:
        """A value from ``meta``, or ``None`` when the folder is new (no table yet)."""
        try:
            return State.meta_in(db, key)
        except sqlite3.OperationalError:
            return None

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


def folder_in_use(folder: Path) -> bool:
    """Whether a live process has a state folder open (each holds its owner lock while it runs).

    It only tests the locks: unlike :meth:`State.orphans` it removes nothing.
    """
    for owner in (folder / "owners").glob("*.lock"):
        try:
            with open(owner, "rb") as f:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            continue
    return False


def _migrate_from_1(db: sqlite3.Connection) -> None:
    """Schema 1 had no per-entry roots, no stored frontier and counted units by rows."""
    db.execute("ALTER TABLE log ADD COLUMN root BLOB")
    tree = merkle.TreeBuilder()
    for sequence, leaf in db.execute("SELECT sequence, leaf_hash FROM log ORDER BY sequence").fetchall():
        tree.append(bytes(leaf))
        db.execute("UPDATE log SET root = ? WHERE sequence = ?", (tree.root(), sequence))
    State.set_meta(db, "log_frontier", b"".join(tree.frontier))
    db.execute("CREATE TABLE reserved (bundle_id TEXT PRIMARY KEY, count INTEGER NOT NULL)")
    db.execute("INSERT INTO reserved SELECT bundle_id, COUNT(*) FROM units GROUP BY bundle_id")
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (_SCHEMA_VERSION,))
