"""Ceremony scripts and credentials files: strict YAML, errors naming field and line.

The script is what officers review; the credentials file says where the
tokens are and how their PINs are read, so the same script runs as a
rehearsal on SoftHSM2 and for real on hardware tokens.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vault._files import read_capped
from vault._yaml import Enum, Field, Int, List, Map, Record, Str, Tagged, load_yaml
from vault.ceremony._common import Credentials, Officer
from vault.ceremony._operations import (
    Approvers,
    Backup,
    EnrolStation,
    IssueRoles,
    Recover,
    RenewPolicy,
    Revoke,
    RoleSpec,
)
from vault.ceremony._root import RootScript
from vault.crypto import CURVES
from vault.errors import ScriptError, UriError
from vault.policy import ROLES
from vault.token import Pkcs11Uri, parse_uri

MAX_SCRIPT = 256 * 1024
_ID = r"[a-z][a-z0-9-]{0,31}"
_LABEL = r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,31}"

_PEOPLE = List(Record({"id": Field(Str(pattern=_ID)), "name": Field(Str(max_len=200))}), min_len=1, max_len=16)
_WITNESSES = Field(List(Str(max_len=200), max_len=32), required=False, default=[])
_DAYS = Int(min=1, max=36500)
_MEMBERS = Record(  # a group of named role holders with a threshold: the approvers, the cosigners
    {
        "threshold": Field(Int(min=1, max=16)),
        "key_label": Field(Str(pattern=_LABEL)),
        "validity_days": Field(_DAYS),
        "members": Field(_PEOPLE),
    }
)


def _kind(name: str) -> Field:
    return Field(Enum([name]))


_ROOT = Record(
    {
        "ceremony": _kind("root"),
        "name": Field(Str(max_len=200)),
        "organization": Field(Str(max_len=200)),
        "officers": Field(
            Record(
                {
                    "threshold": Field(Int(min=2, max=16)),
                    "members": Field(
                        List(
                            Record(
                                {
                                    "id": Field(Str(pattern=_ID)),
                                    "name": Field(Str(max_len=200)),
                                    "custody": Field(Enum(["paper", "sealed"]), required=False, default="paper"),
                                }
                            ),
                            min_len=2,
                            max_len=16,
                        )
                    ),
                    "key_label": Field(Str(pattern=_LABEL)),
                    "seal_key_label": Field(Str(pattern=_LABEL), required=False, default="officer-unseal"),
                }
            )
        ),
        "witnesses": _WITNESSES,
        "root": Field(
            Record(
                {
                    "key_label": Field(Str(pattern=_LABEL)),
                    "curve": Field(Enum(list(CURVES))),
                    "certificate": Field(
                        Record(
                            {
                                "common_name": Field(Str(max_len=64)),
                                "validity_years": Field(Int(min=1, max=100)),
                            }
                        )
                    ),
                }
            )
        ),
        "policy": Field(
            Record({"expires_days": Field(Int(min=1, max=3660)), "approvers_threshold": Field(Int(min=1, max=16))})
        ),
    }
)


def _operation(kind: str, fields: dict[str, Field], *, policy: bool = True) -> Record:
    """The fields every ceremony after the root one has, plus ``fields``."""
    common = {"ceremony": _kind(kind), "name": Field(Str(max_len=200)), "witnesses": _WITNESSES}
    if policy:
        common["policy"] = Field(Record({"expires_days": Field(Int(min=1, max=3660))}))
    return Record({**common, **fields})


_ROLE = Record({"key_label": Field(Str(pattern=_LABEL)), "validity_days": Field(_DAYS)})

_SCHEMA = Tagged(
    "ceremony",
    {
        "root": _ROOT,
        "enrol-station": _operation(
            "enrol-station",
            {
                "station": Field(
                    Record(
                        {
                            "id": Field(Str(pattern=_ID), required=False),
                            "name": Field(Str(max_len=200), required=False),
                            "validity_days": Field(_DAYS),
                        }
                    )
                )
            },
        ),
        "roles": _operation(
            "roles",
            {
                "curve": Field(Enum(list(CURVES)), required=False, default="P-256"),
                "release_signer": Field(_ROLE, required=False),
                "approvers": Field(_MEMBERS, required=False),
                "auditor": Field(_ROLE, required=False),
                "cosigners": Field(_MEMBERS, required=False),
            },
        ),
        "policy": Record(
            {
                "ceremony": _kind("policy"),
                "name": Field(Str(max_len=200)),
                "witnesses": _WITNESSES,
                "policy": Field(
                    Record(
                        {
                            "expires_days": Field(Int(min=1, max=3660)),
                            "approvers_threshold": Field(Int(min=1, max=16), required=False),
                        }
                    )
                ),
            }
        ),
        "revoke": _operation(
            "revoke",
            {
                "revoke": Field(
                    List(
                        Record(
                            {
                                "role": Field(Enum([r for r in ROLES if r != "officer"])),
                                "id": Field(Str(pattern=_ID), required=False),
                                "reason": Field(Str(max_len=200)),
                            }
                        ),
                        min_len=1,
                        max_len=64,
                    )
                )
            },
        ),
        "backup": _operation(
            "backup",
            {"custodians": Field(Record({"threshold": Field(Int(min=2, max=16)), "members": Field(_PEOPLE)}))},
            policy=False,
        ),
        "recover": _operation("recover", {}, policy=False),
    },
)

_CREDENTIALS_SCHEMA = Record(
    {
        "root": Field(Str(max_len=4096)),
        "root_so": Field(Str(max_len=4096), required=False),
        "officers": Field(Map(Str(max_len=4096), key=Str(pattern=_ID), min_len=1, max_len=16)),
        "release": Field(Str(max_len=4096), required=False),
        "approvers": Field(Map(Str(max_len=4096), key=Str(pattern=_ID), max_len=16), required=False, default={}),
        "auditor": Field(Str(max_len=4096), required=False),
        "cosigners": Field(Map(Str(max_len=4096), key=Str(pattern=_ID), max_len=16), required=False, default={}),
        "recovery": Field(Str(max_len=4096), required=False),
        "recovery_so": Field(Str(max_len=4096), required=False),
    }
)


@dataclass(frozen=True)
class OperationScript:
    """A reviewed script for a ceremony after the root one, parsed.

    ``spec`` is the operation's own part (:class:`EnrolStation`, :class:`IssueRoles`, ...).
    """

    kind: str
    name: str
    witnesses: tuple[str, ...]
    policy_expires_days: int | None
    spec: Any
    source_digest: str


def _read(path: Path, what: str) -> bytes:
    return read_capped(path, MAX_SCRIPT, what)


def load_script(path: Path) -> RootScript | OperationScript:
    """Parse and check a ceremony script of any type (its ``ceremony:`` field says which).

    Raises:
        ScriptError: a field is unknown, missing, mistyped or out of range (with its line).
    """
    data = _read(path, "ceremony script")
    doc: dict[str, Any] = load_yaml(data, _SCHEMA, source=str(path))
    digest = hashlib.sha256(data).hexdigest()
    kind = doc["ceremony"]
    if kind == "root":
        return _root_script(doc, path, digest)
    policy = doc.get("policy") or {}
    return OperationScript(
        kind=kind,
        name=doc["name"],
        witnesses=tuple(doc["witnesses"]),
        policy_expires_days=policy.get("expires_days"),
        spec=_operation_spec(kind, doc, path),
        source_digest=digest,
    )


def load_root_script(path: Path) -> RootScript:
    """Parse a script that must be a root ceremony's.

    Raises:
        ScriptError: it is not a valid root ceremony script.
    """
    script = load_script(path)
    if not isinstance(script, RootScript):
        raise ScriptError(f"{path}: ceremony: this is a '{script.kind}' script, not a root ceremony")
    return script


def _people(entries: list[dict[str, str]], path: Path, field: str) -> tuple[Officer, ...]:
    members = tuple(Officer(id=m["id"], name=m["name"], custody=m.get("custody", "paper")) for m in entries)
    ids = [m.id for m in members]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ScriptError(f"{path}: {field}: id '{duplicates[0]}' appears twice")
    return members


def _root_script(doc: dict[str, Any], path: Path, digest: str) -> RootScript:
    officers = doc["officers"]
    members = _people(officers["members"], path, "officers.members")
    if officers["threshold"] > len(members):
        raise ScriptError(
            f"{path}: officers.threshold: {officers['threshold']} is more than the {len(members)} officers named"
        )
    root = doc["root"]
    return RootScript(
        name=doc["name"],
        organization=doc["organization"],
        officers=members,
        threshold=officers["threshold"],
        witnesses=tuple(doc["witnesses"]),
        officer_key_label=officers["key_label"],
        seal_key_label=officers["seal_key_label"],
        root_key_label=root["key_label"],
        curve=root["curve"],
        root_common_name=root["certificate"]["common_name"],
        root_validity_years=root["certificate"]["validity_years"],
        policy_expires_days=doc["policy"]["expires_days"],
        approvers_threshold=doc["policy"]["approvers_threshold"],
        source_digest=digest,
    )


def _operation_spec(kind: str, doc: dict[str, Any], path: Path) -> Any:
    if kind == "enrol-station":
        station = doc["station"]
        if station["name"] is not None and station["id"] is None:
            raise ScriptError(f"{path}: station.name: a name needs an id; leave both out to take them from the request")
        return EnrolStation(station["id"], station["name"], station["validity_days"])
    if kind == "roles":
        return IssueRoles(
            curve=doc["curve"],
            release_signer=RoleSpec(**doc["release_signer"]) if doc["release_signer"] else None,
            approvers=_members(doc["approvers"], path, "approvers"),
            auditor=RoleSpec(**doc["auditor"]) if doc["auditor"] else None,
            cosigners=_members(doc["cosigners"], path, "cosigners"),
        )
    if kind == "policy":
        return RenewPolicy(doc["policy"].get("approvers_threshold"))
    if kind == "revoke":
        entries = []
        for i, entry in enumerate(doc["revoke"]):
            needs_id = entry["role"] in ("station", "approver", "cosigner")
            if needs_id != (entry["id"] is not None):
                what = "needs an 'id'" if needs_id else "takes no 'id'"
                raise ScriptError(f"{path}: revoke[{i}]: role '{entry['role']}' {what}")
            entries.append((entry["role"], entry["id"], entry["reason"]))
        return Revoke(tuple(entries))
    if kind == "backup":
        custodians = doc["custodians"]
        members = _people(custodians["members"], path, "custodians.members")
        if custodians["threshold"] > len(members):
            raise ScriptError(
                f"{path}: custodians.threshold: {custodians['threshold']} is more than the {len(members)} custodians"
            )
        return Backup(custodians["threshold"], members)
    return Recover()


def _members(group: dict[str, Any] | None, path: Path, what: str) -> Approvers | None:
    """A group of role holders (``approvers:``, ``cosigners:``), its threshold no more than its members."""
    if group is None:
        return None
    members = _people(group["members"], path, f"{what}.members")
    if group["threshold"] > len(members):
        raise ScriptError(f"{path}: {what}.threshold: {group['threshold']} is more than the {len(members)} {what}")
    return Approvers(group["threshold"], group["key_label"], group["validity_days"], members)


def pin_source_from(uri: Pkcs11Uri, base: Path) -> Pkcs11Uri:
    """``uri`` with a relative ``file:`` PIN source taken from the folder ``base`` (a file's own folder)."""
    source = uri.pin_source
    if source and source.startswith("file:") and not source[5:].startswith("/"):
        return dataclasses.replace(uri, pin_source=f"file:{(base / source[5:]).resolve()}")
    return uri


def load_credentials(path: Path) -> Credentials:
    """Parse a credentials file; relative ``file:`` PIN sources are taken from its folder.

    Raises:
        ScriptError: a field is wrong, or a URI is not a valid PKCS#11 URI.
    """
    doc: dict[str, Any] = load_yaml(_read(path, "credentials file"), _CREDENTIALS_SCHEMA, source=str(path))
    base = path.resolve().parent

    def uri(text: str, field: str) -> Pkcs11Uri:
        try:
            parsed = parse_uri(text)
        except UriError as e:
            raise ScriptError(f"{path}: {field}: {e}") from e
        return pin_source_from(parsed, base)

    def optional(name: str) -> Pkcs11Uri | None:
        return uri(doc[name], name) if doc[name] is not None else None

    return Credentials(
        root=uri(doc["root"], "root"),
        officers={oid: uri(text, f"officers.{oid}") for oid, text in doc["officers"].items()},
        root_so=optional("root_so"),
        release=optional("release"),
        approvers={aid: uri(text, f"approvers.{aid}") for aid, text in doc["approvers"].items()},
        auditor=optional("auditor"),
        cosigners={cid: uri(text, f"cosigners.{cid}") for cid, text in doc["cosigners"].items()},
        recovery=optional("recovery"),
        recovery_so=optional("recovery_so"),
    )
