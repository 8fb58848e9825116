"""Shares as custodians give them: cut short, sealed to someone else's token, typed word by word, piped."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tests.ceremony.conftest import POLICIES, Setup, assert_one_line_error
from tests.cli.test_token_cli import run
from vault.ceremony import share_text
from vault.cli import main
from vault.token import format_uri


def run_with_input(
    monkeypatch: pytest.MonkeyPatch, text: str, *argv: str, terminal: bool = False
) -> tuple[int, str, str]:
    """Run the CLI with ``text`` on stdin: piped, or typed at a terminal (hidden prompts)."""
    monkeypatch.setattr("vault.cli._ceremony._on_terminal", lambda: terminal)
    with CliRunner().isolation(input=text) as (out, err, _):
        with pytest.raises(SystemExit) as exited:
            main(list(argv))
    code = exited.value.code
    return (code if isinstance(code, int) else 1), out.getvalue().decode(), err.getvalue().decode()


def test_a_cut_short_share_says_words_are_missing(setup: Setup) -> None:
    transcript = str(setup.root / "transcript.json")
    words = share_text(setup.share(1).read_text()).split()
    assert len(words) == 33
    cut = setup.tmp / "cut.txt"
    cut.write_text(" ".join(words[:20]) + "\n")
    code, _, err = run(setup.capsys, "shares", "check", transcript, "--share", str(cut))
    assert code == 1
    assert_one_line_error(err, "the share is cut short: 20 of 33 words, 13 missing")
    long = setup.tmp / "long.txt"
    long.write_text(" ".join(words + words[:2]) + "\n")
    code, _, err = run(setup.capsys, "shares", "check", transcript, "--share", str(long))
    assert code == 1
    assert_one_line_error(err, "the share has 35 words, 2 more than the 33 of a share")

    # in a ceremony, the share is named by its position
    creds = setup.credentials("cut")
    code, _, err = run(
        setup.capsys, "ceremony", "run", str(POLICIES / "renew-policy.yaml"), "--credentials", str(creds),
        "--policy", str(setup.root / "policy-v1.json"), "--root-cert", str(setup.root / "root-ca.pem"),
        "--share", str(setup.share(2)), "--share", str(cut), "--out", str(setup.tmp / "renew"), "--rehearsal", "--yes",
    )  # fmt: skip
    assert code == 1
    assert_one_line_error(err, "share 2 is cut short: 20 of 33 words, 13 missing")
    assert not (setup.tmp / "renew").exists()


def test_a_sealed_share_opened_with_another_officers_token_names_its_holder(setup: Setup) -> None:
    code, _, err = run(
        setup.capsys, "shares", "check", str(setup.root / "transcript.json"), "--share", str(setup.share(3)),
        "--token", format_uri(setup.tokens["officer-1"]),
    )  # fmt: skip
    assert code == 1
    assert_one_line_error(err, "this share is sealed to officer-3's token")
    assert f"token '{setup.tokens['officer-1'].token}' does not hold that key" in err
    # and with the right token it opens
    code, out, err = run(
        setup.capsys, "shares", "check", str(setup.root / "transcript.json"), "--share", str(setup.share(3)),
        "--token", format_uri(setup.tokens["officer-3"]),
    )  # fmt: skip
    assert code == 0, err
    assert "share OK: share 3 of 3" in out


def test_typed_shares_are_checked_word_by_word_and_piped_shares_still_work(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    transcript = str(setup.root / "transcript.json")
    words = share_text(setup.share(2).read_text()).split()

    # piped whole, as a share file's text or just the words
    code, out, err = run_with_input(monkeypatch, setup.share(2).read_text(), "shares", "check", transcript)
    assert code == 0, err
    assert "share OK: share 2 of 3" in out
    code, out, err = run_with_input(monkeypatch, " ".join(words) + "\n", "shares", "check", transcript)
    assert code == 0 and "share OK: share 2 of 3" in out, err
    code, _, err = run_with_input(monkeypatch, "", "shares", "check", transcript)
    assert code == 1
    assert_one_line_error(err, "no share on stdin")

    # typed at a terminal: word 7 off the list is caught at once, by position only, and typed again
    typo = "bitcoin"
    typed = words[:6] + [typo] + words[6:]
    code, out, err = run_with_input(monkeypatch, "\n".join(typed) + "\n", "shares", "check", transcript, terminal=True)
    assert code == 0, err
    assert "share OK: share 2 of 3" in out
    assert "word 7 is not a SLIP-39 word; type word 7 again" in err
    assert typo not in out + err  # nothing typed is shown
    assert "word 33 of 33" in err and "word 34" not in err

    # a whole share on one line works; a share whose checksum fails is typed again from word 1
    swapped = list(words)
    i = next(i for i in range(6, 32) if swapped[i] != swapped[i + 1])
    swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
    text = " ".join(swapped) + "\n" + " ".join(words) + "\n"
    code, out, err = run_with_input(monkeypatch, text, "shares", "check", transcript, terminal=True)
    assert code == 0, err
    assert "fails its checksum" in err and "type the share again from word 1" in err
    assert "share OK: share 2 of 3" in out

    # ended early with an empty entry: the check says how many words are missing
    text = "\n".join(words[:30]) + "\n\n"
    code, _, err = run_with_input(monkeypatch, text, "shares", "check", transcript, terminal=True)
    assert code == 1
    assert err.strip().splitlines()[-1] == "vault: error: the share is cut short: 30 of 33 words, 3 missing"

    # a ceremony takes typed shares the same way: two shares, then an empty entry
    creds = setup.credentials("typed")
    shares = [share_text(setup.share(i).read_text()) for i in (1, 2)]
    text = "\n".join(shares) + "\n\n"
    code, out, err = run_with_input(
        monkeypatch, text, "ceremony", "run", str(POLICIES / "renew-policy.yaml"), "--credentials", str(creds),
        "--policy", str(setup.root / "policy-v1.json"), "--root-cert", str(setup.root / "root-ca.pem"),
        "--out", str(setup.tmp / "renew"), "--rehearsal", "--yes", terminal=True,
    )  # fmt: skip
    assert code == 0, err
    assert "root token share 3, word 1 of 33 (hidden; empty when done)" in err
    assert (setup.tmp / "renew" / "policy-v2.json").exists()
