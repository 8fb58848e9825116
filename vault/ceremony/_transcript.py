"""Ceremony transcripts: hash-chained steps, signed by the root and every officer present.

A transcript records each step of a ceremony: when, who, what, and the
SHA-256 of every input and output. Each step carries the hash of the one
before it, so removing, inserting or reordering a step breaks the chain; the
whole document is then signed (DSSE) by the root key and by each officer
present, so changing any byte breaks a signature.

Example:
    >>> from datetime import datetime, timezone
    >>> t = Transcript.start({"type": "root", "name": "demo"}, now=datetime(2026, 1, 1, tzinfo=timezone.utc))
    >>> step = t.record("officer-1", "generate-root-key", outputs={"root.pub": b"..."})
    >>> t.check_chain()
    >>> len(t.steps)
    1
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from vault.errors import FormatError, TranscriptError
from vault.formats import canonical_json, parse_json
from vault.formats._json import check_fields

FORMAT = "vault-ceremony-transcript/v1"
PAYLOAD_TYPE = "application/vnd.vault.transcript+json"
MAX_TRANSCRIPT = 16 * 1024 * 1024
_GENESIS_DOMAIN = b"vault-transcript-v1\x00"


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


_DOCUMENT_FIELDS = frozenset({"header", "steps"})
_STEP_FIELDS = frozenset({"index", "time", "actor", "action", "inputs", "outputs", "details", "prev", "hash"})


def _step(value: object, position: int) -> Step:
    """One step read back from a transcript document, every field of the type it is written with."""
    what = f"transcript step {position}"
    fields = check_fields(value, _STEP_FIELDS, what=what)
    index = fields["index"]
    if not isinstance(index, int) or isinstance(index, bool):
        raise FormatError(f"{what}: index is not a whole number")
    for name in ("time", "actor", "action", "prev", "hash"):
        if not isinstance(fields[name], str):
            raise FormatError(f"{what}: {name} is not text")
    for name in ("inputs", "outputs"):
        digests = fields[name]
        if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()):
            raise FormatError(f"{what}: {name} is not an object of SHA-256 digests")
    if not isinstance(fields["details"], dict):
        raise FormatError(f"{what}: details is not an object")
    return Step(**fields)


def _time(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Step:
    """One recorded step. ``hash`` covers every other field, ``prev`` included."""

    index: int
    time: str
    actor: str
    action: str
    inputs: Mapping[str, str]  # name -> sha256 hex
    outputs: Mapping[str, str]
    details: Mapping[str, Any]
    prev: str
    hash: str

    def body(self) -> dict[str, Any]:
        """The fields the hash covers."""
        return {
            "index": self.index,
            "time": self.time,
            "actor": self.actor,
            "action": self.action,
            "inputs": dict(self.inputs),
            "outputs": dict(self.outputs),
            "details": dict(self.details),
            "prev": self.prev,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.body(), "hash": self.hash}


@dataclass
class Transcript:
    """A ceremony transcript being written, or read back for verification."""

    header: dict[str, Any]
    steps: list[Step] = field(default_factory=list)

    @classmethod
    def start(cls, header: Mapping[str, Any], *, now: datetime) -> Transcript:
        """A new transcript whose header (ceremony type, name, script digest, rehearsal flag...) is fixed."""
        return cls(header={"format": FORMAT, "started": _time(now), **header})

    @property
    def genesis(self) -> str:
        """The chain's starting hash, bound to the header."""
        return sha256_hex(_GENESIS_DOMAIN + canonical_json(self.header))

    @property
    def head(self) -> str:
        """The hash of the last step (the genesis hash before any step)."""
        return self.steps[-1].hash if self.steps else self.genesis

    def record(
        self,
        actor: str,
        action: str,
        *,
        inputs: Mapping[str, bytes] | None = None,
        outputs: Mapping[str, bytes] | None = None,
        details: Mapping[str, Any] | None = None,
        now: datetime | None = None,
    ) -> Step:
        """Append a step; inputs and outputs are given as bytes and recorded as SHA-256."""
        when = now or datetime.now(UTC)
        body: dict[str, Any] = {
            "index": len(self.steps),
            "time": _time(when),
            "actor": actor,
            "action": action,
            "inputs": {k: sha256_hex(v) for k, v in (inputs or {}).items()},
            "outputs": {k: sha256_hex(v) for k, v in (outputs or {}).items()},
            "details": dict(details or {}),
            "prev": self.head,
        }
        step = Step(**body, hash=sha256_hex(canonical_json(body)))
        self.steps.append(step)
        return step

    def to_bytes(self) -> bytes:
        """The transcript document that the root and officers sign."""
        return canonical_json({"header": self.header, "steps": [s.to_dict() for s in self.steps]})

    @classmethod
    def from_bytes(cls, data: bytes) -> Transcript:
        """Parse a transcript document (after its signatures were verified).

        Raises:
            FormatError: it is not a transcript.
        """
        doc = check_fields(
            parse_json(data, max_size=MAX_TRANSCRIPT, what="transcript"), _DOCUMENT_FIELDS, what="transcript"
        )
        header = doc["header"]
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise FormatError(f"not a vault ceremony transcript (format is not {FORMAT})")
        if not isinstance(doc["steps"], list):
            raise FormatError("transcript: steps is not a list")
        return cls(header=header, steps=[_step(value, position) for position, value in enumerate(doc["steps"])])

    def check_chain(self) -> None:
        """Check every step's index, hash and link to the one before.

        Raises:
            TranscriptError: a step was changed, removed, inserted or moved.
        """
        prev = self.genesis
        for position, step in enumerate(self.steps):
            if step.index != position:
                raise TranscriptError(
                    f"transcript step {position} claims index {step.index}: a step was removed or moved"
                )
            if step.prev != prev:
                raise TranscriptError(f"transcript step {position} ({step.action}) does not follow the step before it")
            if sha256_hex(canonical_json(step.body())) != step.hash:
                raise TranscriptError(
                    f"transcript step {position} ({step.action}) was altered: its hash does not match"
                )
            prev = step.hash

    def find(self, action: str) -> Step:
        """The first step with ``action``.

        Raises:
            TranscriptError: there is none.
        """
        for step in self.steps:
            if step.action == action:
                return step
        raise TranscriptError(f"transcript has no '{action}' step")
