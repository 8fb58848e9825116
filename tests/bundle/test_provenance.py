"""The provenance gate, on a real CI-built artifact, its real Sigstore bundle and the public-good trusted root.

The data lives in the shared test data next to the project clone (the CI
copies ``shared/`` there); it is never copied into this repository. Every bad
case is made here from the real files: one changed byte, one other name, one
other root.
"""

from __future__ import annotations

import base64
import doctest
import hashlib
import importlib.resources
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

import vault.bundle._provenance
from vault.bundle._provenance import (
    MAX_SIGSTORE_BUNDLE_SIZE,
    MAX_TRUSTED_ROOT_SIZE,
    ProvenanceResult,
    verify_provenance,
)
from vault.errors import FormatError, InputError, ProvenanceError, VaultError, VerificationError
from vault.formats import canonical_json, parse_json

ROOT = Path(__file__).resolve().parents[2]
TESTDATA = ROOT.parent / "shared" / "testdata" / "sigstore"
ARTIFACT = "rfc8785-0.1.2-py3-none-any.whl"
BUNDLE = ARTIFACT + ".sigstore.json"
TRUSTED_ROOT = "sigstore-public-good-trusted_root.json"
IDENTITY = "https://github.com/trailofbits/rfc8785.py/.github/workflows/release.yml@refs/tags/v0.1.2"
ISSUER = "https://token.actions.githubusercontent.com"
NAME = "fw.bin"


@dataclass(frozen=True)
class Provenance:
    """The three real files, as bytes."""

    artifact: bytes
    bundle: bytes
    trusted_root: bytes

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.artifact).digest()


@pytest.fixture(scope="session")
def real() -> Provenance:
    """The real artifact, bundle and trusted root; a missing file fails the test, never skips it."""
    missing = [name for name in (ARTIFACT, BUNDLE, TRUSTED_ROOT) if not (TESTDATA / name).is_file()]
    if missing:
        pytest.fail(
            f"Sigstore test data missing: {TESTDATA} has no {', '.join(missing)} "
            "(the CI copies the shared/ folder next to the project clone; do the same locally)",
            pytrace=False,
        )
    return Provenance(
        (TESTDATA / ARTIFACT).read_bytes(), (TESTDATA / BUNDLE).read_bytes(), (TESTDATA / TRUSTED_ROOT).read_bytes()
    )


def verify(
    real: Provenance,
    *,
    digest: bytes | str | None = None,
    bundle: bytes | None = None,
    trusted_root: bytes | None = None,
    identity: str = IDENTITY,
    issuer: str = ISSUER,
) -> ProvenanceResult:
    return verify_provenance(
        NAME,
        real.digest if digest is None else digest,
        real.bundle if bundle is None else bundle,
        real.trusted_root if trusted_root is None else trusted_root,
        identity=identity,
        issuer=issuer,
    )


def refused(error: pytest.ExceptionInfo[VaultError], fragment: str) -> None:
    """The error is one line that names the image and says ``fragment``."""
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"image {NAME}: "), message
    assert fragment in message, message


def changed(data: bytes, old: bytes, new: bytes) -> bytes:
    """``data`` with its one occurrence of ``old`` replaced by ``new``."""
    assert data.count(old) == 1
    return data.replace(old, new)


def edited(document: bytes, edit: Callable[[Any], object]) -> bytes:
    """``document`` parsed, changed by ``edit(value)`` in place, and serialized again."""
    value = json.loads(document)
    edit(value)
    return json.dumps(value).encode()


def signing_certificate(bundle: bytes) -> bytes:
    raw = json.loads(bundle)["verificationMaterial"]["x509CertificateChain"]["certificates"][0]["rawBytes"]
    return base64.b64decode(raw)


# --- accepted ---------------------------------------------------------------


def test_accepted_for_the_right_identity_and_issuer_records_what_was_verified(real: Provenance) -> None:
    result = verify(real)

    assert result.verified is True
    assert (result.name, result.identity, result.issuer) == (NAME, IDENTITY, ISSUER)
    assert result.artifact_sha256 == hashlib.sha256(real.artifact).hexdigest()
    assert result.bundle_sha256 == hashlib.sha256(real.bundle).hexdigest()
    assert result.trusted_root_sha256 == hashlib.sha256(real.trusted_root).hexdigest()
    certificate = x509.load_der_x509_certificate(signing_certificate(real.bundle))
    assert result.certificate_sha256 == hashlib.sha256(signing_certificate(real.bundle)).hexdigest()
    assert result.certificate_serial == f"{certificate.serial_number:x}"
    assert result.certificate_not_before == datetime(2024, 3, 19, 22, 41, 15, tzinfo=UTC)
    assert result.certificate_not_after == datetime(2024, 3, 19, 22, 51, 15, tzinfo=UTC)
    # Rekor's public-good log: its key id is the SHA-256 of its public key.
    assert result.log_id == "c0d23d6ad406973f9559f3ba2d1ca01f84147d8ffc5b8445c224f98b9591801d"
    assert result.log_index == 79605083
    assert result.integrated_time == datetime(2024, 3, 19, 22, 41, 16, tzinfo=UTC)
    assert result.source_repository_digest == "d8b4a6445f38c48b9137a8099706d9b8073146e4"
    assert result.source_repository_ref == "refs/tags/v0.1.2"
    assert result.run_invocation_uri == "https://github.com/trailofbits/rfc8785.py/actions/runs/8351058501/attempts/1"
    assert result.verifier.startswith("sigstore-python 4.")


def test_record_is_plain_json_for_the_release_statement(real: Provenance) -> None:
    record = verify(real).to_dict()

    assert parse_json(canonical_json(record), max_size=1 << 16, what="record") == record
    assert record["verified"] is True
    assert record["integrated_time"] == "2024-03-19T22:41:16Z"
    assert record["certificate_not_before"] == "2024-03-19T22:41:15Z"
    assert record["log_index"] == 79605083
    assert record["artifact_sha256"] == hashlib.sha256(real.artifact).hexdigest()


def test_digest_may_be_given_as_bytes_or_hex(real: Provenance) -> None:
    assert verify(real, digest=real.digest) == verify(real, digest=real.digest.hex())


# --- refused: the artifact, the identity, the issuer ------------------------


def test_refused_for_an_artifact_with_one_byte_changed(real: Provenance) -> None:
    artifact = bytearray(real.artifact)
    artifact[len(artifact) // 2] ^= 0x01
    digest = hashlib.sha256(artifact).hexdigest()

    with pytest.raises(ProvenanceError) as error:
        verify(real, digest=digest)
    refused(error, f"provenance refused: the bundle signs SHA-256 {real.digest.hex()}, this image's is {digest}")


@pytest.mark.parametrize(
    "identity",
    [
        IDENTITY.replace("v0.1.2", "v0.1.3"),  # another release of the same workflow
        IDENTITY.replace("release.yml", "ci.yml"),  # another workflow of the same repository
        IDENTITY.replace("trailofbits", "trail0fbits"),  # another repository
        IDENTITY.removesuffix(".2"),  # a prefix: the match is exact
        IDENTITY + "/",
    ],
)
def test_refused_for_another_identity(real: Provenance, identity: str) -> None:
    with pytest.raises(ProvenanceError) as error:
        verify(real, identity=identity)
    refused(error, f"provenance refused: certificate identity is {IDENTITY!r}, expected {identity!r}")


@pytest.mark.parametrize(
    "issuer", ["https://accounts.google.com", ISSUER + "/", ISSUER.replace("https", "http"), "https://gitlab.com"]
)
def test_refused_for_another_issuer(real: Provenance, issuer: str) -> None:
    with pytest.raises(ProvenanceError) as error:
        verify(real, issuer=issuer)
    refused(error, f"provenance refused: certificate issuer is {ISSUER!r}, expected {issuer!r}")


# --- refused: an altered bundle ----------------------------------------------


def altered_signature(real: Provenance) -> bytes:
    """One base64 character in the middle of the signature changed, in the file's own bytes."""
    signature = json.loads(real.bundle)["messageSignature"]["signature"].encode()
    middle = len(signature) // 2
    other = b"A" if signature[middle : middle + 1] != b"A" else b"B"
    return changed(real.bundle, signature, signature[:middle] + other + signature[middle + 1 :])


def altered_certificate(real: Provenance) -> bytes:
    """One byte of the signing certificate's SAN changed (``rfc8785.py`` becomes ``Rfc8785.py``)."""
    der = bytearray(signing_certificate(real.bundle))
    der[der.index(b"rfc8785.py")] ^= 0x20

    def edit(bundle: dict[str, Any]) -> None:
        bundle["verificationMaterial"]["x509CertificateChain"]["certificates"][0]["rawBytes"] = base64.b64encode(
            bytes(der)
        ).decode()

    return edited(real.bundle, edit)


def altered_log_time(real: Provenance) -> bytes:
    """The log entry's integration time moved by one second (one digit of the file)."""
    return changed(real.bundle, b'"integratedTime": "1710888076"', b'"integratedTime": "1710888077"')


def altered_log_body(real: Provenance) -> bytes:
    """The log entry's body swapped for another, so it no longer matches the inclusion proof."""

    def edit(bundle: dict[str, Any]) -> None:
        bundle["verificationMaterial"]["tlogEntries"][0]["canonicalizedBody"] = base64.b64encode(b"{}").decode()

    return edited(real.bundle, edit)


@pytest.mark.parametrize(
    ("alter", "reason"),
    [
        (altered_signature, "Signature is invalid for input"),
        (altered_certificate, "the signing certificate does not verify under the trusted root's Fulcio CAs"),
        (altered_log_time, "invalid log entry: SET: invalid inclusion promise"),
        (altered_log_body, "invalid log entry: inclusion proof"),
    ],
)
def test_refused_for_an_altered_bundle(real: Provenance, alter: Callable[[Provenance], bytes], reason: str) -> None:
    bundle = alter(real)
    assert bundle != real.bundle

    with pytest.raises(ProvenanceError) as error:
        verify(real, bundle=bundle)
    refused(error, f"provenance refused: {reason}")


@pytest.mark.parametrize(
    ("bundle", "reason"),
    [
        (lambda raw: raw[: len(raw) // 2], "sigstore bundle: not valid JSON"),
        (lambda raw: raw.rstrip()[:-1], "sigstore bundle: not valid JSON"),
        (lambda raw: b"\xff" + raw, "sigstore bundle: not UTF-8"),
        (lambda raw: b"", "sigstore bundle: not valid JSON"),
        (lambda raw: b"[]", "sigstore bundle is malformed: Input should be an object"),
        (lambda raw: b"{}", "sigstore bundle is malformed: mediaType: Field required"),
        (lambda raw: raw.replace(b'"mediaType"', b'"mediaType": "x", "mediaType"', 1), "duplicate JSON key"),
        (lambda raw: raw.replace(b"bundle+json;version=0.2", b"bundle+json;version=9", 1), "mediaType: Input should"),
        (
            lambda raw: edited(raw, lambda b: b["verificationMaterial"].update(tlogEntries=[])),
            "sigstore bundle is malformed: expected exactly one log entry in bundle",
        ),
        (
            lambda raw: edited(
                raw,
                lambda b: b["verificationMaterial"]["x509CertificateChain"]["certificates"][0].update(
                    rawBytes=base64.b64encode(b"not a certificate").decode()
                ),
            ),
            "sigstore bundle is malformed: ",
        ),
    ],
    ids=[
        "half",
        "last-byte-cut",
        "not-utf8",
        "empty",
        "array",
        "empty-object",
        "duplicate-key",
        "media-type",
        "no-log-entry",
        "certificate-garbage",
    ],
)
def test_refused_for_a_malformed_bundle_in_one_line(
    real: Provenance, bundle: Callable[[bytes], bytes], reason: str
) -> None:
    with pytest.raises(FormatError) as error:
        verify(real, bundle=bundle(real.bundle))
    refused(error, reason)
    assert "pydantic" not in str(error.value)


# --- refused: another trusted root -------------------------------------------


def look_alike_fulcio(trusted_root: bytes) -> bytes:
    """The trusted root with every Fulcio CA certificate forged: same names, key ids, serials and dates, new keys."""
    document = json.loads(trusted_root)
    for authority in document["certificateAuthorities"]:
        chain = authority["certChain"]["certificates"]
        real_certificates = [x509.load_der_x509_certificate(base64.b64decode(c["rawBytes"])) for c in chain]
        keys = {cert.subject: ec.generate_private_key(ec.SECP384R1()) for cert in real_certificates}
        for entry, cert in zip(chain, real_certificates, strict=True):
            builder = (
                x509.CertificateBuilder()
                .subject_name(cert.subject)
                .issuer_name(cert.issuer)
                .public_key(keys[cert.subject].public_key())
                .serial_number(cert.serial_number)
                .not_valid_before(cert.not_valid_before_utc)
                .not_valid_after(cert.not_valid_after_utc)
            )
            for extension in cert.extensions:
                builder = builder.add_extension(extension.value, extension.critical)
            forged = builder.sign(keys[cert.issuer], hashes.SHA384())
            entry["rawBytes"] = base64.b64encode(forged.public_bytes(serialization.Encoding.DER)).decode()
    return json.dumps(document).encode()


def other_rekor_key(trusted_root: bytes) -> bytes:
    """The trusted root with the Rekor log's key replaced by another P-256 key."""
    document = json.loads(trusted_root)
    spki = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for log in document["tlogs"]:
        if log["publicKey"]["keyDetails"] == "PKIX_ECDSA_P256_SHA_256":
            log["publicKey"]["rawBytes"] = base64.b64encode(spki).decode()
    return json.dumps(document).encode()


def staging_root(_: bytes) -> bytes:
    """Sigstore's real staging trusted root, as sigstore-python ships it."""
    store = importlib.resources.files("sigstore") / "_store" / "https%3A%2F%2Ftuf-repo-cdn.sigstage.dev"
    return (store / "trusted_root.json").read_bytes()


@pytest.mark.parametrize(
    ("root", "reason"),
    [
        (staging_root, "the signing certificate does not verify under the trusted root's Fulcio CAs"),
        (look_alike_fulcio, "the signing certificate does not verify under the trusted root's Fulcio CAs"),
        (other_rekor_key, "invalid log entry"),
    ],
)
def test_refused_under_another_trusted_root(real: Provenance, root: Callable[[bytes], bytes], reason: str) -> None:
    trusted_root = root(real.trusted_root)
    assert trusted_root != real.trusted_root

    with pytest.raises(ProvenanceError) as error:
        verify(real, trusted_root=trusted_root)
    refused(error, f"provenance refused: {reason}")


@pytest.mark.parametrize(
    ("root", "reason"),
    [
        (lambda raw: raw[:100], "trusted root: not valid JSON"),
        (lambda raw: b"{}", "trusted root is not a Sigstore trusted root: mediaType: Field required"),
        (
            lambda raw: edited(raw, lambda r: r.update(certificateAuthorities=[])),
            "trusted root cannot be used: Fulcio certificates not found",
        ),
        (lambda raw: edited(raw, lambda r: r.update(tlogs=[])), "trusted root cannot be used: "),
    ],
    ids=["truncated", "empty-object", "no-fulcio", "no-rekor"],
)
def test_refused_for_an_unusable_trusted_root(real: Provenance, root: Callable[[bytes], bytes], reason: str) -> None:
    with pytest.raises(FormatError) as error:
        verify(real, trusted_root=root(real.trusted_root))
    refused(error, reason)


# --- refused: oversized input and bad arguments -------------------------------


def test_oversized_bundle_is_refused_before_parsing(real: Provenance) -> None:
    # Still a valid bundle, padded with JSON whitespace: only its size is wrong.
    bundle = real.bundle + b" " * MAX_SIGSTORE_BUNDLE_SIZE
    with pytest.raises(FormatError) as error:
        verify(real, bundle=bundle)
    refused(error, f"sigstore bundle: {len(bundle)} bytes is more than the {MAX_SIGSTORE_BUNDLE_SIZE}-byte limit")


def test_oversized_trusted_root_is_refused_before_parsing(real: Provenance) -> None:
    trusted_root = real.trusted_root + b"\n" * MAX_TRUSTED_ROOT_SIZE
    with pytest.raises(FormatError) as error:
        verify(real, trusted_root=trusted_root)
    refused(error, f"trusted root: {len(trusted_root)} bytes is more than the {MAX_TRUSTED_ROOT_SIZE}-byte limit")


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        ({"issuer": ""}, "expected issuer must be a non-empty"),  # sigstore would skip the issuer check
        ({"identity": ""}, "expected identity must be a non-empty"),
        ({"identity": IDENTITY + "\n"}, "expected identity must be a non-empty, printable"),
        ({"digest": b"\x00" * 31}, "SHA-256 must be 32 bytes or 64 lower-case hex digits"),
        ({"digest": "AB" * 32}, "SHA-256 must be 32 bytes or 64 lower-case hex digits"),
        ({"digest": hashlib.sha256(b"").hexdigest().encode()}, "SHA-256 must be 32 bytes"),
    ],
)
def test_bad_arguments_are_refused(real: Provenance, arguments: dict[str, Any], reason: str) -> None:
    with pytest.raises(InputError) as error:
        verify(real, **arguments)
    refused(error, reason)


def test_refusals_are_verification_errors() -> None:
    assert issubclass(ProvenanceError, VerificationError)


# --- offline -----------------------------------------------------------------

# Runs in a fresh interpreter whose audit hook, from the very start, refuses
# and records every socket operation and HTTP request, noting the phase it
# came in: importing, a first (cold) verification, a second one. The second
# verification also records every file opened.
_OFFLINE_PROGRAM = """
import hashlib, json, socket, sys
from pathlib import Path

phase, network, opened = "import", [], []

def guard(event, args):
    if event.startswith(("socket.", "urllib.", "http.client.")):
        network.append([phase, event])
        raise ConnectionRefusedError(f"network blocked by the test ({event})")
    if phase == "second" and event == "open":
        opened.append(str(args[0]))

sys.addaudithook(guard)

from vault.bundle._provenance import verify_provenance

data = Path(sys.argv[1])
artifact, bundle, root = ((data / name).read_bytes() for name in sys.argv[2:5])
results = []
for phase in ("first", "second"):
    results.append(verify_provenance(
        "fw.bin", hashlib.sha256(artifact).digest(), bundle, root, identity=sys.argv[5], issuer=sys.argv[6]
    ))
phase = "control"
try:
    socket.create_connection(("127.0.0.1", 9), timeout=1)
except ConnectionRefusedError:
    pass
print(json.dumps({"network": network, "opened": opened, "log_index": [r.log_index for r in results]}))
"""


def test_verification_uses_no_network_and_no_files(real: Provenance) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", _OFFLINE_PROGRAM, str(TESTDATA), ARTIFACT, BUNDLE, TRUSTED_ROOT, IDENTITY, ISSUER],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    events = {phase: [event for seen, event in report["network"] if seen == phase] for phase in ("import", "control")}

    assert report["log_index"] == [79605083, 79605083]  # both really verified
    # Not one socket, DNS lookup or HTTP request while verifying, cold or warm.
    assert [phase for phase, _ in report["network"]] == ["import"] * len(events["import"]) + ["control"]
    # Importing sigstore imports urllib3, which makes (never connects) one
    # socket to probe for IPv6 support; it is refused like the rest.
    assert set(events["import"]) <= {"socket.__new__"}
    # The guard does work: connecting is refused at the first step, the DNS lookup.
    assert events["control"] == ["socket.getaddrinfo"]
    # Bytes in: no TUF cache, no root shipped with sigstore, nothing read at all.
    assert report["opened"] == []


# --- the module's example -------------------------------------------------------


def test_docstring_example_runs(real: Provenance) -> None:
    result = doctest.testmod(vault.bundle._provenance, extraglobs={"testdata": TESTDATA})
    assert result.attempted > 0
    assert result.failed == 0
