"""Envelope.from_json refuses malformed, ambiguous and oversized input with one clear line."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.formats._soft import SoftSigner
from vault.errors import FormatError, InputError
from vault.formats import MAX_SIGNATURE_SIZE, Envelope, Signature, sign_envelope

KEYID = "0123456789abcdef" * 4
SIG = base64.b64encode(b"\x30\x06\x02\x01\x01\x02\x01\x01").decode()


def good() -> dict[str, Any]:
    return {"payload": "aGVsbG8=", "payloadType": "text/plain", "signatures": [{"keyid": KEYID, "sig": SIG}]}


def encode(document: Any) -> bytes:
    return json.dumps(document).encode()


def with_change(path: tuple[str | int, ...], value: Any) -> bytes:
    document: Any = good()
    target = document
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return encode(document)


def without(field: str) -> bytes:
    document = good()
    del document[field]
    return encode(document)


def refused(data: bytes, **kwargs: Any) -> str:
    with pytest.raises(FormatError) as caught:
        Envelope.from_json(data, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("envelope")
    return message


def test_the_good_document_parses() -> None:
    envelope = Envelope.from_json(encode(good()))
    assert envelope.payload == b"hello"
    assert envelope.signatures == (Signature(KEYID, base64.b64decode(SIG)),)


def test_oversized_input_is_refused_before_parsing() -> None:
    assert "20000 bytes is more than the 1000-byte limit" in refused(b"{" * 20000, max_size=1000)


def test_the_default_size_cap_applies() -> None:
    signer = SoftSigner()
    big = sign_envelope("text/plain", b"x" * 100_000, [signer]).to_json()
    Envelope.from_json(big)
    assert "more than the 50000-byte limit" in refused(big, max_size=50_000)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"not json", "not valid JSON (Expecting value at line 1 column 1)"),
        (b'{"payload": ', "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[]", "expected a JSON object"),
        (b'"text"', "expected a JSON object"),
        (b'{"payload": "", "payload": "", "payloadType": "t", "signatures": []}', "duplicate JSON key 'payload'"),
        (b'{"a": NaN}', "NaN is not valid JSON"),
        (b'{"a": 1.5}', "number 1.5 is not an integer"),
        (b'{"a": 1e3}', "is not an integer"),
        (b"[" * 5000 + b"]" * 5000, "nested"),
    ],
)
def test_not_strict_json_is_refused(data: bytes, expected: str) -> None:
    assert expected in refused(data)


@pytest.mark.parametrize("field", ["payload", "payloadType", "signatures"])
def test_missing_fields_are_named(field: str) -> None:
    assert f"missing field '{field}'" in refused(without(field))


def test_unknown_fields_are_named() -> None:
    document = good()
    document["extra"] = 1
    assert "unknown field 'extra'" in refused(encode(document))
    document = good()
    document["signatures"][0]["publicKey"] = "x"
    assert "envelope signature 1: unknown field 'publicKey'" in refused(encode(document))


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("payload",), 5, "payload must be a base64 string"),
        (("payloadType",), None, "payloadType must be a string"),
        (("payloadType",), "text plain", "printable ASCII"),
        (("payloadType",), "", "printable ASCII"),
        (("payloadType",), "t" * 300, "longer than 256"),
        (("signatures",), {}, "signatures must be a list"),
        (("signatures", 0), "sig", "signature 1: expected a JSON object"),
        (("signatures", 0, "keyid"), 7, "signature 1 keyid must be a string"),
        (("signatures", 0, "keyid"), "ABCDEF" * 10 + "ABCD", "is not a 64-digit lower-case hex key id"),
        (("signatures", 0, "keyid"), "short", "'short' is not a 64-digit"),
        (("signatures", 0, "keyid"), "evil\nline", "'evil\\nline'"),
        (("signatures", 0, "sig"), "", "outside 1..8192"),
        (("signatures", 0, "sig"), None, "sig must be a base64 string"),
    ],
)
def test_wrong_types_and_values_are_refused(path: tuple[str | int, ...], value: Any, expected: str) -> None:
    assert expected in refused(with_change(path, value))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("!!!!", "payload is not valid standard base64"),
        ("aGVsbG8", "payload is not valid standard base64"),  # padding missing
        ("aGVs bG8=", "payload is not valid standard base64"),
        ("-_-_", "payload is not valid standard base64"),  # URL-safe alphabet
        ("QR==", "payload is not canonical standard base64"),  # stray bits after the last byte
    ],
)
def test_bad_base64_is_refused(text: str, expected: str) -> None:
    assert expected in refused(with_change(("payload",), text))


def test_bad_base64_in_a_signature_names_the_signature() -> None:
    document = good()
    document["signatures"].append({"keyid": KEYID, "sig": "@@@@"})
    assert "envelope signature 2 sig is not valid standard base64" in refused(encode(document))


def test_an_oversized_signature_is_refused() -> None:
    huge = base64.b64encode(b"\x00" * (MAX_SIGNATURE_SIZE + 1)).decode()
    assert "outside 1..8192" in refused(with_change(("signatures", 0, "sig"), huge))


def test_too_many_signatures_are_refused() -> None:
    document = good()
    document["signatures"] = [{"keyid": KEYID, "sig": SIG}] * 3
    Envelope.from_json(encode(document), max_signatures=3)
    assert "3 signatures is more than the limit of 2" in refused(encode(document), max_signatures=2)
    document["signatures"] = [{"keyid": KEYID, "sig": SIG}] * 65
    assert "more than the limit of 64" in refused(encode(document))


def test_the_document_name_appears_in_messages() -> None:
    with pytest.raises(FormatError, match=r"^approval: missing field 'payload'$"):
        Envelope.from_json(without("payload"), what="approval")


def test_format_errors_are_input_errors() -> None:
    assert issubclass(FormatError, InputError)
    with pytest.raises(InputError):
        Envelope.from_json(b"{}")


def test_from_json_needs_bytes() -> None:
    with pytest.raises(FormatError, match="expected bytes, got str"):
        Envelope.from_json(json.dumps(good()))  # type: ignore[arg-type]
