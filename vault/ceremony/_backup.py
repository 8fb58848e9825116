"""The root key backup file: the wrapped key, which key it is, and who holds the KEK's shares.

``root-key-backup.json`` is a DSSE envelope (payload type
:data:`PAYLOAD_TYPE`) signed by the root and by every officer present at the
backup. Its canonical JSON payload::

    {"format": "vault-key-backup/v1", "created": "...Z", "rehearsal": false,
     "policy_version": 3,
     "key": {"role": "root", "label": "root", "curve": "P-256", "key_id": "<hex>", "spki": "<b64>"},
     "wrap": {"mechanism": "CKM_AES_KEY_WRAP_PAD", "kek_bits": 256, "wrapped": "<b64>"},
     "custody": {<the KEK's SLIP-39 share set record>}}

The wrapped blob is useless without m of the KEK's shares; the signatures
let a recovery refuse a backup that is not the root's before it asks anyone
for a share.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vault._files import write_new
from vault.ceremony._common import b64, cosign
from vault.ceremony._shares import ShareSetRecord
from vault.errors import FormatError, PolicyError
from vault.formats import Envelope, canonical_json, parse_json, sign_envelope, verify_envelope
from vault.formats._json import check_fields
from vault.policy import TrustPolicy, format_time
from vault.token import TokenKey

if TYPE_CHECKING:
    from vault.ceremony._quorum import Ceremony

FORMAT = "vault-key-backup/v1"
PAYLOAD_TYPE = "application/vnd.vault.key-backup+json"
MAX_BACKUP = 64 * 1024
_FIELDS = frozenset({"format", "created", "rehearsal", "policy_version", "key", "wrap", "custody"})
_KEY_FIELDS = frozenset({"role", "label", "curve", "key_id", "spki"})
_WRAP_FIELDS = frozenset({"mechanism", "kek_bits", "wrapped"})


@dataclass(frozen=True)
class BackupFile:
    """A verified backup: enough to unwrap the key once the KEK is rebuilt."""

    key_id: str
    label: str
    curve: str
    wrapped: bytes
    custody: ShareSetRecord
    policy_version: int  # the trust policy version the backup was made under


def make_backup(c: Ceremony, root_key: TokenKey, wrapped: bytes, custody: ShareSetRecord) -> Path:
    """Write ``root-key-backup.json`` into the ceremony's folder, signed by the root and the officers present."""
    document: dict[str, Any] = {
        "format": FORMAT,
        "created": format_time(c.now()),
        "rehearsal": c.rehearsal,
        "policy_version": c.policy.version,
        "key": {
            "role": "root",
            "label": root_key.label,
            "curve": root_key.curve.name,
            "key_id": root_key.key_id,
            "spki": b64(root_key.spki_der),
        },
        "wrap": {"mechanism": "CKM_AES_KEY_WRAP_PAD", "kek_bits": 256, "wrapped": b64(wrapped)},
        "custody": custody.to_dict(),
    }
    envelope = sign_envelope(PAYLOAD_TYPE, canonical_json(document), [root_key])
    officers = {officer: c.policy.officers[officer].public_key for officer in c.present}
    return write_new(c.out / "root-key-backup.json", cosign(envelope, c.present, officers))


def open_backup(data: bytes, policy: TrustPolicy) -> BackupFile:
    """Verify a backup file against the policy's root and officers and read it.

    Raises:
        FormatError: not a backup file.
        SignatureError, ThresholdError: the root or the officers' quorum did not sign it.
        PolicyError: it is a backup of another key than the policy's root.
    """
    envelope = Envelope.from_json(data, max_size=MAX_BACKUP)
    if envelope.payload_type != PAYLOAD_TYPE:
        raise FormatError(f"not a vault key backup (payload type {envelope.payload_type!r})")
    verify_envelope(envelope, {policy.root.key_id: policy.root.public_key}, 1, what="key backup root signature")
    verify_envelope(
        envelope, policy.trusted(policy.officers), policy.officers_threshold, what="key backup officer signatures"
    )
    document = check_fields(
        parse_json(envelope.payload, max_size=MAX_BACKUP, what="key backup"), _FIELDS, what="key backup"
    )
    if document["format"] != FORMAT:
        raise FormatError(f"key backup: format {document['format']!r} is not {FORMAT}")
    key = check_fields(document["key"], _KEY_FIELDS, what="key backup key")
    wrap = check_fields(document["wrap"], _WRAP_FIELDS, what="key backup wrap")
    if key["key_id"] != policy.root.key_id:
        raise PolicyError("the backup holds another key than the trust policy's root")
    if wrap["mechanism"] != "CKM_AES_KEY_WRAP_PAD":
        raise FormatError(f"key backup: unknown wrapping mechanism {wrap['mechanism']!r}")
    try:
        wrapped = base64.b64decode(str(wrap["wrapped"]), validate=True)
    except ValueError as e:
        raise FormatError("key backup: the wrapped key is not base64") from e
    if not isinstance(key["label"], str) or not isinstance(key["curve"], str):
        raise FormatError("key backup: label and curve must be text")
    version = document["policy_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise FormatError("key backup: policy_version must be a positive whole number")
    return BackupFile(
        key_id=key["key_id"],
        label=key["label"],
        curve=key["curve"],
        wrapped=wrapped,
        custody=ShareSetRecord.from_dict(document["custody"]),
        policy_version=version,
    )
