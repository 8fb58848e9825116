"""The frame of every ceremony after the root one: quorum in, signed policy and transcript out.

Enrolling a station, issuing role certificates, renewing the policy, revoking
keys and backing up the root all run in the same frame:

1. the current trust policy is verified against the pinned root certificate
   (an expired one is accepted here only so that it can be renewed);
2. the officers present are those in the credentials file; each proves
   presence with the signing key the policy lists for them, in their own
   token, and at least the policy's officer threshold must be present;
3. at least m custodian shares are checked one by one against the share set
   the policy records (a mistyped, altered or foreign share is refused with
   its position and the reason) and combined into the root token's PINs;
4. the root key is found in the root token and must be the policy's; the
   policy must not be older than the last one the root token signed (its
   ``root-policy`` head, :mod:`vault.ceremony._policy_head`);
5. the ceremony's own operation runs (see :mod:`vault.ceremony._operations`);
6. when it changes the policy, version n+1 is signed by the root and every
   officer present, and checked by the same verifier stations use; the root
   token records it as its head, and only then is the file written;
7. the transcript is signed by the root and every officer present.

A ceremony that stops before step 6 leaves no ``--out`` folder behind; after
it, the folder is kept (:class:`vault.ceremony._common.OutputFolder`).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vault import pki
from vault._files import write_new
from vault._words import readable_digest
from vault.ceremony import _lint, _shares
from vault.ceremony._common import (
    REHEARSAL_MARK,
    Confirm,
    Credentials,
    OutputFolder,
    b64,
    cosign,
    root_pins,
    uninterrupted,
    with_pin,
)
from vault.ceremony._html import render_transcript
from vault.ceremony._policy_head import POLICY_HEAD, advance_policy_head, check_policy_head, check_unchanged
from vault.ceremony._policy_view import diff_policies, policy_view
from vault.ceremony._transcript import PAYLOAD_TYPE, Transcript
from vault.crypto import key_id
from vault.errors import InputError, PolicyError, ShareError, ThresholdError
from vault.formats import Envelope, sign_envelope, sign_statement
from vault.policy import MAX_POLICY_SIZE, TrustPolicy, format_time, load_policy, policy_statement
from vault.token import Head, TokenKey, TokenSession, open_token


@dataclass(frozen=True)
class CeremonyInputs:
    """What a ceremony after the root one starts from, besides its script and credentials."""

    root_certificate: x509.Certificate
    policy: bytes
    shares: Sequence[str]  # mnemonics, as typed or read from files


@dataclass
class Ceremony:
    """A ceremony in progress: the verified policy, the quorum, the transcript, the outputs."""

    kind: str
    name: str
    policy: TrustPolicy
    root_certificate: x509.Certificate
    credentials: Credentials
    out: Path
    transcript: Transcript
    rehearsal: bool
    confirm: Confirm
    clock: Callable[[], datetime]
    folder: OutputFolder
    present: dict[str, Any] = field(default_factory=dict)  # officer id -> token URI
    secret: bytes = b""
    policy_head: Head | None = None  # the root token's, as this ceremony last read or wrote it
    policy_statement_sha256: str = ""  # SHA-256 of the current policy's signed statement

    @property
    def mark(self) -> str:
        """The prefix that marks rehearsal outputs."""
        return f"{REHEARSAL_MARK} " if self.rehearsal else ""

    def now(self) -> datetime:
        """The ceremony clock, in whole seconds."""
        return self.clock().replace(microsecond=0)

    def record(self, actor: str, action: str, **kwargs: Any) -> None:
        """Append a step to the transcript at the ceremony clock's time."""
        self.transcript.record(actor, action, now=self.now(), **kwargs)

    @contextlib.contextmanager
    def root_session(self, *, so: bool = False) -> Iterator[TokenSession]:
        """The root token, opened with the quorum's PIN (``so`` for the security officer's)."""
        user_pin, so_pin = root_pins(self.secret)
        with open_token(with_pin(self.credentials.root, so_pin if so else user_pin), rw=True, so=so) as token:
            yield token

    def root_key(self, token: TokenSession) -> TokenKey:
        """The root key in ``token``; it must be the one the policy names.

        The root key alone may be extractable wrapped under a trusted key (its
        backup path), and may have been unwrapped onto this token by a recovery.
        """
        return token.key_by_public(self.policy.root.public_key, backupable=True, unwrapped=True)

    def issue(
        self, token: TokenSession, public_key: ec.EllipticCurvePublicKey, profile: pki.CertProfile, name: str
    ) -> x509.Certificate:
        """Lint, then sign in the root token, a certificate for ``public_key``; write ``certs/NAME.pem``."""
        profile = pki.with_validity(profile, self.now())
        certificate = pki.issue_certificate(
            public_key,
            profile,
            self.root_key(token),
            issuer_certificate=self.root_certificate,
            serial=pki.random_serial(token.generate_random),
            lint=_lint.require_clean,
        )
        folder = self.out / "certs"
        folder.mkdir(exist_ok=True)
        pem = certificate.public_bytes(serialization.Encoding.PEM)
        write_new(folder / f"{name}.pem", pem)
        self.record(
            "root-token",
            "issue-certificate",
            outputs={f"certs/{name}.pem": certificate.public_bytes(serialization.Encoding.DER)},
            details={
                "name": name,
                "serial": f"{certificate.serial_number:x}",
                "subject": certificate.subject.rfc4514_string(),
                "key_id": key_id(public_key),
                "not_after": format_time(certificate.not_valid_after_utc),
                "linted": "pkilint rfc5280",
            },
        )
        return certificate


@dataclass(frozen=True)
class CeremonyResult:
    """What a ceremony wrote."""

    out: Path
    transcript: Path
    html: Path
    policy: Path | None
    outputs: dict[str, Path]


Operation = Callable[[Ceremony], "OperationResult"]


@dataclass(frozen=True)
class OperationResult:
    """What an operation did: a new policy predicate (or ``None``) and files it wrote."""

    predicate: dict[str, Any] | None
    outputs: dict[str, Path] = field(default_factory=dict)


def run_quorum_ceremony(
    kind: str,
    name: str,
    script_digest: str,
    credentials: Credentials,
    inputs: CeremonyInputs,
    out: Path,
    operation: Operation,
    *,
    rehearsal: bool,
    confirm: Confirm,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    header: Mapping[str, Any] | None = None,
    prepare: Callable[[Ceremony], None] | None = None,
    policy_expires_days: int | None = None,
) -> CeremonyResult:
    """Run ``operation`` inside the quorum frame described in the module docstring.

    ``prepare`` runs once the quorum's secret is known and before the root
    key is looked for: recovery uses it to put the root key onto a new token.

    Raises:
        VaultError: a check failed (policy, officers, shares, root key, the
            root token's policy head) or the operation refused; ``out`` is
            removed unless the root token already recorded the new policy.
    """
    policy = load_policy(inputs.policy, inputs.root_certificate, now=clock(), allow_expired=True)
    if policy.rehearsal != rehearsal:
        raise PolicyError(
            "the trust policy is from a rehearsal: run this ceremony with --rehearsal"
            if policy.rehearsal
            else "the trust policy is a production one: a rehearsal must start from a rehearsal policy"
        )
    _check_present(policy, credentials)
    with OutputFolder(out) as folder:
        return _run(
            kind, name, script_digest, credentials, inputs, folder, operation, policy,
            rehearsal=rehearsal, confirm=confirm, clock=clock, header=header, prepare=prepare,
            policy_expires_days=policy_expires_days,
        )  # fmt: skip


def _run(
    kind: str,
    name: str,
    script_digest: str,
    credentials: Credentials,
    inputs: CeremonyInputs,
    folder: OutputFolder,
    operation: Operation,
    policy: TrustPolicy,
    *,
    rehearsal: bool,
    confirm: Confirm,
    clock: Callable[[], datetime],
    header: Mapping[str, Any] | None,
    prepare: Callable[[Ceremony], None] | None,
    policy_expires_days: int | None,
) -> CeremonyResult:
    out = folder.path
    start = clock()
    transcript = Transcript.start(
        {
            "type": kind,
            "name": name,
            "rehearsal": rehearsal,
            "script_sha256": script_digest,
            "policy_version": policy.version,
            "policy_sha256": policy.digest,
            "officers_present": sorted(credentials.officers),
            "threshold": policy.officers_threshold,
            "officers_total": len(policy.officers),
            **_organization(inputs.root_certificate),
            **(header or {}),
        },
        now=start,
    )
    ceremony = Ceremony(
        kind=kind,
        name=name,
        policy=policy,
        root_certificate=inputs.root_certificate,
        credentials=credentials,
        out=out,
        transcript=transcript,
        rehearsal=rehearsal,
        confirm=confirm,
        clock=clock,
        folder=folder,
        present=dict(credentials.officers),
        policy_statement_sha256=_statement_sha256(inputs.policy),
    )
    details: dict[str, Any] = {"rehearsal": rehearsal, "policy_version": policy.version}
    if start >= policy.expires:
        details["policy_expired"] = format_time(policy.expires)
    ceremony.record("vault", "open-ceremony", details=details)
    _officers_present(ceremony)
    ceremony.secret = quorum_secret(policy, inputs.shares)
    ceremony.record("officers", "quorum", details={"shares_given": len(inputs.shares)})
    if prepare is not None:
        prepare(ceremony)
    with ceremony.root_session() as token:
        root_key = ceremony.root_key(token)
        ceremony.record(
            "root-token",
            "root-key",
            details={"key_id": root_key.key_id, "spki": b64(root_key.spki_der), "token": token.label},
        )
        # Before anything irreversible: the policy given must be the last one this root token signed.
        ceremony.policy_head, matched = check_policy_head(token, policy.version, policy.digest)
        ceremony.record(
            "root-token",
            "policy-head",
            details={"head": POLICY_HEAD, "version": policy.version, "sha256": policy.digest, "matched": matched},
        )

    result = operation(ceremony)
    policy_file = None
    if result.predicate is not None:
        policy_file = _sign_next_policy(ceremony, result.predicate, policy_expires_days)

    ceremony.record("vault", "close-ceremony")
    with ceremony.root_session() as token:
        envelope = sign_envelope(PAYLOAD_TYPE, transcript.to_bytes(), [ceremony.root_key(token)])
    signed = cosign(envelope, ceremony.present, _officer_keys(policy, ceremony.present))
    write_new(out / "transcript.json", signed)
    write_new(out / "transcript.html", render_transcript(transcript).encode())
    return CeremonyResult(
        out=out,
        transcript=out / "transcript.json",
        html=out / "transcript.html",
        policy=policy_file,
        outputs=result.outputs,
    )


def quorum_secret(policy: TrustPolicy, mnemonics: Sequence[str]) -> bytes:
    """Check the shares against the policy's root PIN share set and rebuild the secret.

    Raises:
        ShareError: too few shares (with how many are missing), or one is
            mistyped, altered, foreign or repeated (with its position).
    """
    raw = policy.custody.get("root_pin")
    if raw is None:
        raise PolicyError("the trust policy records no share set for the root token PIN")
    record = _shares.ShareSetRecord.from_dict(raw)
    if not mnemonics:
        raise ShareError(f"no shares given: {record.threshold} of the {record.count} custodians' shares are needed")
    return _shares.combine_shares(list(mnemonics), record)


def _check_present(policy: TrustPolicy, credentials: Credentials) -> None:
    unknown = sorted(set(credentials.officers) - set(policy.officers))
    if unknown:
        raise InputError(f"the credentials file names officer(s) the policy does not know: {', '.join(unknown)}")
    if len(credentials.officers) < policy.officers_threshold:
        raise ThresholdError(
            f"{policy.officers_threshold} officers must be present and sign; the credentials file names "
            f"{len(credentials.officers)}"
        )


def _officer_keys(policy: TrustPolicy, present: Mapping[str, Any]) -> dict[str, ec.EllipticCurvePublicKey]:
    return {officer: policy.officers[officer].public_key for officer in present}


def _officers_present(ceremony: Ceremony) -> None:
    """Each officer present shows the key the policy lists for them, in their own token."""
    for officer, uri in ceremony.present.items():
        with open_token(uri) as token:
            key = token.key_by_public(ceremony.policy.officers[officer].public_key)
        ceremony.record(
            officer, "officer-present", details={"key_id": key.key_id, "spki": b64(key.spki_der), "token": token.label}
        )


def _organization(root: x509.Certificate) -> dict[str, str]:
    """``{"organization": O}`` from the root certificate's subject, if it names one."""
    names = root.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)
    value = names[0].value if names else None
    return {"organization": value} if isinstance(value, str) else {}


def _statement_sha256(policy: bytes) -> str:
    return hashlib.sha256(Envelope.from_json(policy, max_size=MAX_POLICY_SIZE).payload).hexdigest()


def _signing_step(ceremony: Ceremony, predicate: dict[str, Any], statement_sha256: str) -> str:
    """The confirmation before the root signs: the step, what changes, and the digest to read aloud."""
    current = ceremony.policy
    old = policy_view(current.predicate, statement_sha256=ceremony.policy_statement_sha256)
    new = policy_view(predicate, statement_sha256=statement_sha256)
    lines = [f"sign trust policy v{new.version} with the root and the officers present"]
    lines += diff_policies(old, new).lines()
    lines.append(f"new policy statement sha256 {statement_sha256}")
    lines.append(f"read aloud: {readable_digest(statement_sha256)}")
    return "\n".join(lines)


def _sign_next_policy(ceremony: Ceremony, predicate: dict[str, Any], expires_days: int | None) -> Path:
    current = ceremony.policy
    predicate = dict(predicate)
    version = current.version + 1
    issued = ceremony.now()
    days = expires_days or max(1, (current.expires - current.issued).days)
    predicate.update(
        {"version": version, "issued": format_time(issued), "expires": format_time(issued + timedelta(days=days))}
    )
    statement = policy_statement(predicate, ceremony.root_certificate)
    statement_sha256 = hashlib.sha256(statement.to_bytes()).hexdigest()
    ceremony.confirm(_signing_step(ceremony, predicate, statement_sha256))
    with ceremony.root_session() as token:
        check_unchanged(token, ceremony.policy_head)
        envelope = sign_statement(statement, [ceremony.root_key(token)])
    signed = cosign(envelope, ceremony.present, _officer_keys(current, ceremony.present))
    # The same check a station makes: the new version must verify, with the quorum, as the next one.
    new = load_policy(signed, ceremony.root_certificate, now=issued, highest_seen=current.version)
    if new.version != current.version + 1:
        raise PolicyError(f"a new trust policy must be v{current.version + 1}, not v{new.version}")
    # The token records the version before the file exists, so no second v(n+1) can ever be signed;
    # the two steps run together (Ctrl-C waits), and from here the output folder is kept.
    with ceremony.root_session() as token, uninterrupted():
        ceremony.policy_head = advance_policy_head(token, version, new.digest, after=ceremony.policy_head)
        ceremony.folder.commit()
        path = write_new(ceremony.out / f"policy-v{version}.json", signed)
    ceremony.record(
        "officers",
        "sign-trust-policy",
        outputs={path.name: signed},
        details={
            "version": version,
            "previous_sha256": current.digest,
            "statement_sha256": statement_sha256,
            "expires": predicate["expires"],
        },
    )
    ceremony.record(
        "root-token",
        "policy-head",
        details={
            "head": POLICY_HEAD,
            "version": version,
            "sha256": new.digest,
            "generation": ceremony.policy_head.generation,
        },
    )
    return path
