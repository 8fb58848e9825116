"""The audit itself: read every export in order, fan the chunks out to workers, keep each log's state.

Memory stays bounded whatever the exports hold: the main process keeps per
station a Merkle frontier (at most 64 hashes per export boundary), the last
time seen and counters; per export at most a window of chunks in flight;
findings are grouped and capped (:mod:`vault.audit._findings`); every
identity goes to an on-disk index (:mod:`vault.audit._index`).
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import multiprocessing.pool
import os
import tempfile
import time as _time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import astuple, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from cryptography import x509

from vault import merkle
from vault.audit._closeout import DEFAULT_MAX_SILENCE, LogEnd, check_closeouts, read_closeouts
from vault.audit._findings import MAX_EVIDENCE, Evidence, Findings, Thresholds
from vault.audit._index import KEPT, Index
from vault.audit._process import ProcessTally
from vault.audit._report import (
    MAX_UNIT_EVENTS,
    MAX_UNITS,
    BundleReport,
    BundleSummary,
    ExportSummary,
    LotReport,
    Quality,
    Reconciliation,
    Report,
    StationReport,
    UnitEvent,
    UnitRecord,
)
from vault.audit._state import StateFolder
from vault.audit._worker import (
    AuditedRelease,
    ChunkResult,
    Clock,
    Context,
    Stamp,
    StationKeys,
    clock_step,
    close_worker,
    counters_add,
    init_worker,
    process_chunk,
    start_pool,
    time_issue,
)
from vault.checkpoint import Checkpoint, open_checkpoint, parse_checkpoint_unverified
from vault.container import BundleReader
from vault.crypto import key_id, spki_der
from vault.errors import (
    DecryptionError,
    FormatError,
    InputError,
    LogError,
    RollbackError,
    SignatureError,
    VaultError,
    VerificationError,
)
from vault.evidence import EvidenceReader
from vault.formats import Envelope, Statement
from vault.hpke import Decapsulator
from vault.policy import Station as EnrolledStation
from vault.policy import TrustPolicy, format_time, load_policy
from vault.release import MAX_ENVELOPE_SIZE, Release, approvals_of, open_release, parse_release
from vault.verify import log_origin

__all__ = ["AuditProgress", "audit"]

JUMP_SECONDS = 30 * 24 * 3600
"""A forward step between consecutive entries of one log longer than this is a time-jump finding."""

_FINDINGS_PER_QUESTION = 200  # suspects each identity question returns (each may become a finding)
_COUNTER_KEYS = 256  # distinct failed steps and weeks kept per station before "other"
_INFO_CODES = frozenset(
    {
        "label-mismatch", "break-glass", "unit-failed", "unit-refused", "unit-interrupted", "unit-scrapped",
        "unit-reworked", "label-not-printed", "stop-acknowledged",
    }
)  # fmt: skip


@dataclass(frozen=True)
class AuditProgress:
    """How far an audit is: bytes of the exports read and manifests checked so far."""

    bytes_done: int
    bytes_total: int
    manifests: int


# --- inputs ------------------------------------------------------------------------------------


def _load_bundle(
    path: Path, policy: TrustPolicy, now: datetime, findings: Findings
) -> tuple[Release, BundleSummary, bytes]:
    """The release in a bundle, its summary, and the SHA-256 of its header and envelope (the same bundle
    has the same; the images are bound to both, and the audit does not read them)."""
    with BundleReader(path) as reader:
        envelope_bytes, header_bytes, header_id = reader.envelope_bytes, reader.header_bytes, reader.header.bundle_id
    identity = hashlib.sha256(hashlib.sha256(header_bytes).digest() + envelope_bytes).digest()
    try:
        # after the fact: the window is compared with each manifest's time, and a station revoked or
        # re-enrolled since the release was signed does not stop the audit (its exports meet the policy's keys)
        release, approvals = open_release(
            envelope_bytes, header_bytes, policy, now=now, check_window=False, check_stations=False
        )
        promoted = True
    except VerificationError as e:
        envelope = Envelope.from_json(envelope_bytes, max_size=MAX_ENVELOPE_SIZE, what="release envelope")
        release = parse_release(Statement.from_bytes(envelope.payload, what="release statement"))
        approvals = approvals_of(envelope, policy)
        promoted = False
        findings.add(
            "bundle-not-promoted",
            f"bundle {release.bundle_id} ({release.product} {release.version}) does not verify as promoted "
            f"under trust policy v{policy.version}: {e}",
        )
    if release.bundle_id != header_id:
        raise FormatError(f"{path}: the release statement names another bundle id than the bundle's header")
    if release.policy_version > policy.version:  # the stations' keys and the auditor's may have changed since
        raise RollbackError(
            f"{path}: the release was built under trust policy v{release.policy_version}; "
            f"the policy given is v{policy.version} (stale: give the current policy)"
        )
    summary = BundleSummary(
        bundle_id=release.bundle_id,
        product=release.product,
        version=release.version,
        security_counter=release.security_counter,
        not_before=format_time(release.not_before),
        expires=format_time(release.expires),
        total=release.total,
        allocation=dict(release.allocation),
        images=tuple((i.name, i.sha256) for i in release.images),
        promoted=promoted and approvals.promoted,
        approvers=approvals.approvers,
        threshold=approvals.threshold,
        statement_sha256=release.statement_sha256,
    )
    return release, summary, identity


def _bundle_files(given: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The bundle files: each file given, and every file in each folder given (but hidden ones and subfolders).

    Raises:
        InputError: no bundle was given, or a folder holds no file.
    """
    files: list[Path] = []
    for item in given:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.is_file())
            if not found:
                raise InputError(f"{path} holds no release bundle")
            files.extend(found)
        else:
            files.append(path)
    if not files:
        raise InputError("give at least one release bundle to audit against")
    return files


def _load_bundles(
    given: Sequence[str | os.PathLike[str]], policy: TrustPolicy, now: datetime, findings: Findings
) -> list[tuple[Release, BundleSummary]]:
    """Every bundle given, each opened against the policy; the same file (or an identical copy) once.

    Raises:
        InputError: a file that is not a release bundle (also one in a folder given), or two
            different bundles with one bundle id: the audit cannot tell which one a manifest names.
    """
    loaded: list[tuple[Release, BundleSummary]] = []
    seen: dict[str, tuple[Path, bytes]] = {}  # bundle id -> (its file, its identity)
    resolved: set[Path] = set()
    for path in _bundle_files(given):
        if path.resolve() in resolved:
            continue
        resolved.add(path.resolve())
        release, summary, identity = _load_bundle(path, policy, now, findings)
        first = seen.get(release.bundle_id)
        if first is not None:
            if first[1] == identity:
                continue  # a copy of a bundle already given
            raise InputError(
                f"{first[0]} and {path} are two different bundles with one bundle id {release.bundle_id}: "
                "give the one the stations used"
            )
        seen[release.bundle_id] = (path, identity)
        loaded.append((release, summary))
    return loaded


@dataclass
class _Export:
    number: int
    path: Path
    name: str  # as shown in findings and the report: the file's full path
    station_id: str
    sequence: int
    export_id: str
    created: str
    size: int
    header_sha256: bytes
    data_key: bytes | None = None
    status: str = "verified"


def _full(path: Path) -> str:
    """A file's full path, as findings name it."""
    return str(path.absolute())


def _open_exports(
    paths: Sequence[str | os.PathLike[str]],
    decapsulator: Decapsulator,
    findings: Findings,
    first: int = 0,
    earlier: Sequence[_Export] = (),
) -> tuple[list[_Export], list[ExportSummary]]:
    """The exports whose header reads, sorted per station by sequence, numbered from ``first``; and a summary
    of each file that does not read as an export at all (each also an ``export-invalid`` finding). A copy of
    an export read before, here or in the ``earlier`` exports of an audit state, is listed as a duplicate.

    Raises:
        DecryptionError: every export is sealed to another auditor key (the wrong token was given).
    """
    auditor = key_id(decapsulator.public_key)
    exports: list[_Export] = []
    unreadable: list[ExportSummary] = []
    seen_paths: set[Path] = set()
    seen_ids: dict[str, _Export] = {e.export_id: e for e in earlier if e.status in ("verified", "unknown-station")}
    claims: dict[tuple[str, int], list[_Export]] = {}
    foreign: list[str] = []
    for given in paths:
        path = Path(given)
        resolved = path.resolve()
        if resolved in seen_paths:
            continue
        seen_paths.add(resolved)
        try:
            reader = EvidenceReader(path)
        except VaultError as e:
            unreadable.append(ExportSummary(_full(path), "", 0, "", "", None, None, 0, None, "invalid"))
            findings.add(
                "export-invalid",
                f"{_full(path)} cannot be read as an evidence export: {e}",
                evidence=[Evidence(_full(path), None)],
            )
            continue
        with reader:
            header = reader.header
            export = _Export(
                first + len(exports),
                path,
                _full(path),
                header.station_id,
                header.sequence,
                header.export_id,
                header.created,
                reader.size,
                header.header_sha256,
            )
            exports.append(export)
            if header.recipient_key_id != auditor:
                export.status = "invalid"
                foreign.append(
                    f"{path} is sealed to key {header.recipient_key_id[:16]}, not to this auditor key "
                    f"({auditor[:16]}): use the token the exports were written for"
                )
                findings.add(
                    "export-invalid",
                    f"{_full(path)}: sealed to key {header.recipient_key_id[:16]}, not to this auditor's key "
                    f"{auditor[:16]}; nothing in it can be read",
                    stations=[export.station_id],
                    evidence=[Evidence(export.name, export.station_id)],
                )
                continue
            same = seen_ids.get(header.export_id)
            if same is not None and same.header_sha256 == header.header_sha256:
                export.status = "duplicate"  # the same file twice (a copy): read once
                continue
            seen_ids.setdefault(header.export_id, export)
            claims.setdefault((export.station_id, export.sequence), []).append(export)
            try:
                export.data_key = reader.open(decapsulator)
            except (DecryptionError, FormatError) as e:
                export.status = "invalid"
                findings.add(
                    "export-invalid",
                    f"{_full(path)}: the data key does not open: {e}",
                    stations=[export.station_id],
                    evidence=[Evidence(export.name, export.station_id)],
                )
    if foreign and len(foreign) == len(exports) and not unreadable and not first:
        raise DecryptionError(foreign[0])
    for (station_id, sequence), claimants in claims.items():
        if len(claimants) > 1:  # never choose silently: both are audited, one as a branch, and this is said
            shown = " and ".join(_full(e.path) for e in claimants)
            findings.add(
                "log-forked",
                f"{station_id}: {len(claimants)} files with other contents claim export {sequence}: {shown}",
                stations=[station_id],
                evidence=[Evidence(e.name, station_id) for e in claimants],
            )
    exports.sort(key=lambda e: (e.station_id, e.sequence, e.number))
    return exports, unreadable


# --- one station's log -------------------------------------------------------------------------


_UNIT_EVENTS = {"provisioned": 1, "retry": 1, "rework": 2, "failed": 3, "scrap": 4}
_MAX_STRAY_UNITS = 65536
_MAX_UNIT_BYTES = 16 * 1024 * 1024  # units past this many are counted like strays (a bundle may allocate more)


class _Units:
    """The units of the audited release one station used, and how each ended, in memory bounded by
    the allocation: one byte per allocated unit, and a capped map of units outside it."""

    def __init__(self, allocation: int) -> None:
        self.allocation = min(allocation, _MAX_UNIT_BYTES)
        self.state = bytearray(self.allocation + 1)  # unit -> code of the event of its last manifest (0: never used)
        self.stray: dict[int, int] = {}  # units outside 1..allocation: the same, up to _MAX_STRAY_UNITS
        self.stray_overflow = False
        self.provisioned = 0  # provisioned manifests under the release
        self.highest = 0

    def add(self, pairs: Iterable[tuple[int, str]]) -> None:
        state, stray, allocation, codes = self.state, self.stray, self.allocation, _UNIT_EVENTS
        for unit, event in pairs:
            code = codes.get(event, 0)
            if code == 1:
                self.provisioned += 1
            if unit > self.highest:
                self.highest = unit
            if 0 < unit <= allocation:
                if code:
                    state[unit] = code
                elif not state[unit]:
                    state[unit] = 5  # used, by another event
            elif unit in stray or len(stray) < _MAX_STRAY_UNITS:
                stray[unit] = code or stray.get(unit, 5)
            else:
                self.stray_overflow = True

    def final(self) -> dict[int, int]:
        """How many units ended in each event code (reserved units only)."""
        counts = {code: self.state.count(code) for code in range(1, 6)}
        for code in self.stray.values():
            counts[code] += 1
        return counts


_MAX_OPEN_UNITS = 4096  # units an export may declare still on fixtures


@dataclass
class _Log:
    """What the audit knows of one station's log so far: bounded by the number of exports."""

    station_id: str
    number: int
    enrolled: EnrolledStation | None
    snapshots: dict[int, tuple[bytes, ...]] = field(default_factory=lambda: {0: ()})  # size -> frontier
    roots: dict[int, tuple[bytes, str]] = field(default_factory=lambda: {0: (merkle.EMPTY_ROOT, "")})
    sequences: dict[int, str] = field(default_factory=dict)  # export sequence -> export file
    head_sequence: int | None = None
    head_size: int | None = None
    stamps: tuple[Stamp, ...] = ()  # the last two verified entries, for the time checks
    last_clock: Clock | None = None  # the last monotonic reading
    units: dict[int, _Units] = field(default_factory=dict)  # audited release number -> its units here
    partial: bool = False  # picked up inside the log (earlier entries not audited): holes cannot be told
    open_units: dict[int, frozenset[tuple[str, int]]] = field(default_factory=dict)  # export -> units on fixtures
    followed: list[int] = field(default_factory=list)  # the exports (numbers) whose checkpoint the log took
    exports: int = 0
    manifests: int = 0
    verified: int = 0
    size: int | None = None
    root: bytes | None = None
    events: dict[str, int] = field(default_factory=dict)
    process: ProcessTally = field(default_factory=ProcessTally)


@dataclass(frozen=True)
class _Rewrite:
    """A later export that does not extend what earlier exports verified, named at the end of the audit."""

    code: str
    export: _Export
    station: int  # the station's number in the index
    earlier: tuple[int, ...]  # the exports (numbers) the log had taken before it
    ranges: tuple[tuple[int, int], ...]  # log positions [start, end) whose entries it may no longer carry
    message: str
    position: int | None


@dataclass
class _Run:
    """One export being read: its place in the log and the tree over its entries."""

    export: _Export
    log: _Log
    branch: bool = False  # a second export with a sequence already seen: checked, but not followed
    head: dict[str, Any] | None = None
    start: int = 0
    end: int = 0
    expected: int = 0
    builder: merkle.TreeBuilder | None = None
    spool: IO[bytes] | None = None  # leaf hashes, until the proof gives the frontier to start from
    entries: int = 0
    broken: str | None = None
    gap: bool = False
    disordered: bool = False
    tail: dict[str, Any] | None = None
    stamps: tuple[Stamp, ...] = ()
    root: bytes | None = None


def _frontier_from_proof(size_old: int, size_new: int, root_old: bytes, proof: Sequence[bytes]) -> tuple[bytes, ...]:
    """The frontier of the old tree, read from a consistency proof that has been verified.

    Verifying an RFC 9162 consistency proof folds the old tree's complete
    subtrees, right to left, into its root; those are exactly the frontier,
    so an export's entries can be hashed onto it without the earlier entries.

    Raises:
        LogError: the proof does not yield a frontier that hashes to ``root_old``.
    """
    if size_old == 0:
        return ()
    frontier = _proof_frontier(size_old, size_new, root_old, proof)
    try:
        if merkle.TreeBuilder.from_frontier(size_old, frontier).root() != root_old:
            raise LogError("the consistency proof does not give the old tree's frontier")
    except FormatError as e:
        raise LogError(f"the consistency proof does not give the old tree's frontier: {e}") from e
    return frontier


def _proof_frontier(size_old: int, size_new: int, root_old: bytes, proof: Sequence[bytes]) -> tuple[bytes, ...]:
    """The hashes a consistency proof gives for the old tree's complete subtrees (not checked here)."""
    path = [root_old, *proof] if size_old & (size_old - 1) == 0 else list(proof)
    if not path:
        return ()
    fn, sn = size_old - 1, size_new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    nodes = [path[0]]
    for c in path[1:]:
        if sn == 0:
            break
        if fn & 1 or fn == sn:
            nodes.append(c)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        fn >>= 1
        sn >>= 1
    return tuple(reversed(nodes))


def _changed_ranges(
    size_old: int, size_new: int, root_new: bytes, proof: Sequence[bytes], genuine: Sequence[bytes] | None
) -> list[tuple[int, int]]:
    """The positions of a verified log of ``size_old`` entries (its frontier ``genuine``) that a later tree
    (``size_new``, ``root_new``) holds otherwise: the complete subtrees whose hashes differ, read from the
    later export's consistency proof when that proof binds them to its root; else all of them."""
    whole = [(0, size_old)]
    if genuine is None or size_old == 0 or size_old & (size_old - 1) == 0 or size_new <= size_old:
        return whole  # a power of two: the proof restates no part of the old tree
    try:
        claimed = _proof_frontier(size_old, size_new, b"", proof)
        if len(claimed) != len(genuine):
            return whole
        merkle.verify_consistency(
            size_old, size_new, merkle.TreeBuilder.from_frontier(size_old, claimed).root(), root_new, proof
        )
        heights = merkle.TreeBuilder.from_frontier(size_old, genuine).heights
    except (LogError, FormatError):
        return whole
    ranges, start = [], 0
    for height, theirs, ours in zip(heights, claimed, genuine, strict=True):
        if theirs != ours:
            ranges.append((start, start + (1 << height)))
        start += 1 << height
    return ranges or whole


# --- the audit ---------------------------------------------------------------------------------


class _Audit:
    def __init__(
        self,
        policy: TrustPolicy,
        releases: Sequence[Release],
        findings: Findings,
        index: Index,
        progress: Callable[[AuditProgress], None] | None,
        total_bytes: int,
        thresholds: Thresholds | None = None,
    ) -> None:
        self.thresholds = thresholds or Thresholds()
        self.policy = policy
        self.releases = {number: release for number, release in enumerate(releases, 1)}  # as the index numbers them
        self.findings = findings
        self.index = index
        self.progress = progress
        self.total_bytes = total_bytes
        self.bytes_done = 0
        self.manifests = 0
        self.logs: dict[str, _Log] = {}
        self.summaries: list[ExportSummary] = []
        self.runs: dict[int, _Run] = {}
        self.rewrites: list[_Rewrite] = []  # named at the end, with the entries each one lost

    def restore(self, carried: dict[str, Any]) -> None:
        """Take up what an earlier run verified (:meth:`snapshot`), before reading the exports that are new."""
        self.logs = carried["logs"]
        for log in self.logs.values():
            log.enrolled = self.policy.stations.get(log.station_id)  # the same policy: the state is bound to it
        self.summaries = carried["summaries"]
        self.rewrites = carried["rewrites"]
        self.manifests = carried["manifests"]

    def snapshot(self) -> dict[str, Any]:
        """What the next run needs to carry on from here: every export read and nothing of the end's queries.
        Copies (without keys or data keys), to be serialised before the end of the audit changes anything."""
        return {
            "logs": {station: replace(log, enrolled=None) for station, log in self.logs.items()},
            "summaries": list(self.summaries),
            "rewrites": [replace(r, export=replace(r.export, data_key=None)) for r in self.rewrites],
            "manifests": self.manifests,
        }

    def log(self, station_id: str) -> _Log:
        log = self.logs.get(station_id)
        if log is None:
            log = self.logs[station_id] = _Log(station_id, len(self.logs), self.policy.stations.get(station_id))
        return log

    def units(self, log: _Log, number: int) -> _Units:
        """The units of audited release ``number`` at the station of ``log``."""
        units = log.units.get(number)
        if units is None:
            units = log.units[number] = _Units(self.releases[number].allocation.get(log.station_id, 0))
        return units

    def named(self, number: int) -> str:
        """ " of bundle <id> (<product> <version>)" when several bundles are audited; "" when one is."""
        if len(self.releases) == 1:
            return ""
        release = self.releases[number]
        return f" of bundle {release.bundle_id} ({release.product} {release.version})"

    # --- findings helpers ----------------------------------------------------------------------

    def finding(
        self, code: str, run: _Run, message: str, *, position: int | None = None, key: tuple[str, ...] = ()
    ) -> None:
        export = run.export
        self.findings.add(
            code,
            f"{export.station_id}: {message} ({export.name})",
            key=key or (export.name,),
            stations=[export.station_id],
            evidence=[Evidence(export.name, export.station_id, position)],
        )

    def rewritten(
        self, code: str, run: _Run, message: str, ranges: Sequence[tuple[int, int]], *, position: int | None = None
    ) -> None:
        """A later export that does not extend the log the earlier ones verified: its finding waits for the
        end, when the index names the earlier exports' entries in ``ranges`` that it no longer carries."""
        log = run.log
        earlier = tuple(log.followed)
        self.rewrites.append(_Rewrite(code, run.export, log.number, earlier, tuple(ranges), message, position))

    def vanished(self, export_names: dict[int, str]) -> None:
        """Each rewrite's finding, naming the entries verified in earlier exports that are gone from their
        positions (the index holds their rows): position, manifest id, serial and hardware id."""
        for rewrite in self.rewrites:
            export = rewrite.export
            count, rows = self.index.vanished(
                rewrite.station, export.number, rewrite.earlier, rewrite.ranges, MAX_EVIDENCE
            )
            message = f"{export.station_id}: {rewrite.message} ({export.name})"
            if count:
                first = rows[0]
                shown = f"position {first[1]}" + (f", serial {first[4]}" if first[4] else "")
                message += (
                    f"; {count} entr{'y' if count == 1 else 'ies'} verified in earlier exports "
                    f"{'is' if count == 1 else 'are'} not (or not provably) at {'its' if count == 1 else 'their'} "
                    f"position in the log it signs, first at {shown}"
                )
            self.findings.add(
                rewrite.code,
                message,
                key=(export.name,),
                stations=[export.station_id],
                serials=[r[4] for r in rows],
                hardware_ids=[r[3] for r in rows],
                evidence=[Evidence(export.name, export.station_id, rewrite.position)]
                + [Evidence(export_names.get(r[0]), export.station_id, r[1], r[2], r[4], r[3]) for r in rows],
                count=max(1, count),
            )

    # --- running -------------------------------------------------------------------------------

    def run(self, exports: list[_Export], context: Context, workers: int) -> None:
        started: list[multiprocessing.pool.Pool] = []  # terminated below, even when Ctrl-C ends its start
        window = max(2, 3 * workers)
        pending: deque[tuple[str, Any]] = deque()
        in_flight = 0
        try:
            if workers > 1:
                start_pool(workers, context, started)
            else:
                init_worker(context)
            pool = started[0] if started else None
            for export in exports:
                pending.append(("begin", export))
                error: str | None = None
                if export.status in ("verified", "unknown-station") and export.data_key is not None:
                    try:
                        with EvidenceReader(export.path) as reader:
                            path = os.path.abspath(export.path)  # the workers read each chunk themselves
                            for place in reader.chunk_places():
                                task = (
                                    export.number, export.station_id, export.data_key, export.header_sha256, path,
                                    place,
                                )  # fmt: skip
                                if pool is None:
                                    pending.append(("chunk", process_chunk(task)))
                                else:
                                    pending.append(("chunk", pool.apply_async(process_chunk, (task,))))
                                in_flight += 1
                                while in_flight >= window:
                                    in_flight -= self._drain(pending, until_chunk=True)
                    except VaultError as e:
                        error = str(e)
                pending.append(("end", (export, error)))
            while pending:
                self._drain(pending, until_chunk=False)
        finally:
            for pool in started:
                pool.terminate()
                pool.join()
            if workers <= 1:
                close_worker()

    def _drain(self, pending: deque[tuple[str, Any]], *, until_chunk: bool) -> int:
        """Handle items from the left until one chunk was handled (or the queue is empty)."""
        while pending:
            kind, item = pending.popleft()
            if kind == "begin":
                self.begin(item)
            elif kind == "end":
                self.end(*item)
            else:
                result = item if isinstance(item, ChunkResult) else item.get()
                self.chunk(result)
                if until_chunk:
                    return 1
        return 0

    # --- one export ----------------------------------------------------------------------------

    def begin(self, export: _Export) -> None:
        log = self.log(export.station_id)
        log.exports += 1
        self.runs[export.number] = _Run(export, log)
        if export.status == "unknown-station":
            self.findings.add(
                "unknown-station",
                f"{export.name}: station {export.station_id!r} is not enrolled in trust policy "
                f"v{self.policy.version}; "
                "nothing in the export can be verified",
                stations=[export.station_id],
                evidence=[Evidence(export.name, export.station_id)],
            )

    def chunk(self, result: ChunkResult) -> None:
        run = self.runs[result.export]
        export = run.export
        self.bytes_done += result.size
        if run.broken is not None or export.status != "verified":
            run.entries += result.count
            run.log.manifests += result.count
            self.manifests += result.count
            return
        if result.error is not None:
            run.broken = f"chunk {result.index}: {result.error}"
            return
        if result.misplaced:
            run.broken = "; ".join(result.misplaced[:3])
        if result.index == 0:
            if result.head is None:
                run.broken = run.broken or "it does not start with an export record"
            else:
                self.start(run, result.head)
        if result.last:
            run.tail = result.tail
            if result.tail is None:
                run.broken = run.broken or "it does not end with a checkpoint record"
        self.entries(run, result)

    def start(self, run: _Run, head: dict[str, Any]) -> None:
        export, log = run.export, run.log
        fields = {"type", "station_id", "sequence", "from", "to", "created", "previous_checkpoint", "policy"}
        if set(head) not in (fields, fields | {"open_units"}):
            run.broken = "its export record does not have exactly the fields " + ", ".join(sorted(fields))
            return
        opened = head.get("open_units", [])
        if (
            not isinstance(opened, list)
            or len(opened) > _MAX_OPEN_UNITS
            or not all(
                isinstance(u, list) and len(u) == 2 and isinstance(u[0], str) and type(u[1]) is int for u in opened
            )
        ):
            run.broken = "its open_units are not a list of [bundle id, unit] pairs"
            return
        log.open_units[export.sequence] = frozenset((str(b), int(n)) for b, n in opened)
        start, end = head["from"], head["to"]
        if type(start) is not int or type(end) is not int or not 0 <= start <= end:
            run.broken = "its export record's from and to are not a range of log positions"
            return
        if head["station_id"] != export.station_id or head["sequence"] != export.sequence:
            run.broken = "its export record names another station or sequence than its header"
            return
        if head["previous_checkpoint"] is not None and not isinstance(head["previous_checkpoint"], str):
            run.broken = "its previous checkpoint is not text"
            return
        run.head, run.start, run.end, run.expected = head, start, end, start
        other = log.sequences.get(export.sequence)
        if other is not None:
            run.branch = True  # the finding naming both files came when they were opened
        else:
            if log.head_sequence is not None and export.sequence > log.head_sequence + 1:
                missing = f"{log.head_sequence + 1}" + (
                    f" to {export.sequence - 1}" if export.sequence - 1 > log.head_sequence + 1 else ""
                )
                self.finding("log-gap", run, f"export {missing} is missing before export {export.sequence}")
            elif log.head_size is not None and start > log.head_size:
                self.finding(
                    "log-gap", run, f"entries {log.head_size} to {start - 1} were never exported", position=start
                )
            elif log.head_size is not None and start < log.head_size:
                self.rewritten(
                    "log-forked",
                    run,
                    f"export {export.sequence} starts at entry {start}, inside export {log.head_sequence} "
                    f"(which ended at {log.head_size})",
                    [(start, log.head_size)],
                    position=start,
                )
            log.sequences[export.sequence] = export.name
        frontier = log.snapshots.get(start)
        if frontier is not None:
            run.builder = merkle.TreeBuilder.from_frontier(start, frontier)
        else:
            run.spool = tempfile.TemporaryFile()
            log.partial = True
        if not run.branch:
            run.stamps = log.stamps

    def entries(self, run: _Run, result: ChunkResult) -> None:
        export, log = run.export, run.log
        count = result.count
        run.entries += count
        log.manifests += count
        log.verified += result.verified
        self.manifests += count
        if count:
            seqs = result.seqs
            if seqs is None:
                self.position(run, result.first_seq or 0, count)
            else:
                for s in seqs:
                    self.position(run, s, 1)
            if run.builder is not None:
                leaves = result.leaves
                run.builder.extend([leaves[i : i + 32] for i in range(0, len(leaves), 32)])
            elif run.spool is not None:
                run.spool.write(result.leaves)
        # time across chunk and export boundaries (inside a chunk the worker checked it)
        stamps = run.stamps
        for stamp in result.first_stamps:
            if stamps:
                issue = time_issue(stamps[-2] if len(stamps) > 1 else None, stamps[-1], stamp, JUMP_SECONDS)
                if issue is not None:
                    self.issue(run, issue)
            stamps = (*stamps, stamp)[-2:]
        run.stamps = (*stamps, *result.last_stamps)[-2:]
        self.clock_across(run, result)
        for issue in result.issues:
            self.issue(run, issue)
        if result.rows:
            self.index.add(log.number, export.number, result.rows)
        if result.labels:
            self.index.add_labels(log.number, export.number, result.labels)
        if result.lots:
            self.index.add_lots(log.number, export.number, result.lots)
        for number, units in result.units.items():
            self.units(log, number).add(units)
        if result.measured:
            log.process.add(result.measured)
        counters_add(log.events, result.events, len(result.events) + len(log.events))
        if self.progress is not None:
            self.progress(AuditProgress(min(self.bytes_done, self.total_bytes), self.total_bytes, self.manifests))

    def position(self, run: _Run, first: int, count: int) -> None:
        expected = run.expected
        if first > expected:
            run.gap = True
            last = first - 1
            shown = f"entry {expected}" if last == expected else f"entries {expected} to {last}"
            self.finding(
                "log-gap",
                run,
                f"{shown} of export {run.export.sequence} are missing (deleted)",
                position=expected,
                key=("gap", run.export.name),
            )
        elif first < expected:
            run.disordered = True
            self.finding(
                "manifest-replayed",
                run,
                f"entry {first} appears again after entry {expected - 1}",
                position=first,
                key=("position", run.export.name),
            )
        run.expected = max(expected, first + count)

    def clock_across(self, run: _Run, result: ChunkResult) -> None:
        """A wall clock set forward between the last monotonic reading of the log and this chunk's first
        (inside a chunk the worker checked it)."""
        if run.branch or result.first_clock is None:
            return
        previous = run.log.last_clock
        shown = None if previous is None else clock_step(previous, result.first_clock, self.thresholds.max_clock_step)
        if shown is not None:
            self.issue(run, ("clock-jump", *result.first_clock[3:], shown))
        run.log.last_clock = result.last_clock

    def issue(self, run: _Run, issue: tuple[str, int, str | None, str | None, str | None, str]) -> None:
        code, position, manifest_id, hwid, serial, detail = issue
        export = run.export
        station = export.station_id
        if code in _INFO_CODES:
            key: tuple[str, ...] = (station,)
            where = ""
        else:
            key = (station, export.name)
            where = f" in {export.name}"
        what = {
            "signature-invalid": "manifest signatures that do not verify",
            "unknown-station": "manifests not from the station's enrolled keys",
            "manifest-malformed": "signed manifests that are malformed",
            "manifest-replayed": "manifests at the wrong log position",
            "certificate-invalid": "device certificates that do not hold",
            "image-not-allowed": "images programmed that the release does not allow",
            "bundle-mismatch": "manifests for none of the audited bundles, or unlike the bundle they name",
            "time-regression": "entries earlier than the entry before them",
            "time-forward-dated": "entries dated later than the entries around them",
            "time-outside-window": "manifests outside the release's validity window",
            "time-jump": "implausible jumps forward in time",
            "clock-jump": "wall-clock steps ahead of the station's monotonic clock",
            "label-serial-differs": "devices recorded as good whose label is not their serial",
            "image-missing": "devices recorded as good lacking images of the release",
            "unit-missing": "devices provisioned with no unit number",
            "label-mismatch": "label mismatches",
            "break-glass": "break-glass overrides",
            "unit-failed": "units that failed",
            "unit-refused": "devices refused before a unit was used",
            "unit-interrupted": "units interrupted by a station stop",
            "unit-scrapped": "devices scrapped",
            "unit-reworked": "devices reworked",
        }.get(code, code)
        first = f"position {position}" + (f", serial {serial}" if serial else "")
        self.findings.add(
            code,
            f"{station}: {what}{where}; first at {first}: {detail}",
            key=key,
            stations=[station],
            serials=[serial],
            hardware_ids=[hwid],
            evidence=[Evidence(export.name, station, position, manifest_id, serial, hwid)],
        )

    def end(self, export: _Export, read_error: str | None) -> None:
        run = self.runs.pop(export.number)
        try:
            self._end(run, read_error)
        finally:
            if run.spool is not None:
                run.spool.close()
        self.summaries.append(
            ExportSummary(
                export.name,
                export.station_id,
                export.sequence,
                export.export_id,
                export.created,
                run.start if run.head else None,
                run.end if run.head else None,
                run.entries,
                None if run.root is None else run.root.hex(),
                export.status,
            )
        )

    def _end(self, run: _Run, read_error: str | None) -> None:
        export, log = run.export, run.log
        if export.status != "verified":
            return
        if read_error is not None:
            run.broken = run.broken or read_error
        if run.broken is not None:
            export.status = "invalid"
            self.finding("export-invalid", run, f"export {export.sequence} is not intact: {run.broken}")
            if not run.branch:
                log.head_sequence, log.head_size, log.stamps = export.sequence, None, ()
            return
        assert run.head is not None and run.tail is not None and log.enrolled is not None
        tail = run.tail
        origin = log_origin(export.station_id)
        key = log.enrolled.signing.public_key
        if set(tail) != {"type", "checkpoint", "consistency"} or not isinstance(tail["checkpoint"], str):
            return self._invalid(run, "its checkpoint record is malformed")
        proof_text = tail["consistency"]
        if not isinstance(proof_text, list) or len(proof_text) > merkle.MAX_PROOF_HASHES:
            return self._invalid(run, "its consistency proof is not a list of hashes")
        try:
            proof = [base64.b64decode(h, validate=True) for h in proof_text]
        except (binascii.Error, ValueError, TypeError):
            return self._invalid(run, "its consistency proof is not base64")
        checkpoint, trusted = self._checkpoint(run, tail["checkpoint"], key, origin, "checkpoint")
        if checkpoint is None:
            return None
        run.root = checkpoint.root
        if checkpoint.size != run.end:
            return self._invalid(run, f"its checkpoint signs size {checkpoint.size}, the export ends at {run.end}")
        previous_note = run.head["previous_checkpoint"]
        previous_trusted = True
        if previous_note is None:
            previous: Checkpoint | None = Checkpoint(origin, 0, merkle.EMPTY_ROOT)
            if run.start != 0:
                self.finding(
                    "consistency-proof-invalid",
                    run,
                    f"export {export.sequence} starts at entry {run.start} without a previous checkpoint",
                )
                previous = None
        else:
            previous, previous_trusted = self._checkpoint(run, previous_note, key, origin, "previous checkpoint")
            if previous is not None and previous.size != run.start:
                self.finding(
                    "consistency-proof-invalid",
                    run,
                    f"its previous checkpoint has size {previous.size}, the export starts at {run.start}",
                )
                previous = None
        consistent = False
        if previous is not None:
            known = log.roots.get(previous.size)
            genuine = log.snapshots.get(previous.size)
            if previous_trusted and known is not None and known[0] != previous.root:
                self.rewritten(
                    "log-forked",
                    run,
                    f"its previous checkpoint (size {previous.size}) is not the one "
                    f"{known[1] or 'the empty log'} signed",
                    _changed_ranges(previous.size, checkpoint.size, checkpoint.root, proof, genuine),
                )
            try:
                merkle.verify_consistency(previous.size, checkpoint.size, previous.root, checkpoint.root, proof)
                consistent = True
            except (LogError, FormatError) as e:
                message = f"export {export.sequence} is not proven to extend size {previous.size}: {e}"
                if known is not None and known[0] == previous.root:  # it does not extend the verified log
                    ranges = _changed_ranges(previous.size, checkpoint.size, checkpoint.root, proof, genuine)
                    self.rewritten("consistency-proof-invalid", run, message, ranges)
                else:
                    self.finding("consistency-proof-invalid", run, message)
        known = log.roots.get(checkpoint.size)
        if trusted and known is not None and known[0] != checkpoint.root and known[1] != export.name:
            self.rewritten(
                "log-forked",
                run,
                f"its checkpoint and {known[1]}'s sign different roots for the same size {checkpoint.size}",
                [(run.start, checkpoint.size)],
            )
        # recompute the root over the entries
        builder = run.builder
        if builder is None and run.spool is not None and consistent and previous_trusted and previous is not None:
            try:
                frontier = _frontier_from_proof(previous.size, checkpoint.size, previous.root, proof)
            except LogError:
                frontier = None
            if frontier is not None:
                builder = merkle.TreeBuilder.from_frontier(previous.size, frontier)
                run.spool.seek(0)
                while block := run.spool.read(32 * 4096):
                    builder.extend([block[i : i + 32] for i in range(0, len(block), 32)])
        recomputed = False
        if builder is not None and not run.gap and not run.disordered:
            if builder.size < checkpoint.size:
                self.finding(
                    "log-gap",
                    run,
                    f"export {export.sequence} holds {builder.size - run.start} entries, its checkpoint signs "
                    f"{checkpoint.size - run.start}",
                    position=builder.size,
                )
            elif builder.size > checkpoint.size or builder.root() != checkpoint.root:
                self.finding(
                    "log-rewritten",
                    run,
                    f"the {builder.size - run.start} entries of export {export.sequence} do not hash to its "
                    f"signed checkpoint (size {checkpoint.size}, root {checkpoint.root.hex()[:16]})",
                )
            else:
                recomputed = True
        if run.branch:
            return None
        log.head_sequence, log.head_size = export.sequence, checkpoint.size
        log.size, log.root = checkpoint.size, checkpoint.root
        log.stamps = run.stamps
        if recomputed and builder is not None:
            log.snapshots[checkpoint.size] = builder.frontier
        if trusted:
            log.roots.setdefault(checkpoint.size, (checkpoint.root, export.name))
        log.followed.append(export.number)
        return None

    def _invalid(self, run: _Run, why: str) -> None:
        run.broken = why
        run.export.status = "invalid"
        self.finding("export-invalid", run, f"export {run.export.sequence} is not intact: {why}")
        if not run.branch:
            run.log.head_sequence, run.log.head_size = run.export.sequence, None

    def _checkpoint(
        self, run: _Run, note_text: str, key: Any, origin: str, what: str
    ) -> tuple[Checkpoint | None, bool]:
        """The checkpoint in a note and whether its signature holds; None after an export-invalid finding."""
        try:
            note = note_text.encode("utf-8")
        except UnicodeEncodeError:
            self._invalid(run, f"its {what} is not UTF-8")
            return None, False
        try:
            return open_checkpoint(note, key, origin, origin=origin), True
        except SignatureError as e:
            self.finding("checkpoint-signature-invalid", run, f"its {what} does not verify: {e}")
        except (FormatError, InputError, LogError) as e:
            self._invalid(run, f"its {what} is not valid: {e}")
            return None, False
        try:
            return parse_checkpoint_unverified(note), False
        except FormatError as e:
            self._invalid(run, f"its {what} is not valid: {e}")
            return None, False

    # --- after the last export -----------------------------------------------------------------

    def identities(self, answers: dict[str, list[Any]], export_names: dict[int, str]) -> None:
        """The cross-station findings, from the index's answers."""
        index, findings = self.index, self.findings
        stations = {log.number: log.station_id for log in self.logs.values()}

        def report(code: str, message: str, rows: list[Any], **names: Iterable[str]) -> None:
            findings.add(
                code,
                message,
                stations=sorted({stations[r[0]] for r in rows}),
                serials=names.get("serials", sorted({r[6] for r in rows if r[6] is not None})),
                hardware_ids=names.get("hardware_ids", sorted({r[5] for r in rows})),
                evidence=[Evidence(export_names.get(r[1]), stations.get(r[0]), r[2], r[3], r[6], r[5]) for r in rows],
            )

        self.misbound(answers["misbound"], stations, export_names)
        replayed = [value for value, _ in answers["replayed"]]
        for manifest_id, rows in index.rows_for("manifest_id", replayed, MAX_EVIDENCE).items():
            places = len({(r[0], r[2]) for r in rows})
            if places > 1:  # else one manifest exported twice: the log checks speak about that
                report("manifest-replayed", f"manifest {manifest_id} appears at {places} log positions", rows)
        suspects = {hwid: (keys, reworked) for hwid, _, keys, reworked in answers["devices"]}
        for hwid, rows in index.rows_for("hardware_id", list(suspects), MAX_EVIDENCE).items():
            keys, reworked = suspects[hwid]
            provisioned = len({r[3] for r in rows if r[4] in ("provisioned", "retry")})
            if provisioned > 1:
                message = f"hardware id {hwid} was provisioned {provisioned} times without a rework (clone or ghost)"
                report("duplicate-hardware-id", message, rows, hardware_ids=[hwid])
            elif keys > 1:
                message = f"hardware id {hwid} holds different device keys (clone)"
                report("duplicate-hardware-id", message, rows, hardware_ids=[hwid])
            if reworked and not provisioned:
                message = f"device {hwid} was reworked but no manifest in the evidence shows it provisioned"
                report("rework-unknown-device", message, rows, hardware_ids=[hwid])
            for at, row in enumerate(rows):  # a retry follows a failure of the device at its own station
                if row[4] == "retry" and not any(r[0] == row[0] and r[4] == "failed" for r in rows[:at]):
                    message = f"device {hwid} was retried but no earlier manifest of its station shows it failed"
                    report("retry-without-failure", message, [row], hardware_ids=[hwid])
        for (station, number, unit), rows in index.rows_for_units(
            [(s, b, u) for s, b, u, _ in answers["units"]], MAX_EVIDENCE
        ).items():
            holders = sorted({r[5] for r in rows})
            message = f"{stations[station]}: unit {unit}{self.named(number)} is on {len(holders)} devices: "
            message += ", ".join(holders[:8])
            report("unit-shared", message, rows)
        shared = [value for value, _ in answers["serials"]]
        for serial, rows in index.rows_for("serial", shared, MAX_EVIDENCE).items():
            devices = len({r[5] for r in rows})
            report("duplicate-serial", f"serial {serial!r} is on {devices} devices", rows, serials=[serial])
        shared = [value for value, _ in answers["keys"]]
        for key, rows in index.rows_for("device_key_id", shared, MAX_EVIDENCE).items():
            devices = len({r[5] for r in rows})
            report("device-key-reused", f"device key {key[:16]} is on {devices} devices", rows)
        self.history_findings(answers, report)
        self.pace_findings(answers, stations, export_names)

    def history_findings(self, answers: dict[str, list[Any]], report: Callable[..., None]) -> None:
        """Devices back after their scrap, and devices reworked past ``--max-reworks``."""
        scrapped = dict(answers["scrapped"])
        for hwid, rows in self.index.rows_for("hardware_id", list(scrapped), MAX_EVIDENCE).items():
            message = f"device {hwid} was scrapped, then {_events(rows, after='scrap')} ({scrapped[hwid]} manifest(s))"
            report("scrap-reprovisioned", message, rows, hardware_ids=[hwid])
        reworks = dict(answers["reworks"])
        for hwid, rows in self.index.rows_for("hardware_id", list(reworks), MAX_EVIDENCE).items():
            message = (
                f"device {hwid} was reworked {reworks[hwid]} times (more than {self.thresholds.max_reworks}), "
                "each with a new device certificate"
            )
            report("rework-repeated", message, [r for r in rows if r[4] == "rework"], hardware_ids=[hwid])

    def pace_findings(self, answers: dict[str, list[Any]], stations: dict[int, str], names: dict[int, str]) -> None:
        """Fixtures faster than ``--min-cycle``; operators at two stations at once (``--operator-window``)."""
        limits = self.thresholds
        for station, fixture, most, when, position, manifest_id, hwid, serial, export, over in answers["cycles"]:
            station_id = stations[station]
            self.findings.add(
                "cycle-too-fast",
                f"{station_id}: fixture {fixture} finished {most} units within one minute up to "
                f"{_when(when)} (at most {limits.per_minute()} at a {limits.min_cycle:g} s cycle); "
                f"{over} unit(s) end such a minute",
                stations=[station_id],
                serials=[serial],
                hardware_ids=[hwid],
                evidence=[Evidence(names.get(export), station_id, position, manifest_id, serial, hwid)],
                count=over,
            )
        spans = {}
        for operator, one, other, start, end in answers["operators"]:
            spans[(operator, one, other, start, end)] = [(s, operator, start, end) for s in (one, other)]
        rows = self.index.rows_during([span for pair in spans.values() for span in pair], MAX_EVIDENCE // 2)
        for (operator, one, other, start, end), pair in spans.items():
            seen = [r for span in pair for r in rows[span]]
            self.findings.add(
                "operator-two-stations",
                f"operator {operator!r} recorded at {stations[one]} and at {stations[other]} at once, from "
                f"{_when(start)} to {_when(end)}",
                stations=[stations[one], stations[other]],
                serials=[r[6] for r in seen],
                hardware_ids=[r[5] for r in seen],
                evidence=[Evidence(names.get(r[1]), stations.get(r[0]), r[2], r[3], r[6], r[5]) for r in seen],
            )

    def misbound(self, answers: list[Any], stations: dict[int, str], export_names: dict[int, str]) -> None:
        """A label read on one device that is another device's serial: both devices are named."""
        found: dict[tuple[int, str], list[Any]] = {}
        for row in answers:
            found.setdefault((row[0], row[3]), []).append(row)
        for rows in found.values():
            station, export, position, manifest_id, hwid, serial, label = rows[0][:7]
            owners = sorted({r[12] for r in rows})
            evidence = [Evidence(export_names.get(export), stations[station], position, manifest_id, serial, hwid)]
            evidence += [Evidence(export_names.get(r[8]), stations[r[7]], r[9], r[10], r[13], r[12]) for r in rows][
                : MAX_EVIDENCE - 1
            ]
            self.findings.add(
                "label-misbound",
                f"{stations[station]}: the label {label!r} read on device {hwid} is the serial of device "
                f"{', '.join(owners)}: that device's label is on another board",
                stations=sorted({stations[station]} | {stations[r[7]] for r in rows}),
                serials=[label],
                hardware_ids=[hwid, *owners],
                evidence=evidence,
            )

    def station_reports(
        self, answers: dict[str, list[Any]]
    ) -> tuple[list[StationReport], list[tuple[tuple[str, Reconciliation], ...]], Reconciliation, Quality]:
        """Each station's report (its reconciliation over every audited bundle), each bundle's reconciliation
        per station, and the totals; with the count findings per station and bundle."""
        for release in self.releases.values():  # an allocated station that sent nothing shows as such
            for station_id in release.allocation:
                self.log(station_id)
        first_pass = {station: (attempted, first) for station, attempted, first in answers["first_pass"]}
        failed_steps, weeks = _top(answers["pareto"]), _top(answers["weeks"])
        # each distinct manifest once, whatever forks, replays or re-sealed copies repeat it; per station and
        # audited release (0: a manifest of no audited bundle)
        events: dict[tuple[int, int], dict[str, int]] = {}
        refused: dict[tuple[int, int], int] = {}
        repeated: dict[int, int] = {}
        for station, number, event, has_unit, rows, distinct in answers["counts"]:
            counts = events.setdefault((station, number), {})
            counts[event] = counts.get(event, 0) + distinct
            if event == "failed" and not has_unit:  # a refusal: no unit was used, no device failed
                refused[(station, number)] = refused.get((station, number), 0) + distinct
            repeated[station] = repeated.get(station, 0) + rows - distinct
        per_bundle: dict[int, list[tuple[str, Reconciliation]]] = {number: [] for number in self.releases}
        reports = []
        total_failures: dict[str, int] = {}
        total_weeks: dict[str, int] = {}
        for log in sorted(self.logs.values(), key=lambda lg: lg.station_id):
            log.events = {}
            parts = []
            for number in sorted({0, *self.releases, *(n for s, n in events if s == log.number)}):
                counts = events.get((log.number, number), {})
                counters_add(log.events, counts, len(counts) + len(log.events))
                if number == 0:  # manifests of no audited bundle: their events, but no unit nor device of any
                    parts.append(_reconcile(0, counts, refused.get((log.number, 0), 0), None, provisioned=False))
                    continue
                allocation = self.releases[number].allocation.get(log.station_id)
                units = log.units.get(number)
                if allocation is None and units is None and not counts:
                    continue  # neither allocated this bundle nor used it
                r = _reconcile(allocation or 0, counts, refused.get((log.number, number), 0), units)
                parts.append(r)
                per_bundle[number].append((log.station_id, r))
                self.allocation_findings(log.station_id, r, number)
                if not log.partial and units is not None:
                    last = log.open_units[max(log.open_units)] if log.open_units else frozenset()
                    bundle_id = self.releases[number].bundle_id
                    still_open = {n for b, n in last if b == bundle_id}
                    self.hole_findings(log.station_id, units, still_open, number)
            if repeated.get(log.number):
                self.findings.add(
                    "manifest-duplicated",
                    f"{log.station_id}: {repeated[log.number]} manifest(s) appear in more than one export file "
                    "(forked, replayed or re-sealed exports); each is counted once",
                    stations=[log.station_id],
                    count=repeated[log.number],
                )
            allocated = sum(release.allocation.get(log.station_id, 0) for release in self.releases.values())
            reconciliation = Reconciliation.sum(parts, allocated)
            attempted, first = first_pass.get(log.number, (0, 0))
            steps, exception_weeks = failed_steps.get(log.number, {}), weeks.get(log.number, {})
            quality = Quality.of(attempted, first, steps, exception_weeks)
            counters_add(total_failures, steps, _COUNTER_KEYS)
            counters_add(total_weeks, exception_weeks, _COUNTER_KEYS * 4)
            reports.append(
                StationReport(
                    log.station_id,
                    log.enrolled is not None,
                    log.exports,
                    log.manifests,
                    log.verified,
                    log.size,
                    None if log.root is None else log.root.hex(),
                    dict(log.events),
                    reconciliation,
                    quality,
                    log.process.report(),
                )
            )
        bundles = []
        for number, release in self.releases.items():
            stations = tuple(per_bundle[number])
            totals = Reconciliation.sum([r for _, r in stations], release.total)
            bundles.append(stations)
            if totals.provisioned > release.total or totals.reserved > release.total:
                self.findings.add(
                    "over-production",
                    f"the stations provisioned {totals.provisioned} devices and reserved {totals.reserved} units"
                    f"{self.named(number)}; the release authorises {release.total} in total",
                    stations=[station for station, r in stations if r.reserved],
                    count=max(totals.provisioned, totals.reserved) - release.total,
                )
        production = sum(release.total for release in self.releases.values())
        totals = Reconciliation.sum([r.reconciliation for r in reports], production)
        attempted = sum(r.quality.attempted for r in reports)
        first = sum(r.quality.first_pass for r in reports)
        return reports, bundles, totals, Quality.of(attempted, first, total_failures, total_weeks)

    def hole_findings(self, station_id: str, units: _Units, still_open: set[int], number: int) -> None:
        """Unit numbers below the highest used that no manifest names: each a ghost until proven otherwise.

        The units the station's last export declares still on a fixture (``open_units``) are not holes:
        their manifests come in the next export, which must then carry them.
        """
        state, top = units.state, min(units.highest, units.allocation)
        count = state.count(0, 1, top + 1) - sum(1 for n in still_open if 0 < n <= top and not state[n])
        holes: list[int] = []
        at = state.find(0, 1, top + 1)
        while at != -1 and len(holes) < MAX_EVIDENCE:
            if at not in still_open:
                holes.append(at)
            at = state.find(0, at + 1, top + 1)
        if units.highest > units.allocation and not units.stray_overflow:  # past the allocation: counted only
            count += units.highest - units.allocation - sum(1 for unit in units.stray if unit > units.allocation)
        waiting = sorted(n for n in still_open if 0 < n <= top and not state[n])
        if waiting:  # shown, so that a station cannot hide a hole behind "still on a fixture" unseen
            self.findings.add(
                "unit-open",
                f"{station_id}: {len(waiting)} unit(s){self.named(number)} were on a fixture at the last export, "
                "their manifests not "
                f"yet in the evidence: {', '.join(map(str, waiting[:MAX_EVIDENCE]))}",
                stations=[station_id],
                count=len(waiting),
            )
        if count:
            shown = ", ".join(map(str, holes)) + (" ..." if count > len(holes) else "")
            self.findings.add(
                "unit-hole",
                f"{station_id}: {count} unit number(s){self.named(number)} below the highest ({units.highest}) "
                f"have no manifest: {shown}",
                stations=[station_id],
                count=count,
            )

    def allocation_findings(self, station_id: str, r: Reconciliation, number: int) -> None:
        over = max(r.provisioned, r.reserved, r.highest_unit) - r.allocation
        if over > 0:
            self.findings.add(
                "over-allocation",
                f"{station_id}: {r.provisioned} devices provisioned and {r.reserved} units reserved "
                f"(highest unit {r.highest_unit}) against an allocation of {r.allocation}{self.named(number)}",
                stations=[station_id],
                count=over,
            )


def _top(answers: Iterable[tuple[int, str | None, int]]) -> dict[int, dict[str, int]]:
    """Per station, the counts the index listed, and what it left out as "other" (from each station's total)."""
    listed: dict[int, dict[str, int]] = {}
    totals: dict[int, int] = {}
    for station, key, count in answers:
        if key is None:
            totals[station] = count
        else:
            listed.setdefault(station, {})[key] = count
    for station, total in totals.items():
        counts = listed.setdefault(station, {})
        if total > sum(counts.values()):
            counts["other"] = counts.get("other", 0) + total - sum(counts.values())
    return listed


def _when(epoch: int) -> str:
    return format_time(datetime.fromtimestamp(epoch, UTC))


def _unit_records(
    index: Index, serials: Sequence[str], run: _Audit, export_names: dict[int, str]
) -> tuple[UnitRecord, ...]:
    """The record of each serial the findings name, from one query of the index, in the order given."""
    stations = {log.number: log.station_id for log in run.logs.values()}
    answers = index.unit_rows(serials, MAX_UNIT_EVENTS)
    records = []
    for serial in serials:
        total, rows = answers.get(serial, (0, []))
        events = tuple(
            UnitEvent(stations.get(station, str(station)), position, _when(time), event, hwid, mid,
                      export_names.get(export), fixture, operator, step)
            for station, export, position, mid, event, hwid, time, fixture, operator, step in rows
        )  # fmt: skip
        records.append(UnitRecord(serial, events, total))
    return tuple(records)


def _events(rows: list[Any], *, after: str) -> str:
    """The events of a device's rows after its first ``after`` event, as "provisioned at station-2 position 7"."""
    at = next((i for i, r in enumerate(rows) if r[4] == after), 0)
    shown = [f"{r[4]} at position {r[2]}" for r in rows[at + 1 :] if r[4] in ("provisioned", "retry", "rework")]
    return ", ".join(shown[:4]) or "provisioned again at another station"


def _log_ends(run: _Audit, exports: Sequence[_Export]) -> dict[str, LogEnd]:
    """Where each station's verified evidence ends: its last verified export and the checkpoints seen."""
    ends = {}
    for station_id, log in run.logs.items():
        verified = [e for e in exports if e.station_id == station_id and e.status == "verified"]
        last = max(verified, key=lambda e: e.sequence, default=None)
        created = None
        if last is not None:
            try:
                created = datetime.strptime(last.created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            except ValueError:
                created = None
        ends[station_id] = LogEnd(
            station_id,
            log.size or 0,
            log.head_sequence or 0,
            None if last is None else _full(last.path),
            created,
            {size: root for size, (root, _) in log.roots.items()},
            {run.releases[n].bundle_id: units.highest for n, units in log.units.items()},
        )
    return ends


def _reconcile(
    allocation: int, counts: dict[str, int], refused: int, units: _Units | None, *, provisioned: bool = True
) -> Reconciliation:
    """One station's reconciliation of one audited bundle, from its distinct manifests' events and its units
    (without ``provisioned``: manifests of no audited bundle, whose devices count against no allocation)."""
    final = units.final() if units is not None else dict.fromkeys(range(1, 6), 0)
    return Reconciliation(
        allocation=allocation,
        reserved=sum(final.values()),
        # a retry ends its unit provisioned, like a first success
        provisioned=counts.get("provisioned", 0) + counts.get("retry", 0) if provisioned else 0,
        reworked=counts.get("rework", 0),
        failed=counts.get("failed", 0) - refused,
        scrapped=counts.get("scrap", 0),
        label_mismatch=counts.get("label-mismatch", 0),
        break_glass=counts.get("break-glass", 0),
        refused=refused,
        units_provisioned=final[1] + final[2],
        units_failed=final[3],
        units_scrapped=final[4],
        units_open=final[5],
        highest_unit=0 if units is None else units.highest,
    )


def _context(policy: TrustPolicy, releases: Sequence[Release], thresholds: Thresholds) -> Context:
    stations = []
    for station_id, enrolled in sorted(policy.stations.items()):
        stations.append(
            StationKeys(
                station_id,
                enrolled.signing.key_id,
                spki_der(enrolled.signing.public_key),
                enrolled.issuing_ca.key_id,
                spki_der(enrolled.issuing_ca.public_key),
            )
        )
    audited = tuple(
        AuditedRelease(
            number=number,
            bundle_id=release.bundle_id,
            product=release.product,
            version=release.version,
            security_counter=release.security_counter,
            allowlist=frozenset((i.name, i.sha256) for i in release.images),
            image_order=tuple((i.name, i.sha256) for i in release.images),
            not_before=format_time(release.not_before),
            expires=format_time(release.expires),
        )
        for number, release in enumerate(releases, 1)
    )
    return Context(
        stations=tuple(stations), releases=audited, jump_seconds=JUMP_SECONDS, max_clock_step=thresholds.max_clock_step
    )


def audit(
    exports: Iterable[str | os.PathLike[str]],
    *,
    policy: bytes,
    root_certificate: x509.Certificate,
    bundle_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    decapsulator: Decapsulator,
    workers: int | None = None,
    progress: Callable[[AuditProgress], None] | None = None,
    now: datetime | None = None,
    thresholds: Thresholds | None = None,
    closeouts: Iterable[str | os.PathLike[str]] = (),
    max_silence: timedelta = DEFAULT_MAX_SILENCE,
    state: str | os.PathLike[str] | None = None,
) -> Report:
    """Audit evidence exports against a trust policy and the releases they were made under.

    Args:
        exports: the export files, in any order (they are sorted per station by sequence).
        policy: the trust policy file's bytes; verified against ``root_certificate``
            (an expired policy is accepted: evidence is audited after the fact).
        root_certificate: the pinned root certificate.
        bundle_path: the release bundle the stations provisioned from, or several (files, or folders
            whose every file is a bundle): each manifest is checked against the bundle it names, and
            the units are reconciled per bundle and station.
        decapsulator: the auditor's decryption key (usually a token key).
        workers: worker processes (default: one per CPU; 1 runs in this process).
        progress: called after each chunk with how far the audit is.
        now: the audit's reference time (default: the host clock).
        thresholds: the limits a line's physics decide (default: :class:`Thresholds`'s).
        closeouts: the stations' close-out files (``*.vault-closeout``), checked
            against the policy and against where each station's evidence ends.
        max_silence: how old the newest export of a station with an allocation
            and no close-out may be before it is a ``station-silent`` finding.
        state: a folder where the audit keeps what it verified (:mod:`vault.audit._state`), authenticated
            with ``decapsulator``: the first run makes it; a later run with the same policy, bundles and
            thresholds reads only the exports it has not audited yet and gives the report a full audit of
            all of them gives. It refuses an export that forks or precedes what the state audited.

    Returns:
        The report. Problems in the evidence are findings in it, never exceptions.

    Raises:
        InputError: a bundle cannot be read or is not one (also a file in a folder given), two
            different bundles share one bundle id, or no export or no bundle was given; the state is
            not authentic for this auditor's token, was made for other inputs, or an export forks or
            precedes what it audited.
        DecryptionError: every export is sealed to another auditor key (an export
            that cannot be read, or one sealed to another key among others, is a finding).
        PolicyError, SignatureError, FormatError: the trust policy does not verify.
    """
    started = _time.monotonic()
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    paths = list(exports)
    if not paths:
        raise InputError("give at least one evidence export to audit")
    trust = load_policy(policy, root_certificate, now=now, allow_expired=True)
    findings = Findings()
    given = [bundle_path] if isinstance(bundle_path, str | os.PathLike) else list(bundle_path)
    return _audit(
        paths,
        trust,
        _load_bundles(given, trust, now, findings),
        findings,
        decapsulator,
        workers=workers,
        progress=progress,
        now=now,
        policy_sha256=hashlib.sha256(policy).hexdigest(),
        started=started,
        thresholds=thresholds or Thresholds(),
        closeouts=closeouts,
        max_silence=max_silence,
        state=state,
    )


def _audit(
    paths: Sequence[str | os.PathLike[str]],
    trust: TrustPolicy,
    bundles: Sequence[tuple[Release, BundleSummary]],
    findings: Findings,
    decapsulator: Decapsulator,
    *,
    workers: int | None,
    progress: Callable[[AuditProgress], None] | None,
    now: datetime,
    policy_sha256: str,
    started: float,
    thresholds: Thresholds | None = None,
    closeouts: Iterable[str | os.PathLike[str]] = (),
    max_silence: timedelta = DEFAULT_MAX_SILENCE,
    state: str | os.PathLike[str] | None = None,
) -> Report:
    """The audit once the policy and the releases are verified (the benchmark starts here too)."""
    thresholds = thresholds or Thresholds()
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 1:
        raise InputError("an audit needs at least one worker")
    folder = None if state is None else StateFolder(state, decapsulator)
    binding = {
        "auditor": key_id(decapsulator.public_key),
        "policy_sha256": policy_sha256,
        "bundles": [(summary.bundle_id, summary.statement_sha256) for _, summary in bundles],
        "thresholds": astuple(thresholds),
    }
    staging: Path | None = None
    try:  # the state folder (if any) held throughout: what it carries, the new exports, the state after
        if folder is not None:
            staging = folder.stage()
        loaded = None if folder is None or staging is None else folder.load(staging)
        carried: dict[str, Any] = {"exports": [], "unreadable": [], "binding": binding}
        if loaded is not None:
            carried = loaded
            _check_binding(Path(state or ""), carried["binding"], binding)
            findings = carried["findings"]  # those of the bundles are the same again: the state's, not twice
            paths = _new_exports(paths, carried)
        earlier: list[_Export] = carried["exports"]
        opened, unreadable = _open_exports(paths, decapsulator, findings, first=len(earlier), earlier=earlier)
        unreadable = [*carried["unreadable"], *unreadable]  # as a full audit lists them: after the others
        for export in opened:
            if export.status == "verified" and export.station_id not in trust.stations:
                export.status = "unknown-station"
        report, frozen = _run_audit(
            opened, earlier, unreadable, trust, bundles, findings, loaded, staging,
            workers=workers, progress=progress, now=now, policy_sha256=policy_sha256, started=started,
            thresholds=thresholds, closeouts=closeouts, max_silence=max_silence,
        )  # fmt: skip
        if folder is not None and staging is not None:
            frozen.update(
                exports=[replace(e, data_key=None) for e in (*earlier, *opened)],
                unreadable=unreadable,
                binding=binding,
            )
            folder.commit(staging, frozen)
            staging = None
        return report
    finally:
        if staging is not None:
            StateFolder.abandon(staging)
        if folder is not None:
            folder.release()


def _check_binding(state: Path, theirs: dict[str, Any], ours: dict[str, Any]) -> None:
    """Refuse a state made for other inputs: its findings would not be this audit's."""
    names = {"auditor": "auditor key", "policy_sha256": "trust policy", "bundles": "release bundles",
             "thresholds": "thresholds (--min-cycle, --max-clock-step, --operator-window, --max-reworks)"}  # fmt: skip
    for name, shown in names.items():
        if theirs.get(name) != ours[name]:
            raise InputError(
                f"the audit state in {state} was made with other {shown}: give the same ones, "
                "or audit without --state (or with a new state folder)"
            )


def _new_exports(paths: Sequence[str | os.PathLike[str]], carried: dict[str, Any]) -> list[str | os.PathLike[str]]:
    """The exports the state has not audited: one it audited (the same file or a copy) and an unreadable
    file it reported are left out.

    Raises:
        InputError: an export claims a place in a log the state audited otherwise (a fork of it), or
            comes before the last export the state audited of its station: only a full audit can
            place it among the others.
    """
    covered = {(e.export_id, e.header_sha256) for e in carried["exports"]}
    names = {e.name for e in carried["exports"]}
    claims = {(e.station_id, e.sequence): e for e in carried["exports"] if e.status != "duplicate"}
    last: dict[str, int] = {}
    for e in carried["exports"]:
        last[e.station_id] = max(last.get(e.station_id, -1), e.sequence)
    reported = {u.name for u in carried["unreadable"]}
    new: list[str | os.PathLike[str]] = []
    for given in paths:
        path = Path(given)
        try:
            with EvidenceReader(path) as reader:
                header = reader.header
        except VaultError:
            if _full(path) not in reported:
                new.append(given)
            continue
        if (header.export_id, header.header_sha256) in covered:
            if _full(path) not in names:  # a copy under another name: listed as a duplicate, as a full audit does
                new.append(given)
            continue
        station, sequence = header.station_id, header.sequence
        audited = claims.get((station, sequence))
        if audited is not None:
            raise InputError(
                f"{path} claims export {sequence} of {station}, which the audit state holds from another file "
                f"({audited.name}): a fork of the log; audit without --state to have it reported"
            )
        if sequence < last.get(station, -1):
            raise InputError(
                f"{path} is export {sequence} of {station}, earlier than export {last[station]} the audit state "
                "already holds: audit without --state"
            )
        new.append(given)
    return new


def _run_audit(
    opened: list[_Export],
    earlier: list[_Export],
    unreadable: list[ExportSummary],
    trust: TrustPolicy,
    bundles: Sequence[tuple[Release, BundleSummary]],
    findings: Findings,
    loaded: dict[str, Any] | None,
    staging: Path | None,
    *,
    workers: int,
    progress: Callable[[AuditProgress], None] | None,
    now: datetime,
    policy_sha256: str,
    started: float,
    thresholds: Thresholds,
    closeouts: Iterable[str | os.PathLike[str]],
    max_silence: timedelta,
) -> tuple[Report, dict[str, Any]]:
    """Read the exports, ask the index, report; with ``staging``, the index lives there (continued from the
    state's when ``loaded``) and the state to carry on from is returned too (else an empty dict)."""
    total_bytes = sum(e.size for e in opened)
    everything = [*earlier, *opened]
    frozen: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="vault-audit-") as scratch:
        with Index(scratch if staging is None else staging, existing=loaded is not None) as index:
            releases = [release for release, _ in bundles]
            run = _Audit(trust, releases, findings, index, progress, total_bytes, thresholds)
            if loaded is not None:
                run.restore(loaded)
            run.run(opened, _context(trust, releases, thresholds), workers)
            index.finish_loading(kept=staging is not None)
            if staging is not None:  # serialised now: the end below changes the logs and the findings
                frozen = {"findings": copy.deepcopy(findings), **copy.deepcopy(run.snapshot())}
            limits = {
                "max_reworks": thresholds.max_reworks,
                "per_minute": thresholds.per_minute(),
                "window": thresholds.operator_window,
            }
            kept = None if loaded is None else loaded.get("questions")  # none in a state of before they were kept
            if kept is not None:  # only the groups the new exports touch are asked about
                answers, questions = index.grouped_since(len(earlier), kept, _FINDINGS_PER_QUESTION, limits)
            else:
                answers = index.grouped(_FINDINGS_PER_QUESTION, parallel=workers, params=limits)
                if staging is not None:
                    kept_answers = {name: answers[name] for name in KEPT}
                    questions = {"answers": kept_answers, "tallies": index.tallies(thresholds.operator_window)}
            if staging is not None:
                frozen["questions"] = questions
            names = {e.number: e.name for e in everything}
            run.identities(answers, names)
            run.vanished(names)
            check_closeouts(read_closeouts(closeouts, trust, findings), _log_ends(run, everything), releases,
                            now=now, max_silence=max_silence, findings=findings)  # fmt: skip
            stations, per_bundle, totals, quality = run.station_reports(answers)
            # per station by sequence, as a full audit reads them (a state's runs read them in their order)
            summaries = sorted(run.summaries, key=lambda e: (e.station_id, e.sequence)) + unreadable
            found = findings.finish()
            shown = (s for f in found for s in (*f.serials, *(e.serial for e in f.evidence)) if s is not None)
            named = list(dict.fromkeys(shown))  # worst finding first
            units = _unit_records(index, named[:MAX_UNITS], run, names)
            if staging is not None:
                index.keep()
    if progress is not None:
        progress(AuditProgress(total_bytes, total_bytes, run.manifests))
    return Report(
        generated=format_time(now),
        policy_version=trust.version,
        policy_sha256=policy_sha256,
        bundles=tuple(
            BundleReport(summary, reconciled, Reconciliation.sum([r for _, r in reconciled], summary.total))
            for (_, summary), reconciled in zip(bundles, per_bundle, strict=True)
        ),
        exports=tuple(summaries),
        stations=tuple(stations),
        totals=(totals, quality),
        findings=tuple(found),
        manifests=run.manifests,
        verified=sum(log.verified for log in run.logs.values()),
        seconds=_time.monotonic() - started,
        units=units,
        units_named=len(named),
        lots=_lot_reports(answers),
    ), frozen


def _lot_reports(answers: dict[str, list[Any]]) -> tuple[LotReport, ...]:
    """First-pass yield and failures per component lot, from the index's answers."""
    failures: dict[tuple[str, str], dict[str, int]] = {}
    for component, lot, step, count in answers.get("lot_failures", ()):
        failures.setdefault((component, lot), {})[step] = int(count)
    reports = []
    for component, lot, attempted, first in answers.get("lot_yield", ()):
        steps = failures.pop((component, lot), {})
        reports.append(LotReport(component, lot, Quality.of(int(attempted), int(first or 0), steps, {})))
    for (component, lot), steps in sorted(failures.items()):  # failures of units whose first attempt is elsewhere
        reports.append(LotReport(component, lot, Quality.of(0, 0, steps, {})))
    return tuple(reports)
