"""Log checkpoints: C2SP tlog-checkpoint bodies in C2SP signed notes, signed with ECDSA P-256.

A checkpoint states a log's size and Merkle root (see :mod:`vault.merkle`).
Its body (https://c2sp.org/tlog-checkpoint) is at least three non-empty
lines, each ending in a newline:

- the *origin*, naming the log (non-empty; by convention a schema-less URL);
- the tree size in ASCII decimal, without leading zeros (``0`` for empty);
- the root hash in standard, padded base64 (RFC 4648 section 4);
- optional *extension lines*, opaque and non-empty.

The signed note (https://c2sp.org/signed-note) is the body, a blank line, then
one or more signature lines ``— <key name> <base64(key ID || signature)>``:
U+2014 EM DASH, a space, the key name (non-empty, no Unicode spaces, no
``+``), a space, the base64 of a 4-byte big-endian key ID followed by the
signature, and a newline. The whole note is UTF-8 with no control character
other than newline. A signature covers the body bytes exactly, including
its final newline and excluding the blank line. Verifiers ignore signature
lines whose key name and key ID are not both those of a key they trust, so
others (witnesses, a rotated key) can add lines without breaking ours.

Signature type. The signed-note spec gives each algorithm a type byte;
``0xff`` is only for algorithms *without* one, followed by a longer
identifier. ECDSA has one: ``0x02``, "ECDSA signatures as implemented by
github.com/transparency-dev/witness" on P-256 (recommended), P-384 or P-521.
That scheme is exactly what a vault token key makes: a DER (ASN.1) ECDSA
signature over SHA-256 of the note text. For ``0x02`` the spec sets the key ID
to the first four bytes of SHA-256 of the key's DER SubjectPublicKeyInfo --
the SPKI DER alone, *not* the generic ``SHA-256(key name || 0x0A || type ||
public key)`` it recommends for other types -- and vault uses it that way, so
tools built on transparency-dev/formats (``note.NewECDSAVerifier``, as used
for Sigstore's Rekor) verify vault checkpoints given :func:`verifier_key`.
Because type ``0x02`` signs SHA-256 digests whatever the curve, vault uses it
with P-256 keys only.

Example:
    >>> from cryptography.hazmat.primitives.asymmetric import ec
    >>> from vault.crypto import key_id
    >>> class SoftSigner:
    ...     def __init__(self):
    ...         self._key = ec.generate_private_key(ec.SECP256R1())
    ...         self.public_key = self._key.public_key()
    ...         self.key_id = key_id(self.public_key)
    ...     def sign(self, data):
    ...         from cryptography.hazmat.primitives import hashes
    ...         return self._key.sign(data, ec.ECDSA(hashes.SHA256()))
    >>> log_key = SoftSigner()
    >>> checkpoint = Checkpoint("vault.example/station-7", 2, bytes(32))
    >>> print(checkpoint.body().decode(), end="")
    vault.example/station-7
    2
    AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
    >>> note = sign_checkpoint(checkpoint, log_key, "vault.example/station-7")
    >>> note.startswith(checkpoint.body() + "\\n— vault.example/station-7 ".encode())
    True
    >>> open_checkpoint(note, log_key.public_key, "vault.example/station-7") == checkpoint
    True
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from vault.crypto import Signer, key_id, spki_der, verify_signature
from vault.errors import FormatError, InputError, LogError, SignatureError

__all__ = [
    "MAX_NOTE_SIZE",
    "MAX_SIGNATURES",
    "SIGNATURE_TYPE",
    "Checkpoint",
    "canonical_b64decode",
    "note_key_id",
    "open_checkpoint",
    "parse_checkpoint_unverified",
    "sign_checkpoint",
    "split_note",
    "verifier_key",
]

MAX_NOTE_SIZE = 64 * 1024
"""Default cap on a signed note, in bytes, checked before it is decoded or parsed."""

MAX_SIGNATURES = 64
"""Most signature lines one note may carry (the spec asks verifiers to accept at least 16)."""

SIGNATURE_TYPE = 0x02
"""The signed-note type byte of ECDSA over SHA-256 with a DER signature (transparency-dev/witness)."""

_HASH_SIZE = 32
_MAX_TREE_SIZE = 2**63 - 1  # the same cap as vault.merkle.MAX_TREE_SIZE, which this layer may not import
_KEY_ID_SIZE = 4
_DASH = "\u2014 "  # EM DASH, space: the start of every signature line
_SIZE = re.compile(r"0|[1-9][0-9]{0,18}")  # [0-9] is ASCII only, unlike \d and int()
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


@dataclass(frozen=True)
class Checkpoint:
    """A log's size and root hash under its origin, with any extension lines.

    Raises:
        FormatError: a field would not serialize to a valid checkpoint body.
    """

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, what="checkpoint origin")
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise FormatError(f"checkpoint size must be a whole number, not {type(self.size).__name__}")
        if not 0 <= self.size <= _MAX_TREE_SIZE:
            raise FormatError(f"checkpoint size {self.size} is outside 0..{_MAX_TREE_SIZE}")
        if not isinstance(self.root, bytes) or len(self.root) != _HASH_SIZE:
            shown = f"{len(self.root)} bytes" if isinstance(self.root, bytes) else type(self.root).__name__
            raise FormatError(f"checkpoint root hash must be {_HASH_SIZE} bytes, not {shown}")
        object.__setattr__(self, "extensions", tuple(self.extensions))
        for index, line in enumerate(self.extensions):
            _check_line(line, what=f"checkpoint extension line {index + 1}")

    def body(self) -> bytes:
        """The note text: the bytes a checkpoint signature covers."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode("ascii"), *self.extensions]
        return "".join(line + "\n" for line in lines).encode("utf-8")


def note_key_id(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """The 4-byte signed-note key ID of a type ``0x02`` key: SHA-256 of its SPKI DER, truncated.

    Raises:
        InputError: the key is not an ECDSA P-256 key.
    """
    _check_key(public_key)
    return hashlib.sha256(spki_der(public_key)).digest()[:_KEY_ID_SIZE]


def verifier_key(public_key: ec.EllipticCurvePublicKey, key_name: str) -> str:
    """The key in signed-note verifier-key form: ``<name>+<hex key ID>+<base64(0x02 || SPKI DER)>``.

    This is the string others configure to verify vault checkpoints with
    transparency-dev/formats.

    Raises:
        InputError: the name is not a valid key name, or the key is not P-256.
    """
    _check_key_name(key_name)
    keyid = note_key_id(public_key)
    encoded = base64.b64encode(bytes([SIGNATURE_TYPE]) + spki_der(public_key)).decode("ascii")
    return f"{key_name}+{keyid.hex()}+{encoded}"


def sign_checkpoint(checkpoint: Checkpoint, signer: Signer, key_name: str) -> bytes:
    """The signed note of ``checkpoint``, with one signature by ``signer`` under ``key_name``.

    The signature is checked against the signer's public key before it is
    returned, so a faulty token is caught here and not by a verifier.

    Raises:
        InputError: the key name is invalid, the key is not P-256, the
            signer's key id is not that of its public key, or its signature
            does not verify.
    """
    if not isinstance(checkpoint, Checkpoint):
        raise InputError(f"expected a Checkpoint, got {type(checkpoint).__name__}")
    _check_key_name(key_name)
    public_key = signer.public_key
    keyid = note_key_id(public_key)
    if signer.key_id != key_id(public_key):
        raise InputError(f"signer claims key id {signer.key_id[:16]} but its public key has another id")
    body = checkpoint.body()
    signature = signer.sign(body)
    try:
        verify_signature(public_key, body, signature)
    except SignatureError as e:
        raise InputError(f"key '{key_name}' made a checkpoint signature that does not verify") from e
    line = f"{_DASH}{key_name} {base64.b64encode(keyid + signature).decode('ascii')}\n"
    return body + b"\n" + line.encode("utf-8")


def open_checkpoint(
    note: bytes,
    public_key: ec.EllipticCurvePublicKey,
    key_name: str,
    *,
    origin: str | None = None,
    max_size: int = MAX_NOTE_SIZE,
) -> Checkpoint:
    """Verify a signed checkpoint note under ``public_key`` and ``key_name``, then parse it.

    Signature lines by other keys (another name or key ID) are ignored.
    Every line by this key must verify, and there must be at least one.
    The body is parsed only once its signature has verified.

    Args:
        note: the note as received.
        public_key: the log's ECDSA P-256 public key.
        key_name: the key name the log signs under.
        origin: if given, the origin the checkpoint must name.
        max_size: refuse a longer note, in bytes, before decoding it.

    Returns:
        The checkpoint the note signs.

    Raises:
        InputError: the key name is invalid or the key is not P-256.
        FormatError: the note or its body is malformed or too large.
        SignatureError: no signature by this key, or one that does not verify.
        LogError: the checkpoint is for another origin than ``origin``.
    """
    _check_key_name(key_name)
    keyid = note_key_id(public_key)
    text, signatures = _split_note(note, max_size=max_size)
    body = text.encode("utf-8")
    ours = [sig for name, kid, sig in signatures if name == key_name and kid == keyid]
    if not ours:
        raise SignatureError(f"checkpoint is not signed by key '{key_name}' ({keyid.hex()})")
    for signature in ours:
        try:
            verify_signature(public_key, body, signature)
        except SignatureError as e:
            raise SignatureError(f"checkpoint signature by key '{key_name}' does not verify (forged or altered)") from e
    checkpoint = _parse_body(text)
    if origin is not None and checkpoint.origin != origin:
        raise LogError(f"checkpoint is for log '{checkpoint.origin}', not '{origin}'")
    return checkpoint


def parse_checkpoint_unverified(note: bytes, *, max_size: int = MAX_NOTE_SIZE) -> Checkpoint:
    """The checkpoint in a signed note, for display only: no signature is checked.

    The note is parsed as strictly as by :func:`open_checkpoint`.

    Raises:
        FormatError: the note or its body is malformed or too large.
    """
    text, _ = _split_note(note, max_size=max_size)
    return _parse_body(text)


def split_note(note: bytes, *, max_size: int = MAX_NOTE_SIZE) -> tuple[str, list[tuple[str, bytes, bytes]]]:
    """The text of a signed note and its signature lines as (key name, key ID, signature); nothing verified.

    For verifiers of other signature lines on the same note (cosignatures,
    :mod:`vault.proof`): the note is read as strictly as by :func:`open_checkpoint`.

    Raises:
        FormatError: the note is malformed or too large.
    """
    return _split_note(note, max_size=max_size)


def _split_note(note: bytes, *, max_size: int) -> tuple[str, list[tuple[str, bytes, bytes]]]:
    """The text of a signed note and its signature lines as (key name, key ID, signature)."""
    if not isinstance(note, bytes):
        raise FormatError(f"a signed note must be bytes, not {type(note).__name__}")
    if len(note) > max_size:
        raise FormatError(f"signed note of {len(note)} bytes is larger than the limit of {max_size}")
    try:
        decoded = note.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError("signed note is not valid UTF-8") from e
    control = _CONTROL.search(decoded)
    if control:
        raise FormatError(f"signed note contains control character U+{ord(control.group()):04X}")
    if not decoded.endswith("\n"):
        raise FormatError("signed note does not end with a newline")
    split = decoded.rfind("\n\n")
    if split < 0:
        raise FormatError("signed note has no blank line between its text and its signatures")
    text, block = decoded[: split + 1], decoded[split + 2 :]
    if not block:
        raise FormatError("signed note has no signature lines")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise FormatError(f"signed note has {len(lines)} signatures, more than the limit of {MAX_SIGNATURES}")
    signatures = []
    for index, line in enumerate(lines):
        where = f"signed note signature line {index + 1}"
        if not line.startswith(_DASH):
            raise FormatError(f"{where} does not start with an em dash and a space")
        name, space, encoded = line[len(_DASH) :].partition(" ")
        if not space or not _valid_key_name(name):
            raise FormatError(f"{where} does not start with a valid key name")
        raw = _b64decode(encoded, what=f"{where} signature")
        if len(raw) <= _KEY_ID_SIZE:
            raise FormatError(f"{where} is too short to hold a key ID and a signature")
        signatures.append((name, raw[:_KEY_ID_SIZE], raw[_KEY_ID_SIZE:]))
    return text, signatures


def _parse_body(text: str) -> Checkpoint:
    """The checkpoint in a note text (which ends in a newline)."""
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise FormatError(f"checkpoint has {len(lines)} lines, not at least 3 (origin, size, root hash)")
    origin, size, root, *extensions = lines
    if not origin:
        raise FormatError("checkpoint origin is empty")
    if not _SIZE.fullmatch(size):
        raise FormatError("checkpoint size is not a decimal number without leading zeros")
    root_hash = _b64decode(root, what="checkpoint root hash")
    if len(root_hash) != _HASH_SIZE:
        raise FormatError(f"checkpoint root hash is {len(root_hash)} bytes, not {_HASH_SIZE}")
    for index, line in enumerate(extensions):
        if not line:
            raise FormatError(f"checkpoint extension line {index + 1} is empty")
    return Checkpoint(origin, int(size), root_hash, tuple(extensions))


def _check_line(value: str, *, what: str) -> None:
    if not isinstance(value, str):
        raise FormatError(f"{what} must be a string, not {type(value).__name__}")
    if not value:
        raise FormatError(f"{what} is empty")
    if "\n" in value or _CONTROL.search(value):
        raise FormatError(f"{what} contains a newline or control character")


def _valid_key_name(name: str) -> bool:
    return bool(name) and "+" not in name and not any(c.isspace() for c in name) and not _CONTROL.search(name)


def _check_key_name(name: str) -> None:
    if not isinstance(name, str) or not _valid_key_name(name):
        raise InputError(f"note key name {name!r} must be non-empty, without spaces or '+'")


def _check_key(public_key: ec.EllipticCurvePublicKey) -> None:
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, ec.SECP256R1):
        raise InputError("checkpoint keys must be ECDSA P-256 keys (signed-note type 0x02 signs SHA-256)")


def canonical_b64decode(value: str, *, what: str) -> bytes:
    """Standard, padded, canonical base64 only (one spelling per byte string), as notes and proofs use.

    Raises:
        FormatError: not valid, or not canonical, standard base64.
    """
    return _b64decode(value, what=what)


def _b64decode(value: str, *, what: str) -> bytes:
    """Standard, padded, canonical base64 only: one spelling per byte string."""
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise FormatError(f"{what} is not valid standard base64") from e
    if base64.b64encode(decoded).decode("ascii") != value:
        raise FormatError(f"{what} is not canonical standard base64")
    return decoded
