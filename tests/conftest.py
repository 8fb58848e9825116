"""Shared fixtures: a private set of real SoftHSM2 tokens for the whole test run.

The tokens are made by the same ``softhsm/setup.sh`` users run, in a
temporary folder, so tests never touch a developer's own ``.softhsm/``.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from vault.token import Pkcs11Uri

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / "softhsm" / "setup.sh"


def read_env_file(path: Path) -> dict[str, str]:
    """The variables a setup.sh env file exports."""
    env = {}
    for line in path.read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = value
    return env


@pytest.fixture(scope="session")
def softhsm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the development tokens, set as this process's SoftHSM2 config."""
    directory = tmp_path_factory.mktemp("softhsm")
    subprocess.run(["bash", str(SETUP), "--dir", str(directory), "--quiet"], check=True)
    for name, value in read_env_file(directory / "env").items():
        os.environ[name] = value
    return directory


@pytest.fixture(scope="session")
def token_uri(softhsm_dir: Path) -> Callable[..., Pkcs11Uri]:
    """``token_uri("vault-root", object="x")``: a URI with the token's PIN file."""

    def make(label: str, **attrs: object) -> Pkcs11Uri:
        pin = softhsm_dir / "pins" / f"{label}.pin"
        return Pkcs11Uri(token=label, pin_source=f"file:{pin}", **attrs)  # type: ignore[arg-type]

    return make


@pytest.fixture
def label() -> str:
    """A key label no other test uses."""
    return "t-" + uuid.uuid4().hex[:12]


def init_tokens(folder: Path, names: list[str]) -> dict[str, Pkcs11Uri]:
    """Make new, empty SoftHSM2 tokens with unique labels; their PIN files go in ``folder``.

    Returns {name: URI with the token's PIN file}; the security officer's PIN
    is in the same folder, as ``LABEL.so-pin`` (:func:`so_uri`).
    """
    from vault.token import load_module

    uris = {}
    for name in names:
        label = f"{name}-{uuid.uuid4().hex[:8]}"[:32]
        pin = uuid.uuid4().hex
        (folder / f"{label}.pin").write_text(pin)
        (folder / f"{label}.so-pin").write_text(pin + "so")
        subprocess.run(
            ["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", pin + "so"],
            check=True,
            capture_output=True,
        )
        uris[name] = Pkcs11Uri(token=label, pin_source=f"file:{folder / f'{label}.pin'}")
    # the module reads its token folder when initialised: show it the new tokens
    load_module(os.environ["VAULT_PKCS11_MODULE"]).reinitialize()
    return uris


@pytest.fixture
def fresh_tokens(softhsm_dir: Path, tmp_path: Path) -> Callable[[list[str]], dict[str, Pkcs11Uri]]:
    """Make new, empty SoftHSM2 tokens (unique labels) for a test that changes a token for good.

    Returns a function: names -> {name: URI with the token's PIN file} (:func:`init_tokens`).
    """
    return lambda names: init_tokens(tmp_path, names)


def so_uri(uri: Pkcs11Uri) -> Pkcs11Uri:
    """The same token, with its security officer's PIN file (``LABEL.so-pin`` beside ``LABEL.pin``)."""
    assert uri.pin_source is not None
    return Pkcs11Uri(token=uri.token, pin_source=uri.pin_source.replace(".pin", ".so-pin"))


def forget_heads(uri: Pkcs11Uri) -> None:
    """Destroy every head record on a token, as an insider with a raw PKCS#11 tool could.

    Tests that share one enrolled station token across many fresh state
    folders call this so that each starts from a station that never ran.
    """
    from pkcs11 import Attribute, ObjectClass

    from vault.token import open_token
    from vault.token._heads import APPLICATION

    with open_token(uri, rw=True) as token:
        session = token._session
        for obj in list(session.get_objects({Attribute.CLASS: ObjectClass.DATA, Attribute.APPLICATION: APPLICATION})):
            obj.destroy()


@pytest.fixture(autouse=True)
def _stations_start_unused(request: pytest.FixtureRequest) -> None:
    """Each test using the shared enrolled world starts with station tokens that hold no head."""
    if "world" not in request.fixturenames:
        return
    world = request.getfixturevalue("world")
    for name in ("station-1", "station-2"):
        forget_heads(world.tokens[name])
