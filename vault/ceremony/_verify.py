"""Check a ceremony transcript: signatures of the root and every officer present, and the hash chain."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from vault.ceremony._transcript import MAX_TRANSCRIPT, PAYLOAD_TYPE, Transcript
from vault.crypto import certificate_key, key_id, load_spki
from vault.errors import FormatError, TranscriptError
from vault.formats import Envelope, verify_envelope

_ROOT_KEY_STEPS = ("generate-root-key", "root-key")  # made in the root ceremony, found in later ones
_OFFICER_STEPS = ("officer-key", "officer-present")


@dataclass(frozen=True)
class TranscriptReport:
    """What a verified transcript says, for display."""

    name: str
    type: str
    rehearsal: bool
    steps: int
    head: str
    root_key_id: str
    officers: tuple[str, ...]
    root_pinned: bool


def _public_key(b64_spki: object, what: str) -> ec.EllipticCurvePublicKey:
    if not isinstance(b64_spki, str):
        raise FormatError(f"transcript: {what} is missing (no spki text)")
    try:
        der = base64.b64decode(b64_spki, validate=True)
    except ValueError as e:
        raise FormatError(f"transcript: {what} is not base64") from e
    return load_spki(der, what=f"transcript: {what}")


def verify_transcript(data: bytes, *, root_certificate: x509.Certificate | None = None) -> TranscriptReport:
    """Verify a signed transcript (the ``transcript.json`` a ceremony wrote).

    The root key and officer keys are named inside the transcript; pin the
    root with ``root_certificate`` to know it is *your* root.

    Raises:
        FormatError: not a transcript envelope.
        SignatureError, ThresholdError: a signature is forged or missing.
        TranscriptError: a step was altered, removed or moved, or the root is not the pinned one.
    """
    envelope = Envelope.from_json(data, max_size=MAX_TRANSCRIPT)
    if envelope.payload_type != PAYLOAD_TYPE:
        raise FormatError(f"not a ceremony transcript (payload type {envelope.payload_type!r})")
    transcript = Transcript.from_bytes(envelope.payload)
    root_steps = [s for s in transcript.steps if s.action in _ROOT_KEY_STEPS]
    if not root_steps:
        raise TranscriptError("transcript names no root key")
    root_public = _public_key(root_steps[0].details.get("spki"), "the root key")
    if root_certificate is not None:
        pinned = certificate_key(root_certificate, what="the pinned root certificate")
        if key_id(pinned) != key_id(root_public):
            raise TranscriptError("the transcript's root key is not the pinned root certificate's key")
    verify_envelope(envelope, {key_id(root_public): root_public}, 1, what="transcript root signature")
    officers = {}
    for step in transcript.steps:
        if step.action in _OFFICER_STEPS:
            public = _public_key(step.details.get("spki"), f"officer {step.actor}'s key")
            officers[key_id(public)] = public
    if not officers:
        raise TranscriptError("transcript names no officer")
    verify_envelope(envelope, officers, len(officers), what="transcript officer signatures")
    transcript.check_chain()
    if transcript.steps[-1].action != "close-ceremony":
        raise TranscriptError("transcript does not end with close-ceremony: it was cut short")
    header = transcript.header
    return TranscriptReport(
        name=str(header.get("name", "")),
        type=str(header.get("type", "")),
        rehearsal=bool(header.get("rehearsal")),
        steps=len(transcript.steps),
        head=transcript.head,
        root_key_id=key_id(root_public),
        officers=tuple(s.actor for s in transcript.steps if s.action in _OFFICER_STEPS),
        root_pinned=root_certificate is not None,
    )
