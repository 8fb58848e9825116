"""in-toto Statement v1: what a vault signature says about which artifacts.

A statement names its subjects (artifacts with their digests), a predicate
type (a URI saying what kind of claim this is) and the predicate itself.
Vault writes statements as canonical JSON (sorted keys, no spaces, UTF-8,
integers only) and reads them strictly: the right ``_type``, exactly the
known fields, lower-case hex digests of the right length.

Statements travel inside DSSE envelopes. :func:`open_statement` verifies the
envelope's signatures over the received bytes first and parses only then.

Example:
    >>> statement = Statement(
    ...     subjects=(Subject("fw.bin", {"sha256": "ab" * 32}),),
    ...     predicate_type="https://vault.example/release/v1",
    ...     predicate={"version": "1.2.0", "count": 1000},
    ... )
    >>> Statement.from_bytes(statement.to_bytes()) == statement
    True
    >>> statement.to_bytes()[:46]
    b'{"_type":"https://in-toto.io/Statement/v1","pr'
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from vault.crypto import Signer
from vault.errors import FormatError
from vault.formats._dsse import Envelope, VerificationResult, sign_envelope, verify_envelope
from vault.formats._json import canonical_json, check_fields, check_json_value, check_text, parse_json, quote

__all__ = [
    "DIGEST_LENGTHS",
    "MAX_STATEMENT_SIZE",
    "PAYLOAD_TYPE_INTOTO",
    "STATEMENT_TYPE",
    "Statement",
    "Subject",
    "open_statement",
    "sign_statement",
]

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
"""The ``_type`` every in-toto Statement v1 carries."""

PAYLOAD_TYPE_INTOTO = "application/vnd.in-toto+json"
"""The DSSE ``payloadType`` of an in-toto statement."""

MAX_STATEMENT_SIZE = 8 * 1024 * 1024
"""Default cap on a serialized statement, in bytes, checked before parsing."""

DIGEST_LENGTHS: Mapping[str, int] = MappingProxyType(
    {
        "sha256": 64,
        "sha384": 96,
        "sha512": 128,
        "sha3_256": 64,
        "sha3_384": 96,
        "sha3_512": 128,
    }
)
"""Digest algorithms vault accepts in a subject, with their hex length."""

_MAX_NAME = 4096
_MAX_PREDICATE_TYPE = 1024
_HEX = re.compile(r"[0-9a-f]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_URI = re.compile(r"[\x21-\x7e]+")
_STATEMENT_FIELDS = frozenset({"_type", "subject", "predicateType", "predicate"})
_SUBJECT_FIELDS = frozenset({"name", "digest"})


@dataclass(frozen=True)
class Subject:
    """An artifact a statement is about: its name and one or more digests."""

    name: str
    digest: Mapping[str, str]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise FormatError("subject name must be a non-empty string")
        check_text(self.name, what="subject name")
        if len(self.name) > _MAX_NAME or _CONTROL.search(self.name):
            raise FormatError(f"subject {quote(self.name)}: name is too long or holds control characters")
        if not isinstance(self.digest, Mapping) or not self.digest:
            raise FormatError(f"subject {quote(self.name)}: digest must be a non-empty object")
        for algorithm, value in self.digest.items():
            length = DIGEST_LENGTHS.get(algorithm) if isinstance(algorithm, str) else None
            if length is None:
                raise FormatError(
                    f"subject {quote(self.name)}: unsupported digest algorithm {quote(str(algorithm))}"
                    f" (supported: {', '.join(DIGEST_LENGTHS)})"
                )
            if not isinstance(value, str) or len(value) != length or not _HEX.fullmatch(value):
                raise FormatError(
                    f"subject {quote(self.name)}: {algorithm} digest must be {length} lower-case hex digits"
                )
        object.__setattr__(self, "digest", MappingProxyType(dict(self.digest)))

    def to_json_value(self) -> dict[str, Any]:
        """The subject as a JSON-ready object."""
        return {"name": self.name, "digest": dict(self.digest)}


@dataclass(frozen=True)
class Statement:
    """An in-toto Statement v1.

    ``predicate`` holds JSON values only (objects, arrays, strings, integers,
    booleans, null); it is copied when the statement is made, so later changes
    to the caller's dict do not alter it.
    """

    subjects: tuple[Subject, ...]
    predicate_type: str
    predicate: dict[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "subjects", tuple(self.subjects))
        if not self.subjects:
            raise FormatError("statement must have at least one subject")
        for subject in self.subjects:
            if not isinstance(subject, Subject):
                raise FormatError(f"statement subjects must be Subject objects, not {type(subject).__name__}")
        names = [s.name for s in self.subjects]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise FormatError(f"statement names subject {quote(duplicates[0])} twice")
        if (
            not isinstance(self.predicate_type, str)
            or len(self.predicate_type) > _MAX_PREDICATE_TYPE
            or not _URI.fullmatch(self.predicate_type)
        ):
            raise FormatError("statement predicateType must be a URI of printable ASCII without spaces")
        if not isinstance(self.predicate, dict):
            raise FormatError("statement predicate must be a JSON object")
        check_json_value(self.predicate, what="statement predicate")
        object.__setattr__(self, "predicate", copy.deepcopy(self.predicate))

    def to_bytes(self) -> bytes:
        """The statement as canonical JSON: sorted keys, no spaces, UTF-8."""
        return canonical_json(
            {
                "_type": STATEMENT_TYPE,
                "subject": [s.to_json_value() for s in self.subjects],
                "predicateType": self.predicate_type,
                "predicate": self.predicate,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, *, max_size: int = MAX_STATEMENT_SIZE, what: str = "statement") -> Statement:
        """Parse a statement strictly; the bytes should already be verified.

        Raises:
            FormatError: oversized, not JSON, the wrong ``_type``, missing or
                unknown fields, or a bad subject or digest.
        """
        document = parse_json(data, max_size=max_size, what=what)
        if not isinstance(document, dict):
            raise FormatError(f"{what}: expected a JSON object")
        kind = document.get("_type")
        if kind != STATEMENT_TYPE:
            shown = quote(kind) if isinstance(kind, str) else "missing"
            raise FormatError(f"{what}: _type is {shown}, expected '{STATEMENT_TYPE}'")
        check_fields(document, _STATEMENT_FIELDS, what=what)
        raw_subjects = document["subject"]
        if not isinstance(raw_subjects, list) or not raw_subjects:
            raise FormatError(f"{what}: subject must be a non-empty list")
        subjects = []
        for index, item in enumerate(raw_subjects):
            where = f"{what} subject {index + 1}"
            check_fields(item, _SUBJECT_FIELDS, what=where)
            try:
                subjects.append(Subject(item["name"], item["digest"]))
            except FormatError as e:
                raise FormatError(f"{what}: {e}") from e
        try:
            return cls(tuple(subjects), document["predicateType"], document["predicate"])
        except FormatError as e:
            raise FormatError(f"{what}: {e}") from e


def sign_statement(statement: Statement, signers: Iterable[Signer]) -> Envelope:
    """A DSSE envelope of ``statement``'s canonical bytes, signed by each signer."""
    return sign_envelope(PAYLOAD_TYPE_INTOTO, statement.to_bytes(), signers)


def open_statement(
    envelope: Envelope,
    trusted: Mapping[str, ec.EllipticCurvePublicKey],
    threshold: int,
    *,
    what: str,
    predicate_type: str | None = None,
    max_size: int = MAX_STATEMENT_SIZE,
) -> tuple[Statement, VerificationResult]:
    """Verify ``envelope`` against a threshold, then parse its statement.

    Args:
        envelope: the received envelope.
        trusted: key id to public key of every key allowed to sign.
        threshold: distinct trusted keys needed.
        what: names the document in error messages ("release statement").
        predicate_type: if given, the statement must carry exactly this type,
            so one kind of signed claim cannot be passed off as another.
        max_size: refuse a payload longer than this many bytes.

    Raises:
        SignatureError: a trusted key's signature does not verify.
        ThresholdError: too few distinct trusted keys signed.
        FormatError: the payload is not an in-toto statement (of that type).
    """
    result = verify_envelope(envelope, trusted, threshold, what=what)
    if envelope.payload_type != PAYLOAD_TYPE_INTOTO:
        raise FormatError(f"{what}: payload type is {quote(envelope.payload_type)}, expected '{PAYLOAD_TYPE_INTOTO}'")
    statement = Statement.from_bytes(envelope.payload, max_size=max_size, what=what)
    if predicate_type is not None and statement.predicate_type != predicate_type:
        raise FormatError(
            f"{what}: predicate type is {quote(statement.predicate_type, 80)}, expected '{predicate_type}'"
        )
    return statement, result
