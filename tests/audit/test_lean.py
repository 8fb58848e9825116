"""The audit's lean manifest path accepts only what vault.manifest accepts, with the same values.

The worker reads canonical manifests with one regular expression and a few
checks instead of the generic parser; anything it does not recognise goes to
:func:`vault.manifest.open_manifest`. These tests hold the two paths together
on manifests built to sit on every edge the parser checks.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vault.audit import _worker as worker
from vault.crypto import key_id, spki_der
from vault.device_secrets import SealedRecord
from vault.errors import FormatError
from vault.evidence import RawChunk
from vault.formats import Statement, canonical_json
from vault.manifest import (
    EVENTS,
    Coefficient,
    ImageRecord,
    Manifest,
    QualityRecord,
    Reading,
    parse_manifest,
    sign_manifest,
)

IMAGES = (("app.bin", "a1" * 32), ("config.bin", "b2" * 32))


class Soft:
    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.public_key = self._key.public_key()
        self.key_id = key_id(self.public_key)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))


STATION, CA = Soft(), Soft()


def _manifest(**changes: Any) -> Manifest:
    base = Manifest(
        id="0f" * 16, sequence=3, event="provisioned", station_id="station-1", operator="op-7", fixture=2,
        bundle_id="11" * 16, product="example-sensor", version="1.4.0", security_counter=7, policy_version=3,
        unit=4, hardware_id="a1b2c3d4e5f60708", serial="SN-0004", label="SN-0004",
        images=tuple(ImageRecord(n, d, d) for n, d in IMAGES), device_key_id="cd" * 32,
        certificate_serial="7f" * 8, certificate_sha256="ef" * 32,
        keys={"signing": STATION.key_id, "issuing_ca": CA.key_id}, failed_step=None, detail=None,
        time=datetime.datetime(2026, 11, 21, 10, 0, tzinfo=datetime.UTC), clock="system",
    )  # fmt: skip
    return replace(base, **changes)


def _predicate_variants() -> list[dict[str, Any]]:
    """Predicate fields changed one at a time to values on and over the parser's edges."""
    texts = ["x", "é", "a" * 256, "a" * 257, "", "tab\there", 'quote"in', "back\\slash", "\u00a0nbsp", "\u2028",
             "\x7f", "日本語", "\U0001f600", "\ud800"]  # fmt: skip
    counts: list[Any] = [0, 1, 2**63 - 1, 2**63, -1, True, "1", None]
    hexes: list[Any] = ["ab", "ABCD", "abc", "", "ab" * 32, "ab" * 33, None, 12]
    out: list[dict[str, Any]] = []
    for field in ("station_id", "operator", "product", "version", "clock", "serial", "label", "failed_step", "detail"):
        out += [{field: t} for t in texts] + [{field: None}, {field: 5}]
    for field in ("sequence", "fixture", "security_counter", "policy_version", "unit"):
        out += [{field: c} for c in counts]
    for field in ("hardware_id", "certificate_serial", "device_key_id", "certificate_sha256", "id", "bundle_id"):
        out += [{field: h} for h in hexes] + [{field: "ab" * 16}, {field: "ab" * 20}, {field: "ab" * 21}]
    out += [{"event": e} for e in (*EVENTS, "shipped", "")]
    times = ["2026-02-29T00:00:00Z", "2024-02-29T00:00:00Z", "2026-1-01T00:00:00Z", "2026-01-01T24:00:00Z"]
    times += ["2026-01-01T00:00:60Z", "2026-01-01 00:00:00Z", 5]
    out += [{"time": t} for t in times]
    image = {"name": "app.bin", "sha256": "a1" * 32, "measurement": None}
    out += [
        {"images": []},
        {"images": [image] * 64},
        {"images": [image] * 65},
        {"images": [{**image, "name": "\x00"}]},
        {"images": [{**image, "measurement": "A1" * 32}]},
        {"images": [{**image, "extra": 1}]},
        {"images": {}},
        {"keys": {"signing": "ab" * 32}},
        {"keys": {"signing": "ab" * 32, "issuing_ca": "cd" * 32, "x": "y"}},
        {"extra": 1},
    ]
    out += [{"quality": q} for q in _quality_variants()]
    out += [{"lots": lots} for lots in _lot_variants()]
    out += [{"secrets": secrets} for secrets in _secrets_variants()]
    return out


def _lot_variants() -> list[Any]:
    """The optional component lots, on and over their parser's edges."""
    return [{"mcu": "L2311A"}, {}, {"mcu": "L2311A", "antenna": "R-0042"}, {"MCU": "x"}, {"mcu": ""}, {"mcu": 5},
            {"mcu": "a" * 64}, {"mcu": "a" * 65}, {"mcu": "tab\there"}, {f"c{i}": "x" for i in range(33)},
            {"mcu": "x]"}, {"mcu": 'q"'}, [], None, 5, "L1"]  # fmt: skip


def _secrets_variants() -> list[Any]:
    """The optional sealed secrets' records, on and over their parser's edges."""
    record = {"name": "backend-psk", "kind": "psk-256", "sealed_sha256": "ab" * 32, "recipient": "cd" * 32,
              "installed": True}  # fmt: skip
    out: list[Any] = [[record], [], [record] * 16, [record] * 17, None, {}, "x", [5]]
    for change in ({"kind": "psk-128"}, {"name": "Bad"}, {"installed": 1}, {"installed": False},
                   {"sealed_sha256": "AB" * 32}, {"recipient": "cd"}, {"extra": 1}, {"name": "x]y"}):  # fmt: skip
        out.append([{**record, **change}])
    return out


def _quality_variants() -> list[Any]:
    """The optional test record, on and over its parser's edges."""
    reading = {"name": "supply current", "value": "0.045", "unit": "A", "lower": "0.03", "upper": "0.06",
               "passed": True, "step": "test"}  # fmt: skip
    record = {"steps": [{"step": "program", "milliseconds": 812}], "measurements": [reading],
              "calibration": [{"name": "adc gain", "value": "1.0021", "unit": ""}]}  # fmt: skip
    out: list[Any] = [record, {**record, "measurements": [], "calibration": [], "steps": []}, None, {}, [], 5]
    for value in ("1", "1.0", "0.10", "1e5", "1e+16", "1e-05", "-0.0", "nan", "inf", "-inf", " 1.0", "1.0\n", 0.5, 1):
        out.append({**record, "measurements": [{**reading, "value": value}]})
        out.append({**record, "calibration": [{"name": "g", "value": value, "unit": ""}]})
    for change in ({"name": ""}, {"name": "a{b}"}, {"name": "x" * 65}, {"unit": "u" * 17}, {"unit": ""},
                   {"lower": None, "upper": None}, {"lower": "0.05"}, {"upper": "0.04"}, {"passed": False},
                   {"passed": None}, {"step": "rf-test"}, {"step": None}, {"extra": 1}):  # fmt: skip
        out.append({**record, "measurements": [{**reading, **change}]})
    out += [
        {**record, "measurements": [reading] * 64},
        {**record, "measurements": [reading] * 65},
        {**record, "steps": [{"step": "program", "milliseconds": -1}]},
        {**record, "steps": [{"step": "program", "milliseconds": 2**63}]},
        {**record, "steps": [{"step": "lock", "milliseconds": 1}] * 33},
        {**record, "extra": []},
    ]
    return out


def _statement_bytes(change: dict[str, Any]) -> bytes:
    statement = _manifest().statement()
    predicate = {**statement.predicate, **change}
    if "hardware_id" in change and isinstance(change["hardware_id"], str):
        try:
            digest = hashlib.sha256(bytes.fromhex(change["hardware_id"])).hexdigest()
        except ValueError:
            digest = "00" * 32
        subject = [{"name": f"hwid:{change['hardware_id']}", "digest": {"sha256": digest}}]
    else:
        subject = [s.to_json_value() for s in statement.subjects]
    document = {"_type": "https://in-toto.io/Statement/v1", "subject": subject,
                "predicateType": statement.predicate_type, "predicate": predicate}  # fmt: skip
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "replace")


def _generic(payload: bytes) -> Manifest | None:
    try:
        return parse_manifest(Statement.from_bytes(payload))
    except FormatError:
        return None


@pytest.fixture(scope="module")
def usual() -> dict[str, Any]:
    worker.init_worker(_context())
    assert worker._state is not None
    return worker._state.usual_images


def _context() -> worker.Context:
    keys = worker.StationKeys("station-1", STATION.key_id, spki_der(STATION.public_key), CA.key_id,
                              spki_der(CA.public_key))  # fmt: skip
    release = worker.AuditedRelease(
        number=1, bundle_id="11" * 16, product="example-sensor", version="1.4.0", security_counter=7,
        allowlist=frozenset(IMAGES), image_order=IMAGES, not_before="2026-01-01T00:00:00Z",
        expires="2099-01-01T00:00:00Z",
    )  # fmt: skip
    return worker.Context(stations=(keys,), releases=(release,), jump_seconds=30 * 24 * 3600)


@pytest.mark.parametrize("change", _predicate_variants(), ids=lambda c: repr(c)[:60])
def test_lean_path_accepts_a_subset_of_the_generic_path_with_the_same_values(
    change: dict[str, Any], usual: dict[str, Any]
) -> None:
    payload = _statement_bytes(change)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return
    lean = worker._statement_fields(text, usual)
    generic = _generic(payload)
    if lean is not None:
        assert generic is not None, f"the lean path accepted what the parser refuses: {change}"
        assert lean == worker._Fields.of(generic)


def test_lean_path_takes_every_manifest_a_station_writes(usual: dict[str, Any]) -> None:
    rng = random.Random(7)
    for _ in range(200):
        manifest = _manifest(
            event=rng.choice(EVENTS), serial=rng.choice([None, "SN-ü-" + str(rng.random())]),
            unit=rng.choice([None, rng.randrange(10**6)]), detail=rng.choice([None, "read-back differs: 0x1f"]),
            images=rng.choice([(), tuple(ImageRecord(n, d, rng.choice([d, None])) for n, d in IMAGES)]),
            hardware_id=os.urandom(rng.randrange(1, 33)).hex(),
            quality=rng.choice([None, _quality(rng)]),
            lots=rng.choice([None, {"mcu": f"L{rng.randrange(10**4):04d}A", "antenna": "R-0042"}]),
            secrets=rng.choice([(), (SealedRecord("psk", "psk-256", "ab" * 32, "cd" * 32, rng.random() < 0.5),)]),
        )  # fmt: skip
        payload = manifest.statement().to_bytes()
        lean = worker._statement_fields(payload.decode(), usual)
        assert lean is not None and lean == worker._Fields.of(manifest)


def _quality(rng: random.Random) -> QualityRecord:
    readings = tuple(
        Reading(
            f"m{i}",
            rng.uniform(-1e6, 1e6),
            rng.choice(["", "A", "µV"]),
            rng.choice([None, -2e6]),
            rng.choice([None, 2e6]),
            True,
            rng.choice(["test", "rf test"]),
        )  # fmt: skip
        for i in range(rng.randrange(4))
    )
    coefficients = tuple(Coefficient(f"c{i}", rng.gauss(1, 1e-3), "ppm") for i in range(rng.randrange(3)))
    steps = tuple((step, rng.randrange(10**6)) for step in ("read-id", "program", "test"))
    return QualityRecord(steps, readings, coefficients)


def _chunk_result(records: list[bytes]) -> worker.ChunkResult:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from vault.evidence import _nonce_aad

    key, header = os.urandom(32), os.urandom(32)
    plaintext = b"".join(len(r).to_bytes(4, "big") + r for r in records)
    nonce, aad = _nonce_aad(header, 1, True)
    chunk = RawChunk(1, True, AESGCM(key).encrypt(nonce, plaintext, aad))
    return worker.check_chunk(0, "station-1", key, header, chunk)


def test_any_spelling_of_an_entry_gives_the_same_result(usual: dict[str, Any]) -> None:
    entries = []
    for position, event in enumerate(("scrap", "failed", "label-mismatch", "break-glass")):
        manifest = _manifest(sequence=position, event=event, certificate_sha256=None, certificate_serial=None,
                             device_key_id=None, images=())  # fmt: skip
        envelope = sign_manifest(manifest, STATION)
        entries.append({"type": "entry", "sequence": position, "envelope": envelope.decode(), "certificate": None})
    forged = json.loads(entries[1]["envelope"])
    forged["signatures"][0]["sig"] = base64.b64encode(STATION.sign(b"something else")).decode()
    entries.append({**entries[1], "sequence": 4, "envelope": canonical_json(forged).decode()})
    canonical = [canonical_json(e) for e in entries]
    spaced = [json.dumps(e, indent=1).encode() for e in entries]
    escaped = [json.dumps(e, sort_keys=True, separators=(",", ":")).replace("/", "\\/").encode() for e in entries]
    first = _chunk_result(canonical)
    for other in (_chunk_result(spaced), _chunk_result(escaped)):
        assert (other.leaves, other.rows, other.issues, other.count) == (first.leaves, first.rows, first.issues, 5)
    assert first.verified == 4 and [i[0] for i in first.issues].count("signature-invalid") == 1


def test_the_edges_are_exercised_on_both_sides(usual: dict[str, Any]) -> None:
    accepted = refused = lean_taken = 0
    for change in _predicate_variants():
        payload = _statement_bytes(change)
        generic = _generic(payload)
        accepted += generic is not None
        refused += generic is None
        try:
            lean_taken += worker._statement_fields(payload.decode("utf-8"), usual) is not None
        except UnicodeDecodeError:
            pass
    assert refused > 60 and accepted > 60 and lean_taken >= 0.8 * accepted


def test_canonical_entries_never_reach_the_generic_parser(
    usual: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = worker.open_manifest
    monkeypatch.setattr(worker, "open_manifest", lambda *a: calls.append(1) or real(*a))
    entries = []
    for position in range(3):
        manifest = _manifest(sequence=position, event="scrap", certificate_sha256=None, certificate_serial=None,
                             device_key_id=None, images=())  # fmt: skip
        envelope = sign_manifest(manifest, STATION)
        entries.append(canonical_json({"type": "entry", "sequence": position, "envelope": envelope.decode(),
                                       "certificate": None}))  # fmt: skip
    result = _chunk_result(entries)
    assert result.verified == 3 and calls == []
    _chunk_result([json.dumps(json.loads(e), indent=1).encode() for e in entries])
    assert calls == [1, 1, 1]


@pytest.mark.parametrize("organization", [None, "Example Devices Ltd"])
def test_the_usual_device_subject_is_read_without_parsing_names(organization: str | None) -> None:
    from cryptography import x509

    from vault import pki

    now = datetime.datetime(2026, 11, 21, tzinfo=datetime.UTC)
    root = pki.issue_certificate(
        CA.public_key, pki.root_ca_profile("ca", 5, not_before=now), CA, issuer_certificate=None, serial=1, now=now
    )
    device = ec.generate_private_key(ec.SECP256R1())
    profile = pki.device_profile("SN-ü 42", bytes.fromhex("a1b2c3d4"), 30, organization=organization, not_before=now)
    certificate = pki.issue_certificate(device.public_key(), profile, CA, issuer_certificate=root, serial=7, now=now)
    der = certificate.public_bytes(serialization.Encoding.DER)
    tbs, serial, subject, spki = worker._walk(der)
    assert tbs == certificate.tbs_certificate_bytes and serial == b"\x07"
    assert worker._subject_is(subject, "SN-ü 42", "a1b2c3d4")
    assert not worker._subject_is(subject, "SN-ü 43", "a1b2c3d4")
    assert not worker._subject_is(subject, "SN-ü 42", "a1b2c3d5")
    fields = worker._Fields("0" * 32, 0, "provisioned", "station-1", "1" * 32, "p", "v", 1, 1, "a1b2c3d4", "SN-ü 42",
                            None, (), key_id(device.public_key()), "07", hashlib.sha256(der).hexdigest(),
                            STATION.key_id, CA.key_id, None, None, "2026-11-21T00:00:00Z")  # fmt: skip
    keys = worker.StationKeys("station-1", STATION.key_id, spki_der(STATION.public_key), CA.key_id,
                              spki_der(CA.public_key))  # fmt: skip
    worker.init_worker(replace(_context(), stations=(keys,)))
    assert worker._state is not None
    station = worker._state.stations["station-1"]
    assert worker._check_certificate(fields, der, True, station) is None
    assert "CN" in str(worker._check_certificate(fields._replace(serial="SN-0"), der, True, station))
    assert "serial number" in str(
        worker._check_certificate(fields._replace(certificate_serial="08"), der, True, station)
    )
    other = x509.load_der_x509_certificate(der)
    assert other.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "SN-ü 42"


def test_a_worker_refuses_a_chunk_of_an_export_replaced_while_it_was_audited(tmp_path: Path) -> None:
    """The workers read each chunk from the export's path: a file put in its place after the main process
    read the header gives that chunk an error naming the change, never another export's records."""
    from tests.test_evidence import AUDITOR, _records, _write
    from vault.evidence import EvidenceReader

    path = tmp_path / "station-1-000001.vault-evidence"
    header = _write(path, _records(30, seed=5))
    with EvidenceReader(path) as reader:
        places, data_key = list(reader.chunk_places()), reader.open(AUDITOR)
    worker.init_worker(worker.Context((), (), 3600))
    try:
        task = (0, "station-1", data_key, header.header_sha256, str(path), places[0])
        assert worker.process_chunk(task).error is None
        _write(tmp_path / "other", _records(30, seed=6), sequence=2)
        (tmp_path / "other").replace(path)  # another export under the same name
        worker.close_worker()  # the next export's first chunk: the worker opens the path again
        assert "changed while it was being audited" in str(worker.process_chunk(task).error)
    finally:
        worker.close_worker()
