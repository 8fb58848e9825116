"""pkilint's RFC 5280 lint runs before a token signs: a broken certificate is never signed."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.helpers import CountingSigner
from vault import pki
from vault.ceremony._lint import Finding, lint_certificate, require_clean
from vault.errors import LintError
from vault.token import Pkcs11Uri, open_token

TokenUri = Callable[..., Pkcs11Uri]


def test_token_signed_root_has_no_blocking_findings(token_uri: TokenUri, label: str) -> None:
    with open_token(token_uri("vault-root"), rw=True) as token:
        key = token.generate_ec_key(label)
        signer = CountingSigner(key)
        root = pki.issue_certificate(
            key.public_key,
            pki.root_ca_profile("Lint Root", 5),
            signer,
            issuer_certificate=None,
            serial=pki.random_serial(token.generate_random),
            lint=require_clean,
        )
    der = root.public_bytes(serialization.Encoding.DER)
    findings = lint_certificate(der)
    assert not [f for f in findings if f.blocking]
    assert all(isinstance(f, Finding) and f.code.startswith("pkix.") for f in findings)
    require_clean(der)
    assert signer.calls == 1


@pytest.mark.parametrize(
    ("ca", "usages", "code"),
    [
        (True, {"digital_signature"}, "pkix.ca_certificate_keycertsign_keyusage_not_set"),
        (False, {"digital_signature", "key_cert_sign"}, "pkix.ee_certificate_keycertsign_keyusage_set"),
        (False, {"key_agreement", "encipher_only", "decipher_only"}, "pkix.both_encipheronly_and_decipheronly_ku_set"),
    ],
)
def test_broken_profile_is_refused_by_lint_and_never_signed(
    token_uri: TokenUri, label: str, ca: bool, usages: set[str], code: str
) -> None:
    broken = pki.CertProfile("Broken", frozenset(usages), ca=ca, years=1)
    with open_token(token_uri("vault-root"), rw=True) as token:
        signer = CountingSigner(token.generate_ec_key(label))
        with pytest.raises(LintError, match=f"KeyUsageValidator {code}"):
            pki.issue_certificate(
                signer.public_key, broken, signer, issuer_certificate=None, serial=1, lint=require_clean
            )
    assert signer.calls == 0


def test_findings_name_severity_code_validator_and_path() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    captured: list[bytes] = []

    def capture(der: bytes) -> None:
        captured.append(der)
        raise LintError("stop before signing")

    broken = pki.CertProfile("CA without keyCertSign", frozenset({"crl_sign"}), ca=True, days=10)

    class Soft:
        public_key = key.public_key()
        key_id = "unused"

        def sign(self, data: bytes) -> bytes:
            raise AssertionError("must not be called")

    with pytest.raises(LintError, match="stop before signing"):
        pki.issue_certificate(key.public_key(), broken, Soft(), issuer_certificate=None, serial=3, lint=capture)
    (finding,) = [f for f in lint_certificate(captured[0]) if f.blocking]
    assert finding.severity == "ERROR"
    assert finding.code == "pkix.ca_certificate_keycertsign_keyusage_not_set"
    assert finding.validator == "KeyUsageValidator"
    assert "keyUsage" in finding.path
    assert str(finding).startswith("ERROR pkix.ca_certificate_keycertsign_keyusage_not_set (KeyUsageValidator at ")


@pytest.mark.parametrize("der", [b"not a certificate", b"\x30\x03\x02\x01\x01", b"\x30" + b"\x00" * 70000])
def test_undecodable_input_is_a_lint_error(der: bytes) -> None:
    with pytest.raises(LintError):
        require_clean(der)
