"""The evidence export: round trips, the documented layout, and every refusal.

Everything runs real HPKE and AES-GCM with software keys. Forgeries edit a
genuine export's bytes along the documented layout (split by :func:`_split`,
which the layout test checks against the module's own description), so each
one differs from a genuine export only in the way the test names.
"""

from __future__ import annotations

import base64
import doctest
import hashlib
import json
import os
import pickle
import random
import stat
import struct
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

import vault.evidence
from vault.crypto import key_id
from vault.errors import DecryptionError, FormatError, InputError
from vault.evidence import (
    MAGIC,
    MAX_HEADER_SIZE,
    MAX_RECORD_SIZE,
    MIN_CHUNK_SIZE,
    TAG_SIZE,
    EvidenceHeader,
    EvidenceReader,
    EvidenceWriter,
    RawChunk,
    decrypt_chunk,
    write_evidence,
)
from vault.formats import canonical_json
from vault.hpke import SoftwareDecapsulator

CS = MIN_CHUNK_SIZE  # small chunks: many of them, small files
CREATED = "2025-06-01T12:00:00Z"
STATION = "station-1"
_P256_KEY = ec.generate_private_key(ec.SECP256R1())
AUDITOR = SoftwareDecapsulator(_P256_KEY)
OTHER = SoftwareDecapsulator(ec.generate_private_key(ec.SECP256R1()))
P256 = Suite(KEM.P256, KDF.HKDF_SHA256, AEAD.AES_256_GCM)


def _records(count: int, seed: int, largest: int = 600) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randrange(largest + 1)) for _ in range(count)]


def _write(
    path: Path, records: Iterable[bytes], *, auditor: SoftwareDecapsulator = AUDITOR, sequence: int = 1
) -> EvidenceHeader:
    return write_evidence(
        path,
        records,
        recipient=auditor.public_key,
        station_id=STATION,
        sequence=sequence,
        created=CREATED,
        chunk_size=CS,
    )


def _read(path: Path, auditor: SoftwareDecapsulator = AUDITOR) -> list[bytes]:
    with EvidenceReader(path) as export:
        return list(export.records(export.open(auditor)))


def _split(data: bytes) -> tuple[bytes, list[bytes]]:
    """An export's bytes as (magic, length and header; each chunk frame with its length field)."""
    (header_length,) = struct.unpack(">I", data[8:12])
    offset = 12 + header_length
    prefix, frames = data[:offset], []
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        frames.append(data[offset : offset + 4 + length])
        offset += 4 + length
    assert offset == len(data)
    return prefix, frames


def _forge(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``forged.evidence`` beside ``path`` (replacing the last forgery)."""
    forged = path.with_name("forged.evidence")
    forged.write_bytes(data)
    return forged


def _seal_chunk(data_key: bytes, header_bytes: bytes, index: int, last: bool, plaintext: bytes) -> bytes:
    """A chunk frame made from the module docstring's description alone."""
    nonce = b"\0\0\0\0" + struct.pack(">Q", index)
    aad = b"vault-evidence-v1\0" + hashlib.sha256(header_bytes).digest() + struct.pack(">QB", index, int(last))
    ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, aad)
    return struct.pack(">I", len(ciphertext)) + ciphertext


def _with_header(data: bytes, **changes: object) -> bytes:
    """``data`` with header fields changed, re-serialized canonically (so only the change differs)."""
    prefix, frames = _split(data)
    value = json.loads(prefix[12:])
    value.update(changes)
    header = canonical_json(value)
    return MAGIC + struct.pack(">I", len(header)) + header + b"".join(frames)


@pytest.fixture
def export(tmp_path: Path) -> tuple[Path, list[bytes]]:
    """Three chunks of one 520-byte record each (two do not fit in one): small enough to flip every byte."""
    records = [bytes([i]) * 520 for i in range(3)]
    path = tmp_path / "x.evidence"
    _write(path, records)
    return path, records


# --- the module -------------------------------------------------------------------


def test_docstring_example_runs() -> None:
    result = doctest.testmod(vault.evidence)
    assert result.attempted > 0
    assert result.failed == 0


def test_evidence_stays_in_the_bottom_layer() -> None:
    code = (
        "import sys, vault.evidence\n"
        "heavy = sorted(m for m in ('pkcs11', 'vault.token', 'vault.ceremony', 'vault.bundle', 'vault.verify',"
        " 'vault.cli', 'vault.container', 'click', 'yaml', 'sigstore') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


# --- round trips ------------------------------------------------------------------


def test_many_records_across_many_chunks(tmp_path: Path) -> None:
    records = _records(300, seed=1) + [b""]
    path = tmp_path / "x.evidence"
    header = _write(path, records)
    assert _read(path) == records
    with EvidenceReader(path) as reader:
        assert reader.header == header
        assert reader.header_bytes == header.to_bytes()
        chunks = list(reader.raw_chunks())
        data_key = reader.open(AUDITOR)
    assert len(chunks) > 20
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert [c.last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    per_chunk = [decrypt_chunk(data_key, header.header_sha256, c) for c in chunks]
    assert [r for rs in per_chunk for r in rs] == records
    for this, following in zip(per_chunk, per_chunk[1:], strict=False):
        size = sum(4 + len(r) for r in this)
        assert size <= CS  # never over the chunk size ...
        assert size + 4 + len(following[0]) > CS  # ... and closed only when the next record would not fit


def test_raw_chunks_pickle_for_worker_processes(tmp_path: Path) -> None:
    records = _records(40, seed=2)
    path = tmp_path / "x.evidence"
    header = _write(path, records)
    with EvidenceReader(path) as reader:
        chunks = pickle.loads(pickle.dumps(list(reader.raw_chunks())))
        data_key = reader.open(AUDITOR)
    assert all(isinstance(c, RawChunk) for c in chunks)
    assert [r for c in chunks for r in decrypt_chunk(data_key, header.header_sha256, c)] == records


def test_a_worker_reads_each_chunk_from_its_place_as_the_reader_found_it(tmp_path: Path) -> None:
    """The audit's workers get where each chunk lies (pickled), not its bytes, and read it themselves."""
    records = _records(40, seed=3)
    path = tmp_path / "x.evidence"
    header = _write(path, records)
    with EvidenceReader(path) as reader:
        places = pickle.loads(pickle.dumps(list(reader.chunk_places())))
        expected = list(reader.raw_chunks())
        data_key = reader.open(AUDITOR)
    assert len(places) > 1 and [p.index for p in places] == list(range(len(places)))
    assert [p.last for p in places] == [False] * (len(places) - 1) + [True]
    with EvidenceReader(path) as worker:  # another opening of the same file, as a worker process has
        read = [worker.read_chunk(place) for place in reversed(places)][::-1]
        assert read == expected
        assert [r for c in read for r in decrypt_chunk(data_key, header.header_sha256, c)] == records
        last = places[-1]
        for outside in (replace(last, length=last.length + 1), replace(last, offset=0), replace(last, length=3)):
            with pytest.raises(FormatError, match="no such chunk in this file"):
                worker.read_chunk(outside)


def test_a_record_larger_than_a_chunk_gets_a_chunk_of_its_own(tmp_path: Path) -> None:
    records = [b"a" * 10, b"b" * (3 * CS), b"c" * 10, b"d" * (2 * CS)]
    path = tmp_path / "x.evidence"
    header = _write(path, records)
    assert _read(path) == records
    with EvidenceReader(path) as reader:
        data_key = reader.open(AUDITOR)
        grouped = [decrypt_chunk(data_key, header.header_sha256, c) for c in reader.raw_chunks()]
    assert grouped == [[records[0]], [records[1]], [records[2]], [records[3]]]


def test_zero_records_is_one_empty_final_chunk(tmp_path: Path) -> None:
    path = tmp_path / "x.evidence"
    header = _write(path, [])
    assert _read(path) == []
    assert path.stat().st_size == 12 + len(header.to_bytes()) + 4 + TAG_SIZE
    with EvidenceReader(path) as reader:
        assert [(c.index, c.last, len(c.ciphertext)) for c in reader.raw_chunks()] == [(0, True, TAG_SIZE)]


def test_p384_auditor(tmp_path: Path) -> None:
    auditor = SoftwareDecapsulator(ec.generate_private_key(ec.SECP384R1()))
    path = tmp_path / "x.evidence"
    header = _write(path, [b"one", b"two"], auditor=auditor)
    assert len(header.wrapped_key) == 97 + 32 + 16
    assert _read(path, auditor) == [b"one", b"two"]


def test_writer_streams_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "x.evidence"
    records = _records(50, seed=3)
    with _writer(path, sequence=7) as writer:
        for record in records:
            writer.add(record)
        assert writer.records_written == 50
        assert not path.exists()  # nothing under the final name until finish()
        header = writer.finish()
    assert header == writer.header and header.sequence == 7
    assert _read(path) == records
    with pytest.raises(InputError, match="already finished"):
        writer.add(b"late")


def test_the_layout_is_the_documented_one(tmp_path: Path) -> None:
    """Open an export with cryptography's own HPKE and AES-GCM, following only the module docstring."""
    records = _records(20, seed=4)
    path = tmp_path / "x.evidence"
    header = _write(path, records, sequence=42)
    data = path.read_bytes()
    assert data[:8] == b"VLTEVID1"
    prefix, frames = _split(data)
    header_bytes = prefix[12:]
    fields = json.loads(header_bytes)
    assert fields == {
        "format": "vault-evidence/v1",
        "export_id": header.export_id,
        "station_id": STATION,
        "sequence": 42,
        "created": CREATED,
        "recipient_key_id": key_id(AUDITOR.public_key),
        "wrapped_key": fields["wrapped_key"],
        "chunk_size": CS,
    }
    assert canonical_json(fields) == header_bytes
    assert hashlib.sha256(header_bytes).digest() == header.header_sha256
    info = b"vault-evidence-v1 data key\0" + bytes.fromhex(header.export_id) + b"\0" + STATION.encode()
    data_key = P256.decrypt(base64.b64decode(fields["wrapped_key"]), _P256_KEY, info=info)
    assert len(data_key) == 32
    found = []
    for index, frame in enumerate(frames):
        last = index == len(frames) - 1
        nonce = struct.pack(">IQ", 0, index)
        aad = b"vault-evidence-v1\0" + hashlib.sha256(header_bytes).digest() + struct.pack(">QB", index, int(last))
        plaintext = AESGCM(data_key).decrypt(nonce, frame[4:], aad)
        while plaintext:
            (length,) = struct.unpack(">I", plaintext[:4])
            found.append(plaintext[4 : 4 + length])
            plaintext = plaintext[4 + length :]
    assert found == records
    forged = _seal_chunk(data_key, header_bytes, 9, True, b"\0\0\0\1x")  # the test's forger agrees with the reader
    assert decrypt_chunk(data_key, header.header_sha256, RawChunk(9, True, forged[4:])) == [b"x"]


def test_header_round_trips_and_is_strict(tmp_path: Path) -> None:
    path = tmp_path / "x.evidence"
    header = _write(path, [])
    assert EvidenceHeader.from_bytes(header.to_bytes()) == header
    assert header.format == "vault-evidence/v1"
    value = json.loads(header.to_bytes())
    bad = {
        "not canonical": json.dumps(value).encode(),
        "unknown field": canonical_json({**value, "extra": 1}),
        "missing field": canonical_json({k: v for k, v in value.items() if k != "created"}),
        "format": canonical_json({**value, "format": "vault-evidence/v2"}),
        "sequence 0": canonical_json({**value, "sequence": 0}),
        "sequence bool": canonical_json({**value, "sequence": True}),
        "created not a date": canonical_json({**value, "created": "2025-02-30T00:00:00Z"}),
        "created with offset": canonical_json({**value, "created": "2025-02-03T00:00:00+00:00"}),
        "station id": canonical_json({**value, "station_id": "Station 1"}),
        "chunk size": canonical_json({**value, "chunk_size": 100}),
        "key id": canonical_json({**value, "recipient_key_id": "AB" * 32}),
        "wrapped key length": canonical_json({**value, "wrapped_key": "AAAA"}),
        "wrapped key base64": canonical_json({**value, "wrapped_key": "!" * 152}),
        "export id": canonical_json({**value, "export_id": "00"}),
        "not an object": b"[]",
    }
    for data in bad.values():
        with pytest.raises(FormatError, match="evidence header"):
            EvidenceHeader.from_bytes(data)


# --- the auditor key --------------------------------------------------------------


def test_the_wrong_auditor_key_is_refused(export: tuple[Path, list[bytes]]) -> None:
    path, _ = export
    with EvidenceReader(path) as reader, pytest.raises(DecryptionError, match="does not open with the auditor key"):
        reader.open(OTHER)
    p384 = SoftwareDecapsulator(ec.generate_private_key(ec.SECP384R1()))
    with EvidenceReader(path) as reader, pytest.raises(DecryptionError, match="does not open with the auditor key"):
        reader.open(p384)


def test_a_header_naming_the_wrong_key_still_does_not_open(export: tuple[Path, list[bytes]]) -> None:
    path, _ = export
    forged = _forge(path, _with_header(path.read_bytes(), recipient_key_id=key_id(OTHER.public_key)))
    with EvidenceReader(forged) as reader, pytest.raises(DecryptionError, match="altered"):
        reader.open(OTHER)


@pytest.mark.parametrize(
    "changes",
    [{"station_id": "station-2"}, {"export_id": "00" * 16}],
)
def test_the_wrapped_key_is_bound_to_export_and_station(
    export: tuple[Path, list[bytes]], changes: dict[str, object]
) -> None:
    path, _ = export
    forged = _forge(path, _with_header(path.read_bytes(), **changes))
    with EvidenceReader(forged) as reader, pytest.raises(DecryptionError, match="export id or station id"):
        reader.open(AUDITOR)


@pytest.mark.parametrize(
    "changes",
    [{"sequence": 2}, {"created": "2025-06-01T12:00:01Z"}, {"chunk_size": CS * 2}],
)
def test_every_chunk_is_bound_to_the_header(export: tuple[Path, list[bytes]], changes: dict[str, object]) -> None:
    path, _ = export
    forged = _forge(path, _with_header(path.read_bytes(), **changes))
    with pytest.raises(DecryptionError, match="chunk 0 does not authenticate"):
        _read(forged)


def test_data_key_arguments_are_checked(export: tuple[Path, list[bytes]]) -> None:
    path, _ = export
    with EvidenceReader(path) as reader:
        with pytest.raises(InputError, match="32 bytes"):
            reader.records(b"short")
        chunk = next(reader.raw_chunks())
        with pytest.raises(InputError, match="32 bytes"):
            decrypt_chunk(b"short", reader.header.header_sha256, chunk)
        with pytest.raises(InputError, match="header_sha256"):
            decrypt_chunk(reader.open(AUDITOR), b"short", chunk)
        with pytest.raises(DecryptionError, match="chunk 0 does not authenticate"):
            list(reader.records(bytes(32)))


# --- altered, truncated, reordered, spliced, extended ------------------------------


def test_a_flipped_byte_anywhere_is_refused(export: tuple[Path, list[bytes]]) -> None:
    """Every byte: magic, header length, each header field (wrapped key included), each chunk's length, body, tag."""
    path, records = export
    data = path.read_bytes()
    prefix, frames = _split(data)
    assert len(frames) == 3
    assert _read(path) == records
    with EvidenceReader(path) as reader:
        data_key = reader.open(AUDITOR)
    for position in range(len(data)):
        altered = bytearray(data)
        altered[position] ^= 0x01 if position % 2 else 0x80
        forged = _forge(path, bytes(altered))
        with pytest.raises((FormatError, DecryptionError)):
            if position < len(prefix):
                _read(forged)
            else:  # the header is intact: skip the HPKE step, which keeps this test fast
                with EvidenceReader(forged) as reader:
                    list(reader.records(data_key))


def test_a_dropped_final_chunk_is_truncation(export: tuple[Path, list[bytes]]) -> None:
    path, _ = export
    prefix, frames = _split(path.read_bytes())
    for kept in (1, 2):
        forged = _forge(path, prefix + b"".join(frames[:kept]))
        with pytest.raises(DecryptionError, match=f"chunk {kept - 1} is not the export's final chunk.*truncated"):
            _read(forged)
    with pytest.raises(FormatError, match="no chunks"):
        _read(_forge(path, prefix))
    with pytest.raises(FormatError, match="run past the end of the file"):
        _read(_forge(path, prefix + b"".join(frames)[:-5]))
    with pytest.raises(FormatError, match="truncated length field"):
        _read(_forge(path, prefix + frames[0] + frames[1][:2]))


def test_records_before_a_bad_chunk_are_given_then_the_chunk_is_named(export: tuple[Path, list[bytes]]) -> None:
    path, records = export
    prefix, frames = _split(path.read_bytes())
    forged = _forge(path, prefix + frames[0] + frames[1] + frames[1])
    received = []
    with EvidenceReader(forged) as reader, pytest.raises(DecryptionError, match="chunk 2 does not authenticate"):
        for record in reader.records(reader.open(AUDITOR)):
            received.append(record)
    assert received == records[:2]


def test_swapped_chunks_are_refused(export: tuple[Path, list[bytes]]) -> None:
    path, _ = export
    prefix, frames = _split(path.read_bytes())
    with pytest.raises(DecryptionError, match="chunk 0 does not authenticate"):
        _read(_forge(path, prefix + frames[1] + frames[0] + frames[2]))
    with pytest.raises(DecryptionError, match="chunk 1 "):
        _read(_forge(path, prefix + frames[0] + frames[2] + frames[1]))


def test_a_chunk_from_another_export_is_refused(tmp_path: Path) -> None:
    records = [bytes([i]) * 700 for i in range(3)]
    _write(tmp_path / "a.evidence", records)
    _write(tmp_path / "b.evidence", records)  # same auditor, same records, same sequence
    a_prefix, a_frames = _split((tmp_path / "a.evidence").read_bytes())
    _, b_frames = _split((tmp_path / "b.evidence").read_bytes())
    forged = _forge(tmp_path / "a.evidence", a_prefix + a_frames[0] + b_frames[1] + a_frames[2])
    with pytest.raises(DecryptionError, match="chunk 1 does not authenticate"):
        _read(forged)


def test_a_chunk_from_another_export_is_refused_even_under_the_same_data_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should a data key ever repeat, the header hash in every chunk's aad still keeps exports apart."""
    monkeypatch.setattr(vault.evidence, "_new_data_key", lambda: b"\x07" * 32)
    records = [bytes([i]) * 700 for i in range(3)]
    _write(tmp_path / "a.evidence", records)
    _write(tmp_path / "b.evidence", records)
    with EvidenceReader(tmp_path / "a.evidence") as a, EvidenceReader(tmp_path / "b.evidence") as b:
        assert a.open(AUDITOR) == b.open(AUDITOR) == b"\x07" * 32
    a_prefix, a_frames = _split((tmp_path / "a.evidence").read_bytes())
    b_prefix, b_frames = _split((tmp_path / "b.evidence").read_bytes())
    assert a_frames[1] != b_frames[1]
    with pytest.raises(DecryptionError, match="chunk 1 does not authenticate"):
        _read(_forge(tmp_path / "a.evidence", a_prefix + a_frames[0] + b_frames[1] + a_frames[2]))
    with pytest.raises(DecryptionError, match="chunk 0 does not authenticate"):
        _read(_forge(tmp_path / "a.evidence", b_prefix + b"".join(a_frames)))


@pytest.mark.parametrize("garbage", [b"\0", b"\0" * 4, b"\0\0\0\x10" + b"x" * 16, b"trailing garbage " * 10])
def test_trailing_bytes_are_refused(export: tuple[Path, list[bytes]], garbage: bytes) -> None:
    path, _ = export
    with pytest.raises(DecryptionError, match="chunk 2 is the export's final chunk, but more bytes follow"):
        _read(_forge(path, path.read_bytes() + garbage))


def test_a_repeated_final_chunk_is_refused(export: tuple[Path, list[bytes]]) -> None:
    path, _ = export
    data = path.read_bytes()
    _, frames = _split(data)
    with pytest.raises(DecryptionError, match="more bytes follow"):
        _read(_forge(path, data + frames[-1]))


def test_an_empty_chunk_before_the_last_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.evidence"
    _write(path, [b"only"])
    prefix, frames = _split(path.read_bytes())
    with EvidenceReader(path) as reader:
        data_key = reader.open(AUDITOR)
    forged = (
        prefix + _seal_chunk(data_key, prefix[12:], 0, False, b"") + _seal_chunk(data_key, prefix[12:], 1, True, b"")
    )
    with pytest.raises(FormatError, match="chunk 0 is empty but not the final chunk"):
        _read(_forge(path, forged))


def test_not_an_export(tmp_path: Path) -> None:
    for data, message in [
        (b"", "too short"),
        (b'{"format": "vault-evidence/v1"}', "not a vault evidence export"),
        (b"VLTEVID2" + bytes(8), "unsupported evidence format version"),
    ]:
        with pytest.raises(FormatError, match=message):
            EvidenceReader(_forge(tmp_path / "x", data))
    with pytest.raises(InputError, match="cannot read"):
        EvidenceReader(tmp_path / "missing")
    with pytest.raises(InputError, match="cannot read"):
        EvidenceReader(tmp_path)
    with pytest.raises(InputError, match="not a regular file"):
        EvidenceReader(os.devnull)


# --- sizes ------------------------------------------------------------------------


def _peak_while(call: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        call()
    except (FormatError, DecryptionError):
        pass
    else:
        raise AssertionError("expected a refusal")
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def test_oversized_length_fields_are_refused_before_allocating(export: tuple[Path, list[bytes]]) -> None:
    path, _ = export
    data = path.read_bytes()
    prefix, frames = _split(data)
    with EvidenceReader(path) as reader:
        data_key = reader.open(AUDITOR)
    header_bytes = prefix[12:]
    huge_record = b"\xff\xff\xff\xff" + b"x" * 10
    past_end = struct.pack(">I", 100) + b"x" * 10
    cases = {
        "header length": (MAGIC + b"\xff\xff\xff\xff" + data[12:], "header length 4294967295 is outside"),
        "header just over": (MAGIC + struct.pack(">I", MAX_HEADER_SIZE + 1) + data[12:], "outside 1..65536"),
        "header past the end": (MAGIC + struct.pack(">I", MAX_HEADER_SIZE) + data[12:], "runs past the end"),
        "chunk length": (prefix + b"\xff\xff\xff\xff" + frames[0][4:], "ciphertext length 4294967295 is outside"),
        "chunk past the end": (prefix + struct.pack(">I", 16 * 1024 * 1024), "run past the end of the file"),
        "chunk shorter than a tag": (prefix + struct.pack(">I", 15) + bytes(15), "outside 16.."),
        "record length": (prefix + _seal_chunk(data_key, header_bytes, 0, True, huge_record), "more than the"),
        "record past the chunk": (prefix + _seal_chunk(data_key, header_bytes, 0, True, past_end), "runs past the end"),
        "stray bytes": (prefix + _seal_chunk(data_key, header_bytes, 0, True, b"\0\0"), "stray bytes"),
    }
    for name, (forged_bytes, message) in cases.items():
        forged = _forge(path, forged_bytes)
        with pytest.raises(FormatError, match=message):
            _read(forged)
        assert _peak_while(lambda: _read(forged)) < 512 * 1024, name  # noqa: B023


def test_decrypt_chunk_checks_the_ciphertext_size() -> None:
    with pytest.raises(FormatError, match="chunk 3 is 15 bytes"):
        decrypt_chunk(bytes(32), bytes(32), RawChunk(3, False, bytes(15)))


# --- writing files ------------------------------------------------------------------


def _writer(path: Path, **changes: object) -> EvidenceWriter:
    arguments: dict[str, object] = {
        "recipient": AUDITOR.public_key,
        "station_id": STATION,
        "sequence": 1,
        "created": CREATED,
        "chunk_size": CS,
    }
    arguments.update(changes)
    return EvidenceWriter(path, **arguments)  # type: ignore[arg-type]


def test_the_export_is_read_only(tmp_path: Path) -> None:
    path = tmp_path / "x.evidence"
    _write(path, [b"one"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert os.listdir(tmp_path) == ["x.evidence"]


def test_an_existing_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "x.evidence"
    path.write_bytes(b"precious")
    with pytest.raises(InputError, match="exists; evidence is written once"):
        _write(path, [b"one"])
    assert path.read_bytes() == b"precious"
    link = tmp_path / "dangling.evidence"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(InputError, match="exists; evidence is written once"):
        _writer(link)
    assert sorted(os.listdir(tmp_path)) == ["dangling.evidence", "x.evidence"]


def test_a_file_appearing_before_finish_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "x.evidence"
    with _writer(path) as writer:
        writer.add(b"one")
        path.write_bytes(b"precious")
        with pytest.raises(InputError, match="exists; evidence is written once"):
            writer.finish()
    assert path.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["x.evidence"]


def test_a_crash_mid_write_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "x.evidence"
    with pytest.raises(RuntimeError, match="power cut"):
        with _writer(path) as writer:
            for record in _records(30, seed=5):
                writer.add(record)
            (temporary,) = os.listdir(tmp_path)
            assert temporary.startswith(".x.evidence.") and temporary.endswith(".tmp")
            assert (tmp_path / temporary).stat().st_size > 4 * CS  # chunks were written
            raise RuntimeError("power cut")
    assert os.listdir(tmp_path) == []
    with pytest.raises(InputError, match="earlier step failed"):
        writer.add(b"more")


def test_leaving_without_finish_leaves_nothing_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "x.evidence"
    with pytest.raises(InputError, match="closed before finish"):
        with _writer(path) as writer:
            writer.add(b"one")
    assert os.listdir(tmp_path) == []


def test_a_failing_record_source_leaves_nothing(tmp_path: Path) -> None:
    def records() -> Iterator[bytes]:
        yield b"one" * 1000
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path / "x.evidence", records())
    assert os.listdir(tmp_path) == []


def test_the_writer_needs_a_with_block(tmp_path: Path) -> None:
    writer = _writer(tmp_path / "x.evidence")
    with pytest.raises(InputError, match="with block"):
        writer.add(b"one")
    with pytest.raises(InputError, match="with block"):
        writer.finish()
    assert os.listdir(tmp_path) == []


def test_records_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "x.evidence"
    with _writer(path) as writer:
        with pytest.raises(InputError, match="at most 16777216 bytes"):
            writer.add(bytes(MAX_RECORD_SIZE + 1))
        with pytest.raises(InputError, match="bytes, not str"):
            writer.add("text")  # type: ignore[arg-type]
        writer.add(bytearray(b"still usable"))
        writer.finish()
    assert _read(path) == [b"still usable"]


def test_the_largest_record_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "x.evidence"
    big = bytes(MAX_RECORD_SIZE)
    _write(path, [b"a", big, b"b"])
    assert _read(path) == [b"a", big, b"b"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"station_id": "Station 1"}, "station id"),
        ({"sequence": 0}, "sequence is 0"),
        ({"sequence": True}, "sequence must be an integer"),
        ({"created": "2025-06-01 12:00:00"}, "YYYY-MM-DDTHH:MM:SSZ"),
        ({"chunk_size": 1023}, "chunk_size is 1023"),
        ({"chunk_size": 64 * 1024 * 1024}, "chunk_size is"),
        ({"recipient": ec.generate_private_key(ec.SECP521R1()).public_key()}, "P-256 and P-384"),
        ({"recipient": ed25519.Ed25519PrivateKey.generate().public_key()}, "EC public key"),
    ],
)
def test_writer_arguments_are_checked(tmp_path: Path, changes: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message) as raised:
        _writer(tmp_path / "x.evidence", **changes)
    assert not isinstance(raised.value, FormatError)
    assert os.listdir(tmp_path) == []
