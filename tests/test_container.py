"""The release bundle container: round trips, HPKE interop, a token recipient, and every refusal.

Everything runs real AES-GCM, SHA-256 and HPKE; the token test opens a
data key inside SoftHSM2. Attack tests forge bundles with a small writer of
their own that follows the documented layout (checked against the real
writer byte for byte), so each forgery differs from a genuine bundle only in
the way the test names.
"""

from __future__ import annotations

import base64
import doctest
import hashlib
import io
import json
import os
import random
import stat
import struct
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

import vault.container
from vault.container import (
    DEFAULT_CHUNK_SIZE,
    END_MAGIC,
    MAGIC,
    MAX_CHUNK_SIZE,
    MAX_ENVELOPE_SIZE,
    MAX_HEADER_SIZE,
    MIN_CHUNK_SIZE,
    TAG_SIZE,
    BundleReader,
    BundleWriter,
    EncryptedImage,
    Header,
    ImageEntry,
    Recipient,
    check_image_name,
    data_key_info,
    new_bundle_id,
    new_data_key,
    replace_envelope,
    seal_recipients,
    unwrap_data_key,
    wrap_data_key,
)
from vault.crypto import key_id
from vault.errors import DecryptionError, FormatError, InputError, VaultError
from vault.formats import PAYLOAD_TYPE_INTOTO, Envelope, canonical_json, sign_envelope
from vault.hpke import SoftwareDecapsulator
from vault.token import Pkcs11Uri, open_token

from .formats._soft import SoftSigner

TokenUri = Callable[..., Pkcs11Uri]

CS = MIN_CHUNK_SIZE  # small chunks keep the test bundles small
STATION = "station-1"
P256 = Suite(KEM.P256, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
P384 = Suite(KEM.P384, KDF.HKDF_SHA384, AEAD.AES_256_GCM)


def _random(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _envelope(text: bytes = b'{"release": "1.0.0"}') -> bytes:
    return sign_envelope(PAYLOAD_TYPE_INTOTO, text, [SoftSigner()]).to_json()


def _station(curve: ec.EllipticCurve | None = None) -> SoftwareDecapsulator:
    return SoftwareDecapsulator(ec.generate_private_key(curve or ec.SECP256R1()))


def _one_line(error: BaseException) -> str:
    message = str(error)
    assert message and "\n" not in message
    return message


@dataclass
class Built:
    """A bundle made by the real writer, with everything a test needs to check it."""

    path: Path
    header: Header
    data_key: bytes
    station: SoftwareDecapsulator
    plaintexts: dict[str, bytes]
    results: dict[str, EncryptedImage]
    envelope: bytes

    def sha256(self, name: str) -> str:
        return hashlib.sha256(self.plaintexts[name]).hexdigest()


def _build(
    path: Path,
    images: dict[str, bytes],
    *,
    chunk_size: int = CS,
    bundle_id: str | None = None,
    data_key: bytes | None = None,
    station: SoftwareDecapsulator | None = None,
    envelope: bytes | None = None,
) -> Built:
    station = station or _station()
    envelope = envelope or _envelope()
    results = {}
    with BundleWriter(path, bundle_id=bundle_id, data_key=data_key, chunk_size=chunk_size) as writer:
        for name, data in images.items():
            results[name] = writer.add_image(name, io.BytesIO(data))
        recipients = seal_recipients(writer.data_key, writer.bundle_id, {STATION: station.public_key})
        header = writer.finish(recipients, envelope)
    return Built(path, header, writer.data_key, station, dict(images), results, envelope)


def _decrypt_all(path: Path, data_key: bytes) -> dict[str, bytes]:
    out = {}
    with BundleReader(path) as bundle:
        for entry in bundle.header.images:
            parts: list[bytes] = []
            digest = bundle.decrypt_image(entry.name, data_key, parts.append)
            out[entry.name] = b"".join(parts)
            assert digest == hashlib.sha256(out[entry.name]).hexdigest()
    return out


# --- an independent writer of the documented layout, for forgeries -------------


def _assemble(path: Path, header: Header, ciphertexts: list[bytes], envelope: bytes) -> None:
    """magic, u32 header length, header, images, u32 envelope length, envelope, u64 offset, end magic."""
    header_bytes = header.to_bytes()
    images = b"".join(ciphertexts)
    images_end = 8 + 4 + len(header_bytes) + len(images)
    path.write_bytes(
        MAGIC
        + struct.pack(">I", len(header_bytes))
        + header_bytes
        + images
        + struct.pack(">I", len(envelope))
        + envelope
        + struct.pack(">Q", images_end)
        + END_MAGIC
    )


def _stored_chunks(path: Path, name: str) -> list[bytes]:
    """The image's ciphertext as stored, cut into its chunks (each with its tag)."""
    with BundleReader(path) as bundle:
        entry = bundle.header.image(name)
        offset = bundle.image_offset(name)
        step = bundle.header.chunk_size + TAG_SIZE
    data = path.read_bytes()[offset : offset + entry.ciphertext_length]
    return [data[i : i + step] for i in range(0, len(data), step)]


def _forge(path: Path, out: Path, images: list[tuple[str, list[bytes]]], *, bundle_id: str | None = None) -> None:
    """Write ``out``: the bundle at ``path`` with these images (name, stored chunks), lengths and digests fixed."""
    with BundleReader(path) as bundle:
        header, envelope = bundle.header, bundle.envelope_bytes
    entries = []
    for name, chunks in images:
        ciphertext = b"".join(chunks)
        plaintext_length = len(ciphertext) - TAG_SIZE * len(chunks)
        digest = hashlib.sha256(ciphertext).hexdigest()
        entries.append(ImageEntry(name, plaintext_length, len(ciphertext), len(chunks), digest))
    forged = replace(header, images=tuple(entries), bundle_id=bundle_id or header.bundle_id)
    _assemble(out, forged, [b"".join(chunks) for _, chunks in images], envelope)


IMAGES = {
    "empty.bin": b"",
    "small.bin": b"five!",
    "exact.bin": _random(CS, 1),
    "plus-one.bin": _random(CS + 1, 2),
    "multi.bin": _random(3 * CS + 100, 3),
}


@pytest.fixture
def built(tmp_path: Path) -> Built:
    return _build(tmp_path / "release.bundle", IMAGES)


# --- the module -------------------------------------------------------------------


def test_docstring_example_runs() -> None:
    result = doctest.testmod(vault.container)
    assert result.attempted > 0
    assert result.failed == 0


def test_container_stays_in_the_bottom_layer() -> None:
    code = (
        "import sys, vault.container\n"
        "heavy = sorted(m for m in ('pkcs11', 'vault.token', 'vault.ceremony', 'vault.bundle', 'vault.verify',"
        " 'vault.cli', 'click', 'yaml', 'sigstore') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_fresh_keys_and_ids() -> None:
    assert len(new_data_key()) == 32
    assert new_data_key() != new_data_key()
    bundle_id = new_bundle_id()
    assert len(bundle_id) == 32 and bytes.fromhex(bundle_id).hex() == bundle_id
    assert new_bundle_id() != bundle_id


# --- round trips ------------------------------------------------------------------


def test_round_trip_with_edge_sized_images(built: Built) -> None:
    header = built.header
    assert [e.name for e in header.images] == list(IMAGES)
    expected_chunks = {"empty.bin": 1, "small.bin": 1, "exact.bin": 1, "plus-one.bin": 2, "multi.bin": 4}
    for entry in header.images:
        plaintext = IMAGES[entry.name]
        assert entry.chunks == expected_chunks[entry.name]
        assert entry.plaintext_length == len(plaintext)
        assert entry.ciphertext_length == len(plaintext) + TAG_SIZE * entry.chunks
        assert built.results[entry.name] == EncryptedImage(entry, built.sha256(entry.name))
    assert _decrypt_all(built.path, built.data_key) == IMAGES

    with BundleReader(built.path) as bundle:
        assert bundle.header == header
        assert bundle.header_bytes == header.to_bytes()
        assert Header.from_bytes(bundle.header_bytes) == header
        assert bundle.envelope_bytes == built.envelope
        assert Envelope.from_json(bundle.envelope_bytes).payload == b'{"release": "1.0.0"}'
        offset = 8 + 4 + len(bundle.header_bytes)
        for entry in header.images:
            assert bundle.image_offset(entry.name) == offset
            offset += entry.ciphertext_length
            assert bundle.ciphertext_digest(entry.name) == entry.ciphertext_sha256
            assert bundle.plaintext_digest(entry.name, built.data_key) == built.sha256(entry.name)
        # the sink sees whole chunks in order: full ones, then the rest
        seen: list[int] = []
        bundle.decrypt_image("multi.bin", built.data_key, lambda chunk: seen.append(len(chunk)))
        assert seen == [CS, CS, CS, 100]
        seen.clear()
        bundle.decrypt_image("empty.bin", built.data_key, lambda chunk: seen.append(len(chunk)))
        assert seen == [0]

    data = built.path.read_bytes()
    assert data[:8] == MAGIC and data[-8:] == END_MAGIC
    assert len(data) == offset + 4 + len(built.envelope) + 16
    assert struct.unpack(">Q", data[-16:-8]) == (offset,)
    assert struct.unpack(">I", data[offset : offset + 4]) == (len(built.envelope),)


def test_the_documented_layout_is_what_the_writer_writes(built: Built, tmp_path: Path) -> None:
    # The forgeries below use _assemble; it must write exactly what BundleWriter writes.
    ciphertexts = [b"".join(_stored_chunks(built.path, name)) for name in IMAGES]
    _assemble(tmp_path / "again.bundle", built.header, ciphertexts, built.envelope)
    assert (tmp_path / "again.bundle").read_bytes() == built.path.read_bytes()
    _forge(built.path, tmp_path / "forged.bundle", [(n, _stored_chunks(built.path, n)) for n in IMAGES])
    assert (tmp_path / "forged.bundle").read_bytes() == built.path.read_bytes()


def test_chunk_nonce_and_aad_are_as_documented(built: Built) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    index = list(IMAGES).index("plus-one.bin")
    chunks = _stored_chunks(built.path, "plus-one.bin")
    aad_prefix = (
        b"vault-bundle-v1\0"
        + bytes.fromhex(built.header.bundle_id)
        + struct.pack(">I", index)
        + hashlib.sha256(b"plus-one.bin").digest()
    )
    aead = AESGCM(built.data_key)
    first = aead.decrypt(struct.pack(">IQ", index, 0), chunks[0], aad_prefix + struct.pack(">QB", 0, 0))
    last = aead.decrypt(struct.pack(">IQ", index, 1), chunks[1], aad_prefix + struct.pack(">QB", 1, 1))
    assert first + last == IMAGES["plus-one.bin"]


def test_large_images_cross_batches_and_threads(tmp_path: Path) -> None:
    # 4 KiB chunks are handed between threads in 1 MiB batches: cover an exact
    # batch, a batch and one chunk, and one more byte, and the default chunk size.
    images = {
        "batch.bin": _random(1024 * 1024, 4),
        "batch-plus-chunk.bin": _random(1024 * 1024 + CS, 5),
        "batch-plus-byte.bin": _random(2 * 1024 * 1024 + 1, 6),
    }
    small = _build(tmp_path / "small-chunks.bundle", images)
    assert [e.chunks for e in small.header.images] == [256, 257, 513]
    assert _decrypt_all(small.path, small.data_key) == images
    large = _build(tmp_path / "default-chunks.bundle", images, chunk_size=DEFAULT_CHUNK_SIZE)
    assert [e.chunks for e in large.header.images] == [1, 2, 3]
    assert _decrypt_all(large.path, large.data_key) == images
    for built in (small, large):
        for name, image in built.results.items():
            assert image.plaintext_sha256 == built.sha256(name)


class _Trickle(io.RawIOBase):
    """A raw stream that returns at most 1000 bytes per read, as pipes and sockets may."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), 1000, len(self._data))
        buffer[:n] = self._data[:n]
        self._data = self._data[n:]
        return n


def test_short_reads_from_the_source_give_the_same_chunks(tmp_path: Path) -> None:
    data = _random(3 * CS + 7, 7)
    key, bundle_id = new_data_key(), new_bundle_id()
    with BundleWriter(tmp_path / "a.bundle", bundle_id=bundle_id, data_key=key, chunk_size=CS) as writer:
        trickled = writer.add_image("fw.bin", _Trickle(data))  # type: ignore[arg-type]
        writer.finish(seal_recipients(key, bundle_id, {STATION: _station().public_key}), _envelope())
    with BundleWriter(tmp_path / "b.bundle", bundle_id=bundle_id, data_key=key, chunk_size=CS) as writer:
        whole = writer.add_image("fw.bin", io.BytesIO(data))
        writer.finish(seal_recipients(key, bundle_id, {STATION: _station().public_key}), _envelope())
    assert trickled == whole
    assert _decrypt_all(tmp_path / "a.bundle", key) == {"fw.bin": data}


# --- the planned writer: header space reserved, images encrypted in place ------------------


PLANNED = {  # across batches, threads and 1 MiB direct writes, an empty image, one the size of a chunk, a small one
    "blocks.bin": _random(9 * 1024 * 1024 + 3, 11),
    "empty.bin": b"",
    "chunk.bin": _random(CS, 12),
    "small.bin": _random(5000, 13),
}


def _write_planned(path: Path, key: bytes, bundle_id: str, recipients: dict[str, Recipient], envelope: bytes) -> Header:
    with BundleWriter(path, bundle_id=bundle_id, data_key=key, chunk_size=CS) as writer:
        writer.plan([(name, len(data)) for name, data in PLANNED.items()], recipients)
        for name, data in PLANNED.items():
            writer.add_image(name, _Trickle(data) if name == "chunk.bin" else io.BytesIO(data))  # type: ignore[arg-type]
        return writer.finish(recipients, envelope)


def test_a_planned_bundle_is_byte_for_byte_the_unplanned_one(tmp_path: Path) -> None:
    # One format: what the planned writer puts in place is what the spool-and-copy writer (and
    # every bundle built before plan() existed) holds, and the one reader opens both.
    key, bundle_id = new_data_key(), new_bundle_id()
    station = _station()
    recipients = seal_recipients(
        key, bundle_id, {STATION: station.public_key, "station-2": _station(ec.SECP384R1()).public_key}
    )
    envelope = _envelope()
    planned = _write_planned(tmp_path / "planned.bundle", key, bundle_id, recipients, envelope)
    with BundleWriter(tmp_path / "spooled.bundle", bundle_id=bundle_id, data_key=key, chunk_size=CS) as writer:
        for name, data in PLANNED.items():
            writer.add_image(name, io.BytesIO(data))
        spooled = writer.finish(recipients, envelope)
    assert planned == spooled
    assert (tmp_path / "planned.bundle").read_bytes() == (tmp_path / "spooled.bundle").read_bytes()
    assert _decrypt_all(tmp_path / "planned.bundle", key) == PLANNED
    assert (tmp_path / "planned.bundle").stat().st_mode & 0o777 == 0o644
    assert _leftovers(tmp_path) == []


def test_a_planned_writer_refuses_what_differs_from_its_plan(tmp_path: Path) -> None:
    key, bundle_id = new_data_key(), new_bundle_id()
    recipients = seal_recipients(key, bundle_id, {STATION: _station().public_key})
    target = tmp_path / "release.bundle"

    def planned(images: list[tuple[str, int]]) -> BundleWriter:
        writer = BundleWriter(target, bundle_id=bundle_id, data_key=key, chunk_size=CS).__enter__()
        writer.plan(images, recipients)
        return writer

    cases: list[tuple[Callable[[BundleWriter], object], str]] = [
        (lambda w: w.add_image("b.bin", io.BytesIO(b"data")), "next planned image is 'a.bin', not 'b.bin'"),
        (lambda w: w.add_image("a.bin", io.BytesIO(b"dat")), "is 3 bytes, not the 4 planned"),
        (lambda w: w.add_image("a.bin", io.BytesIO(b"data!")), "is 5 bytes, not the 4 planned"),
        (lambda w: w.plan([("a.bin", 4)], recipients), "before its first image, and once"),
        (lambda w: (w.add_image("a.bin", io.BytesIO(b"data")), w.finish(recipients, b"{}")), "not added: 'b.bin'"),
    ]
    for attempt, message in cases:
        writer = planned([("a.bin", 4), ("b.bin", 0)])
        with pytest.raises(InputError, match=message) as caught:
            attempt(writer)
        _one_line(caught.value)
        writer.__exit__(InputError, caught.value, None)
        assert list(tmp_path.iterdir()) == []
    other = seal_recipients(key, bundle_id, {STATION: _station().public_key})
    with pytest.raises(InputError, match="recipients differ"):
        with BundleWriter(target, bundle_id=bundle_id, data_key=key, chunk_size=CS) as writer:
            writer.plan([("a.bin", 4)], recipients)
            writer.add_image("a.bin", io.BytesIO(b"data"))
            writer.finish(other, b"{}")
    with pytest.raises(InputError, match="before finish"):
        with BundleWriter(target, bundle_id=bundle_id, data_key=key, chunk_size=CS) as writer:
            with pytest.raises(FormatError, match="image name"):
                writer.plan([("../a.bin", 4)], recipients)
            with pytest.raises(FormatError, match="length is -1"):
                writer.plan([("a.bin", -1)], recipients)
            with pytest.raises(FormatError, match="1 to 1024 recipients"):
                writer.plan([("a.bin", 4)], {})
    assert list(tmp_path.iterdir()) == []


def test_a_planned_writer_leaves_no_file_until_finish(tmp_path: Path) -> None:
    # Images go straight into a file beside the bundle that has no name (O_TMPFILE), so a writer that
    # stops halfway (here an exception, as a crash would) leaves nothing in the folder; the bundle's
    # name appears only when the file is whole.
    key, bundle_id = new_data_key(), new_bundle_id()
    recipients = seal_recipients(key, bundle_id, {STATION: _station().public_key})
    target = tmp_path / "release.bundle"
    with pytest.raises(RuntimeError):
        with BundleWriter(target, bundle_id=bundle_id, data_key=key, chunk_size=CS) as writer:
            writer.plan([("a.bin", 4)], recipients)
            writer.add_image("a.bin", io.BytesIO(b"data"))
            assert list(tmp_path.iterdir()) == []
            raise RuntimeError("power cut, as far as this writer knows")
    assert list(tmp_path.iterdir()) == []
    with BundleWriter(target, bundle_id=bundle_id, data_key=key, chunk_size=CS) as writer:
        writer.plan([("a.bin", 4)], recipients)
        writer.add_image("a.bin", io.BytesIO(b"data"))
        writer.finish(recipients, _envelope())
    assert [p.name for p in tmp_path.iterdir()] == ["release.bundle"]


def test_a_failing_sink_stops_the_decryption_thread(tmp_path: Path) -> None:
    built = _build(tmp_path / "big.bundle", {"big.bin": _random(3 * 1024 * 1024, 8)})
    before = threading.active_count()
    calls = 0

    def sink(chunk: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 300:
            raise RuntimeError("device programming failed")

    with BundleReader(built.path) as bundle, pytest.raises(RuntimeError, match="device programming failed"):
        bundle.decrypt_image("big.bin", built.data_key, sink)
    assert calls == 300
    assert threading.active_count() == before


# --- recipients and HPKE ----------------------------------------------------------


def test_wrapped_key_is_hpke_with_the_documented_info() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    data_key, bundle_id = new_data_key(), new_bundle_id()
    wrapped = wrap_data_key(data_key, bundle_id, STATION, private.public_key())
    info = b"vault-bundle-v1 data key\0" + bytes.fromhex(bundle_id) + b"\0" + b"station-1"
    assert data_key_info(bundle_id, STATION) == info
    assert len(wrapped) == 65 + 32 + 16
    assert P256.decrypt(wrapped, private, info=info) == data_key


@pytest.mark.parametrize(("curve", "suite"), [(ec.SECP256R1(), P256), (ec.SECP384R1(), P384)], ids=["P-256", "P-384"])
def test_a_key_wrapped_by_cryptography_unwraps(curve: ec.EllipticCurve, suite: Suite) -> None:
    private = ec.generate_private_key(curve)
    data_key, bundle_id = new_data_key(), new_bundle_id()
    wrapped = suite.encrypt(data_key, private.public_key(), info=data_key_info(bundle_id, STATION))
    assert unwrap_data_key(wrapped, bundle_id, STATION, SoftwareDecapsulator(private)) == data_key
    ours = wrap_data_key(data_key, bundle_id, STATION, private.public_key())
    assert suite.decrypt(ours, private, info=data_key_info(bundle_id, STATION)) == data_key


def test_unwrap_refuses_another_station_bundle_or_key() -> None:
    station, other = _station(), _station()
    data_key, bundle_id = new_data_key(), new_bundle_id()
    wrapped = wrap_data_key(data_key, bundle_id, STATION, station.public_key)
    assert unwrap_data_key(wrapped, bundle_id, STATION, station) == data_key
    for args in (
        (wrapped, bundle_id, "station-2", station),
        (wrapped, new_bundle_id(), STATION, station),
        (wrapped, bundle_id, STATION, other),
        (wrapped[:-1] + bytes([wrapped[-1] ^ 1]), bundle_id, STATION, station),
    ):
        with pytest.raises(DecryptionError) as caught:
            unwrap_data_key(*args)  # type: ignore[arg-type]
        assert "wrong station key or id" in _one_line(caught.value)
    with pytest.raises(FormatError):
        unwrap_data_key(wrapped[:40], bundle_id, STATION, station)
    with pytest.raises(FormatError, match="station id"):
        unwrap_data_key(wrapped, bundle_id, "Station 1", station)
    with pytest.raises(InputError, match="32 bytes"):
        wrap_data_key(b"short", bundle_id, STATION, station.public_key)


def test_a_station_token_unwraps_its_data_key_and_decrypts(token_uri: TokenUri, label: str, tmp_path: Path) -> None:
    images = {"fw.bin": _random(2 * CS + 3, 9)}
    with open_token(token_uri("vault-station-1"), rw=True) as token:
        key = token.generate_ec_key(label, usage="derive")
        with BundleWriter(tmp_path / "release.bundle", chunk_size=CS) as writer:
            writer.add_image("fw.bin", io.BytesIO(images["fw.bin"]))
            recipients = seal_recipients(writer.data_key, writer.bundle_id, {STATION: key.public_key})
            writer.finish(recipients, _envelope())
        with BundleReader(tmp_path / "release.bundle") as bundle:
            recipient = bundle.header.recipients[STATION]
            assert recipient.key_id == key_id(key.public_key)
            data_key = unwrap_data_key(recipient.wrapped_key, bundle.header.bundle_id, STATION, key)
            assert data_key == writer.data_key
            with pytest.raises(DecryptionError):
                unwrap_data_key(recipient.wrapped_key, bundle.header.bundle_id, "station-2", key)
    assert _decrypt_all(tmp_path / "release.bundle", data_key) == images


# --- every byte matters -------------------------------------------------------------


def _findings(path: Path, built: Built) -> list[str]:
    """Everything a station can tell is wrong with the bundle at ``path`` without the signed statement."""
    try:
        with BundleReader(path) as bundle:
            found = []
            if bundle.header != built.header:
                found.append("header")
            if bundle.envelope_bytes != built.envelope:
                found.append("envelope")
            data_key = built.data_key
            recipient = bundle.header.recipients.get(STATION)
            if recipient is None or recipient.key_id != key_id(built.station.public_key):
                found.append("recipient")
            else:
                try:
                    data_key = unwrap_data_key(recipient.wrapped_key, bundle.header.bundle_id, STATION, built.station)
                except DecryptionError:
                    found.append("unwrap")
            for entry in bundle.header.images:
                if bundle.ciphertext_digest(entry.name) != entry.ciphertext_sha256:
                    found.append(f"digest {entry.name}")
                try:
                    digest = bundle.plaintext_digest(entry.name, data_key)
                except DecryptionError as e:
                    found.append(f"decrypt {entry.name}: {_one_line(e)}")
                else:
                    if entry.name not in built.plaintexts or digest != built.sha256(entry.name):
                        found.append(f"plaintext {entry.name}")
            return found
    except FormatError as e:
        return [f"format: {_one_line(e)}"]


@pytest.mark.slow
@pytest.mark.parametrize("mask", [0x01, 0xFF], ids=["low-bit", "all-bits"])
def test_every_single_byte_change_is_detected(tmp_path: Path, mask: int) -> None:
    built = _build(tmp_path / "small.bundle", {"a.bin": _random(CS + 904, 10), "empty.bin": b"", "c.bin": b"c" * 100})
    original = built.path.read_bytes()
    assert _findings(built.path, built) == []
    with BundleReader(built.path) as bundle:
        header_end = 12 + len(bundle.header_bytes)
        images = {e.name: (bundle.image_offset(e.name), e.ciphertext_length) for e in bundle.header.images}
    images_end = header_end + built.header.ciphertext_size
    envelope_start, envelope_end = images_end + 4, images_end + 4 + len(built.envelope)
    assert envelope_end + 16 == len(original)

    forged = tmp_path / "flipped.bundle"
    parsed_header_changes = 0
    for position in range(len(original)):
        data = bytearray(original)
        data[position] ^= mask
        forged.write_bytes(data)
        found = _findings(forged, built)
        where = f"byte {position} ^ {mask:#x}: {found}"
        if position < header_end:
            # magic, header length, header: refused as malformed, or a header
            # that parses but differs, and the station sees a consequence
            # (a chunk that fails, a digest that differs, a key that does not open).
            if not found[0].startswith("format:"):
                assert found[0] == "header" and len(found) >= 2, where
                parsed_header_changes += 1
        elif position < images_end:
            name, (offset, length) = next((n, r) for n, r in images.items() if r[0] <= position < r[0] + r[1])
            chunk = (position - offset) // (CS + TAG_SIZE)
            assert found[0] == f"digest {name}", where
            assert found[1].startswith(f"decrypt {name}: ") and f"chunk {chunk} of" in found[1], where
            assert len(found) == 2, where
        elif envelope_start <= position < envelope_end:
            # opaque here: read as is, and visibly not the envelope that was signed
            assert found == ["envelope"], where
        else:
            # envelope length and trailer
            assert len(found) == 1 and found[0].startswith("format:"), where
    if mask == 0x01:
        assert parsed_header_changes > 0  # hex digits and names do change into other valid ones


# --- forgeries that each valid chunk alone would not reveal ----------------------------


def _refused_at(path: Path, data_key: bytes, name: str, chunk: int) -> None:
    with pytest.raises(DecryptionError) as caught:
        _decrypt_all(path, data_key)
    message = _one_line(caught.value)
    assert f"image '{name}' chunk {chunk} of" in message
    assert "does not authenticate" in message


def test_reordered_chunks_fail(built: Built, tmp_path: Path) -> None:
    images = [(n, _stored_chunks(built.path, n)) for n in IMAGES]
    multi = images[-1][1]
    multi[0], multi[1] = multi[1], multi[0]
    _forge(built.path, tmp_path / "forged.bundle", images)
    _refused_at(tmp_path / "forged.bundle", built.data_key, "multi.bin", 0)


def test_a_dropped_last_chunk_fails(built: Built, tmp_path: Path) -> None:
    images = [(n, _stored_chunks(built.path, n)) for n in IMAGES]
    images[-1][1].pop()  # lengths, chunk count and digest are fixed in the forged header
    _forge(built.path, tmp_path / "forged.bundle", images)
    with BundleReader(tmp_path / "forged.bundle") as bundle:
        assert bundle.header.image("multi.bin").plaintext_length == 3 * CS
    _refused_at(tmp_path / "forged.bundle", built.data_key, "multi.bin", 2)


def test_an_appended_chunk_fails(built: Built, tmp_path: Path) -> None:
    images = [(n, _stored_chunks(built.path, n)) for n in IMAGES]
    exact = images[2][1]
    exact.append(exact[0])
    _forge(built.path, tmp_path / "forged.bundle", images)
    _refused_at(tmp_path / "forged.bundle", built.data_key, "exact.bin", 0)


def test_a_chunk_spliced_from_another_bundle_fails(built: Built, tmp_path: Path) -> None:
    # The other bundle even shares the data key: the bundle id in the aad still tells them apart.
    other = _build(tmp_path / "other.bundle", IMAGES, data_key=built.data_key)
    images = [(n, _stored_chunks(built.path, n)) for n in IMAGES]
    images[-1][1][1] = _stored_chunks(other.path, "multi.bin")[1]
    _forge(built.path, tmp_path / "forged.bundle", images)
    _refused_at(tmp_path / "forged.bundle", built.data_key, "multi.bin", 1)
    # and a whole image taken from the other bundle
    images = [(n, _stored_chunks(built.path, n)) for n in IMAGES]
    images[3] = ("plus-one.bin", _stored_chunks(other.path, "plus-one.bin"))
    _forge(built.path, tmp_path / "forged.bundle", images)
    _refused_at(tmp_path / "forged.bundle", built.data_key, "plus-one.bin", 0)


def test_a_bundle_relabelled_with_another_id_fails(built: Built, tmp_path: Path) -> None:
    images = [(n, _stored_chunks(built.path, n)) for n in IMAGES]
    _forge(built.path, tmp_path / "forged.bundle", images, bundle_id=new_bundle_id())
    _refused_at(tmp_path / "forged.bundle", built.data_key, "empty.bin", 0)


def test_a_chunk_moved_to_another_image_fails(built: Built, tmp_path: Path) -> None:
    images = [(n, _stored_chunks(built.path, n)) for n in IMAGES]
    images[3][1][0] = images[4][1][0]  # multi.bin's first chunk as plus-one.bin's first chunk
    _forge(built.path, tmp_path / "forged.bundle", images)
    _refused_at(tmp_path / "forged.bundle", built.data_key, "plus-one.bin", 0)


def test_renamed_or_reordered_images_fail(built: Built, tmp_path: Path) -> None:
    images = [(n, _stored_chunks(built.path, n)) for n in IMAGES]
    images[1] = ("renamed.bin", images[1][1])
    _forge(built.path, tmp_path / "forged.bundle", images)
    _refused_at(tmp_path / "forged.bundle", built.data_key, "renamed.bin", 0)
    images = [(n, _stored_chunks(built.path, n)) for n in IMAGES]
    images[0], images[1] = images[1], images[0]
    _forge(built.path, tmp_path / "forged.bundle", images)
    _refused_at(tmp_path / "forged.bundle", built.data_key, "small.bin", 0)


def test_the_wrong_data_key_fails_at_the_first_chunk(built: Built) -> None:
    with BundleReader(built.path) as bundle, pytest.raises(DecryptionError, match="chunk 0 of 4"):
        bundle.decrypt_image("multi.bin", new_data_key(), lambda chunk: None)


# --- files that are not bundles ---------------------------------------------------------


def _refused(path: Path, match: str, error: type[VaultError] = FormatError) -> str:
    with pytest.raises(error) as caught:
        BundleReader(path)
    message = _one_line(caught.value)
    assert str(path) in message
    assert match in message, message
    return message


def test_truncated_files_are_refused(built: Built, tmp_path: Path) -> None:
    data = built.path.read_bytes()
    header_end = 12 + len(built.header.to_bytes())
    images_end = header_end + built.header.ciphertext_size
    cut = tmp_path / "cut.bundle"
    for size in (0, 7, 8, 11, 12, 40, header_end - 1, header_end, header_end + 5, images_end - 1, images_end + 2):
        cut.write_bytes(data[:size])
        _refused(cut, "")
    for size in (len(data) - 1, len(data) - 16, len(data) - 17, images_end + 100):
        cut.write_bytes(data[:size])
        _refused(cut, "truncated")


def test_trailing_bytes_are_refused(built: Built, tmp_path: Path) -> None:
    data = built.path.read_bytes()
    longer = tmp_path / "longer.bundle"
    for extra in (b"\0", b"x" * 100, data[-16:]):
        longer.write_bytes(data + extra)
        _refused(longer, f"{len(extra)} unexpected bytes after the trailer")


def test_wrong_magic_is_refused(built: Built, tmp_path: Path) -> None:
    data = built.path.read_bytes()
    other = tmp_path / "other.bundle"
    other.write_bytes(b"VLTBNDL2" + data[8:])
    _refused(other, "unsupported bundle format version")
    other.write_bytes(b"PK\x03\x04zips" + data[8:])
    _refused(other, "not a vault bundle")


def test_header_lengths_out_of_range_are_refused(built: Built, tmp_path: Path) -> None:
    data = built.path.read_bytes()
    other = tmp_path / "other.bundle"
    for length in (0, MAX_HEADER_SIZE + 1, 0xFFFFFFFF):
        other.write_bytes(data[:8] + struct.pack(">I", length) + data[12:])
        _refused(other, f"header length {length} is outside")


def test_envelope_length_and_trailer_offset_are_checked(built: Built, tmp_path: Path) -> None:
    data = bytearray(built.path.read_bytes())
    images_end = 12 + len(built.header.to_bytes()) + built.header.ciphertext_size
    other = tmp_path / "other.bundle"
    bad = bytearray(data)
    bad[images_end : images_end + 4] = struct.pack(">I", MAX_ENVELOPE_SIZE + 1)
    other.write_bytes(bad)
    _refused(other, "envelope length")
    bad = bytearray(data)
    bad[-16:-8] = struct.pack(">Q", images_end + 1)
    other.write_bytes(bad)
    _refused(other, f"trailer points to offset {images_end + 1}")


def test_files_that_are_not_bundles_are_refused(built: Built, tmp_path: Path) -> None:
    other = tmp_path / "other.bin"
    other.write_bytes(_random(10_000, 11))
    _refused(other, "not a vault bundle")
    other.write_bytes(built.envelope)
    _refused(other, "is a JSON file, not a vault bundle")
    other.write_bytes(json.dumps({"format": "vault-bundle/v1"}, indent=2).encode())
    _refused(other, "is a JSON file")
    other.write_bytes(b"")
    _refused(other, "too short")
    _refused(Path("/dev/null"), "not a regular file", InputError)
    _refused(tmp_path, "cannot read bundle", InputError)
    _refused(tmp_path / "missing.bundle", "cannot read bundle", InputError)


# --- the header, strictly ----------------------------------------------------------------


def _header_value(built: Built) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(built.header.to_bytes())
    return value


def _mutations() -> Iterator[tuple[str, Callable[[dict[str, Any]], None], str]]:
    def name(new: str) -> Callable[[dict[str, Any]], None]:
        def apply(value: dict[str, Any]) -> None:
            value["images"][1]["name"] = new

        return apply

    def image_field(field: str, new: Any) -> Callable[[dict[str, Any]], None]:
        def apply(value: dict[str, Any]) -> None:
            value["images"][4][field] = new

        return apply

    def top(field: str, new: Any) -> Callable[[dict[str, Any]], None]:
        def apply(value: dict[str, Any]) -> None:
            value[field] = new

        return apply

    def recipient(field: str, new: Any) -> Callable[[dict[str, Any]], None]:
        def apply(value: dict[str, Any]) -> None:
            value["recipients"][STATION][field] = new

        return apply

    def station(new: str) -> Callable[[dict[str, Any]], None]:
        def apply(value: dict[str, Any]) -> None:
            value["recipients"][new] = value["recipients"].pop(STATION)

        return apply

    for bad in ("..", "a/../b", "fw..bin", "a/b", "/abs", "a\\b", "a\0b", "a\nb", "", ".", "x" * 256, "é" * 128):
        yield f"name {bad!r}", name(bad), "image name"
    yield "duplicate names", name("empty.bin"), "appears twice"
    for bad in ("Station-1", "1station", "s" * 33, "station_1", ""):
        yield f"station {bad!r}", station(bad), "station id"
    yield "unknown top field", top("extra", 1), "unknown field 'extra'"
    yield "format v2", top("format", "vault-bundle/v2"), "format is 'vault-bundle/v2'"
    yield "upper-case bundle id", top("bundle_id", "AB" * 16), "bundle id"
    yield "short bundle id", top("bundle_id", "ab" * 15), "bundle id"
    yield "chunk size too small", top("chunk_size", MIN_CHUNK_SIZE - 1), "chunk_size is 4095"
    yield "chunk size too large", top("chunk_size", MAX_CHUNK_SIZE + 1), "chunk_size"
    yield "chunk size as text", top("chunk_size", "4096"), "chunk_size must be an integer"
    yield "chunk size as boolean", top("chunk_size", True), "chunk_size must be an integer"
    yield "no images", top("images", []), "1 to 1024 images"
    yield "images not a list", top("images", {}), "images must be a list"
    yield "no recipients", top("recipients", {}), "1 to 1024 recipients"
    yield "chunks off by one", image_field("chunks", 5), "is 4 chunks, not 5"
    yield "ciphertext length off", image_field("ciphertext_length", 3 * CS + 100 + 63), "ciphertext_length"
    yield "negative length", image_field("plaintext_length", -1), "plaintext_length is -1"
    yield "upper-case digest", image_field("ciphertext_sha256", "AB" * 32), "ciphertext_sha256"
    yield "unknown image field", image_field("mode", "0644"), "unknown field 'mode'"
    yield "short key id", recipient("key_id", "ab" * 31), "key_id"
    yield "unpadded base64", recipient("wrapped_key", base64.b64encode(b"x" * 113).decode().rstrip("=")), "base64"
    yield "wrapped key too short", recipient("wrapped_key", base64.b64encode(b"x" * 112).decode()), "wrapped_key"


@pytest.mark.parametrize(("mutate", "match"), [(m, x) for _, m, x in _mutations()], ids=[i for i, _, _ in _mutations()])
def test_header_refuses(built: Built, mutate: Callable[[dict[str, Any]], None], match: str) -> None:
    value = _header_value(built)
    mutate(value)
    with pytest.raises(FormatError) as caught:
        Header.from_bytes(canonical_json(value))
    message = _one_line(caught.value)
    assert message.startswith("bundle header: ")
    assert match in message, message


def test_header_must_be_canonical_json(built: Built) -> None:
    value = _header_value(built)
    assert Header.from_bytes(canonical_json(value)) == built.header
    with pytest.raises(FormatError, match="not canonical"):
        Header.from_bytes(json.dumps(value, sort_keys=True).encode())
    with pytest.raises(FormatError, match="not canonical"):
        unsorted = dict(reversed(list(value.items())))
        Header.from_bytes(json.dumps(unsorted, separators=(",", ":")).encode())
    raw = canonical_json(value)
    with pytest.raises(FormatError, match="duplicate JSON key"):
        Header.from_bytes(raw[:-1] + b',"format":"vault-bundle/v1"}')


def test_a_bad_header_in_a_file_names_the_file(built: Built, tmp_path: Path) -> None:
    value = _header_value(built)
    value["images"][0]["name"] = "../../etc/passwd"
    header_bytes = canonical_json(value)
    data = built.path.read_bytes()
    old_end = 12 + len(built.header.to_bytes())
    (tmp_path / "evil.bundle").write_bytes(MAGIC + struct.pack(">I", len(header_bytes)) + header_bytes + data[old_end:])
    message = _refused(tmp_path / "evil.bundle", "image name '../../etc/passwd'")
    assert "bundle header" in message


@pytest.mark.parametrize("name", ["fw.bin", "a.b.c", "ü-firmware v2.bin", "x" * 255, "é" * 127, "-"])
def test_good_image_names(name: str) -> None:
    assert check_image_name(name) == name


def test_header_objects_are_checked_when_made(built: Built) -> None:
    entry = built.header.images[0]
    with pytest.raises(FormatError, match="image name"):
        replace(entry, name="..")
    with pytest.raises(FormatError, match="appears twice"):
        replace(built.header, images=(entry, entry))
    with pytest.raises(FormatError, match="recipient key_id"):
        Recipient("00", b"x" * 113)
    recipients = dict(built.header.recipients)
    assert isinstance(built.header.recipients[STATION], Recipient)
    with pytest.raises(TypeError):
        built.header.recipients["intruder"] = recipients[STATION]  # type: ignore[index]


# --- the writer ----------------------------------------------------------------------------


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_writer_never_replaces_a_file(tmp_path: Path) -> None:
    target = tmp_path / "release.bundle"
    target.write_bytes(b"precious")
    with pytest.raises(InputError, match="exists"):
        BundleWriter(target)
    target.unlink()
    station = _station()
    with pytest.raises(InputError, match="exists"):  # the file appears between add_image and finish
        with BundleWriter(target, chunk_size=CS) as writer:
            writer.add_image("fw.bin", io.BytesIO(b"data"))
            target.write_bytes(b"precious")
            writer.finish(seal_recipients(writer.data_key, writer.bundle_id, {STATION: station.public_key}), b"{}")
    assert target.read_bytes() == b"precious"
    assert _leftovers(tmp_path) == []


def test_writer_leaves_nothing_without_finish(tmp_path: Path) -> None:
    target = tmp_path / "release.bundle"
    with pytest.raises(InputError, match="before finish"):
        with BundleWriter(target, chunk_size=CS) as writer:
            writer.add_image("fw.bin", io.BytesIO(b"data"))
    with pytest.raises(RuntimeError):
        with BundleWriter(target, chunk_size=CS) as writer:
            writer.add_image("fw.bin", io.BytesIO(b"data"))
            raise RuntimeError("operator cancelled")
    assert list(tmp_path.iterdir()) == []


def test_writer_refusals(tmp_path: Path) -> None:
    target = tmp_path / "release.bundle"
    with pytest.raises(InputError, match="chunk size"):
        BundleWriter(target, chunk_size=MIN_CHUNK_SIZE - 1)
    with pytest.raises(InputError, match="chunk size"):
        BundleWriter(target, chunk_size=MAX_CHUNK_SIZE + 1)
    with pytest.raises(InputError, match="32 bytes"):
        BundleWriter(target, data_key=b"k" * 16)
    with pytest.raises(FormatError, match="bundle id"):
        BundleWriter(target, bundle_id="not-hex")
    station = _station()
    with BundleWriter(target, chunk_size=CS) as writer:
        with pytest.raises(InputError, match="with block"):
            BundleWriter(tmp_path / "x.bundle").add_image("fw.bin", io.BytesIO(b""))
        with pytest.raises(FormatError, match="image name"):
            writer.add_image("../fw.bin", io.BytesIO(b"data"))
        writer.add_image("fw.bin", io.BytesIO(b"data"))
        with pytest.raises(InputError, match="already in the bundle"):
            writer.add_image("fw.bin", io.BytesIO(b"data"))
        recipients = seal_recipients(writer.data_key, writer.bundle_id, {STATION: station.public_key})
        with pytest.raises(FormatError, match="envelope is 0 bytes"):
            writer.finish(recipients, b"")
        with pytest.raises(FormatError, match="1 to 1024 recipients"):
            writer.finish({}, b"{}")
        assert writer.header_for(recipients).images == (writer.images[0].entry,)
        writer.finish(recipients, b"{}")
        with pytest.raises(InputError, match="already finished"):
            writer.add_image("late.bin", io.BytesIO(b""))
    assert target.stat().st_mode & 0o777 == 0o644
    assert _leftovers(tmp_path) == []


def test_a_writer_that_failed_refuses_more(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="earlier step failed"):
        with BundleWriter(tmp_path / "release.bundle", chunk_size=CS) as writer:
            with pytest.raises(InputError, match="binary stream"):
                writer.add_image("text.txt", io.StringIO("text"))  # type: ignore[arg-type]
            writer.add_image("other.bin", io.BytesIO(b"data"))
    assert list(tmp_path.iterdir()) == []


def test_a_source_that_fails_is_reported(tmp_path: Path) -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            raise OSError(5, "Input/output error")

    with pytest.raises(InputError, match="Input/output error"):
        with BundleWriter(tmp_path / "release.bundle", chunk_size=CS) as writer:
            writer.add_image("fw.bin", Broken())  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


# --- replacing the envelope ---------------------------------------------------------------


def test_replace_envelope_keeps_header_and_images(built: Built) -> None:
    before = built.path.read_bytes()
    os.chmod(built.path, 0o640)
    approved = _envelope(b'{"release": "1.0.0", "approved": true}') * 3
    header = replace_envelope(built.path, approved)
    assert header == built.header
    after = built.path.read_bytes()
    images_end = 12 + len(built.header.to_bytes()) + built.header.ciphertext_size
    assert after[:images_end] == before[:images_end]
    with BundleReader(built.path) as bundle:
        assert bundle.envelope_bytes == approved
        assert bundle.header_bytes == built.header.to_bytes()
    assert _decrypt_all(built.path, built.data_key) == IMAGES
    assert stat.S_IMODE(built.path.stat().st_mode) == 0o640
    assert _leftovers(built.path.parent) == []


def test_replace_envelope_refusals_leave_the_bundle_alone(built: Built, tmp_path: Path) -> None:
    before = built.path.read_bytes()
    with pytest.raises(FormatError, match="envelope is 0 bytes"):
        replace_envelope(built.path, b"")
    with pytest.raises(FormatError, match="envelope is"):
        replace_envelope(built.path, b"x" * (MAX_ENVELOPE_SIZE + 1))
    assert built.path.read_bytes() == before
    broken = tmp_path / "broken.bundle"
    broken.write_bytes(before[:-1])
    with pytest.raises(FormatError, match="truncated"):
        replace_envelope(broken, b"{}")
    assert broken.read_bytes() == before[:-1]
    assert _leftovers(tmp_path) == []


# --- constant memory ----------------------------------------------------------------------


def test_memory_stays_flat_for_a_large_image(tmp_path: Path) -> None:
    # 96 MiB through build and verify in a fresh process: holding the image
    # (or a fraction of it) in memory would show in the peak.
    code = textwrap.dedent(
        f"""
        import io, os, sys
        from pathlib import Path
        from vault.container import BundleReader, BundleWriter, seal_recipients, unwrap_data_key
        from vault.hpke import SoftwareDecapsulator
        from cryptography.hazmat.primitives.asymmetric import ec

        def peak():
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024

        folder = Path({str(tmp_path)!r})
        with open(folder / "image.bin", "wb") as f:
            for _ in range(96):
                f.write(os.urandom(1024 * 1024))
        station = SoftwareDecapsulator(ec.generate_private_key(ec.SECP256R1()))
        baseline = peak()
        with BundleWriter(folder / "big.bundle") as w, open(folder / "image.bin", "rb") as src:
            image = w.add_image("image.bin", src)
            w.finish(seal_recipients(w.data_key, w.bundle_id, {{"s": station.public_key}}), b"{{}}")
        with BundleReader(folder / "big.bundle") as b:
            key = unwrap_data_key(b.header.recipients["s"].wrapped_key, b.header.bundle_id, "s", station)
            assert b.plaintext_digest("image.bin", key) == image.plaintext_sha256
        print(baseline, peak())
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    baseline, peak = map(int, result.stdout.split())
    assert peak - baseline < 24, f"peak {peak} MiB after a baseline of {baseline} MiB"
    assert peak < 64
