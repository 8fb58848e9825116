"""The root key ceremony: root key, root CA, split custody, trust policy v1, signed transcript.

Run by ``vault ceremony run policies/root-ceremony.yaml --credentials C --out DIR``.
Steps, each recorded in the hash-chained transcript:

1. open: the script's digest, the officers present, rehearsal or not;
2. each officer's own signing key (in their own token) is found or made;
3. the root key is generated inside the root token (backupable only under a
   trusted KEK, see ADR 0001);
4. the self-signed root certificate is linted (pkilint) and then signed in the token;
5. a random secret is drawn from the token and split m of n into SLIP-39
   shares, one file per officer, written before anything depends on them;
6. trust policy v1 (with the share set's public record) is signed by the
   root and by every officer present;
7. the root token records v1 and its digest (its ``root-policy`` head), the
   policy file is written, and the token's user PIN and security-officer PIN
   are both replaced by PINs derived from the secret, so nobody sees either
   whole: the point of no return;
8. m shares are combined to log in again (the quorum works), and every
   custodian's share is checked against the record (none is lost on day one);
9. the transcript is signed by the root and by every officer present.

A ceremony that stops before step 7 (a typed "no", Ctrl-C, a refused input)
removes its output folder and leaves the root key on the token; run again,
it finds that key, checks it like any key found on a token, and goes on.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vault import pki
from vault._files import read_capped, write_new
from vault.ceremony import _lint, _shares
from vault.ceremony._common import (
    REHEARSAL_MARK,
    Confirm,
    Credentials,
    Officer,
    OutputFolder,
    b64,
    capability_details,
    cosign,
    find_or_make,
    no_confirm,
    officer_needs,
    root_pins,
    uninterrupted,
    with_pin,
    write_share_files,
)
from vault.ceremony._custody import MAX_SHARE_FILE, read_share
from vault.ceremony._html import render_transcript
from vault.ceremony._policy_head import POLICY_HEAD, advance_policy_head, head_policy, short
from vault.ceremony._transcript import PAYLOAD_TYPE, Transcript
from vault.errors import InputError, KeyExistsError, KeyNotFoundError, PinIncorrectError, StateError
from vault.formats import sign_envelope, sign_statement
from vault.policy import format_time, key_entry, policy_statement
from vault.token import Capabilities, Need, Pkcs11Uri, TokenKey, TokenSession, open_token, require_capabilities
from vault.token._pin import resolve_pin


@dataclass(frozen=True)
class RootScript:
    """The reviewed root ceremony script (policies/root-ceremony.yaml), parsed."""

    name: str
    organization: str
    officers: tuple[Officer, ...]
    threshold: int
    witnesses: tuple[str, ...]
    officer_key_label: str
    seal_key_label: str  # the key-agreement key in an officer's token that a sealed share is sealed to
    root_key_label: str
    curve: str
    root_common_name: str
    root_validity_years: int
    policy_expires_days: int
    approvers_threshold: int
    source_digest: str  # SHA-256 of the script file's bytes


@dataclass(frozen=True)
class RootCeremonyResult:
    """What a root ceremony wrote."""

    out: Path
    root_certificate: x509.Certificate
    policy: Path
    transcript: Path
    html: Path
    shares: dict[str, Path]


def run_root_ceremony(
    script: RootScript,
    credentials: Credentials,
    out: Path,
    *,
    rehearsal: bool,
    confirm: Confirm = no_confirm,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> RootCeremonyResult:
    """Run the root ceremony; see the module docstring for the steps.

    Args:
        script: the parsed, reviewed script.
        credentials: token URIs with PIN sources for the root (user and
            security officer) and each officer.
        out: a folder that must not exist yet (nothing is ever written over).
        rehearsal: mark every output as a rehearsal.
        confirm: called with a step's description before each irreversible
            step; raises to stop (interactive mode asks for typed confirmation).
        now: the clock.

    Raises:
        VaultError: any check or token operation failed. If it stopped before
            the PINs changed, ``out`` is removed and the root key (if made) is
            left on the token, where running the ceremony again finds and uses
            it; after that, ``out`` is kept.
    """
    check_officers(script.officers, credentials)
    # Every token is asked what it can do before any key is made (issue 16).
    root_caps = require_capabilities(credentials.root, [Need.EC_SIGNING, Need.HEAD_RECORDS], role="root token")
    for officer in script.officers:
        require_capabilities(
            credentials.officers[officer.id], officer_needs(credentials.officers[officer.id], officer.custody),
            role=f"token of officer '{officer.id}'",
        )  # fmt: skip
    # A root token without a security officer (NSS softoken) keeps its user PIN split and has no SO PIN to replace.
    root_so = credentials.need("root_so") if Need.SO_LOGIN in root_caps.has else None
    with OutputFolder(out) as folder:
        return _run(script, credentials, root_so, root_caps, folder, rehearsal=rehearsal, confirm=confirm, now=now)


def _run(
    script: RootScript,
    credentials: Credentials,
    root_so: Pkcs11Uri | None,
    root_caps: Capabilities,
    folder: OutputFolder,
    *,
    rehearsal: bool,
    confirm: Confirm,
    now: Callable[[], datetime],
) -> RootCeremonyResult:
    out = folder.path
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

    officer_keys, seal_keys = _officer_keys(script, credentials, transcript, now)
    present = {o.id: credentials.officers[o.id] for o in script.officers}

    with contextlib.ExitStack() as session:
        try:
            root_token = session.enter_context(open_token(credentials.root, rw=True))
        except PinIncorrectError as e:
            raise PinIncorrectError(
                f"{e} (if a root ceremony finished on it, the officers' shares hold its PINs now; "
                "a new root needs a new token)"
            ) from e
        backupable = Need.TRUSTED_WRAP in root_caps.has
        details = capability_details(
            root_caps, without_so="the user PIN alone is split", without_backup="the root key is not extractable at all"
        )
        transcript.record("root-token", "token-capabilities", details=details, now=now())
        root_key = _root_key(script, root_token, transcript, confirm, now, backupable=backupable)

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

        confirm("replace the root token's PINs with random ones split among the officers")
        secret = root_token.generate_random(32)
        share_set = _shares.split_secret(
            secret, script.threshold, len(script.officers), random=root_token.generate_random
        )
        # The shares are on disk (fsynced) before the PINs change: a failure in
        # between leaves the old PINs working, never a token nobody can open.
        share_files = write_share_files(
            out / "shares", script.officers, share_set, title=script.name, mark=mark, sealed_to=seal_keys
        )

        predicate = _policy_v1(script, root_key, root_cert, officer_keys, share_set.record, rehearsal, now())
        statement = policy_statement(predicate, root_cert)
        policy_bytes = cosign(sign_statement(statement, [root_key]), present, officer_keys)
        digest = hashlib.sha256(policy_bytes).hexdigest()

        # The point of no return: the token records policy v1, the file lands, both PINs change.
        # These run together (Ctrl-C waits for them); from here on the output folder is kept.
        user_pin, so_pin = root_pins(secret)
        with uninterrupted():
            head = advance_policy_head(root_token, 1, digest, after=None)
            folder.commit()
            write_new(out / "policy-v1.json", policy_bytes)
            root_token.change_pin(resolve_pin(credentials.root, root_token.label), user_pin)
            session.close()  # the security officer logs in only once the user's session is closed
            if root_so is not None:
                with open_token(root_so, rw=True, so=True) as officer_session:
                    officer_session.change_pin(resolve_pin(root_so, officer_session.label), so_pin)
    transcript.record(
        "officers", "sign-trust-policy", outputs={"policy-v1.json": policy_bytes}, details={"version": 1}, now=now()
    )
    transcript.record(
        "root-token",
        "policy-head",
        details={"head": POLICY_HEAD, "version": 1, "sha256": digest, "generation": head.generation},
        now=now(),
    )
    transcript.record(
        "root-token",
        "split-root-pin",
        details={
            "scheme": "SLIP-39",
            "pins": ["user", "security-officer"] if root_so is not None else ["user"],
            "share_set": share_set.record.to_dict(),
        },
        now=now(),
    )

    quorum = [share_set.mnemonics[i] for i in range(script.threshold)]
    quorum_pin = root_pins(_shares.combine_shares(quorum, share_set.record))[0]
    for officer, path in share_files.items():
        written = read_share(read_capped(path, MAX_SHARE_FILE, "share"), credentials.officers)
        check = _shares.check_share(written, share_set.record)
        transcript.record(officer, "check-share", details={"member": check.member_index}, now=now())

    with open_token(with_pin(credentials.root, quorum_pin)) as root_token:
        root_key = root_token.key(label=script.root_key_label, backupable=True)
        transcript.record(
            "officers", "quorum-login", details={"shares_used": script.threshold, "key_id": root_key.key_id}, now=now()
        )
        transcript.record("vault", "close-ceremony", now=now())
        envelope = cosign(sign_envelope(PAYLOAD_TYPE, transcript.to_bytes(), [root_key]), present, officer_keys)
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


def _root_key(
    script: RootScript,
    token: TokenSession,
    transcript: Transcript,
    confirm: Confirm,
    now: Callable[[], datetime],
    *,
    backupable: bool = True,
) -> TokenKey:
    """The root key: generated now, or the one a root ceremony that stopped early left on the token.

    A root ceremony stopped before the PINs changed leaves its root key on the
    token (nothing else: its folder is removed). Running the ceremony again
    uses that key, once it passes every check a found key gets and is
    backupable as a root key must be; the transcript says it was found, not
    made. A token on which a root ceremony got as far as signing policy v1
    is refused: it has a root already.
    """
    head = token.head(POLICY_HEAD)
    if head is not None:
        version, digest = head_policy(head, token.label)
        raise StateError(
            f"the root token already signed trust policy v{version} (sha256 {short(digest)}): it holds a root "
            "from an earlier root ceremony; a new root needs a new token"
        )
    label = script.root_key_label
    try:
        left = token.key(label=label, backupable=True)
    except KeyNotFoundError:
        left = None
    if left is None:
        confirm("generate the root key inside the root token")
        key = token.generate_ec_key(label, curve=script.curve, backupable=backupable)
        action, found = "generate-root-key", {}
    else:
        if left.curve.name != script.curve or (backupable and not left.backupable):
            what = f"is {left.curve.name}, not {script.curve}" if left.curve.name != script.curve else (
                "cannot be backed up (no CKA_WRAP_WITH_TRUSTED)"
            )  # fmt: skip
            raise KeyExistsError(
                f"a key labelled '{label}' on token '{token.label}' {what}: a root ceremony did not make it; "
                f"remove it (vault token delete) or use another token"
            )
        confirm(
            f"use the root key {left.key_id[:16]}… that a root ceremony which stopped left on token '{token.label}'"
        )
        key = left
        action, found = "root-key", {"found": "left by a root ceremony that stopped before the PINs changed"}
    transcript.record(
        "root-token",
        action,
        outputs={"root.spki": key.spki_der},
        details={
            "label": label,
            "curve": script.curve,
            "key_id": key.key_id,
            "spki": b64(key.spki_der),
            **found,
        },
        now=now(),
    )
    return key


def check_officers(officers: tuple[Officer, ...], credentials: Credentials) -> None:
    """Every officer the script names has a token in the credentials, and no one else."""
    ids = [o.id for o in officers]
    missing = [i for i in ids if i not in credentials.officers]
    if missing:
        raise InputError(f"the credentials file has no token for officer(s) {', '.join(missing)}")
    extra = [i for i in credentials.officers if i not in ids]
    if extra:
        raise InputError(f"the credentials file names officer(s) not in the script: {', '.join(extra)}")


def _officer_keys(
    script: RootScript, credentials: Credentials, transcript: Transcript, now: Callable[[], datetime]
) -> tuple[dict[str, ec.EllipticCurvePublicKey], dict[str, ec.EllipticCurvePublicKey]]:
    """Each officer's signing key, and the sealing key of those who keep their share sealed."""
    keys, seal_keys = {}, {}
    for officer in script.officers:
        details: dict[str, Any] = {}
        with open_token(credentials.officers[officer.id], rw=True) as token:
            key = find_or_make(token, script.officer_key_label, script.curve, named=credentials.officers[officer.id])
            keys[officer.id] = key.public_key
            if officer.custody == "sealed":
                seal_key = find_or_make(token, script.seal_key_label, "P-256", "derive")
                seal_keys[officer.id] = seal_key.public_key
                details["seal_key_id"] = seal_key.key_id
        transcript.record(
            officer.id,
            "officer-key",
            outputs={f"{officer.id}.spki": key.spki_der},
            details={"key_id": key.key_id, "spki": b64(key.spki_der), "token": token.label, **details},
            now=now(),
        )
    return keys, seal_keys


def _policy_v1(
    script: RootScript,
    root_key: TokenKey,
    root_cert: x509.Certificate,
    officer_keys: dict[str, ec.EllipticCurvePublicKey],
    record: _shares.ShareSetRecord,
    rehearsal: bool,
    issued: datetime,
) -> dict[str, Any]:
    return {
        "version": 1,
        "issued": format_time(issued),
        "expires": format_time(issued + timedelta(days=script.policy_expires_days)),
        "rehearsal": rehearsal,
        "root": {"key_id": root_key.key_id, "certificate": b64(root_cert.public_bytes(serialization.Encoding.DER))},
        "officers": {
            "threshold": script.threshold,
            "keys": {oid: key_entry(public) for oid, public in officer_keys.items()},
        },
        "approvers": {"threshold": script.approvers_threshold, "keys": {}},
        "release_signer": None,
        "stations": {},
        "auditor": None,
        "revoked": [],
        "custody": {"root_pin": record.to_dict()},
    }
