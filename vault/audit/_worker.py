"""The audit's per-chunk work: decrypt, split, verify and summarise, in a worker process.

The main process reads each export's layout in order and hands the chunks
here (:func:`process_chunk`), one chunk per task, as where each lies in the
file: a worker reads it from the export itself (no ciphertext goes through a
pipe), authenticates and decrypts it, checks every manifest in it and
returns a :class:`ChunkResult`: the leaf hashes in log order, one compact
row per verified manifest for the identity index, per-entry issues, and
counters. Nothing here keeps state between chunks except the read-only
:class:`Context` set once per process and the export it reads from.

Speed. An audit is dominated by ECDSA verifications (one per manifest, one
per device certificate), so the Python work around each must stay small.
Entries a station wrote are canonical JSON, and for those a lean path checks
exactly what :func:`vault.manifest.open_manifest` checks, field by field,
without building the generic objects; anything the lean path does not
recognise goes through :func:`~vault.manifest.open_manifest` itself, which
gives the verdict and the error. The lean path therefore only ever accepts a
subset of what the generic path accepts, with the same values; the test
suite cross-checks the two. The lean path also works a chunk in phases
(parse, verify every manifest, read statements and certificates, verify
every certificate, then record in order), because verifications run back to
back keep OpenSSL's precomputed tables in the CPU cache: interleaved with
the parsing, each verification was about a fifth slower.
"""

from __future__ import annotations

import binascii
import datetime as _dt
import hashlib
import multiprocessing
import multiprocessing.pool
import multiprocessing.resource_tracker
import re
import signal
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vault.crypto import curve_of, load_spki
from vault.device_secrets import KINDS, MAX_SECRETS, NAME_PATTERN
from vault.errors import FormatError, InputError, SignatureError, ThresholdError, VaultError
from vault.evidence import MAX_RECORD_SIZE, ChunkPlace, EvidenceReader, RawChunk, decrypt_chunk
from vault.formats import MAX_SIGNATURE_SIZE, PAYLOAD_TYPE_INTOTO, STATEMENT_TYPE
from vault.formats._json import parse_json
from vault.manifest import (
    CERTIFIED_EVENTS,
    EVENTS,
    MANIFEST_PREDICATE,
    MAX_COEFFICIENTS,
    MAX_LOTS,
    MAX_MANIFEST_SIZE,
    MAX_MEASUREMENTS,
    MAX_NAME,
    MAX_STEPS,
    MAX_UNIT,
    OPERATOR_EVENTS,
    Manifest,
    QualityRecord,
    open_manifest,
)
from vault.merkle import leaf_hash
from vault.policy import format_time

__all__ = [
    "AuditedRelease",
    "ChunkResult",
    "Context",
    "Issue",
    "Label",
    "Measured",
    "Stamp",
    "Tested",
    "StationKeys",
    "init_pool_worker",
    "start_pool",
    "init_worker",
    "process_chunk",
    "time_issue",
]

# --- what the main process gives and gets back -----------------------------------------------


@dataclass(frozen=True)
class StationKeys:
    """An enrolled station's public keys, as DER, so they pickle to worker processes."""

    station_id: str
    signing_key_id: str
    signing_spki: bytes
    issuing_ca_key_id: str
    issuing_ca_spki: bytes


@dataclass(frozen=True)
class AuditedRelease:
    """One audited release, as a manifest of its bundle is checked against it."""

    number: int  # from 1, in the order given: the index's ``in_bundle`` (0: a manifest of no audited bundle)
    bundle_id: str
    product: str
    version: str
    security_counter: int
    allowlist: frozenset[tuple[str, str]]  # (image name, sha256) the release allows
    image_order: tuple[tuple[str, str], ...]  # the same, in the release's order
    not_before: str  # the release's window, "YYYY-MM-DDTHH:MM:SSZ" (compared as strings)
    expires: str


@dataclass(frozen=True)
class Context:
    """What every worker needs to know, set once per process: keys, the audited releases, limits."""

    stations: tuple[StationKeys, ...]
    releases: tuple[AuditedRelease, ...]  # each manifest is checked against the release of its bundle id
    jump_seconds: int  # a forward step between consecutive entries longer than this is implausible
    max_clock_step: int = 300  # inside one clock session, wall-clock step minus monotonic step allowed


Issue = tuple[str, int, "str | None", "str | None", "str | None", str]
"""(code, log position, manifest id, hardware id, serial, detail): one thing wrong or worth listing."""

Label = tuple[int, str, str, "str | None", str]
"""(position, manifest id, hardware id, serial, label read) of a label-mismatch manifest."""

Stamp = tuple[str, int, "str | None", "str | None", "str | None"]
"""(time, log position, manifest id, hardware id, serial) of a verified entry, for the time checks."""

Row = tuple[
    int,
    str,
    str,
    str,
    "str | None",
    "str | None",
    int,
    int,
    "int | None",
    "str | None",
    "str | None",
    int,
    int,
    "str | None",
]
"""(position, manifest id, event, hardware id, serial, device key id, whether it names a unit, the number of
the audited release it is for (0: none), the unit, the failed step of a failed unit, the ISO week of an
exception event, the time in seconds since 1970, the fixture, the operator who acted (None for an interrupted
unit, which the station closes on the operator's behalf when it starts again)) of a verified manifest."""

Tested = tuple[
    tuple[tuple[str, int], ...],
    tuple[tuple[str, str, "float | None", "float | None", float, bool], ...],
    tuple[tuple[str, str, float], ...],
]
"""A test record as the audit uses it: (step, milliseconds), (name, unit, lower, upper, value, passed) of each
measurement, (name, unit, value) of each calibration coefficient."""

Measured = tuple[
    int,
    str,
    tuple[tuple[str, int], ...],
    tuple[tuple[str, str, "float | None", "float | None", float, bool], ...],
    tuple[tuple[str, str, float], ...],
]
"""(log position, ISO week, (step, milliseconds) in the order run, (name, unit, lower, upper, value, passed) of
each measurement, (name, unit, value) of each calibration coefficient) of a manifest with a test record."""

LotRow = tuple[int, str, str, str]
"""(log position, manifest id, component, lot code) of each lot a manifest records."""

Clock = tuple[str, int, int, int, str, str, "str | None"]
"""(clock session, monotonic seconds, wall-clock seconds since 1970, log position, manifest id, hardware id,
serial) of a manifest that records its station's monotonic clock."""


@dataclass
class ChunkResult:
    """What one chunk held, in order. Plain values only: it pickles back to the main process."""

    export: int
    index: int
    last: bool
    size: int  # the chunk's ciphertext bytes, for progress
    error: str | None = None  # the chunk did not authenticate or split: the export is broken from here
    head: dict[str, Any] | None = None  # the export record, when the chunk starts with one
    tail: dict[str, Any] | None = None  # the checkpoint record, when the chunk ends with one
    misplaced: list[str] = field(default_factory=list)  # records out of their place, one line each
    first_seq: int | None = None  # the first entry's declared log position
    count: int = 0  # entries in the chunk
    seqs: list[int] | None = None  # every declared position, only when they are not consecutive
    leaves: bytes = b""  # the entries' leaf hashes, 32 bytes each, in order
    rows: list[Row] = field(default_factory=list)  # one per verified manifest
    units: dict[int, list[tuple[int, str]]] = field(default_factory=dict)  # release number -> its (unit, event)
    issues: list[Issue] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)  # one per label-mismatch manifest that names the label read
    first_stamps: list[Stamp] = field(default_factory=list)  # the first two verified entries (checked by the caller)
    last_stamps: list[Stamp] = field(default_factory=list)  # the last two, when the chunk verified more than two
    first_clock: Clock | None = None  # the first and last verified entries that record a monotonic clock
    last_clock: Clock | None = None
    verified: int = 0
    events: dict[str, int] = field(default_factory=dict)
    measured: list[Measured] = field(default_factory=list)  # the audited release's units with a test record
    lots: list[LotRow] = field(default_factory=list)  # the component lots each unit's manifest records


# --- per-process state ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Station:
    station_id: str
    signing_key_id: str
    signing_key_id_bytes: bytes
    keys: tuple[str, str]  # (signing, issuing_ca) key ids a manifest names
    signing: ec.EllipticCurvePublicKey
    signing_alg: ec.ECDSA
    issuing_ca_key_id: str
    issuing_ca: ec.EllipticCurvePublicKey
    issuing_ca_alg: ec.ECDSA
    issuing_ca_oid: x509.ObjectIdentifier


_SIGNATURE_OIDS = {
    "P-256": x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256,
    "P-384": x509.SignatureAlgorithmOID.ECDSA_WITH_SHA384,
}


class _Release:
    """An audited release as the checks use it: looked up once per manifest, by its bundle id."""

    def __init__(self, release: AuditedRelease) -> None:
        self.facts = release
        self.number = release.number
        self.expected = (release.product, release.version, release.security_counter)
        # The images a manifest of the release usually lists: all of them, in order, read back or not;
        # by their canonical JSON text, so that the usual case is one dictionary look-up.
        self.usual_images: dict[str, tuple[tuple[str, str, str | None], ...]] = {}
        names = [name for name, _ in release.image_order]
        if all(_printable(name) and '"' not in name and "\\" not in name for name in names):
            for read_back in (True, False):
                images = tuple((name, sha256, sha256 if read_back else None) for name, sha256 in release.image_order)
                text = ",".join(
                    f'{{"measurement":{"null" if m is None else f"{m!r}".replace(chr(39), chr(34))},'
                    f'"name":"{name}","sha256":"{sha256}"}}'
                    for name, sha256, m in images
                )
                self.usual_images[text] = images
        self.usual_image_sets = frozenset(self.usual_images.values())


class _State:
    def __init__(self, context: Context) -> None:
        self.context = context
        self.releases = {r.bundle_id: _Release(r) for r in context.releases}
        # every release's usual image lists by their text, for the parse (each manifest's own release decides)
        self.usual_images = {text: images for r in self.releases.values() for text, images in r.usual_images.items()}
        self.stations: dict[str, _Station] = {}
        for keys in context.stations:
            signing = load_spki(keys.signing_spki, what=f"station {keys.station_id} signing key")
            ca = load_spki(keys.issuing_ca_spki, what=f"station {keys.station_id} issuing CA key")
            ca_curve = curve_of(ca)
            self.stations[keys.station_id] = _Station(
                keys.station_id,
                keys.signing_key_id,
                keys.signing_key_id.encode("ascii"),
                (keys.signing_key_id, keys.issuing_ca_key_id),
                signing,
                ec.ECDSA(curve_of(signing).hash()),
                keys.issuing_ca_key_id,
                ca,
                ec.ECDSA(ca_curve.hash()),
                _SIGNATURE_OIDS[ca_curve.name],
            )
        self.reader: EvidenceReader | None = None  # the export this process reads its chunks from

    def read(self, path: str, header_sha256: bytes, place: ChunkPlace) -> RawChunk:
        """The chunk at ``place`` of the export at ``path``, read here (its ciphertext not sent through a
        pipe), from a file whose header is still the one the main process read (``header_sha256``).

        Raises:
            InputError: the file cannot be read, or it changed while it was being audited.
        """
        reader = self.reader
        if reader is None or str(reader.path) != path:
            self.close()
            reader = self.reader = EvidenceReader(path)
            if reader.header.header_sha256 != header_sha256:
                raise InputError(f"{path} changed while it was being audited (its header is another export's)")
        return reader.read_chunk(place)

    def close(self) -> None:
        """Close the export this process reads from."""
        if self.reader is not None:
            self.reader.close()
            self.reader = None


_state: _State | None = None


def start_pool(workers: int, context: Context, started: list[multiprocessing.pool.Pool]) -> None:
    """``workers`` worker processes, each with ``context``, that leave Ctrl-C to their parent: appended to
    ``started``, which the caller terminates whatever happens (its ``finally``).

    Ctrl-C is held back (not lost) in the parent while the pool starts, so
    no worker, nor the forkserver, is stopped while it starts up (Python
    would print a traceback); once started, the workers ignore it
    (:func:`init_pool_worker`) and the parent terminates them. Blocking the
    signal in this thread is not enough: any other thread of the process
    (a hashing library's, a token module's) may take it, and Python then
    raises it here all the same. So the handler is swapped for one that
    only notes it, and a Ctrl-C noted is answered once the pool is in
    ``started``: a pool half made, or named only by a return value, would
    be left running, and its workers, still starting, would print a
    traceback once the parent's exit removed the semaphores they were given.
    """
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    # The resource tracker, started by the first pool, unblocks Ctrl-C once it has started; started
    # here first, it cannot unblock it while the forkserver starts below.
    multiprocessing.resource_tracker.ensure_running()
    noted: list[int] = []
    held = threading.current_thread() is threading.main_thread()  # only the main thread sets handlers
    previous = signal.signal(signal.SIGINT, lambda number, frame: noted.append(number)) if held else None
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        context_ = multiprocessing.get_context(method)
        started.append(context_.Pool(workers, initializer=init_pool_worker, initargs=(context,)))
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        if held:
            signal.signal(signal.SIGINT, previous)
    if noted:  # a Ctrl-C while the pool started, answered as it would have been
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt


def init_pool_worker(context: Context) -> None:
    """A pool worker's initializer: Ctrl-C is ignored (the parent stops the pool), then :func:`init_worker`.

    A terminal sends Ctrl-C to every process of the command; only the
    parent should answer it, with one line, and terminate its workers.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    init_worker(context)


def init_worker(context: Context) -> None:
    """Set the context of this process (the pool's initializer; also called for in-process audits)."""
    global _state
    _state = _State(context)


def close_worker() -> None:
    """Close what :func:`init_worker` opened in this process (an in-process audit's end)."""
    if _state is not None:
        _state.close()


# --- the chunk ---------------------------------------------------------------------------------


def process_chunk(task: tuple[int, str, bytes, bytes, str, ChunkPlace]) -> ChunkResult:
    """Read one chunk of an export here, decrypt it and check every record in it (:func:`check_chunk`).

    Args:
        task: (export number, the header's station id, data key, header SHA-256, the export's path, where
            the chunk lies in it).
    """
    export, station_id, data_key, header_sha256, path, place = task
    assert _state is not None, "init_worker was not called in this process"
    try:
        chunk = _state.read(path, header_sha256, place)
    except VaultError as e:
        result = ChunkResult(export, place.index, place.last, place.length)
        result.error = str(e)
        return result
    return check_chunk(export, station_id, data_key, header_sha256, chunk)


def check_chunk(export: int, station_id: str, data_key: bytes, header_sha256: bytes, chunk: RawChunk) -> ChunkResult:
    """Decrypt one chunk of export number ``export`` and check every record in it."""
    result = ChunkResult(export, chunk.index, chunk.last, len(chunk.ciphertext))
    try:
        records = decrypt_chunk(data_key, header_sha256, chunk)
    except VaultError as e:
        result.error = str(e)
        return result
    assert _state is not None, "init_worker was not called in this process"
    _Chunk(_state, _state.stations.get(station_id), result).run(records)
    return result


class _Chunk:
    """The records of one chunk, checked in order into a :class:`ChunkResult`."""

    def __init__(self, state: _State, station: _Station | None, result: ChunkResult) -> None:
        self.context = state.context
        self.state_images = state.usual_images
        self.releases = state.releases
        self.units: dict[int, list[tuple[int, str]]] = {r.number: [] for r in state.releases.values()}
        self.station = station
        self.result = result
        self.seqs: list[int] = []
        self.leaves: list[bytes] = []
        self.events: Counter[str] = Counter()
        self.stamps: list[Stamp] = []  # the last two verified entries
        self.days: dict[str, int] = {}  # "YYYY-MM-DD" -> its first second since 1970

    def run(self, records: list[bytes]) -> None:
        result = self.result
        last_index = len(records) - 1
        ready: list[_Ready | None] = [None] * len(records)
        if self.station is not None:
            self.prepare(records, ready, self.station)
        for i, record in enumerate(records):
            entry = ready[i]
            if entry is not None:
                self.leaves.append(entry.leaf)
                self.seqs.append(entry.position)
                self.manifest(entry.fields, entry.position, entry.certificate_problem, entry.station)
                continue
            if record.startswith(b'{"certificate":'):
                self.entry(record)
                continue
            if record.startswith(b'{"sealed":') and record.endswith(b',"type":"secrets"}'):
                continue  # sealed per-device secrets, as a station writes them: for 'vault secrets', not the audit
            try:
                value = parse_json(record, max_size=MAX_RECORD_SIZE, what="evidence record")
            except FormatError as e:
                result.misplaced.append(f"record {i} of chunk {result.index}: {e}")
                continue
            kind = value.get("type") if isinstance(value, dict) else None
            if kind == "entry":
                self.entry(record, value)
            elif kind == "export" and i == 0 and result.index == 0:
                result.head = value
            elif kind == "checkpoint" and i == last_index and result.last:
                result.tail = value
            elif kind == "secrets":  # sealed per-device secrets for the device maker: opened by 'vault secrets'
                pass
            else:
                shown = kind if isinstance(kind, str) else "untyped"
                result.misplaced.append(f"a {shown[:32]!r} record out of place (record {i} of chunk {result.index})")
        seqs = self.seqs
        if seqs:
            result.first_seq = seqs[0]
            result.count = len(seqs)
            if seqs[-1] - seqs[0] != len(seqs) - 1 or any(b - a != 1 for a, b in zip(seqs, seqs[1:], strict=False)):
                result.seqs = seqs
        result.leaves = b"".join(self.leaves)
        result.events = dict(self.events)
        result.units = {number: units for number, units in self.units.items() if units}

    # --- the entries a station wrote, in bulk ------------------------------------------------

    def prepare(self, records: list[bytes], ready: list[_Ready | None], station: _Station) -> None:
        """Verify every entry of the chunk that is in the exact form a station writes, in phases.

        Parsing, then all manifest signatures back to back, then statements
        and certificates, then all certificate signatures back to back: the
        verifications run together, so OpenSSL's tables stay in the cache
        instead of being pushed out by the parsing between them. An entry
        that is not recognised at some step is left to :meth:`entry`, which
        decides about it, in order; nothing is recorded here.
        """
        parsed = []
        for i, record in enumerate(records):
            if record.startswith(b'{"certificate":'):
                entry = _canonical_entry(record, station.signing_key_id_bytes)
                if entry is not None:
                    parsed.append((i, *entry))
        verify, algorithm = station.signing.verify, station.signing_alg
        signed = []
        for item in parsed:
            payload = item[2]
            try:
                verify(item[3], _PAE_HEAD + b"%d %s" % (len(payload), payload), algorithm)
            except InvalidSignature:
                continue  # the generic path names the forgery
            signed.append(item)
        usual = self.state_images
        pending = []
        for i, position, payload, _, leaf, certificate in signed:
            try:
                fields = _statement_fields(payload.decode("utf-8"), usual)
            except UnicodeDecodeError:
                continue
            if fields is None:
                continue
            if certificate is not None or fields.certificate_sha256 is not None or fields.event in CERTIFIED_EVENTS:
                parts = _certificate_parts(fields, certificate, certificate is not None, station)
            else:
                parts = (None, None, None, None)
            pending.append((i, position, leaf, fields, parts))
        verify, algorithm = station.issuing_ca.verify, station.issuing_ca_alg
        for i, position, leaf, fields, (problem, signature, tbs, after) in pending:
            if problem is None and signature is not None and tbs is not None:
                try:
                    verify(signature, tbs, algorithm)
                    problem = after
                except InvalidSignature:
                    problem = f"the certificate is not issued by station '{station.station_id}''s issuing CA"
            ready[i] = _Ready(position, leaf, fields, problem, station)

    # --- one entry, any spelling -------------------------------------------------------------

    def entry(self, record: bytes, value: Any = None) -> None:
        """Check one entry record read strictly: its leaf, its manifest's signature and fields, its certificate."""
        result = self.result
        try:
            position, envelope, encoded = _generic_record(record if value is None else value)
        except FormatError as e:
            # Without an envelope there is no leaf: the log cannot be recomputed past here.
            result.misplaced.append(f"an entry record that does not parse: {e}")
            return
        self.seqs.append(position)
        envelope_bytes = envelope.encode("utf-8", "surrogatepass")
        self.leaves.append(leaf_hash(envelope_bytes))
        station = self.station
        if station is None:
            return  # an unknown station: nothing can be verified (the main process reports the export)
        issues = result.issues
        try:
            manifest = open_manifest(envelope_bytes, {station.signing_key_id: station.signing})
        except SignatureError as e:
            issues.append(("signature-invalid", position, None, None, None, str(e)))
            return
        except ThresholdError:
            shown = f"not signed by station '{station.station_id}''s enrolled signing key"
            issues.append(("unknown-station", position, None, None, None, shown))
            return
        except FormatError as e:
            issues.append(("manifest-malformed", position, None, None, None, str(e)))
            return
        fields = _Fields.of(manifest)
        problem = None
        if encoded is not None or fields.certificate_sha256 is not None or fields.event in CERTIFIED_EVENTS:
            der = None if encoded is None else _b64(encoded)
            problem = _check_certificate(fields, der, encoded is not None, station)
        self.manifest(fields, position, problem, station)

    # --- what a verified manifest says -------------------------------------------------------

    def manifest(self, m: _Fields, position: int, certificate_problem: str | None, station: _Station) -> None:
        """Everything a verified manifest says, checked and counted."""
        result = self.result
        issues = result.issues
        context = self.context
        mid, hwid, serial, event, time = m.id, m.hardware_id, m.serial, m.event, m.time
        if m.station_id != station.station_id:
            issues.append(("unknown-station", position, mid, hwid, serial, f"it names station {m.station_id[:64]!r}"))
            return
        if m.sequence != position:
            shown = f"manifest {m.sequence} of the log sits at position {position}"
            issues.append(("manifest-replayed", position, mid, hwid, serial, shown))
            return
        result.verified += 1
        release = self.releases.get(m.bundle_id)  # the manifest's own release, if it is one audited
        if (
            release is None
            or (m.signing, m.issuing_ca) != station.keys
            or (m.product, m.version, m.security_counter) != release.expected
            or m.images not in release.usual_image_sets
        ):
            self.unusual(m, position, release, station)
        if certificate_problem is not None:
            issues.append(("certificate-invalid", position, mid, hwid, serial, certificate_problem))
        if m.label is not None and m.label != serial and event in CERTIFIED_EVENTS:
            shown = f"the {event} device's label reads {m.label[:64]!r}"
            issues.append(("label-serial-differs", position, mid, hwid, serial, shown))
        # time: per station monotonic, inside the window, no implausible jump
        # (the chunk's first two entries are checked by the caller, who knows the entries before the chunk)
        stamps = self.stamps
        stamp = (time, position, mid, hwid, serial)
        if len(stamps) < 2:
            result.first_stamps.append(stamp)
        else:
            issue = time_issue(stamps[-2], stamps[-1], stamp, context.jump_seconds)
            if issue is not None:
                issues.append(issue)
            del stamps[0]
            result.last_stamps = [stamps[-1], stamp]
        stamps.append(stamp)
        day = self.days.get(time[:10])
        if day is None:
            day = self.days[time[:10]] = _epoch(time[:10] + "T00:00:00Z")
        epoch = day + int(time[11:13]) * 3600 + int(time[14:16]) * 60 + int(time[17:19])
        if m.clock_session is not None and m.clock_monotonic is not None:
            self.clock((m.clock_session, m.clock_monotonic, epoch, position, mid, hwid, serial))
        if release is not None and not release.facts.not_before <= time < release.facts.expires:
            shown = f"{time} is outside {release.facts.not_before} to {release.facts.expires}"
            issues.append(("time-outside-window", position, mid, hwid, serial, shown))
        # events and the quality figures
        self.events[event] += 1
        step = week = None
        if event in _OPERATOR_EVENTS:  # what people did: listed where worth a look, never an exception
            self.operator_event(m, event, position)
        elif event not in ("provisioned", "retry"):  # a retry's failure was the exception
            step = self.exception(m, event, position)
            week = _week(time)
        in_bundle = 0 if release is None else release.number
        operator = None if m.failed_step == "interrupted" else m.operator
        result.rows.append(
            (position, mid, event, hwid, serial, m.device_key_id, m.unit is not None, in_bundle, m.unit, step, week,
             epoch, m.fixture, operator)
        )  # fmt: skip
        if m.lots:
            result.lots.extend((position, mid, component, lot) for component, lot in m.lots)
        if m.quality is not None and in_bundle:
            result.measured.append((position, week or _week(time), *m.quality))
        if m.unit is not None:
            if release is not None:
                self.units[in_bundle].append((m.unit, event))
        elif event in ("provisioned", "retry", "rework"):  # hardware was used: counted, and named as evasion
            issues.append(("unit-missing", position, mid, hwid, serial, f"a {event} manifest names no unit"))

    def clock(self, reading: Clock) -> None:
        """A wall clock set forward inside one run of the station: its step is longer than the monotonic one."""
        result = self.result
        previous = result.last_clock
        if previous is None:
            result.first_clock = reading
        else:
            shown = clock_step(previous, reading, self.context.max_clock_step)
            if shown is not None:
                result.issues.append(("clock-jump", *reading[3:], shown))
        result.last_clock = reading

    def unusual(self, m: _Fields, position: int, release: _Release | None, station: _Station) -> None:
        """The slower checks, for a manifest whose keys, release or images are not the usual ones."""
        issues = self.result.issues
        mid, hwid, serial = m.id, m.hardware_id, m.serial
        if m.signing != station.signing_key_id or m.issuing_ca != station.issuing_ca_key_id:
            shown = "it names keys that are not the station's enrolled keys"
            issues.append(("unknown-station", position, mid, hwid, serial, shown))
        if release is None:
            issues.append(("bundle-mismatch", position, mid, hwid, serial, f"bundle {m.bundle_id}"))
            return
        if (m.product, m.version, m.security_counter) != release.expected:
            shown = f"it names {m.product[:64]} {m.version[:64]} counter {m.security_counter} for its audited bundle"
            issues.append(("bundle-mismatch", position, mid, hwid, serial, shown))
        # images: every digest programmed (and read back) is one its release allows
        allow = release.facts.allowlist
        for name, sha256, measurement in m.images:
            if (name, sha256) not in allow:
                shown = f"image {name[:64]!r} {sha256[:16]}"
                issues.append(("image-not-allowed", position, mid, hwid, serial, shown))
            elif measurement is not None and measurement != sha256:
                shown = f"image {name[:64]!r} reads back {measurement[:16]}"
                issues.append(("image-not-allowed", position, mid, hwid, serial, shown))
        if m.event in CERTIFIED_EVENTS:  # a device recorded as good holds every image of its release (another
            programmed = {name for name, _, _ in m.images}  # digest under its name is image-not-allowed)
            missing = [name for name, _ in release.facts.image_order if name not in programmed]
            if missing:
                shown = f"the {m.event} device lacks image(s) " + ", ".join(repr(n[:64]) for n in missing[:8])
                issues.append(("image-missing", position, mid, hwid, serial, shown))

    def operator_event(self, m: _Fields, event: str, position: int) -> None:
        """List a supervisor's acknowledgement and a label the printer did not print, as their findings."""
        detail = (m.detail or "")[:200]
        if event == "acknowledge":
            shown = f"by {m.operator[:64]}: {detail}".rstrip(": ")
            self.result.issues.append(("stop-acknowledged", position, m.id, m.hardware_id, m.serial, shown))
        elif event == "label" and m.failed_step is not None:
            self.result.issues.append(("label-not-printed", position, m.id, m.hardware_id, m.serial, detail))

    def exception(self, m: _Fields, event: str, position: int) -> str | None:
        """List an exception event as its info finding; the failed step of a failed unit, for the Pareto."""
        issues = self.result.issues
        detail = (m.detail or "")[:200]
        if event == "failed":
            step = m.failed_step or "unknown"
            if m.unit is None:  # a refusal (no unit left, or a device the station would not take): no failed unit
                code = "unit-refused"
            else:
                code = "unit-interrupted" if step == "interrupted" else "unit-failed"
            issues.append((code, position, m.id, m.hardware_id, m.serial, f"at {step[:64]}: {detail}".rstrip(": ")))
            return None if m.unit is None else step
        elif event == "label-mismatch":
            if m.label is not None:
                self.result.labels.append((position, m.id, m.hardware_id, m.serial, m.label))
            issues.append(("label-mismatch", position, m.id, m.hardware_id, m.serial, detail or f"label {m.label!r}"))
        elif event == "break-glass":
            issues.append(("break-glass", position, m.id, m.hardware_id, m.serial, detail or "no reason given"))
        elif event == "rework":
            issues.append(("unit-reworked", position, m.id, m.hardware_id, m.serial, "provisioned again"))
        elif event == "scrap":
            issues.append(("unit-scrapped", position, m.id, m.hardware_id, m.serial, detail or "scrapped"))
        return None


# --- records -----------------------------------------------------------------------------------


class _Ready(NamedTuple):
    """An entry verified in bulk by :meth:`_Chunk.prepare`, waiting for its turn."""

    position: int
    leaf: bytes
    fields: _Fields
    certificate_problem: str | None
    station: _Station


_OPERATOR_EVENTS = frozenset(OPERATOR_EVENTS)


def _canonical_entry(record: bytes, keyid: bytes) -> tuple[int, bytes, bytes, bytes, bytes | None] | None:
    """(position, payload, signature, leaf hash, certificate DER) of an entry exactly as a station writes it.

    The record is canonical JSON whose ``envelope`` string is the canonical
    one-signature envelope, so its parts are found by position and every
    byte is accounted for: the fixed text is compared, the base64 is decoded
    strictly, the key id must be ``keyid`` (the station's) and the sequence
    is plain digits. Anything else gives None, and the generic path decides.
    """
    if record[15:19] == b"null":
        certificate: bytes | None = None
        at = 19
    elif record[15:16] == b'"':
        close = record.find(b'"', 16)
        if close < 0:
            return None
        certificate = _b64_bytes(record[16:close])
        if certificate is None:
            return None
        at = close + 1
    else:
        return None
    if not record.startswith(_R_ENVELOPE, at):
        return None
    payload_start = at + len(_R_ENVELOPE)
    payload_end = record.find(b"\\", payload_start)
    if payload_end < 0 or not record.startswith(_R_KEYID, payload_end):
        return None
    keyid_start = payload_end + len(_R_KEYID)
    if record[keyid_start : keyid_start + 64] != keyid or not record.startswith(_R_SIG, keyid_start + 64):
        return None
    sig_start = keyid_start + 64 + len(_R_SIG)
    sig_end = record.find(b"\\", sig_start)
    if sig_end < 0 or not record.startswith(_R_SEQUENCE, sig_end) or not record.endswith(_R_TAIL):
        return None
    digits = record[sig_end + len(_R_SEQUENCE) : -len(_R_TAIL)]
    if not digits.isdigit() or len(digits) > 19 or (digits[0] == 48 and len(digits) > 1):
        return None
    position = int(digits)
    payload_b64 = record[payload_start:payload_end]
    sig_b64 = record[sig_start:sig_end]
    if position > _MAX_POSITION or len(payload_b64) + len(sig_b64) + _E_FIXED > MAX_MANIFEST_SIZE:
        return None
    try:  # _b64_bytes, inline: this runs once per manifest
        payload = _a2b(payload_b64, strict_mode=True)
        signature = _a2b(sig_b64, strict_mode=True)
    except (ValueError, binascii.Error):
        return None
    tail = len(payload) % 3
    if tail and _b2a(payload[-tail:], newline=False) != payload_b64[-4:]:
        return None
    tail = len(signature) % 3
    if tail and _b2a(signature[-tail:], newline=False) != sig_b64[-4:] or not 0 < len(signature) <= _MAX_SIG:
        return None
    # The envelope's bytes, unescaped, are the Merkle leaf.
    leaf = _sha256(b"".join((b"\x00", _E_HEAD, payload_b64, _E_KEYID, keyid, _E_SIG, sig_b64, _E_END))).digest()
    return position, payload, signature, leaf, certificate


_ENTRY_FIELDS = frozenset({"type", "sequence", "envelope", "certificate"})
_MAX_POSITION = 2**63 - 1


def _generic_record(value: Any) -> tuple[int, str, str | None]:
    """An entry record read strictly (any spelling), or FormatError."""
    if isinstance(value, bytes):
        value = parse_json(value, max_size=MAX_RECORD_SIZE, what="evidence entry")
    if not isinstance(value, dict) or set(value) != _ENTRY_FIELDS or value["type"] != "entry":
        raise FormatError("an entry record has exactly the fields type, sequence, envelope and certificate")
    position, envelope, certificate = value["sequence"], value["envelope"], value["certificate"]
    if type(position) is not int or not 0 <= position <= _MAX_POSITION:
        raise FormatError("an entry's sequence is a whole number")
    if not isinstance(envelope, str):
        raise FormatError("an entry's envelope is a string")
    if certificate is not None and not isinstance(certificate, str):
        raise FormatError("an entry's certificate is base64 text or null")
    return position, envelope, certificate


# --- the manifest, lean ------------------------------------------------------------------------


class _Fields(NamedTuple):
    """The manifest fields the audit uses."""

    id: str
    sequence: int
    event: str
    station_id: str
    bundle_id: str
    product: str
    version: str
    security_counter: int
    unit: int | None
    hardware_id: str
    serial: str | None
    label: str | None
    images: tuple[tuple[str, str, str | None], ...]
    device_key_id: str | None
    certificate_serial: str | None
    certificate_sha256: str | None
    signing: str
    issuing_ca: str
    failed_step: str | None
    detail: str | None
    time: str
    fixture: int = 0
    operator: str = "operator"
    clock_session: str | None = None
    clock_monotonic: int | None = None
    quality: Tested | None = None
    lots: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, m: Manifest) -> _Fields:
        return cls(
            m.id,
            m.sequence,
            m.event,
            m.station_id,
            m.bundle_id,
            m.product,
            m.version,
            m.security_counter,
            m.unit,
            m.hardware_id,
            m.serial,
            m.label,
            tuple((i.name, i.sha256, i.measurement) for i in m.images),
            m.device_key_id,
            m.certificate_serial,
            m.certificate_sha256,
            m.keys["signing"],
            m.keys["issuing_ca"],
            m.failed_step,
            m.detail,
            format_time(m.time),
            m.fixture,
            m.operator,
            m.clock_session,
            m.clock_monotonic,
            None if m.quality is None else _tested(m.quality),
            tuple(sorted((m.lots or {}).items())),
        )


# A canonical one-signature envelope, and the same inside a canonical entry record (quotes escaped).
_E_HEAD = b'{"payload":"'
_E_KEYID = b'","payloadType":"' + PAYLOAD_TYPE_INTOTO.encode() + b'","signatures":[{"keyid":"'
_E_SIG = b'","sig":"'
_E_END = b'"}]}'
_R_ENVELOPE = b',"envelope":"' + _E_HEAD.replace(b'"', b'\\"')
_R_KEYID = _E_KEYID.replace(b'"', b'\\"')
_R_SIG = _E_SIG.replace(b'"', b'\\"')
_R_SEQUENCE = _E_END.replace(b'"', b'\\"') + b'","sequence":'
_R_TAIL = b',"type":"entry"}'
_E_FIXED = len(_E_HEAD) + len(_E_KEYID) + 64 + len(_E_SIG) + len(_E_END)  # an envelope's bytes but its base64
_sha256 = hashlib.sha256
_a2b = binascii.a2b_base64
_b2a = binascii.b2a_base64
_MAX_SIG = MAX_SIGNATURE_SIZE
_PAE_HEAD = b"DSSEv1 %d %s " % (len(PAYLOAD_TYPE_INTOTO), PAYLOAD_TYPE_INTOTO.encode())
_MAX_COUNT = 2**63
# the optional lots (sorted, unique component names; the printability of codes is checked after the match)
# and sealed secrets' records, exactly as a station writes them (vault.manifest.parse_lots, parse_sealed_records)
_LOT_ITEM = r'"[a-z0-9][a-z0-9_.-]{0,63}":"[^"\\\x00-\x1f]{1,64}"'
_LOTS = re.compile(rf"\{{(?:{_LOT_ITEM}(?:,{_LOT_ITEM}){{0,{MAX_LOTS - 1}}})?\}}")
_LOT_PAIR = re.compile(r'"([a-z0-9][a-z0-9_.-]{0,63})":"([^"\\\x00-\x1f]{1,64})"')
_KIND = "|".join(re.escape(k) for k in KINDS)
_SECRET_ITEM = (
    rf'\{{"installed":(?:true|false),"kind":"(?:{_KIND})","name":"{NAME_PATTERN}",'
    r'"recipient":"[0-9a-f]{64}","sealed_sha256":"[0-9a-f]{64}"\}'
)
_SECRETS = re.compile(rf"\[(?:{_SECRET_ITEM}(?:,{_SECRET_ITEM}){{0,{MAX_SECRETS - 1}}})?\]")


def _canonical_statement() -> re.Pattern[str]:
    """The manifest statement exactly as a station serialises it: canonical JSON, keys sorted.

    Text values are matched without escapes (a value holding a quote or a
    backslash takes the generic path); lengths, printability, integer ranges,
    dates and the subject digest are checked after the match.
    """
    text = r'"([^"\\\x00-\x1f]+)"'
    optional_text = r'(?:null|"([^"\\\x00-\x1f]+)")'
    sha256 = r'"([0-9a-f]{64})"'
    optional_sha256 = r'(?:null|"([0-9a-f]{64})")'
    count = r"(0|[1-9][0-9]{0,18})"
    image = r'\{"measurement":(?:null|"[0-9a-f]{64}"),"name":"[^"\\\x00-\x1f]+","sha256":"[0-9a-f]{64}"\}'
    events = "|".join(re.escape(e) for e in EVENTS)
    fields = [
        ("bundle_id", r'"([0-9a-f]{32})"'),
        ("certificate_serial", r'(?:null|"((?:[0-9a-f]{2}){1,20})")'),
        ("certificate_sha256", optional_sha256),
        ("clock", text + r'(?:,"clock_monotonic":(0|[1-9][0-9]{0,18}),"clock_session":"([0-9a-f]{32})")?'),
        ("detail", optional_text),
        ("device_key_id", optional_sha256),
        ("event", f'"({events})"'),
        ("failed_step", optional_text),
        ("fixture", count),
        ("hardware_id", r'"((?:[0-9a-f]{2}){1,32})"'),
        ("id", r'"([0-9a-f]{32})"'),
        ("images", rf"\[((?:{image}(?:,{image}){{0,63}})?)\]"),
        ("keys", r'\{"issuing_ca":' + sha256 + ',"signing":' + sha256 + r"\}"),
        # the component lots (a mapping of plain strings) and the sealed secrets' records (a list of flat
        # objects), optional, found by their braces and brackets and read strictly after the match
        ("label", optional_text + r'(?:,"lots":(\{[^{}]*\}))?'),
        ("operator", text),
        ("policy_version", count),
        # the test record's three lists, found by their brackets (a name holding a "]" takes the generic path)
        (
            "product",
            text + r'(?:,"quality":(\{"calibration":\[[^\]]*\],'
            r'"measurements":\[[^\]]*\],"steps":\[[^\]]*\]\}))?'
            r'(?:,"secrets":(\[[^\]]*\]))?',
        ),
        ("security_counter", count),
        ("sequence", count),
        ("serial", optional_text),
        ("station_id", text),
        ("time", r'"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z)"'),
        ("unit", r"(null|0|[1-9][0-9]{0,18})"),
        ("version", text),
    ]
    assert [name for name, _ in fields] == sorted(_PREDICATE_FIELDS)
    predicate = ",".join(f'"{name}":{value}' for name, value in fields)
    return re.compile(
        re.escape('{"_type":"' + STATEMENT_TYPE + '","predicate":{')
        + predicate
        + re.escape('},"predicateType":"' + MANIFEST_PREDICATE + '","subject":[{"digest":{"sha256":"')
        + r'([0-9a-f]{64})"\},"name":"hwid:([0-9a-f]+)"\}\]\}'
    )


_PREDICATE_FIELDS = frozenset(
    {
        "id", "sequence", "event", "station_id", "operator", "fixture", "bundle_id", "product", "version",
        "security_counter", "policy_version", "unit", "hardware_id", "serial", "label", "images", "device_key_id",
        "certificate_serial", "certificate_sha256", "keys", "failed_step", "detail", "time", "clock",
    }
)  # fmt: skip
_STATEMENT = _canonical_statement()
_IMAGE = re.compile(
    r'\{"measurement":(?:null|"([0-9a-f]{64})"),"name":"([^"\\\x00-\x1f]+)","sha256":"([0-9a-f]{64})"\}'
)


def _b64_bytes(data: bytes) -> bytes | None:
    """Standard, padded, canonical base64 (one spelling per byte string), or None."""
    try:
        decoded = binascii.a2b_base64(data, strict_mode=True)
    except (ValueError, binascii.Error):
        return None
    # Strict mode checks the alphabet and the padding. Canonical also means no stray bits in a padded
    # last quantum: spelling its bytes again must give the same four characters.
    tail = len(decoded) % 3
    if tail and binascii.b2a_base64(decoded[-tail:], newline=False) != data[-4:]:
        return None
    return decoded


def _b64(text: str) -> bytes | None:
    """:func:`_b64_bytes` of base64 text (None if it is not ASCII)."""
    try:
        return _b64_bytes(text.encode("ascii"))
    except UnicodeEncodeError:
        return None


def _tested(q: QualityRecord) -> Tested:
    return (
        q.steps,
        tuple((r.name, r.unit, r.lower, r.upper, r.value, r.passed) for r in q.measurements),
        tuple((c.name, c.unit, c.value) for c in q.calibration),
    )


def _canonical_quality() -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """One item of each list of a test record exactly as a station writes it (canonical JSON).

    Names (1 to 64 characters), units (0 to 16) and steps are matched without
    escapes and numbers in their plain decimal form; what else
    :func:`vault.manifest.parse_quality` checks (printability, the one
    spelling of each number, finiteness, the verdicts against the limits) is
    checked after the match.
    """
    name = rf'"([^"\\\x00-\x1f]{{1,{MAX_NAME}}})"'
    unit = rf'"([^"\\\x00-\x1f]{{0,{MAX_UNIT}}})"'
    number = r'"(-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:e[+-][0-9]+)?)"'
    optional = rf"(?:null|{number})"
    coefficient = rf'\{{"name":{name},"unit":{unit},"value":{number}\}}'
    reading = (rf'\{{"lower":{optional},"name":{name},"passed":(true|false),"step":{name},"unit":{unit},'
               rf'"upper":{optional},"value":{number}\}}')  # fmt: skip
    step = rf'\{{"milliseconds":(0|[1-9][0-9]{{0,18}}),"step":{name}\}}'

    # each item also as a whole (the first group), so that the items found can be checked to tile their list
    return re.compile(f"({coefficient})"), re.compile(f"({reading})"), re.compile(f"({step})")


_COEFFICIENT, _READING, _TIMED = _canonical_quality()
_Q_HEAD, _Q_MEASUREMENTS, _Q_STEPS, _Q_END = '{"calibration":[', '],"measurements":[', '],"steps":[', "]}"


def _items(pattern: re.Pattern[str], text: str) -> list[Any] | None:
    """Every item of a list's text (between its brackets), or None unless the items are the whole text:
    one scan both reads and checks the list."""
    found = pattern.findall(text)
    if ",".join([item[0] for item in found]) != text:
        return None
    return found


def _quality_fields(text: str, event: str) -> Tested | None:
    """A canonical test record read as :func:`vault.manifest.parse_quality` reads it, or None.

    Its only free text is names and units, unescaped here, so the text is
    printable exactly when they all are; a number is in its one spelling
    when ``repr`` gives it back (which also refuses an overflow to inf).
    """
    # the three lists by their brackets (a name holding one gives items that do not tile their list: None)
    middle = text.find(_Q_MEASUREMENTS)
    last = text.find(_Q_STEPS, middle + 1)
    if not text.startswith(_Q_HEAD) or not text.endswith(_Q_END) or middle < 0 or last < 0 or not text.isprintable():
        return None
    raw_coefficients = _items(_COEFFICIENT, text[len(_Q_HEAD) : middle])
    raw_readings = _items(_READING, text[middle + len(_Q_MEASUREMENTS) : last])
    raw_steps = _items(_TIMED, text[last + len(_Q_STEPS) : -len(_Q_END)])
    if raw_coefficients is None or raw_readings is None or raw_steps is None:
        return None
    steps = tuple([(step, int(ms)) for _, ms, step in raw_steps])
    if len(steps) > MAX_STEPS or len(raw_readings) > MAX_MEASUREMENTS or len(raw_coefficients) > MAX_COEFFICIENTS:
        return None
    if steps and max([ms for _, ms in steps]) >= _MAX_COUNT:
        return None
    readings = []
    for _, lower, name, passed_text, _step, unit, upper, value in raw_readings:
        number = float(value)
        low = float(lower) if lower else None
        high = float(upper) if upper else None
        if repr(number) != value or (lower and repr(low) != lower) or (upper and repr(high) != upper):
            return None
        passed = passed_text == "true"
        if passed and ((low is not None and number < low) or (high is not None and number > high)):
            return None
        readings.append((name, unit, low, high, number, passed))
    coefficients = []
    for _, name, unit, value in raw_coefficients:
        number = float(value)
        if repr(number) != value:
            return None
        coefficients.append((name, unit, number))
    if event in CERTIFIED_EVENTS and not all([r[5] for r in readings]):
        return None
    return steps, tuple(readings), tuple(coefficients)


def _printable(text: str) -> bool:
    return 0 < len(text) <= 256 and text.isprintable()


def _statement_fields(text: str, usual_images: Mapping[str, tuple[tuple[str, str, str | None], ...]]) -> _Fields | None:
    """The fields of a canonical manifest statement, checked as :func:`vault.manifest.parse_manifest` does."""
    match = _STATEMENT.fullmatch(text)
    if match is None:
        return None
    (
        bundle_id, certificate_serial, certificate_sha256, clock, clock_monotonic, clock_session, detail,
        device_key_id, event, failed_step,
        fixture, hwid, mid, images_text, issuing_ca, signing, label, lots_text, operator, policy_version, product,
        quality_text, secrets_text, security_counter, sequence, serial, station_id, time, unit, version,
        subject_digest, subject_hwid,
    ) = match.groups()  # fmt: skip
    if subject_hwid != hwid or hashlib.sha256(bytes.fromhex(hwid)).hexdigest() != subject_digest:
        return None
    texts: tuple[str, ...] = tuple(filter(None, (clock, operator, product, station_id, version, detail, failed_step,
                                                label, serial)))  # fmt: skip
    images = usual_images.get(images_text)
    if images is None:
        images = tuple((name, sha256, measurement or None) for measurement, name, sha256 in _IMAGE.findall(images_text))
        texts += tuple(name for name, _, _ in images)
    if max(map(len, texts)) > 256 or not "".join(texts).isprintable():
        return None
    counts = (int(sequence), int(fixture), int(security_counter), int(policy_version))
    unit_value = None if unit == "null" else int(unit)
    monotonic = None if clock_monotonic is None else int(clock_monotonic)
    if max(counts) >= _MAX_COUNT or any(v is not None and v >= _MAX_COUNT for v in (unit_value, monotonic)):
        return None
    try:  # on the strict form above, fromisoformat accepts exactly what parse_time's strptime does
        _dt.datetime.fromisoformat(time)
    except ValueError:
        return None
    quality = None
    if quality_text is not None:
        quality = _quality_fields(quality_text, event)
        if quality is None:
            return None
    lots: tuple[tuple[str, str], ...] = ()
    if lots_text is not None:  # checked as parse_manifest does; the secrets' records only for their form
        if not _LOTS.fullmatch(lots_text):
            return None
        lots = tuple(_LOT_PAIR.findall(lots_text))
        names = [name for name, _ in lots]
        if names != sorted(set(names)) or not all(code.isprintable() for _, code in lots):
            return None
    if secrets_text is not None and not _SECRETS.fullmatch(secrets_text):
        return None
    return _Fields(
        mid,
        counts[0],
        event,
        station_id,
        bundle_id,
        product,
        version,
        counts[2],
        unit_value,
        hwid,
        serial,
        label,
        images,
        device_key_id,
        certificate_serial,
        certificate_sha256,
        signing,
        issuing_ca,
        failed_step,
        detail,
        time,
        counts[1],
        operator,
        clock_session,
        monotonic,
        quality,
        lots,
    )


# --- the device certificate --------------------------------------------------------------------


def _tlv(der: bytes, offset: int) -> tuple[int, int]:
    """(content start, end) of the DER element at ``offset`` (the certificate already parsed strictly)."""
    length = der[offset + 1]
    if length < 0x80:
        return offset + 2, offset + 2 + length
    count = length & 0x7F
    start = offset + 2 + count
    return start, start + int.from_bytes(der[offset + 2 : start], "big")


def _walk(der: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """The to-be-signed bytes, the serial number's content, the subject's content and the SubjectPublicKeyInfo."""
    body = _tlv(der, 0)[0]
    offset, tbs_end = _tlv(der, body)
    if der[offset] == 0xA0:  # [0] version
        offset = _tlv(der, offset)[1]
    serial_start, serial_end = _tlv(der, offset)  # serialNumber
    offset = _tlv(der, serial_end)[1]  # signature
    offset = _tlv(der, offset)[1]  # issuer
    offset = _tlv(der, offset)[1]  # validity
    subject_start, subject_end = _tlv(der, offset)
    spki_end = _tlv(der, subject_end)[1]
    return der[body:tbs_end], der[serial_start:serial_end], der[subject_start:subject_end], der[subject_end:spki_end]


def _der(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes((tag, length)) + content
    size = (length.bit_length() + 7) // 8
    return bytes((tag, 0x80 | size)) + length.to_bytes(size, "big") + content


def _rdn(oid: bytes, tag: int, value: bytes) -> bytes:
    """One relative distinguished name holding one attribute, DER-encoded."""
    return _der(0x31, _der(0x30, _der(0x06, oid) + _der(tag, value)))


_CN = b"\x55\x04\x03"  # id-at-commonName
_SERIAL_NUMBER = b"\x55\x04\x05"  # id-at-serialNumber
_ORGANIZATION = b"\x06\x03\x55\x04\x0a"  # the OID element of id-at-organizationName


def _subject_is(subject: bytes, serial: str | None, hardware_id: str) -> bool:
    """Whether a subject is exactly what a station issues: [O=...,] CN=serial, serialNumber=hardware id.

    Only the common encoding (UTF8String CN, PrintableString serialNumber, an
    optional organisation first) is recognised; False means "not shown here".
    """
    if serial is None:
        return False
    cn, sn = serial.encode("utf-8"), hardware_id.encode("ascii")
    if len(cn) < 100 and len(sn) < 100:  # short-form lengths throughout: spell it in one go
        tail = b"1%c0%c\x06\x03U\x04\x03\x0c%c%b1%c0%c\x06\x03U\x04\x05\x13%c%b" % (
            len(cn) + 9, len(cn) + 7, len(cn), cn, len(sn) + 9, len(sn) + 7, len(sn), sn,
        )  # fmt: skip
    else:
        tail = _rdn(_CN, 0x0C, cn) + _rdn(_SERIAL_NUMBER, 0x13, sn)
    if not subject.endswith(tail):
        return False
    head = subject[: len(subject) - len(tail)]
    if not head:
        return True
    # one RDN holding one organizationName attribute, and nothing else
    if head[0] != 0x31 or _tlv(head, 0)[1] != len(head):
        return False
    atv_start = _tlv(head, 0)[0]
    atv_content, atv_end = _tlv(head, atv_start)
    return atv_end == len(head) and head.startswith(_ORGANIZATION, atv_content)


def _certificate_parts(
    m: _Fields, der: bytes | None, present: bool, station: _Station
) -> tuple[str | None, bytes | None, bytes | None, str | None]:
    """A device certificate checked but for its signature: (the problem found before the signature
    would be checked, the signature, the signed bytes, the problem found after). See
    :func:`_check_certificate`."""
    if not present:
        return "the export carries no device certificate for it", None, None, None
    if m.certificate_sha256 is None:
        return "the export carries a certificate the manifest does not name", None, None, None
    if der is None:
        return "the certificate is not canonical base64", None, None, None
    if _sha256(der).hexdigest() != m.certificate_sha256:
        return "the certificate is not the one the manifest names (SHA-256 differs)", None, None, None
    try:
        certificate = x509.load_der_x509_certificate(der)  # strict DER first: the walk below trusts the framing
        tbs, serial, subject, spki = _walk(der)
        usual_subject = _subject_is(subject, m.serial, m.hardware_id)
    except (ValueError, IndexError):
        return "the certificate does not parse", None, None, None
    if _sha256(spki).hexdigest() != m.device_key_id:
        return "the certificate's key is not the device key the manifest names", None, None, None
    if certificate.signature_algorithm_oid != station.issuing_ca_oid:
        return "the certificate is not signed with the station CA's algorithm", None, None, None
    return None, certificate.signature, tbs, _certificate_names(m, certificate, serial, usual_subject)


def _certificate_names(m: _Fields, certificate: x509.Certificate, serial: bytes, usual_subject: bool) -> str | None:
    """Why the certificate's serial number or subject is not the manifest's, or None."""
    # the serial as manifests write it: its big-endian bytes, without the sign byte DER adds (never negative)
    if serial[0] & 0x80 or (serial[1:] if serial[0] == 0 and len(serial) > 1 else serial).hex() != m.certificate_serial:
        return "the certificate's serial number is not the one the manifest names"
    if usual_subject:
        return None
    name = certificate.subject  # any other encoding: cryptography reads it
    if [a.value for a in name.get_attributes_for_oid(NameOID.SERIAL_NUMBER)] != [m.hardware_id]:
        return "the certificate's subject serialNumber is not the device's hardware id"
    if [a.value for a in name.get_attributes_for_oid(NameOID.COMMON_NAME)] != [m.serial]:
        return "the certificate's subject CN is not the device's serial"
    return None


def _check_certificate(m: _Fields, der: bytes | None, present: bool, station: _Station) -> str | None:
    """Why the device certificate does not hold, or None when it does (``present``: the export has one).

    It must be the certificate the manifest names (SHA-256), certify the
    device key the manifest names, be signed by the station's issuing CA with
    ECDSA, carry the manifest's certificate serial, and name the device:
    ``CN=<serial>``, ``serialNumber=<hardware id>``.
    """
    before, signature, tbs, after = _certificate_parts(m, der, present, station)
    if before is not None or signature is None or tbs is None:
        return before
    try:
        station.issuing_ca.verify(signature, tbs, station.issuing_ca_alg)
    except InvalidSignature:
        return f"the certificate is not issued by station '{station.station_id}''s issuing CA"
    return after


# --- time --------------------------------------------------------------------------------------


def _epoch(time: str) -> int:
    """Seconds since 1970 of a checked "YYYY-MM-DDTHH:MM:SSZ" time."""
    return int(_dt.datetime.fromisoformat(time).timestamp())


def time_issue(before: Stamp | None, previous: Stamp, stamp: Stamp, jump_seconds: int) -> Issue | None:
    """What is wrong with the time of the entry ``stamp`` after ``before`` and ``previous``, or None.

    An entry earlier than the one before it is a ``time-regression``, unless
    that one is the outlier: later than both its neighbours while they are in
    order, it was dated in the future, and it is the one named
    (``time-forward-dated``). A step forward of more than ``jump_seconds`` is a
    ``time-jump``.
    """
    time, position, mid, hwid, serial = stamp
    if time < previous[0]:
        if before is not None and before[0] <= time:
            at, where, outlier, outlier_hwid, outlier_serial = previous
            shown = f"{at} is later than the entries around it: {before[0]} at position {before[1]}"
            shown += f", {time} at position {position}"
            return ("time-forward-dated", where, outlier, outlier_hwid, outlier_serial, shown)
        shown = f"{time} is earlier than {previous[0]} at position {previous[1]}"
        return ("time-regression", position, mid, hwid, serial, shown)
    # on the same day no jump is possible: the dates are only parsed when the day changes
    if time[:10] != previous[0][:10] and _epoch(time) - _epoch(previous[0]) > jump_seconds:
        return ("time-jump", position, mid, hwid, serial, f"{time} follows {previous[0]} at position {previous[1]}")
    return None


def clock_step(previous: Clock, reading: Clock, limit: int) -> str | None:
    """How the wall clock ran ahead of the monotonic clock between two readings of one session, when by
    more than ``limit`` seconds; else None."""
    if previous[0] != reading[0]:
        return None
    ahead = (reading[2] - previous[2]) - (reading[1] - previous[1])
    if ahead <= limit:
        return None
    return (
        f"the wall clock moved {reading[2] - previous[2]} s since position {previous[3]}, the station's "
        f"monotonic clock {reading[1] - previous[1]} s: set forward by {ahead} s"
    )


def _week(time: str) -> str:
    """The ISO week of a time: "2026-W05"."""
    year, week, _ = _dt.date.fromisoformat(time[:10]).isocalendar()
    return f"{year:04d}-W{week:02d}"


def counters_add(total: dict[str, int], more: Mapping[str, int], limit: int) -> None:
    """Add ``more`` into ``total``, folding new keys into "other" once ``total`` has ``limit`` keys."""
    for key, count in more.items():
        if key in total or len(total) < limit:
            total[key] = total.get(key, 0) + count
        else:
            total["other"] = total.get("other", 0) + count
