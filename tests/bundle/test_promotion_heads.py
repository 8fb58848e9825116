"""The release signer's token guards promotion: counters and the log's head, kills at every step, log verify.

Every test runs on its own fresh SoftHSM2 tokens (the ``setup`` fixture), so
the release token's head starts empty.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from tests.bundle._promote_child import STEPS
from tests.bundle.conftest import Release
from tests.ceremony.test_quorum_ceremonies import assert_one_line_error
from tests.conftest import ROOT
from vault.bundle import LogReport, PromotionHead, verify_bundle, verify_log
from vault.bundle._approval import with_signature
from vault.bundle._log import GENESIS, append_promotion, release_signer_ids
from vault.bundle._promotion import HEAD_NAME
from vault.policy import TrustPolicy
from vault.token import format_uri, open_token

PRODUCT = "example-sensor"


def policy_of(release: Release) -> TrustPolicy:
    return release.setup.policy(release.policy)


def token_head(release: Release) -> PromotionHead | None:
    with open_token(release.setup.tokens["release"]) as token:
        record = token.head(HEAD_NAME)
        return PromotionHead.from_record(record, token.label) if record is not None else None


def read_log(release: Release, log: Path | None = None) -> LogReport:
    return verify_log(log or release.log, release_signer_ids(policy_of(release)))


def is_promoted(release: Release, bundle: Path) -> bool:
    return verify_bundle(bundle, policy_of(release)).approvals.promoted


def printed_head(stdout: str) -> str:
    match = re.search(r"^log head +([0-9a-f]{64}) ", stdout, re.MULTILINE)
    assert match, stdout
    return match.group(1)


def log_verify(release: Release, log: Path, *options: str) -> tuple[int, str, str]:
    return release.bundle("log", "verify", str(log), *options)


def by_token(release: Release) -> tuple[str, str]:
    return ("--token", format_uri(release.setup.tokens["release"]))


def promote_in_child(release: Release, bundle: Path, step: str) -> subprocess.CompletedProcess[str]:
    """``vault bundle promote`` in its own process, which SIGKILLs itself at ``step`` (see _promote_child.py)."""
    argv = [sys.executable, "-m", "tests.bundle._promote_child", step, *release.promote_argv(bundle)]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def test_a_lower_counter_is_refused_whatever_log_is_passed(release: Release) -> None:
    r8 = release.approved("r8", 8)
    code, stdout, err = release.promote(r8)
    assert code == 0, err
    assert "a new promotion log starts" in stdout
    assert token_head(release) == PromotionHead(1, read_log(release).head, {PRODUCT: 8})

    # built without --log, then promoted with the log, another log, a new one or an emptied one: refused
    r5 = release.approved("r5", 5)
    log_before = release.log.read_bytes()
    empty = release.setup.tmp / "emptied.log"
    empty.write_bytes(b"")
    for log in (release.log, release.setup.tmp / "other.log", empty):
        code, _, err = release.promote(r5, log)
        assert code == 1
        assert_one_line_error(err, f"{PRODUCT}: security counter 5 is lower than 8, the highest token")
    assert not (release.setup.tmp / "other.log").exists() and empty.read_bytes() == b""
    assert release.log.read_bytes() == log_before and not is_promoted(release, r5)
    assert token_head(release) == PromotionHead(1, read_log(release).head, {PRODUCT: 8})

    # the same counter is not a rollback, but only into the log the token names
    r8b = release.approved("r8b", 8, "1.8.1")
    for log in (release.setup.tmp / "other.log", empty):
        code, _, err = release.promote(r8b, log)
        assert code == 1
        assert_one_line_error(err, "is not the promotion log token")
        assert "missing or emptied" in err and read_log(release).head in err  # both heads are named
    assert not is_promoted(release, r8b)
    code, _, err = release.promote(r8b)
    assert code == 0, err
    assert is_promoted(release, r8b)
    assert token_head(release) == PromotionHead(2, read_log(release).head, {PRODUCT: 8})


def test_first_use_adopts_an_existing_log_and_its_counters(release: Release) -> None:
    # a log written before the token kept heads: one promotion of counter 7, signed by the release signer
    r7 = release.approved("r7", 7)
    with open_token(release.setup.tokens["release"]) as token:
        view = verify_bundle(r7, policy_of(release))
        append_promotion(
            release.log, LogReport((), GENESIS), view.release, view.approvals.approvers,
            token.key("release-signer"), datetime.now(UTC),
        )  # fmt: skip
    assert token_head(release) is None

    code, _, err = release.promote(release.approved("r6", 6))
    assert code == 1
    assert_one_line_error(err, f"security counter 6 is lower than 7, the highest the promotion log {release.log}")
    assert token_head(release) is None

    code, stdout, err = release.promote(release.approved("r9", 9))
    assert code == 0, err
    assert f"adopts {release.log} (1 entry verified)" in stdout
    assert token_head(release) == PromotionHead(2, read_log(release).head, {PRODUCT: 9})


def test_a_bad_log_path_fails_before_anything_is_written(release: Release) -> None:
    r7 = release.approved("r7", 7)
    before = r7.read_bytes()
    missing = release.setup.tmp / "no-such-folder" / "promotions.log"
    code, _, err = release.promote(r7, missing)
    assert code == 1
    assert_one_line_error(err, f"cannot write the promotion log {missing}: the folder")
    assert r7.read_bytes() == before and token_head(release) is None
    assert not missing.parent.exists() and not release.log.exists()
    code, _, err = release.promote(r7)  # the right log: promoted, logged, in the token
    assert code == 0, err
    assert [e.bundle_id for e in read_log(release).entries] == [verify_bundle(r7, policy_of(release)).release.bundle_id]


def test_log_verify_refuses_emptied_truncated_replaced_and_older_logs(release: Release) -> None:
    heads = []
    for counter in (7, 8):
        code, stdout, err = release.promote(release.approved(f"r{counter}", counter))
        assert code == 0, err
        heads.append(printed_head(stdout))
    tmp = release.setup.tmp
    older = tmp / "older.log"
    shutil.copy(release.log, older)
    code, stdout, err = release.promote(release.approved("r9", 9))
    assert code == 0, err
    head = printed_head(stdout)
    assert head == read_log(release).head == token_head(release).log_head  # type: ignore[union-attr]

    lines = release.log.read_bytes().splitlines(keepends=True)
    (tmp / "emptied.log").write_bytes(b"")
    (tmp / "truncated.log").write_bytes(lines[0])
    replaced = tmp / "replaced.log"  # the older log and then another entry, signed by the release key: a fork
    shutil.copy(older, replaced)
    with open_token(release.setup.tokens["release"]) as token:
        other = verify_bundle(release.approved("r9b", 9, "1.9.1"), policy_of(release))
        append_promotion(
            replaced, read_log(release, replaced), other.release, other.approvals.approvers,
            token.key("release-signer"), datetime.now(UTC),
        )  # fmt: skip
    assert len(read_log(release, replaced).entries) == 3  # as long as the real log, and its chain verifies

    for name, why in [("emptied", "missing or emptied"), ("truncated", "older, truncated or replaced"),
                      ("older", "older, truncated or replaced"), ("replaced", "replaced or another log")]:  # fmt: skip
        log = tmp / f"{name}.log"
        code, _, err = log_verify(release, log, *by_token(release))
        assert code == 1, name
        assert_one_line_error(err, "is not the promotion log token")
        assert why in err and head in err and read_log(release, log).head in err, err
        code, _, err = log_verify(release, log, "--head", head)
        assert code == 1, name
        assert_one_line_error(err, f"does not hold the head {head}")
        code, stdout, _ = log_verify(release, log)  # the chain alone is fine, and the output says that is all
        assert code == 0 and "only the chain was checked" in stdout

    code, stdout, err = log_verify(release, release.log, *by_token(release), "--head", head)
    assert code == 0, err
    assert "3 entries" in stdout and "head token" in stdout and "ends at the given head" in stdout
    code, stdout, err = log_verify(release, release.log, "--head", heads[0])  # an earlier head: the log extends it
    assert code == 0, err
    assert "holds the given head, then 2 entries" in stdout
    code, _, err = log_verify(release, release.log, "--head", "abc123")
    assert code == 1
    assert_one_line_error(err, "--head must be the 64 hex digits")
    code, _, err = log_verify(release, release.log, "--token", format_uri(release.setup.tokens["approver-1"]))
    assert code == 1
    assert_one_line_error(err, "holds no promotion head")


def test_a_kill_at_each_step_of_promote_is_completed_by_the_same_command(release: Release) -> None:
    policy = policy_of(release)
    # first on a token without a head: the kill after the append leaves a log the re-run must adopt
    for counter, step in enumerate(("after-append", *STEPS), start=7):
        bundle = release.approved(f"k{counter}", counter)
        bundle_id = verify_bundle(bundle, policy).release.bundle_id
        bundle_before = bundle.read_bytes()
        log_before = release.log.read_bytes() if release.log.exists() else b""
        head_before = token_head(release)

        killed = promote_in_child(release, bundle, step)
        assert killed.returncode == -signal.SIGKILL, (step, killed.stderr)

        log_now = release.log.read_bytes() if release.log.exists() else b""
        head_now = token_head(release)
        if step == "before-append":
            assert (log_now, head_now, bundle.read_bytes()) == (log_before, head_before, bundle_before), step
        else:
            assert log_now.startswith(log_before) and log_now.count(b"\n") == log_before.count(b"\n") + 1, step
            assert read_log(release).entries[-1].bundle_id == bundle_id, step
            assert (head_now == head_before) is (step == "after-append"), step
            assert is_promoted(release, bundle) is (step == "after-rewrite"), step

        done = promote_in_child(release, bundle, "none")
        assert done.returncode == 0, (step, done.stderr)
        expected = {"before-append": "promoted ", "after-rewrite": "is already promoted"}.get(step, "finished the")
        assert expected in done.stdout, (step, done.stdout)
        assert is_promoted(release, bundle), step
        report = read_log(release)
        assert [e.bundle_id for e in report.entries].count(bundle_id) == 1, step
        assert token_head(release) == PromotionHead(len(report.entries), report.head, {PRODUCT: counter}), step
        code, _, err = log_verify(release, release.log, *by_token(release))
        assert code == 0, (step, err)
    assert len(read_log(release).entries) == 5


def test_an_unfinished_promotion_holds_back_the_next_until_its_command_runs_again(release: Release) -> None:
    assert release.promote(release.approved("r6", 6))[0] == 0
    r7, r8 = release.approved("r7", 7), release.approved("r8", 8)
    assert promote_in_child(release, r7, "after-append").returncode == -signal.SIGKILL
    code, _, err = release.promote(r8)
    assert code == 1
    assert_one_line_error(err, "entry 1 (example-sensor 1.7.0, bundle")
    assert "holds back every other promotion" in err and not is_promoted(release, r8)
    assert "'vault bundle promote' on that bundle's file (wherever it is now)" in err
    code, _, err = log_verify(release, release.log, *by_token(release))
    assert code == 1
    assert_one_line_error(err, "entry 1 (example-sensor 1.7.0, bundle")
    assert "recorded it, past its head" in err
    moved = release.setup.tmp / "moved"  # the bundle's file, wherever it is now, finishes it
    moved.mkdir()
    r7 = r7.rename(moved / r7.name)
    code, stdout, err = release.promote(r7)
    assert code == 0 and "finished the interrupted promotion of example-sensor 1.7.0" in stdout, err
    code, _, err = release.promote(r8)
    assert code == 0, err
    assert [e.security_counter for e in read_log(release).entries] == [6, 7, 8]
    assert token_head(release) == PromotionHead(3, read_log(release).head, {PRODUCT: 8})


def test_a_bundle_signed_but_missing_from_the_log_is_recorded_by_promote(release: Release) -> None:
    """What the promote of earlier versions left behind when the log could not be written."""
    policy = policy_of(release)
    r7 = release.approved("r7", 7)
    with open_token(release.setup.tokens["release"]) as token:
        with_signature(verify_bundle(r7, policy), token.key("release-signer"), policy)
    assert is_promoted(release, r7) and not release.log.exists()
    code, stdout, err = release.promote(r7)
    assert code == 0, err
    assert "recorded example-sensor 1.7.0" in stdout and "missing from the log" in stdout
    assert [e.security_counter for e in read_log(release).entries] == [7]
    assert token_head(release) == PromotionHead(1, read_log(release).head, {PRODUCT: 7})
    code, stdout, err = release.promote(r7)
    assert code == 0 and "already promoted; nothing left to do" in stdout, err
    assert len(read_log(release).entries) == 1


def test_a_second_promotion_on_the_same_log_folder_waits_its_turn(release: Release) -> None:
    r7 = release.approved("r7", 7)
    fd = os.open(release.log.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another promotion is running
        code, _, err = release.promote(r7)
        assert code == 1
        assert_one_line_error(err, "another promotion is writing to a promotion log in")
    finally:
        os.close(fd)
    assert not is_promoted(release, r7) and token_head(release) is None and not release.log.exists()
    assert release.promote(r7)[0] == 0
