"""What every ceremony shares: participants, credentials, the root token's PINs, co-signing, share files."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import hmac
import shutil
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType

from cryptography.hazmat.primitives.asymmetric import ec

from vault._files import write_new
from vault.ceremony._sealed import seal_share
from vault.ceremony._shares import ShareSet
from vault.crypto import verify_signature
from vault.errors import InputError
from vault.formats import Envelope, add_signature
from vault.token import Capabilities, Need, Pkcs11Uri, TokenKey, TokenSession, open_token

REHEARSAL_MARK = "REHEARSAL"
ROOT_PIN_CHARS = 32  # 128 bits as hex: within the PIN length limits of common HSMs and smart cards

Confirm = Callable[[str], None]
"""Asked before each irreversible step: the first line names the step; any further lines are what
the officers check before they agree (a policy diff, a digest to read aloud). Raises to stop."""


def no_confirm(_: str) -> None:
    """The confirm hook of a non-interactive run: every step goes ahead."""
    return None


@dataclass(frozen=True)
class Officer:
    """A participant named in a script; ``id`` is what credentials and shares refer to."""

    id: str
    name: str
    custody: str = "paper"  # or "sealed": the share is sealed to a key in the person's own token


@dataclass(frozen=True)
class Credentials:
    """Where each token is and how its PIN is read: kept apart from the reviewed script.

    ``root`` locates the root token; its PIN comes from the credentials only in
    the root ceremony (the initial PIN), and from the officers' shares after it.
    ``root_so`` is the root token's initial security-officer PIN, replaced in the
    root ceremony. ``recovery`` and ``recovery_so`` locate the empty token a
    recovery writes the root key onto.
    """

    root: Pkcs11Uri
    officers: Mapping[str, Pkcs11Uri]
    root_so: Pkcs11Uri | None = None
    release: Pkcs11Uri | None = None
    approvers: Mapping[str, Pkcs11Uri] = field(default_factory=dict)
    auditor: Pkcs11Uri | None = None
    cosigners: Mapping[str, Pkcs11Uri] = field(default_factory=dict)  # auditors' cosigning tokens, by holder id
    recovery: Pkcs11Uri | None = None
    recovery_so: Pkcs11Uri | None = None

    def need(self, name: str) -> Pkcs11Uri:
        """The URI called ``name``; refuse with the field to add when it is missing."""
        uri = getattr(self, name)
        if uri is None:
            raise InputError(f"this ceremony needs '{name}' in the credentials file")
        assert isinstance(uri, Pkcs11Uri)
        return uri


class OutputFolder:
    """A ceremony's ``--out`` folder: new, made by this run, and gone again if the run stops before it commits.

    A ceremony that stops (a typed "no", Ctrl-C, too few shares, a refused
    input, a token error) before its point of no return leaves nothing
    behind: the folder it made (and any parent folders it made for it) is
    removed with what this run wrote into it, so the same ``--out`` can be
    given again. Once the ceremony commits (it changed a PIN, or a token
    recorded a new policy version), the folder is kept whatever happens next:
    it holds what the officers need. A folder that existed is never used.

    Example::

        with OutputFolder(out) as folder:
            ...                 # write outputs; a failure here removes them
            folder.commit()     # from here on they stay
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.committed = False
        self._made: list[Path] = []  # the folders this run made, deepest first

    def __enter__(self) -> OutputFolder:
        if self.path.exists():
            raise InputError(f"{self.path} exists; a ceremony writes into a new folder only")
        missing = []
        folder = self.path
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        try:
            for each in reversed(missing):
                each.mkdir()
                self._made.insert(0, each)
        except FileExistsError as e:  # made by someone else meanwhile: not this run's
            self._remove()
            raise InputError(f"{e.filename} appeared while this ceremony was starting; start again") from e
        except OSError as e:
            self._remove()
            raise InputError(f"cannot make {self.path}: {e.strerror}") from e
        return self

    def commit(self) -> None:
        """The ceremony passed its point of no return: keep the folder from now on."""
        self.committed = True

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if kind is not None and not self.committed:
            self._remove()

    def _remove(self) -> None:
        if self._made:
            shutil.rmtree(self._made[0], ignore_errors=True)
        for folder in self._made[1:]:  # parents this run made, if nothing else went into them
            try:
                folder.rmdir()
            except OSError:
                break
        self._made = []


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, then raise it.

    For the few steps that must land together once begun: a token recording
    a new policy version and the policy file reaching the disk, a token's
    PINs being replaced. A crash can still stop them; a stray key press
    cannot. Outside the main thread (where Python delivers no signals) this
    does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        held.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if held:
        raise KeyboardInterrupt


def root_pins(secret: bytes) -> tuple[str, str]:
    """The root token's user PIN and security-officer PIN, both derived from the split secret.

    Both PINs are replaced in the root ceremony, so nobody can reset the user
    PIN with a security-officer PIN they alone know: the same m of n shares
    open either role, and each PIN is a separate one-way function of the secret.
    """
    user = hmac.new(secret, b"vault root token: user PIN", hashlib.sha256).hexdigest()[:ROOT_PIN_CHARS]
    so = hmac.new(secret, b"vault root token: security officer PIN", hashlib.sha256).hexdigest()[:ROOT_PIN_CHARS]
    return user, so


def with_pin(uri: Pkcs11Uri, pin: str) -> Pkcs11Uri:
    """``uri`` with ``pin`` in place of its PIN source (kept in memory only)."""
    return dataclasses.replace(uri, pin_source=None, pin_value=pin)


def names_key(uri: Pkcs11Uri) -> bool:
    """Whether a credentials URI names the holder's key itself (``object=`` or ``id=``), not only the token."""
    return uri.object is not None or uri.id is not None


def officer_needs(uri: Pkcs11Uri, custody: str = "paper") -> list[Need]:
    """What an officer's token must do: sign (with the key the URI names, or one vault makes there),
    and ECDH for the key a sealed share is sealed to."""
    needs = [Need.ECDSA] if names_key(uri) else [Need.EC_SIGNING]
    if custody == "sealed":
        needs += [Need.EC_KEYGEN, Need.ECDH]
    return needs


def capability_details(caps: Capabilities, *, without_so: str, without_backup: str) -> dict[str, str]:
    """What a root token's transcript records of how its module serves the role (``token-capabilities``)."""
    return {
        "module": caps.module,
        "security_officer": "SO PIN replaced by one derived from the split secret"
        if Need.SO_LOGIN in caps.has
        else f"none: the module has no security-officer login; {without_so}",
        "root_key_backup": "wrapped under a trusted key-encryption key only"
        if Need.TRUSTED_WRAP in caps.has
        else f"none: the module does not enforce CKA_WRAP_WITH_TRUSTED; {without_backup}",
    }


def key_present(token: TokenSession, label: str) -> bool:
    """Whether ``token`` holds a private key labelled ``label`` (what :func:`find_or_make` would use)."""
    return any(o.label == label and o.type == "private" for o in token.objects())


def find_or_make(
    token: TokenSession, label: str, curve: str, usage: str = "sign", *, named: Pkcs11Uri | None = None
) -> TokenKey:
    """The private key labelled ``label``, made inside the token first if there is none.

    With ``named`` (a credentials URI that names the key with ``object=`` or
    ``id=``, such as a PIV card's slot 9a, ``id=%01``), that key is used and
    never made: a PIV card's keys are generated by the card's own tool. It is
    checked like any key vault finds, and proven to sign with its public key.
    """
    if named is not None and names_key(named):
        key = token.key_for(named)
        if usage == "sign":
            verify_signature(key.public_key, b"vault key check", key.sign(b"vault key check"))
        return key
    if key_present(token, label):
        return token.key(label=label)
    return token.generate_ec_key(label, curve=curve, usage=usage)


def cosign(
    envelope: Envelope, officers: Mapping[str, Pkcs11Uri], keys: Mapping[str, ec.EllipticCurvePublicKey]
) -> bytes:
    """Add each officer's signature, from the officer's own token, one token at a time."""
    for officer, uri in officers.items():
        with open_token(uri) as token:
            envelope = add_signature(envelope, token.key_by_public(keys[officer]))
    return envelope.to_json()


def write_share_files(
    folder: Path,
    members: Sequence[Officer],
    share_set: ShareSet,
    *,
    title: str,
    mark: str,
    sealed_to: Mapping[str, ec.EllipticCurvePublicKey] | None = None,
) -> dict[str, Path]:
    """One share file per member (mode 0600), written and fsynced before the secret is used.

    A member whose custody is "sealed" gets ``ID.sealed.json``, sealed to the
    key ``sealed_to`` names for them; the others get a paper share ``ID.txt``.
    """
    folder.mkdir(mode=0o700)
    record = share_set.record
    files = {}
    for member, mnemonic in zip(members, share_set.mnemonics, strict=True):
        if member.custody == "sealed":
            if not sealed_to or member.id not in sealed_to:
                raise InputError(f"no key to seal {member.id}'s share to")
            data = seal_share(mnemonic, member.id, record.identifier, sealed_to[member.id])
            files[member.id] = write_new(folder / f"{member.id}.sealed.json", data, mode=0o600)
            continue
        heading = (
            f"{mark}vault custodian share for {member.name} ({member.id}) - {title}\n"
            f"share set {record.identifier}, {record.threshold} of {record.count} needed\n"
        )
        files[member.id] = write_new(folder / f"{member.id}.txt", (heading + mnemonic + "\n").encode(), mode=0o600)
    return files


def b64(data: bytes) -> str:
    """Standard base64 text."""
    return base64.b64encode(data).decode()
