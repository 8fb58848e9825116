"""The ceremonies after the root one: enrol a station, issue role certificates, renew, revoke, back up, recover.

Each is an operation run inside the quorum frame of :mod:`vault.ceremony._quorum`
(policy verified, officers present, m shares, root key checked). The ones
that change who holds a role return the next trust-policy predicate; backup
and recovery write a signed backup file or a recovered token instead.

Rotation is not a separate ceremony: enrolling a station again, or issuing a
role to a new key, certifies the new key and revokes the one it replaces, in
the same new policy version. Revocation takes a holder out of its role and
lists its keys, so every verifier refuses them from then on.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vault import pki
from vault._files import read_capped
from vault._words import readable_digest
from vault.ceremony import _shares
from vault.ceremony._backup import MAX_BACKUP, BackupFile, make_backup, open_backup
from vault.ceremony._common import (
    Confirm,
    Credentials,
    Officer,
    capability_details,
    find_or_make,
    key_present,
    names_key,
    no_confirm,
    root_pins,
    uninterrupted,
    write_share_files,
)
from vault.ceremony._custody import MAX_SHARE_FILE, share_text
from vault.ceremony._policy_head import POLICY_HEAD, check_policy_head
from vault.ceremony._quorum import (
    Ceremony,
    CeremonyInputs,
    CeremonyResult,
    Operation,
    OperationResult,
    run_quorum_ceremony,
)
from vault.crypto import key_id, verify_signature
from vault.enrolment import EnrolmentRequest, open_enrolment_request
from vault.errors import InputError, PinIncorrectError, PolicyError, RollbackError
from vault.policy import RoleKey, key_entry
from vault.token import Need, Pkcs11Uri, TokenKey, TokenSession, open_token, require_capabilities
from vault.token._pin import resolve_pin

if TYPE_CHECKING:
    from vault.ceremony._script import OperationScript

# --- scripts ------------------------------------------------------------------


@dataclass(frozen=True)
class EnrolStation:
    """``ceremony: enrol-station``: certify a station's three keys from its enrolment request.

    One script serves every station: the station id comes from the request
    (checked against ``--station-id`` when given), the name from the request
    or else the id. A script may still pin one station's id (and name).
    """

    station_id: str | None
    station_name: str | None
    validity_days: int


@dataclass(frozen=True)
class RoleSpec:
    """One role key: the label it has (or gets) in its holder's token, and its certificate's life."""

    key_label: str
    validity_days: int


@dataclass(frozen=True)
class Approvers:
    """The release approvers: all of them (anyone left out is revoked) and their threshold."""

    threshold: int
    key_label: str
    validity_days: int
    members: tuple[Officer, ...]


@dataclass(frozen=True)
class IssueRoles:
    """``ceremony: roles``: certify the release signer, the approvers, the auditor and the cosigners (those named).

    ``cosigners`` are the auditors' cosigning keys (a signing key, never the
    auditor's decryption key) and how many cosignatures a device proof needs.
    """

    curve: str
    release_signer: RoleSpec | None
    approvers: Approvers | None
    auditor: RoleSpec | None
    cosigners: Approvers | None = None


@dataclass(frozen=True)
class RenewPolicy:
    """``ceremony: policy``: sign the next policy version (new expiry, optionally a new approval threshold)."""

    approvers_threshold: int | None


@dataclass(frozen=True)
class Revoke:
    """``ceremony: revoke``: take holders out of their roles, listing their keys as revoked."""

    entries: tuple[tuple[str, str | None, str], ...]  # (role, holder id or None, reason)


@dataclass(frozen=True)
class Backup:
    """``ceremony: backup``: wrap the root key under a fresh KEK split among the custodians."""

    threshold: int
    custodians: tuple[Officer, ...]


@dataclass(frozen=True)
class Recover:
    """``ceremony: recover``: put the root key from a backup onto a new, empty token."""


# --- helpers --------------------------------------------------------------------


def _organization(c: Ceremony) -> str | None:
    names = c.root_certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    value = names[0].value if names else None
    return value if isinstance(value, str) else None


_GROUPS = {"approver": "approvers", "cosigner": "cosigners"}
"""The roles held by a group of named members with a threshold, and their field in the policy."""


def _predicate(c: Ceremony) -> dict[str, Any]:
    return copy.deepcopy(dict(c.policy.predicate))


def _revoke(c: Ceremony, predicate: dict[str, Any], key: RoleKey, role: str, holder: str, reason: str) -> None:
    predicate["revoked"].append(
        {"key_id": key.key_id, "role": role, "holder": holder, "reason": reason, "version": c.policy.version + 1}
    )
    c.record("officers", "revoke-key", details={"key_id": key.key_id, "role": role, "holder": holder, "reason": reason})


def _refuse_revoked(c: Ceremony, public_key: ec.EllipticCurvePublicKey, what: str) -> None:
    revoked = c.policy.revocation(key_id(public_key))
    if revoked is not None:
        raise PolicyError(
            f"{what} is key {revoked.key_id[:16]}, revoked in policy v{revoked.version}: {revoked.reason}"
        )


# --- enrol a station ------------------------------------------------------------


def _enrolled_station(spec: EnrolStation, request: EnrolmentRequest, station_id: str | None) -> tuple[str, str]:
    """``(id, name)`` of the station to enrol: the request's, checked against the script and ``--station-id``."""
    for expected, where in ((spec.station_id, "the script"), (station_id, "--station-id")):
        if expected is not None and request.station_id != expected:
            raise InputError(
                f"the enrolment request is for station '{request.station_id}', but {where} names '{expected}'"
            )
    name = spec.station_name if spec.station_id is not None and spec.station_name else request.name
    return request.station_id, name or request.station_id


def enrol_station(spec: EnrolStation, request_data: bytes, station_id: str | None = None) -> Operation:
    """The operation that enrols (or re-enrols, rotating its keys) the station the request names."""

    def run(c: Ceremony) -> OperationResult:
        request = open_enrolment_request(request_data)
        sid, station_name = _enrolled_station(spec, request, station_id)
        keys = {
            "signing": request.signing_public_key,
            "decryption": request.decryption_public_key,
            "issuing_ca": request.issuing_ca_public_key,
        }
        for part, public in keys.items():
            _refuse_revoked(c, public, f"the station's {part.replace('_', ' ')} key")
        c.record(
            "vault",
            "check-enrolment-request",
            inputs={"request.json": request_data},
            details={
                "station": request.station_id,
                "request_sha256": request.digest,
                "csr_signatures": "valid",
                **{f"{part}_key_id": key_id(public) for part, public in keys.items()},
            },
        )
        c.confirm(f"enrol station {sid} ({station_name}): request {readable_digest(request.digest)}")

        predicate = _predicate(c)
        old = c.policy.stations.get(sid)
        if old is not None:
            for part, held in (
                ("signing", old.signing),
                ("decryption", old.decryption),
                ("issuing_ca", old.issuing_ca),
            ):
                if held.key_id != key_id(keys[part]):
                    _revoke(c, predicate, held, "station", sid, f"rotated: station re-enrolled ({part})")
        mark, org, days = c.mark, _organization(c), spec.validity_days
        with c.root_session() as token:
            signing = c.issue(
                token,
                keys["signing"],
                pki.signing_profile(f"{mark}{sid} signing", days, organization=org),
                f"{sid}-signing",
            )
            decryption = c.issue(
                token,
                keys["decryption"],
                pki.key_agreement_profile(f"{mark}{sid} decryption", days, organization=org),
                f"{sid}-decryption",
            )
            issuing_ca = c.issue(
                token,
                keys["issuing_ca"],
                pki.subordinate_ca_profile(f"{mark}{sid} issuing CA", days, path_length=0, organization=org),
                f"{sid}-issuing-ca",
            )
        predicate["stations"][sid] = {
            "name": station_name,
            "signing": key_entry(keys["signing"], signing),
            "decryption": key_entry(keys["decryption"], decryption),
            "issuing_ca": key_entry(keys["issuing_ca"], issuing_ca),
        }
        certs = c.out / "certs"
        return OperationResult(
            predicate,
            outputs={
                f"{sid} signing certificate": certs / f"{sid}-signing.pem",
                f"{sid} decryption certificate": certs / f"{sid}-decryption.pem",
                f"{sid} issuing CA certificate": certs / f"{sid}-issuing-ca.pem",
            },
        )

    return run


# --- role certificates ------------------------------------------------------------


def issue_roles(spec: IssueRoles) -> Operation:
    """The operation that certifies the release signer, approvers and auditor the script names."""

    def run(c: Ceremony) -> OperationResult:
        found: list[tuple[str, str, ec.EllipticCurvePublicKey, RoleSpec]] = []
        for role, holder, uri, role_spec, usage in _role_holders(spec, c.credentials):
            with open_token(uri, rw=True) as token:
                key = find_or_make(token, role_spec.key_label, spec.curve, usage, named=uri)
            _refuse_revoked(c, key.public_key, f"the {role} key of {holder}")
            c.record(holder, "role-key", details={"role": role, "key_id": key.key_id, "token": token.label})
            found.append((role, holder, key.public_key, role_spec))

        predicate = _predicate(c)
        policy = c.policy
        outputs = {}
        with c.root_session() as token:
            for role, holder, public, role_spec in found:
                current = _current_holder(c, role, holder)
                if current is not None and current.key_id == key_id(public):
                    c.record(
                        "vault", "role-unchanged", details={"role": role, "holder": holder, "key_id": current.key_id}
                    )
                    continue
                if current is not None:
                    _revoke(c, predicate, current, role, holder, "rotated: a new key took the role")
                name = f"{role}-{holder}" if role in _GROUPS else role
                certificate = c.issue(token, public, _role_profile(c, role, holder, role_spec), name)
                entry = key_entry(public, certificate)
                if role in _GROUPS:
                    predicate.setdefault(_GROUPS[role], {"threshold": 1, "keys": {}})["keys"][holder] = entry
                else:
                    predicate[role.replace("-", "_")] = entry
                what = f"{role} {holder}" if role in _GROUPS else role.replace("-", " ")
                outputs[f"{what} certificate"] = c.out / "certs" / f"{name}.pem"
        for role, group in (("approver", spec.approvers), ("cosigner", spec.cosigners)):
            if group is None:
                continue
            listed = {m.id for m in group.members}
            held_now = policy.approvers if role == "approver" else policy.cosigners
            for holder, held in held_now.items():
                if holder not in listed:
                    _revoke(c, predicate, held, role, holder, f"removed from the {_GROUPS[role]}")
                    del predicate[_GROUPS[role]]["keys"][holder]
            predicate[_GROUPS[role]]["threshold"] = group.threshold
        return OperationResult(predicate, outputs=outputs)

    return run


def _role_holders(spec: IssueRoles, credentials: Credentials) -> list[tuple[str, str, Pkcs11Uri, RoleSpec, str]]:
    """``(role, holder, token, spec, usage)`` of every holder the script names, from the credentials."""
    wanted: list[tuple[str, str, Pkcs11Uri, RoleSpec, str]] = []
    if spec.release_signer is not None:
        wanted.append(("release-signer", "release", credentials.need("release"), spec.release_signer, "sign"))
    if spec.approvers is not None:
        approvers = spec.approvers
        missing = [m.id for m in approvers.members if m.id not in credentials.approvers]
        if missing:
            raise InputError(f"the credentials file has no token for approver(s) {', '.join(missing)}")
        approver_spec = RoleSpec(approvers.key_label, approvers.validity_days)
        wanted += [("approver", m.id, credentials.approvers[m.id], approver_spec, "sign") for m in approvers.members]
    if spec.auditor is not None:
        wanted.append(("auditor", "auditor", credentials.need("auditor"), spec.auditor, "derive"))
    if spec.cosigners is not None:
        cosigners = spec.cosigners
        tokens = {m.id: credentials.cosigners.get(m.id) for m in cosigners.members}
        if "auditor" in tokens and tokens["auditor"] is None:
            tokens["auditor"] = credentials.auditor  # the auditor's own token holds its cosigning key too
        missing = [holder for holder, uri in tokens.items() if uri is None]
        if missing:
            raise InputError(f"the credentials file has no token for cosigner(s) {', '.join(missing)} (cosigners:)")
        cosigner_spec = RoleSpec(cosigners.key_label, cosigners.validity_days)
        wanted += [("cosigner", h, uri, cosigner_spec, "sign") for h, uri in tokens.items() if uri is not None]
    if not wanted:
        raise InputError("the script names no role to issue")
    return wanted


def _current_holder(c: Ceremony, role: str, holder: str) -> RoleKey | None:
    if role == "approver":
        return c.policy.approvers.get(holder)
    if role == "cosigner":
        return c.policy.cosigners.get(holder)
    return c.policy.release_signer if role == "release-signer" else c.policy.auditor


def _role_profile(c: Ceremony, role: str, holder: str, spec: RoleSpec) -> pki.CertProfile:
    org, days = _organization(c), spec.validity_days
    if role == "auditor":
        return pki.key_agreement_profile(f"{c.mark}auditor", days, organization=org)
    if role == "release-signer":
        return pki.signing_profile(
            f"{c.mark}release signer", days, extended_key_usages=(ExtendedKeyUsageOID.CODE_SIGNING,), organization=org
        )
    return pki.signing_profile(f"{c.mark}{role} {holder}", days, organization=org)


# --- renew, revoke ------------------------------------------------------------------


def renew_policy(spec: RenewPolicy) -> Operation:
    """The operation that signs the next version as it is (new dates), or with a new approval threshold."""

    def run(c: Ceremony) -> OperationResult:
        predicate = _predicate(c)
        if spec.approvers_threshold is not None:
            predicate["approvers"]["threshold"] = spec.approvers_threshold
        c.record("vault", "renew-policy", details={"approvers_threshold": predicate["approvers"]["threshold"]})
        return OperationResult(predicate)

    return run


def revoke(spec: Revoke) -> Operation:
    """The operation that takes each named holder out of its role and lists its keys as revoked."""

    def run(c: Ceremony) -> OperationResult:
        predicate = _predicate(c)
        policy = c.policy
        for role, holder, reason in spec.entries:
            if role == "station":
                station = policy.stations.get(holder or "")
                if station is None:
                    raise InputError(f"no station '{holder}' is enrolled in policy v{policy.version}")
                c.confirm(f"revoke station {holder} ({reason})")
                for key in station.keys():
                    _revoke(c, predicate, key, "station", station.id, reason)
                del predicate["stations"][station.id]
            elif role in _GROUPS:
                member = (policy.approvers if role == "approver" else policy.cosigners).get(holder or "")
                if member is None:
                    raise InputError(f"no {role} '{holder}' in policy v{policy.version}")
                c.confirm(f"revoke {role} {holder} ({reason})")
                _revoke(c, predicate, member, role, holder or "", reason)
                del predicate[_GROUPS[role]]["keys"][holder]
                if role == "cosigner" and not predicate["cosigners"]["keys"]:
                    del predicate["cosigners"]  # no cosigner left: no device proof verifies until one is enrolled
            else:
                held = policy.release_signer if role == "release-signer" else policy.auditor
                if held is None:
                    raise InputError(f"policy v{policy.version} has no {role} to revoke")
                c.confirm(f"revoke the {role} ({reason})")
                _revoke(c, predicate, held, role, role, reason)
                predicate[role.replace("-", "_")] = None
        return OperationResult(predicate)

    return run


# --- backup and recovery ------------------------------------------------------------


def backup_root(spec: Backup) -> Operation:
    """The operation that writes ``root-key-backup.json`` and the KEK's custodian shares."""

    def run(c: Ceremony) -> OperationResult:
        c.confirm("wrap the root key under a new key-encryption key split among the custodians")
        label = f"backup-kek-{uuid.uuid4().hex[:12]}"
        with c.root_session() as token:
            kek = token.generate_random(32)
            share_set = _shares.split_secret(kek, spec.threshold, len(spec.custodians), random=token.generate_random)
        shares = write_share_files(c.out / "backup-shares", spec.custodians, share_set, title=c.name, mark=c.mark)
        # Only the security officer may mark a KEK trusted; only a trusted KEK may wrap the root key.
        with c.root_session(so=True) as officer:
            officer.import_kek(kek, label, trusted=True)
        with c.root_session() as token:
            wrapping = token.aes_key(label)
            try:
                root_key = c.root_key(token)
                wrapped = token.wrap(wrapping, root_key)
            finally:
                token.destroy(wrapping)
            backup = make_backup(c, root_key, wrapped, share_set.record)
        c.record(
            "root-token",
            "backup-root-key",
            outputs={backup.name: read_capped(backup, MAX_BACKUP, "key backup")},
            details={"mechanism": "CKM_AES_KEY_WRAP_PAD", "kek_bits": 256, "share_set": share_set.record.to_dict()},
        )
        for custodian, path in shares.items():
            written = read_capped(path, MAX_SHARE_FILE, "share").decode("utf-8", errors="replace")
            check = _shares.check_share(share_text(written), share_set.record)
            c.record(custodian, "check-share", details={"member": check.member_index, "share_set": "backup KEK"})
        return OperationResult(
            None, outputs={"root key backup": backup, **{f"KEK share {k}": v for k, v in shares.items()}}
        )

    return run


def recover_root(backup_data: bytes, kek_shares: Sequence[str]) -> tuple[Callable[[Ceremony], None], Operation]:
    """``(prepare, operation)``: unwrap the root key from a backup onto the recovery token."""

    def prepare(c: Ceremony) -> None:
        backup: BackupFile = open_backup(backup_data, c.policy)
        if c.policy.version < backup.policy_version:
            raise RollbackError(
                f"the backup was made under trust policy v{backup.policy_version}: recover with the current "
                f"policy (v{backup.policy_version} or later), not v{c.policy.version}"
            )
        kek = _shares.combine_shares(list(kek_shares), backup.custody)
        target = c.credentials.need("recovery")
        caps = require_capabilities(target, RECOVERY_NEEDS, role="recovery token")
        # A token without a security officer (NSS softoken) keeps only its user PIN, from the shares, as a root
        # ceremony on it does; a token that does not enforce CKA_WRAP_WITH_TRUSTED gets the key non-extractable.
        target_so = c.credentials.need("recovery_so") if Need.SO_LOGIN in caps.has else None
        backupable = Need.TRUSTED_WRAP in caps.has
        details = capability_details(
            caps,
            without_so="only the user PIN comes from the shares",
            without_backup="the recovered key is not extractable; the backup it came from stays the way back",
        )
        c.record("recovery-token", "token-capabilities", details=details)
        c.record(
            "vault",
            "check-backup",
            inputs={"root-key-backup.json": backup_data},
            details={
                "key_id": backup.key_id,
                "kek_shares_given": len(kek_shares),
                "policy_version": backup.policy_version,
            },
        )
        user_pin, so_pin = root_pins(c.secret)
        with contextlib.ExitStack() as session:
            token = session.enter_context(_open_recovery_token(target))
            key = _left_by_recovery(c, token)
            found: dict[str, Any] = {}
            if key is None:
                c.confirm(f"write the root key onto token {target.token}")
                label = f"recovery-kek-{uuid.uuid4().hex[:12]}"
                wrapping = token.import_kek(kek, label)
                try:
                    key = token.unwrap_ec_key(
                        wrapping, backup.wrapped, backup.label, c.policy.root.public_key, backupable=backupable
                    )
                finally:
                    token.destroy(wrapping)
            else:
                c.confirm(f"use the root key a recovery that stopped left on token {target.token}")
                found = {"found": "left by a recovery that stopped before the PINs changed"}
            challenge = f"vault recovery check {uuid.uuid4()}".encode()
            verify_signature(c.root_certificate.public_key(), challenge, key.sign(challenge))  # type: ignore[arg-type]
            c.confirm(f"give token {target.token} the PINs the officers' shares open, for good")
            # The recovered token carries the head on: the policy the recovery runs with (never older than
            # the backup's). Recording it and changing both PINs run together; Ctrl-C waits for them.
            with uninterrupted():
                c.policy_head, matched = check_policy_head(token, c.policy.version, c.policy.digest)
                token.change_pin(resolve_pin(target, token.label), user_pin)
                session.close()  # the security officer logs in only once the user's session is closed
                if target_so is not None:
                    with open_token(target_so, rw=True, so=True) as officer:
                        officer.change_pin(resolve_pin(target_so, officer.label), so_pin)
        c.record(
            "root-token",
            "recover-root-key",
            details={"key_id": key.key_id, "token": target.token, "verified_against": "root certificate", **found},
        )
        c.record(
            "root-token",
            "policy-head",
            details={"head": POLICY_HEAD, "version": c.policy.version, "sha256": c.policy.digest, "matched": matched},
        )
        c.credentials = dataclasses.replace(c.credentials, root=target)

    def run(c: Ceremony) -> OperationResult:
        return OperationResult(None)

    return prepare, run


@contextlib.contextmanager
def _open_recovery_token(target: Pkcs11Uri) -> Iterator[TokenSession]:
    try:
        with open_token(target, rw=True) as token:
            yield token
    except PinIncorrectError as e:
        raise PinIncorrectError(
            f"token '{target.token}' refused the PIN the credentials give for 'recovery': if a recovery onto it "
            "finished, the officers' shares open it now; name it as the root token instead"
        ) from e


def _left_by_recovery(c: Ceremony, token: TokenSession) -> TokenKey | None:
    """The root key a recovery that stopped before the PINs changed left on ``token``; ``None`` if it is empty.

    A recovery is resumed, not redone: the key it unwrapped is used again
    once it passes the checks of any found root key. Any other private key
    makes the token unfit for a recovery.
    """
    private = [o for o in token.objects() if o.type == "private"]
    if not private:
        return None
    if len(private) == 1 and private[0].key_id == c.policy.root.key_id:
        return token.key_by_public(c.policy.root.public_key, backupable=True, unwrapped=True)
    raise InputError(f"token '{token.label}' already holds private keys; recover onto an empty token")


# --- capabilities, asked before anything changes ------------------------------------------

RECOVERY_NEEDS = [Need.ECDSA, Need.KEY_UNWRAP, Need.HEAD_RECORDS]
"""What a recovery token must do; a security officer and CKA_WRAP_WITH_TRUSTED it may lack (see above)."""


def check_token_capabilities(script: OperationScript, credentials: Credentials) -> None:
    """Ask every token the ceremony will use what it can do, and refuse before anything changes.

    The root token (the recovery token in a recovery) and the officers' tokens
    are asked of their modules without a login; a role holder's token is
    opened read-only to see whether its key is there already (else the token
    must also make one). Nothing on any token changes.

    Raises:
        MechanismNotSupportedError: one line naming the token, the missing capability and the role.
    """
    spec = script.spec
    if isinstance(spec, Recover):
        require_capabilities(credentials.need("recovery"), RECOVERY_NEEDS, role="recovery token")
    else:
        root_needs = [Need.ECDSA, Need.HEAD_RECORDS]
        if isinstance(spec, Backup):  # no other way serves a backup
            root_needs += [Need.SO_LOGIN, Need.TRUSTED_WRAP]
        require_capabilities(
            credentials.root, root_needs, role="root token of a backup" if isinstance(spec, Backup) else "root token"
        )
    for officer, uri in credentials.officers.items():
        require_capabilities(uri, [Need.ECDSA], role=f"token of officer '{officer}'")
    if isinstance(spec, IssueRoles):
        for role, holder, uri, role_spec, usage in _role_holders(spec, credentials):
            with open_token(uri) as token:
                if names_key(uri):
                    token.key_for(uri)  # a key the credentials name (a PIV slot) must be there and usable
                present = names_key(uri) or key_present(token, role_spec.key_label)
            needs = [Need.ECDSA] if usage == "sign" else [Need.ECDH]
            if not present:
                needs.append(Need.EC_KEYGEN)
            if role == "release-signer":
                needs.append(Need.HEAD_RECORDS)  # the promotion log's head and the security counters
            name = f"{role} '{holder}'" if role in _GROUPS else role.replace("-", " ")
            require_capabilities(uri, needs, role=f"token of the {name}")


# --- dispatch ---------------------------------------------------------------------


def check_ceremony_inputs(
    script: OperationScript,
    *,
    request: bytes | None = None,
    station_id: str | None = None,
    backup: bytes | None = None,
    backup_shares: Sequence[str] = (),
) -> str | None:
    """Refuse an input the ceremony does not take (naming the one that does), before any share is asked for.

    Returns:
        For ``enrol-station``, the id of the station the request is for
        (checked against the script and ``station_id``); else ``None``.

    Raises:
        InputError: an input given to a ceremony that takes none, a request
            missing or for another station.
    """
    given = {
        "--request": (request is not None, "enrol-station"),
        "--station-id": (station_id is not None, "enrol-station"),
        "--backup": (backup is not None, "recover"),
        "--backup-share": (bool(backup_shares), "recover"),
    }
    for option, (present, taker) in given.items():
        if present and script.kind != taker:
            raise InputError(f"a '{script.kind}' ceremony takes no {option} (only '{taker}' does); leave it out")
    if not isinstance(script.spec, EnrolStation):
        return None
    if request is None:
        raise InputError("enrolling a station needs its enrolment request (--request FILE)")
    return _enrolled_station(script.spec, open_enrolment_request(request), station_id)[0]


def run_operation_ceremony(
    script: OperationScript,
    credentials: Credentials,
    inputs: CeremonyInputs,
    out: Path,
    *,
    rehearsal: bool,
    confirm: Confirm = no_confirm,
    request: bytes | None = None,
    backup: bytes | None = None,
    backup_shares: Sequence[str] = (),
    station_id: str | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> CeremonyResult:
    """Run the ceremony ``script`` describes inside the quorum frame.

    Args:
        script: a parsed script other than a root ceremony's.
        credentials: where the tokens are (root, officers present, role holders).
        inputs: the pinned root certificate, the current policy and the custodians' shares.
        out: a new folder for the outputs.
        rehearsal: the policy and every output are a rehearsal's.
        confirm: asked before each irreversible step.
        request: the station's enrolment request (``enrol-station``).
        backup: the backup file and ``backup_shares`` its KEK's shares (``recover``).
        station_id: the station the officers expect the request to be for (``enrol-station``).
        clock: the time source.

    Raises:
        InputError: an input this ceremony does not take (a request to a renewal) is refused, not ignored.
        VaultError: a check or an operation failed; outputs so far stay in ``out``.
    """
    spec = script.spec
    station = check_ceremony_inputs(
        script, request=request, station_id=station_id, backup=backup, backup_shares=backup_shares
    )
    prepare = None
    operation: Operation
    header: dict[str, Any] = {"witnesses": list(script.witnesses)}
    if isinstance(spec, EnrolStation):
        assert request is not None and station is not None
        header["station"] = station
        operation = enrol_station(spec, request, station_id)
    elif isinstance(spec, IssueRoles):
        operation = issue_roles(spec)
    elif isinstance(spec, RenewPolicy):
        operation = renew_policy(spec)
    elif isinstance(spec, Revoke):
        operation = revoke(spec)
    elif isinstance(spec, Backup):
        operation = backup_root(spec)
    elif isinstance(spec, Recover):
        if backup is None:
            raise InputError("a recovery needs the backup file (--backup FILE) and the KEK shares (--backup-share)")
        prepare, operation = recover_root(backup, backup_shares)
    else:
        raise InputError(f"no ceremony of type '{script.kind}'")
    check_token_capabilities(script, credentials)
    return run_quorum_ceremony(
        script.kind,
        script.name,
        script.source_digest,
        credentials,
        inputs,
        out,
        operation,
        rehearsal=rehearsal,
        confirm=confirm,
        clock=clock,
        header=header,
        prepare=prepare,
        policy_expires_days=script.policy_expires_days,
    )
