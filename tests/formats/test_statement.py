"""in-toto Statement v1: canonical bytes, strict parsing, and verify-before-parse."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.formats._soft import SoftSigner, trusted_of
from vault.errors import FormatError, SignatureError, ThresholdError
from vault.formats import (
    PAYLOAD_TYPE_INTOTO,
    Envelope,
    Statement,
    Subject,
    open_statement,
    sign_envelope,
    sign_statement,
)
from vault.token import Pkcs11Uri, open_token

TokenUri = Callable[..., Pkcs11Uri]
RELEASE = "https://vault.example/release/v1"
SHA = "a3" * 32


def statement() -> Statement:
    return Statement(
        subjects=(Subject("fw/main.bin", {"sha256": SHA}), Subject("fw/boot.bin", {"sha256": "0f" * 32})),
        predicate_type=RELEASE,
        predicate={"product": "widget", "version": "1.2.0", "count": 1000, "stations": {"s1": 600, "s2": 400}},
    )


def document() -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(statement().to_bytes())
    return parsed


def refused(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    with pytest.raises(FormatError) as caught:
        Statement.from_bytes(raw)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("statement")
    return message


# --- canonical bytes and round-trips ---------------------------------------------


def test_to_bytes_is_canonical_json() -> None:
    small = Statement((Subject("a", {"sha256": SHA}),), RELEASE, {"z": [1, None, True], "a": "é"})
    expected = (
        '{"_type":"https://in-toto.io/Statement/v1",'
        '"predicate":{"a":"é","z":[1,null,true]},'
        '"predicateType":"https://vault.example/release/v1",'
        f'"subject":[{{"digest":{{"sha256":"{SHA}"}},"name":"a"}}]}}'
    ).encode()
    assert small.to_bytes() == expected


def test_statement_round_trips() -> None:
    original = statement()
    parsed = Statement.from_bytes(original.to_bytes())
    assert parsed == original
    assert parsed.to_bytes() == original.to_bytes()
    assert parsed.subjects[0].digest["sha256"] == SHA


def test_a_non_canonical_spelling_parses_to_the_same_statement() -> None:
    spaced = json.dumps(document(), indent=2).encode()
    assert Statement.from_bytes(spaced) == statement()


def test_unicode_names_are_written_as_utf8() -> None:
    s = Statement((Subject("fírmware.bin", {"sha256": SHA}),), RELEASE, {})
    assert "fírmware.bin".encode() in s.to_bytes()
    assert Statement.from_bytes(s.to_bytes()) == s


def test_subject_order_is_kept() -> None:
    assert [s.name for s in Statement.from_bytes(statement().to_bytes()).subjects] == ["fw/main.bin", "fw/boot.bin"]


def test_the_predicate_and_digest_are_copies() -> None:
    predicate: dict[str, Any] = {"count": 1, "stations": {"s1": 1}}
    digest = {"sha256": SHA}
    s = Statement((Subject("a", digest),), RELEASE, predicate)
    before = s.to_bytes()
    predicate["stations"]["s1"] = 99
    digest["sha256"] = "00" * 32
    assert s.to_bytes() == before
    with pytest.raises(TypeError):
        s.subjects[0].digest["sha256"] = "00" * 32  # type: ignore[index]


# --- strict parsing ------------------------------------------------------------------


def test_wrong_type_is_refused() -> None:
    doc = document()
    doc["_type"] = "https://in-toto.io/Statement/v0.1"
    assert "_type is 'https://in-toto.io/Statement/v0.1', expected 'https://in-toto.io/Statement/v1'" in refused(doc)
    del doc["_type"]
    assert "_type is missing" in refused(doc)


@pytest.mark.parametrize("field", ["subject", "predicateType", "predicate"])
def test_missing_fields_are_refused(field: str) -> None:
    doc = document()
    del doc[field]
    assert f"missing field '{field}'" in refused(doc)


def test_unknown_fields_are_refused() -> None:
    doc = document()
    doc["comment"] = "x"
    assert "unknown field 'comment'" in refused(doc)
    doc = document()
    doc["subject"][0]["uri"] = "https://example.com"
    assert "statement subject 1: unknown field 'uri'" in refused(doc)


@pytest.mark.parametrize(
    ("digest", "expected"),
    [
        ({}, "digest must be a non-empty object"),
        ([SHA], "digest must be a non-empty object"),
        ({"sha256": SHA.upper()}, "sha256 digest must be 64 lower-case hex digits"),
        ({"sha256": SHA[:-2]}, "sha256 digest must be 64 lower-case hex digits"),
        ({"sha256": "zz" * 32}, "sha256 digest must be 64 lower-case hex digits"),
        ({"sha256": 5}, "sha256 digest must be 64 lower-case hex digits"),
        ({"sha512": SHA}, "sha512 digest must be 128 lower-case hex digits"),
        ({"md5": "00" * 16}, "unsupported digest algorithm 'md5'"),
    ],
)
def test_bad_digests_are_refused(digest: Any, expected: str) -> None:
    doc = document()
    doc["subject"][0]["digest"] = digest
    message = refused(doc)
    assert expected in message
    assert "'fw/main.bin'" in message or "digest must be a non-empty object" in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.update(subject=[]), "subject must be a non-empty list"),
        (lambda d: d.update(subject={"name": "a"}), "subject must be a non-empty list"),
        (lambda d: d["subject"].append("x"), "subject 3: expected a JSON object"),
        (lambda d: d["subject"][1].update(name=d["subject"][0]["name"]), "names subject 'fw/main.bin' twice"),
        (lambda d: d["subject"][0].update(name=""), "subject name must be a non-empty string"),
        (lambda d: d["subject"][0].update(name=7), "subject name must be a non-empty string"),
        (lambda d: d["subject"][0].update(name="a\nb"), "control characters"),
        (lambda d: d.update(predicateType=""), "predicateType must be a URI"),
        (lambda d: d.update(predicateType="not a uri"), "predicateType must be a URI"),
        (lambda d: d.update(predicate=[]), "predicate must be a JSON object"),
        (lambda d: d.update(predicate=None), "predicate must be a JSON object"),
    ],
)
def test_bad_statements_are_refused(change: Callable[[dict[str, Any]], None], expected: str) -> None:
    doc = document()
    change(doc)
    assert expected in refused(doc)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"[]", "expected a JSON object"),
        (b"{", "not valid JSON"),
        (b'{"_type": 1, "_type": 2}', "duplicate JSON key '_type'"),
        (b'{"predicate": {"ratio": 0.5}}', "number 0.5 is not an integer"),
    ],
)
def test_bad_json_is_refused(data: bytes, expected: str) -> None:
    assert expected in refused(data)


def test_oversized_statements_are_refused_before_parsing() -> None:
    with pytest.raises(FormatError, match="statement: 5000 bytes is more than the 100-byte limit"):
        Statement.from_bytes(b"[" * 5000, max_size=100)


def test_constructing_a_bad_statement_in_code_is_refused_too() -> None:
    with pytest.raises(FormatError, match="at least one subject"):
        Statement((), RELEASE, {})
    with pytest.raises(FormatError, match="not an integer"):
        Statement((Subject("a", {"sha256": SHA}),), RELEASE, {"x": 1.5})
    with pytest.raises(FormatError, match="cannot be written as JSON"):
        Statement((Subject("a", {"sha256": SHA}),), RELEASE, {"x": b"bytes"})


# --- signing and opening --------------------------------------------------------------


def test_signed_statement_opens_after_verification() -> None:
    a, b, c = SoftSigner(), SoftSigner(), SoftSigner()
    wire = sign_statement(statement(), [a, b]).to_json()
    envelope = Envelope.from_json(wire)
    assert envelope.payload_type == PAYLOAD_TYPE_INTOTO
    assert envelope.payload == statement().to_bytes()
    opened, result = open_statement(envelope, trusted_of(a, b, c), 2, what="release statement", predicate_type=RELEASE)
    assert opened == statement()
    assert set(result.valid) == {a.key_id, b.key_id}
    assert result.missing == (c.key_id,)


def test_token_signed_statement_opens(token_uri: TokenUri, label: str) -> None:
    with open_token(token_uri("vault-approver-1"), rw=True) as token:
        key = token.generate_ec_key(label)
        envelope = sign_statement(statement(), [key])
    opened, _ = open_statement(
        Envelope.from_json(envelope.to_json()), {key.key_id: key.public_key}, 1, what="release statement"
    )
    assert opened == statement()


def test_an_unverified_payload_is_never_parsed() -> None:
    a, stranger = SoftSigner(), SoftSigner()
    garbage = sign_envelope(PAYLOAD_TYPE_INTOTO, b"{not json", [stranger])
    # The threshold fails first: the malformed payload is not even looked at.
    with pytest.raises(ThresholdError, match="release statement: 0 of 1 required signatures"):
        open_statement(garbage, trusted_of(a), 1, what="release statement")
    # Signed by a trusted key, the same payload is then refused as malformed.
    signed = sign_envelope(PAYLOAD_TYPE_INTOTO, b"{not json", [a])
    with pytest.raises(FormatError, match="release statement: not valid JSON"):
        open_statement(signed, trusted_of(a), 1, what="release statement")


def test_a_tampered_statement_fails_verification() -> None:
    a = SoftSigner()
    envelope = sign_statement(statement(), [a])
    altered = envelope.payload.replace(b'"count":1000', b'"count":9000')
    assert altered != envelope.payload
    with pytest.raises(SignatureError):
        open_statement(Envelope(envelope.payload_type, altered, envelope.signatures), trusted_of(a), 1, what="r")


def test_another_payload_type_is_refused() -> None:
    a = SoftSigner()
    envelope = sign_envelope("application/json", statement().to_bytes(), [a])
    with pytest.raises(FormatError, match="payload type is 'application/json', expected 'application/vnd.in-toto"):
        open_statement(envelope, trusted_of(a), 1, what="release statement")


def test_another_predicate_type_is_refused() -> None:
    a = SoftSigner()
    envelope = sign_statement(statement(), [a])
    with pytest.raises(FormatError, match="predicate type is 'https://vault.example/release/v1', expected"):
        open_statement(envelope, trusted_of(a), 1, what="policy", predicate_type="https://vault.example/policy/v1")
