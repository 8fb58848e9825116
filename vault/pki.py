"""X.509 v3 certificates signed by a key that never leaves its token.

``cryptography``'s :class:`~cryptography.x509.CertificateBuilder` signs only
with software keys, so :func:`issue_certificate` builds the certificate with a
throwaway software key of the issuer's curve (which puts the right signature
AlgorithmIdentifier, ecdsa-with-SHA256 or ecdsa-with-SHA384, into the
to-be-signed part), hands that certificate to an optional linter, has the
:class:`~vault.crypto.Signer` sign the exact TBSCertificate bytes, assembles
``Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }``
and checks the signature against the issuer's public key before returning.
Nothing is signed unless every limit holds and the linter is satisfied.

The same reason has :func:`build_csr` assemble a PKCS#10 request for a
token key by hand (``CertificationRequestInfo`` signed by the Signer), and
:func:`check_csr` is what a CA runs on a request before it certifies the key.

This module is the bottom layer shared by ceremonies (root and role keys) and
the station library (device certificates): it imports neither the token layer
nor the linter; callers pass a Signer and, in ceremonies,
``vault.ceremony._lint.require_clean`` as ``lint``.

Example:
    >>> import os
    >>> from cryptography.hazmat.primitives.asymmetric import ec
    >>> from vault.crypto import CURVES, key_id
    >>> class SoftSigner:
    ...     def __init__(self) -> None:
    ...         self._key = ec.generate_private_key(ec.SECP256R1())
    ...         self.public_key = self._key.public_key()
    ...         self.key_id = key_id(self.public_key)
    ...     def sign(self, data: bytes) -> bytes:
    ...         return self._key.sign(data, ec.ECDSA(CURVES["P-256"].hash()))
    >>> root = SoftSigner()
    >>> cert = issue_certificate(
    ...     root.public_key, root_ca_profile("Example Root", years=10), root,
    ...     issuer_certificate=None, serial=random_serial(os.urandom),
    ... )
    >>> cert.subject.rfc4514_string()
    'CN=Example Root'
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID

from vault._files import read_capped
from vault.crypto import CURVES, Curve, Signer, certificate_key, curve_of, key_id, spki_der, verify_signature
from vault.errors import CertificateError, InputError, SignatureError

__all__ = [
    "KEY_USAGES",
    "MAX_CERTIFICATE_FILE",
    "MAX_ROOT_YEARS",
    "CertProfile",
    "build_csr",
    "check_csr",
    "device_profile",
    "issue_certificate",
    "key_agreement_profile",
    "random_serial",
    "read_certificate",
    "root_ca_profile",
    "signing_profile",
    "subordinate_ca_profile",
    "verify_issued_by",
    "with_validity",
]

MAX_CERTIFICATE_FILE = 64 * 1024
"""Largest certificate file (PEM or DER) vault reads: a root certificate is about 1 KiB."""

MAX_ROOT_YEARS = 25
"""A self-signed root may be valid for at most this many years."""

KEY_USAGES = frozenset(
    {
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    }
)
"""KeyUsage bit names, spelled as ``cryptography.x509.KeyUsage`` arguments."""

_UB_NAME = 64  # ub-common-name, ub-organization-name, ub-serial-number ... (RFC 5280 appendix A)
_MAX_SERIAL_BITS = 159  # a positive INTEGER in at most 20 content octets
_SERIAL_BYTES = 16
_MAX_HARDWARE_ID = 32


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _utc(value: datetime.datetime, what: str) -> datetime.datetime:
    if value.tzinfo is None:
        raise CertificateError(f"{what} must carry a time zone")
    return value.astimezone(datetime.UTC).replace(microsecond=0)


def _add_years(when: datetime.datetime, years: int) -> datetime.datetime:
    try:
        return when.replace(year=when.year + years)
    except ValueError:  # 29 February into a year that has none
        return when.replace(year=when.year + years, day=28)


def _check_name_attribute(what: str, value: str | None) -> None:
    if value is not None and not 1 <= len(value) <= _UB_NAME:
        raise CertificateError(f"the {what} must be 1 to {_UB_NAME} characters, not {len(value)}")


@dataclass(frozen=True)
class CertProfile:
    """What one certificate says: subject, validity, CA flag and usages.

    Validity is ``not_before`` (default: the time of issue) plus exactly one
    of ``not_after``, ``days`` and ``years``. ``key_usages`` are bit names from
    :data:`KEY_USAGES`. Whether the CA flag and the key usages agree (a CA
    needs ``key_cert_sign``, an end entity must not have it) is left to the
    RFC 5280 linter, the one place where that policy is checked.

    Raises:
        CertificateError: a name attribute is empty or too long, the
            validity is given twice or not at all, or a usage is unknown.
    """

    common_name: str
    key_usages: frozenset[str]
    ca: bool = False
    path_length: int | None = None
    days: int | None = None
    years: int | None = None
    not_before: datetime.datetime | None = None
    not_after: datetime.datetime | None = None
    organization: str | None = None
    organizational_unit: str | None = None
    serial_number: str | None = None
    extended_key_usages: tuple[x509.ObjectIdentifier, ...] = ()
    uris: tuple[str, ...] = ()  # pkilint accepts only URLs with a host here, not URNs
    dns_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for what, value in (
            ("common name", self.common_name),
            ("organization", self.organization),
            ("organizational unit", self.organizational_unit),
            ("subject serialNumber", self.serial_number),
        ):
            _check_name_attribute(what, value)
        lengths = [self.days, self.years, self.not_after]
        if sum(length is not None for length in lengths) != 1:
            raise CertificateError("a certificate profile needs exactly one of 'days', 'years' and 'not_after'")
        for unit, count in (("day", self.days), ("year", self.years)):
            if count is not None and count < 1:
                raise CertificateError(f"a certificate must be valid for at least one {unit}, not {count}")
        unknown = sorted(self.key_usages - KEY_USAGES)
        if unknown:
            raise CertificateError(f"unknown key usage '{unknown[0]}' (known: {', '.join(sorted(KEY_USAGES))})")
        if self.path_length is not None and (not self.ca or self.path_length < 0):
            raise CertificateError("a path length needs a CA certificate and must not be negative")

    def validity(self, now: datetime.datetime | None = None) -> tuple[datetime.datetime, datetime.datetime]:
        """``(not_before, not_after)`` in UTC, whole seconds; ``now`` fills a missing not_before."""
        not_before = _utc(self.not_before, "not_before") if self.not_before else _utc(now or _utc_now(), "now")
        if self.not_after is not None:
            not_after = _utc(self.not_after, "not_after")
        elif self.years is not None:
            not_after = _add_years(not_before, self.years)
        else:
            assert self.days is not None  # __post_init__ holds exactly one of them
            not_after = not_before + datetime.timedelta(days=self.days)
        if not_after <= not_before:
            raise CertificateError(f"certificate '{self.common_name}' would expire before it starts")
        return not_before, not_after

    def subject(self) -> x509.Name:
        """The subject distinguished name: O, OU, CN, serialNumber (those present)."""
        attributes = [
            (NameOID.ORGANIZATION_NAME, self.organization),
            (NameOID.ORGANIZATIONAL_UNIT_NAME, self.organizational_unit),
            (NameOID.COMMON_NAME, self.common_name),
            (NameOID.SERIAL_NUMBER, self.serial_number),
        ]
        return x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes if value is not None])


def with_validity(
    profile: CertProfile, not_before: datetime.datetime, not_after: datetime.datetime | None = None
) -> CertProfile:
    """``profile`` starting at ``not_before``; with ``not_after`` also ending there.

    Without ``not_after`` the profile keeps its length in days or years (or
    its fixed end).
    """
    if not_after is None:
        return replace(profile, not_before=not_before)
    return replace(profile, not_before=not_before, not_after=not_after, days=None, years=None)


# --- standard profiles --------------------------------------------------------


def root_ca_profile(
    name: str,
    years: int,
    *,
    path_length: int | None = 1,
    organization: str | None = None,
    not_before: datetime.datetime | None = None,
) -> CertProfile:
    """The self-signed root: signs role certificates, station CAs and the trust policy.

    The default path length 1 allows root → station issuing CA → device.
    """
    return CertProfile(
        common_name=name,
        organization=organization,
        ca=True,
        path_length=path_length,
        key_usages=frozenset({"key_cert_sign", "crl_sign", "digital_signature"}),
        years=years,
        not_before=not_before,
    )


def subordinate_ca_profile(
    name: str,
    days: int,
    path_length: int = 0,
    *,
    organization: str | None = None,
    not_before: datetime.datetime | None = None,
) -> CertProfile:
    """An intermediate CA, such as a station's issuing CA for device certificates."""
    return CertProfile(
        common_name=name,
        organization=organization,
        ca=True,
        path_length=path_length,
        key_usages=frozenset({"key_cert_sign", "crl_sign"}),
        days=days,
        not_before=not_before,
    )


def signing_profile(
    name: str,
    days: int,
    *,
    extended_key_usages: Iterable[x509.ObjectIdentifier] = (),
    organization: str | None = None,
    not_before: datetime.datetime | None = None,
) -> CertProfile:
    """A signing key (release signer, approver, station signing key, auditor signing).

    Pass ``extended_key_usages=(ExtendedKeyUsageOID.CODE_SIGNING,)`` for the
    release signer.
    """
    return CertProfile(
        common_name=name,
        organization=organization,
        key_usages=frozenset({"digital_signature"}),
        extended_key_usages=tuple(extended_key_usages),
        days=days,
        not_before=not_before,
    )


def key_agreement_profile(
    name: str,
    days: int,
    *,
    organization: str | None = None,
    not_before: datetime.datetime | None = None,
) -> CertProfile:
    """A decryption key used through ECDH (station or auditor decryption key)."""
    return CertProfile(
        common_name=name,
        organization=organization,
        key_usages=frozenset({"key_agreement"}),
        days=days,
        not_before=not_before,
    )


def device_profile(
    serial: str,
    hardware_id: bytes,
    days: int,
    *,
    organization: str | None = None,
    not_before: datetime.datetime | None = None,
) -> CertProfile:
    """A device certificate: CN is the assigned serial, serialNumber the hardware id.

    The hardware id goes, as lower-case hex, into the subject serialNumber
    attribute (X.520: "an identifier of a device"), so every device
    certificate binds the label serial to the device-derived identity. It is
    not repeated as a ``urn:`` SubjectAltName URI because pkilint's RFC 5280
    URI check accepts only URLs with a host and reports URNs as errors.

    Raises:
        CertificateError: the hardware id is empty or longer than 32 bytes.
    """
    if not 1 <= len(hardware_id) <= _MAX_HARDWARE_ID:
        raise CertificateError(f"a hardware id must be 1 to {_MAX_HARDWARE_ID} bytes, not {len(hardware_id)}")
    hwid = hardware_id.hex()
    return CertProfile(
        common_name=serial,
        organization=organization,
        serial_number=hwid,
        key_usages=frozenset({"digital_signature"}),
        extended_key_usages=(ExtendedKeyUsageOID.CLIENT_AUTH,),
        days=days,
        not_before=not_before,
    )


# --- serials ------------------------------------------------------------------


def random_serial(random_bytes: Callable[[int], bytes]) -> int:
    """A positive 127-bit serial number from ``random_bytes`` (pass the token's RNG).

    Raises:
        CertificateError: the generator returned the wrong length, or zero
            three times in a row (it is broken).
    """
    for _ in range(3):
        data = random_bytes(_SERIAL_BYTES)
        if len(data) != _SERIAL_BYTES:
            raise CertificateError(f"the random generator returned {len(data)} bytes, not {_SERIAL_BYTES}")
        serial = int.from_bytes(data, "big") & ((1 << (8 * _SERIAL_BYTES - 1)) - 1)
        if serial:
            return serial
    raise CertificateError("the random generator keeps returning zero; refusing to make serial numbers")


# --- issuing ------------------------------------------------------------------


def _curve(public_key: object, whose: str) -> Curve:
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise CertificateError(f"the {whose} key is not an EC key (supported curves: {', '.join(CURVES)})")
    try:
        return curve_of(public_key)
    except InputError as e:
        raise CertificateError(
            f"the {whose} key is on unsupported curve '{public_key.curve.name}' (supported: {', '.join(CURVES)})"
        ) from e


def _check_serial(serial: int) -> None:
    if serial < 1:
        raise CertificateError(f"a certificate serial number must be positive, not {serial}")
    if serial.bit_length() > _MAX_SERIAL_BITS:
        raise CertificateError("a certificate serial number must fit in 20 bytes")


def _check_issuer(
    issuer_certificate: x509.Certificate,
    issuer: Signer,
    profile: CertProfile,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> None:
    issuer_name = issuer_certificate.subject.rfc4514_string()
    try:
        certified: object = issuer_certificate.public_key()
    except (ValueError, UnsupportedAlgorithm):
        certified = None
    if not isinstance(certified, ec.EllipticCurvePublicKey) or spki_der(certified) != spki_der(issuer.public_key):
        raise CertificateError(
            f"the issuer certificate '{issuer_name}' is not for the signing key {issuer.key_id[:16]}"
        )
    try:
        constraints = issuer_certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = x509.BasicConstraints(ca=False, path_length=None)
    if not constraints.ca:
        raise CertificateError(f"the issuer certificate '{issuer_name}' is not a CA")
    try:
        usage = issuer_certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.key_cert_sign:
        raise CertificateError(f"the issuer certificate '{issuer_name}' may not sign certificates (no keyCertSign)")
    if profile.ca and constraints.path_length is not None:
        if constraints.path_length == 0:
            raise CertificateError(f"the issuer '{issuer_name}' has path length 0 and may not certify another CA")
        if profile.path_length is None or profile.path_length >= constraints.path_length:
            raise CertificateError(f"a CA under '{issuer_name}' needs a path length below {constraints.path_length}")
    if not_before < issuer_certificate.not_valid_before_utc:
        raise CertificateError(
            f"certificate '{profile.common_name}' would start before its issuer '{issuer_name}' "
            f"({not_before:%Y-%m-%d} < {issuer_certificate.not_valid_before_utc:%Y-%m-%d})"
        )
    if not_after > issuer_certificate.not_valid_after_utc:
        raise CertificateError(
            f"certificate '{profile.common_name}' would outlive its issuer '{issuer_name}' "
            f"({not_after:%Y-%m-%d} > {issuer_certificate.not_valid_after_utc:%Y-%m-%d})"
        )


def _authority_key_id(issuer_certificate: x509.Certificate, issuer: Signer) -> x509.AuthorityKeyIdentifier:
    """The issuer's own SubjectKeyIdentifier when it has one, so chains link by key id."""
    try:
        ski = issuer_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _builder(
    subject_public_key: ec.EllipticCurvePublicKey,
    profile: CertProfile,
    issuer_name: x509.Name,
    authority_key_id: x509.AuthorityKeyIdentifier,
    serial: int,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.CertificateBuilder:
    usages = {name: name in profile.key_usages for name in sorted(KEY_USAGES)}
    builder = (
        x509.CertificateBuilder()
        .subject_name(profile.subject())
        .issuer_name(issuer_name)
        .public_key(subject_public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=profile.ca, path_length=profile.path_length), critical=True)
        .add_extension(x509.KeyUsage(**usages), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_public_key), critical=False)
        .add_extension(authority_key_id, critical=False)
    )
    if profile.extended_key_usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(profile.extended_key_usages)), critical=False)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri) for uri in profile.uris]
    names += [x509.DNSName(name) for name in profile.dns_names]
    if names:
        # The subject is never empty (it has a CN), so RFC 5280 wants the SAN non-critical.
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder


def issue_certificate(
    subject_public_key: ec.EllipticCurvePublicKey,
    profile: CertProfile,
    issuer: Signer,
    *,
    issuer_certificate: x509.Certificate | None,
    serial: int,
    lint: Callable[[bytes], None] | None = None,
    now: datetime.datetime | None = None,
) -> x509.Certificate:
    """Make an X.509 v3 certificate for ``subject_public_key`` signed by ``issuer``.

    Args:
        subject_public_key: the P-256 or P-384 key being certified.
        profile: subject, validity and usages (see the ``*_profile`` functions).
        issuer: the signing key, usually a token key.
        issuer_certificate: the issuer's CA certificate, or ``None`` for a
            self-signed root (then ``subject_public_key`` must be the issuer's key).
        serial: a positive serial number of at most 20 bytes (:func:`random_serial`).
        lint: called with the DER of the certificate before it is signed (the
            to-be-signed part is final, the signature is a placeholder); it
            raises to refuse, and then nothing is signed.
        now: the time a profile without ``not_before`` starts at (default: now).

    Returns:
        The certificate, whose signature has been checked against the issuer's key.

    Raises:
        CertificateError: a limit is broken (curve, serial, validity, issuer).
        LintError: ``lint`` refused the certificate (raised by ``lint``).
        SignatureError: the signer's signature does not verify.
    """
    _curve(subject_public_key, "subject")
    curve = _curve(issuer.public_key, "issuer")
    _check_serial(serial)
    not_before, not_after = profile.validity(now)
    if issuer_certificate is None:
        if spki_der(subject_public_key) != spki_der(issuer.public_key):
            raise CertificateError("a self-signed certificate must certify the signing key itself")
        if not_after > _add_years(not_before, MAX_ROOT_YEARS):
            raise CertificateError(
                f"a root certificate may be valid for at most {MAX_ROOT_YEARS} years "
                f"({not_before:%Y-%m-%d} to {not_after:%Y-%m-%d} is longer)"
            )
        issuer_name = profile.subject()
        authority_key_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key)
    else:
        _check_issuer(issuer_certificate, issuer, profile, not_before, not_after)
        issuer_name = issuer_certificate.subject
        authority_key_id = _authority_key_id(issuer_certificate, issuer)

    placeholder_key = ec.generate_private_key(curve.curve())
    try:
        builder = _builder(subject_public_key, profile, issuer_name, authority_key_id, serial, not_before, not_after)
        draft = builder.sign(placeholder_key, _signing_hash(curve))
    except ValueError as e:
        raise CertificateError(f"certificate '{profile.common_name}' cannot be built: {e}") from e
    draft_der = draft.public_bytes(serialization.Encoding.DER)
    if lint is not None:
        lint(draft_der)

    tbs = draft.tbs_certificate_bytes
    signature = issuer.sign(tbs)
    der = _assemble(draft_der, tbs, signature)
    try:
        certificate = x509.load_der_x509_certificate(der)
    except ValueError as e:
        raise CertificateError(f"the signed certificate '{profile.common_name}' does not parse: {e}") from e
    if certificate.tbs_certificate_bytes != tbs:
        raise CertificateError(f"the signed certificate '{profile.common_name}' does not carry the linted TBS")
    verify_issued_by(certificate, issuer.public_key)
    return certificate


def _signing_hash(curve: Curve) -> hashes.SHA256 | hashes.SHA384:
    algorithm = curve.hash()
    if not isinstance(algorithm, hashes.SHA256 | hashes.SHA384):
        raise CertificateError(f"no certificate signature algorithm for curve {curve.name}")
    return algorithm


_SIGNATURE_OIDS = {
    "P-256": SignatureAlgorithmOID.ECDSA_WITH_SHA256,
    "P-384": SignatureAlgorithmOID.ECDSA_WITH_SHA384,
}


def verify_issued_by(certificate: x509.Certificate, issuer_public_key: ec.EllipticCurvePublicKey) -> None:
    """Check that ``certificate`` is signed by ``issuer_public_key`` with the curve's algorithm.

    Raises:
        CertificateError: the issuer key is not on a supported curve.
        SignatureError: the algorithm is not the issuer curve's, or the signature does not verify.
    """
    curve = _curve(issuer_public_key, "issuer")
    expected = _SIGNATURE_OIDS[curve.name]
    if certificate.signature_algorithm_oid != expected:
        raise SignatureError(
            f"certificate serial {certificate.serial_number:x} is signed with "
            f"{certificate.signature_algorithm_oid.dotted_string}, not {expected.dotted_string}"
        )
    try:
        verify_signature(issuer_public_key, certificate.tbs_certificate_bytes, certificate.signature)
    except SignatureError as e:
        raise SignatureError(
            f"certificate serial {certificate.serial_number:x} is not signed by key {key_id(issuer_public_key)[:16]}"
        ) from e


# --- certificate requests -----------------------------------------------------


def build_csr(signer: Signer, common_name: str, *, organization: str | None = None) -> x509.CertificateSigningRequest:
    """A PKCS#10 request for ``signer``'s own key, signed by that key (proof of possession).

    ``cryptography``'s request builder takes the subject key from a software
    private key, so the request is put together here: the
    ``CertificationRequestInfo`` (version 0, the subject, the signer's
    SubjectPublicKeyInfo, no attributes) is signed by ``signer`` with ECDSA
    and the curve's hash (ecdsa-with-SHA256 on P-256, ecdsa-with-SHA384 on
    P-384) and wrapped with that algorithm and the signature.

    Args:
        signer: the key being requested for, usually a token key.
        common_name: the subject CN (1 to 64 characters).
        organization: the subject O, if any (1 to 64 characters).

    Returns:
        The request, parsed back and checked with :func:`check_csr`.

    Raises:
        CertificateError: a name is empty or too long, or the key is not on
            a supported curve.
        SignatureError: the signer's signature does not verify under its public key.
    """
    curve = _curve(signer.public_key, "requesting")
    _check_name_attribute("common name", common_name)
    _check_name_attribute("organization", organization)
    attributes = [(NameOID.ORGANIZATION_NAME, organization), (NameOID.COMMON_NAME, common_name)]
    try:
        subject = x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes if value is not None])
    except ValueError as e:
        raise CertificateError(f"certificate request '{common_name}' cannot be built: {e}") from e
    version = _der(0x02, b"\x00")
    no_attributes = _der(0xA0, b"")  # attributes [0] IMPLICIT SET OF Attribute, here empty
    info = _der(0x30, version + subject.public_bytes() + spki_der(signer.public_key) + no_attributes)
    signature = signer.sign(info)
    try:
        verify_signature(signer.public_key, info, signature)
    except SignatureError as e:
        raise SignatureError(
            f"certificate request '{common_name}': key {signer.key_id[:16]} made a signature that does not verify"
        ) from e
    algorithm = _der(0x30, _der_oid(_SIGNATURE_OIDS[curve.name]))
    der = _der(0x30, info + algorithm + _der(0x03, b"\x00" + signature))
    try:
        csr = x509.load_der_x509_csr(der)
    except ValueError as e:
        raise CertificateError(f"the signed certificate request '{common_name}' does not parse: {e}") from e
    if csr.tbs_certrequest_bytes != info:
        raise CertificateError(f"the signed certificate request '{common_name}' does not carry the signed info")
    public_key = check_csr(csr)
    if spki_der(public_key) != spki_der(signer.public_key):
        raise CertificateError(f"the certificate request '{common_name}' is not for key {signer.key_id[:16]}")
    return csr


def check_csr(csr: x509.CertificateSigningRequest) -> ec.EllipticCurvePublicKey:
    """The public key of ``csr`` once its self-signature proves the requester holds it.

    Raises:
        CertificateError: the key is not EC on a supported curve, the
            signature is not ECDSA with that curve's hash, or the
            self-signature does not verify.
    """
    try:
        name = f"certificate request '{csr.subject.rfc4514_string()}'"
    except ValueError:
        name = "a certificate request with an unreadable subject"
    try:
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as e:
        raise CertificateError(f"{name} holds a public key vault cannot read") from e
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise CertificateError(f"{name} is not for an EC key (supported curves: {', '.join(CURVES)})")
    try:
        curve = curve_of(public_key)
    except InputError as e:
        raise CertificateError(
            f"{name} is for a key on unsupported curve '{public_key.curve.name}' (supported: {', '.join(CURVES)})"
        ) from e
    expected = _SIGNATURE_OIDS[curve.name]
    try:
        algorithm = csr.signature_algorithm_oid
    except ValueError as e:
        raise CertificateError(f"{name} has an unreadable signature algorithm") from e
    if algorithm != expected:
        raise CertificateError(
            f"{name} is signed with {algorithm.dotted_string}, not {expected.dotted_string} "
            f"(ECDSA with the hash of {curve.name})"
        )
    if not csr.is_signature_valid:
        raise CertificateError(f"{name}: its self-signature does not verify (altered, or not made with its key)")
    return public_key


# --- DER ----------------------------------------------------------------------


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def _tlv_extent(der: bytes, offset: int) -> tuple[int, int]:
    """``(header_length, content_length)`` of the DER TLV at ``offset`` (single-byte tags only)."""
    first = der[offset + 1]
    if first < 0x80:
        return 2, first
    count = first & 0x7F
    return 2 + count, int.from_bytes(der[offset + 2 : offset + 2 + count], "big")


def _assemble(draft_der: bytes, tbs: bytes, signature: bytes) -> bytes:
    """``Certificate ::= SEQUENCE { tbs, the draft's signatureAlgorithm, BIT STRING signature }``.

    The signatureAlgorithm is copied from the draft, which ``cryptography``
    wrote to match the one inside the TBS.
    """
    header, _ = _tlv_extent(draft_der, 0)
    if draft_der[header : header + len(tbs)] != tbs:
        raise CertificateError("the draft certificate does not start with its TBS")
    offset = header + len(tbs)
    algorithm_header, algorithm_length = _tlv_extent(draft_der, offset)
    algorithm = draft_der[offset : offset + algorithm_header + algorithm_length]
    return _der(0x30, tbs + algorithm + _der(0x03, b"\x00" + signature))


def _der(tag: int, content: bytes) -> bytes:
    """One DER TLV with a single-byte ``tag``."""
    return bytes([tag]) + _der_length(len(content)) + content


def _der_oid(oid: x509.ObjectIdentifier) -> bytes:
    """``oid`` as a DER OBJECT IDENTIFIER: the first two arcs in one, then base-128 arcs."""
    arcs = [int(arc) for arc in oid.dotted_string.split(".")]
    body = b""
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        septets = [arc & 0x7F]
        arc >>= 7
        while arc:
            septets.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(septets))
    return _der(0x06, body)


def read_certificate(path: str | os.PathLike[str], *, what: str = "root certificate") -> x509.Certificate:
    """The X.509 certificate (PEM or DER) in the file ``path``, read in bounded memory.

    Raises:
        InputError: the file cannot be read, is larger than :data:`MAX_CERTIFICATE_FILE`,
            or is not a certificate.
        FormatError: its key is not an EC key on a curve vault supports.
    """
    data = read_capped(path, MAX_CERTIFICATE_FILE, what)
    try:
        if b"-----BEGIN" in data:
            certificate = x509.load_pem_x509_certificate(data)
        else:
            certificate = x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise InputError(f"{os.fspath(path)} is not an X.509 certificate") from e
    certificate_key(certificate, what=f"{os.fspath(path)}: the {what}")
    return certificate
