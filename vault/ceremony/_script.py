"""Ceremony scripts and credentials files: strict YAML, errors naming field and line.

The script is what officers review; the credentials file says where the
tokens are and how their PINs are read, so the same script runs as a
rehearsal on SoftHSM2 and for real on hardware tokens.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from vault._yaml import Enum, Field, Int, List, Map, Record, Str, load_yaml
from vault.ceremony._root import Credentials, Officer, RootScript
from vault.crypto import CURVES
from vault.errors import InputError, ScriptError, UriError
from vault.token import Pkcs11Uri, parse_uri

MAX_SCRIPT = 256 * 1024
_ID = r"[a-z][a-z0-9-]{0,31}"
_LABEL = r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,31}"

_ROOT_SCHEMA = Record(
    {
        "ceremony": Field(Enum(["root"])),
        "name": Field(Str(max_len=200)),
        "organization": Field(Str(max_len=200)),
        "officers": Field(
            Record(
                {
                    "threshold": Field(Int(min=2, max=16)),
                    "members": Field(
                        List(
                            Record({"id": Field(Str(pattern=_ID)), "name": Field(Str(max_len=200))}),
                            min_len=2,
                            max_len=16,
                        )
                    ),
                    "key_label": Field(Str(pattern=_LABEL)),
                }
            )
        ),
        "witnesses": Field(List(Str(max_len=200), max_len=32), required=False, default=[]),
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

_CREDENTIALS_SCHEMA = Record(
    {
        "root": Field(Str(max_len=4096)),
        "officers": Field(Map(Str(max_len=4096), key=Str(pattern=_ID), min_len=1, max_len=16)),
    }
)


def _read(path: Path, what: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_SCRIPT:
            raise ScriptError(f"{path}: {what} is larger than {MAX_SCRIPT // 1024} KiB")
        return path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {what} {path}: {e.strerror}") from e


def load_root_script(path: Path) -> RootScript:
    """Parse and check a root ceremony script.

    Raises:
        ScriptError: a field is unknown, missing, mistyped or out of range (with its line).
    """
    data = _read(path, "ceremony script")
    doc: dict[str, Any] = load_yaml(data, _ROOT_SCHEMA, source=str(path))
    officers = doc["officers"]
    members = tuple(Officer(id=m["id"], name=m["name"]) for m in officers["members"])
    ids = [m.id for m in members]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ScriptError(f"{path}: officers.members: officer id '{duplicates[0]}' appears twice")
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
        root_key_label=root["key_label"],
        curve=root["curve"],
        root_common_name=root["certificate"]["common_name"],
        root_validity_years=root["certificate"]["validity_years"],
        policy_expires_days=doc["policy"]["expires_days"],
        approvers_threshold=doc["policy"]["approvers_threshold"],
        source_digest=hashlib.sha256(data).hexdigest(),
    )


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
        source = parsed.pin_source
        if source and source.startswith("file:") and not source[5:].startswith("/"):
            parsed = dataclasses.replace(parsed, pin_source=f"file:{(base / source[5:]).resolve()}")
        return parsed

    return Credentials(
        root=uri(doc["root"], "root"),
        officers={oid: uri(text, f"officers.{oid}") for oid, text in doc["officers"].items()},
    )
