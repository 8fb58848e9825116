"""PIN sources: a file, an environment variable, the URI (tests), or a clear refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from vault.errors import PinSourceError
from vault.token import Pkcs11Uri
from vault.token._pin import resolve_pin


def test_pin_from_file_drops_the_trailing_newline(tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text("1234abcd\n")
    assert resolve_pin(Pkcs11Uri(pin_source=f"file:{pin_file}"), "t") == "1234abcd"
    assert resolve_pin(Pkcs11Uri(pin_source=str(pin_file)), "t") == "1234abcd"
    assert resolve_pin(Pkcs11Uri(pin_source=f"file://localhost{pin_file}"), "t") == "1234abcd"


def test_pin_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_TEST_PIN", "9876")
    assert resolve_pin(Pkcs11Uri(pin_source="env:VAULT_TEST_PIN"), "t") == "9876"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("env:VAULT_NO_SUCH_VARIABLE", "'VAULT_NO_SUCH_VARIABLE', which is not set"),
        ("file:/nonexistent/pin", "cannot read PIN file /nonexistent/pin"),
        ("file://elsewhere/pin", "remote host 'elsewhere'"),
        ("https://example.com/pin", "pin-source must be file:PATH"),
    ],
)
def test_bad_pin_sources_are_refused(source: str, message: str) -> None:
    with pytest.raises(PinSourceError) as err:
        resolve_pin(Pkcs11Uri(pin_source=source), "t")
    assert message in str(err.value)


def test_empty_and_oversized_pin_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "big").write_bytes(b"1" * 5000)
    with pytest.raises(PinSourceError, match="is empty"):
        resolve_pin(Pkcs11Uri(pin_source=f"file:{tmp_path / 'empty'}"), "t")
    with pytest.raises(PinSourceError, match="larger than"):
        resolve_pin(Pkcs11Uri(pin_source=f"file:{tmp_path / 'big'}"), "t")


def test_no_pin_and_no_terminal_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # pytest's stdin is not a terminal, as in CI: vault must not hang on a prompt.
    with pytest.raises(PinSourceError, match="no PIN for token 'vault-root'.*no terminal"):
        resolve_pin(Pkcs11Uri(token="vault-root"), "vault-root")
