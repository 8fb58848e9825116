"""Custodian shares: a random secret split m of n as SLIP-39 mnemonics.

The root token's PIN and the backup KEK are never held whole by one person.
At the ceremony the secret is split into ``count`` SLIP-39 mnemonics (Trezor's
``shamir-mnemonic`` does all of the SLIP-39 work), any ``threshold`` of which
rebuild it. Each custodian keeps one mnemonic on paper or sealed to their own
token; the transcript keeps only the public :class:`ShareSetRecord`.

A custodian can prove, alone, that their share is intact and belongs to this
set (:func:`check_share`); recovery (:func:`combine_shares`) refuses a share
that is mistyped, foreign or repeated, naming it, and never corrects it.

Example:
    >>> import os
    >>> secret = os.urandom(32)
    >>> shares = split_secret(secret, threshold=2, count=3)
    >>> str(check_share(shares.mnemonics[1], shares.record))
    'share 2 of 3, threshold 2'
    >>> combine_shares([shares.mnemonics[2], shares.mnemonics[0]], shares.record) == secret
    True
    >>> combine_shares(shares.mnemonics[:1], shares.record)
    Traceback (most recent call last):
    ...
    vault.errors.ShareError: 2 of 3 shares needed: 1 given, 1 more missing
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import shamir_mnemonic
import shamir_mnemonic.shamir
import shamir_mnemonic.wordlist

from vault.errors import FormatError, ShareError

__all__ = [
    "ShareCheck",
    "ShareSet",
    "ShareSetRecord",
    "check_share",
    "check_typed_word",
    "check_words",
    "combine_shares",
    "normalise_mnemonic",
    "split_secret",
]

SCHEME = "slip39"
SHARE_WORDS = 33  # the secrets vault splits (a PIN secret, a KEK) are 32 bytes: 33-word shares
MAX_SHARES = 16  # SLIP-39 encodes the member index and count in 4 bits
MIN_SECRET_BYTES = 16  # SLIP-39's floor: 128 bits

# Sizes capped before anything is parsed. A 32-byte secret is a 33-word
# mnemonic of about 250 characters; these limits leave ample room.
_MAX_MNEMONIC_CHARS = 4096
MAX_SHARE_INPUT = 16 * 1024  # a share file or piped share: heading lines and the words
_MAX_SHARES_GIVEN = 4 * MAX_SHARES

_SHARE_DIGEST_DOMAIN = b"vault-share-v1\0"
_SECRET_COMMITMENT_DOMAIN = b"vault-share-secret-v1\0"

# With no passphrase, PBKDF2 inside SLIP-39's encryption protects nothing, so
# its iteration count only costs time; 0 is the smallest exponent SLIP-39 has.
_ITERATION_EXPONENT = 0

# shamir-mnemonic draws all its randomness (the identifier and the polynomial
# coefficients) from the module attribute ``shamir.RANDOM_BYTES``, which it
# documents as the place to override. It has no per-call parameter, so a
# caller's RNG is installed there for the duration of one split, under a lock
# so that two splits in this process never see each other's source.
_RANDOM_LOCK = threading.Lock()


# --- public values ----------------------------------------------------------


@dataclass(frozen=True)
class ShareSetRecord:
    """The public facts about one share set, safe for a signed transcript.

    Nothing here helps anyone rebuild the secret: the SLIP-39 identifier,
    threshold and count are printed in clear in every mnemonic, each share
    digest is a one-way hash of a whole mnemonic, and the commitment is a
    one-way hash of the secret. The commitment is only safe because the
    secrets vault splits (a token PIN, a KEK) are random with at least 128
    bits of entropy: nobody can guess candidates and compare hashes. Never
    use it for a secret a person chose.

    Attributes:
        identifier: the SLIP-39 identifier (15 bits) shared by every mnemonic of the set.
        threshold: how many shares rebuild the secret (m).
        count: how many shares were made (n).
        share_digests: SHA-256 hex of each normalised mnemonic, domain-separated, in member order.
        secret_commitment: SHA-256 hex of the domain-separated secret.
    """

    identifier: int
    threshold: int
    count: int
    share_digests: tuple[str, ...]
    secret_commitment: str

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON values."""
        return {
            "scheme": SCHEME,
            "identifier": self.identifier,
            "threshold": self.threshold,
            "count": self.count,
            "share_digests": list(self.share_digests),
            "secret_commitment": self.secret_commitment,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShareSetRecord:
        """Read a record written by :meth:`to_dict`.

        Raises:
            FormatError: a field is missing, has the wrong type, or is out of range.
        """
        if not isinstance(data, Mapping):
            raise FormatError("share set record: expected a JSON object")
        expected = {"scheme", "identifier", "threshold", "count", "share_digests", "secret_commitment"}
        if set(data) != expected:
            missing = sorted(expected - set(data))
            extra = sorted(set(data) - expected)
            raise FormatError(f"share set record: missing fields {missing}, unknown fields {extra}")
        if data["scheme"] != SCHEME:
            raise FormatError(f"share set record: scheme {data['scheme']!r} is not {SCHEME!r}")
        identifier = _int_field(data, "identifier", 0, (1 << 15) - 1)
        count = _int_field(data, "count", 1, MAX_SHARES)
        threshold = _int_field(data, "threshold", 1, count)
        digests = data["share_digests"]
        if not isinstance(digests, list) or len(digests) != count:
            raise FormatError(f"share set record: share_digests must be a list of {count} digests")
        for digest in digests:
            _check_hex_digest(digest, "share_digests")
        if len(set(digests)) != len(digests):
            raise FormatError("share set record: share_digests repeats a digest")
        _check_hex_digest(data["secret_commitment"], "secret_commitment")
        return cls(identifier, threshold, count, tuple(digests), data["secret_commitment"])


@dataclass(frozen=True)
class ShareSet:
    """The outcome of :func:`split_secret`: one mnemonic per custodian and the public record.

    The mnemonics are secret and kept out of ``repr`` so they never land in a
    log or a traceback by accident.
    """

    mnemonics: tuple[str, ...] = field(repr=False)  # in member order: mnemonics[0] is share 1
    record: ShareSetRecord


@dataclass(frozen=True)
class ShareCheck:
    """What :func:`check_share` established about one share."""

    member_index: int  # 1-based: the share's position in its set
    threshold: int
    count: int
    identifier: int

    def __str__(self) -> str:
        return f"share {self.member_index} of {self.count}, threshold {self.threshold}"


# --- splitting --------------------------------------------------------------


def split_secret(
    secret: bytes,
    threshold: int,
    count: int,
    *,
    random: Callable[[int], bytes] | None = None,
) -> ShareSet:
    """Split ``secret`` into ``count`` SLIP-39 mnemonics, any ``threshold`` of which rebuild it.

    One group, ``threshold``-of-``count`` members. There is deliberately no
    passphrase: it would be one more secret for the custodians to keep and
    lose, and the m-of-n split is already the protection.

    Args:
        secret: a random secret (PIN or KEK) of at least 16 bytes, even length.
        threshold: shares needed to rebuild it (m).
        count: shares made (n), at most 16.
        random: the source of randomness, e.g. the token's ``generate_random``;
            ``secrets.token_bytes`` when not given.

    Raises:
        ShareError: a parameter is out of range.
    """
    if not isinstance(secret, bytes):
        raise ShareError("the secret to split must be bytes")
    if len(secret) < MIN_SECRET_BYTES or len(secret) % 2:
        raise ShareError(
            f"a secret to split must be at least {MIN_SECRET_BYTES} bytes and an even number of bytes;"
            f" got {len(secret)}"
        )
    if not 1 <= count <= MAX_SHARES:
        raise ShareError(f"the number of shares must be between 1 and {MAX_SHARES}; got {count}")
    if not 1 <= threshold <= count:
        raise ShareError(f"the threshold must be between 1 and the number of shares ({count}); got {threshold}")
    if threshold == 1 and count > 1:
        raise ShareError(f"a 1-of-{count} split gives every custodian the whole secret; use a threshold of at least 2")

    with _random_source(random):
        groups = shamir_mnemonic.generate_mnemonics(
            1,
            [(threshold, count)],
            secret,
            passphrase=b"",
            extendable=True,
            iteration_exponent=_ITERATION_EXPONENT,
        )
    mnemonics = tuple(normalise_mnemonic(m) for m in groups[0])
    shares = [shamir_mnemonic.Share.from_mnemonic(m) for m in mnemonics]
    # generate_mnemonics returns members in order; the record relies on it.
    if [s.index for s in shares] != list(range(count)):
        raise AssertionError("shamir-mnemonic returned shares out of member order")
    record = ShareSetRecord(
        identifier=shares[0].identifier,
        threshold=threshold,
        count=count,
        share_digests=tuple(_share_digest(m) for m in mnemonics),
        secret_commitment=_secret_commitment(secret),
    )
    return ShareSet(mnemonics, record)


@contextmanager
def _random_source(random: Callable[[int], bytes] | None) -> Iterator[None]:
    """Make shamir-mnemonic draw from ``random`` while the block runs."""
    if random is None:
        yield
        return

    def draw(n: int) -> bytes:
        data = random(n)
        if not isinstance(data, bytes) or len(data) != n:
            raise ShareError(f"the random source did not return the {n} bytes asked for")
        return data

    with _RANDOM_LOCK:
        saved = shamir_mnemonic.shamir.RANDOM_BYTES
        shamir_mnemonic.shamir.RANDOM_BYTES = draw
        try:
            yield
        finally:
            shamir_mnemonic.shamir.RANDOM_BYTES = saved


# --- checking and combining -------------------------------------------------


def normalise_mnemonic(text: str) -> str:
    """A mnemonic as typed from paper, in canonical form: lower case, single spaces.

    >>> normalise_mnemonic("  Academic  ACID\\n  acne ")
    'academic acid acne'
    """
    return " ".join(text.lower().split())


def check_share(mnemonic: str, record: ShareSetRecord) -> ShareCheck:
    """Prove one share is intact and belongs to the set ``record`` describes.

    A custodian runs this alone: it needs no other share and learns nothing
    about the secret. It checks the words, the checksum, the identifier, the
    threshold, and that the share's digest is the one recorded for its member.

    Raises:
        ShareError: the share is mistyped, altered, or from another set.
    """
    normalised, share = _parse(mnemonic, None, SHARE_WORDS)
    _check_against_record(normalised, share, record, None)
    return ShareCheck(share.index + 1, share.member_threshold, record.count, share.identifier)


def check_typed_word(word: str, position: int) -> str:
    """One word of a share typed hidden, checked against the SLIP-39 list at once; normalised.

    The error names the word's position only, never the word: it was typed
    hidden and may be nearly right.

    Raises:
        ShareError: not a SLIP-39 word.
    """
    normalised = word.strip().lower()
    if normalised not in shamir_mnemonic.wordlist.WORD_INDEX_MAP:
        raise ShareError(f"word {position} is not a SLIP-39 word")
    return normalised


def check_words(mnemonic: str) -> None:
    """Check a whole share's words, length and checksum, without any record (for typed entry).

    Raises:
        ShareError: a word off the list, words missing, or a failed checksum.
    """
    _parse(mnemonic, None, SHARE_WORDS)


def combine_shares(mnemonics: Sequence[str], record: ShareSetRecord | None = None) -> bytes:
    """Rebuild the secret from at least ``threshold`` shares of one set.

    Every share given is checked; a share that is mistyped, altered, foreign
    or repeated is refused by its 1-based position in ``mnemonics``, never
    corrected. Shares beyond the threshold must agree with the others. When
    ``record`` is given, each share must be one it lists and the secret must
    match its commitment.

    Raises:
        ShareError: the reason, naming the share when one share is at fault.
    """
    if isinstance(mnemonics, str):
        raise ShareError("give the shares as a list of mnemonics, not one string")
    if not mnemonics:
        raise ShareError("no shares given")
    if len(mnemonics) > _MAX_SHARES_GIVEN:
        raise ShareError(f"{len(mnemonics)} shares given; a share set has at most {MAX_SHARES}")

    words = _expected_words(mnemonics)
    parsed = [_parse(m, position, words) for position, m in enumerate(mnemonics, start=1)]

    if record is not None:
        for position, (normalised, share) in enumerate(parsed, start=1):
            _check_against_record(normalised, share, record, position)
    else:
        # Without a record, the set is the one most shares agree on; the
        # others are named as foreign.
        sets = Counter(_set_parameters(share) for _, share in parsed)
        expected = max(sets, key=lambda p: (sets[p], -_first_position(parsed, p)))
        for position, (_, share) in enumerate(parsed, start=1):
            if _set_parameters(share) != expected:
                raise ShareError(f"share {position} belongs to another share set")

    by_member: dict[int, int] = {}  # member index -> first position holding it
    for position, (normalised, share) in enumerate(parsed, start=1):
        first = by_member.setdefault(share.index, position)
        if first != position:
            if parsed[first - 1][0] == normalised:
                raise ShareError(f"share {position} repeats share {first}; each share counts once")
            raise ShareError(
                f"shares {first} and {position} both claim to be member {share.index + 1}"
                " but differ; at least one is not genuine"
            )

    threshold = parsed[0][1].member_threshold
    count = record.count if record is not None else None
    if len(parsed) < threshold:
        of = f"{threshold} of {count}" if count is not None else str(threshold)
        raise ShareError(f"{of} shares needed: {len(parsed)} given, {threshold - len(parsed)} more missing")

    chosen = [normalised for normalised, _ in parsed[:threshold]]
    secret = _combine(chosen)
    # Any extra share must rebuild the same secret with threshold - 1 of the others.
    for position in range(threshold + 1, len(parsed) + 1):
        if _combine(chosen[: threshold - 1] + [parsed[position - 1][0]]) != secret:
            raise ShareError(f"share {position} does not agree with shares 1 to {threshold}; it is not genuine")

    if record is not None and not hmac.compare_digest(_secret_commitment(secret), record.secret_commitment):
        raise ShareError("the rebuilt secret does not match the share set record's commitment; wrong record or shares")
    return secret


# --- helpers ----------------------------------------------------------------


def _expected_words(mnemonics: Sequence[str]) -> int:
    """How many words each share should have: what most of the shares given have, else :data:`SHARE_WORDS`."""
    counts = Counter(len(m.split()) for m in mnemonics if isinstance(m, str) and len(m) <= _MAX_MNEMONIC_CHARS)
    ranked = counts.most_common()
    if not ranked:
        return SHARE_WORDS
    if len(ranked) == 1:  # all alike: one share alone is held to vault's length
        return ranked[0][0] if len(mnemonics) > 1 else SHARE_WORDS
    if ranked[0][1] > ranked[1][1]:
        return ranked[0][0]
    tied = [words for words, n in ranked if n == ranked[0][1]]
    return SHARE_WORDS if SHARE_WORDS in tied else max(tied)


def _parse(mnemonic: str, position: int | None, expected_words: int) -> tuple[str, Any]:
    """Normalise and decode one mnemonic, refusing it with a reason that names it.

    A share that does not decode and has other than ``expected_words`` words
    is refused as cut short (or overlong), saying how many words are missing.
    """
    name = f"share {position}" if position is not None else "the share"
    if not isinstance(mnemonic, str):
        raise ShareError(f"{name} is not text")
    if len(mnemonic) > _MAX_MNEMONIC_CHARS:
        raise ShareError(f"{name} is {len(mnemonic)} characters long; a share is far shorter")
    normalised = normalise_mnemonic(mnemonic)
    if not normalised:
        raise ShareError(f"{name} is empty")
    for index, word in enumerate(normalised.split(), start=1):
        if word not in shamir_mnemonic.wordlist.WORD_INDEX_MAP:
            raise ShareError(f"{name}: word {index} {word!r} is not a SLIP-39 word")
    try:
        share = shamir_mnemonic.Share.from_mnemonic(normalised)
    except shamir_mnemonic.MnemonicError as e:
        words = len(normalised.split())
        if words < expected_words:
            raise ShareError(
                f"{name} is cut short: {words} of {expected_words} words, {expected_words - words} missing"
            ) from e
        if words > expected_words:
            raise ShareError(
                f"{name} has {words} words, {words - expected_words} more than the {expected_words} of a share"
            ) from e
        if "checksum" in str(e):
            raise ShareError(
                f"{name} fails its checksum: a word is mistyped or was altered; it is refused, not corrected"
            ) from e
        raise ShareError(f"{name} is not a valid SLIP-39 share: {e}") from e
    if share.group_count != 1 or share.group_threshold != 1:
        raise ShareError(f"{name} belongs to a multi-group SLIP-39 backup, not a vault share set")
    return normalised, share


def _check_against_record(normalised: str, share: Any, record: ShareSetRecord, position: int | None) -> None:
    name = f"share {position}" if position is not None else "the share"
    if share.identifier != record.identifier:
        raise ShareError(
            f"{name} belongs to another share set (identifier {share.identifier}, this set is {record.identifier})"
        )
    if share.member_threshold != record.threshold or share.index >= record.count:
        raise ShareError(
            f"{name} belongs to another share set (member {share.index + 1}, threshold {share.member_threshold};"
            f" this set is {record.threshold} of {record.count})"
        )
    if not hmac.compare_digest(_share_digest(normalised), record.share_digests[share.index]):
        raise ShareError(f"{name} belongs to another share set (its digest is not the one recorded)")


def _set_parameters(share: Any) -> tuple[int, bool, int, int]:
    return (share.identifier, share.extendable, share.iteration_exponent, share.member_threshold)


def _first_position(parsed: Sequence[tuple[str, Any]], parameters: tuple[int, bool, int, int]) -> int:
    return next(i for i, (_, share) in enumerate(parsed) if _set_parameters(share) == parameters)


def _combine(mnemonics: list[str]) -> bytes:
    try:
        secret: bytes = shamir_mnemonic.combine_mnemonics(mnemonics)
    except shamir_mnemonic.MnemonicError as e:
        raise ShareError(f"the shares do not combine ({e}); at least one is not genuine") from e
    return secret


def _share_digest(normalised: str) -> str:
    return hashlib.sha256(_SHARE_DIGEST_DOMAIN + normalised.encode("ascii")).hexdigest()


def _secret_commitment(secret: bytes) -> str:
    return hashlib.sha256(_SECRET_COMMITMENT_DOMAIN + secret).hexdigest()


def _int_field(data: Mapping[str, Any], name: str, low: int, high: int) -> int:
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FormatError(f"share set record: {name} must be an integer from {low} to {high}")
    return value


def _check_hex_digest(value: object, name: str) -> None:
    if not isinstance(value, str) or len(value) != 64 or value.strip("0123456789abcdef"):
        raise FormatError(f"share set record: {name} must be lower-case SHA-256 hex")
