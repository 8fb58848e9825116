"""The provenance gate: admit a CI-built image only if its Sigstore bundle proves who built it.

When a release description names, for an image, the CI identity and OIDC
issuer expected to have built it, the image is admitted only if its Sigstore
bundle verifies for exactly that identity and issuer against the trusted root
pinned in the release description. :func:`verify_provenance` raises on any
doubt and otherwise returns a :class:`ProvenanceResult`, whose
:meth:`~ProvenanceResult.to_dict` goes into the release statement.

The checks are sigstore-python's own (``Verifier.verify_artifact``): the
signing certificate chains to one of the root's Fulcio CAs at the time the
transparency log recorded the signature and carries a valid SCT; it names the
expected identity and issuer; the log entry's inclusion proof, checkpoint and
inclusion promise verify under the root's Rekor keys; the signature covers the
image's SHA-256 and agrees with the log entry.

Nothing here reads a file or touches the network: no TUF refresh and no
transparency log lookup; the trusted root is exactly the bytes given. The image
itself is never read either: the release builder streams images and passes the
SHA-256 it computed on the way, which sigstore accepts in place of the bytes
(its ``Hashed`` input). Both documents are capped in size before they are
parsed, and every failure is one line naming the image and the reason.

Example (``testdata`` is a folder holding a wheel built and signed in GitHub
Actions, its Sigstore bundle, and Sigstore's public-good trusted root):
    >>> import hashlib
    >>> wheel = (testdata / "rfc8785-0.1.2-py3-none-any.whl").read_bytes()
    >>> result = verify_provenance(
    ...     "rfc8785.whl",
    ...     hashlib.sha256(wheel).digest(),
    ...     (testdata / "rfc8785-0.1.2-py3-none-any.whl.sigstore.json").read_bytes(),
    ...     (testdata / "sigstore-public-good-trusted_root.json").read_bytes(),
    ...     identity="https://github.com/trailofbits/rfc8785.py/.github/workflows/release.yml@refs/tags/v0.1.2",
    ...     issuer="https://token.actions.githubusercontent.com",
    ... )
    >>> result.to_dict()["log_index"], result.to_dict()["integrated_time"]
    (79605083, '2024-03-19T22:41:16Z')
    >>> verify_provenance(
    ...     "rfc8785.whl",
    ...     hashlib.sha256(wheel).digest(),
    ...     (testdata / "rfc8785-0.1.2-py3-none-any.whl.sigstore.json").read_bytes(),
    ...     (testdata / "sigstore-public-good-trusted_root.json").read_bytes(),
    ...     identity="https://github.com/trailofbits/rfc8785.py/.github/workflows/release.yml@refs/heads/main",
    ...     issuer="https://token.actions.githubusercontent.com",
    ... )  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    vault.errors.ProvenanceError: image rfc8785.whl: provenance refused: certificate identity is ...
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import sigstore
from cryptography import x509
from cryptography.hazmat import asn1
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError as SchemaError
from sigstore.errors import CertValidationError
from sigstore.errors import VerificationError as SigstoreVerificationError
from sigstore.hashes import Hashed
from sigstore.models import Bundle, TrustedRoot
from sigstore.verify import Verifier, policy
from sigstore_models.common.v1 import HashAlgorithm
from sigstore_models.trustroot.v1 import TrustedRoot as TrustedRootDocument

from vault.errors import FormatError, InputError, ProvenanceError
from vault.formats import parse_json

__all__ = ["MAX_SIGSTORE_BUNDLE_SIZE", "MAX_TRUSTED_ROOT_SIZE", "ProvenanceResult", "verify_provenance"]

MAX_SIGSTORE_BUNDLE_SIZE = 2 * 1024 * 1024
"""Largest Sigstore bundle accepted, in bytes, checked before parsing (real ones are about 10 KiB)."""

MAX_TRUSTED_ROOT_SIZE = 2 * 1024 * 1024
"""Largest Sigstore trusted root accepted, in bytes, checked before parsing (public-good's is about 7 KiB)."""

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_DETAIL = 200

# Fulcio's certificate extensions (https://github.com/sigstore/fulcio/blob/main/docs/oid-info.md).
# The issuer is read from the original 1.1 extension because that is the one
# sigstore-python's identity policy checks; 1.8 onwards are DER UTF8Strings.
_OIDC_ISSUER = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
_SOURCE_REPOSITORY_DIGEST = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.13")
_SOURCE_REPOSITORY_REF = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.14")
_RUN_INVOCATION_URI = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.21")
_SIGSTORE_OTHERNAME = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.7")


@dataclass(frozen=True)
class ProvenanceResult:
    """What an image's verified Sigstore bundle proved, as the release statement records it.

    Each field is either an input exactly as verified (the three digests, the
    expected identity and issuer) or something the verification checked (the
    signing certificate, the transparency log entry). ``integrated_time`` is
    the log's signed time of the signature; it is ``None`` when the bundle
    carries no inclusion promise (its time then comes from a timestamp
    authority, which sigstore checks but which is not recorded here).
    """

    name: str
    artifact_sha256: str
    identity: str
    issuer: str
    bundle_sha256: str
    trusted_root_sha256: str
    certificate_sha256: str
    certificate_serial: str
    certificate_not_before: datetime
    certificate_not_after: datetime
    log_id: str
    log_index: int
    integrated_time: datetime | None
    source_repository_digest: str | None
    source_repository_ref: str | None
    run_invocation_uri: str | None
    verifier: str
    verified: Literal[True] = True

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON values: hex digests and serial, UTC times as ``YYYY-MM-DDTHH:MM:SSZ``."""
        return {
            "name": self.name,
            "artifact_sha256": self.artifact_sha256,
            "identity": self.identity,
            "issuer": self.issuer,
            "bundle_sha256": self.bundle_sha256,
            "trusted_root_sha256": self.trusted_root_sha256,
            "certificate_sha256": self.certificate_sha256,
            "certificate_serial": self.certificate_serial,
            "certificate_not_before": _format_time(self.certificate_not_before),
            "certificate_not_after": _format_time(self.certificate_not_after),
            "log_id": self.log_id,
            "log_index": self.log_index,
            "integrated_time": None if self.integrated_time is None else _format_time(self.integrated_time),
            "source_repository_digest": self.source_repository_digest,
            "source_repository_ref": self.source_repository_ref,
            "run_invocation_uri": self.run_invocation_uri,
            "verifier": self.verifier,
            "verified": self.verified,
        }


def verify_provenance(
    name: str,
    artifact_sha256: str | bytes,
    sigstore_bundle: bytes,
    trusted_root: bytes,
    *,
    identity: str,
    issuer: str,
) -> ProvenanceResult:
    """Verify, offline, that ``identity`` at ``issuer`` signed the image whose SHA-256 is given.

    Args:
        name: the image's name in the release, used in the record and in errors.
        artifact_sha256: the image's SHA-256, as 32 bytes or 64 lower-case hex
            digits, computed by the caller while streaming the image.
        sigstore_bundle: the Sigstore bundle file's bytes, as CI produced them.
        trusted_root: the pinned Sigstore trusted root file's bytes.
        identity: the certificate identity (SAN) the release expects, exactly.
        issuer: the OIDC issuer the release expects, exactly.

    Returns:
        The record of what was verified, for the release statement.

    Raises:
        InputError: an empty or unprintable name, identity or issuer, or a
            digest that is not a SHA-256.
        FormatError: the bundle or the trusted root is too large, not strict
            JSON, or not a Sigstore bundle / trusted root sigstore can use.
        ProvenanceError: the bundle does not prove that the expected identity
            and issuer signed this image under this trusted root.
    """
    digest = _check_arguments(name, artifact_sha256, identity, issuer)
    where = f"image {name}"
    # Both caps before either document is parsed.
    parse_json(trusted_root, max_size=MAX_TRUSTED_ROOT_SIZE, what=f"{where}: trusted root")
    parse_json(sigstore_bundle, max_size=MAX_SIGSTORE_BUNDLE_SIZE, what=f"{where}: sigstore bundle")
    verifier = _load_verifier(bytes(trusted_root), where=where)
    bundle = _load_bundle(bytes(sigstore_bundle), where=where)
    hashed = Hashed(algorithm=HashAlgorithm.SHA2_256, digest=digest)
    try:
        verifier.verify_artifact(hashed, bundle, _ExpectedSigner(identity=identity, issuer=issuer))
    except Exception as e:
        # Fail closed: sigstore and the libraries under it raise their own
        # errors, pydantic's and cryptography's; any of them is a refusal.
        raise ProvenanceError(f"{where}: provenance refused: {_refusal(e, bundle, digest)}") from e

    certificate = bundle.signing_certificate
    log_id, log_index, integrated_time = _log_entry(bundle)
    return ProvenanceResult(
        name=name,
        artifact_sha256=digest.hex(),
        identity=identity,
        issuer=issuer,
        bundle_sha256=hashlib.sha256(sigstore_bundle).hexdigest(),
        trusted_root_sha256=hashlib.sha256(trusted_root).hexdigest(),
        certificate_sha256=hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest(),
        certificate_serial=f"{certificate.serial_number:x}",
        certificate_not_before=certificate.not_valid_before_utc,
        certificate_not_after=certificate.not_valid_after_utc,
        log_id=log_id,
        log_index=log_index,
        integrated_time=integrated_time,
        source_repository_digest=_extension_text(certificate, _SOURCE_REPOSITORY_DIGEST, der=True),
        source_repository_ref=_extension_text(certificate, _SOURCE_REPOSITORY_REF, der=True),
        run_invocation_uri=_extension_text(certificate, _RUN_INVOCATION_URI, der=True),
        verifier=f"sigstore-python {sigstore.__version__}",
    )


def _check_arguments(name: object, artifact_sha256: object, identity: object, issuer: object) -> bytes:
    """The digest as 32 bytes, once every argument is known to be usable."""
    if not isinstance(name, str) or not name or not name.isprintable():
        raise InputError("an image name must be a non-empty, printable string")
    # An empty issuer would make sigstore's identity policy skip the issuer check.
    for what, value in (("identity", identity), ("issuer", issuer)):
        if not isinstance(value, str) or not value or not value.isprintable():
            raise InputError(f"image {name}: the expected {what} must be a non-empty, printable string")
    if isinstance(artifact_sha256, bytes) and len(artifact_sha256) == 32:
        return artifact_sha256
    if isinstance(artifact_sha256, str) and _HEX_SHA256.fullmatch(artifact_sha256):
        return bytes.fromhex(artifact_sha256)
    raise InputError(f"image {name}: the artifact SHA-256 must be 32 bytes or 64 lower-case hex digits")


def _load_verifier(trusted_root: bytes, *, where: str) -> Verifier:
    """A sigstore verifier for exactly this trusted root, with no TUF and no network."""
    try:
        # sigstore 4's only public loader is TrustedRoot.from_file(path). Parsing the
        # document with sigstore's own model and wrapping it (the constructor
        # ClientTrustConfig.trusted_root uses, marked private) keeps this free of file I/O.
        root = TrustedRoot(TrustedRootDocument.from_json(trusted_root))
    except Exception as e:
        raise FormatError(f"{where}: trusted root is not a Sigstore trusted root: {_detail(e)}") from e
    try:
        return Verifier(trusted_root=root)
    except Exception as e:
        raise FormatError(f"{where}: trusted root cannot be used: {_detail(e)}") from e


def _load_bundle(sigstore_bundle: bytes, *, where: str) -> Bundle:
    try:
        return Bundle.from_json(sigstore_bundle)
    except Exception as e:
        raise FormatError(f"{where}: sigstore bundle is malformed: {_detail(e)}") from e


class _SignerMismatchError(SigstoreVerificationError):
    """The signing certificate names another identity or issuer than the release expects."""


class _ExpectedSigner:
    """sigstore's ``Identity`` policy, refusing with what the certificate names instead.

    sigstore decides; this only words the refusal. sigstore applies the policy
    after the certificate has chained to the trusted root, so the names
    reported are those of a certificate the root vouches for.
    """

    def __init__(self, *, identity: str, issuer: str) -> None:
        self._identity = identity
        self._issuer = issuer
        self._policy = policy.Identity(identity=identity, issuer=issuer)

    def verify(self, cert: x509.Certificate) -> None:
        try:
            self._policy.verify(cert)
        except Exception as e:
            raise _SignerMismatchError(self._explain(cert)) from e

    def _explain(self, cert: x509.Certificate) -> str:
        found_issuer = _extension_text(cert, _OIDC_ISSUER, der=False)
        if found_issuer != self._issuer:
            shown = "absent" if found_issuer is None else repr(found_issuer)
            return f"certificate issuer is {shown}, expected {self._issuer!r}"
        names = _identities(cert)
        if self._identity not in names:
            shown = ", ".join(repr(n) for n in names) if names else "absent"
            return f"certificate identity is {shown}, expected {self._identity!r}"
        return f"certificate does not match identity {self._identity!r} and issuer {self._issuer!r}"


def _refusal(error: Exception, bundle: Bundle, digest: bytes) -> str:
    """Why sigstore refused, in words for the release manager."""
    if isinstance(error, _SignerMismatchError):
        return str(error)
    signed = _signed_digest(bundle)
    if signed is not None and signed != digest:
        return f"the bundle signs SHA-256 {signed.hex()}, this image's is {digest.hex()}"
    if isinstance(error, CertValidationError):
        return f"the signing certificate does not verify under the trusted root's Fulcio CAs ({_detail(error)})"
    return _detail(error)


def _signed_digest(bundle: Bundle) -> bytes | None:
    """The SHA-256 the bundle says it signs, if it says so (not yet verified)."""
    document = json.loads(bundle.to_json())
    message_digest = document.get("messageSignature", {}).get("messageDigest", {})
    if message_digest.get("algorithm") != HashAlgorithm.SHA2_256.value or "digest" not in message_digest:
        return None
    return base64.b64decode(message_digest["digest"])


def _log_entry(bundle: Bundle) -> tuple[str, int, datetime | None]:
    """The verified log entry's log id (hex), index and signed integration time.

    Read back through the bundle's public JSON form, so the values are the ones
    sigstore parsed and verified. The integration time counts only with an
    inclusion promise, which signs it; without one sigstore ignores it too.
    """
    entry = json.loads(bundle.to_json())["verificationMaterial"]["tlogEntries"][0]
    log_id = base64.b64decode(entry["logId"]["keyId"]).hex()
    integrated = int(entry.get("integratedTime", 0)) if "inclusionPromise" in entry else 0
    integrated_time = datetime.fromtimestamp(integrated, UTC) if integrated else None
    return log_id, int(entry["logIndex"]), integrated_time


def _identities(cert: x509.Certificate) -> list[str]:
    """The certificate's SAN identities: URIs, e-mail addresses and Sigstore usernames."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except Exception:  # absent, duplicated or malformed: nothing to show
        return []
    found: list[str] = []
    found += names.get_values_for_type(x509.UniformResourceIdentifier)
    found += names.get_values_for_type(x509.RFC822Name)
    for other in names.get_values_for_type(x509.OtherName):
        if other.type_id == _SIGSTORE_OTHERNAME:
            try:
                found.append(asn1.decode_der(str, other.value))
            except ValueError:
                found.append(other.value.decode("utf-8", "replace"))
    return found


def _extension_text(cert: x509.Certificate, oid: x509.ObjectIdentifier, *, der: bool) -> str | None:
    """A Fulcio extension's text: a DER UTF8String if ``der``, else raw UTF-8; ``None`` if absent or unreadable."""
    try:
        value = cert.extensions.get_extension_for_oid(oid).value
    except Exception:  # absent, duplicated or malformed: nothing to record
        return None
    if not isinstance(value, x509.UnrecognizedExtension):
        return None
    try:
        return asn1.decode_der(str, value.value) if der else value.value.decode("utf-8")
    except ValueError:  # UnicodeDecodeError is a ValueError
        return None


def _detail(error: BaseException) -> str:
    """A library error as one short line: pydantic's first complaint, else the message's first line."""
    schema = error if isinstance(error, SchemaError) else error.__cause__ or error.__context__
    if isinstance(schema, SchemaError) and schema.error_count():
        first = schema.errors()[0]
        place = ".".join(str(part) for part in first["loc"])
        text = f"{place}: {first['msg']}" if place else first["msg"]
        if schema.error_count() > 1:
            text += f" (and {schema.error_count() - 1} more)"
    else:
        lines = str(error).strip().splitlines()
        text = lines[0] if lines else type(error).__name__
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + "…"


def _format_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime(_TIME_FORMAT)
