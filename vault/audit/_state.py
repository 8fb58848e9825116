"""The state an incremental audit keeps between runs, authenticated by the auditor's token.

An auditor who audited a station's exports 1..n and receives n+1 audits only
the new export: the verified state of the earlier ones (each station log's
Merkle frontiers and signed roots, the identity index of every verified
manifest, the units used, the counters and test-record tallies, the findings
raised so far) is kept in a folder the auditor names (``vault audit --state``).

The folder is only as trustworthy as its authentication: a state edited to
drop a clone's first appearance, or swapped for another auditor's, would
hide findings. So every generation of the state carries a MAC over the
digests of its three files (the BLAKE3 of each of the index's two files,
which hashes the hundreds of megabytes of a million manifests' index in a
tenth of a second where SHA-256 takes half a second; the engine state's
SHA-256), keyed by a secret only the auditor's token can
compute: the ECDH of the token's key with a fixed point of the curve whose
discrete logarithm nobody knows (found by hashing a fixed string onto the
curve), through HKDF. Anyone can read the state's public key but nobody
without the token's private key can compute that secret, so a state that
was edited, moved between auditors or made up is refused with one line,
before any of it is read.

Layout: ``DIR/current`` names the generation in use (``gen-<n>``), which
holds ``state.pickle`` (the engine's state, read only after the MAC holds),
the identity index (layered, see :mod:`vault.audit._index`: its base
``audit-index-base.sqlite``, which no run writes, and
``audit-index.sqlite``, the rows added since), ``state.mac`` and ``format``
(the state format, only to name an older vault's state in the refusal). A
run copies the small file into a new staging folder (what the run then
reads and extends is the copy it hashed) and links the base there, and
switches ``current`` with a rename once the audit finished, so a run that
stops halfway leaves the previous generation in place and the same command
completes it. The base is not copied (unless the run merges the small file
into it): it is hashed through the link, and only a regular file that this
user owns and nobody else may write is linked, made read-only when it is
made, so that nobody else can plant a file in the folder and write to it
after it was hashed. A run hashes the base once when it did not make it.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
import pickle
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vault._files import fsync_dir
from vault.audit._index import BASE_FILE, INDEX_FILE
from vault.errors import InputError
from vault.hpke import Decapsulator

__all__ = ["STATE_FORMAT", "StateFolder", "state_key"]

STATE_FORMAT = "vault-audit-state/v3"  # v3: the index in two files; v2: one, its digest BLAKE3; v1: SHA-256
_CURRENT = "current"
_BLOB = "state.pickle"
_MAC = "state.mac"
_FORMAT = "format"
_OLDER_FORMATS = frozenset({"vault-audit-state/v1", "vault-audit-state/v2"})  # named in their refusal
_ANCHOR_LABEL = b"vault audit state: a point of unknown discrete logarithm"

# (p, b) of y^2 = x^3 - 3x + b over GF(p); both primes are 3 mod 4, so a square root is one power
_CURVES: dict[str, tuple[int, int, ec.EllipticCurve]] = {
    "secp256r1": (
        0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF,
        0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B,
        ec.SECP256R1(),
    ),
    "secp384r1": (
        0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFFFF0000000000000000FFFFFFFF,
        0xB3312FA7E23EE7E4988E056BE3F82D19181D9C6EFE8141120314088F5013875AC656398D8A2ED19D2A85C8EDD3EC2AEF,
        ec.SECP384R1(),
    ),
}


def _anchor(curve_name: str) -> ec.EllipticCurvePublicKey:
    """The first point of the curve whose x coordinate is a hash of the label and a counter (try and
    increment): nobody knows its discrete logarithm."""
    try:
        p, b, curve = _CURVES[curve_name]
    except KeyError:
        raise InputError(f"an audit state needs an auditor key on P-256 or P-384, not {curve_name}") from None
    size = (p.bit_length() + 7) // 8
    for counter in range(1000):
        x = int.from_bytes(hashlib.shake_256(_ANCHOR_LABEL + counter.to_bytes(4, "big")).digest(size), "big")
        if x >= p:
            continue
        rhs = (pow(x, 3, p) - 3 * x + b) % p
        y = pow(rhs, (p + 1) // 4, p)
        if y * y % p == rhs:
            return ec.EllipticCurvePublicNumbers(x, min(y, p - y), curve).public_key()
    raise AssertionError("no point found")  # pragma: no cover - about one counter in two gives one


def state_key(decapsulator: Decapsulator) -> bytes:
    """The MAC key of the audit state: only the holder of the auditor's private key can compute it."""
    secret = decapsulator.ecdh(_anchor(decapsulator.public_key.curve.name))
    return HKDF(hashes.SHA256(), 32, salt=None, info=STATE_FORMAT.encode()).derive(secret)


def _index_hasher() -> Any:
    try:
        import blake3  # the cli extra's: only an audit with --state needs it
    except ImportError:  # pragma: no cover - installed with vault[cli]
        raise InputError("an audit state needs the blake3 package: pip install 'vault[cli]'") from None
    return blake3.blake3(max_threads=blake3.blake3.AUTO)


def _index_digest(path: Path) -> bytes:
    """The BLAKE3 digest of an index file, read through a map (no copy into buffers) on every core."""
    hasher = _index_hasher()
    try:
        hasher.update_mmap(path)
    except OSError as e:
        e.filename = e.filename or str(path)
        raise
    return bytes(hasher.digest())


def _copy_digest(source: Path, target: Path) -> bytes:
    """Copy ``source`` to ``target`` (in the kernel) and return the copy's BLAKE3 digest: what is hashed is
    what the run then reads."""
    shutil.copyfile(source, target)
    return _index_digest(target)


def _link(source: Path, target: Path) -> None:
    """``target`` the same file as ``source`` (a copy where the file system cannot link)."""
    try:
        os.link(source, target, follow_symlinks=False)
    except FileNotFoundError:
        raise
    except OSError:  # pragma: no cover - a file system without hard links
        shutil.copyfile(source, target, follow_symlinks=False)


def _own_file(path: Path, state: Path, *, only_mine: bool = True) -> os.stat_result:
    """``path``'s status, when it is a regular file (not a link, nor a pipe a read would wait on) and, with
    ``only_mine``, one this user owns and nobody else may write.

    Raises:
        InputError: it is anything else: not this user's state, or planted to be written after it is hashed.
        OSError: it cannot be read.
    """
    seen = path.lstat()
    others = seen.st_uid != os.geteuid() or seen.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if not stat.S_ISREG(seen.st_mode) or (only_mine and others):
        raise InputError(
            f"the audit state in {state} holds {path.name} as something other than a file only this user "
            "can write (another user's file, a link, a pipe, or writable by others): refused"
        )
    return seen


def _identity(seen: os.stat_result) -> tuple[int, int, int, int]:
    return seen.st_dev, seen.st_ino, seen.st_size, seen.st_mtime_ns


class StateFolder:
    """An auditor's state folder: :meth:`load` the generation in use, :meth:`stage` a new one, :meth:`commit` it."""

    def __init__(self, path: str | os.PathLike[str], decapsulator: Decapsulator) -> None:
        self.path = Path(path)
        self._key = state_key(decapsulator)
        self._lock: int | None = None
        self._base: tuple[tuple[int, int, int, int], bytes] | None = None  # the base load linked: (file, digest)

    def _mac(self, generation: str, blob: bytes, index_digest: bytes, base_digest: bytes) -> bytes:
        parts = (STATE_FORMAT.encode(), generation.encode(), hashlib.sha256(blob).digest(), index_digest, base_digest)
        return hmac.new(self._key, b"\n".join(parts), hashlib.sha256).digest()

    def _generation(self) -> str | None:
        current = self.path / _CURRENT
        if not current.is_file():
            return None
        name = current.read_text(encoding="ascii", errors="replace").strip()
        if not name.startswith("gen-") or not name[4:].isdigit():
            raise InputError(f"{current} does not name a state generation: the audit state is damaged")
        return name

    def load(self, staging: Path) -> dict[str, Any] | None:
        """The state the last run left, its index copied into ``staging`` (a folder of :meth:`stage`, as
        :data:`INDEX_FILE`), or None when the folder holds none yet; the folder is held (:meth:`lock`) until
        :meth:`release`.

        Raises:
            InputError: the folder is not a state folder, another audit is using it, or its state is
                not authentic for this auditor's token (edited, swapped, or made with another token).
        """
        self.lock()
        try:
            return self._load(staging)
        except BaseException:
            self.release()
            raise

    def _load(self, staging: Path) -> dict[str, Any] | None:
        generation = self._generation()
        if generation is None:
            stopped = "gen-1"  # the first run's generation, left when it stopped before `current` named it
            if self.path.is_dir() and any(p.name != stopped for p in self.path.iterdir() if not p.name.startswith(".")):
                raise InputError(f"{self.path} holds files but no audit state: give an empty or a state folder")
            return None
        folder = self.path / generation
        try:
            made = (folder / _FORMAT).read_text(encoding="ascii", errors="replace").strip()
        except OSError:  # v1 wrote no format file; a later state without one was edited: the MAC decides
            made = STATE_FORMAT if (folder / BASE_FILE).exists() else "vault-audit-state/v1"
        if made in _OLDER_FORMATS and (folder / _MAC).is_file():  # any other text: the MAC decides
            raise InputError(
                f"the audit state in {self.path} was made by another version of vault ({made[:40]!r}, this one "
                f"reads {STATE_FORMAT}): audit without --state, or with a new state folder"
            )
        base = staging / BASE_FILE
        try:
            blob = (folder / _BLOB).read_bytes()
            mac = (folder / _MAC).read_bytes()
            _own_file(folder / INDEX_FILE, self.path, only_mine=False)  # copied, and the copy hashed
            index_digest = _copy_digest(folder / INDEX_FILE, staging / INDEX_FILE)
            _link(folder / BASE_FILE, base)  # a link is linked as a link, and refused as one
            seen = _own_file(base, self.path)
            base_digest = _index_digest(base)
        except OSError as e:
            shown = f"{e.strerror}: {e.filename}" if e.strerror else str(e)
            raise InputError(f"the audit state in {self.path} is incomplete: {shown}") from e
        self._base = _identity(seen), base_digest
        if not hmac.compare_digest(mac, self._mac(generation, blob, index_digest, base_digest)):
            raise InputError(
                f"the audit state in {self.path} is not authentic for this auditor's token "
                "(edited, swapped, or made with another token): refused"
            )
        state = pickle.loads(blob)  # authenticated above: written by this auditor's own earlier run
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise InputError(f"the audit state in {self.path} is not a {STATE_FORMAT} state")
        return state

    def stage(self) -> Path:
        """A new, empty staging folder inside the state folder (made first when missing), once no other
        audit uses the folder; what a stopped run staged is removed.

        Raises:
            InputError: another audit is using the state folder.
        """
        self.lock()
        for stale in self.path.glob(".staging-*"):
            shutil.rmtree(stale, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=self.path))

    def lock(self) -> None:
        """Hold the folder (made when missing) until :meth:`release`: one audit at a time uses a state.

        Raises:
            InputError: another audit is using it, or it is not a folder.
        """
        if self._lock is not None:
            return
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"{self.path} is not a folder: give the audit state folder (made by the first run)")
        self.path.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            raise InputError(f"another audit is using the audit state in {self.path}") from None
        self._lock = lock

    def release(self) -> None:
        """Let another audit use the folder."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def commit(self, staging: Path, state: dict[str, Any]) -> None:
        """Make ``staging`` (holding the index) with ``state`` the generation in use, atomically."""
        previous = self._generation()
        number = 1 + (int(previous[4:]) if previous else 0)
        generation = f"gen-{number}"
        blob = pickle.dumps({**state, "format": STATE_FORMAT}, protocol=pickle.HIGHEST_PROTOCOL)
        (staging / _BLOB).write_bytes(blob)
        base = staging / BASE_FILE
        if self._base is not None and self._base[0] == _identity(base.stat()):
            base_digest = self._base[1]  # the base load linked and hashed: no run writes a base
        else:  # one this run made: read-only from now on (later runs link it, and refuse one others can write)
            os.chmod(base, stat.S_IRUSR)
            base_digest = _index_digest(base)
        (staging / _MAC).write_bytes(self._mac(generation, blob, _index_digest(staging / INDEX_FILE), base_digest))
        (staging / _FORMAT).write_text(STATE_FORMAT + "\n", encoding="ascii")
        for name in (_BLOB, _MAC, _FORMAT, INDEX_FILE, BASE_FILE):
            fsync_dir(staging / name)
        target = self.path / generation
        shutil.rmtree(target, ignore_errors=True)  # a generation a stopped run staged but never made current
        os.rename(staging, target)
        pointer = self.path / f".{_CURRENT}.new"
        pointer.write_text(generation + "\n", encoding="ascii")
        fsync_dir(pointer)
        os.replace(pointer, self.path / _CURRENT)
        fsync_dir(self.path)
        for stale in self.path.glob("gen-*"):  # the previous one, and any a run stopped before removing
            if stale.name != generation:
                shutil.rmtree(stale, ignore_errors=True)

    @staticmethod
    def abandon(staging: Path) -> None:
        """Remove a staging folder of a run that did not finish."""
        shutil.rmtree(staging, ignore_errors=True)
