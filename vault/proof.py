"""Device proofs: an auditor's cosignature on a station checkpoint, and a C2SP tlog-proof per device.

The audit (``vault audit --cosign``) witnesses each station log it verified:
it adds a *cosignature* to the station's signed checkpoint, made in the
auditor's token with a cosigning key the trust policy enrols
(``cosigners``). Each device in that cosigned log then gets a *proof*: the
device's manifest, where it sits in the log, and the Merkle path from it to
the cosigned checkpoint. An onboarding server checks a device's certificate
and proof offline, with the trust policy alone: :func:`verify_device_proof`.

Cosignature (https://c2sp.org/tlog-cosignature, with one documented
deviation, ``docs/adr/0011-registration.md``). A cosignature is one more
signed-note signature line on the checkpoint::

    — <key name> base64(key ID || u64 timestamp || signature)

The signed message is the spec's: the line ``cosignature/v1``, the line
``time <timestamp>`` (POSIX seconds, ASCII decimal), then the whole
checkpoint body. The deviation: the spec signs with Ed25519; vault's keys
live in PKCS#11 tokens that all do ECDSA P-256 and not all do EdDSA, so the
signature is a DER ECDSA P-256 signature over SHA-256 of that message, and
the key ID, following the signed-note rule for types without a type byte,
is ``SHA-256(<key name> || 0x0A || 0xFF || "cosignature/v1+ecdsa-p256" ||
SPKI DER)[:4]``. The key name of a cosigner is ``vault.dev/cosigner/<holder id>``.

Proof (https://c2sp.org/tlog-proof)::

    c2sp.org/tlog-proof@v1
    extra <base64 of the manifest envelope: the log entry itself>
    index <the entry's position in the station log>
    <base64 hash>            (the RFC 6962 inclusion path, leaf's sibling first)
    ...
    <empty line>
    <the station-signed, auditor-cosigned checkpoint note, verbatim>

The extra data is the logged entry, so it is authenticated by the inclusion
proof (its leaf hash is on the path to the cosigned root); the manifest in it
names the device (hardware id, serial) and the SHA-256 of its certificate.

Example::

    from vault.proof import verify_device_proof
    result = verify_device_proof(certificate_der, proof_bytes, policy)   # raises ProofError when not
    print(result.station_id, result.serial, result.index, result.cosigners)
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vault import merkle
from vault.checkpoint import (
    Checkpoint,
    canonical_b64decode,
    open_checkpoint,
    split_note,
)
from vault.crypto import Signer, spki_der, verify_signature
from vault.errors import FormatError, InputError, ProofError, SignatureError, VaultError
from vault.manifest import CERTIFIED_EVENTS, Manifest, open_manifest
from vault.pki import verify_issued_by
from vault.policy import RoleKey, TrustPolicy

__all__ = [
    "COSIGNATURE_HEADER",
    "MAX_PROOF_SIZE",
    "PROOF_HEADER",
    "DeviceProof",
    "ProofFile",
    "cosign_checkpoint",
    "cosignature_key_id",
    "cosigned_message",
    "cosigner_key_name",
    "format_proof",
    "parse_proof",
    "station_id_of",
    "station_origin",
    "verify_cosignatures",
    "verify_device_proof",
]

PROOF_HEADER = "c2sp.org/tlog-proof@v1"
"""The first line of every proof."""

COSIGNATURE_HEADER = b"cosignature/v1\n"
"""The domain-separation line a cosignature's signed message starts with."""

MAX_PROOF_SIZE = 256 * 1024
"""Largest proof file read, in bytes, checked before it is parsed."""

_ALGORITHM = b"cosignature/v1+ecdsa-p256"
_KEY_ID_SIZE = 4
_DASH = "\u2014 "
_ORIGIN_PREFIX = "vault.dev/station/"
_STATION_ID = re.compile(r"[a-z][a-z0-9-]{0,31}")
_INDEX = re.compile(r"0|[1-9][0-9]{0,18}")
_MAX_TIMESTAMP = 2**63 - 1


def station_origin(station_id: str) -> str:
    """The checkpoint origin of a station's log (as :func:`vault.verify.log_origin`)."""
    return f"{_ORIGIN_PREFIX}{station_id}"


def station_id_of(origin: str) -> str | None:
    """The station id a checkpoint origin names, or None when it names no station log."""
    if not origin.startswith(_ORIGIN_PREFIX):
        return None
    station_id = origin[len(_ORIGIN_PREFIX) :]
    return station_id if _STATION_ID.fullmatch(station_id) else None


def cosigner_key_name(holder: str) -> str:
    """The signed-note key name of the cosigner with policy holder id ``holder``."""
    return f"vault.dev/cosigner/{holder}"


def cosignature_key_id(key_name: str, public_key: ec.EllipticCurvePublicKey) -> bytes:
    """The 4-byte key ID of a vault cosigner's signature lines (see the module docstring)."""
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, ec.SECP256R1):
        raise InputError("cosigning keys must be ECDSA P-256 keys")
    data = key_name.encode("utf-8") + b"\n\xff" + _ALGORITHM + spki_der(public_key)
    return hashlib.sha256(data).digest()[:_KEY_ID_SIZE]


def cosigned_message(body: bytes, timestamp: int) -> bytes:
    """The bytes a cosignature signs: ``cosignature/v1``, ``time <timestamp>``, then the checkpoint body."""
    return COSIGNATURE_HEADER + b"time %d\n" % timestamp + body


def cosign_checkpoint(note: bytes, signer: Signer, key_name: str, timestamp: int) -> bytes:
    """``note`` (a signed checkpoint) with one more signature line: the cosignature by ``signer``.

    The caller verifies the checkpoint first: a cosignature says the
    cosigner checked the log up to it. The signature is checked against the
    signer's public key before it is returned, so a faulty token shows here.

    Raises:
        FormatError: the note is malformed.
        InputError: the key is not P-256, the timestamp is out of range, or the signature does not verify.
    """
    if not 0 <= timestamp <= _MAX_TIMESTAMP:
        raise InputError(f"cosignature timestamp {timestamp} is outside 0..2^63-1")
    text, _ = split_note(note)
    body = text.encode("utf-8")
    keyid = cosignature_key_id(key_name, signer.public_key)
    message = cosigned_message(body, timestamp)
    signature = signer.sign(message)
    try:
        verify_signature(signer.public_key, message, signature)
    except SignatureError as e:
        raise InputError(f"cosigner '{key_name}' made a signature that does not verify") from e
    raw = keyid + struct.pack(">Q", timestamp) + signature
    return note + f"{_DASH}{key_name} {base64.b64encode(raw).decode('ascii')}\n".encode()


def verify_cosignatures(note: bytes, cosigners: Mapping[str, RoleKey], threshold: int) -> tuple[str, ...]:
    """The holders in ``cosigners`` whose cosignature on ``note`` verifies; at least ``threshold`` of them.

    Lines by keys not in ``cosigners`` (another name or key ID) are ignored,
    as the signed-note spec asks; a line by an enrolled cosigner that does not
    verify is refused outright (it is forged or altered).

    Raises:
        FormatError: the note is malformed.
        ProofError: a cosignature by an enrolled key does not verify, or fewer than ``threshold`` verify.
    """
    text, lines = split_note(note)
    body = text.encode("utf-8")
    origin = text.split("\n", 1)[0]
    known = {(cosigner_key_name(h), cosignature_key_id(cosigner_key_name(h), k.public_key)): (h, k)
             for h, k in cosigners.items()}  # fmt: skip
    valid: list[str] = []
    unknown = 0
    for name, keyid, raw in lines:
        holder = known.get((name, keyid))
        if holder is None:
            unknown += name != origin  # the log's own signature is not a cosignature
            continue
        if len(raw) <= 8:
            raise ProofError(f"cosignature by '{name}' is too short to hold a timestamp and a signature")
        (timestamp,) = struct.unpack(">Q", raw[:8])
        try:
            verify_signature(holder[1].public_key, cosigned_message(body, timestamp), raw[8:])
        except SignatureError as e:
            raise ProofError(f"cosignature by '{name}' does not verify (forged or altered)") from e
        if holder[0] not in valid:
            valid.append(holder[0])
    if threshold < 1:
        raise ProofError("the trust policy enrols no auditor cosigner, so no proof can verify")
    if len(valid) < threshold:
        extra = f"; {unknown} cosignature(s) by keys the policy does not enrol ignored" if unknown else ""
        raise ProofError(
            f"checkpoint carries {len(valid)} valid auditor cosignature(s), the policy needs {threshold}{extra}"
        )
    return tuple(valid)


@dataclass(frozen=True)
class ProofFile:
    """A parsed tlog-proof: the extra data, the index, the inclusion path and the checkpoint note."""

    extra: bytes
    index: int
    hashes: tuple[bytes, ...]
    note: bytes


def format_proof(proof: ProofFile) -> bytes:
    """The proof as C2SP tlog-proof text."""
    lines = [PROOF_HEADER]
    if proof.extra:
        lines.append("extra " + base64.b64encode(proof.extra).decode("ascii"))
    lines.append(f"index {proof.index}")
    lines += [base64.b64encode(h).decode("ascii") for h in proof.hashes]
    return ("\n".join(lines) + "\n\n").encode("ascii") + proof.note


def parse_proof(data: bytes, *, max_size: int = MAX_PROOF_SIZE) -> ProofFile:
    """Parse a C2SP tlog-proof strictly (nothing is verified here).

    Raises:
        FormatError: too large, truncated, or malformed.
    """
    if not isinstance(data, bytes):
        raise FormatError(f"a proof must be bytes, not {type(data).__name__}")
    if len(data) > max_size:
        raise FormatError(f"proof of {len(data)} bytes is larger than the limit of {max_size}")
    split = data.find(b"\n\n")
    if split < 0:
        raise FormatError("proof has no empty line before its checkpoint (truncated?)")
    try:
        head = data[:split].decode("ascii").split("\n")
    except UnicodeDecodeError as e:
        raise FormatError("proof lines before the checkpoint are not ASCII") from e
    note = data[split + 2 :]
    if not note:
        raise FormatError("proof has no checkpoint (truncated)")
    if head[0] != PROOF_HEADER:
        raise FormatError(f"proof does not start with {PROOF_HEADER}")
    at = 1
    extra = b""
    if at < len(head) and head[at].startswith("extra "):
        extra = canonical_b64decode(head[at][6:], what="proof extra data")
        at += 1
    if at >= len(head) or not head[at].startswith("index ") or not _INDEX.fullmatch(head[at][6:]):
        raise FormatError("proof has no 'index N' line (a decimal without leading zeros)")
    index = int(head[at][6:])
    hashes = tuple(canonical_b64decode(line, what=f"proof hash line {i + 1}") for i, line in enumerate(head[at + 1 :]))
    if len(hashes) > merkle.MAX_PROOF_HASHES:
        raise FormatError(f"proof has {len(hashes)} hashes, more than {merkle.MAX_PROOF_HASHES}")
    if any(len(h) != merkle.HASH_SIZE for h in hashes):
        raise FormatError(f"a proof hash is not {merkle.HASH_SIZE} bytes")
    return ProofFile(extra, index, hashes, note)


@dataclass(frozen=True)
class DeviceProof:
    """What a verified device proof shows: the device, its station and log position, and who cosigned."""

    station_id: str
    index: int
    size: int
    root: bytes
    serial: str | None
    hardware_id: str
    manifest_id: str
    event: str
    cosigners: tuple[str, ...]

    def reason(self) -> str:
        """One line saying why the device is admitted."""
        return (
            f"device {self.serial or self.hardware_id} (hardware id {self.hardware_id}) is entry {self.index} "
            f"of station {self.station_id}'s log, size {self.size}, cosigned by {', '.join(self.cosigners)}"
        )


def verify_device_proof(certificate: bytes | x509.Certificate, proof: bytes, policy: TrustPolicy) -> DeviceProof:
    """Check that ``proof`` shows ``certificate``'s device in an audited, cosigned station log.

    Checks, in order: the proof parses; its checkpoint is a station log's,
    of a station the policy enrols (not one it revoked) and signed by that
    station's key; it carries the policy's threshold of valid auditor
    cosignatures; the certificate is issued by that station's CA; the
    manifest in the proof is in the log at the proof's index (the inclusion
    path leads to the cosigned root); the station signed the manifest, which
    sits at that index, certifies a device and names this certificate's
    SHA-256. Pure: bytes in, no I/O; the policy is checked by the caller.

    Args:
        certificate: the device certificate, DER or PEM bytes, or parsed.
        proof: the proof file's bytes.
        policy: the current verified trust policy.

    Returns:
        The device, log position and cosigners.

    Raises:
        ProofError: the proof does not admit this device; its message is the one-line reason.
    """
    try:
        return _verify(certificate, proof, policy)
    except ProofError:
        raise
    except VaultError as e:
        raise ProofError(str(e)) from e


def _verify(certificate: bytes | x509.Certificate, proof: bytes, policy: TrustPolicy) -> DeviceProof:
    cert = _certificate(certificate)
    parsed = parse_proof(proof)
    origin = parsed.note.split(b"\n", 1)[0].decode("utf-8", errors="replace")  # read again once signed
    station_id = station_id_of(origin)
    if station_id is None:
        raise ProofError(f"the proof's checkpoint is for log {origin[:80]!r}, not a station log")
    station = policy.stations.get(station_id)
    if station is None:
        revoked = [r for r in policy.revoked if r.role == "station" and r.holder == station_id]
        if revoked:
            raise ProofError(
                f"station {station_id} was revoked in trust policy v{revoked[0].version} ({revoked[0].reason[:80]})"
            )
        raise ProofError(f"station {station_id} is not enrolled in trust policy v{policy.version}")
    try:
        checkpoint = open_checkpoint(parsed.note, station.signing.public_key, origin, origin=origin)
    except SignatureError as e:
        raise ProofError(f"the checkpoint is not signed by station {station_id}'s enrolled key") from e
    cosigners = verify_cosignatures(parsed.note, policy.cosigners, policy.cosigners_threshold)
    try:
        verify_issued_by(cert, station.issuing_ca.public_key)
    except (SignatureError, VaultError) as e:
        raise ProofError(f"the certificate is not issued by station {station_id}'s enrolled CA") from e
    _included(parsed, checkpoint)
    try:
        manifest = open_manifest(parsed.extra, {station.signing.key_id: station.signing.public_key})
    except VaultError as e:
        raise ProofError(f"the proof's manifest does not verify under station {station_id}'s key: {e}") from e
    _matches(manifest, cert, station_id, parsed.index)
    return DeviceProof(
        station_id=station_id,
        index=parsed.index,
        size=checkpoint.size,
        root=checkpoint.root,
        serial=manifest.serial,
        hardware_id=manifest.hardware_id,
        manifest_id=manifest.id,
        event=manifest.event,
        cosigners=cosigners,
    )


def _included(parsed: ProofFile, checkpoint: Checkpoint) -> None:
    if not parsed.extra:
        raise ProofError("the proof carries no manifest (no extra data)")
    try:
        merkle.verify_inclusion(
            parsed.index, checkpoint.size, merkle.leaf_hash(parsed.extra), parsed.hashes, checkpoint.root
        )
    except VaultError as e:
        raise ProofError(f"the manifest is not in the log at index {parsed.index} of size {checkpoint.size}") from e


def _matches(manifest: Manifest, cert: x509.Certificate, station_id: str, index: int) -> None:
    if manifest.station_id != station_id or manifest.sequence != index:
        where = f"station {manifest.station_id} position {manifest.sequence}"
        raise ProofError(f"the manifest names {where}, not the log's")
    if manifest.event not in CERTIFIED_EVENTS:
        raise ProofError(f"the manifest records a '{manifest.event}' event, which certifies no device")
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    if manifest.certificate_sha256 != digest:
        raise ProofError(
            f"the proof is for another device (serial {manifest.serial}, hardware id {manifest.hardware_id[:32]}): "
            "its manifest names another certificate"
        )


def _certificate(value: bytes | x509.Certificate) -> x509.Certificate:
    if isinstance(value, x509.Certificate):
        return value
    try:
        if value.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(value)
        return x509.load_der_x509_certificate(value)
    except ValueError as e:
        raise ProofError("the device certificate does not parse (PEM or DER X.509)") from e


