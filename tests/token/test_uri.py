"""RFC 7512 URIs: the RFC's own examples parse; malformed ones are refused clearly."""

from __future__ import annotations

import pytest

from vault.errors import UriError
from vault.token import Pkcs11Uri, format_uri, parse_uri

# The examples of RFC 7512 section 3, with the attributes each must yield.
RFC_EXAMPLES = [
    ("pkcs11:", {}),
    ("pkcs11:object=my-pubkey;type=public", {"object": "my-pubkey", "type": "public"}),
    (
        "pkcs11:object=my-key;type=private?pin-source=file:/etc/token",
        {"object": "my-key", "type": "private", "pin_source": "file:/etc/token"},
    ),
    (
        "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;"
        "model=1.0;object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91;serial="
        "?pin-source=file:/etc/token_pin",
        {
            "token": "The Software PKCS#11 Softtoken",
            "manufacturer": "Snake Oil, Inc.",
            "model": "1.0",
            "object": "my-certificate",
            "type": "cert",
            "id": bytes.fromhex("69953e5cf4bdec91"),
            "serial": "",
            "pin_source": "file:/etc/token_pin",
        },
    ),
    ("pkcs11:object=my-sign-key;type=private?module-name=mypkcs11", {"module_name": "mypkcs11"}),
    (
        "pkcs11:object=my-sign-key;type=private?module-path=/mnt/libmypkcs11.so.1",
        {"module_path": "/mnt/libmypkcs11.so.1"},
    ),
    (
        "pkcs11:token=Software%20PKCS%2311%20softtoken;manufacturer=Snake%20Oil,%20Inc.?pin-value=the-pin",
        {"token": "Software PKCS#11 softtoken", "manufacturer": "Snake Oil, Inc.", "pin_value": "the-pin"},
    ),
    ("pkcs11:slot-description=Sun%20Metaslot", {"slot_description": "Sun Metaslot"}),
    (
        "pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;library-description=Soft%20Token%20Library;library-version=1.23",
        {
            "library_manufacturer": "Snake Oil, Inc.",
            "library_description": "Soft Token Library",
            "library_version": "1.23",
        },
    ),
    (
        "pkcs11:token=A%20name%20with%20a%20substring%20%25%3B;object=my-certificate;type=cert",
        {"token": "A name with a substring %;"},
    ),
    (
        "pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1;object=my-certificate;type=cert",
        {"token": "Name with a small A with acute: \u00e1"},
    ),
    ("pkcs11:slot-id=1;object=x", {"slot_id": 1, "object": "x"}),
]


@pytest.mark.parametrize(("text", "expected"), RFC_EXAMPLES, ids=[t for t, _ in RFC_EXAMPLES])
def test_rfc_examples_parse(text: str, expected: dict[str, object]) -> None:
    uri = parse_uri(text)
    for field, value in expected.items():
        assert getattr(uri, field) == value, field


@pytest.mark.parametrize(("text", "expected"), RFC_EXAMPLES, ids=[t for t, _ in RFC_EXAMPLES])
def test_format_round_trips(text: str, expected: dict[str, object]) -> None:
    uri = parse_uri(text)
    assert parse_uri(format_uri(uri, redact_pin=False)) == uri


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pkcs11:token=a;colour=blue", "unknown PKCS#11 URI attribute 'colour'"),
        # RFC 7512's vendor attributes are not understood by vault, so it refuses them
        # rather than ignore a constraint the URI's author meant.
        ("pkcs11:token=my-token;vendor-aaa=value-a", "unknown PKCS#11 URI attribute 'vendor-aaa'"),
        ("pkcs11:token=%G1", "bad percent-escape '%G1' in attribute 'token'"),
        ("pkcs11:token=abc%2", "bad percent-escape '%2' in attribute 'token'"),
        ("pkcs11:token=a;token=b", "attribute 'token' appears twice"),
        ("pkcs11:token=a b", "character ' ' in attribute 'token' must be percent-encoded"),
        ("pkcs11:token=a?pin-source=x&pin-value=y", "both pin-source and pin-value"),
        ("pkcs11:module-path=/x", "belongs in the URI's query"),
        ("pkcs11:token=a;type=key", "type='key' is not one of"),
        ("pkcs11:token", "expected name=value"),
        ("pkcs11:token=a;", "expected name=value"),
        ("pkcs11:token=%FF", "not valid UTF-8"),
        ("pkcs11:slot-id=x", "slot-id='x' is not a decimal number"),
        ("https://example.com", "must start with 'pkcs11:'"),
        ("pkcs11:token=a#frag", "no fragment"),
        ("pkcs11:token=" + "a" * 5000, "longer than 4096"),
    ],
)
def test_malformed_uris_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(UriError) as err:
        parse_uri(text)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_pin_value_never_shows_in_str_or_repr() -> None:
    uri = parse_uri("pkcs11:token=t?pin-value=s3cret-pin")
    assert uri.pin_value == "s3cret-pin"
    assert "s3cret-pin" not in str(uri)
    assert "s3cret-pin" not in repr(uri)
    assert "pin-value=REDACTED" in str(uri)


def test_id_is_binary_and_printed_fully_escaped() -> None:
    uri = Pkcs11Uri(token="vault root", id=b"AB\x00")
    assert format_uri(uri) == "pkcs11:token=vault%20root;id=%41%42%00"
    assert parse_uri(format_uri(uri)).id == b"AB\x00"


@pytest.mark.parametrize(
    "text", ["\n", "pkcs11:tok\nen=x", "pkcs11:token=x?pin\r-source=file:/p", "pkcs11:token=%0\n", "x" * 30 + "\x1b[2J"]
)
def test_an_error_never_carries_a_line_break_or_a_control_character(text: str) -> None:
    with pytest.raises(UriError) as refused:
        parse_uri(text)
    message = str(refused.value)
    assert message.isprintable(), message
