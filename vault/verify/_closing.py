"""Closing a release at a station: the final export, the signed close-out, and the refusal after it.

The steps, each one a state a re-run completes:

1. in one write transaction, refused while a unit of the release is on a
   fixture: the release is recorded as closed in the state folder, and so
   in the station token's head (its ``closed`` list), so no unit of it
   starts from then on, from this folder or any copy;
2. if the log holds entries no export carries, an evidence export;
3. in one write transaction: if the log is still the last export's (another
   fixture may have logged a refusal meanwhile: back to 2), the close-out is
   signed over the token's head and stored in the folder;
4. the close-out file is written to the evidence folder (write-once).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vault._files import write_new
from vault.closeout import Closeout, UnitsUsed, closeout_name, open_closeout, sign_closeout
from vault.errors import BundleClosedError, InputError, StateError
from vault.policy import format_time
from vault.release import Release
from vault.verify._state import State

if TYPE_CHECKING:
    from vault.verify._station import ExportResult, Station

__all__ = ["CloseResult", "close_release", "refuse_if_closed"]


@dataclass(frozen=True)
class CloseResult:
    """A release closed at a station: its close-out, where it is, and the final export it needed."""

    closeout: Closeout
    path: Path
    envelope: bytes
    export: ExportResult | None  # the export this call wrote first, if the log held entries no export carried
    already: bool  # the close-out was signed by an earlier call (this one completed or repeated it)


def refuse_if_closed(db: sqlite3.Connection, station_id: str, release: Release) -> None:
    """Refuse a unit of a release this station closed (or is closing).

    Raises:
        BundleClosedError: the release is closed here.
    """
    row = db.execute("SELECT started FROM closed WHERE bundle_id = ?", (release.bundle_id,)).fetchone()
    if row is not None:
        raise BundleClosedError(
            f"station '{station_id}' closed bundle {release.bundle_id} ({release.product} {release.version}, "
            f"closed {row[0]}): it provisions no further unit of it"
        )


def close_release(station: Station, bundle_id: str, out: Path) -> CloseResult:
    """:meth:`vault.verify.Station.close`, once the bundle id is resolved."""
    with station.state.write() as db:
        row = db.execute("SELECT closeout FROM closed WHERE bundle_id = ?", (bundle_id,)).fetchone()
        if row is None:
            busy = db.execute(
                "SELECT unit, fixture FROM units WHERE bundle_id = ? AND done = 0 ORDER BY unit", (bundle_id,)
            ).fetchall()
            if busy:
                more = f" (and {len(busy) - 1} more)" if len(busy) > 1 else ""
                raise StateError(
                    f"unit {busy[0][0]} of bundle {bundle_id} is still on fixture {busy[0][1]}{more}: "
                    "let it finish, then close the release; nothing was recorded"
                )
            now, _ = station.clock()
            db.execute("INSERT INTO closed (bundle_id, started) VALUES (?, ?)", (bundle_id, format_time(now)))
    envelope = None if row is None or row[0] is None else bytes(row[0])
    already = envelope is not None
    exported = None
    while envelope is None:
        db = station.state.read()
        last = station._last_export(db)
        size = int(db.execute("SELECT COUNT(*) FROM log").fetchone()[0])
        if size > (last.to_size if last else 0):
            exported = station.export(out)
        envelope = _sign(station, bundle_id)
    closeout = open_closeout(envelope, {station._signing.key_id: station._signing.public_key})
    path = _write(out, closeout_name(station.station_id, bundle_id), envelope)
    return CloseResult(closeout, path, envelope, exported, already)


def _sign(station: Station, bundle_id: str) -> bytes | None:
    """Sign and store the close-out over the token's head; ``None`` if the log grew past the last export."""
    with station.state.write() as db:
        mine = State.head_in(db)
        last = station._last_export(db)
        if mine.size != (last.to_size if last else 0):
            return None  # another fixture logged an entry meanwhile: export it first
        held = None if station.state.anchor is None else station.state.anchor.read()
        if held is not None and held != mine:
            raise StateError(
                f"the station token holds {held.describe()}, this folder {mine.describe()}: "
                "they must agree before a close-out is signed; run the close again"
            )
        product, version, counter, allocation, statement_sha256 = db.execute(
            "SELECT product, version, security_counter, allocation, statement_sha256 FROM releases "
            "WHERE bundle_id = ?",
            (bundle_id,),
        ).fetchone()
        ended = dict(
            db.execute(
                "SELECT COALESCE(d.state, 'unrecorded'), COUNT(*) FROM units u "
                "LEFT JOIN devices d ON d.hardware_id = u.hardware_id WHERE u.bundle_id = ? GROUP BY 1",
                (bundle_id,),
            ).fetchall()
        )
        used = mine.reserved.get(bundle_id, 0)
        provisioned, scrapped = ended.get("provisioned", 0), ended.get("scrapped", 0)
        failed = ended.get("failed", 0) + ended.get("reserved", 0)
        now, source = station.clock()
        policy = station._policy
        assert policy is not None  # a release was loaded, so a policy was
        closeout = Closeout(
            station_id=station.station_id,
            bundle_id=bundle_id,
            statement_sha256=statement_sha256,
            product=product,
            version=version,
            security_counter=counter,
            policy_version=policy.version,
            allocation=allocation,
            units=UnitsUsed(used, provisioned, failed, scrapped, max(0, used - provisioned - failed - scrapped)),
            log_size=mine.size,
            log_root=mine.root.hex(),
            exports=mine.exports,
            time=now,
            clock=source[:256],
        )
        with station._token_lock:
            envelope = sign_closeout(closeout, station._signing)
        db.execute("UPDATE closed SET closeout = ? WHERE bundle_id = ?", (envelope, bundle_id))
    return envelope


def _write(out: Path, name: str, envelope: bytes) -> Path:
    """Write the close-out once; the same bytes already there are fine (a re-run), others are refused."""
    path = out / name
    try:
        out.mkdir(parents=True, exist_ok=True)
        if path.exists():
            if path.read_bytes() == envelope:
                return path
            raise InputError(f"{path} exists and is another close-out; nothing was written over it")
    except OSError as e:
        raise InputError(f"cannot write the close-out in {out}: {e.strerror or e}") from e
    return write_new(path, envelope, mode=0o444)
