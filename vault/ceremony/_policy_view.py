"""What a trust policy says, and what changes from one version to the next, for people and tools.

``vault policy show`` and ``vault policy diff`` print these views, and a
ceremony shows the diff (and the digest of the statement about to be signed,
as words to read aloud) before the officers agree to sign a new version.

The views are read from a policy's predicate: every key by its holder with
its full key id, the thresholds, the enrolled stations, the revocations, the
custody share sets, the version and dates. Two digests name a policy:

- the **statement digest**, SHA-256 of the signed statement bytes: what the
  officers read aloud before signing, known before any signature exists;
- the **file digest**, SHA-256 of the signed file: what the root token's
  head and later transcripts record.

Example::

    from vault.ceremony._policy_view import diff_policies, read_policy_view

    old = read_policy_view(Path("policy-v2.json").read_bytes(), root_certificate=None, now=now)
    new = read_policy_view(Path("policy-v3.json").read_bytes(), root_certificate=None, now=now)
    print("\\n".join(diff_policies(old, new).lines()))
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography import x509

from vault._words import readable_digest
from vault.formats import Envelope
from vault.policy import MAX_POLICY_SIZE, embedded_root_certificate, load_policy

__all__ = ["KeyHolding", "PolicyDiff", "PolicyView", "diff_policies", "policy_view", "read_policy_view"]

_PARTS = {"signing": "signing", "decryption": "decryption", "issuing_ca": "issuing CA"}


@dataclass(frozen=True, order=True)
class KeyHolding:
    """One key in one role: ``part`` names a station's key (signing, decryption, issuing_ca), else ``""``."""

    role: str
    holder: str
    part: str
    key_id: str

    @property
    def slot(self) -> tuple[str, str, str]:
        """Where the key sits, whatever key it is."""
        return (self.role, self.holder, self.part)

    def name(self) -> str:
        """``approver approver-2``, ``station station-1 signing``, ``release signer``."""
        if self.role == "station":
            return f"station {self.holder} {_PARTS.get(self.part, self.part)}"
        if self.role in ("release-signer", "auditor"):
            return self.role.replace("-", " ")
        return f"{self.role} {self.holder}"

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "holder": self.holder, "part": self.part, "key_id": self.key_id}


@dataclass(frozen=True)
class PolicyView:
    """What one trust policy says."""

    version: int
    issued: str
    expires: str
    rehearsal: bool
    root_key_id: str
    officers_threshold: int
    approvers_threshold: int
    keys: tuple[KeyHolding, ...]
    stations: Mapping[str, str]  # station id -> name
    revoked: tuple[Mapping[str, Any], ...]
    custody: Mapping[str, str]  # share set name -> "m of n"
    statement_sha256: str
    cosigners_threshold: int = 0
    file_sha256: str | None = None
    root_pinned: bool = False
    expired: bool = False
    notes: tuple[str, ...] = field(default=())

    def count(self, role: str) -> int:
        return sum(1 for k in self.keys if k.role == role)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "issued": self.issued,
            "expires": self.expires,
            "expired": self.expired,
            "rehearsal": self.rehearsal,
            "root_key_id": self.root_key_id,
            "root_pinned": self.root_pinned,
            "statement_sha256": self.statement_sha256,
            "statement_words": readable_digest(self.statement_sha256),
            "file_sha256": self.file_sha256,
            "officers": {"threshold": self.officers_threshold, "count": self.count("officer")},
            "approvers": {"threshold": self.approvers_threshold, "count": self.count("approver")},
            "cosigners": {"threshold": self.cosigners_threshold, "count": self.count("cosigner")},
            "keys": [k.to_dict() for k in self.keys],
            "stations": dict(self.stations),
            "revoked": [dict(r) for r in self.revoked],
            "custody": dict(self.custody),
        }

    def lines(self) -> list[str]:
        """The view as text, one fact a line, key ids in full."""
        mark = " (REHEARSAL)" if self.rehearsal else ""
        out = [f"trust policy v{self.version}{mark}"]
        out.append(f"  issued    {self.issued}")
        out.append(f"  expires   {self.expires}{'  (EXPIRED)' if self.expired else ''}")
        out.append(f"  statement sha256 {self.statement_sha256}")
        out.append(f"            words  {readable_digest(self.statement_sha256)}")
        if self.file_sha256:
            out.append(f"  file      sha256 {self.file_sha256}")
        out.append(f"  root      {self.root_key_id}{'' if self.root_pinned else '  (not pinned)'}")
        out.append(f"officers: {self.officers_threshold} of {self.count('officer')}")
        out += [f"  {k.holder:<20} {k.key_id}" for k in self.keys if k.role == "officer"]
        out.append(f"approvers: {self.approvers_threshold} of {self.count('approver')}")
        out += [f"  {k.holder:<20} {k.key_id}" for k in self.keys if k.role == "approver"]
        if self.count("cosigner"):
            out.append(f"cosigners: {self.cosigners_threshold} of {self.count('cosigner')}")
            out += [f"  {k.holder:<20} {k.key_id}" for k in self.keys if k.role == "cosigner"]
        for role in ("release-signer", "auditor"):
            held = [k for k in self.keys if k.role == role]
            out.append(f"{role.replace('-', ' ')}: {held[0].key_id if held else 'none'}")
        out.append(f"stations: {len(self.stations)}")
        for sid, name in self.stations.items():
            out.append(f"  {sid} ({name})")
            out += [
                f"    {_PARTS.get(k.part, k.part):<18} {k.key_id}"
                for k in self.keys
                if k.role == "station" and k.holder == sid
            ]
        out.append(f"revoked: {len(self.revoked)}")
        out += [_revocation_line(r) for r in self.revoked]
        out.append("custody: " + (", ".join(f"{k} {v}" for k, v in self.custody.items()) or "none"))
        return out + list(self.notes)


def _revocation_line(r: Mapping[str, Any]) -> str:
    return f"  {r.get('key_id')}  {r.get('role')} {r.get('holder')}, in v{r.get('version')}: {r.get('reason')}"


def policy_view(predicate: Mapping[str, Any], *, statement_sha256: str, file_sha256: str | None = None) -> PolicyView:
    """The view of a trust-policy predicate (of a verified policy, or one a ceremony is about to sign)."""
    keys: list[KeyHolding] = []
    for holder, entry in predicate["officers"]["keys"].items():
        keys.append(KeyHolding("officer", holder, "", entry["key_id"]))
    for holder, entry in predicate["approvers"]["keys"].items():
        keys.append(KeyHolding("approver", holder, "", entry["key_id"]))
    for holder, entry in (predicate.get("cosigners") or {"keys": {}})["keys"].items():
        keys.append(KeyHolding("cosigner", holder, "", entry["key_id"]))
    for role in ("release_signer", "auditor"):
        if predicate[role] is not None:
            name = role.replace("_", "-")
            keys.append(KeyHolding(name, name, "", predicate[role]["key_id"]))
    stations = {}
    for sid, entry in predicate["stations"].items():
        stations[sid] = str(entry["name"])
        keys += [KeyHolding("station", sid, part, entry[part]["key_id"]) for part in _PARTS]
    custody = {}
    for name, record in predicate["custody"].items():
        if isinstance(record, Mapping):
            custody[name] = f"{record.get('threshold')} of {record.get('count')}"
    return PolicyView(
        version=predicate["version"],
        issued=predicate["issued"],
        expires=predicate["expires"],
        rehearsal=predicate["rehearsal"],
        root_key_id=predicate["root"]["key_id"],
        officers_threshold=predicate["officers"]["threshold"],
        approvers_threshold=predicate["approvers"]["threshold"],
        cosigners_threshold=(predicate.get("cosigners") or {"threshold": 0})["threshold"],
        keys=tuple(keys),
        stations=stations,
        revoked=tuple(dict(r) for r in predicate["revoked"]),
        custody=custody,
        statement_sha256=statement_sha256,
        file_sha256=file_sha256,
    )


def read_policy_view(data: bytes, *, root_certificate: x509.Certificate | None, now: datetime) -> PolicyView:
    """Verify a policy file (against ``root_certificate``, or the root it names itself) and view it.

    Every check :func:`vault.policy.load_policy` makes is made, except expiry
    (shown instead) and, without ``root_certificate``, the pin.

    Raises:
        VaultError: the file is not a trust policy, or it does not verify.
    """
    pinned = root_certificate is not None
    root = root_certificate if root_certificate is not None else embedded_root_certificate(data)
    policy = load_policy(data, root, now=now, allow_expired=True)
    payload = Envelope.from_json(data, max_size=MAX_POLICY_SIZE).payload
    statement_sha256 = hashlib.sha256(payload).hexdigest()
    view = policy_view(policy.predicate, statement_sha256=statement_sha256, file_sha256=policy.digest)
    notes = () if pinned else ("note: root not pinned; pass --root-cert to check it is your root",)
    return PolicyView(**{**view.__dict__, "root_pinned": pinned, "expired": now >= policy.expires, "notes": notes})


@dataclass(frozen=True)
class PolicyDiff:
    """What changes from ``old`` to ``new``."""

    old: PolicyView
    new: PolicyView
    added: tuple[KeyHolding, ...]
    removed: tuple[KeyHolding, ...]
    rotated: tuple[tuple[KeyHolding, KeyHolding], ...]  # (old, new) in the same slot
    enrolled: tuple[str, ...]
    unenrolled: tuple[str, ...]
    revoked: tuple[Mapping[str, Any], ...]  # revocations new in ``new``
    unrevoked: tuple[Mapping[str, Any], ...]  # revocations ``new`` no longer lists (never expected)
    changed: tuple[tuple[str, Any, Any], ...]  # (what, old, new): thresholds, dates, custody, root, rehearsal

    def to_dict(self) -> dict[str, Any]:
        return {
            "old": {"version": self.old.version, "statement_sha256": self.old.statement_sha256,
                    "file_sha256": self.old.file_sha256},
            "new": {"version": self.new.version, "statement_sha256": self.new.statement_sha256,
                    "statement_words": readable_digest(self.new.statement_sha256),
                    "file_sha256": self.new.file_sha256},
            "changed": {what: {"old": a, "new": b} for what, a, b in self.changed},
            "keys_added": [k.to_dict() for k in self.added],
            "keys_removed": [k.to_dict() for k in self.removed],
            "keys_rotated": [{"old": a.to_dict(), "new": b.to_dict()} for a, b in self.rotated],
            "stations_enrolled": list(self.enrolled),
            "stations_removed": list(self.unenrolled),
            "revoked": [dict(r) for r in self.revoked],
            "unrevoked": [dict(r) for r in self.unrevoked],
        }  # fmt: skip

    def lines(self) -> list[str]:
        """The changes as text, one a line, key ids in full."""
        out = [f"trust policy v{self.old.version} -> v{self.new.version}"]
        for what, a, b in self.changed:
            out.append(f"  ~ {what}: {a} -> {b}")
        for sid in self.enrolled:
            out.append(f"  + station {sid} enrolled ({self.new.stations[sid]})")
        for sid in self.unenrolled:
            out.append(f"  - station {sid} removed ({self.old.stations[sid]})")
        for k in self.added:
            out.append(f"  + {k.name()}: {k.key_id}")
        for a, b in self.rotated:
            out.append(f"  ~ {a.name()}: {a.key_id} -> {b.key_id}")
        for k in self.removed:
            out.append(f"  - {k.name()}: {k.key_id}")
        for r in self.revoked:
            out.append(f"  + revoked{_revocation_line(r)[1:]}")
        for r in self.unrevoked:
            out.append(f"  ! no longer revoked{_revocation_line(r)[1:]}")
        if len(out) == 1:
            out.append("  no change but the version")
        return out


def diff_policies(old: PolicyView, new: PolicyView) -> PolicyDiff:
    """What changes from ``old`` to ``new``: keys by holder, stations, revocations, thresholds, dates."""
    old_slots = {k.slot: k for k in old.keys}
    new_slots = {k.slot: k for k in new.keys}
    added = tuple(new_slots[s] for s in new_slots if s not in old_slots)
    removed = tuple(old_slots[s] for s in old_slots if s not in new_slots)
    rotated = tuple(
        (old_slots[s], new_slots[s]) for s in new_slots if s in old_slots and old_slots[s].key_id != new_slots[s].key_id
    )
    changed: list[tuple[str, Any, Any]] = []
    for what, a, b in (
        ("version", old.version, new.version),
        ("rehearsal", old.rehearsal, new.rehearsal),
        ("root", old.root_key_id, new.root_key_id),
        ("officers threshold", old.officers_threshold, new.officers_threshold),
        ("approvers threshold", old.approvers_threshold, new.approvers_threshold),
        ("issued", old.issued, new.issued),
        ("expires", old.expires, new.expires),
    ):
        if a != b and what != "version":
            changed.append((what, a, b))
    for name in sorted(set(old.custody) | set(new.custody)):
        if old.custody.get(name) != new.custody.get(name):
            changed.append((f"custody {name}", old.custody.get(name, "none"), new.custody.get(name, "none")))
    old_revoked = {_revocation_key(r) for r in old.revoked}
    new_revoked = {_revocation_key(r) for r in new.revoked}
    return PolicyDiff(
        old=old,
        new=new,
        added=added,
        removed=removed,
        rotated=rotated,
        enrolled=tuple(s for s in new.stations if s not in old.stations),
        unenrolled=tuple(s for s in old.stations if s not in new.stations),
        revoked=tuple(r for r in new.revoked if _revocation_key(r) not in old_revoked),
        unrevoked=tuple(r for r in old.revoked if _revocation_key(r) not in new_revoked),
        changed=tuple(changed),
    )


def _revocation_key(r: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(str(r.get(k)) for k in ("key_id", "role", "holder", "reason", "version"))
