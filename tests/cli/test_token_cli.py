"""``vault token ...`` end to end on SoftHSM2, through ``main(argv)``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from vault import __version__
from vault.cli import main
from vault.crypto import verify_signature
from vault.token import Pkcs11Uri, format_uri

DEV_TOKENS = {
    "vault-root",
    "vault-officer-1",
    "vault-officer-2",
    "vault-officer-3",
    "vault-approver-1",
    "vault-approver-2",
    "vault-approver-3",
    "vault-station-1",
    "vault-station-2",
    "vault-auditor",
}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 1), out, err


def assert_one_line_error(err: str, expected: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert expected in lines[0], lines[0]


def uri(make: Callable[..., Pkcs11Uri], label: str, **attrs: object) -> str:
    return format_uri(make(label, **attrs), redact_pin=False)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert __version__ in out


def test_token_list_shows_the_dev_tokens(capsys: pytest.CaptureFixture[str], softhsm_dir: Path) -> None:
    code, out, _ = run(capsys, "token", "list", "--json")
    assert code == 0
    tokens = json.loads(out)
    initialised = {t["label"] for t in tokens if t["state"] == "initialised"}
    assert DEV_TOKENS <= initialised  # other tests may add tokens of their own
    assert all(t["manufacturer"] == "SoftHSM project" and t["serial"] for t in tokens if t["label"])
    assert any(t["state"] == "free" for t in tokens)  # SoftHSM always offers one empty slot

    code, out, _ = run(capsys, "token", "list")
    assert code == 0
    for label in DEV_TOKENS:
        assert label in out


def test_keygen_pubkey_sign_and_keys(
    capsys: pytest.CaptureFixture[str], token_uri: Callable[..., Pkcs11Uri], label: str, tmp_path: Path
) -> None:
    key_uri = uri(token_uri, "vault-approver-1", object=label)
    code, out, _ = run(capsys, "token", "keygen", key_uri)
    assert code == 0
    assert f"generated P-256 key '{label}' on token 'vault-approver-1'" in out

    pem = tmp_path / "key.pem"
    assert run(capsys, "token", "pubkey", key_uri, "-o", str(pem))[0] == 0
    data = tmp_path / "data.bin"
    data.write_bytes(b"release 1.2.3\n" * 100)
    sig = tmp_path / "data.sig"
    assert run(capsys, "token", "sign", key_uri, str(data), "-o", str(sig))[0] == 0

    public = serialization.load_pem_public_key(pem.read_bytes())
    verify_signature(public, data.read_bytes(), sig.read_bytes())  # type: ignore[arg-type]
    openssl = subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", str(pem), "-signature", str(sig), str(data)],
        capture_output=True,
        text=True,
    )
    assert openssl.returncode == 0 and "Verified OK" in openssl.stdout

    code, out, _ = run(capsys, "token", "keys", "--json", uri(token_uri, "vault-approver-1"))
    assert code == 0
    mine = [o for o in json.loads(out) if o["label"] == label]
    assert {o["type"] for o in mine} == {"private", "public"}
    private = next(o for o in mine if o["type"] == "private")
    assert private["extractable"] is False and private["sensitive"] is True
    assert private["key_id"] == private["id"]

    # an existing output file is never written over
    code, _, err = run(capsys, "token", "sign", key_uri, str(data), "-o", str(sig))
    assert code == 1
    assert_one_line_error(err, "exists; vault does not write over files")


@pytest.mark.parametrize(
    ("argv_of", "expected"),
    [
        (
            lambda u, lab: [
                "token",
                "keys",
                format_uri(Pkcs11Uri(token="vault-root", pin_value="wrong-pin"), redact_pin=False),
            ],
            "wrong PIN for token 'vault-root'",
        ),
        (
            lambda u, lab: ["token", "keys", uri(u, "vault-root").replace("vault-root?", "vault-nope?")],
            "no token labelled 'vault-nope'",
        ),
        (lambda u, lab: ["token", "pubkey", uri(u, "vault-root", object=lab)], "no private key labelled"),
        (
            lambda u, lab: ["token", "keys", "pkcs11:token=vault-root?module-path=/nonexistent/lib.so&pin-value=1"],
            "PKCS#11 module not found: /nonexistent/lib.so",
        ),
        (lambda u, lab: ["token", "keygen", uri(u, "vault-root")], "name the new key with object=LABEL"),
        (
            lambda u, lab: ["token", "keys", "pkcs11:token=vault-root?pin-source=env:VAULT_UNSET_PIN_VARIABLE"],
            "VAULT_UNSET_PIN_VARIABLE",
        ),
    ],
    ids=["wrong-pin", "missing-token", "missing-key", "missing-module", "keygen-without-label", "pin-env-unset"],
)
def test_errors_are_one_line_and_exit_non_zero(
    capsys: pytest.CaptureFixture[str],
    token_uri: Callable[..., Pkcs11Uri],
    label: str,
    argv_of: Callable[..., list[str]],
    expected: str,
) -> None:
    code, _, err = run(capsys, *argv_of(token_uri, label))
    assert code == 1
    assert_one_line_error(err, "vault: error: ")
    assert expected in err


def test_duplicate_label_is_refused_and_the_first_key_survives(
    capsys: pytest.CaptureFixture[str], token_uri: Callable[..., Pkcs11Uri], label: str
) -> None:
    key_uri = uri(token_uri, "vault-approver-2", object=label)
    assert run(capsys, "token", "keygen", key_uri)[0] == 0
    first = run(capsys, "token", "pubkey", key_uri)[1]
    code, _, err = run(capsys, "token", "keygen", key_uri)
    assert code == 1
    assert_one_line_error(err, f"a key labelled '{label}' already exists on token 'vault-approver-2'")
    assert run(capsys, "token", "pubkey", key_uri)[1] == first


def test_bad_uri_is_a_usage_error(capsys: pytest.CaptureFixture[str], softhsm_dir: Path) -> None:
    code, _, err = run(capsys, "token", "keys", "pkcs11:token=%zz")
    assert code == 2
    assert "bad percent-escape '%zz' in attribute 'token'" in err
    assert "Traceback" not in err


def test_cli_as_a_process_gives_one_line_and_no_traceback(softhsm_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vault", "token", "keys", "pkcs11:token=vault-root?pin-value=wrong"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1
    assert result.stderr == "vault: error: wrong PIN for token 'vault-root'\n"


def test_delete_removes_a_key_pair_only_when_told_to(
    capsys: pytest.CaptureFixture[str], fresh_tokens: Callable[[list[str]], dict[str, Pkcs11Uri]]
) -> None:
    from tests.helpers import import_software_key
    from vault.token import open_token

    token = fresh_tokens(["delete"])["delete"]
    with open_token(token, rw=True) as session:
        import_software_key(session, "pasted")  # a key vault refuses: the officer removes it
        keep = session.generate_ec_key("keep")
    pasted = format_uri(token.with_object("pasted"), redact_pin=False)

    code, _, err = run(capsys, "token", "delete", pasted)  # no terminal to type the label on
    assert code == 1
    assert_one_line_error(err, "needs its label (object=) typed on a terminal; or pass --yes")
    code, _, err = run(capsys, "token", "delete", format_uri(token, redact_pin=False), "--yes")
    assert code == 1
    assert_one_line_error(err, "name the key to delete with object=LABEL or id=")

    code, out, err = run(capsys, "token", "delete", pasted, "--yes")
    assert code == 0, err
    assert out.startswith("deleted key 'pasted' (key id ") and f"from token '{token.token}'" in out
    with open_token(token) as session:
        assert sorted((o.label, o.type) for o in session.objects()) == [("keep", "private"), ("keep", "public")]
        assert session.key(label="keep").key_id == keep.key_id
    code, _, err = run(capsys, "token", "delete", pasted, "--yes")
    assert code == 1
    assert_one_line_error(err, "no private key labelled 'pasted'")


def test_ctrl_c_while_the_cli_still_loads_is_one_line() -> None:
    import subprocess

    script = (
        "import sys, types\n"
        "loading = types.ModuleType('vault.cli')\n"
        "def interrupted(name):\n"
        "    raise KeyboardInterrupt\n"
        "loading.__getattr__ = interrupted\n"
        "sys.modules['vault.cli'] = loading\n"
        "from vault._entry import main\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (130, "vault: interrupted\n")


def test_ctrl_c_after_the_command_finished_changes_nothing() -> None:
    """A Ctrl-C while the interpreter shuts down (the worker pools' clean-up runs at exit) neither prints
    nor changes the exit status: the command's outcome is decided."""
    import subprocess

    script = (
        "import atexit, os, signal, sys, time, types\n"
        "def late():\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(0.2)\n"
        "atexit.register(late)\n"
        "done = types.ModuleType('vault.cli')\n"
        "def finished():\n"
        "    sys.exit(0)\n"
        "done.main = finished\n"
        "sys.modules['vault.cli'] = done\n"
        "from vault._entry import main\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")


def test_ctrl_c_while_a_command_runs_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import vault.pki

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(vault.pki, "read_certificate", interrupted)  # Ctrl-C as the command reads its inputs
    files = [tmp_path / name for name in ("device.pem", "device.tlog-proof", "policy.json", "root-ca.pem")]
    for path in files:
        path.write_text("-")
    cert, proof, policy, root = map(str, files)
    code, out, err = run(capsys, "registry", "verify", cert, proof, "--policy", policy, "--root-cert", root)
    assert (code, out, err) == (130, "", "vault: interrupted\n")
