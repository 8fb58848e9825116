"""The encrypted evidence export: a stream of records a factory station seals to the auditor.

A station writes what it recorded (manifests, device certificates, log
checkpoints and proofs; to this module they are opaque byte strings, the
caller puts JSON in them) into one export file that only the auditor's key
opens. The file is written once, never over an existing file, and appears
under its name only when complete. Writing and reading stream chunk by
chunk, so memory is bounded by one chunk however many records there are.

Format ``vault-evidence/v1``, all integers big-endian::

    magic            8 bytes   b"VLTEVID1"
    header_length    u32       1 .. MAX_HEADER_SIZE (64 KiB)
    header           canonical JSON (vault.formats.canonical_json), exactly:
                       {"format": "vault-evidence/v1",
                        "export_id": 32 lower-case hex digits (16 random bytes),
                        "station_id": [a-z][a-z0-9-]{0,31},
                        "sequence": 1 .. 2**63 - 1, the station's export number,
                        "created": "YYYY-MM-DDTHH:MM:SSZ" (UTC, given by the caller),
                        "recipient_key_id": hex SHA-256 of the auditor key's SubjectPublicKeyInfo DER,
                        "wrapped_key": canonical base64 of the HPKE enc || ciphertext of the data key,
                        "chunk_size": MIN_CHUNK_SIZE .. MAX_CHUNK_SIZE}
    chunks           one or more, back to back, each:
                       ciphertext_length  u32   TAG_SIZE .. max(chunk_size, 4 + MAX_RECORD_SIZE) + TAG_SIZE
                       ciphertext         AES-256-GCM output, its 16-byte tag at the end

The final chunk ends the file: nothing may follow it. It always exists,
empty of records if need be, so a file cut at a chunk boundary is detected.
The header is read strictly: exactly those fields, integers as integers,
and the bytes must be canonical (re-serializing gives the same bytes).

Records. A chunk's plaintext is a sequence of records, each ``u32 length ||
record`` with ``length <= MAX_RECORD_SIZE`` (16 MiB). Records never span
chunks: the writer closes the current chunk when the next record would
take it past ``chunk_size`` plaintext bytes, and a record larger than
``chunk_size`` gets a chunk of its own. Only the final chunk may be empty.

Encryption. Each export has one fresh random 256-bit data key. Chunk ``i``
(counting from 0) is sealed with::

    nonce = u32 0 || u64 i                                             (12 bytes)
    aad   = b"vault-evidence-v1\\0" || SHA-256(header bytes) || u64 i || u8 last   (59 bytes)

where ``last`` is 1 on the final chunk and 0 on every other. A chunk
altered, moved, dropped from the end, added after it, or taken from another
export (whose header differs, if only in ``export_id``) fails to
authenticate, and so does every chunk if the header was altered. Nonces
repeat across exports, so a data key must never seal a second export; the
writer always makes a fresh one.

Recipient. The data key is sealed to the auditor's P-256 or P-384 key with
HPKE base mode (RFC 9180, see :mod:`vault.hpke`), with empty aad and::

    info = b"vault-evidence-v1 data key\\0" || export_id (16 raw bytes) || b"\\0" || station_id (UTF-8)

so a wrapped key opens only for the export and station named in the header.

What this does not prove. HPKE base mode does not authenticate the sender:
anyone holding the auditor's public key can write an export that opens.
This format gives the auditor confidentiality and an intact, complete,
in-order stream; who wrote it, and whether ``station_id``, ``sequence`` and
``created`` are true, is proven by the signed manifests and log checkpoints
inside the records, which the auditor verifies next.

Example:
    >>> import os, tempfile
    >>> from cryptography.hazmat.primitives.asymmetric import ec
    >>> from vault.hpke import SoftwareDecapsulator
    >>> auditor = SoftwareDecapsulator(ec.generate_private_key(ec.SECP256R1()))
    >>> path = os.path.join(tempfile.mkdtemp(), "station-1-000001.evidence")
    >>> header = write_evidence(
    ...     path, [b'{"serial": "A1"}', b'{"serial": "A2"}'],
    ...     recipient=auditor.public_key, station_id="station-1", sequence=1, created="2025-01-02T03:04:05Z",
    ... )
    >>> with EvidenceReader(path) as export:
    ...     data_key = export.open(auditor)
    ...     list(export.records(data_key))
    [b'{"serial": "A1"}', b'{"serial": "A2"}']
    >>> export.header == header, oct(os.stat(path).st_mode & 0o777)
    (True, '0o444')
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import secrets
import stat
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault import hpke
from vault._files import fsync_dir, open_to_read
from vault.crypto import key_id
from vault.errors import DecryptionError, FormatError, InputError
from vault.formats._json import canonical_json, check_fields, parse_json, quote

__all__ = [
    "DATA_KEY_SIZE",
    "DEFAULT_CHUNK_SIZE",
    "EVIDENCE_FORMAT",
    "MAGIC",
    "MAX_CHUNK_CIPHERTEXT",
    "MAX_CHUNK_SIZE",
    "MAX_HEADER_SIZE",
    "MAX_RECORD_SIZE",
    "MIN_CHUNK_SIZE",
    "TAG_SIZE",
    "ChunkPlace",
    "EvidenceHeader",
    "EvidenceReader",
    "EvidenceWriter",
    "RawChunk",
    "decrypt_chunk",
    "write_evidence",
]

MAGIC = b"VLTEVID1"
"""The first 8 bytes of every v1 evidence export."""

EVIDENCE_FORMAT = "vault-evidence/v1"
"""The header's ``format`` field."""

DATA_KEY_SIZE = 32
"""Bytes in a data key (AES-256)."""

TAG_SIZE = 16
"""Bytes of AES-GCM tag at the end of each chunk."""

MIN_CHUNK_SIZE = 1024
MAX_CHUNK_SIZE = 32 * 1024 * 1024
DEFAULT_CHUNK_SIZE = 1024 * 1024
"""Target plaintext bytes per chunk; small chunk sizes are for tests."""

MAX_RECORD_SIZE = 16 * 1024 * 1024
"""Largest record, in bytes."""

MAX_CHUNK_CIPHERTEXT = MAX_CHUNK_SIZE + TAG_SIZE
"""Largest chunk ciphertext any export may hold, checked before it is read."""

MAX_HEADER_SIZE = 64 * 1024
"""Largest header accepted, in bytes, checked before it is read."""

_EXPORT_ID_SIZE = 16
_AAD_LABEL = b"vault-evidence-v1\0"
_INFO_LABEL = b"vault-evidence-v1 data key\0"
_MAX_SEQUENCE = 2**63 - 1

_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_STATION_ID = re.compile(r"[a-z][a-z0-9-]{0,31}")
_CREATED = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_U32 = struct.Struct(">I")
_NONCE = struct.Struct(">IQ")
_AAD_TAIL = struct.Struct(">QB")
_PREFIX_SIZE = len(MAGIC) + _U32.size

_HEADER_FIELDS = frozenset(
    {"format", "export_id", "station_id", "sequence", "created", "recipient_key_id", "wrapped_key", "chunk_size"}
)
# HPKE enc || sealed 32-byte key: an uncompressed point (P-256: 65, P-384: 97 bytes), the key and the tag.
_WRAPPED_SIZES = frozenset({65 + DATA_KEY_SIZE + hpke.TAG_SIZE, 97 + DATA_KEY_SIZE + hpke.TAG_SIZE})


# --- checks -------------------------------------------------------------------------


def _int(value: Any, low: int, high: int, *, what: str) -> int:
    if type(value) is not int:
        raise FormatError(f"{what} must be an integer")
    if not low <= value <= high:
        raise FormatError(f"{what} is {value}, outside {low}..{high}")
    return value


def _check_station_id(station_id: object) -> str:
    if not isinstance(station_id, str) or not _STATION_ID.fullmatch(station_id):
        shown = quote(station_id) if isinstance(station_id, str) else type(station_id).__name__
        raise FormatError(f"station id {shown} must be a lower-case letter then up to 31 of a-z, 0-9, '-'")
    return station_id


def _check_created(created: object) -> str:
    if not isinstance(created, str) or not _CREATED.fullmatch(created):
        shown = quote(created) if isinstance(created, str) else type(created).__name__
        raise FormatError(f"created {shown} must be a UTC time written YYYY-MM-DDTHH:MM:SSZ")
    try:
        datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError as e:
        raise FormatError(f"created {quote(created)} is not a real date and time") from e
    return created


def _check_data_key(data_key: object) -> bytes:
    if not isinstance(data_key, bytes) or len(data_key) != DATA_KEY_SIZE:
        raise InputError(f"an evidence data key is {DATA_KEY_SIZE} bytes")
    return data_key


def _new_data_key() -> bytes:
    """A fresh random data key. Tests replace this to show what the header binding alone prevents."""
    return secrets.token_bytes(DATA_KEY_SIZE)


def _data_key_info(export_id: str, station_id: str) -> bytes:
    return _INFO_LABEL + bytes.fromhex(export_id) + b"\0" + station_id.encode("utf-8")


def _chunk_limit(chunk_size: int) -> int:
    """The longest chunk ciphertext an export with ``chunk_size`` can hold: a full chunk or one large record."""
    return max(chunk_size, _U32.size + MAX_RECORD_SIZE) + TAG_SIZE


# --- the header ---------------------------------------------------------------------


@dataclass(frozen=True)
class EvidenceHeader:
    """The export header: who wrote it, for whom, and the sealed data key.

    Making one checks everything :meth:`from_bytes` checks, so an invalid
    header can be neither read nor written. ``header_sha256`` is the SHA-256
    of :meth:`to_bytes`, the value every chunk's aad binds.
    """

    export_id: str
    station_id: str
    sequence: int
    created: str
    recipient_key_id: str
    wrapped_key: bytes
    chunk_size: int
    header_sha256: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.export_id, str) or not _HEX32.fullmatch(self.export_id):
            raise FormatError("export_id must be 32 lower-case hex digits")
        _check_station_id(self.station_id)
        _int(self.sequence, 1, _MAX_SEQUENCE, what="sequence")
        _check_created(self.created)
        if not isinstance(self.recipient_key_id, str) or not _HEX64.fullmatch(self.recipient_key_id):
            raise FormatError("recipient_key_id must be 64 lower-case hex digits")
        if not isinstance(self.wrapped_key, bytes) or len(self.wrapped_key) not in _WRAPPED_SIZES:
            size = len(self.wrapped_key) if isinstance(self.wrapped_key, bytes) else type(self.wrapped_key).__name__
            raise FormatError(
                f"wrapped_key must be {' or '.join(map(str, sorted(_WRAPPED_SIZES)))} bytes "
                f"(HPKE enc and a sealed {DATA_KEY_SIZE}-byte key), not {size}"
            )
        _int(self.chunk_size, MIN_CHUNK_SIZE, MAX_CHUNK_SIZE, what="chunk_size")
        object.__setattr__(self, "header_sha256", hashlib.sha256(self.to_bytes()).digest())

    @property
    def format(self) -> str:
        """The format name, always :data:`EVIDENCE_FORMAT`."""
        return EVIDENCE_FORMAT

    def to_json_value(self) -> dict[str, Any]:
        """The header as a JSON-ready object."""
        return {
            "format": EVIDENCE_FORMAT,
            "export_id": self.export_id,
            "station_id": self.station_id,
            "sequence": self.sequence,
            "created": self.created,
            "recipient_key_id": self.recipient_key_id,
            "wrapped_key": base64.b64encode(self.wrapped_key).decode("ascii"),
            "chunk_size": self.chunk_size,
        }

    def to_bytes(self) -> bytes:
        """The header as canonical JSON: the exact bytes an export stores.

        Raises:
            FormatError: longer than :data:`MAX_HEADER_SIZE` (it never is: every field is bounded).
        """
        data = canonical_json(self.to_json_value())
        if len(data) > MAX_HEADER_SIZE:
            raise FormatError(f"evidence header would be {len(data)} bytes; the limit is {MAX_HEADER_SIZE}")
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> EvidenceHeader:
        """Parse a header strictly: exact fields and types, every range, and canonical bytes.

        Raises:
            FormatError: anything is wrong; the message names the field.
        """
        what = "evidence header"
        fields = check_fields(parse_json(data, max_size=MAX_HEADER_SIZE, what=what), _HEADER_FIELDS, what=what)
        if fields["format"] != EVIDENCE_FORMAT:
            shown = quote(fields["format"]) if isinstance(fields["format"], str) else "not a string"
            raise FormatError(f"{what}: format is {shown}, not {EVIDENCE_FORMAT!r}")
        encoded = fields["wrapped_key"]
        if not isinstance(encoded, str):
            raise FormatError(f"{what}: wrapped_key must be a base64 string")
        try:
            wrapped = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as e:
            raise FormatError(f"{what}: wrapped_key is not valid standard base64") from e
        try:
            header = cls(
                fields["export_id"],
                fields["station_id"],
                fields["sequence"],
                fields["created"],
                fields["recipient_key_id"],
                wrapped,
                fields["chunk_size"],
            )
        except FormatError as e:
            raise FormatError(f"{what}: {e}") from e
        if header.to_bytes() != bytes(data):
            raise FormatError(f"{what}: not canonical JSON (sorted keys, no spaces, one spelling per value)")
        return header


# --- chunks -------------------------------------------------------------------------


@dataclass(frozen=True)
class RawChunk:
    """One chunk as stored: its index, whether the file ends after it, and its ciphertext with tag.

    Plain values only, so a chunk can be pickled to a worker process and
    opened there with :func:`decrypt_chunk`.
    """

    index: int
    last: bool
    ciphertext: bytes


@dataclass(frozen=True)
class ChunkPlace:
    """Where one chunk lies in an export: its index, whether the file ends after it, and its ciphertext's
    offset and length (checked against the export's layout by :meth:`EvidenceReader.chunk_places`).

    Plain values: a worker process that has the export open reads the chunk itself
    (:meth:`EvidenceReader.read_chunk`), so its ciphertext is not copied to it through a pipe.
    """

    index: int
    last: bool
    offset: int
    length: int


def _nonce_aad(header_sha256: bytes, index: int, last: bool) -> tuple[bytes, bytes]:
    return _NONCE.pack(0, index), _AAD_LABEL + header_sha256 + _AAD_TAIL.pack(index, 1 if last else 0)


def _authenticates(aead: AESGCM, header_sha256: bytes, index: int, last: bool, ciphertext: bytes) -> bool:
    nonce, aad = _nonce_aad(header_sha256, index, last)
    try:
        aead.decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        return False
    return True


def decrypt_chunk(data_key: bytes, header_sha256: bytes, chunk: RawChunk) -> list[bytes]:
    """Authenticate and decrypt one chunk, and return its records in order.

    Needs only values, no file, so auditors can open the chunks of
    :meth:`EvidenceReader.raw_chunks` in worker processes. A chunk that
    authenticates is only part of the story: the export is complete only once
    the chunk with ``last`` set has been opened too.

    Args:
        data_key: the export's data key (:meth:`EvidenceReader.open`).
        header_sha256: :attr:`EvidenceHeader.header_sha256` of the export.
        chunk: a chunk from :meth:`EvidenceReader.raw_chunks`.

    Raises:
        InputError: ``data_key`` or ``header_sha256`` is not 32 bytes.
        FormatError: the ciphertext is shorter than a tag or longer than
            :data:`MAX_CHUNK_CIPHERTEXT`, or the plaintext does not split
            into records.
        DecryptionError: the chunk does not authenticate (the message names
            its index): the wrong data key, or the export was altered,
            reordered, truncated, extended or spliced.
    """
    _check_data_key(data_key)
    if not isinstance(header_sha256, bytes) or len(header_sha256) != hashlib.sha256().digest_size:
        raise InputError("header_sha256 must be the 32-byte SHA-256 of the export header")
    index, last, ciphertext = chunk.index, chunk.last, chunk.ciphertext
    _int(index, 0, 2**64 - 1, what="chunk index")
    if not TAG_SIZE <= len(ciphertext) <= MAX_CHUNK_CIPHERTEXT:
        raise FormatError(f"chunk {index} is {len(ciphertext)} bytes; a chunk is {TAG_SIZE}..{MAX_CHUNK_CIPHERTEXT}")
    aead = AESGCM(data_key)
    nonce, aad = _nonce_aad(header_sha256, index, last)
    try:
        plaintext = aead.decrypt(nonce, ciphertext, aad)
    except InvalidTag as e:
        # Name truncation and extension plainly when the chunk is genuine but in the wrong place in the file.
        if _authenticates(aead, header_sha256, index, not last, ciphertext):
            if last:
                raise DecryptionError(
                    f"chunk {index} is not the export's final chunk, but the file ends after it: the export was "
                    "truncated"
                ) from e
            raise DecryptionError(
                f"chunk {index} is the export's final chunk, but more bytes follow it: the export was extended"
            ) from e
        raise DecryptionError(
            f"chunk {index} does not authenticate: wrong data key, or the export was altered, reordered, "
            "truncated or spliced from another export"
        ) from e
    return _split_records(plaintext, index, last)


def _split_records(plaintext: bytes, index: int, last: bool) -> list[bytes]:
    if not plaintext and not last:
        raise FormatError(f"chunk {index} is empty but not the final chunk")
    records = []
    view = memoryview(plaintext)
    offset = 0
    while offset < len(view):
        if len(view) - offset < _U32.size:
            raise FormatError(f"chunk {index}: {len(view) - offset} stray bytes at its end where a record length was")
        (length,) = _U32.unpack_from(view, offset)
        offset += _U32.size
        if length > MAX_RECORD_SIZE:
            raise FormatError(f"chunk {index}: a record of {length} bytes is more than the {MAX_RECORD_SIZE} limit")
        if length > len(view) - offset:
            raise FormatError(f"chunk {index}: a {length}-byte record runs past the end of the chunk")
        records.append(bytes(view[offset : offset + length]))
        offset += length
    return records


# --- writing ------------------------------------------------------------------------


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class EvidenceWriter:
    """Write a new evidence export, record by record, holding at most one chunk in memory.

    The export is written to a new temporary file beside ``path`` (created
    with ``O_CREAT | O_EXCL``); :meth:`finish` seals the final chunk, fsyncs
    the file, makes it read-only (0o444), hard-links it to ``path`` (which
    never replaces an existing file) and fsyncs the folder. Leaving the
    ``with`` block without :meth:`finish`, or with an exception, removes the
    temporary file and leaves nothing under ``path``.

    Args:
        path: the export to create; it must not exist.
        recipient: the auditor's P-256 or P-384 public key.
        station_id: the writing station (``[a-z][a-z0-9-]{0,31}``).
        sequence: the station's export number, from 1.
        created: the UTC time of the export, ``YYYY-MM-DDTHH:MM:SSZ``.
        chunk_size: target plaintext bytes per chunk,
            :data:`MIN_CHUNK_SIZE` .. :data:`MAX_CHUNK_SIZE`.

    Raises:
        InputError: ``path`` exists, an argument is malformed, or the key is
            not a P-256 or P-384 public key.
    """

    header: EvidenceHeader
    """The header, fixed before the first record: it carries no lengths."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        recipient: ec.EllipticCurvePublicKey,
        station_id: str,
        sequence: int,
        created: str,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self.path = Path(path)
        if os.path.lexists(self.path):
            raise InputError(f"{self.path} exists; evidence is written once")
        export_id = secrets.token_hex(_EXPORT_ID_SIZE)
        self._data_key = _new_data_key()
        try:
            _check_station_id(station_id)
            wrapped = hpke.seal(recipient, self._data_key, info=_data_key_info(export_id, station_id))
            self.header = EvidenceHeader(
                export_id, station_id, sequence, created, key_id(recipient), wrapped.to_bytes(), chunk_size
            )
        except FormatError as e:
            raise InputError(f"evidence export {self.path}: {e}") from e
        self._aead = AESGCM(self._data_key)
        self._buffer = bytearray()  # the open chunk's plaintext
        self._index = 0  # the open chunk's index
        self._records = 0
        self._fd: int | None = None
        self._tmp: Path | None = None
        self._state = "new"  # new -> open -> finished | failed

    @property
    def records_written(self) -> int:
        """How many records were added so far."""
        return self._records

    def __enter__(self) -> EvidenceWriter:
        if self._state != "new":
            raise InputError(f"{self.path}: an evidence writer is used in one with block only")
        directory = self.path.parent
        try:
            # mkstemp opens with O_CREAT | O_EXCL and mode 0o600: a new file that nobody else has open.
            fd, name = tempfile.mkstemp(dir=directory, prefix=f".{self.path.name}.", suffix=".tmp")
        except OSError as e:
            raise InputError(f"cannot write in {directory}: {e.strerror or e}") from e
        self._fd, self._tmp = fd, Path(name)
        self._state = "open"
        header_bytes = self.header.to_bytes()
        self._guarded(lambda: _write_all(fd, MAGIC + _U32.pack(len(header_bytes)) + header_bytes))
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._state == "finished":
            return
        closed_early = self._state == "open" and kind is None  # a failed step has already raised its own error
        self._state = "failed"
        self._discard()
        if closed_early:
            raise InputError(f"{self.path}: the evidence writer closed before finish(); nothing was written")

    def add(self, record: bytes | bytearray | memoryview) -> None:
        """Append one record to the export.

        Raises:
            InputError: the record is not bytes or is larger than
                :data:`MAX_RECORD_SIZE` (the export is still usable), the
                writer is not open, or the file cannot be written.
        """
        fd, _ = self._open_file()
        if not isinstance(record, bytes | bytearray | memoryview):
            raise InputError(f"an evidence record is bytes, not {type(record).__name__}")
        length = memoryview(record).nbytes
        if length > MAX_RECORD_SIZE:
            raise InputError(f"an evidence record is at most {MAX_RECORD_SIZE} bytes; this one is {length}")
        if self._buffer and len(self._buffer) + _U32.size + length > self.header.chunk_size:
            self._guarded(lambda: self._write_chunk(fd, last=False))
        self._buffer += _U32.pack(length)
        self._buffer += record
        self._records += 1

    def finish(self) -> EvidenceHeader:
        """Seal the final chunk and put the export in place at ``path``, read-only and durable.

        Returns:
            The header written.

        Raises:
            InputError: ``path`` exists now, or the file or folder cannot be written.
        """
        fd, tmp = self._open_file()

        def complete() -> None:
            self._write_chunk(fd, last=True)
            os.fsync(fd)
            os.fchmod(fd, 0o444)
            os.close(fd)
            self._fd = None
            try:
                os.link(tmp, self.path)
            except FileExistsError as e:
                raise InputError(f"{self.path} exists; evidence is written once") from e
            os.unlink(tmp)
            self._tmp = None
            fsync_dir(self.path.parent)

        self._guarded(complete)
        self._state = "finished"
        return self.header

    def _open_file(self) -> tuple[int, Path]:
        if self._state == "new":
            raise InputError("use EvidenceWriter in a with block")
        if self._state == "finished":
            raise InputError(f"{self.path}: the export is already finished")
        if self._state == "failed" or self._fd is None or self._tmp is None:
            raise InputError(f"{self.path}: an earlier step failed; start a new export")
        return self._fd, self._tmp

    def _write_chunk(self, fd: int, *, last: bool) -> None:
        nonce, aad = _nonce_aad(self.header.header_sha256, self._index, last)
        ciphertext = self._aead.encrypt(nonce, self._buffer, aad)
        _write_all(fd, _U32.pack(len(ciphertext)))
        _write_all(fd, ciphertext)
        self._buffer.clear()
        self._index += 1

    def _guarded(self, step: Callable[[], None]) -> None:
        """Run ``step``; on any error mark the writer failed, remove the temporary file, and raise."""
        try:
            step()
        except OSError as e:
            self._state = "failed"
            self._discard()
            raise InputError(f"cannot write {self.path}: {e.strerror or e}") from e
        except BaseException:
            self._state = "failed"
            self._discard()
            raise

    def _discard(self) -> None:
        self._buffer.clear()
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass
            self._tmp = None


def write_evidence(
    path: str | os.PathLike[str],
    records: Iterable[bytes],
    *,
    recipient: ec.EllipticCurvePublicKey,
    station_id: str,
    sequence: int,
    created: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> EvidenceHeader:
    """Write ``records`` to a new export at ``path`` with :class:`EvidenceWriter` and return its header.

    Raises:
        InputError: as :class:`EvidenceWriter` and its methods.
    """
    writer = EvidenceWriter(
        path, recipient=recipient, station_id=station_id, sequence=sequence, created=created, chunk_size=chunk_size
    )
    with writer:
        for record in records:
            writer.add(record)
        return writer.finish()


# --- reading ------------------------------------------------------------------------


class EvidenceReader:
    """Open an evidence export, check its header, and stream its chunks and records.

    Opening reads and checks magic and header only; chunks are read one at a
    time, in order, by :meth:`raw_chunks` and :meth:`records`, each length
    checked against its cap and the file's size before anything is read.
    Use it as a context manager, or call :meth:`close`.

    Raises:
        InputError: the file cannot be read or is not a regular file.
        FormatError: it is not a well-formed v1 export header.
    """

    header: EvidenceHeader
    """The parsed header."""
    header_bytes: bytes
    """The header exactly as stored."""
    size: int
    """The file's length in bytes when it was opened."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._file = os.fdopen(open_to_read(self.path), "rb", buffering=0)
        except OSError as e:
            raise InputError(f"cannot read evidence export {self.path}: {e.strerror or e}") from e
        self._fd = self._file.fileno()
        try:
            self._check()
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> EvidenceReader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def _fail(self, message: str) -> FormatError:
        return FormatError(f"{self.path}: {message}")

    def _read(self, offset: int, size: int) -> bytes:
        try:
            data = os.pread(self._fd, size, offset)
            while len(data) < size:
                more = os.pread(self._fd, size - len(data), offset + len(data))
                if not more:
                    raise self._fail(f"file ended at offset {offset + len(data)} (changed while being read?)")
                data += more
        except OSError as e:
            raise InputError(f"cannot read evidence export {self.path}: {e.strerror or e}") from e
        return data

    def _check(self) -> None:
        st = os.fstat(self._fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{self.path} is not a regular file")
        size = self.size = st.st_size
        if size < _PREFIX_SIZE:
            raise self._fail(f"{size} bytes is too short to be a vault evidence export")
        magic = self._read(0, len(MAGIC))
        if magic != MAGIC:
            if magic[:-1] == MAGIC[:-1]:
                raise self._fail(f"unsupported evidence format version {magic[-1:]!r} (this vault reads version 1)")
            raise self._fail(f"not a vault evidence export (does not start with {MAGIC.decode()})")
        (header_length,) = _U32.unpack(self._read(len(MAGIC), _U32.size))
        if not 0 < header_length <= MAX_HEADER_SIZE:
            raise self._fail(f"header length {header_length} is outside 1..{MAX_HEADER_SIZE}")
        if _PREFIX_SIZE + header_length > size:
            raise self._fail(f"truncated: the {header_length}-byte header runs past the end of the file")
        self.header_bytes = self._read(_PREFIX_SIZE, header_length)
        try:
            self.header = EvidenceHeader.from_bytes(self.header_bytes)
        except FormatError as e:
            raise self._fail(str(e)) from e
        self._chunks_offset = _PREFIX_SIZE + header_length

    def open(self, decapsulator: hpke.Decapsulator) -> bytes:
        """Unwrap the export's data key with the auditor's key (which may stay in its token).

        Returns:
            The 32-byte data key, for :meth:`records` or :func:`decrypt_chunk`.

        Raises:
            DecryptionError: the export is sealed to another key, or the
                wrapped key, export id or station id was altered.
            FormatError: the wrapped key is malformed for the auditor key's curve.
            TokenError: the token failed the ECDH.
        """
        header = self.header
        auditor = key_id(decapsulator.public_key)
        if auditor != header.recipient_key_id:
            raise DecryptionError(
                f"{self.path}: the export does not open with the auditor key {auditor[:16]}: "
                f"it is sealed to key {header.recipient_key_id[:16]}"
            )
        info = _data_key_info(header.export_id, header.station_id)
        try:
            data_key = hpke.open_sealed(header.wrapped_key, decapsulator, info=info)
        except DecryptionError as e:
            raise DecryptionError(
                f"{self.path}: the export does not open with the auditor key {auditor[:16]}: its wrapped key, "
                "export id or station id was altered"
            ) from e
        except FormatError as e:
            raise self._fail(f"wrapped_key: {e}") from e
        if len(data_key) != DATA_KEY_SIZE:
            raise DecryptionError(f"{self.path}: the data key is {len(data_key)} bytes, not {DATA_KEY_SIZE}")
        return data_key

    def raw_chunks(self) -> Iterator[RawChunk]:
        """The export's chunks as stored, in file order, read one at a time (see :meth:`chunk_places`).

        Raises:
            FormatError: see :meth:`chunk_places`.
            InputError: the file cannot be read.
        """
        for place in self.chunk_places():
            yield self.read_chunk(place)

    def read_chunk(self, place: ChunkPlace) -> RawChunk:
        """The chunk at ``place`` (one of :meth:`chunk_places`, of this file or of another opening of it).

        Raises:
            FormatError: the place is not inside the file, or the file ends early (it changed).
            InputError: the file cannot be read.
        """
        if place.offset < self._chunks_offset or place.length < TAG_SIZE or place.offset + place.length > self.size:
            raise self._fail(f"chunk {place.index}: no such chunk in this file (changed while being read?)")
        return RawChunk(place.index, place.last, self._read(place.offset, place.length))

    def chunk_places(self) -> Iterator[ChunkPlace]:
        """Where the export's chunks lie, in file order, their length fields read one at a time.

        Each chunk's length is checked against the largest chunk this export
        can hold and against the file's size before its bytes are read. A
        chunk is ``last`` when the file ends right after it; whether it
        really is the final chunk is what :func:`decrypt_chunk` checks.

        Raises:
            FormatError: a length field is truncated, out of range, or runs
                past the end of the file, or there is no chunk at all.
            InputError: the file cannot be read.
        """
        limit = _chunk_limit(self.header.chunk_size)
        offset = self._chunks_offset
        index = 0
        while True:
            if offset == self.size and index == 0:
                raise self._fail("truncated: no chunks after the header (an export always ends with a final chunk)")
            if self.size - offset < _U32.size:
                raise self._fail(f"chunk {index}: truncated length field at offset {offset}")
            (length,) = _U32.unpack(self._read(offset, _U32.size))
            if not TAG_SIZE <= length <= limit:
                raise self._fail(f"chunk {index}: ciphertext length {length} is outside {TAG_SIZE}..{limit}")
            end = offset + _U32.size + length
            if end > self.size:
                raise self._fail(
                    f"chunk {index}: its {length} bytes run past the end of the file at {self.size} (truncated)"
                )
            last = end == self.size
            yield ChunkPlace(index, last, offset + _U32.size, length)
            if last:
                return
            offset = end
            index += 1

    def records(self, data_key: bytes) -> Iterator[bytes]:
        """The export's records, in order, each chunk authenticated before its records are given.

        The stream is complete and in order only if iteration ends without
        an error: a later chunk can still fail, so treat what was received
        as incomplete until then.

        Raises:
            InputError: the data key is not 32 bytes, or the file cannot be read.
            FormatError: the framing is malformed (the message names the chunk).
            DecryptionError: a chunk does not authenticate (the message names
                its index): the wrong data key, or the export was altered,
                reordered, truncated, extended or spliced.
        """
        _check_data_key(data_key)
        return self._records(data_key)

    def _records(self, data_key: bytes) -> Iterator[bytes]:
        header_sha256 = self.header.header_sha256
        for chunk in self.raw_chunks():
            try:
                records = decrypt_chunk(data_key, header_sha256, chunk)
            except DecryptionError as e:
                raise DecryptionError(f"{self.path}: {e}") from e
            except FormatError as e:
                raise self._fail(str(e)) from e
            yield from records
