"""Station enrolment requests made with keys in real SoftHSM2 tokens; CSRs built by vault.pki."""

from __future__ import annotations

import ast
import base64
import doctest
import hashlib
import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

import vault.enrolment
from tests.helpers import CountingSigner
from vault import pki
from vault.crypto import Signer, key_id, spki_der
from vault.enrolment import (
    MAX_REQUEST_SIZE,
    PREDICATE_TYPE,
    build_enrolment_request,
    open_enrolment_request,
)
from vault.errors import CertificateError, FormatError, InputError, SignatureError
from vault.formats import PAYLOAD_TYPE_INTOTO, Envelope, Signature, canonical_json, sign_envelope
from vault.token import Pkcs11Uri, TokenKey, TokenSession, open_token

TokenUri = Callable[..., Pkcs11Uri]
NOW = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)


class SoftSigner:
    """A software key, for the parts of a test that are not the station's own keys."""

    def __init__(self, curve: ec.EllipticCurve | None = None) -> None:
        self.private = ec.generate_private_key(curve or ec.SECP256R1())
        self.public_key = self.private.public_key()
        self.key_id = key_id(self.public_key)

    def sign(self, data: bytes) -> bytes:
        algorithm = hashes.SHA384() if isinstance(self.public_key.curve, ec.SECP384R1) else hashes.SHA256()
        return self.private.sign(data, ec.ECDSA(algorithm))


@dataclass
class Station:
    token: TokenSession
    signing: TokenKey
    issuing_ca: TokenKey
    decryption: TokenKey
    other: TokenKey  # a fourth signing key on the same token, for forgeries

    def request(self, station_id: str = "line-3", name: str | None = "Line 3, building B") -> bytes:
        return build_enrolment_request(
            station_id,
            signing=self.signing,
            issuing_ca=self.issuing_ca,
            decryption_public_key=self.decryption.public_key,
            name=name,
            now=NOW,
        )


def new_label(role: str) -> str:
    return f"t-{role}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def station_labels(token_uri: TokenUri) -> dict[str, str]:
    """Three station keys (and a stranger) made inside vault-station-1, by label."""
    labels = {role: new_label(role) for role in ("sign", "ca", "dec", "other")}
    with open_token(token_uri("vault-station-1"), rw=True) as token:
        for role, label in labels.items():
            token.generate_ec_key(label, usage="derive" if role == "dec" else "sign")
    return labels


@pytest.fixture
def station(token_uri: TokenUri, station_labels: dict[str, str]) -> Iterator[Station]:
    """The station's keys in an open session (per test: a fresh token elsewhere reinitialises the module)."""
    with open_token(token_uri("vault-station-1")) as token:
        keys = {role: token.key(label=label) for role, label in station_labels.items()}
        yield Station(token, keys["sign"], keys["ca"], keys["dec"], keys["other"])


@pytest.fixture
def request_bytes(station: Station) -> bytes:
    return station.request()


def statement_of(data: bytes) -> dict[str, Any]:
    envelope = Envelope.from_json(data)
    statement: dict[str, Any] = json.loads(envelope.payload)
    return statement


def resign(data: bytes, change: Callable[[dict[str, Any]], None], signer: Signer) -> bytes:
    """The request with its statement changed by ``change`` and signed again by ``signer``."""
    statement = statement_of(data)
    change(statement)
    return sign_envelope(PAYLOAD_TYPE_INTOTO, canonical_json(statement), [signer]).to_json()


def csr_der(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.DER)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def with_broken_signature(csr: x509.CertificateSigningRequest) -> bytes:
    """``csr``'s DER with one bit of the ECDSA signature's r flipped (it still parses)."""
    der = bytearray(csr_der(csr))
    der[-len(csr.signature) + 8] ^= 0x01
    return bytes(der)


# --- a good request ----------------------------------------------------------------------


def test_request_made_in_the_token_opens_with_the_same_three_keys(station: Station, request_bytes: bytes) -> None:
    request = open_enrolment_request(request_bytes)
    assert request.station_id == "line-3"
    assert request.name == "Line 3, building B"
    assert request.created == NOW
    assert spki_der(request.signing_public_key) == station.signing.spki_der
    assert spki_der(request.issuing_ca_public_key) == station.issuing_ca.spki_der
    assert spki_der(request.decryption_public_key) == station.decryption.spki_der
    assert (request.signing_key_id, request.issuing_ca_key_id, request.decryption_key_id) == (
        station.signing.key_id,
        station.issuing_ca.key_id,
        station.decryption.key_id,
    )
    assert request.digest == hashlib.sha256(request_bytes).hexdigest()
    assert request.signing_csr.subject.rfc4514_string() == "CN=station line-3 signing"
    assert request.issuing_ca_csr.subject.rfc4514_string() == "CN=station line-3 issuing CA"

    envelope = Envelope.from_json(request_bytes)
    assert envelope.payload_type == PAYLOAD_TYPE_INTOTO
    assert envelope.keyids == (station.signing.key_id,)
    statement = statement_of(request_bytes)
    assert statement["predicateType"] == PREDICATE_TYPE
    assert statement["subject"] == [
        {"name": "signing", "digest": {"sha256": station.signing.key_id}},
        {"name": "issuing-ca", "digest": {"sha256": station.issuing_ca.key_id}},
        {"name": "decryption", "digest": {"sha256": station.decryption.key_id}},
    ]
    assert statement["predicate"]["created"] == "2025-03-04T05:06:07Z"
    assert base64.b64decode(statement["predicate"]["decryption_key"]) == station.decryption.spki_der


def test_the_token_signs_two_csrs_and_the_envelope_and_nothing_else(station: Station) -> None:
    signing, issuing_ca = CountingSigner(station.signing), CountingSigner(station.issuing_ca)
    data = build_enrolment_request(
        "line-4", signing=signing, issuing_ca=issuing_ca, decryption_public_key=station.decryption.public_key, now=NOW
    )
    assert (signing.calls, issuing_ca.calls) == (2, 1)
    assert open_enrolment_request(data).name is None


def test_csrs_in_the_request_pass_openssl(request_bytes: bytes, tmp_path: Path) -> None:
    request = open_enrolment_request(request_bytes)
    for name, csr in (("signing", request.signing_csr), ("issuing-ca", request.issuing_ca_csr)):
        path = tmp_path / f"{name}.csr"
        path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
        result = subprocess.run(
            ["openssl", "req", "-verify", "-noout", "-in", str(path)], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "verify OK" in result.stdout + result.stderr


def test_p384_request_from_a_fresh_token_uses_sha384(
    fresh_tokens: Callable[[list[str]], dict[str, Pkcs11Uri]], tmp_path: Path
) -> None:
    uri = fresh_tokens(["station-p384"])["station-p384"]
    with open_token(uri, rw=True) as token:
        signing = token.generate_ec_key("signing", curve="P-384")
        issuing_ca = token.generate_ec_key("ca", curve="P-384")
        decryption = token.generate_ec_key("decrypt", curve="P-384", usage="derive")
        data = build_enrolment_request(
            "line-9", signing=signing, issuing_ca=issuing_ca, decryption_public_key=decryption.public_key, now=NOW
        )
    request = open_enrolment_request(data)
    assert spki_der(request.decryption_public_key) == decryption.spki_der
    for csr in (request.signing_csr, request.issuing_ca_csr):
        assert csr.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA384
        path = tmp_path / "request.csr"
        path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
        result = subprocess.run(
            ["openssl", "req", "-verify", "-noout", "-in", str(path)], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr


# --- build_csr and check_csr ------------------------------------------------------------


@pytest.mark.parametrize("organization", [None, "Example Factory"])
def test_build_csr_with_a_token_key_is_valid(station: Station, organization: str | None) -> None:
    csr = pki.build_csr(station.issuing_ca, "station x issuing CA", organization=organization)
    assert csr.is_signature_valid
    assert spki_der(csr.public_key()) == station.issuing_ca.spki_der  # type: ignore[arg-type]
    assert csr.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "station x issuing CA"
    assert [a.value for a in csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == (
        [organization] if organization else []
    )
    assert len(csr.extensions) == 0 and len(list(csr.attributes)) == 0
    assert pki.check_csr(csr) == csr.public_key()


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1()])
def test_build_csr_writes_what_cryptography_writes(curve: ec.EllipticCurve) -> None:
    """For a software key both builders must produce the same CertificationRequestInfo."""
    signer = SoftSigner(curve)
    ours = pki.build_csr(signer, "station y signing", organization="Example Factory")
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Factory"),
            x509.NameAttribute(NameOID.COMMON_NAME, "station y signing"),
        ]
    )
    hash_ = hashes.SHA384() if isinstance(curve, ec.SECP384R1) else hashes.SHA256()
    theirs = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(signer.private, hash_)
    assert ours.tbs_certrequest_bytes == theirs.tbs_certrequest_bytes
    assert ours.signature_algorithm_oid == theirs.signature_algorithm_oid
    assert ours.is_signature_valid


def test_build_csr_refuses_a_bad_name_and_a_lying_signer(station: Station) -> None:
    with pytest.raises(CertificateError, match="common name must be 1 to 64 characters"):
        pki.build_csr(station.signing, "x" * 65)
    with pytest.raises(CertificateError, match="organization must be 1 to 64 characters"):
        pki.build_csr(station.signing, "x", organization="")

    class Liar:
        public_key = station.signing.public_key
        key_id = station.signing.key_id

        def sign(self, data: bytes) -> bytes:
            return station.other.sign(data)

    with pytest.raises(SignatureError, match="made a signature that does not verify"):
        pki.build_csr(Liar(), "station z signing")


def software_csr(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, algorithm: hashes.SHA256 | hashes.SHA384
) -> x509.CertificateSigningRequest:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "somebody")])
    return x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, algorithm)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: software_csr(rsa.generate_private_key(65537, 2048), hashes.SHA256()), "is not for an EC key"),
        (
            lambda: software_csr(ec.generate_private_key(ec.SECP256K1()), hashes.SHA256()),
            "unsupported curve 'secp256k1'",
        ),
        (lambda: software_csr(ec.generate_private_key(ec.SECP256R1()), hashes.SHA384()), "not 1.2.840.10045.4.3.2"),
        (lambda: software_csr(ec.generate_private_key(ec.SECP384R1()), hashes.SHA256()), "not 1.2.840.10045.4.3.3"),
        (
            lambda: x509.load_der_x509_csr(
                with_broken_signature(software_csr(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()))
            ),
            "self-signature does not verify",
        ),
    ],
    ids=["rsa", "secp256k1", "p256-with-sha384", "p384-with-sha256", "broken-signature"],
)
def test_check_csr_refuses(make: Callable[[], x509.CertificateSigningRequest], message: str) -> None:
    with pytest.raises(CertificateError, match=message):
        pki.check_csr(make())


# --- refusals ---------------------------------------------------------------------------


def test_a_flipped_byte_anywhere_in_the_payload_breaks_the_signature(request_bytes: bytes) -> None:
    envelope = Envelope.from_json(request_bytes)
    for index in range(len(envelope.payload)):
        payload = bytearray(envelope.payload)
        payload[index] ^= 0x01
        altered = Envelope(envelope.payload_type, bytes(payload), envelope.signatures).to_json()
        with pytest.raises(SignatureError):
            open_enrolment_request(altered)


def test_a_flipped_byte_in_the_signature_is_refused(request_bytes: bytes) -> None:
    envelope = Envelope.from_json(request_bytes)
    sig = bytearray(envelope.signatures[0].sig)
    sig[10] ^= 0x01
    altered = Envelope(envelope.payload_type, envelope.payload, (Signature(envelope.signatures[0].keyid, bytes(sig)),))
    with pytest.raises(SignatureError, match="does not verify"):
        open_enrolment_request(altered.to_json())


def test_a_request_signed_by_another_key_than_its_signing_csrs_is_refused(
    station: Station, request_bytes: bytes
) -> None:
    forged = resign(request_bytes, lambda statement: None, station.other)
    with pytest.raises(SignatureError, match="not by the key of its own signing CSR"):
        open_enrolment_request(forged)


def test_a_signing_csr_swapped_for_another_keys_is_refused(station: Station, request_bytes: bytes) -> None:
    other_csr = pki.build_csr(station.other, "station line-3 signing")
    envelope = Envelope.from_json(request_bytes)
    statement = statement_of(request_bytes)
    statement["predicate"]["signing_csr"] = b64(csr_der(other_csr))
    swapped = Envelope(envelope.payload_type, canonical_json(statement), envelope.signatures).to_json()
    with pytest.raises(SignatureError, match="not by the key of its own signing CSR"):
        open_enrolment_request(swapped)


def test_an_issuing_ca_csr_swapped_for_another_keys_is_refused(station: Station, request_bytes: bytes) -> None:
    other_csr = b64(csr_der(pki.build_csr(station.other, "station line-3 issuing CA")))

    def swap(statement: dict[str, Any]) -> None:
        statement["predicate"]["issuing_ca_csr"] = other_csr

    # left as it was signed: the signature no longer covers the payload
    envelope = Envelope.from_json(request_bytes)
    statement = statement_of(request_bytes)
    swap(statement)
    unsigned = Envelope(envelope.payload_type, canonical_json(statement), envelope.signatures).to_json()
    with pytest.raises(SignatureError, match="does not verify"):
        open_enrolment_request(unsigned)
    # signed again by the station: the subjects still name the old key
    with pytest.raises(FormatError, match="subject 'issuing-ca' does not name the request's issuing CA key"):
        open_enrolment_request(resign(request_bytes, swap, station.signing))


@pytest.mark.parametrize("field", ["signing_csr", "issuing_ca_csr"])
def test_a_csr_whose_self_signature_fails_is_refused_even_when_the_envelope_verifies(
    station: Station, request_bytes: bytes, field: str
) -> None:
    request = open_enrolment_request(request_bytes)
    csr = request.signing_csr if field == "signing_csr" else request.issuing_ca_csr

    def break_csr(statement: dict[str, Any]) -> None:
        statement["predicate"][field] = b64(with_broken_signature(csr))

    with pytest.raises(CertificateError, match="self-signature does not verify"):
        open_enrolment_request(resign(request_bytes, break_csr, station.signing))


def set_predicate(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(statement: dict[str, Any]) -> None:
        statement["predicate"][field] = value

    return change


def drop_predicate(field: str) -> Callable[[dict[str, Any]], None]:
    def change(statement: dict[str, Any]) -> None:
        del statement["predicate"][field]

    return change


def set_statement(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(statement: dict[str, Any]) -> None:
        statement[field] = value

    return change


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (set_predicate("comment", "hello"), FormatError, "predicate: unknown field 'comment'"),
        (drop_predicate("created"), FormatError, "predicate: missing field 'created'"),
        (
            set_statement("predicateType", "https://vault.dev/trust-policy/v1"),
            FormatError,
            f"expected '{PREDICATE_TYPE}'",
        ),
        (set_predicate("station_id", "Line 3"), FormatError, "station id 'Line 3' must be"),
        (set_predicate("station_id", "a" * 33), FormatError, "station id"),
        (set_predicate("station_id", 3), FormatError, "'station_id' must be a string"),
        (set_predicate("name", ""), FormatError, "station name '' must be 1 to 128"),
        (set_predicate("created", "2025-03-04 05:06:07"), FormatError, "is not a UTC time"),
        (set_predicate("created", "2025-02-30T05:06:07Z"), FormatError, "is not a real date"),
        (set_predicate("decryption_key", "not base64!"), FormatError, "decryption_key is not valid standard base64"),
        (set_predicate("decryption_key", b64(b"\x30\x00")), FormatError, "not a DER SubjectPublicKeyInfo"),
        (set_predicate("issuing_ca_csr", b64(b"\x30\x00")), FormatError, "issuing_ca_csr is not a DER PKCS#10"),
        (
            set_statement("subject", [{"name": "signing", "digest": {"sha256": "00" * 32}}]),
            FormatError,
            "subjects must be exactly signing, issuing-ca, decryption",
        ),
    ],
    ids=[
        "unknown-field",
        "missing-field",
        "predicate-type",
        "station-id",
        "station-id-long",
        "station-id-type",
        "empty-name",
        "created-format",
        "created-date",
        "decryption-key-base64",
        "decryption-key-der",
        "csr-der",
        "subjects",
    ],
)
def test_a_signed_but_malformed_request_is_refused(
    station: Station,
    request_bytes: bytes,
    change: Callable[[dict[str, Any]], None],
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message):
        open_enrolment_request(resign(request_bytes, change, station.signing))


def test_keys_on_other_curves_or_shared_between_roles_are_refused(station: Station, request_bytes: bytes) -> None:
    k1 = ec.generate_private_key(ec.SECP256K1()).public_key()
    with pytest.raises(CertificateError, match="decryption key is on unsupported curve 'secp256k1'"):
        build_enrolment_request(
            "line-3", signing=station.signing, issuing_ca=station.issuing_ca, decryption_public_key=k1, now=NOW
        )
    with pytest.raises(CertificateError, match="signing and issuing CA keys are the same key"):
        build_enrolment_request(
            "line-3",
            signing=station.signing,
            issuing_ca=station.signing,
            decryption_public_key=station.decryption.public_key,
            now=NOW,
        )
    # a request whose decryption key is its signing key, signed by the station
    signing_spki = b64(station.signing.spki_der)

    def reuse(statement: dict[str, Any]) -> None:
        statement["predicate"]["decryption_key"] = signing_spki
        statement["subject"][2]["digest"]["sha256"] = station.signing.key_id

    with pytest.raises(CertificateError, match="signing and decryption keys are the same key"):
        open_enrolment_request(resign(request_bytes, reuse, station.signing))
    k1_spki = b64(k1.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(CertificateError, match="unsupported curve 'secp256k1'"):
        open_enrolment_request(resign(request_bytes, set_predicate("decryption_key", k1_spki), station.signing))


def test_build_refuses_a_bad_station_id_and_a_time_without_zone(station: Station) -> None:
    with pytest.raises(FormatError, match="station id '-x' must be"):
        station.request("-x")
    with pytest.raises(InputError, match="must carry a time zone"):
        build_enrolment_request(
            "line-3",
            signing=station.signing,
            issuing_ca=station.issuing_ca,
            decryption_public_key=station.decryption.public_key,
            now=datetime(2025, 1, 1),
        )


def test_oversized_input_is_refused_before_parsing(request_bytes: bytes) -> None:
    with pytest.raises(FormatError, match=f"more than the {MAX_REQUEST_SIZE}-byte limit"):
        open_enrolment_request(b" " * (MAX_REQUEST_SIZE + 1))
    with pytest.raises(FormatError, match="more than the 1000-byte limit"):
        open_enrolment_request(request_bytes, max_size=1000)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[]", "expected a JSON object"),
        (b'{"payload": "", "payloadType": "x"}', "missing field 'signatures'"),
    ],
    ids=["text", "binary", "array", "not-an-envelope"],
)
def test_input_that_is_not_an_envelope_is_a_format_error(data: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        open_enrolment_request(data)


def test_unsigned_and_doubly_signed_requests_are_refused(station: Station, request_bytes: bytes) -> None:
    envelope = Envelope.from_json(request_bytes)
    with pytest.raises(SignatureError, match="is not signed"):
        open_enrolment_request(Envelope(envelope.payload_type, envelope.payload).to_json())
    doubly = sign_envelope(envelope.payload_type, envelope.payload, [station.signing, station.other]).to_json()
    with pytest.raises(FormatError, match="carries 2 signatures; it must carry one"):
        open_enrolment_request(doubly)


def test_another_payload_type_is_refused(station: Station, request_bytes: bytes) -> None:
    envelope = Envelope.from_json(request_bytes)
    other = sign_envelope("application/json", envelope.payload, [station.signing]).to_json()
    with pytest.raises(FormatError, match="payload type is 'application/json'"):
        open_enrolment_request(other)


# --- the module itself --------------------------------------------------------------------


def test_docstring_example_runs() -> None:
    result = doctest.testmod(vault.enrolment)
    assert result.attempted > 0 and result.failed == 0


def test_enrolment_is_bottom_layer() -> None:
    code = (
        "import sys, vault.enrolment\n"
        "heavy = ('click', 'yaml', 'sigstore', 'rich', 'pkcs11', 'vault.token', 'vault.cli', 'vault.ceremony')\n"
        "print(','.join(sorted(m for m in heavy if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
    allowed = {"vault.crypto", "vault.errors", "vault.pki"}
    for node in ast.walk(ast.parse(Path(vault.enrolment.__file__).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top == "vault":
                assert name in allowed or name.startswith("vault.formats"), name
            else:
                assert top in sys.stdlib_module_names or top == "cryptography", name
