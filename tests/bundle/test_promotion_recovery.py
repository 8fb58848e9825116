"""Promotion when the log fails it: a full disk, a power cut mid-append, a stopped promotion whose bundle is gone.

Every test runs on its own fresh SoftHSM2 tokens (the ``setup`` fixture). A
full disk is the OS's answer, so it is made in the test process by
``os.write`` (the log's file only), or by the kernel itself in a child
process with a file size limit; PKCS#11 is always the real SoftHSM2.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.bundle.conftest import Release
from tests.bundle.test_promotion_heads import (
    PRODUCT,
    by_token,
    is_promoted,
    log_verify,
    policy_of,
    promote_in_child,
    read_log,
    token_head,
)
from tests.ceremony.test_quorum_ceremonies import assert_one_line_error
from vault.bundle import PromotionHead, verify_bundle, verify_log
from vault.bundle._log import TornLine, release_signer_ids


def bundle_id(release: Release, bundle: Path) -> str:
    return verify_bundle(bundle, policy_of(release)).release.bundle_id


def full_disk(monkeypatch: pytest.MonkeyPatch, log: Path) -> list[int]:
    """Writes to ``log`` from now on: the first writes half its bytes, the next fails with ENOSPC.

    Returns the list of byte counts each write to the log was asked for.
    """
    real: Callable[[int, Any], int] = os.write
    asked: list[int] = []

    def write(fd: int, data: Any) -> int:
        if os.path.realpath(f"/proc/self/fd/{fd}") != str(log.resolve()):
            return real(fd, data)
        asked.append(len(data))
        if len(asked) == 1:
            return real(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", write)
    return asked


def test_a_full_disk_during_the_append_promotes_nothing_and_leaves_the_log_whole(
    release: Release, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_space = f"cannot append to the promotion log {release.log}: No space left on device; nothing was promoted"
    # the first promotion, which makes the log: no log is left behind, and the token holds no head
    r6 = release.approved("r6", 6)
    asked = full_disk(monkeypatch, release.log)
    code, _, err = release.promote(r6)
    assert code == 1
    assert_one_line_error(err, no_space)
    assert len(asked) == 2 and asked[1] == asked[0] - asked[0] // 2  # a short write, then the rest refused
    assert not release.log.exists() and token_head(release) is None and not is_promoted(release, r6)
    monkeypatch.undo()
    assert release.promote(r6)[0] == 0

    # a later one: the log is cut back to what it was, the token and the bundle are untouched
    r7 = release.approved("r7", 7)
    log_before, head_before, bundle_before = release.log.read_bytes(), token_head(release), r7.read_bytes()
    asked = full_disk(monkeypatch, release.log)
    code, _, err = release.promote(r7)
    assert code == 1
    assert_one_line_error(err, no_space)
    assert len(asked) == 2
    monkeypatch.undo()
    assert release.log.read_bytes() == log_before
    assert token_head(release) == head_before and r7.read_bytes() == bundle_before
    code, _, err = log_verify(release, release.log, *by_token(release))
    assert code == 0, err

    code, stdout, err = release.promote(r7)  # the disk has room again: the same command promotes
    assert code == 0, err
    assert "promoted example-sensor 1.7.0" in stdout and "cut-short" not in stdout
    report = read_log(release)
    assert [e.security_counter for e in report.entries] == [6, 7]
    assert token_head(release) == PromotionHead(2, report.head, {PRODUCT: 7}) and is_promoted(release, r7)


def test_the_kernel_cutting_the_append_short_promotes_nothing(release: Release) -> None:
    """A real short write: the kernel writes up to the file size limit, then refuses with EFBIG."""
    assert release.promote(release.approved("r6", 6))[0] == 0
    r7 = release.approved("r7", 7)
    log_before, head_before = release.log.read_bytes(), token_head(release)
    limited = promote_in_child(release, r7, "file-limit")
    assert limited.returncode == 1, limited.stderr
    assert_one_line_error(
        limited.stderr, f"cannot append to the promotion log {release.log}: File too large; nothing was promoted"
    )
    assert release.log.read_bytes() == log_before and token_head(release) == head_before
    assert not is_promoted(release, r7)
    assert release.promote(r7)[0] == 0
    assert [e.security_counter for e in read_log(release).entries] == [6, 7]


def test_a_line_cut_short_by_a_power_cut_is_removed_by_running_promote_again(release: Release) -> None:
    # on the first promotion: the log holds nothing but the cut-short line, the token no head
    r6 = release.approved("r6", 6)
    assert promote_in_child(release, r6, "mid-append").returncode == -signal.SIGKILL
    torn = release.log.read_bytes()
    assert torn and b"\n" not in torn and token_head(release) is None
    code, stdout, err = release.promote(r6)
    assert code == 0, err
    assert f"removed the cut-short last line of {release.log} (line 1, {len(torn)} bytes)" in stdout
    assert "a new promotion log starts" in stdout and "promoted example-sensor 1.6.0" in stdout

    # on a later one: the token holds the log without the cut-short line
    r7 = release.approved("r7", 7)
    whole = release.log.read_bytes()
    assert promote_in_child(release, r7, "mid-append").returncode == -signal.SIGKILL
    log_now = release.log.read_bytes()
    assert log_now.startswith(whole) and len(log_now) > len(whole) and not log_now.endswith(b"\n")
    report = verify_log(release.log, release_signer_ids(policy_of(release)), allow_torn=True)
    assert report.torn == TornLine(2, len(whole), len(log_now) - len(whole))
    assert token_head(release) == PromotionHead(1, report.head, {PRODUCT: 6})

    code, _, err = log_verify(release, release.log)
    assert code == 1
    assert_one_line_error(err, f"{release.log}:2: the last line is cut short (no newline)")
    assert "with --token" in err
    code, _, err = log_verify(release, release.log, *by_token(release))
    assert code == 1
    assert_one_line_error(err, f"{release.log}:2: the last line is cut short ({len(log_now) - len(whole)} bytes")
    assert "so it was never promoted: run the promote command again, which removes it and goes on" in err

    code, stdout, err = release.promote(r7)  # the same command
    assert code == 0, err
    assert f"removed the cut-short last line of {release.log} (line 2, {len(log_now) - len(whole)} bytes)" in stdout
    assert "never promoted" in stdout and "promoted example-sensor 1.7.0" in stdout
    assert release.log.read_bytes().startswith(whole)
    report = read_log(release)
    assert [e.security_counter for e in report.entries] == [6, 7] and is_promoted(release, r7)
    assert token_head(release) == PromotionHead(2, report.head, {PRODUCT: 7})
    code, _, err = log_verify(release, release.log, *by_token(release))
    assert code == 0, err


def test_a_cut_short_line_the_token_holds_is_never_removed(release: Release) -> None:
    for counter in (6, 7):
        assert release.promote(release.approved(f"r{counter}", counter))[0] == 0
    whole = release.log.read_bytes()
    release.log.write_bytes(whole[:-1])  # entry 1, which the token holds, lost its newline (an editor, a bad copy)
    r8 = release.approved("r8", 8)
    for code, _, err in (release.promote(r8), log_verify(release, release.log, *by_token(release))):
        assert code == 1
        assert_one_line_error(err, "1 entry, head")
        assert "and a cut-short line 2) is not the promotion log token" in err
        assert "so vault does not remove it: if only its newline is missing, add it back" in err
    assert release.log.read_bytes() == whole[:-1] and not is_promoted(release, r8)
    release.log.write_bytes(whole)
    assert release.promote(r8)[0] == 0
    assert [e.security_counter for e in read_log(release).entries] == [6, 7, 8]


def test_a_stopped_promotion_whose_bundle_is_gone_is_abandoned_explicitly(release: Release) -> None:
    assert release.promote(release.approved("r6", 6))[0] == 0
    r6_id = read_log(release).entries[0].bundle_id
    log_before, head_before = release.log.read_bytes(), token_head(release)
    r7, r8 = release.approved("r7", 7), release.approved("r8", 8)
    r7_id = bundle_id(release, r7)
    assert promote_in_child(release, r7, "after-append").returncode == -signal.SIGKILL
    r7.unlink()  # gone for good
    stuck = release.log.read_bytes()
    way_out = f"give it up with 'vault bundle log abandon {release.log} {r7_id} --token ...'"
    for code, _, err in (release.promote(r8), log_verify(release, release.log, *by_token(release))):
        assert code == 1
        assert_one_line_error(err, f"entry 1 (example-sensor 1.7.0, bundle {r7_id})")
        assert "'vault bundle promote' on that bundle's file" in err and way_out in err

    def abandon(bundle: str) -> tuple[int, str, str]:
        return release.bundle("log", "abandon", str(release.log), bundle, *by_token(release))

    code, _, err = abandon(bundle_id(release, r8))  # not the stopped one
    assert code == 1
    assert_one_line_error(err, f"no promotion of bundle {bundle_id(release, r8)} stopped past the head token")
    assert f"(entry 1 is bundle {r7_id}'s); nothing was removed" in err
    code, _, err = abandon(r6_id)  # in the token's head: permanent
    assert code == 1
    assert_one_line_error(err, f"entry 0 (example-sensor 1.6.0, bundle {r6_id}) is in the head token")
    assert f"it is permanent and security counter 6 stays used for {PRODUCT}; nothing was removed" in err
    kept = release.log.with_name("promotions.log.abandoned")
    assert release.log.read_bytes() == stuck and not kept.exists()

    code, stdout, err = abandon(r7_id)
    assert code == 0, err
    assert f"abandoned entry 1 (example-sensor 1.7.0, bundle {r7_id})" in stdout
    assert "never promoted and security counter 7 was not used" in stdout
    assert f"kept its line in {kept}" in stdout
    assert release.log.read_bytes() == log_before and kept.read_bytes() == stuck[len(log_before) :]
    assert token_head(release) == head_before
    code, _, err = log_verify(release, release.log, *by_token(release))
    assert code == 0, err
    code, _, err = abandon(r7_id)  # nothing is left to abandon
    assert code == 1
    assert_one_line_error(err, "(there is none); nothing was removed")

    assert release.promote(r8)[0] == 0
    report = read_log(release)
    assert [e.security_counter for e in report.entries] == [6, 8]
    assert token_head(release) == PromotionHead(2, report.head, {PRODUCT: 8})

    # stopped after the token recorded it: the entry is permanent, and nothing is held back
    r9 = release.approved("r9", 9)
    r9_id = bundle_id(release, r9)
    assert promote_in_child(release, r9, "after-head").returncode == -signal.SIGKILL
    r9.unlink()
    code, _, err = abandon(r9_id)
    assert code == 1
    assert_one_line_error(err, f"entry 2 (example-sensor 1.9.0, bundle {r9_id}) is in the head token")
    assert "security counter 9 stays used" in err
    code, _, err = release.promote(release.approved("r9b", 9, "1.9.1"))
    assert code == 0, err
    assert [e.security_counter for e in read_log(release).entries] == [6, 8, 9, 9]
