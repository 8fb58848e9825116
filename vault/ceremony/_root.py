"""The root key ceremony: root key, root CA, split custody, trust policy v1, signed transcript.

Run by ``vault ceremony run policies/root-ceremony.yaml --credentials C --out DIR``.
Steps, each recorded in the hash-chained transcript:

1. open: the script's digest, the officers present, rehearsal or not;
2. each officer's own signing key (in their own token) is found or made;
3. the root key is generated inside the root token (backupable only under a
   trusted KEK, see ADR 0001);
4. the self-signed root certificate is linted (pkilint) and then signed in the token;
5. trust policy v1 is signed by the root and by every officer present;
6. the root token's PIN is replaced by a random one that nobody sees whole:
   it is split m of n into SLIP-39 shares, one per officer;
7. m shares are combined to log in again (the quorum works), and every
   custodian's share is checked against the record (none is lost on day one);
8. the transcript is signed by the root and by every officer present.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vault import pki
from vault._files import write_new
from vault.ceremony import _lint, _shares
from vault.ceremony._custody import share_text
from vault.ceremony._html import render_transcript
from vault.ceremony._transcript import PAYLOAD_TYPE, Transcript, sha256_hex
from vault.errors import InputError
from vault.formats import Envelope, Statement, Subject, add_signature, sign_envelope, sign_statement
from vault.token import Pkcs11Uri, TokenKey, TokenSession, open_token
from vault.token._pin import resolve_pin

POLICY_PREDICATE = "https://vault.dev/trust-policy/v1"
REHEARSAL_MARK = "REHEARSAL"


@dataclass(frozen=True)
class Officer:
    """An officer named in the script; ``id`` is what credentials and shares refer to."""

    id: str
    name: str


@dataclass(frozen=True)
class RootScript:
    """The reviewed root ceremony script (policies/root-ceremony.yaml), parsed."""

    name: str
    organization: str
    officers: tuple[Officer, ...]
    threshold: int
    witnesses: tuple[str, ...]
    officer_key_label: str
    root_key_label: str
    curve: str
    root_common_name: str
    root_validity_years: int
    policy_expires_days: int
    approvers_threshold: int
    source_digest: str  # SHA-256 of the script file's bytes


@dataclass(frozen=True)
class Credentials:
    """Where each token is and how its PIN is read: kept apart from the script."""

    root: Pkcs11Uri
    officers: dict[str, Pkcs11Uri]


@dataclass(frozen=True)
class RootCeremonyResult:
    """What a root ceremony wrote."""

    out: Path
    root_certificate: x509.Certificate
    policy: Path
    transcript: Path
    html: Path
    shares: dict[str, Path]


Confirm = Callable[[str], None]


def _no_confirm(_: str) -> None:
    return None


def run_root_ceremony(
    script: RootScript,
    credentials: Credentials,
    out: Path,
    *,
    rehearsal: bool,
    confirm: Confirm = _no_confirm,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> RootCeremonyResult:
    """Run the root ceremony; see the module docstring for the steps.

    Args:
        script: the parsed, reviewed script.
        credentials: token URIs with PIN sources for the root and each officer.
        out: a folder that must not exist yet (nothing is ever written over).
        rehearsal: mark every output as a rehearsal.
        confirm: called with a step's description before each irreversible
            step; raises to stop (interactive mode asks for typed confirmation).
        now: the clock.

    Raises:
        VaultError: any check or token operation failed; the outputs written so
            far stay in ``out`` for the record.
    """
    _check_participants(script, credentials)
    if out.exists():
        raise InputError(f"{out} exists; a ceremony writes into a new folder only")
    out.mkdir(parents=True)
    (out / "shares").mkdir(mode=0o700)
    mark = f"{REHEARSAL_MARK} " if rehearsal else ""

    transcript = Transcript.start(
        {
            "type": "root",
            "name": script.name,
            "organization": script.organization,
            "rehearsal": rehearsal,
            "script_sha256": script.source_digest,
            "officers": [{"id": o.id, "name": o.name} for o in script.officers],
            "threshold": script.threshold,
            "witnesses": list(script.witnesses),
        },
        now=now(),
    )
    transcript.record("vault", "open-ceremony", details={"rehearsal": rehearsal}, now=now())

    officer_keys = _officer_keys(script, credentials, transcript, now)

    confirm("generate the root key inside the root token")
    with open_token(credentials.root, rw=True) as root_token:
        root_key = root_token.generate_ec_key(script.root_key_label, curve=script.curve, backupable=True)
        transcript.record(
            "root-token",
            "generate-root-key",
            outputs={"root.spki": root_key.spki_der},
            details={
                "label": script.root_key_label,
                "curve": script.curve,
                "key_id": root_key.key_id,
                "spki": _b64(root_key.spki_der),
            },
            now=now(),
        )

        not_before = now().replace(microsecond=0)
        profile = pki.root_ca_profile(
            f"{mark}{script.root_common_name}", script.root_validity_years, organization=script.organization
        )
        profile = pki.with_validity(profile, not_before)
        serial = pki.random_serial(root_token.generate_random)
        root_cert = pki.issue_certificate(
            root_key.public_key, profile, root_key, issuer_certificate=None, serial=serial, lint=_lint.require_clean
        )
        root_der = root_cert.public_bytes(serialization.Encoding.DER)
        write_new(out / "root-ca.pem", root_cert.public_bytes(serialization.Encoding.PEM))
        transcript.record(
            "root-token",
            "issue-root-certificate",
            outputs={"root-ca.pem": root_der},
            details={
                "serial": f"{serial:x}",
                "subject": root_cert.subject.rfc4514_string(),
                "linted": "pkilint rfc5280",
            },
            now=now(),
        )

        policy = _policy_v1(script, root_key, root_der, officer_keys, rehearsal, now())
        policy_bytes = _cosign(sign_statement(policy, [root_key]), credentials, script)
        write_new(out / "policy-v1.json", policy_bytes)
        transcript.record(
            "officers", "sign-trust-policy", outputs={"policy-v1.json": policy_bytes}, details={"version": 1}, now=now()
        )

        confirm("replace the root token PIN with a random one split among the officers")
        secret = root_token.generate_random(32)
        share_set = _shares.split_secret(
            secret, script.threshold, len(script.officers), random=root_token.generate_random
        )
        # The shares are on disk (fsynced) before the PIN changes: a failure in
        # between leaves the old PIN working, never a token nobody can open.
        share_files = _write_shares(out, script, share_set, mark)
        old_pin = resolve_pin(credentials.root, root_token.label)
        root_token.change_pin(old_pin, secret.hex())
    transcript.record(
        "root-token",
        "split-root-pin",
        details={"scheme": "SLIP-39", "share_set": share_set.record.to_dict()},
        now=now(),
    )

    quorum = [share_set.mnemonics[i] for i in range(script.threshold)]
    pin = _shares.combine_shares(quorum, share_set.record).hex()
    quorum_uri = dataclasses.replace(credentials.root, pin_source=None, pin_value=pin)
    for officer, path in share_files.items():
        check = _shares.check_share(share_text(path.read_text()), share_set.record)
        transcript.record(officer, "check-share", details={"member": check.member_index}, now=now())

    with open_token(quorum_uri) as root_token:
        root_key = root_token.key(label=script.root_key_label)
        transcript.record(
            "officers", "quorum-login", details={"shares_used": script.threshold, "key_id": root_key.key_id}, now=now()
        )
        transcript.record("vault", "close-ceremony", now=now())
        envelope = _cosign(sign_envelope(PAYLOAD_TYPE, transcript.to_bytes(), [root_key]), credentials, script)
    write_new(out / "transcript.json", envelope)
    write_new(out / "transcript.html", render_transcript(transcript).encode())
    return RootCeremonyResult(
        out=out,
        root_certificate=root_cert,
        policy=out / "policy-v1.json",
        transcript=out / "transcript.json",
        html=out / "transcript.html",
        shares=share_files,
    )


def _check_participants(script: RootScript, credentials: Credentials) -> None:
    ids = [o.id for o in script.officers]
    missing = [i for i in ids if i not in credentials.officers]
    if missing:
        raise InputError(f"the credentials file has no token for officer(s) {', '.join(missing)}")
    extra = [i for i in credentials.officers if i not in ids]
    if extra:
        raise InputError(f"the credentials file names officer(s) not in the script: {', '.join(extra)}")


def _officer_keys(
    script: RootScript, credentials: Credentials, transcript: Transcript, now: Callable[[], datetime]
) -> dict[str, bytes]:
    keys = {}
    for officer in script.officers:
        with open_token(credentials.officers[officer.id], rw=True) as token:
            key = _find_or_make(token, script.officer_key_label, script.curve)
            keys[officer.id] = key.spki_der
        transcript.record(
            officer.id,
            "officer-key",
            outputs={f"{officer.id}.spki": key.spki_der},
            details={"key_id": key.key_id, "spki": _b64(key.spki_der), "token": token.label},
            now=now(),
        )
    return keys


def _find_or_make(token: TokenSession, label: str, curve: str) -> TokenKey:
    if any(o.label == label and o.type == "private" for o in token.objects()):
        return token.key(label=label)
    return token.generate_ec_key(label, curve=curve)


def _policy_v1(
    script: RootScript,
    root_key: TokenKey,
    root_der: bytes,
    officer_keys: dict[str, bytes],
    rehearsal: bool,
    issued: datetime,
) -> Statement:
    predicate: dict[str, Any] = {
        "version": 1,
        "issued": issued.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "expires": (issued + timedelta(days=script.policy_expires_days)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "rehearsal": rehearsal,
        "root": {"key_id": root_key.key_id, "certificate": _b64(root_der)},
        "officers": {
            "threshold": script.threshold,
            "keys": {oid: {"key_id": sha256_hex(spki), "spki": _b64(spki)} for oid, spki in officer_keys.items()},
        },
        "approvers": {"threshold": script.approvers_threshold, "keys": {}},
        "release_signer": None,
        "stations": {},
        "auditor": None,
    }
    return Statement(
        subjects=(Subject(name="root-ca", digest={"sha256": sha256_hex(root_der)}),),
        predicate_type=POLICY_PREDICATE,
        predicate=predicate,
    )


def _cosign(envelope: Envelope, credentials: Credentials, script: RootScript) -> bytes:
    """Add every officer's signature, each from the officer's own token, one token at a time."""
    for officer in script.officers:
        with open_token(credentials.officers[officer.id]) as token:
            envelope = add_signature(envelope, token.key(label=script.officer_key_label))
    return envelope.to_json()


def _write_shares(out: Path, script: RootScript, share_set: _shares.ShareSet, mark: str) -> dict[str, Path]:
    files = {}
    for officer, mnemonic in zip(script.officers, share_set.mnemonics, strict=True):
        heading = (
            f"{mark}vault custodian share for {officer.name} ({officer.id}) - {script.name}\n"
            f"share set {share_set.record.identifier}, {script.threshold} of {len(script.officers)} needed\n"
        )
        path = write_new(out / "shares" / f"{officer.id}.txt", (heading + mnemonic + "\n").encode(), mode=0o600)
        files[officer.id] = path
    return files


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
