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
import shutil
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vault import checkpoint as notes
from vault import merkle
from vault.errors import LogError, StateError, VaultError
from vault.evidence import EvidenceReader
from vault.formats import parse_json
from vault.manifest import Manifest, open_manifest
from vault.policy import format_time
from vault.token import Pkcs11Uri, TokenKey, open_token
from vault.verify._state import LogHead, State
from vault.verify._station import COPY_SUFFIX, DECRYPTION_LABEL, SIGNING_LABEL, Station, log_origin

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


@dataclass
class _Entry:
    envelope: bytes
    certificate: bytes | None
    where: Path


@dataclass(frozen=True)
class _Export:
    sequence: int
    size: int
    root: bytes
    checkpoint: bytes
    path: str
    created: str


def recover_state(
    state_dir: str | os.PathLike[str],
    *,
    token: Pkcs11Uri,
    station_id: str,
    root: x509.Certificate | str,
    sources: Sequence[str | os.PathLike[str]],
) -> RecoveryResult:
    """Write a new state folder whose log and counts are exactly the station token's head.

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
        entries: dict[int, _Entry] = {}
        exports: dict[int, _Export] = {}
        policy: tuple[int, bytes] | None = None  # (export sequence or -1, policy bytes) newest wins
        used: list[Path] = []
        for source in _expand(sources, station_id):
            if source.is_dir():
                found_policy = _from_folder(source, entries, exports)
            else:
                found_policy = _from_copy(source, station_id, decryption, entries, exports)
            used.append(source)
            if found_policy is not None and (policy is None or found_policy[0] >= policy[0]):
                policy = found_policy
        manifests = _check_log(entries, head, signing, station_id, session.label)
        roots = _roots_at(entries, {e.size for e in exports.values() if e.size <= head.size})
        for export in exports.values():  # every checkpoint a source claims must be this log's
            if roots.get(export.size) != export.root:
                raise LogError(f"export {export.sequence} names a log of {export.size} entries that is not this one")
            notes.open_checkpoint(export.checkpoint, signing.public_key, log_origin(station_id))
        units = _units(manifests, head, session.label)
    if policy is None:
        raise StateError("no source carries the station's trust policy: give at least one station copy of an export")
    made_dir = not target.exists()
    try:
        _write(target, station_id, root, head, manifests, entries, exports, units, policy[1])
        with Station(target, token=token, station_id=station_id, root=root):
            pass  # opens as any station folder does: the policy, the keys and the token's head, checked again
    except BaseException:
        _remove(target, made_dir)
        raise
    return RecoveryResult(
        target, head.size, head.root.hex(), dict(head.reserved), len(exports),
        len({m.hardware_id for m in manifests if m.unit is not None}), tuple(used),
    )  # fmt: skip


# --- reading the sources -------------------------------------------------------------


def _expand(sources: Sequence[str | os.PathLike[str]], station_id: str) -> Iterator[Path]:
    for given in sources:
        path = Path(given)
        if not path.exists():
            raise StateError(f"{path}: no such file or folder to recover from")
        if path.is_dir() and not (path / "station.sqlite").exists():
            copies = sorted(path.glob(f"{station_id}-*{COPY_SUFFIX}"))
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


def _from_copy(
    path: Path, station_id: str, key: TokenKey, entries: dict[int, _Entry], exports: dict[int, _Export]
) -> tuple[int, bytes]:
    with EvidenceReader(path) as reader:
        if reader.header.station_id != station_id:
            raise StateError(f"{path} is a copy of station '{reader.header.station_id}', not '{station_id}'")
        try:
            records = [parse_json(r, max_size=_MAX_RECORD, what=str(path)) for r in reader.records(reader.open(key))]
        except VaultError as e:
            raise StateError(f"{path} does not open as a copy of this station's export: {e}") from e
    try:
        head, *body, tail = records
        if head["type"] != "export" or tail["type"] != "checkpoint" or head["sequence"] != reader.header.sequence:
            raise ValueError("records out of order")
        first, last = int(head["from"]), int(head["to"])
        if [int(r["sequence"]) for r in body] != list(range(first, last)):
            raise ValueError("entries out of order")
        for r in body:
            certificate = None if r["certificate"] is None else base64.b64decode(r["certificate"], validate=True)
            _add(entries, int(r["sequence"]), _Entry(str(r["envelope"]).encode(), certificate, path))
        note = str(tail["checkpoint"]).encode()
        checkpoint = notes.parse_checkpoint_unverified(note)
        if checkpoint.size != last:
            raise ValueError("the checkpoint's size is not the export's")
        policy = base64.b64decode(head["policy"], validate=True)
    except (KeyError, TypeError, ValueError) as e:
        raise StateError(f"{path} is not a well-formed copy of a station export ({e})") from e
    sequence = reader.header.sequence
    export = _Export(
        sequence, last, checkpoint.root, note, str(path.with_suffix(".vault-evidence")), str(head["created"])
    )
    if exports.setdefault(sequence, export) != export:
        raise StateError(f"two different copies of export {sequence} were given ({path})")
    return sequence, policy


def _from_folder(folder: Path, entries: dict[int, _Entry], exports: dict[int, _Export]) -> tuple[int, bytes] | None:
    """Whatever an older or damaged folder's database still reads; unreadable rows are skipped."""
    try:
        db = sqlite3.connect(f"file:{folder / 'station.sqlite'}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise StateError(f"{folder}: the state database does not open: {e}") from e
    policy: tuple[int, bytes] | None = None
    try:
        with contextlib.suppress(sqlite3.Error):
            for sequence, envelope, certificate in db.execute("SELECT sequence, envelope, certificate FROM log"):
                cert = None if certificate is None else bytes(certificate)
                _add(entries, int(sequence), _Entry(bytes(envelope), cert, folder))
        with contextlib.suppress(sqlite3.Error):
            for row in db.execute("SELECT sequence, size, root, checkpoint, path, created FROM exports"):
                export = _Export(int(row[0]), int(row[1]), bytes(row[2]), bytes(row[3]), str(row[4]), str(row[5]))
                if exports.setdefault(export.sequence, export).checkpoint != export.checkpoint:
                    raise StateError(f"{folder} records another export {export.sequence} than the other sources")
        with contextlib.suppress(sqlite3.Error):
            row = db.execute("SELECT value FROM meta WHERE key = 'policy'").fetchone()
            if row is not None:
                policy = (-1, bytes(row[0]))
    finally:
        db.close()
    return policy


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


def _check_log(
    entries: dict[int, _Entry], head: LogHead, signing: TokenKey, station_id: str, token_label: str
) -> list[Manifest]:
    have = next((i for i in range(head.size) if i not in entries), head.size)
    if have < head.size:
        raise StateError(
            f"the sources reach log entry {have}, but the station token '{token_label}' holds {head.describe()}: "
            f"entries {have} to {head.size - 1} were never exported and no folder given has them; nothing was written"
        )
    trusted = {signing.key_id: signing.public_key}
    manifests = []
    for sequence in range(head.size):
        entry = entries[sequence]
        try:
            manifest = open_manifest(entry.envelope, trusted)
        except VaultError as e:
            raise LogError(f"{entry.where}: entry {sequence} is not a manifest of this station: {e}") from e
        if manifest.sequence != sequence or manifest.station_id != station_id:
            raise LogError(
                f"{entry.where}: entry {sequence} is manifest {manifest.sequence} of '{manifest.station_id}'"
            )
        if (
            entry.certificate is not None
            and manifest.certificate_sha256 != hashlib.sha256(entry.certificate).hexdigest()
        ):
            raise LogError(f"{entry.where}: entry {sequence}'s certificate is not the one its manifest names")
        manifests.append(manifest)
    if _roots_at(entries, {head.size})[head.size] != head.root:
        raise StateError(
            f"the sources' log of {head.size} entries has another root than the station token '{token_label}' "
            f"holds ({head.root.hex()[:12]}): they are not this station's log; nothing was written"
        )
    return manifests


def _units(manifests: list[Manifest], head: LogHead, token_label: str) -> dict[tuple[str, int], Manifest]:
    """The last manifest of each unit the log names, checked against the token's reserved counts."""
    units: dict[tuple[str, int], Manifest] = {}
    for manifest in manifests:
        if manifest.unit is not None:
            units[(manifest.bundle_id, manifest.unit)] = manifest
    for bundle_id, unit in units:
        if unit > head.reserved.get(bundle_id, 0):
            raise StateError(
                f"the log names unit {unit} of bundle {bundle_id[:16]}, but the station token '{token_label}' "
                f"counts {head.reserved.get(bundle_id, 0)} reserved: they disagree; nothing was written"
            )
    return units


# --- writing the new folder ---------------------------------------------------------------------


def _write(
    target: Path,
    station_id: str,
    root: x509.Certificate | str,
    head: LogHead,
    manifests: list[Manifest],
    entries: dict[int, _Entry],
    exports: dict[int, _Export],
    units: dict[tuple[str, int], Manifest],
    policy: bytes,
) -> None:
    if isinstance(root, x509.Certificate):
        root_sha256 = hashlib.sha256(root.public_bytes(serialization.Encoding.DER)).hexdigest()
    else:
        root_sha256 = root.strip().lower().replace(":", "")
    state = State(target, station_id=station_id, root_sha256=root_sha256)
    try:
        with state.write() as db:
            tree = merkle.TreeBuilder()
            last_time = None
            counters: dict[str, int] = {}
            for manifest in manifests:
                entry = entries[manifest.sequence]
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
                counters[manifest.product] = max(counters.get(manifest.product, 0), manifest.security_counter)
                _bind(db, manifest)
            State.set_meta(db, "log_frontier", b"".join(tree.frontier))
            if last_time is not None:
                State.set_meta(db, "last_time", last_time)
            State.set_meta(db, "policy", policy)
            State.set_meta(db, "policy_version", max((m.policy_version for m in manifests), default=0))
            for product, counter in counters.items():
                db.execute("INSERT INTO products (product, security_counter) VALUES (?, ?)", (product, counter))
            for (bundle_id, unit), manifest in units.items():
                db.execute(
                    "INSERT INTO units (bundle_id, unit, hardware_id, owner, fixture, operator, done) "
                    "VALUES (?, ?, ?, 'recovered', ?, ?, 1)",
                    (bundle_id, unit, manifest.hardware_id, manifest.fixture, manifest.operator),
                )
            for bundle_id, count in head.reserved.items():
                db.execute("INSERT INTO reserved (bundle_id, count) VALUES (?, ?)", (bundle_id, count))
            for export in sorted(exports.values(), key=lambda e: e.sequence):
                db.execute(
                    "INSERT INTO exports (sequence, size, root, checkpoint, path, created) VALUES (?, ?, ?, ?, ?, ?)",
                    (export.sequence, export.size, export.root, export.checkpoint, export.path, export.created),
                )
            if State.head_in(db) != head:
                raise StateError("the rebuilt folder's head is not the token's; nothing was written")
    finally:
        state.close()


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
    if manifest.event in ("provisioned", "rework") and manifest.device_key_id is not None:
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
    for name in ("station.sqlite", "station.sqlite-wal", "station.sqlite-shm", "head.lock"):
        with contextlib.suppress(OSError):
            (target / name).unlink()
    with contextlib.suppress(OSError):
        shutil.rmtree(target / "owners")
