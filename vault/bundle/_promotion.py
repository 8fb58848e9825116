"""Promote a bundle: whole or not at all, and never behind the release signer's token.

The release signer's token holds one head record, ``release-signer``
(:mod:`vault.token._heads`)::

    {"entries": 3, "log_head": "<hash of the log's last entry>",
     "counters": {"example-sensor": 8}}

It names the promotion log (its number of entries and its last entry's hash,
which commits to every entry before it) and the highest security counter
promoted per product. The log is the record; the token is the guard: a
promotion refuses a security counter below the token's for its product
whatever log it is given, and refuses a log that is not the one the token
names (emptied, truncated, older, replaced or another machine's).

A promotion has three writes, in this order:

1. **append** the signed entry to the log (fsynced);
2. **advance** the token's head to the log with that entry and the new counter;
3. **rewrite** the bundle with the release signer's signature (a temporary
   file renamed over it, :func:`vault.container.replace_envelope`).

Only the last write lets stations load the bundle, so a promoted bundle is
always in the log and in the token's head. Each write is whole or nothing on
its own (one appended line, cut back again if the write fails, say on a full
disk; one new token object; one rename), and a process killed between two of
them leaves a state that the same command, run again, recognises and
completes:

- killed before 1: nothing changed;
- killed during 1 (a power cut): the log may end in a cut-short line, past
  the token's head, so never promoted: the run again removes it, says so,
  and promotes;
- killed after 1: the log holds one entry past the token's head, for this
  bundle: the run again writes the head and the bundle;
- killed after 2: the log and the token hold the entry, the bundle is not
  signed: the run again finds the entry and rewrites the bundle;
- killed after 3: done; the run again says so and exits 0.

An entry past the head for another bundle stops every other promotion until
that bundle's command is run again, or, if that bundle is gone for good,
:func:`abandon_promotion` (``vault bundle log abandon``) takes the entry out
of the log, keeping its line in ``<log>.abandoned``. Nothing the token's head
covers is ever removed: such an entry is permanent and its counter used.

The token's head is written after the log, not before, so that it only ever
names a log that exists on disk: ``vault bundle log verify --token`` never
finds a head ahead of its log. Everything that can be refused (the bundle,
the approvals, the signer, the counter, the log against the token, the
folders being writable) is checked before the first write, and a lock on
the log's folder keeps two promotions from appending at once.

Example::

    with open_token(release_key_uri, rw=True) as token:
        result = promote_bundle(Path("release.vbundle"), token.key_for(release_key_uri), token,
                                policy, Path("promotions.log"), now=datetime.now(UTC))
    print(result.entry.index, result.head.log_head)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from vault._files import append_whole, cut_back, ends_with
from vault.bundle._approval import BundleView, refuse_expired, verify_bundle, with_signature
from vault.bundle._log import (
    GENESIS,
    LogEntry,
    LogReport,
    TornLine,
    append_promotion,
    last_line,
    release_signer_ids,
    remove_torn,
    verify_log,
)
from vault.crypto import Signer
from vault.errors import InputError, LogError, PolicyError, RollbackError, StateError, ThresholdError, VaultError
from vault.formats import verify_envelope
from vault.policy import TrustPolicy
from vault.release import Release
from vault.token import Head

HEAD_NAME = "release-signer"
_HEX64 = re.compile(r"[0-9a-f]{64}")

__all__ = [
    "HEAD_NAME",
    "Abandoned",
    "HeadStore",
    "Promotion",
    "PromotionHead",
    "abandon_promotion",
    "promote_bundle",
    "verify_log_against_digest",
    "verify_log_against_token",
]


class HeadStore(Protocol):
    """Where the promotion head lives: the release signer's token (:class:`vault.token.TokenSession`)."""

    @property
    def label(self) -> str: ...

    def head(self, name: str) -> Head | None: ...

    def write_head(self, name: str, value: dict[str, Any], *, after: Head | None) -> Head: ...


@dataclass(frozen=True)
class PromotionHead:
    """The promotion log and counters a release signer's token vouches for."""

    entries: int
    log_head: str
    counters: Mapping[str, int] = field(default_factory=dict)

    def to_value(self) -> dict[str, Any]:
        """The head record's value, as the token stores it."""
        return {"entries": self.entries, "log_head": self.log_head, "counters": dict(sorted(self.counters.items()))}

    @classmethod
    def from_record(cls, record: Head, token_label: str) -> PromotionHead:
        """Read a head record; a value vault did not write is refused.

        Raises:
            StateError: the record is not a promotion head.
        """
        value = record.value
        fields = {"entries", "log_head", "counters"}
        entries, log_head, counters = (value.get(k) for k in ("entries", "log_head", "counters"))
        if not (
            set(value) == fields
            and type(entries) is int
            and entries >= 0
            and isinstance(log_head, str)
            and _HEX64.fullmatch(log_head) is not None
            and isinstance(counters, dict)
            and all(isinstance(k, str) and type(v) is int and v >= 0 for k, v in counters.items())
        ):
            raise StateError(
                f"token '{token_label}' holds a '{HEAD_NAME}' head record that is not a promotion head; "
                "it was not written by vault"
            )
        return cls(entries, log_head, dict(counters))

    def advanced(self, report: LogReport) -> PromotionHead:
        """This head moved to the end of ``report``, a log that extends it."""
        counters = dict(self.counters)
        for entry in report.entries[self.entries :]:
            counters[entry.product] = max(counters.get(entry.product, entry.security_counter), entry.security_counter)
        return PromotionHead(len(report.entries), report.head, counters)


NO_HEAD = PromotionHead(0, GENESIS)


@dataclass(frozen=True)
class Promotion:
    """What :func:`promote_bundle` did.

    ``outcome`` is ``promoted`` (all three writes), ``recorded`` (the bundle
    was already signed by the release signer but missing from the log: it is
    logged now), ``finished`` (an interrupted promotion of this bundle was
    completed) or ``already`` (nothing was left to do). ``started`` says how
    a token without a head began: ``adopted`` the head of the log it was
    given (``adopted_entries`` long), or ``genesis`` (no log yet).
    ``removed`` is the cut-short last line it removed first, if the log
    ended in one that the token's head did not cover.
    """

    view: BundleView
    entry: LogEntry
    head: PromotionHead
    outcome: Literal["promoted", "recorded", "finished", "already"]
    started: Literal["adopted", "genesis"] | None
    adopted_entries: int = 0
    removed: TornLine | None = None


@dataclass(frozen=True)
class Abandoned:
    """What :func:`abandon_promotion` did.

    ``entry`` is the entry taken out of the log, whose line is now kept in
    ``kept``; ``head`` is the token's head, which the log ends at again;
    ``removed`` a cut-short line after the entry, removed with it.
    """

    entry: LogEntry
    kept: Path
    head: PromotionHead
    removed: TornLine | None = None


def promote_bundle(
    path: Path, key: Signer, token: HeadStore, policy: TrustPolicy, log: Path, *, now: datetime
) -> Promotion:
    """Sign the bundle as the release signer, once the approvers' threshold is met; log it; advance the token.

    ``key`` is the release signer's key and ``token`` the token that holds it
    (opened read-write). The order of the writes and what a re-run does after
    an interruption are in this module's docstring.

    Raises:
        InputError: the log's or the bundle's folder cannot be written.
        PolicyError: not the release signer; expired.
        RollbackError: a security counter below the token's (or, on first use, the log's) for the product.
        ThresholdError: too few approvals (says how many are missing).
        LogError: the log is not the one the token names, or holds another bundle's unfinished promotion.
        StateError: another promotion is running on this log, or the token's head changed meanwhile.
        InputError: the log could not be appended to (a full disk): it is as it was, and nothing was promoted.
        VaultError: the bundle or the promotion log does not verify.
    """
    _check_writable(path, log)
    with _lock(log):
        view = verify_bundle(path, policy)
        release = view.release
        signer = policy.release_signer
        if signer is None or key.key_id != signer.key_id:
            raise PolicyError(f"key {key.key_id[:16]} is not the release signer of trust policy v{policy.version}")
        if view.approvals.missing:
            present = ", ".join(view.approvals.approvers) or "none"
            raise ThresholdError(
                f"{view.approvals.threshold} approvals are needed, {len(view.approvals.approvers)} present "
                f"({present}): {view.approvals.missing} more missing"
            )
        verify_envelope(view.envelope, policy.trusted(policy.approvers), policy.approvers_threshold, what="approvals")

        record = token.head(HEAD_NAME)
        held = PromotionHead.from_record(record, token.label) if record is not None else None
        report: LogReport | None = None
        problem: VaultError | None = None
        pending: LogEntry | None = None
        try:
            report = verify_log(log, release_signer_ids(policy), allow_torn=True)
            if held is not None:
                pending = _check_against_head(report, held, log, token.label)
        except VaultError as e:  # a counter below the token's is named first, whatever the log
            problem = e
        recorded = _entry_for(report, release, log) if problem is None and report is not None else None
        if recorded is None:
            _refuse_rollback(release, held, report, token.label, log)
        if problem is not None:
            raise problem
        assert report is not None
        if pending is not None and pending.bundle_id != release.bundle_id:
            raise _pending_error(pending, log, token.label, "; it holds back every other promotion")
        base = held if held is not None else NO_HEAD
        started: Literal["adopted", "genesis"] | None = None
        adopted_entries = 0
        if held is None:
            started = "adopted" if report.entries else "genesis"
            adopted_entries = len(report.entries)

        if recorded is None:
            refuse_expired(release, now)
        removed: TornLine | None = None
        if report.torn is not None:
            # 0. a cut-short line past everything the token's head covers (checked above): never promoted
            removed = remove_torn(log, report)
            report = LogReport(report.entries, report.head)
        if recorded is None:
            # 1. append: the log holds the entry before anything else vouches for it
            recorded = append_promotion(log, report, release, view.approvals.approvers, key, now)
            report = LogReport((*report.entries, recorded), recorded.hash)
            outcome: Literal["promoted", "recorded", "finished", "already"] = (
                "recorded" if view.approvals.promoted else "promoted"
            )
        else:
            outcome = "already"
        head = base.advanced(report)
        if head != held:
            # 2. advance: the token names the log with the entry, and the new counter
            token.write_head(HEAD_NAME, head.to_value(), after=record)
            if outcome == "already":
                outcome = "finished"
        if not view.approvals.promoted:
            # 3. rewrite: only now can a station load the bundle
            view = with_signature(view, key, policy)
            if outcome == "already":
                outcome = "finished"
        return Promotion(view, recorded, head, outcome, started, adopted_entries, removed)


def abandon_promotion(log: Path, bundle_id: str, token: HeadStore, policy: TrustPolicy) -> Abandoned:
    """Give up a promotion that stopped before the token recorded it, and whose bundle is gone for good.

    Only the one entry past the token's head can go, named by its bundle id:
    the token never recorded it, so the release signer never signed its
    bundle (no station can load it) and its security counter was never
    used. Its line is first appended to ``<log>.abandoned`` (kept for the
    record), then the log is cut back to the token's head. An entry the
    token's head covers is permanent, and its counter stays used: refused.

    Raises:
        LogError: no entry for the bundle past the token's head (or it is
            in the head: permanent); the log is not the one the token names.
        StateError: the token holds no promotion head; another promotion is running on this log.
        InputError: the log or the record could not be written; nothing was removed.
        VaultError: the log does not verify.
    """
    if not log.is_file():
        raise InputError(f"the promotion log {log} is not a file")
    if not (os.access(log, os.W_OK) and os.access(log.parent, os.W_OK)):
        raise InputError(f"cannot write the promotion log {log} or its folder: permission denied")
    with _lock(log):
        record = token.head(HEAD_NAME)
        if record is None:
            raise _no_head(token.label)
        held = PromotionHead.from_record(record, token.label)
        report = verify_log(log, release_signer_ids(policy), allow_torn=True)
        pending = _check_against_head(report, held, log, token.label)
        found = [e for e in report.entries if e.bundle_id == bundle_id]
        if found and found[0].index < held.entries:
            entry = found[0]
            raise LogError(
                f"{log}: entry {entry.index} ({entry.product} {entry.version}, bundle {bundle_id}) is in the head "
                f"token '{token.label}' holds: it is permanent and security counter {entry.security_counter} "
                f"stays used for {entry.product}; nothing was removed (if the bundle turns up, promote it to sign it)"
            )
        if pending is None or pending.bundle_id != bundle_id:
            there = f"entry {pending.index} is bundle {pending.bundle_id}'s" if pending else "there is none"
            raise LogError(
                f"{log}: no promotion of bundle {bundle_id} stopped past the head token '{token.label}' holds "
                f"({there}); nothing was removed"
            )
        start, line = last_line(log, report)
        kept = log.with_name(f"{log.name}.abandoned")
        try:
            # kept once, also when a stopped abandon is run again
            if not (kept.is_file() and ends_with(kept, line)):
                append_whole(kept, line)
            cut_back(log, start)
        except OSError as e:
            raise InputError(f"cannot abandon entry {pending.index} of {log}: {e.strerror}; nothing was removed") from e
        return Abandoned(pending, kept, held, report.torn)


def verify_log_against_token(
    log: Path, signer_key_ids: Sequence[str], token: HeadStore
) -> tuple[LogReport, PromotionHead]:
    """Verify the log's chain, then that it is exactly the log the release signer's token names.

    Raises:
        LogError: the log is emptied, truncated, older, replaced or another log;
            it holds a promotion the token has not recorded, or a cut-short
            last line; or the token's counters are not the log's.
        StateError: the token holds no promotion head.
        VaultError: the log does not verify.
    """
    record = token.head(HEAD_NAME)
    if record is None:
        raise _no_head(token.label)
    held = PromotionHead.from_record(record, token.label)
    report = verify_log(log, signer_key_ids, allow_torn=True)
    pending = _check_against_head(report, held, log, token.label)
    if pending is not None:
        raise _pending_error(pending, log, token.label, ", past its head")
    if report.torn is not None:
        raise LogError(
            f"{log}:{report.torn.number}: the last line is cut short ({report.torn.length} bytes, no newline), "
            f"as an append cut off part-way (a power cut) leaves it; token '{token.label}' holds the log "
            f"without it ({_entries(held.entries)}, head {held.log_head}), so it was never promoted: "
            "run the promote command again, which removes it and goes on"
        )
    derived = NO_HEAD.advanced(report).counters
    if dict(derived) != dict(held.counters):
        raise LogError(
            f"token '{token.label}' holds counters {_counters(held.counters)}, "
            f"but {log} promoted {_counters(derived)}: the token's head was not written by vault"
        )
    return report, held


def verify_log_against_digest(log: Path, signer_key_ids: Sequence[str], digest: str) -> tuple[LogReport, int]:
    """Verify the log's chain, then that it holds the head ``digest`` (a hash ``promote`` printed).

    Returns:
        The report and how many entries the log holds after that head (0: it is the log's head).

    Raises:
        InputError: ``digest`` is not a 64-digit hex SHA-256.
        LogError: the log does not hold that head: it is emptied, truncated, older or replaced.
        VaultError: the log does not verify.
    """
    wanted = digest.strip().lower()
    if _HEX64.fullmatch(wanted) is None:
        raise InputError(f"--head must be the 64 hex digits of a promotion log head, not '{digest}'")
    report = verify_log(log, signer_key_ids)
    heads = [GENESIS, *(e.hash for e in report.entries)]
    if wanted not in heads:
        raise LogError(
            f"{log} (head {report.head}, {_entries(len(report.entries))}) does not hold the head {wanted}: "
            "it is an emptied, truncated, older or replaced log"
        )
    return report, len(heads) - 1 - heads.index(wanted)


def _check_against_head(report: LogReport, held: PromotionHead, log: Path, token_label: str) -> LogEntry | None:
    """Refuse a log that is not the one ``held`` names; return the one entry past it, if there is one."""
    n, m = held.entries, len(report.entries)
    at_head = GENESIS if n == 0 else (report.entries[n - 1].hash if n <= m else None)
    if at_head == held.log_head and m in (n, n + 1):
        return report.entries[n] if m == n + 1 else None
    if at_head == held.log_head:
        why = f"it holds {m - n} entries past the token's head, and vault appends one at a time"
    elif m == 0:
        why = "it is missing or emptied"
    elif m < n:
        why = "it is an older, truncated or replaced copy"
    else:
        why = "it is a replaced or another log"
    state = "no file" if not log.exists() else f"{_entries(m)}, head {report.head}"
    if report.torn is not None:
        state += f", and a cut-short line {report.torn.number}"
    if report.torn is not None and at_head != held.log_head:
        why += (
            "; the cut-short line may hold what the token covers, so vault does not remove it: "
            "if only its newline is missing, add it back, else restore the log from a copy that holds the token's head"
        )
    raise LogError(
        f"{log} ({state}) is not the promotion log token '{token_label}' names "
        f"({_entries(n)}, head {held.log_head}): {why}"
    )


def _pending_error(pending: LogEntry, log: Path, token_label: str, where: str) -> LogError:
    """The way out of a promotion stopped after its append: finish it, or abandon it if its bundle is gone."""
    return LogError(
        f"{log}: entry {pending.index} ({pending.product} {pending.version}, bundle {pending.bundle_id}) is a "
        f"promotion that stopped before token '{token_label}' recorded it{where}; finish it by running "
        "'vault bundle promote' on that bundle's file (wherever it is now), or, if the bundle is gone for good, "
        f"give it up with 'vault bundle log abandon {log} {pending.bundle_id} --token ...'"
    )


def _no_head(token_label: str) -> StateError:
    return StateError(
        f"token '{token_label}' holds no promotion head: it has not promoted anything yet, "
        "or it is not the release signer's token"
    )


def _entry_for(report: LogReport, release: Release, log: Path) -> LogEntry | None:
    """The log's entry for this bundle, if there is one; an entry with another statement is refused."""
    found = [e for e in report.entries if e.bundle_id == release.bundle_id]
    if not found:
        return None
    if len(found) > 1 or found[0].statement_sha256 != release.statement_sha256:
        raise LogError(
            f"{log}: entry {found[0].index} promoted bundle {release.bundle_id} with another statement "
            "than this bundle's; refusing to sign it"
        )
    return found[0]


def _refuse_rollback(
    release: Release, held: PromotionHead | None, report: LogReport | None, token: str, log: Path
) -> None:
    if held is not None:
        floor, where = held.counters.get(release.product), f"token '{token}'"
    elif report is not None:
        floor, where = NO_HEAD.advanced(report).counters.get(release.product), f"the promotion log {log}"
    else:
        return
    if floor is not None and release.security_counter < floor:
        raise RollbackError(
            f"{release.product}: security counter {release.security_counter} is lower than {floor}, "
            f"the highest {where} has promoted for it (rollback)"
        )


def _check_writable(bundle: Path, log: Path) -> None:
    """Refuse, before anything is written, a log or bundle that could not be written."""
    folder = log.parent
    if not folder.is_dir():
        raise InputError(f"cannot write the promotion log {log}: the folder {folder} does not exist")
    if log.exists() and not log.is_file():
        raise InputError(f"the promotion log {log} is not a file")
    if not os.access(log if log.exists() else folder, os.W_OK):
        raise InputError(f"cannot write the promotion log {log}: permission denied")
    if not os.access(bundle.parent, os.W_OK):
        raise InputError(f"cannot rewrite {bundle}: its folder {bundle.parent} is not writable")


@contextlib.contextmanager
def _lock(log: Path) -> Iterator[None]:
    """Hold an exclusive lock on the log's folder, so two promotions never append at once."""
    folder = log.parent
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise InputError(f"cannot open the promotion log's folder {folder}: {e.strerror}") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StateError(
                    f"another promotion is writing to a promotion log in {folder}; try again when it has finished"
                ) from e
            raise InputError(f"cannot lock the promotion log's folder {folder}: {e.strerror}") from e
        yield
    finally:
        os.close(fd)


def _entries(n: int) -> str:
    return f"{n} entr{'y' if n == 1 else 'ies'}"


def _counters(counters: Mapping[str, int]) -> str:
    return "{" + ", ".join(f"{p}: {c}" for p, c in sorted(counters.items())) + "}"
