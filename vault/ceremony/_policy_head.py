"""The root token's policy head: the last trust policy version the root signed, and its digest.

The root token keeps one head record (:mod:`vault.token._heads`) named
``root-policy`` whose value is ``{"version": n, "sha256": "<hex>"}``, the
SHA-256 of the signed policy file's bytes. It is written in the same root
token session that signs the policy, once the officers' signatures are on it
and before the file is written, so the token never vouches for two different
files of one version.

Every ceremony after the root one checks the policy it is given against the
head before anything irreversible happens (:func:`check_policy_head`):

- the token holds a later version: refused, naming the version and digest
  the token holds (a stale policy file; signing from it would fork the
  policy history);
- the token holds this version with another digest: refused (two different
  files claim one version; the token's is the real one);
- the token holds this version and digest: the ceremony goes on;
- the token holds an earlier version, or no head at all (a token from before
  heads, or whose head write was lost): the given policy verified against the
  pinned root, so the root signed it; the token adopts its version and digest.

Example::

    with open_token(root_uri, rw=True) as token:
        head, how = check_policy_head(token, policy.version, policy.digest)
        ...  # sign version n+1, then
        advance_policy_head(token, policy.version + 1, new_digest, after=head)
"""

from __future__ import annotations

import re

from vault.errors import PolicyError, RollbackError, StateError
from vault.token import Head, TokenSession

POLICY_HEAD = "root-policy"

_DIGEST = re.compile(r"[0-9a-f]{64}")


def short(digest: str) -> str:
    """A digest as people compare it with ``sha256sum``: its first 16 hex digits."""
    return f"{digest[:16]}…"


def head_policy(head: Head, token_label: str) -> tuple[int, str]:
    """The (version, sha256) a ``root-policy`` head record holds.

    Raises:
        StateError: the record is not one vault wrote.
    """
    version, digest = head.value.get("version"), head.value.get("sha256")
    if (
        set(head.value) != {"version", "sha256"}
        or not isinstance(version, int)
        or isinstance(version, bool)
        or version < 1
        or not isinstance(digest, str)
        or not _DIGEST.fullmatch(digest)
    ):
        raise StateError(f"the '{POLICY_HEAD}' head record on token '{token_label}' is not one vault wrote")
    return version, digest


def check_policy_head(token: TokenSession, version: int, digest: str) -> tuple[Head, str]:
    """Check the policy a ceremony starts from against the root token's head; adopt it where the token is behind.

    Args:
        token: the root token, opened read-write.
        version: the given policy's version (it verified against the pinned root).
        digest: SHA-256 (hex) of the given policy file's bytes.

    Returns:
        The head as it now stands, and how the policy matched it: ``"current"``,
        ``"adopted"`` (the token had no head) or ``"caught-up"`` (the token
        held an earlier version).

    Raises:
        RollbackError: the token already signed a later version.
        PolicyError: the token signed another file of this version.
        StateError: the token's head record is not vault's.
    """
    head = token.head(POLICY_HEAD)
    if head is None:
        return token.write_head(POLICY_HEAD, _value(version, digest), after=None), "adopted"
    held_version, held_digest = head_policy(head, token.label)
    if held_version > version:
        raise RollbackError(
            f"the root token already signed trust policy v{held_version} (sha256 {short(held_digest)}); "
            f"pass the current policy, v{held_version}"
        )
    if held_version == version:
        if held_digest != digest:
            raise PolicyError(
                f"the root token signed another trust policy v{version} (sha256 {short(held_digest)}) than the one "
                f"given (sha256 {short(digest)}); pass the policy the token holds"
            )
        return head, "current"
    return token.write_head(POLICY_HEAD, _value(version, digest), after=head), "caught-up"


def check_unchanged(token: TokenSession, head: Head | None) -> None:
    """Refuse to go on if the root token's head is no longer ``head`` (another ceremony signed meanwhile)."""
    if token.head(POLICY_HEAD) != head:
        raise StateError(
            f"the root token's '{POLICY_HEAD}' head changed during this ceremony (another ceremony signed "
            "meanwhile); start again from the current policy"
        )


def advance_policy_head(token: TokenSession, version: int, digest: str, *, after: Head | None) -> Head:
    """Record on the root token that it signed ``version``, whose file has SHA-256 ``digest``.

    Raises:
        StateError: the head is no longer ``after``.
        MechanismNotSupportedError: the token cannot store data objects.
    """
    return token.write_head(POLICY_HEAD, _value(version, digest), after=after)


def _value(version: int, digest: str) -> dict[str, object]:
    return {"version": version, "sha256": digest}
