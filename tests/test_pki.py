"""Certificates signed inside real SoftHSM2 tokens: lint-clean, openssl-verifiable, limits refused."""

from __future__ import annotations

import datetime
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID

from tests.helpers import CountingSigner
from vault import pki
from vault.ceremony._lint import require_clean
from vault.crypto import CURVES, key_id
from vault.errors import CertificateError, SignatureError
from vault.token import Pkcs11Uri, TokenKey, TokenSession, open_token

TokenUri = Callable[..., Pkcs11Uri]
DAY = datetime.timedelta(days=1)
E = TypeVar("E", bound=x509.ExtensionType)


class SoftSigner:
    """A device's own software key (devices are not vault tokens)."""

    def __init__(self, curve: ec.EllipticCurve | None = None) -> None:
        self.private = ec.generate_private_key(curve or ec.SECP256R1())
        self.public_key = self.private.public_key()
        self.key_id = key_id(self.public_key)

    def sign(self, data: bytes) -> bytes:
        curve = CURVES["P-384"] if isinstance(self.public_key.curve, ec.SECP384R1) else CURVES["P-256"]
        return self.private.sign(data, ec.ECDSA(curve.hash()))


@dataclass
class Chain:
    root_token: TokenSession
    station_token: TokenSession
    root_key: TokenKey
    root: x509.Certificate
    station_key: TokenKey
    station_ca: x509.Certificate


def new_label() -> str:
    return "t-" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="module")
def chain(token_uri: TokenUri) -> Iterator[Chain]:
    """Root key in vault-root, station issuing CA key in vault-station-1, both certified."""
    with ExitStack() as stack:
        root_token = stack.enter_context(open_token(token_uri("vault-root"), rw=True))
        station_token = stack.enter_context(open_token(token_uri("vault-station-1"), rw=True))
        root_key = root_token.generate_ec_key(new_label())
        root = pki.issue_certificate(
            root_key.public_key,
            pki.root_ca_profile("Vault Test Root", 20, organization="Example Factory"),
            root_key,
            issuer_certificate=None,
            serial=pki.random_serial(root_token.generate_random),
            lint=require_clean,
        )
        station_key = station_token.generate_ec_key(new_label())
        station_ca = pki.issue_certificate(
            station_key.public_key,
            pki.subordinate_ca_profile("Station 1 Issuing CA", 365, path_length=0),
            root_key,
            issuer_certificate=root,
            serial=pki.random_serial(root_token.generate_random),
            lint=require_clean,
        )
        yield Chain(root_token, station_token, root_key, root, station_key, station_ca)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def write_pem(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


def openssl_verify(
    tmp_path: Path, root: x509.Certificate, leaf: x509.Certificate, *untrusted: x509.Certificate
) -> None:
    command = ["openssl", "verify", "-CAfile", str(write_pem(tmp_path / "root.pem", root))]
    if untrusted:
        command += ["-untrusted", str(write_pem(tmp_path / "intermediate.pem", *untrusted))]
    command.append(str(write_pem(tmp_path / "leaf.pem", leaf)))
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(": OK")


def extension(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


# --- good certificates ----------------------------------------------------------------


def test_root_is_self_signed_by_the_token_key_and_verifies(chain: Chain, tmp_path: Path) -> None:
    root = chain.root
    require_clean(der(root))
    openssl_verify(tmp_path, root, root)
    assert root.subject == root.issuer
    assert root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Example Factory"
    assert root.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    constraints = extension(root, x509.BasicConstraints)
    assert constraints.critical and constraints.value == x509.BasicConstraints(ca=True, path_length=1)
    usage = extension(root, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    ski = extension(root, x509.SubjectKeyIdentifier).value
    aki = extension(root, x509.AuthorityKeyIdentifier).value
    assert isinstance(ski, x509.SubjectKeyIdentifier) and isinstance(aki, x509.AuthorityKeyIdentifier)
    assert aki.key_identifier == ski.digest
    assert 0 < root.serial_number < 2**127
    pki.verify_issued_by(root, chain.root_key.public_key)


def test_p384_root_is_signed_with_sha384(token_uri: TokenUri, label: str, tmp_path: Path) -> None:
    with open_token(token_uri("vault-root"), rw=True) as token:
        key = token.generate_ec_key(label, curve="P-384")
        root = pki.issue_certificate(
            key.public_key,
            pki.root_ca_profile("P-384 Root", 10),
            key,
            issuer_certificate=None,
            serial=pki.random_serial(token.generate_random),
            lint=require_clean,
        )
    assert root.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA384
    openssl_verify(tmp_path, root, root)


def test_station_issuing_ca_has_path_length_zero(chain: Chain, tmp_path: Path) -> None:
    ca = chain.station_ca
    require_clean(der(ca))
    openssl_verify(tmp_path, chain.root, ca)
    assert extension(ca, x509.BasicConstraints).value == x509.BasicConstraints(ca=True, path_length=0)
    aki = extension(ca, x509.AuthorityKeyIdentifier).value
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    assert aki.key_identifier == x509.SubjectKeyIdentifier.from_public_key(chain.root_key.public_key).digest
    assert ca.issuer == chain.root.subject


def test_release_signer_certificate_is_for_code_signing(chain: Chain, tmp_path: Path) -> None:
    signer = chain.root_token.generate_ec_key(new_label())
    profile = pki.signing_profile("Release Signer", 180, extended_key_usages=[ExtendedKeyUsageOID.CODE_SIGNING])
    cert = pki.issue_certificate(
        signer.public_key, profile, chain.root_key, issuer_certificate=chain.root, serial=7, lint=require_clean
    )
    require_clean(der(cert))
    openssl_verify(tmp_path, chain.root, cert)
    usage = extension(cert, x509.KeyUsage).value
    assert isinstance(usage, x509.KeyUsage) and usage.digital_signature and not usage.key_cert_sign
    assert extension(cert, x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING])
    assert extension(cert, x509.BasicConstraints).value.ca is False


def test_station_decryption_key_certificate_is_for_key_agreement(chain: Chain, tmp_path: Path) -> None:
    decryption = chain.station_token.generate_ec_key(new_label(), usage="derive")
    cert = pki.issue_certificate(
        decryption.public_key,
        pki.key_agreement_profile("Station 1 Decryption", 365),
        chain.root_key,
        issuer_certificate=chain.root,
        serial=pki.random_serial(chain.root_token.generate_random),
        lint=require_clean,
    )
    require_clean(der(cert))
    openssl_verify(tmp_path, chain.root, cert)
    usage = extension(cert, x509.KeyUsage).value
    assert isinstance(usage, x509.KeyUsage)
    assert usage.key_agreement and not usage.digital_signature


def test_device_certificate_from_the_station_ca_binds_the_hardware_id(chain: Chain, tmp_path: Path) -> None:
    device = SoftSigner()
    profile = pki.device_profile("SN-000123", bytes.fromhex("0badc0ffee"), 30)
    cert = pki.issue_certificate(
        device.public_key,
        profile,
        chain.station_key,
        issuer_certificate=chain.station_ca,
        serial=pki.random_serial(chain.station_token.generate_random),
        lint=require_clean,
    )
    require_clean(der(cert))
    openssl_verify(tmp_path, chain.root, cert, chain.station_ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "SN-000123"
    assert cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == "0badc0ffee"
    assert extension(cert, x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    pki.verify_issued_by(cert, chain.station_key.public_key)


# --- limits -----------------------------------------------------------------------------


def test_root_valid_for_more_than_25_years_is_refused(chain: Chain) -> None:
    signer = CountingSigner(chain.root_key)
    with pytest.raises(CertificateError, match="at most 25 years"):
        pki.issue_certificate(
            signer.public_key, pki.root_ca_profile("Too Long", 26), signer, issuer_certificate=None, serial=1
        )
    assert signer.calls == 0


def test_subordinate_outliving_its_issuer_is_refused(chain: Chain) -> None:
    signer = CountingSigner(chain.station_key)
    too_long = pki.signing_profile("Device", 400)
    with pytest.raises(CertificateError, match="would outlive its issuer"):
        pki.issue_certificate(SoftSigner().public_key, too_long, signer, issuer_certificate=chain.station_ca, serial=1)
    early = pki.signing_profile("Device", 10, not_before=chain.station_ca.not_valid_before_utc - DAY)
    with pytest.raises(CertificateError, match="would start before its issuer"):
        pki.issue_certificate(SoftSigner().public_key, early, signer, issuer_certificate=chain.station_ca, serial=1)
    assert signer.calls == 0


def test_issuer_that_is_not_a_ca_is_refused(chain: Chain) -> None:
    leaf_key = chain.root_token.generate_ec_key(new_label())
    leaf = pki.issue_certificate(
        leaf_key.public_key,
        pki.signing_profile("Approver 1", 30),
        chain.root_key,
        issuer_certificate=chain.root,
        serial=9,
    )
    signer = CountingSigner(leaf_key)
    with pytest.raises(CertificateError, match="is not a CA"):
        pki.issue_certificate(
            SoftSigner().public_key, pki.signing_profile("x", 1), signer, issuer_certificate=leaf, serial=1
        )
    assert signer.calls == 0


def test_path_length_zero_forbids_another_ca(chain: Chain) -> None:
    signer = CountingSigner(chain.station_key)
    with pytest.raises(CertificateError, match="path length 0 and may not certify another CA"):
        pki.issue_certificate(
            SoftSigner().public_key,
            pki.subordinate_ca_profile("Rogue CA", 10),
            signer,
            issuer_certificate=chain.station_ca,
            serial=1,
        )
    assert signer.calls == 0


def test_sub_ca_path_length_must_shrink(chain: Chain) -> None:
    with pytest.raises(CertificateError, match="path length below 1"):
        pki.issue_certificate(
            SoftSigner().public_key,
            pki.subordinate_ca_profile("Wide CA", 10, path_length=1),
            chain.root_key,
            issuer_certificate=chain.root,
            serial=1,
        )


@pytest.mark.parametrize("curve", [ec.SECP521R1(), ec.SECP256K1()])
def test_unsupported_subject_curve_is_refused(chain: Chain, curve: ec.EllipticCurve) -> None:
    signer = CountingSigner(chain.root_key)
    subject = ec.generate_private_key(curve).public_key()
    with pytest.raises(CertificateError, match=f"unsupported curve '{curve.name}'"):
        pki.issue_certificate(subject, pki.signing_profile("x", 1), signer, issuer_certificate=chain.root, serial=1)
    assert signer.calls == 0


def test_unsupported_issuer_curve_is_refused() -> None:
    issuer = SoftSigner(ec.SECP521R1())
    with pytest.raises(CertificateError, match="issuer key is on unsupported curve"):
        pki.issue_certificate(
            SoftSigner().public_key, pki.root_ca_profile("x", 1), issuer, issuer_certificate=None, serial=1
        )


@pytest.mark.parametrize(
    ("serial", "message"), [(0, "must be positive"), (-5, "must be positive"), (2**159, "fit in 20 bytes")]
)
def test_bad_serial_is_refused(chain: Chain, serial: int, message: str) -> None:
    signer = CountingSigner(chain.root_key)
    with pytest.raises(CertificateError, match=message):
        pki.issue_certificate(
            SoftSigner().public_key, pki.signing_profile("x", 1), signer, issuer_certificate=chain.root, serial=serial
        )
    assert signer.calls == 0


def test_largest_20_byte_serial_is_accepted(chain: Chain) -> None:
    cert = pki.issue_certificate(
        SoftSigner().public_key,
        pki.signing_profile("x", 1),
        chain.root_key,
        issuer_certificate=chain.root,
        serial=2**159 - 1,
        lint=require_clean,
    )
    assert cert.serial_number == 2**159 - 1


def test_issuer_certificate_for_another_key_is_refused(chain: Chain) -> None:
    signer = CountingSigner(chain.station_key)
    with pytest.raises(CertificateError, match="is not for the signing key"):
        pki.issue_certificate(
            SoftSigner().public_key, pki.signing_profile("x", 1), signer, issuer_certificate=chain.root, serial=1
        )
    assert signer.calls == 0


def test_self_signed_certificate_must_certify_the_signing_key(chain: Chain) -> None:
    signer = CountingSigner(chain.root_key)
    with pytest.raises(CertificateError, match="must certify the signing key itself"):
        pki.issue_certificate(
            SoftSigner().public_key, pki.root_ca_profile("x", 1), signer, issuer_certificate=None, serial=1
        )
    assert signer.calls == 0


def test_profile_validity_and_usages_are_checked() -> None:
    with pytest.raises(CertificateError, match="exactly one of"):
        pki.CertProfile("x", frozenset({"digital_signature"}), days=1, years=1)
    with pytest.raises(CertificateError, match="exactly one of"):
        pki.CertProfile("x", frozenset({"digital_signature"}))
    with pytest.raises(CertificateError, match="unknown key usage 'sign'"):
        pki.CertProfile("x", frozenset({"sign"}), days=1)
    with pytest.raises(CertificateError, match="common name must be 1 to 64"):
        pki.CertProfile("x" * 65, frozenset({"digital_signature"}), days=1)
    odd = pki.CertProfile("x", frozenset({"encipher_only"}), years=1)
    key = SoftSigner()
    with pytest.raises(CertificateError, match="cannot be built"):
        pki.issue_certificate(key.public_key, odd, key, issuer_certificate=None, serial=1)
    with pytest.raises(CertificateError, match="hardware id must be 1 to 32 bytes"):
        pki.device_profile("SN-1", b"", 1)


def test_with_validity_moves_the_start_and_keeps_the_length() -> None:
    start = datetime.datetime(2030, 2, 28, 12, tzinfo=datetime.UTC)
    profile = pki.with_validity(pki.root_ca_profile("Root", 5), start)
    assert profile.validity() == (start, start.replace(year=2035))
    end = start + 3 * DAY
    assert pki.with_validity(profile, start, end).validity() == (start, end)


# --- serials ----------------------------------------------------------------------------


def test_random_serial_uses_the_given_rng_clears_the_top_bit_and_is_never_zero(chain: Chain) -> None:
    assert pki.random_serial(lambda n: b"\xff" * n) == 2**127 - 1
    assert pki.random_serial(lambda n: b"\x00" * (n - 1) + b"\x01") == 1
    draws = iter([b"\x80" + b"\x00" * 15, b"\x00" * 15 + b"\x02"])
    assert pki.random_serial(lambda n: next(draws)) == 2  # 0x80.. clears to zero: drawn again
    with pytest.raises(CertificateError, match="keeps returning zero"):
        pki.random_serial(lambda n: bytes(n))
    with pytest.raises(CertificateError, match="returned 8 bytes"):
        pki.random_serial(lambda n: bytes(8))
    serials = {pki.random_serial(chain.root_token.generate_random) for _ in range(20)}
    assert len(serials) == 20 and all(0 < s < 2**127 for s in serials)


# --- signatures ---------------------------------------------------------------------------


def test_altered_tbs_fails_signature_verification(chain: Chain, tmp_path: Path) -> None:
    device = SoftSigner()
    cert = pki.issue_certificate(
        device.public_key,
        pki.device_profile("SN-000777", b"\x01\x02\x03\x04", 30),
        chain.station_key,
        issuer_certificate=chain.station_ca,
        serial=77,
    )
    original = der(cert)
    assert original.count(b"SN-000777") == 1
    forged = x509.load_der_x509_certificate(original.replace(b"SN-000777", b"SN-000778"))
    assert forged.signature == cert.signature
    with pytest.raises(SignatureError, match="is not signed by key"):
        pki.verify_issued_by(forged, chain.station_key.public_key)
    with pytest.raises(AssertionError):
        openssl_verify(tmp_path, chain.root, forged, chain.station_ca)


def test_signature_over_other_bytes_is_caught_before_returning(chain: Chain) -> None:
    class LyingSigner(CountingSigner):
        def sign(self, data: bytes) -> bytes:
            return super().sign(data + b"tampered")

    signer = LyingSigner(chain.root_key)
    with pytest.raises(SignatureError):
        pki.issue_certificate(
            SoftSigner().public_key, pki.signing_profile("x", 1), signer, issuer_certificate=chain.root, serial=1
        )
    assert signer.calls == 1


def test_certificate_from_another_issuer_is_refused(chain: Chain) -> None:
    with pytest.raises(SignatureError):
        pki.verify_issued_by(chain.station_ca, chain.station_key.public_key)
    p384 = SoftSigner(ec.SECP384R1())
    with pytest.raises(SignatureError, match="not 1.2.840.10045.4.3.3"):
        pki.verify_issued_by(chain.station_ca, p384.public_key)
