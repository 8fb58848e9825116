"""The release description (``release.yaml``): strict YAML, errors naming the field and its line.

The format (every field, its type, examples and every refusal) is
documented in ``docs/release-description.md``; a complete example, which
the tests build, is ``policies/release.yaml``::

    product: example-sensor
    version: 1.4.0
    security_counter: 7
    not_before: 2026-01-01T00:00:00Z
    expires: 2031-01-01T00:00:00Z
    production:
      total: 1000
      allocation: {station-1: 600}
    images:
      - name: app.bin
        path: images/app.bin          # relative to this file's folder
        load_address: "0x08000000"    # or partition: app
        provenance:                   # optional: admitted only if this verifies offline
          sigstore_bundle: images/app.bin.sigstore.json
          trusted_root: sigstore-trusted-root.json
          identity: https://github.com/org/repo/.github/workflows/release.yml@refs/tags/v1.4.0
          issuer: https://token.actions.githubusercontent.com

    lock_profiles:                    # optional: what the devices burn at the lock step, by name
      production:
        chip: esp32s3                 # the eFuse names are checked against this chip's table
        efuses: {DIS_PAD_JTAG: 1, DIS_USB_JTAG: 1, SOFT_DIS_JTAG: 7}

    secrets:                          # optional: per-device secrets each unit gets, sealed to the
      - name: backend-psk             # device maker's secrets recipient (docs/adr/0012-device-secrets.md)
        kind: psk-256                 # psk-256, aes-256 or kek-aes-256
        target: nvs:psk               # where the adapter installs it (the adapter reads this; esp32:
                                      # nvs:[NAMESPACE/]KEY or efuse:BLOCK_KEYn/PURPOSE, docs/esp32.md)

The recipients are the stations with an allocation.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from vault._files import read_capped
from vault._yaml import Checked, DateTime, Enum, Field, Hex, Int, Invalid, List, Map, Record, Str, load_yaml
from vault.device_secrets import KINDS, MAX_SECRETS, NAME_PATTERN, TARGET_PATTERN, SecretSpec
from vault.errors import AdapterError, ScriptError

MAX_DESCRIPTION = 256 * 1024
IMAGE_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"  # a plain file name: nothing can escape a folder
_STATION = r"[a-z][a-z0-9-]{0,31}"


def _check_lock_profile(profile: dict[str, Any]) -> None:
    """The chip's own rules: eFuse names it has, values that fit them (espefuse's table, via the esp32 adapter)."""
    from vault.verify.devices.esp32 import parse_lock_profile  # noqa: PLC0415 - esptool, only for a profile

    compact = {k: v for k, v in profile.items() if v is not None}
    try:
        parse_lock_profile(compact)
    except AdapterError as e:
        raise Invalid(str(e), e.field) from e


def _check_targets(doc: dict[str, Any]) -> None:
    """A release with an ESP chip's lock profile is for the esp32 adapter: targets it can write.

    Flash offsets are whole 4 KiB sectors; each secret's target is a form the
    adapter accepts, none twice, and no eFuse key block a lock profile burns.
    """
    esp_profiles = [p for p in (doc["lock_profiles"] or {}).values() if p["chip"].startswith("esp32")]
    if not esp_profiles:
        return
    for i, image in enumerate(doc["images"]):
        address = image["load_address"]
        if address and int(address, 16) % 0x1000:
            raise Invalid(
                f"{address} is not a multiple of 0x1000 (an ESP chip's flash is written in 4 KiB sectors)",
                f"images[{i}].load_address",
            )
    from vault.verify.devices.esp32 import parse_secret_target  # noqa: PLC0415 - as for a lock profile

    profile_blocks = {key["block"] for p in esp_profiles for key in p["keys"] or ()}
    places: list[str] = []
    for i, secret in enumerate(doc["secrets"] or ()):
        try:
            target = parse_secret_target(secret["target"])
        except AdapterError as e:
            raise Invalid(str(e), f"secrets[{i}].target") from e
        place = target.block or target.wire()
        if place in places:
            raise Invalid(f"another secret already goes to {place}", f"secrets[{i}].target")
        if place in profile_blocks:
            raise Invalid(f"a lock profile burns a public-key digest into {place}", f"secrets[{i}].target")
        places.append(place)


_LOCK_PROFILE = Checked(
    Record(
        {
            "chip": Field(Str(pattern=r"[a-z0-9][a-z0-9_-]{0,31}")),
            "efuses": Field(Map(Int(min=0, max=2**32 - 1), max_len=256), required=False),
            "keys": Field(
                List(
                    Record(
                        {
                            "block": Field(Str(pattern=r"[A-Z0-9_]{1,32}")),
                            "purpose": Field(Str(pattern=r"[A-Z0-9_]{1,32}")),
                            "digest": Field(Hex(length=64)),
                        }
                    ),
                    max_len=16,
                ),
                required=False,
            ),
        }
    ),
    _check_lock_profile,
)

_DOCUMENT = Record(
    {
        "product": Field(Str(pattern=r"[a-z0-9][a-z0-9._-]{0,63}")),
        "version": Field(Str(pattern=r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}")),
        "security_counter": Field(Int(min=0, max=2**32 - 1)),
        "not_before": Field(DateTime()),
        "expires": Field(DateTime()),
        "production": Field(
            Record(
                {
                    "total": Field(Int(min=1, max=10**9)),
                    "allocation": Field(Map(Int(min=1, max=10**9), key=Str(pattern=_STATION), min_len=1, max_len=256)),
                }
            )
        ),
        "images": Field(
            List(
                Record(
                    {
                        "name": Field(Str(pattern=IMAGE_NAME)),
                        "path": Field(Str(max_len=4096)),
                        "load_address": Field(Str(pattern=r"0x[0-9a-fA-F]{1,16}"), required=False),
                        "partition": Field(Str(pattern=r"[A-Za-z0-9_.-]{1,64}"), required=False),
                        "provenance": Field(
                            Record(
                                {
                                    "sigstore_bundle": Field(Str(max_len=4096)),
                                    "trusted_root": Field(Str(max_len=4096)),
                                    "identity": Field(Str(max_len=2048)),
                                    "issuer": Field(Str(max_len=2048)),
                                }
                            ),
                            required=False,
                        ),
                    }
                ),
                min_len=1,
                max_len=64,
            )
        ),
        "lock_profiles": Field(
            Map(_LOCK_PROFILE, key=Str(pattern=r"[a-z0-9][a-z0-9_-]{0,31}"), min_len=1, max_len=16), required=False
        ),
        "secrets": Field(
            List(
                Record(
                    {
                        "name": Field(Str(pattern=NAME_PATTERN)),
                        "kind": Field(Enum(list(KINDS))),
                        "target": Field(Str(pattern=TARGET_PATTERN)),
                    }
                ),
                min_len=1,
                max_len=MAX_SECRETS,
            ),
            required=False,
        ),
    }
)
_SCHEMA = Checked(_DOCUMENT, _check_targets)


@dataclass(frozen=True)
class Provenance:
    """What the image's Sigstore bundle must prove, offline."""

    sigstore_bundle: Path
    trusted_root: Path
    identity: str
    issuer: str


@dataclass(frozen=True)
class ImageSpec:
    """One image of the release."""

    name: str
    path: Path
    target: dict[str, str]
    provenance: Provenance | None


@dataclass(frozen=True)
class ReleaseDescription:
    """A parsed release description."""

    product: str
    version: str
    security_counter: int
    not_before: datetime
    expires: datetime
    total: int
    allocation: dict[str, int]
    images: tuple[ImageSpec, ...]
    source_digest: str
    lock_profiles: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    secrets: tuple[SecretSpec, ...] = ()
    """The per-device secrets every unit gets (``docs/adr/0012-device-secrets.md``)."""


def load_release_description(path: Path) -> ReleaseDescription:
    """Parse and check a release description; image paths are taken from its folder.

    Raises:
        ScriptError: a field is unknown, missing, mistyped or inconsistent (with its line).
    """
    data = read_capped(path, MAX_DESCRIPTION, "release description")
    doc: dict[str, Any] = load_yaml(data, _SCHEMA, source=str(path))
    base = path.resolve().parent
    if doc["expires"] <= doc["not_before"]:
        raise ScriptError(f"{path}: expires: the release would expire before it starts")
    allocated = sum(doc["production"]["allocation"].values())
    if allocated > doc["production"]["total"]:
        raise ScriptError(
            f"{path}: production.allocation: {allocated} units allocated, more than the total of "
            f"{doc['production']['total']}"
        )
    images = []
    names: set[str] = set()
    for i, entry in enumerate(doc["images"]):
        if entry["name"] in names:
            raise ScriptError(f"{path}: images[{i}].name: '{entry['name']}' appears twice")
        names.add(entry["name"])
        if entry["load_address"] and entry["partition"]:
            raise ScriptError(f"{path}: images[{i}]: give a load_address or a partition, not both")
        target = {k: entry[k] for k in ("load_address", "partition") if entry[k]}
        provenance = None
        if entry["provenance"]:
            p = entry["provenance"]
            provenance = Provenance(base / p["sigstore_bundle"], base / p["trusted_root"], p["identity"], p["issuer"])
        images.append(ImageSpec(entry["name"], base / entry["path"], target, provenance))
    secrets = tuple(SecretSpec(s["name"], s["kind"], s["target"]) for s in doc["secrets"] or ())
    secret_names = [s.name for s in secrets]
    for i, name in enumerate(secret_names):
        if name in secret_names[:i]:
            raise ScriptError(f"{path}: secrets[{i}].name: '{name}' appears twice")
    return ReleaseDescription(
        product=doc["product"],
        version=doc["version"],
        security_counter=doc["security_counter"],
        not_before=doc["not_before"],
        expires=doc["expires"],
        total=doc["production"]["total"],
        allocation=dict(doc["production"]["allocation"]),
        images=tuple(images),
        source_digest=hashlib.sha256(data).hexdigest(),
        lock_profiles={
            name: {k: v for k, v in profile.items() if v is not None}
            for name, profile in (doc["lock_profiles"] or {}).items()
        },
        secrets=secrets,
    )
