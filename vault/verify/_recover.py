"""Rebuild a lost or damaged station state folder from what the token's head authenticates.

The station token holds its log's head (size, root) and the units reserved
per release (:mod:`vault.verify._state`). The log's entries themselves are
kept in two places besides the state folder:

- the station's own copy of every export (``*.station-copy``, sealed to the
  station's decryption key, written beside the auditor's export);
- older or damaged state folders (a backup copy, the folder that broke), as
  far as their database still reads.

:func:`recover_state` takes entries from any of them, checks each manifest's
signature and position, and accepts the result only if its Merkle root at
the token's size is the token's root: the token decides, so a source cannot
add, drop or change an entry. It refuses, writing nothing, when the entries
do not reach the token's head (they were never exported and no folder has
them) or disagree with it.

The rebuilt folder has the log, the exports, the bindings of every device
the log names, the units each manifest closed and the token's reserved
counts (a unit reserved without a manifest stays counted); the release must
be loaded again (``vault station load``) before provisioning goes on.

Example::

    result = recover_state("station-state", token=uri, station_id="station-1", root=root,
                           sources=[Path("evidence"), Path("station-state.damaged")])
    print(result.size, result.reserved)
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import shutil
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from vault import checkpoint as notes
from vault import merkle
from vault.errors import LogError, StateError, VaultError
from vault.evidence import EvidenceReader
from vault.formats import Envelope, parse_json
from vault.manifest import Manifest, open_manifest
from vault.policy import format_time
from vault.token import Pkcs11Uri, TokenKey, open_token
from vault.verify._state import STATE_FILES, LogHead, State, folder_in_use
from vault.verify._station import COPY_SUFFIX, DECRYPTION_LABEL, SIGNING_LABEL, Station, log_origin, root_sha256

__all__ = ["RecoveryResult", "recover_state"]

_MAX_RECORD = 4 * 1024 * 1024


@dataclass(frozen=True)
class RecoveryResult:
    """What :func:`recover_state` rebuilt."""

    state_dir: Path
    size: int
    root: str
    reserved: dict[str, int]
    exports: int
    devices: int
    sources: tuple[Path, ...]
    notes: tuple[str, ...] = ()  # what a source could not give (an unreadable table), for people to read


@dataclass
class _Entry:
    envelope: bytes
    certificate: bytes | None
    where: Path


@dataclass(frozen=True)
class _Export:
    """One export as a source records it; two sources agree on it if all but the path agree."""

    sequence: int
    size: int
    root: bytes
    checkpoint: bytes
    path: str = field(compare=False)
    created: str = field(compare=False)


@dataclass
class _Open:
    """A unit a lost folder reserved and never closed (its device was on a fixture)."""

    bundle_id: str
    unit: int
    hardware_id: str
    serial: str
    fixture: int
    operator: str


@dataclass
class _Found:
    """Everything the sources gave."""

    entries: dict[int, _Entry] = field(default_factory=dict)
    exports: dict[int, _Export] = field(default_factory=dict)
    policies: list[bytes] = field(default_factory=list)
    policy_version: int = 0
    reserved: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    open_units: dict[tuple[str, int], _Open] = field(default_factory=dict)
    releases: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # rows of a lost folder's releases table
    sealed: dict[int, dict[str, bytes]] = field(default_factory=dict)  # sealed per-device secrets by log position
    notes: list[str] = field(default_factory=list)


def recover_state(
    state_dir: str | os.PathLike[str],
    *,
    token: Pkcs11Uri,
    station_id: str,
    root: x509.Certificate | str,
    sources: Sequence[str | os.PathLike[str]],
) -> RecoveryResult:
    """Write a new state folder whose log and counts are the station token's head (or extend it).

    A folder given as a source may be one step ahead of the token (the power
    went between its commit and the token write): its entries after the
    token's head are kept when they extend it, as opening that folder would.

    Args:
        state_dir: the folder to make; it must not hold a station state yet.
        token: the station token (the same one the lost folder was used with).
        station_id: the station's enrolled id.
        root: the pinned root certificate, or its SHA-256 fingerprint (recorded in the folder;
            the policy is checked against it when the folder is opened).
        sources: station copies of exports (files or folders of ``*.station-copy``) and
            older or damaged state folders, in any order.

    Raises:
        StateError: the folder exists with a state, the token has no head, or the
            sources do not reach or do not match the token's head.
        LogError: a source holds an entry that is not this station's, or out of place.
        TokenError: the token or its keys cannot be used.
    """
    target = Path(state_dir)
    if (target / "station.sqlite").exists():
        raise StateError(f"{target} already holds a station state; recover writes a new folder, never over one")
    if target.is_dir() and (any(target.glob(f"*{COPY_SUFFIX}")) or any(target.glob("*.vault-evidence"))):
        raise StateError(f"{target} is an evidence folder; recover into a new state folder")
    found = _Found()
    used: list[Path] = []
    with open_token(token) as session:
        signing = session.key(label=SIGNING_LABEL)
        decryption = session.key(label=DECRYPTION_LABEL)
        record = session.head(f"station-log:{station_id}")
        if record is None:
            raise StateError(
                f"the station token '{session.label}' holds no head for station '{station_id}': "
                "it never recorded a unit, so there is nothing to recover (start with a new state folder)"
            )
        head = LogHead.from_value(record.value)
        for source in _expand(sources, station_id):
            if source.resolve() == target.resolve():
                raise StateError(f"{source} is the folder to recover into; give the lost folder's copies instead")
            if source.is_dir():
                _from_folder(source, found)
            else:
                _from_copy(source, station_id, decryption, found)
            used.append(source)
        manifests = _check_log(found, head, signing, station_id, session.label)
        size = len(manifests)
        roots = _roots_at(found.entries, {e.size for e in found.exports.values() if e.size <= size})
        for export in found.exports.values():  # every checkpoint a source claims must be this log's
            if roots.get(export.size) != export.root:
                raise LogError(f"export {export.sequence} names a log of {export.size} entries that is not this one")
            notes.open_checkpoint(export.checkpoint, signing.public_key, log_origin(station_id))
        units = _units(manifests, head, found, session.label)
        _note_silent_units(head, found, units)
    if not found.policies:
        raise StateError("no source carries the station's trust policy: give at least one station copy of an export")
    made_dir = not target.exists()
    try:
        rebuilt = _write(target, station_id, root, head, manifests, found, units)
        with Station(target, token=token, station_id=station_id, root=root):
            pass  # opens as any station folder does: the policy, the keys and the token's head, checked again
    except BaseException:
        _remove(target, made_dir)
        raise
    return RecoveryResult(
        target, rebuilt.size, rebuilt.root.hex(), dict(rebuilt.reserved), len(found.exports),
        len({m.hardware_id for m in manifests if m.unit is not None}), tuple(used), tuple(found.notes),
    )  # fmt: skip


# --- reading the sources -------------------------------------------------------------


def _expand(sources: Sequence[str | os.PathLike[str]], station_id: str) -> Iterator[Path]:
    pattern = re.compile(rf"{re.escape(station_id)}-[0-9]{{6}}{re.escape(COPY_SUFFIX)}")
    for given in sources:
        path = Path(given)
        if not path.exists():
            raise StateError(f"{path}: no such file or folder to recover from")
        if path.is_dir() and not (path / "station.sqlite").exists():
            copies = sorted(p for p in path.iterdir() if pattern.fullmatch(p.name))
            if not copies:
                raise StateError(f"{path} holds neither a station state nor copies of station '{station_id}'s exports")
            yield from copies
        else:
            yield path


def _add(entries: dict[int, _Entry], sequence: int, entry: _Entry) -> None:
    have = entries.get(sequence)
    if have is None:
        entries[sequence] = entry
    elif have.envelope != entry.envelope:
        raise LogError(f"{entry.where} and {have.where} hold different entries {sequence}: the sources disagree")
    elif have.certificate is None:
        have.certificate = entry.certificate


def _add_export(found: _Found, export: _Export, where: Path) -> None:
    if found.exports.setdefault(export.sequence, export) != export:
        raise StateError(f"{where} records another export {export.sequence} than the other sources")


def _policy_version(policy: bytes) -> int:
    """The version a stored policy names (read only to choose the newest; the station verifies it on open)."""
    try:
        envelope = Envelope.from_json(policy, max_size=_MAX_RECORD, what="trust policy")
        statement = parse_json(envelope.payload, max_size=_MAX_RECORD, what="trust policy")
        version = statement["predicate"]["version"]
    except (VaultError, KeyError, TypeError) as e:
        raise StateError(f"a source's trust policy does not parse: {e}") from e
    if not isinstance(version, int):
        raise StateError("a source's trust policy has no version")
    return version


def _from_copy(path: Path, station_id: str, key: TokenKey, found: _Found) -> None:
    with EvidenceReader(path) as reader:
        if reader.header.station_id != station_id:
            raise StateError(f"{path} is a copy of station '{reader.header.station_id}', not '{station_id}'")
        try:
            records = [parse_json(r, max_size=_MAX_RECORD, what=str(path)) for r in reader.records(reader.open(key))]
        except VaultError as e:
            raise StateError(f"{path} does not open as a copy of this station's export: {e}") from e
    try:
        head, *records, tail = records
        if head["type"] != "export" or tail["type"] != "checkpoint" or head["sequence"] != reader.header.sequence:
            raise ValueError("records out of order")
        body = [r for r in records if r["type"] != "secrets"]
        for r in records:
            if r["type"] == "secrets":  # the sealed per-device secrets beside their manifest
                sealed = found.sealed.setdefault(int(r["sequence"]), {})
                sealed.update({str(k): base64.b64decode(v, validate=True) for k, v in r["sealed"].items()})
        first, last = int(head["from"]), int(head["to"])
        if [int(r["sequence"]) for r in body] != list(range(first, last)):
            raise ValueError("entries out of order")
        for r in body:
            certificate = None if r["certificate"] is None else base64.b64decode(r["certificate"], validate=True)
            _add(found.entries, int(r["sequence"]), _Entry(str(r["envelope"]).encode(), certificate, path))
        note = str(tail["checkpoint"]).encode()
        checkpoint = notes.parse_checkpoint_unverified(note)
        if checkpoint.size != last:
            raise ValueError("the checkpoint's size is not the export's")
        policy = base64.b64decode(head["policy"], validate=True)
    except (KeyError, TypeError, ValueError) as e:
        raise StateError(f"{path} is not a well-formed copy of a station export ({e})") from e
    sequence = reader.header.sequence
    _add_export(
        found,
        _Export(
            sequence,
            last,
            checkpoint.root,
            note,
            str(path.resolve().with_suffix(".vault-evidence")),
            str(head["created"]),
        ),
        path,
    )
    found.policies.append(policy)


def _from_folder(folder: Path, found: _Found) -> None:
    """Whatever an older or damaged folder's database still reads; what does not is noted, not guessed."""
    if folder_in_use(folder):
        raise StateError(
            f"{folder} is open in a running station (a fixture holds it): that folder is not lost; "
            "stop the station and use it, or recover from its copies once it is stopped"
        )
    try:
        db = sqlite3.connect(f"file:{folder / 'station.sqlite'}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise StateError(f"{folder}: the state database does not open: {e}") from e

    def rows(what: str, query: str) -> list[tuple[Any, ...]]:
        try:
            return db.execute(query).fetchall()
        except sqlite3.Error as e:
            found.notes.append(f"{folder}: its {what} could not be read ({e})")
            return []

    try:
        for sequence, envelope, certificate in rows("log", "SELECT sequence, envelope, certificate FROM log"):
            cert = None if certificate is None else bytes(certificate)
            _add(found.entries, int(sequence), _Entry(bytes(envelope), cert, folder))
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'sealed_secrets'").fetchone():
            for sequence, name, blob in rows("sealed secrets", "SELECT sequence, name, sealed FROM sealed_secrets"):
                found.sealed.setdefault(int(sequence), {})[str(name)] = bytes(blob)
        for row in rows("exports", "SELECT sequence, size, root, checkpoint, path, created FROM exports"):
            export = _Export(int(row[0]), int(row[1]), bytes(row[2]), bytes(row[3]), str(row[4]), str(row[5]))
            _add_export(found, export, folder)
        meta = dict(rows("settings", "SELECT key, value FROM meta WHERE key IN ('policy', 'policy_version')"))
        if meta.get("policy") is not None:
            found.policies.append(bytes(meta["policy"]))
        found.policy_version = max(found.policy_version, int(meta.get("policy_version") or 0))
        for product, counter in rows("security counters", "SELECT product, security_counter FROM products"):
            found.counters[str(product)] = max(found.counters.get(str(product), 0), int(counter))
        reserved = rows("reserved counts", "SELECT bundle_id, count FROM reserved")
        if not reserved:  # a folder from before the reserved table: its units
            reserved = rows("units", "SELECT bundle_id, MAX(unit) FROM units GROUP BY bundle_id")
        for bundle_id, count in reserved:
            found.reserved[str(bundle_id)] = max(found.reserved.get(str(bundle_id), 0), int(count or 0))
        for row in rows(
            "releases",
            "SELECT bundle_id, product, version, security_counter, allocation, not_before, expires, "
            "statement_sha256, loaded FROM releases",
        ):
            found.releases.setdefault(str(row[0]), tuple(row))
        for bundle_id, unit, hwid, fixture, operator, serial in rows(
            "open units",
            "SELECT u.bundle_id, u.unit, u.hardware_id, u.fixture, u.operator, d.serial FROM units u "
            "JOIN devices d ON d.hardware_id = u.hardware_id WHERE u.done = 0",
        ):
            key = (str(bundle_id), int(unit))
            found.open_units[key] = _Open(key[0], key[1], str(hwid), str(serial), int(fixture), str(operator))
    finally:
        db.close()


# --- checking against the token's head -----------------------------------------------------


def _roots_at(entries: dict[int, _Entry], sizes: set[int]) -> dict[int, bytes]:
    """The log's root at each of ``sizes``, in one pass."""
    tree = merkle.TreeBuilder()
    roots = {0: merkle.EMPTY_ROOT} if 0 in sizes else {}
    for i in range(max(sizes, default=0)):
        tree.append(merkle.leaf_hash(entries[i].envelope))
        if tree.size in sizes:
            roots[tree.size] = tree.root()
    return roots


def _check_log(found: _Found, head: LogHead, signing: TokenKey, station_id: str, token_label: str) -> list[Manifest]:
    """The manifests of the log the token's head names, and the entries after it that extend it."""
    entries = found.entries
    have = next((i for i in range(head.size) if i not in entries), head.size)
    if have < head.size:
        unread = "; ".join(found.notes)
        raise StateError(
            f"the sources reach log entry {have}, but the station token '{token_label}' holds {head.describe()}: "
            f"entries {have} to {head.size - 1} were never exported and no folder given has them"
            + (f" ({unread})" if unread else "")
            + "; nothing was written"
        )
    size = head.size
    while size in entries:  # a folder one step ahead of the token (its last commit, before the token write)
        size += 1
    trusted = {signing.key_id: signing.public_key}
    manifests = []
    for sequence in range(size):
        entry = entries[sequence]
        try:
            manifest = open_manifest(entry.envelope, trusted)
        except VaultError as e:
            raise LogError(f"{entry.where}: entry {sequence} is not a manifest of this station: {e}") from e
        if manifest.sequence != sequence or manifest.station_id != station_id:
            raise LogError(
                f"{entry.where}: entry {sequence} is manifest {manifest.sequence} of '{manifest.station_id}'"
            )
        certificate = entry.certificate
        if certificate is not None and manifest.certificate_sha256 != hashlib.sha256(certificate).hexdigest():
            raise LogError(f"{entry.where}: entry {sequence}'s certificate is not the one its manifest names")
        manifests.append(manifest)
    if _roots_at(entries, {head.size})[head.size] != head.root:
        raise StateError(
            f"the sources' log of {head.size} entries has another root than the station token '{token_label}' "
            f"holds ({head.root.hex()[:12]}): they are not this station's log; nothing was written"
        )
    return manifests


def _units(
    manifests: list[Manifest], head: LogHead, found: _Found, token_label: str
) -> dict[tuple[str, int], Manifest]:
    """The last manifest of each unit the log names, checked against the reserved counts."""
    units: dict[tuple[str, int], Manifest] = {}
    for manifest in manifests:
        if manifest.unit is not None:
            units[(manifest.bundle_id, manifest.unit)] = manifest
    for bundle_id, unit in units:
        counted = max(head.reserved.get(bundle_id, 0), found.reserved.get(bundle_id, 0))
        if unit > counted:
            raise StateError(
                f"the log names unit {unit} of bundle {bundle_id[:16]}, but the station token '{token_label}' "
                f"counts {head.reserved.get(bundle_id, 0)} reserved: they disagree; nothing was written"
            )
    return units


def _note_silent_units(head: LogHead, found: _Found, units: dict[tuple[str, int], Manifest]) -> None:
    """Say which counted units no source closes: their devices may have been provisioned."""
    for bundle_id in sorted({*head.reserved, *found.reserved}):
        counted = max(head.reserved.get(bundle_id, 0), found.reserved.get(bundle_id, 0))
        silent = [
            n for n in range(1, counted + 1) if (bundle_id, n) not in units and (bundle_id, n) not in found.open_units
        ]
        if silent:
            shown = ", ".join(map(str, silent[:10])) + (" …" if len(silent) > 10 else "")
            found.notes.append(
                f"{len(silent)} unit(s) of bundle {bundle_id[:16]} are counted but no source has their manifest "
                f"(unit {shown}): their devices may have been provisioned with the manifest only in the lost "
                "folder; they stay counted; tell the auditor"
            )


# --- writing the new folder ---------------------------------------------------------------------


def _write(
    target: Path,
    station_id: str,
    root: x509.Certificate | str,
    head: LogHead,
    manifests: list[Manifest],
    found: _Found,
    units: dict[tuple[str, int], Manifest],
) -> LogHead:
    policy = max(found.policies, key=_policy_version)
    state = State(target, station_id=station_id, root_sha256=root_sha256(root))
    try:
        with state.write() as db:
            tree = merkle.TreeBuilder()
            last_time = None
            counters = dict(head.counters)
            for product, counter in found.counters.items():
                counters[product] = max(counters.get(product, 0), counter)
            for manifest in manifests:
                entry = found.entries[manifest.sequence]
                leaf = merkle.leaf_hash(entry.envelope)
                tree.append(leaf)
                when = format_time(manifest.time)
                db.execute(
                    "INSERT INTO log (sequence, manifest_id, event, hardware_id, time, envelope, leaf_hash, "
                    "certificate, root) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (manifest.sequence, manifest.id, manifest.event, manifest.hardware_id, when, entry.envelope,
                     leaf, entry.certificate, tree.root()),
                )  # fmt: skip
                last_time = max(last_time or when, when)
                sealed = found.sealed.get(manifest.sequence, {})
                db.executemany(  # only a blob the signed manifest names by its digest
                    "INSERT INTO sealed_secrets (sequence, name, sealed) VALUES (?, ?, ?)",
                    [
                        (manifest.sequence, s.name, sealed[s.name])
                        for s in manifest.secrets
                        if s.name in sealed and hashlib.sha256(sealed[s.name]).hexdigest() == s.sealed_sha256
                    ],
                )
                counters[manifest.product] = max(counters.get(manifest.product, 0), manifest.security_counter)
                _bind(db, manifest)
            State.set_meta(db, "log_frontier", b"".join(tree.frontier))
            if last_time is not None:
                State.set_meta(db, "last_time", last_time)
            State.set_meta(db, "policy", policy)
            version = max(
                head.policy_version, found.policy_version, _policy_version(policy),
                max((m.policy_version for m in manifests), default=0),
            )  # fmt: skip
            State.set_meta(db, "policy_version", version)
            for product, counter in counters.items():
                db.execute("INSERT INTO products (product, security_counter) VALUES (?, ?)", (product, counter))
            for (bundle_id, unit), manifest in units.items():
                db.execute(
                    "INSERT INTO units (bundle_id, unit, hardware_id, owner, fixture, operator, done) "
                    "VALUES (?, ?, ?, 'recovered', ?, ?, 1)",
                    (bundle_id, unit, manifest.hardware_id, manifest.fixture, manifest.operator),
                )
            for key, open_unit in found.open_units.items():
                if key in units:
                    continue  # closed by a manifest the log has
                db.execute(  # left open: the station closes it as interrupted when it opens the folder
                    "INSERT INTO units (bundle_id, unit, hardware_id, owner, fixture, operator, done) "
                    "VALUES (?, ?, ?, 'recovered', ?, ?, 0)",
                    (key[0], key[1], open_unit.hardware_id, open_unit.fixture, open_unit.operator),
                )
                db.execute(
                    "INSERT OR IGNORE INTO devices (hardware_id, serial, state) VALUES (?, ?, 'reserved')",
                    (open_unit.hardware_id, open_unit.serial),
                )
            for row in found.releases.values():  # as the lost folder loaded them (allocations included)
                db.execute("INSERT INTO releases VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            for bundle_id in head.closed:  # closed stays closed; its close-out file is in the evidence folder
                db.execute("INSERT INTO closed (bundle_id, started) VALUES (?, 'before a recovery')", (bundle_id,))
            for bundle_id in {*head.reserved, *found.reserved}:
                count = max(head.reserved.get(bundle_id, 0), found.reserved.get(bundle_id, 0))
                db.execute("INSERT INTO reserved (bundle_id, count) VALUES (?, ?)", (bundle_id, count))
            for export in sorted(found.exports.values(), key=lambda e: e.sequence):
                db.execute(
                    "INSERT INTO exports (sequence, size, root, checkpoint, path, created) VALUES (?, ?, ?, ?, ?, ?)",
                    (export.sequence, export.size, export.root, export.checkpoint, export.path, export.created),
                )
            rebuilt = State.head_in(db)
            if rebuilt.exports < head.exports:
                raise StateError(
                    f"the station token counts {head.exports} evidence exports, the sources give {rebuilt.exports}: "
                    f"give the station copy of export {head.exports} ({station_id}-{head.exports:06d}{COPY_SUFFIX}) "
                    "too; nothing was written"
                )
            if rebuilt.behind(head) or State.root_at(db, head.size) != head.root:
                raise StateError("the rebuilt folder does not reach the token's head; nothing was written")
    finally:
        state.close()
    return rebuilt


def _bind(db: sqlite3.Connection, manifest: Manifest) -> None:
    """Replay the device binding a manifest made, as the station did when it wrote it."""
    hwid = manifest.hardware_id
    if manifest.event == "scrap":
        db.execute("UPDATE devices SET state = 'scrapped' WHERE hardware_id = ?", (hwid,))
        return
    if manifest.unit is None or manifest.serial is None:  # refusals, label mismatches, break-glass: no binding
        return
    known = db.execute("SELECT state FROM devices WHERE hardware_id = ?", (hwid,)).fetchone()
    if known is None:
        db.execute(
            "INSERT INTO devices (hardware_id, serial, state) VALUES (?, ?, 'reserved')", (hwid, manifest.serial)
        )
    if manifest.event in ("provisioned", "retry", "rework") and manifest.device_key_id is not None:
        db.execute(
            "UPDATE devices SET state = 'provisioned', device_key_id = ? WHERE hardware_id = ?",
            (manifest.device_key_id, hwid),
        )
    elif manifest.event == "failed":
        db.execute(
            "UPDATE devices SET state = CASE WHEN state = 'provisioned' THEN state ELSE 'failed' END "
            "WHERE hardware_id = ?",
            (hwid,),
        )


def _remove(target: Path, made_dir: bool) -> None:
    if made_dir:
        shutil.rmtree(target, ignore_errors=True)
        return
    for name in STATE_FILES:
        with contextlib.suppress(OSError):
            (target / name).unlink()
    with contextlib.suppress(OSError):
        shutil.rmtree(target / "owners")
