"""RFC 5280 lint of certificates before they are signed, with DigiCert's pkilint.

The validators are the ones pkilint's ``lint_pkix_cert`` runs: the decoding
validators for names, extensions, the signature algorithm and the public key,
then the issuer, validity, subject, extensions and SubjectPublicKeyInfo
containers and the certificate-wide checks (version, serial range, matching
signature algorithms, SKI/AKI/KeyUsage presence, time encodings).
:func:`require_clean` is what :func:`vault.pki.issue_certificate` gets as its
``lint`` in ceremonies, so a certificate with an ERROR or FATAL finding is
never signed.

Example:
    >>> from vault.ceremony._lint import lint_certificate, require_clean
    >>> der = open("root-ca.der", "rb").read()  # doctest: +SKIP
    >>> [f.code for f in lint_certificate(der) if f.blocking]  # doctest: +SKIP
    []
    >>> require_clean(der)  # raises LintError on the first ERROR or FATAL  # doctest: +SKIP
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from pkilint import loader
from pkilint.pkix import certificate, extension, name
from pkilint.validation import ValidationFindingSeverity

from vault.errors import LintError

__all__ = ["Finding", "lint_certificate", "require_clean"]

MAX_CERTIFICATE = 64 * 1024
"""Larger input is refused before it is decoded."""

_BLOCKING = frozenset({"FATAL", "ERROR"})


@dataclass(frozen=True)
class Finding:
    """One pkilint finding.

    ``severity`` is pkilint's name for it (FATAL, ERROR, WARNING, NOTICE,
    INFO, DEBUG); ``code`` is the finding's identifier, e.g.
    ``pkix.ca_certificate_keycertsign_keyusage_not_set``; ``validator`` the
    pkilint class that raised it; ``path`` the node it was raised on.
    """

    severity: str
    code: str
    validator: str
    path: str
    message: str | None = None

    @property
    def blocking(self) -> bool:
        """True for ERROR and FATAL: the certificate must not be signed."""
        return self.severity in _BLOCKING

    def __str__(self) -> str:
        detail = f": {self.message}" if self.message else ""
        return f"{self.severity} {self.code} ({self.validator} at {self.path}){detail}"


@functools.cache
def _validator() -> Any:
    """pkilint's RFC 5280 certificate validator, assembled as ``lint_pkix_cert`` does."""
    return certificate.create_pkix_certificate_validator_container(
        certificate.create_decoding_validators(name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS),
        [
            certificate.create_issuer_validator_container([]),
            certificate.create_validity_validator_container(),
            certificate.create_subject_validator_container([]),
            certificate.create_extensions_validator_container([]),
            certificate.create_spki_validator_container([]),
        ],
    )


def lint_certificate(der: bytes) -> list[Finding]:
    """Every pkilint RFC 5280 finding for the DER certificate ``der``, most severe first.

    Raises:
        LintError: ``der`` is too large or not a DER certificate at all.
    """
    if len(der) > MAX_CERTIFICATE:
        raise LintError(f"certificate is {len(der)} bytes, more than the {MAX_CERTIFICATE} vault lints")
    try:
        document = loader.RFC5280CertificateDocumentLoader().load_der_document(der, "certificate")
    except ValueError as e:
        raise LintError(f"certificate cannot be decoded for linting: {e}") from e
    findings = [
        Finding(
            severity=ValidationFindingSeverity(description.finding.severity).name,
            code=description.finding.code,
            validator=result.validator.name,
            path=result.node.path,
            message=description.message,
        )
        for result in _validator().validate(document.root)
        for description in result.finding_descriptions
    ]
    return sorted(findings, key=lambda f: ValidationFindingSeverity[f.severity])


def require_clean(der: bytes) -> None:
    """Refuse a certificate with any ERROR or FATAL finding; warnings pass.

    Raises:
        LintError: names the first blocking finding's validator, code and message.
    """
    blocking = [finding for finding in lint_certificate(der) if finding.blocking]
    if blocking:
        first = blocking[0]
        more = f" (and {len(blocking) - 1} more)" if len(blocking) > 1 else ""
        detail = f": {first.message}" if first.message else ""
        raise LintError(f"certificate fails RFC 5280 lint: {first.validator} {first.code}{detail}{more}")
