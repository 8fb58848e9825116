"""What every role meets first: help, completion, exit statuses of usage errors, whole key ids."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from rich.console import Console

from tests.cli.test_token_cli import assert_one_line_error, run, uri
from vault.cli import _first_sentence, cli
from vault.token import Pkcs11Uri

VAULT = Path(sys.executable).parent / "vault"


def groups() -> list[tuple[list[str], click.Group]]:
    found: list[tuple[list[str], click.Group]] = [([], cli)]
    for name, command in cli.commands.items():
        if isinstance(command, click.Group):
            found.append(([name], command))
    return found


@pytest.mark.parametrize(("path", "group"), groups(), ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_group_help_shows_every_command_summary_whole(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, path: list[str], group: click.Group
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run(capsys, *path, "--help")
    assert code == 0
    commands = out.split("Commands:", 1)[1]
    assert "..." not in commands
    flat = " ".join(commands.split())
    for name, command in group.commands.items():
        assert command.help
        summary = _first_sentence(command.help)
        assert len(summary) > 10
        assert f"{name} {summary}" in flat, f"{name}: {summary}"


def test_first_sentence_is_whole() -> None:
    text = "Rebuild a lost folder (--state, a new one) from copies; accepted only if exact.\n\nMore."
    assert _first_sentence(text) == "Rebuild a lost folder (--state, a new one) from copies; accepted only if exact"


def test_shell_completion_is_clicks() -> None:
    env = {**os.environ, "_VAULT_COMPLETE": "bash_source"}
    script = subprocess.run([str(VAULT)], env=env, capture_output=True, text=True, check=True).stdout
    assert "_vault_completion" in script and "complete " in script
    env = {**os.environ, "_VAULT_COMPLETE": "bash_complete", "COMP_WORDS": "vault station pro", "COMP_CWORD": "2"}
    done = subprocess.run([str(VAULT)], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["plain,provision"]


def test_a_usage_error_is_clicks_exit_2_and_a_vault_error_is_one_line_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """docs/audit-report.md: 2 for a usage error (a path that does not exist), 1 when the audit cannot start."""
    missing = tmp_path / "no-such-evidence"
    not_a_cert = tmp_path / "policy.json"
    not_a_cert.write_text("{}")
    common = ["--root-cert", str(not_a_cert), "--policy", str(not_a_cert), "--bundle", str(not_a_cert),
              "--token", "pkcs11:token=vault-auditor"]  # fmt: skip
    code, out, err = run(capsys, "audit", str(missing), *common)
    assert code == 2 and out == ""
    assert err.startswith("Usage: vault audit [OPTIONS] EXPORTS...")
    assert f"Error: Invalid value for 'EXPORTS...': Path '{missing}' does not exist." in err

    code, out, err = run(capsys, "audit", str(tmp_path), *common)
    assert code == 1 and out == ""
    assert_one_line_error(err, f"vault: error: {tmp_path} holds no .vault-evidence files")
    doc = (Path(__file__).resolve().parents[2] / "docs" / "audit-report.md").read_text()
    assert "| 1 | the audit cannot start" in doc and "| 2 | a usage error" in doc


def test_token_keys_shows_whole_key_ids_unless_the_terminal_is_too_narrow(
    capsys: pytest.CaptureFixture[str],
    token_uri: Callable[..., Pkcs11Uri],
    monkeypatch: pytest.MonkeyPatch,
    label: str,
) -> None:
    assert run(capsys, "token", "keygen", uri(token_uri, "vault-approver-2", object=label))[0] == 0
    token = uri(token_uri, "vault-approver-2")
    code, out, _ = run(capsys, "token", "keys", "--json", token)
    assert code == 0
    key_ids = {o["key_id"] for o in json.loads(out) if o["label"] == label}
    assert len(key_ids) == 1 and all(len(k) == 64 for k in key_ids)

    code, out, err = run(capsys, "token", "keys", token)  # not a terminal: wide, nothing cut
    assert code == 0 and "…" not in out and err == ""
    assert all(k in out for k in key_ids)

    monkeypatch.setattr("vault.cli._token.console", lambda: Console(width=100, file=sys.stdout))
    code, out, err = run(capsys, "token", "keys", token)
    assert code == 0 and "…" in out and not any(k in out for k in key_ids)
    assert_one_line_error(err, "ids cut to 16 digits to fit the terminal: --full or --json shows them whole")
    code, out, err = run(capsys, "token", "keys", "--full", token)
    assert code == 0 and "…" not in out and err == ""
