"""The one-file release bundle: its container format and streaming chunked encryption.

A release bundle is a single file holding a header, every firmware image
encrypted under one data key, and the DSSE envelope of the release statement
(with its approvals). This module writes and reads that file; it knows
nothing of statements, policies or approvals (see :mod:`vault.bundle` and
:mod:`vault.verify` above it), and it never holds an image in memory: images
are encrypted and decrypted chunk by chunk, so a bundle of any size builds
and verifies in constant memory.

Format ``vault-bundle/v1``, all integers big-endian::

    magic            8 bytes   b"VLTBNDL1"
    header_length    u32       1 .. MAX_HEADER_SIZE (1 MiB)
    header           canonical JSON (vault.formats.canonical_json), exactly:
                       {"format": "vault-bundle/v1",
                        "bundle_id": 32 lower-case hex digits (16 random bytes),
                        "chunk_size": MIN_CHUNK_SIZE .. MAX_CHUNK_SIZE,
                        "images": [{"name", "plaintext_length", "ciphertext_length",
                                    "chunks", "ciphertext_sha256"}, ...],
                        "recipients": {station_id: {"key_id", "wrapped_key"}, ...}}
    images           each image's ciphertext, in header order, back to back
    envelope_length  u32       1 .. MAX_ENVELOPE_SIZE (16 MiB)
    envelope         DSSE envelope JSON (opaque here)
    trailer          u64 offset of envelope_length, then b"VLTBNDLE"

The header is read strictly: exactly those fields, integers only, and the
bytes must be canonical (re-serializing gives the same bytes), so a header
has one spelling. An image ``name`` is 1 to 255 bytes of UTF-8 without
``/``, ``\\``, ``..``, NUL or other control characters, unique in the
bundle. A ``station_id`` matches ``[a-z][a-z0-9-]{0,31}``. ``key_id`` is the
hex SHA-256 of the station decryption key's SubjectPublicKeyInfo DER;
``wrapped_key`` is canonical base64 of the HPKE ``enc || ciphertext``.
For each image, with ``pt`` its plaintext length and ``cs`` the chunk size:
``chunks == max(1, ceil(pt / cs))`` and ``ciphertext_length == pt + 16 *
chunks``; ``ciphertext_sha256`` is the hex SHA-256 of its ciphertext bytes
as stored. The file is exactly as long as these lengths say.

Encryption. Each bundle has one fresh random 256-bit data key. Image ``i``
is cut into plaintext chunks of ``chunk_size`` bytes (the last may be
shorter; an empty image is one empty chunk), and chunk ``j`` is stored as
its AES-256-GCM ciphertext followed by the 16-byte tag, with::

    nonce = u32 i || u64 j                                       (12 bytes)
    aad   = b"vault-bundle-v1\\0" || bundle_id (16 raw bytes) || u32 i
            || SHA-256(name as UTF-8) || u64 j || u8 last        (77 bytes)

where ``last`` is 1 on the image's final chunk and 0 on every other. A chunk
dropped from the end, moved, reordered, taken from another image or from
another bundle therefore fails authentication. The data key must never
encrypt a second bundle: nonces repeat across bundles, so :class:`BundleWriter`
makes a fresh key unless it is given one.

Recipients. The data key is sealed to each station's decryption key with
HPKE base mode (RFC 9180; DHKEM(P-256 or P-384), HKDF, AES-256-GCM, see
:mod:`vault.hpke`), with empty aad and::

    info = b"vault-bundle-v1 data key\\0" || bundle_id (16 raw bytes) || b"\\0" || station_id (UTF-8)

so a wrapped key opens only for that bundle and that station.

What this does not prove. HPKE base mode does not authenticate the sender,
and the header is not signed: anyone holding a station's public key can
write a well-formed bundle that decrypts. Trust comes from the signed
release statement in the envelope, which must name the bundle id, the
ciphertext digests and the plaintext digests; a verifier compares those
against this header and against :meth:`BundleReader.decrypt_image`'s result,
and treats plaintext handed to its sink as untrusted until that call returns.

Example:
    >>> import io, os, tempfile
    >>> from cryptography.hazmat.primitives.asymmetric import ec
    >>> from vault.hpke import SoftwareDecapsulator
    >>> station = SoftwareDecapsulator(ec.generate_private_key(ec.SECP256R1()))
    >>> path = os.path.join(tempfile.mkdtemp(), "release.bundle")
    >>> with BundleWriter(path) as writer:
    ...     image = writer.add_image("fw.bin", io.BytesIO(b"firmware"))
    ...     recipients = seal_recipients(writer.data_key, writer.bundle_id, {"station-1": station.public_key})
    ...     header = writer.finish(recipients, b'{"not": "checked here"}')
    >>> with BundleReader(path) as bundle:
    ...     wrapped = bundle.header.recipients["station-1"].wrapped_key
    ...     data_key = unwrap_data_key(wrapped, bundle.header.bundle_id, "station-1", station)
    ...     out = []
    ...     bundle.decrypt_image("fw.bin", data_key, out.append) == image.plaintext_sha256
    True
    >>> b"".join(out), image.entry.chunks, image.entry.ciphertext_length
    (b'firmware', 1, 24)
"""

from __future__ import annotations

import base64
import binascii
import errno
import functools
import hashlib
import itertools
import mmap
import os
import re
import secrets
import stat
import struct
import tempfile
from collections import deque
from collections.abc import Callable, Generator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import IO, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault import formats, hpke
from vault._files import fsync_dir, open_to_read
from vault.crypto import key_id
from vault.errors import DecryptionError, FormatError, InputError
from vault.formats import canonical_json, parse_json
from vault.formats._json import check_fields, quote

__all__ = [
    "BUNDLE_FORMAT",
    "DATA_KEY_SIZE",
    "DEFAULT_CHUNK_SIZE",
    "END_MAGIC",
    "MAGIC",
    "MAX_BUNDLE_SIZE",
    "MAX_CHUNK_SIZE",
    "MAX_ENVELOPE_SIZE",
    "MAX_HEADER_SIZE",
    "MAX_IMAGES",
    "MAX_IMAGE_SIZE",
    "MAX_RECIPIENTS",
    "MIN_BUNDLE_SIZE",
    "MIN_CHUNK_SIZE",
    "TAG_SIZE",
    "BundleReader",
    "BundleWriter",
    "EncryptedImage",
    "Header",
    "ImageDigest",
    "ImageEntry",
    "Recipient",
    "check_image_name",
    "check_station_id",
    "chunk_count",
    "ciphertext_length",
    "data_key_info",
    "new_bundle_id",
    "new_data_key",
    "replace_envelope",
    "seal_recipients",
    "unwrap_data_key",
    "wrap_data_key",
]

MAGIC = b"VLTBNDL1"
"""The first 8 bytes of every v1 bundle."""

END_MAGIC = b"VLTBNDLE"
"""The last 8 bytes of every v1 bundle."""

BUNDLE_FORMAT = "vault-bundle/v1"
"""The header's ``format`` field."""

DATA_KEY_SIZE = 32
"""Bytes in a data key (AES-256)."""

TAG_SIZE = 16
"""Bytes of AES-GCM tag after each chunk."""

MIN_CHUNK_SIZE = 4 * 1024
MAX_CHUNK_SIZE = 16 * 1024 * 1024
DEFAULT_CHUNK_SIZE = 1024 * 1024
"""Plaintext bytes per chunk. 1 MiB was the fastest size measured (bench/README.md)."""

MAX_HEADER_SIZE = 1024 * 1024
"""Largest header accepted, in bytes, checked before it is read."""

MAX_ENVELOPE_SIZE = formats.MAX_ENVELOPE_SIZE
"""Largest envelope accepted (16 MiB), the same cap :meth:`vault.formats.Envelope.from_json` applies."""

MAX_IMAGES = 1024
MAX_RECIPIENTS = 1024
MAX_IMAGE_SIZE = 64 * 1024**3
"""Largest image plaintext, in bytes (64 GiB)."""

MAX_BUNDLE_SIZE = 256 * 1024**3
"""Largest bundle file, in bytes (256 GiB)."""

_PREFIX_SIZE = len(MAGIC) + 4  # magic, header_length
_SUFFIX_SIZE = 4 + 8 + len(END_MAGIC)  # envelope_length, trailer
MIN_BUNDLE_SIZE = _PREFIX_SIZE + _SUFFIX_SIZE
"""No file shorter than this can be a bundle."""

_BUNDLE_ID_SIZE = 16
_AAD_LABEL = b"vault-bundle-v1\0"
_INFO_LABEL = b"vault-bundle-v1 data key\0"
_MAX_NAME_BYTES = 255
_COPY_BLOCK = 1024 * 1024  # bytes per read when hashing or copying on disk
_BATCH_SIZE = 1024 * 1024  # plaintext bytes handed between threads at once: whole chunks, at least one
_PIPELINE_DEPTH = 2  # batches one thread may run ahead of the other
_WRITE_AHEAD = 4  # batches the writer's encrypting thread may run ahead of its storing one (rides out a busy CPU)
_DIRECT_ALIGN = 4096  # offsets, lengths and buffer addresses of writes that bypass the page cache
# bytes per such write: 4 MiB writes took 6% less time than 1 MiB ones to build 1 GiB (median of 8 each,
# alternating; bench/README.md), with 12 MiB of buffers
_DIRECT_BLOCK = 4 * 1024 * 1024
_DIRECT_AHEAD = 2  # such writes waiting for the disk at most

_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_STATION_ID = re.compile(r"[a-z][a-z0-9-]{0,31}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_NONCE = struct.Struct(">IQ")
_AAD_TAIL = struct.Struct(">QB")
_TRAILER = struct.Struct(">Q8s")

_HEADER_FIELDS = frozenset({"format", "bundle_id", "chunk_size", "images", "recipients"})
_IMAGE_FIELDS = frozenset({"name", "plaintext_length", "ciphertext_length", "chunks", "ciphertext_sha256"})
_RECIPIENT_FIELDS = frozenset({"key_id", "wrapped_key"})
# HPKE enc || sealed 32-byte key: an uncompressed point (P-256: 65, P-384: 97 bytes), the key and the tag.
_WRAPPED_SIZES = frozenset({65 + DATA_KEY_SIZE + hpke.TAG_SIZE, 97 + DATA_KEY_SIZE + hpke.TAG_SIZE})


# --- keys and names -----------------------------------------------------------


def new_data_key() -> bytes:
    """A fresh random 256-bit data key; use it for one bundle only."""
    return secrets.token_bytes(DATA_KEY_SIZE)


def new_bundle_id() -> str:
    """A fresh bundle id: 16 random bytes as 32 lower-case hex digits."""
    return secrets.token_hex(_BUNDLE_ID_SIZE)


def chunk_count(plaintext_length: int, chunk_size: int) -> int:
    """How many chunks an image of ``plaintext_length`` bytes has: at least one."""
    return max(1, -(-plaintext_length // chunk_size))


def ciphertext_length(plaintext_length: int, chunk_size: int) -> int:
    """Bytes an image of ``plaintext_length`` takes in the bundle: the plaintext and a tag per chunk."""
    return plaintext_length + TAG_SIZE * chunk_count(plaintext_length, chunk_size)


def check_image_name(name: object) -> str:
    """``name`` if it may name an image: 1-255 bytes of UTF-8, no path separator, ``..`` or control character.

    Raises:
        FormatError: it may not.
    """
    if not isinstance(name, str):
        raise FormatError(f"image name must be a string, not {type(name).__name__}")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise FormatError("image name holds an unpaired surrogate") from e
    if not 0 < size <= _MAX_NAME_BYTES:
        raise FormatError(f"image name {quote(name)} must be 1 to {_MAX_NAME_BYTES} bytes of UTF-8, not {size}")
    if "/" in name or "\\" in name or ".." in name or name == "." or _CONTROL.search(name):
        raise FormatError(f"image name {quote(name)} may not hold '/', '\\', '..' or control characters")
    return name


def check_station_id(station_id: object) -> str:
    """``station_id`` if it is a station id (``[a-z][a-z0-9-]{0,31}``).

    Raises:
        FormatError: it is not.
    """
    if not isinstance(station_id, str) or not _STATION_ID.fullmatch(station_id):
        shown = quote(station_id) if isinstance(station_id, str) else type(station_id).__name__
        raise FormatError(f"station id {shown} must be a lower-case letter then up to 31 of a-z, 0-9, '-'")
    return station_id


def _check_bundle_id(bundle_id: object) -> str:
    if not isinstance(bundle_id, str) or not _HEX32.fullmatch(bundle_id):
        raise FormatError("bundle id must be 32 lower-case hex digits")
    return bundle_id


def _check_data_key(data_key: object) -> bytes:
    if not isinstance(data_key, bytes) or len(data_key) != DATA_KEY_SIZE:
        raise InputError(f"a bundle data key is {DATA_KEY_SIZE} bytes")
    return data_key


def _int(value: Any, low: int, high: int, *, what: str) -> int:
    if type(value) is not int:
        raise FormatError(f"{what} must be an integer")
    if not low <= value <= high:
        raise FormatError(f"{what} is {value}, outside {low}..{high}")
    return value


# --- the header ---------------------------------------------------------------


@dataclass(frozen=True)
class ImageEntry:
    """One image as the header lists it."""

    name: str
    plaintext_length: int
    ciphertext_length: int
    chunks: int
    ciphertext_sha256: str

    def __post_init__(self) -> None:
        check_image_name(self.name)
        what = f"image {quote(self.name)}"
        _int(self.plaintext_length, 0, MAX_IMAGE_SIZE, what=f"{what} plaintext_length")
        _int(self.chunks, 1, 2**64 - 1, what=f"{what} chunks")
        _int(self.ciphertext_length, TAG_SIZE, 2**64 - 1, what=f"{what} ciphertext_length")
        if not isinstance(self.ciphertext_sha256, str) or not _HEX64.fullmatch(self.ciphertext_sha256):
            raise FormatError(f"{what} ciphertext_sha256 must be 64 lower-case hex digits")

    def check_chunking(self, chunk_size: int) -> None:
        """Check that the lengths agree with ``chunk_size``.

        Raises:
            FormatError: they do not.
        """
        what = f"image {quote(self.name)}"
        expected = chunk_count(self.plaintext_length, chunk_size)
        if self.chunks != expected:
            raise FormatError(
                f"{what}: {self.plaintext_length} bytes in {chunk_size}-byte chunks is {expected} chunks, "
                f"not {self.chunks}"
            )
        if self.ciphertext_length != self.plaintext_length + TAG_SIZE * self.chunks:
            raise FormatError(
                f"{what}: ciphertext_length {self.ciphertext_length} is not plaintext_length {self.plaintext_length}"
                f" plus {TAG_SIZE} per chunk"
            )

    def to_json_value(self) -> dict[str, Any]:
        """The entry as a JSON-ready object."""
        return {
            "name": self.name,
            "plaintext_length": self.plaintext_length,
            "ciphertext_length": self.ciphertext_length,
            "chunks": self.chunks,
            "ciphertext_sha256": self.ciphertext_sha256,
        }


@dataclass(frozen=True)
class EncryptedImage:
    """What :meth:`BundleWriter.add_image` did: the header entry and the plaintext's SHA-256 (hex)."""

    entry: ImageEntry
    plaintext_sha256: str


ImageDigest = EncryptedImage  # the same object, by the name it was first given


@dataclass(frozen=True)
class Recipient:
    """One station's copy of the data key: its decryption key id and the HPKE-sealed key."""

    key_id: str
    wrapped_key: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.key_id, str) or not _HEX64.fullmatch(self.key_id):
            raise FormatError("recipient key_id must be 64 lower-case hex digits")
        if not isinstance(self.wrapped_key, bytes) or len(self.wrapped_key) not in _WRAPPED_SIZES:
            size = len(self.wrapped_key) if isinstance(self.wrapped_key, bytes) else type(self.wrapped_key).__name__
            raise FormatError(
                f"recipient wrapped_key must be {' or '.join(map(str, sorted(_WRAPPED_SIZES)))} bytes "
                f"(HPKE enc and a sealed {DATA_KEY_SIZE}-byte key), not {size}"
            )


@dataclass(frozen=True)
class Header:
    """The bundle header: its id, chunk size, images in file order, and recipients.

    Making one checks everything :meth:`from_bytes` checks, so an invalid
    header can be neither read nor written.
    """

    bundle_id: str
    chunk_size: int
    images: tuple[ImageEntry, ...]
    recipients: Mapping[str, Recipient]

    def __post_init__(self) -> None:
        _check_bundle_id(self.bundle_id)
        _int(self.chunk_size, MIN_CHUNK_SIZE, MAX_CHUNK_SIZE, what="chunk_size")
        images = tuple(self.images)
        if not 0 < len(images) <= MAX_IMAGES:
            raise FormatError(f"a bundle holds 1 to {MAX_IMAGES} images, not {len(images)}")
        seen: set[str] = set()
        for entry in images:
            if not isinstance(entry, ImageEntry):
                raise FormatError(f"header images must be ImageEntry objects, not {type(entry).__name__}")
            if entry.name in seen:
                raise FormatError(f"image name {quote(entry.name)} appears twice")
            seen.add(entry.name)
            entry.check_chunking(self.chunk_size)
        total = sum(entry.ciphertext_length for entry in images)
        if total > MAX_BUNDLE_SIZE:
            raise FormatError(f"images take {total} bytes; a bundle may be at most {MAX_BUNDLE_SIZE}")
        if not isinstance(self.recipients, Mapping):
            raise FormatError("header recipients must be a mapping of station id to Recipient")
        if not 0 < len(self.recipients) <= MAX_RECIPIENTS:
            raise FormatError(f"a bundle has 1 to {MAX_RECIPIENTS} recipients, not {len(self.recipients)}")
        for station_id, recipient in self.recipients.items():
            check_station_id(station_id)
            if not isinstance(recipient, Recipient):
                raise FormatError(f"recipient {quote(station_id)} must be a Recipient, not {type(recipient).__name__}")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "recipients", MappingProxyType(dict(sorted(self.recipients.items()))))

    @property
    def ciphertext_size(self) -> int:
        """Bytes of all images' ciphertext together."""
        return sum(entry.ciphertext_length for entry in self.images)

    def image(self, name: str) -> ImageEntry:
        """The entry for the image called ``name``.

        Raises:
            InputError: there is no such image.
        """
        for entry in self.images:
            if entry.name == name:
                return entry
        names = ", ".join(quote(e.name) for e in self.images[:8])
        raise InputError(f"bundle has no image named {quote(str(name))} (it has {names})")

    def to_json_value(self) -> dict[str, Any]:
        """The header as a JSON-ready object."""
        return {
            "format": BUNDLE_FORMAT,
            "bundle_id": self.bundle_id,
            "chunk_size": self.chunk_size,
            "images": [entry.to_json_value() for entry in self.images],
            "recipients": {
                station_id: {"key_id": r.key_id, "wrapped_key": base64.b64encode(r.wrapped_key).decode("ascii")}
                for station_id, r in self.recipients.items()
            },
        }

    def to_bytes(self) -> bytes:
        """The header as canonical JSON: the exact bytes a bundle stores.

        Raises:
            FormatError: longer than :data:`MAX_HEADER_SIZE`.
        """
        data = canonical_json(self.to_json_value())
        if len(data) > MAX_HEADER_SIZE:
            raise FormatError(f"bundle header would be {len(data)} bytes; the limit is {MAX_HEADER_SIZE}")
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> Header:
        """Parse a header strictly: exact fields and types, every range, and canonical bytes.

        Raises:
            FormatError: anything is wrong; the message names the field.
        """
        what = "bundle header"
        fields = check_fields(parse_json(data, max_size=MAX_HEADER_SIZE, what=what), _HEADER_FIELDS, what=what)
        if fields["format"] != BUNDLE_FORMAT:
            shown = quote(fields["format"]) if isinstance(fields["format"], str) else "not a string"
            raise FormatError(f"{what}: format is {shown}, not {BUNDLE_FORMAT!r}")
        raw_images = fields["images"]
        if not isinstance(raw_images, list):
            raise FormatError(f"{what}: images must be a list")
        if len(raw_images) > MAX_IMAGES:
            raise FormatError(f"{what}: {len(raw_images)} images is more than the limit of {MAX_IMAGES}")
        raw_recipients = fields["recipients"]
        if not isinstance(raw_recipients, dict):
            raise FormatError(f"{what}: recipients must be an object")
        try:
            images = tuple(_image_from_json(item, index) for index, item in enumerate(raw_images))
            recipients = {
                check_station_id(station_id): _recipient_from_json(item, station_id)
                for station_id, item in raw_recipients.items()
            }
            header = cls(fields["bundle_id"], fields["chunk_size"], images, recipients)
        except FormatError as e:
            raise FormatError(f"{what}: {e}") from e
        if header.to_bytes() != bytes(data):
            raise FormatError(f"{what}: not canonical JSON (sorted keys, no spaces, one spelling per value)")
        return header


def _image_from_json(value: Any, index: int) -> ImageEntry:
    fields = check_fields(value, _IMAGE_FIELDS, what=f"image {index + 1}")
    return ImageEntry(
        fields["name"],
        fields["plaintext_length"],
        fields["ciphertext_length"],
        fields["chunks"],
        fields["ciphertext_sha256"],
    )


def _recipient_from_json(value: Any, station_id: str) -> Recipient:
    what = f"recipient {quote(station_id)}"
    fields = check_fields(value, _RECIPIENT_FIELDS, what=what)
    encoded = fields["wrapped_key"]
    if not isinstance(encoded, str):
        raise FormatError(f"{what}: wrapped_key must be a base64 string")
    try:
        wrapped = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as e:
        raise FormatError(f"{what}: wrapped_key is not valid standard base64") from e
    try:
        return Recipient(fields["key_id"], wrapped)
    except FormatError as e:
        raise FormatError(f"{what}: {e}") from e


# --- data key wrapping ----------------------------------------------------------


def data_key_info(bundle_id: str, station_id: str) -> bytes:
    """The HPKE ``info`` that binds a wrapped data key to one bundle and one station.

    Raises:
        FormatError: the bundle id or station id is malformed.
    """
    _check_bundle_id(bundle_id)
    check_station_id(station_id)
    return _INFO_LABEL + bytes.fromhex(bundle_id) + b"\0" + station_id.encode("utf-8")


def wrap_data_key(data_key: bytes, bundle_id: str, station_id: str, public_key: ec.EllipticCurvePublicKey) -> bytes:
    """Seal ``data_key`` to a station's decryption key (HPKE ``enc || ciphertext``).

    Raises:
        InputError: the data key is not 32 bytes, an id is malformed, or the
            key is not a P-256 or P-384 public key.
    """
    _check_data_key(data_key)
    info = data_key_info(bundle_id, station_id)
    return hpke.seal(public_key, data_key, info=info).to_bytes()


def unwrap_data_key(wrapped: bytes, bundle_id: str, station_id: str, decapsulator: hpke.Decapsulator) -> bytes:
    """Open a wrapped data key with the station's decryption key (which may stay in its token).

    Raises:
        FormatError: ``wrapped`` is malformed, or an id is.
        DecryptionError: it does not open: another station's key, another
            station id or bundle id, or altered.
        TokenError: the token failed the ECDH.
    """
    info = data_key_info(bundle_id, station_id)
    try:
        data_key = hpke.open_sealed(bytes(wrapped), decapsulator, info=info)
    except DecryptionError as e:
        raise DecryptionError(
            f"the data key for station {quote(station_id)} in bundle {bundle_id} does not open with key "
            f"{key_id(decapsulator.public_key)[:16]}: wrong station key or id, another bundle's key, or altered"
        ) from e
    if len(data_key) != DATA_KEY_SIZE:
        raise DecryptionError(f"the data key for station {quote(station_id)} is {len(data_key)} bytes, not 32")
    return data_key


def seal_recipients(
    data_key: bytes, bundle_id: str, stations: Mapping[str, ec.EllipticCurvePublicKey]
) -> dict[str, Recipient]:
    """A :class:`Recipient` for each station id in ``stations`` (mapped to its decryption public key).

    Raises:
        InputError: as :func:`wrap_data_key`.
    """
    return {
        station_id: Recipient(key_id(public_key), wrap_data_key(data_key, bundle_id, station_id, public_key))
        for station_id, public_key in stations.items()
    }


# --- chunked AEAD ---------------------------------------------------------------


class _ImageCipher:
    """AES-256-GCM over one image's chunks, with the nonce and aad the format fixes."""

    def __init__(self, data_key: bytes, bundle_id: str, index: int, name: str) -> None:
        self._aead = AESGCM(data_key)
        self._index = index
        self._aad_prefix = (
            _AAD_LABEL + bytes.fromhex(bundle_id) + _U32.pack(index) + hashlib.sha256(name.encode("utf-8")).digest()
        )

    def _nonce_aad(self, chunk: int, last: bool) -> tuple[bytes, bytes]:
        return _NONCE.pack(self._index, chunk), self._aad_prefix + _AAD_TAIL.pack(chunk, 1 if last else 0)

    def encrypt_into(self, chunk: int, last: bool, plaintext: memoryview, out: memoryview) -> None:
        """Encrypt into ``out``, which must be exactly :data:`TAG_SIZE` bytes longer than ``plaintext``."""
        nonce, aad = self._nonce_aad(chunk, last)
        self._aead.encrypt_into(nonce, plaintext, aad, out)

    def decrypt(self, chunk: int, last: bool, ciphertext: bytes | memoryview) -> bytes:
        """Raises InvalidTag when the chunk does not authenticate."""
        nonce, aad = self._nonce_aad(chunk, last)
        return self._aead.decrypt(nonce, ciphertext, aad)


# --- files ----------------------------------------------------------------------


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _copy_range(src: int, offset: int, dst: int, length: int) -> None:
    """Append ``length`` bytes of ``src`` from ``offset`` to ``dst`` (at its position), in constant memory.

    The kernel copies (``copy_file_range``) where it can, which on some file
    systems shares the blocks instead; otherwise 1 MiB at a time.
    """
    end = offset + length
    if hasattr(os, "copy_file_range"):
        try:
            while offset < end:
                copied = os.copy_file_range(src, dst, min(end - offset, 1 << 30), offset)
                if copied == 0:
                    raise FormatError(f"file ended at offset {offset} while copying (changed while in use?)")
                offset += copied
            return
        except OSError:
            pass  # not on this kernel or between these file systems: copy by hand from where it stopped
    while offset < end:
        block = os.pread(src, min(end - offset, _COPY_BLOCK), offset)
        if not block:
            raise FormatError(f"file ended at offset {offset} while copying (changed while in use?)")
        _write_all(dst, block)
        offset += len(block)


def _make_temp(target: Path) -> tuple[int, Path]:
    directory = target.parent
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as e:
        raise InputError(f"cannot write in {directory}: {e.strerror}") from e
    return fd, Path(name)


def _make_unnamed(target: Path) -> tuple[int, Path | None]:
    """A file in ``target``'s folder with no name yet (``O_TMPFILE``): a crash leaves nothing behind.

    Its path is ``None``; :func:`_link` names it. Where the kernel or file
    system has no ``O_TMPFILE``, a named temporary file (:func:`_make_temp`).
    """
    flag = getattr(os, "O_TMPFILE", 0)
    if flag:
        try:
            return os.open(target.parent, flag | os.O_RDWR, 0o600), None
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                raise InputError(f"cannot write in {target.parent}: {e.strerror}") from e
    return _make_temp(target)


def _reopen_path(fd: int, tmp: Path | None) -> str | Path:
    """A path that opens the file behind ``fd`` again (an unnamed file's is under /proc)."""
    return tmp if tmp is not None else f"/proc/self/fd/{fd}"


def _link(fd: int, tmp: Path | None, target: Path) -> None:
    """Give the file behind ``fd`` the name ``target``, never over an existing file."""
    try:
        if tmp is None:  # linkat(AT_SYMLINK_FOLLOW): CPython only calls it when given a directory descriptor
            folder = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.link(f"/proc/self/fd/{fd}", target.name, dst_dir_fd=folder, follow_symlinks=True)
            finally:
                os.close(folder)
        else:
            os.link(tmp, target)
    except FileExistsError as e:
        raise InputError(f"{target} exists; vault does not write over files") from e


def _discard(fd: int | None, tmp: Path | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
    if tmp is not None:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _batch_size(chunk_size: int) -> int:
    """Whole chunks, about :data:`_BATCH_SIZE` bytes of them, at least one."""
    return chunk_size * max(1, _BATCH_SIZE // chunk_size)


def _read_into(src: IO[bytes], view: memoryview) -> int:
    """Fill ``view`` from ``src`` (``readinto`` where it has one); fewer bytes only at its end. How many it read."""
    readinto = getattr(src, "readinto", None)
    got = 0
    while got < len(view):
        if readinto is not None:
            n = readinto(view[got:])
        else:
            data = src.read(len(view) - got)
            n = len(data) if isinstance(data, bytes | bytearray) else None
            if n:
                view[got : got + n] = data
        if n is None:
            raise InputError("an image source must be a binary stream in blocking mode")
        if n == 0:
            break
        got += n
    return got


# --- writing ----------------------------------------------------------------------


class BundleWriter:
    """Write a new bundle file, image by image, in constant memory.

    Everything is written to a file in ``path``'s folder that has no name
    yet (``O_TMPFILE``; where the file system lacks it, ``.<name>.<random>.tmp``);
    :meth:`finish` fsyncs it once and links it to ``path``, which never replaces an existing file, so ``path`` holds
    a whole bundle or nothing. Leaving the ``with`` block without
    :meth:`finish` (or with an exception) removes the temporary file.

    The header comes first in the file but holds every image's ciphertext
    digest, so it is written last. Two ways to get there:

    - **planned** (:meth:`plan` before the first image: the images' names and
      plaintext lengths, and the recipients): the header's length is known
      before the first image byte, so its space is reserved, each image is
      encrypted straight into place behind it, and :meth:`finish` writes the
      header over the reserved space. The ciphertext is written once.
      ``vault bundle build`` works this way.
    - **unplanned** (images of unknown length, recipients sealed at the end):
      the images are encrypted into the temporary file from its start, and
      :meth:`finish` copies them behind the header into a second one (a
      kernel-side copy where the file system allows).

    Both write the same bytes. Encryption runs on two threads: this one reads
    the plaintext, hashes and encrypts it; a second hashes the ciphertext and
    writes it. Planned, a third hands it to the disk past the page cache
    (``O_DIRECT`` where the file system allows), so the one fsync at the end
    has little left to do. A crash leaves at most the temporary file, never a
    partial bundle under ``path``.

    Args:
        path: the bundle to create; it must not exist.
        bundle_id: 32 hex digits; a fresh one by default.
        data_key: 32 bytes; a fresh one by default. Never give the key of
            another bundle: chunk nonces repeat across bundles.
        chunk_size: plaintext bytes per chunk.

    Raises:
        InputError: ``path`` exists, its folder cannot be written, or an
            argument is malformed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        bundle_id: str | None = None,
        data_key: bytes | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self.path = Path(path)
        self.bundle_id = _check_bundle_id(new_bundle_id() if bundle_id is None else bundle_id)
        self.data_key = _check_data_key(new_data_key() if data_key is None else data_key)
        try:
            self.chunk_size = _int(chunk_size, MIN_CHUNK_SIZE, MAX_CHUNK_SIZE, what="chunk size")
        except FormatError as e:
            raise InputError(str(e)) from e
        self._images: list[EncryptedImage] = []
        self._fd: int | None = None  # the temporary file
        self._tmp: Path | None = None
        self._plan: Header | None = None  # the planned header, ciphertext digests not yet known
        self._offset = 0  # where the next image's ciphertext goes in the temporary file
        self._state = "new"  # new -> open -> finished | failed
        if self.path.exists():
            raise InputError(f"{self.path} exists; vault does not write over files")

    @property
    def images(self) -> tuple[EncryptedImage, ...]:
        """The images added so far, in order."""
        return tuple(self._images)

    def __enter__(self) -> BundleWriter:
        self._fd, self._tmp = _make_unnamed(self.path)
        self._state = "open"
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        _discard(self._fd, self._tmp)
        self._fd = self._tmp = None
        if self._state != "finished" and kind is None:
            self._state = "failed"
            raise InputError(f"{self.path}: the bundle writer closed before finish(); nothing was written")

    def _open_fd(self) -> int:
        if self._state == "failed":
            raise InputError(f"{self.path}: an earlier step failed; start a new bundle")
        if self._state == "finished":
            raise InputError(f"{self.path}: the bundle is already finished")
        if self._fd is None:
            raise InputError("use BundleWriter in a with block")
        return self._fd

    def plan(self, images: Sequence[tuple[str, int]], recipients: Mapping[str, Recipient]) -> None:
        """Declare every image (name and plaintext length, in order) and the recipients, before the first image.

        The header's length then follows (every field but the ciphertext
        digests is known, and those are 64 hex digits each), so its space is
        reserved and each image is encrypted straight into place. Seal the
        recipients with :attr:`data_key` and :attr:`bundle_id`. The images
        must then be added in this order with exactly these lengths (a
        source of another length fails: it changed since it was measured),
        and :meth:`finish` must be given these recipients.

        Example:
            >>> import io, os, tempfile
            >>> from cryptography.hazmat.primitives.asymmetric import ec
            >>> station = ec.generate_private_key(ec.SECP256R1()).public_key()
            >>> with BundleWriter(os.path.join(tempfile.mkdtemp(), "release.bundle")) as writer:
            ...     recipients = seal_recipients(writer.data_key, writer.bundle_id, {"station-1": station})
            ...     writer.plan([("fw.bin", 8)], recipients)
            ...     image = writer.add_image("fw.bin", io.BytesIO(b"firmware"))
            ...     writer.finish(recipients, b'{"not": "checked here"}').images == (image.entry,)
            True

        Raises:
            FormatError: a name, length or recipient is malformed, or the
                header would be too large.
            InputError: an image was already added, or the bundle was planned.
        """
        self._open_fd()
        if self._images or self._plan is not None:
            raise InputError(f"{self.path}: plan the bundle before its first image, and once")
        entries = []
        for name, length in images:
            _int(length, 0, MAX_IMAGE_SIZE, what=f"image {quote(check_image_name(name))} length")
            chunks = chunk_count(length, self.chunk_size)
            entries.append(ImageEntry(name, length, length + TAG_SIZE * chunks, chunks, "0" * 64))
        self._plan = Header(self.bundle_id, self.chunk_size, tuple(entries), recipients)
        self._offset = _PREFIX_SIZE + len(self._plan.to_bytes())

    def add_image(self, name: str, src: IO[bytes]) -> EncryptedImage:
        """Encrypt the image ``name`` read from the binary stream ``src`` to its end.

        Returns:
            The header entry and the plaintext SHA-256.

        Raises:
            FormatError: the name is not a valid image name.
            InputError: the name is taken, there are too many images, the
                image is larger than :data:`MAX_IMAGE_SIZE`, it is not the
                next planned image or not of its planned length, or the
                stream or folder fails.
        """
        fd = self._open_fd()
        check_image_name(name)
        if any(image.entry.name == name for image in self._images):
            raise InputError(f"{self.path}: image name {quote(name)} is already in the bundle")
        if len(self._images) >= MAX_IMAGES:
            raise InputError(f"{self.path}: a bundle holds at most {MAX_IMAGES} images")
        planned = self._planned_entry(name)
        try:
            image = self._encrypt(name, src, fd)
            if planned is not None and image.entry.plaintext_length != planned.plaintext_length:
                raise InputError(
                    f"{self.path}: image {quote(name)} is {image.entry.plaintext_length} bytes, not the "
                    f"{planned.plaintext_length} planned (did it change while being read?)"
                )
        except OSError as e:
            self._state = "failed"
            raise InputError(f"{self.path}: image {quote(name)}: {e.strerror or e}") from e
        except BaseException:
            self._state = "failed"
            raise
        self._images.append(image)
        self._offset += image.entry.ciphertext_length
        return image

    def _planned_entry(self, name: str) -> ImageEntry | None:
        if self._plan is None:
            return None
        if len(self._images) == len(self._plan.images):
            raise InputError(f"{self.path}: image {quote(name)} was not planned (the plan has {len(self._images)})")
        entry = self._plan.images[len(self._images)]
        if entry.name != name:
            raise InputError(f"{self.path}: the next planned image is {quote(entry.name)}, not {quote(name)}")
        return entry

    def _encrypt(self, name: str, src: IO[bytes], fd: int) -> EncryptedImage:
        cipher = _ImageCipher(self.data_key, self.bundle_id, len(self._images), name)
        plaintext_hash = hashlib.sha256()
        ciphertext_hash = hashlib.sha256()
        # Planned, the ciphertext is in its final place: it goes past the page cache (the fsync then has
        # little left). Unplanned, it goes to the spool, to be copied behind the header.
        sink: _Writes
        if self._plan is not None:
            sink = _DirectWrites(fd, _reopen_path(fd, self._tmp), self._offset)
        else:
            sink = _Writes(fd, self._offset)

        size = self.chunk_size
        batch = _batch_size(size)
        ciphertext = memoryview(bytearray(0))

        def encrypt(first: int, plaintext: memoryview, final: bool) -> None:  # on the second thread
            nonlocal ciphertext
            if not ciphertext:  # one buffer: the sink has taken the bytes when its write returns
                ciphertext = memoryview(bytearray(batch + TAG_SIZE * (batch // size)))
            stored = 0
            for chunk, start in enumerate(range(0, max(len(plaintext), 1), size), first):  # empty: one empty chunk
                piece = plaintext[start : start + size]
                last = final and start + size >= len(plaintext)
                cipher.encrypt_into(chunk, last, piece, ciphertext[stored : stored + len(piece) + TAG_SIZE])
                stored += len(piece) + TAG_SIZE
            ciphertext_hash.update(ciphertext[:stored])
            sink.write(ciphertext[:stored])

        # Two threads share the work about evenly: this one reads and hashes the plaintext, the second
        # encrypts, hashes the ciphertext and stores it. Read whole batches of chunks, one batch ahead, so the
        # final chunk is known to be last. The plaintext buffers are reused batch after batch: one for each
        # batch the second thread may hold, this batch and the next (made as they are first needed: a small
        # image needs one or two).
        plaintexts: list[memoryview] = []

        def buffer(n: int) -> memoryview:
            if len(plaintexts) <= n % (_WRITE_AHEAD + 2):
                plaintexts.append(memoryview(bytearray(batch)))
            return plaintexts[n % (_WRITE_AHEAD + 2)]

        plaintext_length = 0
        chunk = 0
        with sink, _Behind(depth=_WRITE_AHEAD) as behind:
            current = buffer(0)[: _read_into(src, buffer(0))]
            for n in itertools.count():
                ahead = buffer(n + 1)
                following = ahead[: _read_into(src, ahead) if len(current) == batch else 0]
                plaintext_length += len(current)
                if plaintext_length > MAX_IMAGE_SIZE:
                    raise InputError(f"image {quote(name)} is larger than the {MAX_IMAGE_SIZE}-byte limit")
                plaintext_hash.update(current)
                behind.submit(encrypt, chunk, current, not following)
                chunk += chunk_count(len(current), size)
                if not following:
                    break
                current = following
        entry = ImageEntry(
            name,
            plaintext_length,
            plaintext_length + TAG_SIZE * chunk,
            chunk,
            ciphertext_hash.hexdigest(),
        )
        return EncryptedImage(entry, plaintext_hash.hexdigest())

    def header_for(self, recipients: Mapping[str, Recipient]) -> Header:
        """The header :meth:`finish` would write with ``recipients``, to put in a statement first.

        Raises:
            FormatError: no images yet, or ``recipients`` is malformed.
        """
        return Header(self.bundle_id, self.chunk_size, tuple(i.entry for i in self._images), recipients)

    def finish(self, recipients: Mapping[str, Recipient], envelope_bytes: bytes) -> Header:
        """Write the bundle: header, images, ``envelope_bytes`` and trailer, atomically, at ``path``.

        Returns:
            The header written.

        Raises:
            FormatError: the header would be invalid or too large, or the
                envelope is empty or larger than :data:`MAX_ENVELOPE_SIZE`.
            InputError: ``path`` now exists, the folder cannot be written, or
                the bundle was planned and the images or recipients differ.
        """
        fd = self._open_fd()
        header = self.header_for(recipients)
        header_bytes = header.to_bytes()
        _check_envelope(envelope_bytes)
        head = MAGIC + _U32.pack(len(header_bytes)) + header_bytes
        images_end = len(head) + header.ciphertext_size
        if self._plan is not None:
            self._check_plan(header)
        out: int | None = None
        tmp: Path | None = None
        try:
            if self._plan is not None:  # the images are in place: the header goes into its reserved space
                out, tmp = self._take_temp()
                _pwrite_all(out, [_tail(envelope_bytes, images_end)], images_end)
                _pwrite_all(out, [head], 0)
            else:  # the images are at the start of the spool: copy them behind the header
                out, tmp = _make_temp(self.path)
                _write_all(out, head)
                _copy_range(fd, 0, out, header.ciphertext_size)
                _write_all(out, _tail(envelope_bytes, images_end))
            os.fsync(out)
            os.fchmod(out, 0o644)
            _link(out, tmp, self.path)
            os.close(out)
            out = None
            if tmp is not None:
                os.unlink(tmp)
                tmp = None
            fsync_dir(self.path.parent)
        except OSError as e:
            self._state = "failed"
            raise InputError(f"cannot write {self.path}: {e.strerror or e}") from e
        except BaseException:
            self._state = "failed"
            raise
        finally:
            _discard(out, tmp)
        self._state = "finished"
        _discard(self._fd, self._tmp)
        self._fd = self._tmp = None
        return header

    def _take_temp(self) -> tuple[int, Path | None]:
        """The temporary file, from now on the caller's to close and remove."""
        fd, tmp = self._fd, self._tmp
        assert fd is not None
        self._fd = self._tmp = None
        return fd, tmp

    def _check_plan(self, header: Header) -> None:
        assert self._plan is not None
        missing = [entry.name for entry in self._plan.images[len(self._images) :]]
        if missing:
            raise InputError(f"{self.path}: planned images not added: {', '.join(map(quote, missing))}")
        if header.recipients != self._plan.recipients:
            raise InputError(f"{self.path}: the recipients differ from those planned")
        if len(header.to_bytes()) != len(self._plan.to_bytes()):  # cannot differ when all the above agrees
            raise InputError(f"{self.path}: the header's length differs from the space reserved for it")


class _Writes:
    """Bytes written back to back into ``fd`` from ``offset`` on, through the page cache."""

    def __init__(self, fd: int, offset: int) -> None:
        self._fd = fd
        self._offset = offset

    def __enter__(self) -> _Writes:
        return self

    def write(self, data: memoryview) -> None:
        self._offset += _pwrite_all(self._fd, [data], self._offset)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        pass


class _DirectWrites(_Writes):
    """Bytes written back to back into ``fd`` from ``offset`` on, past the page cache where the file system allows.

    A bundle's ciphertext is written once and not read again by its writer,
    so copying it into the page cache and having the kernel write it out
    at the fsync costs CPU and time for nothing. This copies it into
    page-aligned blocks (the part of the first block before ``offset`` read
    back from the file, the unaligned end kept for the next block) that a
    background thread writes through a second descriptor opened with
    ``O_DIRECT``, while the caller goes on. Whatever cannot go that way (the
    unaligned end, a file system that refuses ``O_DIRECT``) goes through the
    page cache, at the same offsets: the file's bytes are the same either way.
    The caller still fsyncs ``fd``.
    """

    def __init__(self, fd: int, path: str | Path | None, offset: int) -> None:
        super().__init__(fd, offset)
        self._start = offset - offset % _DIRECT_ALIGN  # file offset of the current block's first byte
        self._blocks = [mmap.mmap(-1, _DIRECT_BLOCK) for _ in range(_DIRECT_AHEAD + 1)]  # page-aligned
        self._current = 0
        self._filled = offset - self._start
        self._blocks[0][: self._filled] = os.pread(fd, self._filled, self._start).ljust(self._filled, b"\0")
        self._direct: int | None = None
        try:
            if path is not None and hasattr(os, "O_DIRECT"):
                self._direct = os.open(path, os.O_WRONLY | os.O_DIRECT)
        except OSError:
            pass  # a file system without O_DIRECT: the page cache, then
        self._disk = _Behind(depth=_DIRECT_AHEAD)

    def __enter__(self) -> _DirectWrites:
        return self

    def write(self, data: memoryview) -> None:
        while data:
            block = self._blocks[self._current]
            n = min(len(data), _DIRECT_BLOCK - self._filled)
            block[self._filled : self._filled + n] = data[:n]
            self._filled += n
            data = data[n:]
            if self._filled == _DIRECT_BLOCK:
                self._send()

    def _send(self) -> None:
        """Hand the current block's whole aligned part to the disk thread; carry its end into the next block."""
        aligned = self._filled - self._filled % _DIRECT_ALIGN
        block = self._blocks[self._current]
        self._disk.submit(functools.partial(self._write_at, self._start), memoryview(block)[:aligned])
        self._current = (self._current + 1) % len(self._blocks)  # its write is done: at most _DIRECT_AHEAD wait
        self._blocks[self._current][: self._filled - aligned] = block[aligned : self._filled]
        self._start += aligned
        self._filled -= aligned

    def _write_at(self, offset: int, data: memoryview) -> None:  # on the disk thread
        if self._direct is not None:
            try:
                _pwrite_all(self._direct, [data], offset)
                return
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                os.close(self._direct)  # alignment this file system refuses: the page cache from here on
                self._direct = None
        _pwrite_all(self._fd, [data], offset)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        try:
            try:
                if kind is None:
                    self._send()
            except BaseException as e:
                self._disk.__exit__(type(e), e, e.__traceback__)  # drops the writes not started
                raise
            self._disk.__exit__(kind, error, traceback)  # waits for every write (and raises its error) unless failing
            if kind is None:  # the unaligned end
                _pwrite_all(self._fd, [memoryview(self._blocks[self._current])[: self._filled]], self._start)
        finally:
            if self._direct is not None:
                os.close(self._direct)
            self._blocks = []  # unmapped once the disk thread's last view of them is gone


def _tail(envelope_bytes: bytes, images_end: int) -> bytes:
    """Everything after the images: envelope length, envelope, and the trailer pointing back at them."""
    return _U32.pack(len(envelope_bytes)) + envelope_bytes + _TRAILER.pack(images_end, END_MAGIC)


def _pwrite_all(fd: int, parts: list[bytes] | list[memoryview], offset: int) -> int:
    """Write ``parts`` back to back at ``offset`` (the file position is left alone); the bytes written."""
    total = 0
    views = [memoryview(part) for part in parts]
    while views:
        written = os.pwritev(fd, views, offset + total)
        total += written
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views:
            views[0] = views[0][written:]
    return total


def _check_envelope(envelope: object) -> bytes:
    if not isinstance(envelope, bytes):
        raise FormatError(f"bundle envelope must be bytes, not {type(envelope).__name__}")
    if not 0 < len(envelope) <= MAX_ENVELOPE_SIZE:
        raise FormatError(f"bundle envelope is {len(envelope)} bytes; it must be 1 to {MAX_ENVELOPE_SIZE}")
    return envelope


class _Behind:
    """Calls run in order on one background thread, at most ``depth`` of them waiting.

    :meth:`submit` raises the first error a call raised; leaving the ``with``
    block waits for every call (and raises its error) unless the block failed,
    in which case calls not yet started are dropped.
    """

    def __init__(self, depth: int) -> None:
        self._depth = depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vault-bundle")
        self._pending: deque[Future[None]] = deque()

    def __enter__(self) -> _Behind:
        return self

    def submit(self, call: Callable[..., None], *args: Any) -> None:
        self._pending.append(self._pool.submit(call, *args))
        while len(self._pending) > self._depth:
            self._pending.popleft().result()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        try:
            if kind is None:
                while self._pending:
                    self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


# --- reading ----------------------------------------------------------------------


class BundleReader:
    """Open a bundle file and check its whole structure; decrypt or hash its images on demand.

    Opening reads and checks magic, header and envelope and that the file is
    exactly as long as they say (nothing missing, nothing after the
    trailer); images are only read by :meth:`ciphertext_digest` and
    :meth:`decrypt_image`. Use it as a context manager, or call
    :meth:`close`.

    Raises:
        InputError: the file cannot be read.
        FormatError: it is not a well-formed v1 bundle; the message says what
            is wrong.
    """

    header: Header
    """The parsed header."""
    header_bytes: bytes
    """The header exactly as stored."""
    envelope_bytes: bytes
    """The envelope exactly as stored (not parsed here)."""
    size: int
    """The file's length in bytes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._file = os.fdopen(open_to_read(self.path), "rb", buffering=0)
        except OSError as e:
            raise InputError(f"cannot read bundle {self.path}: {e.strerror or e}") from e
        self._fd = self._file.fileno()
        self._offsets: dict[str, int] = {}
        try:
            self._check()
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> BundleReader:
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
        data = os.pread(self._fd, size, offset)
        while len(data) < size:
            more = os.pread(self._fd, size - len(data), offset + len(data))
            if not more:
                raise self._fail(f"file ended at offset {offset + len(data)} (changed while being read?)")
            data += more
        return data

    def _read_into(self, view: memoryview, offset: int) -> None:
        got = 0
        while got < len(view):
            n = os.preadv(self._fd, [view[got:]], offset + got)
            if n == 0:
                raise self._fail(f"file ended at offset {offset + got} (changed while being read?)")
            got += n

    def _check(self) -> None:
        st = os.fstat(self._fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{self.path} is not a regular file")
        size = self.size = st.st_size
        if size < MIN_BUNDLE_SIZE:
            raise self._fail(f"{size} bytes is too short to be a vault bundle")
        magic = self._read(0, len(MAGIC))
        if magic != MAGIC:
            if magic[:-1] == MAGIC[:-1]:
                raise self._fail(f"unsupported bundle format version {magic[-1:]!r} (this vault reads version 1)")
            if magic.lstrip()[:1] in (b"{", b"["):
                raise self._fail("is a JSON file, not a vault bundle")
            raise self._fail(f"not a vault bundle (does not start with {MAGIC.decode()})")
        if size > MAX_BUNDLE_SIZE:
            raise self._fail(f"{size} bytes is more than the {MAX_BUNDLE_SIZE}-byte bundle limit")
        (header_length,) = _U32.unpack(self._read(len(MAGIC), 4))
        if not 0 < header_length <= MAX_HEADER_SIZE:
            raise self._fail(f"header length {header_length} is outside 1..{MAX_HEADER_SIZE}")
        if _PREFIX_SIZE + header_length + _SUFFIX_SIZE > size:
            raise self._fail(f"truncated: the {header_length}-byte header runs past the end of the file")
        self.header_bytes = self._read(_PREFIX_SIZE, header_length)
        try:
            self.header = Header.from_bytes(self.header_bytes)
        except FormatError as e:
            raise self._fail(str(e)) from e
        self._offsets = {}
        offset = _PREFIX_SIZE + header_length
        for entry in self.header.images:
            self._offsets[entry.name] = offset
            offset += entry.ciphertext_length
        images_end = offset
        if images_end + _SUFFIX_SIZE > size:
            raise self._fail(
                f"truncated: the header lists {self.header.ciphertext_size} bytes of images, "
                f"but the file is only {size} bytes"
            )
        (envelope_length,) = _U32.unpack(self._read(images_end, 4))
        if not 0 < envelope_length <= MAX_ENVELOPE_SIZE:
            raise self._fail(
                f"envelope length {envelope_length} is outside 1..{MAX_ENVELOPE_SIZE} (images altered in length?)"
            )
        expected = images_end + 4 + envelope_length + _TRAILER.size
        if size < expected:
            raise self._fail(f"truncated: the file is {size} bytes, its header and envelope length say {expected}")
        trailer_offset, end_magic = _TRAILER.unpack(self._read(expected - _TRAILER.size, _TRAILER.size))
        if end_magic != END_MAGIC:
            raise self._fail(f"no {END_MAGIC.decode()} trailer where the envelope ends (offset {expected - 8})")
        if size > expected:
            raise self._fail(f"{size - expected} unexpected bytes after the trailer")
        if trailer_offset != images_end:
            raise self._fail(f"trailer points to offset {trailer_offset}; the envelope length is at {images_end}")
        self.envelope_bytes = self._read(images_end + 4, envelope_length)

    def image_offset(self, name: str) -> int:
        """Where the image's ciphertext starts in the file.

        Raises:
            InputError: the bundle has no such image.
        """
        self.header.image(name)
        return self._offsets[name]

    def ciphertext_digest(self, name: str) -> str:
        """The hex SHA-256 of the image's ciphertext as stored, read from disk (no key needed).

        Raises:
            InputError: the bundle has no such image.
        """
        entry = self.header.image(name)
        digest = hashlib.sha256()
        buffer = memoryview(bytearray(min(_COPY_BLOCK, max(entry.ciphertext_length, 1))))
        offset, end = self._offsets[name], self._offsets[name] + entry.ciphertext_length
        while offset < end:
            view = buffer[: min(len(buffer), end - offset)]
            self._read_into(view, offset)
            digest.update(view)
            offset += len(view)
        return digest.hexdigest()

    def decrypt_image(self, name: str, data_key: bytes, sink: Callable[[bytes], None]) -> str:
        """Decrypt the image chunk by chunk, give each plaintext chunk to ``sink``, return its SHA-256.

        Every chunk is authenticated before ``sink`` sees it, but an image can
        still fail at a later chunk: treat what ``sink`` received as untrusted
        until this returns, and compare the returned digest with the signed
        statement's. One thread reads and decrypts up to two chunks ahead
        while this one hashes and calls ``sink``.

        Returns:
            The hex SHA-256 of the whole plaintext.

        Raises:
            InputError: no such image, or the data key is not 32 bytes.
            DecryptionError: a chunk does not authenticate (the message names
                the image and chunk): the wrong data key, or the bundle was
                altered, truncated, reordered or spliced.
        """
        digest = hashlib.sha256()
        chunks = self.image_chunks(name, data_key)
        try:
            for plaintext in chunks:
                digest.update(plaintext)
                sink(plaintext)
        finally:
            chunks.close()
        return digest.hexdigest()

    def image_chunks(self, name: str, data_key: bytes) -> Generator[bytes, None, None]:
        """The image's plaintext, chunk by chunk, each authenticated before it is yielded.

        The pull form of :meth:`decrypt_image` (for a device adapter that
        takes an iterator): the caller hashes what it receives and compares
        the digest with the signed statement's once the generator ends.

        Raises:
            As :meth:`decrypt_image`.
        """
        entry = self.header.image(name)
        _check_data_key(data_key)
        index = self.header.images.index(entry)
        batches = self._decrypted_batches(entry, index, data_key)
        if entry.plaintext_length > _batch_size(self.header.chunk_size):
            batches = _ahead(batches, depth=_PIPELINE_DEPTH)
        try:
            for batch in batches:
                yield from batch
        finally:
            batches.close()

    def plaintext_digest(self, name: str, data_key: bytes) -> str:
        """The hex SHA-256 of the image's plaintext, after authenticating every chunk.

        Raises:
            As :meth:`decrypt_image`.
        """
        return self.decrypt_image(name, data_key, _discard_bytes)

    def _decrypted_batches(self, entry: ImageEntry, index: int, data_key: bytes) -> Generator[list[bytes], None, None]:
        """The image's plaintext chunks, in batches of about :data:`_BATCH_SIZE` bytes."""
        cipher = _ImageCipher(data_key, self.header.bundle_id, index, entry.name)
        chunk_size = self.header.chunk_size
        per_batch = _batch_size(chunk_size) // chunk_size
        buffer = memoryview(bytearray(min(per_batch * (chunk_size + TAG_SIZE), entry.ciphertext_length)))
        offset = self._offsets[entry.name]
        end = offset + entry.ciphertext_length
        chunk = 0
        while chunk < entry.chunks:
            view = buffer[: min(len(buffer), end - offset)]
            self._read_into(view, offset)
            offset += len(view)
            plaintexts = []
            for start in range(0, len(view), chunk_size + TAG_SIZE):
                try:
                    plaintexts.append(
                        cipher.decrypt(chunk, chunk == entry.chunks - 1, view[start : start + chunk_size + TAG_SIZE])
                    )
                except InvalidTag as e:
                    raise DecryptionError(
                        f"{self.path}: image {quote(entry.name)} chunk {chunk} of {entry.chunks} does not"
                        " authenticate: wrong data key, or the bundle was altered, truncated, reordered or spliced"
                    ) from e
                chunk += 1
            yield plaintexts


def _discard_bytes(data: bytes) -> None:
    del data


def _ahead(items: Generator[list[bytes], None, None], *, depth: int) -> Generator[list[bytes], None, None]:
    """``items``, produced on one background thread up to ``depth`` ahead of the consumer.

    The generator only ever runs on that thread, one step at a time. Closing
    this one (or an error on either side) stops it after the step under way.
    """
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vault-bundle")

    def step() -> list[bytes] | None:
        return next(items, None)

    pending: deque[Future[list[bytes] | None]] = deque(pool.submit(step) for _ in range(depth))
    try:
        while (item := pending.popleft().result()) is not None:
            pending.append(pool.submit(step))
            yield item
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        items.close()


# --- approving ----------------------------------------------------------------


def replace_envelope(path: str | os.PathLike[str], envelope_bytes: bytes) -> Header:
    """Give the bundle at ``path`` a new envelope, keeping header and images byte for byte.

    The bundle is checked first, then copied (in constant memory) with the
    new envelope and trailer to a temporary file beside it, which is fsynced
    and renamed over ``path``. This is the one call that replaces a bundle:
    approving it changes its envelope.

    Returns:
        The bundle's header.

    Raises:
        InputError: the file cannot be read or written, or changed meanwhile.
        FormatError: the bundle is malformed, or the envelope is empty or
            larger than :data:`MAX_ENVELOPE_SIZE`.
    """
    _check_envelope(envelope_bytes)
    target = Path(path)
    with BundleReader(target) as bundle:
        images_end = _PREFIX_SIZE + len(bundle.header_bytes) + bundle.header.ciphertext_size
        source = os.fstat(bundle._fd)
        fd: int | None = None
        tmp: Path | None = None
        try:
            fd, tmp = _make_temp(target)
            _copy_range(bundle._fd, 0, fd, images_end)
            _write_all(fd, _tail(envelope_bytes, images_end))
            os.fsync(fd)
            os.fchmod(fd, stat.S_IMODE(source.st_mode))
            os.close(fd)
            fd = None
            now = os.stat(target)
            if (now.st_dev, now.st_ino) != (source.st_dev, source.st_ino):
                raise InputError(f"{target} was replaced while its envelope was being replaced; try again")
            os.replace(tmp, target)
            tmp = None
            fsync_dir(target.parent)
        except OSError as e:
            raise InputError(f"cannot write {target}: {e.strerror or e}") from e
        finally:
            _discard(fd, tmp)
        return bundle.header
