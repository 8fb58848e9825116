"""NSS softoken, the second module: tokens made by ``nss/setup.sh``, as users make them.

The tokens are reached through p11-kit's proxy with the private configuration
the script writes (``$VAULT_P11KIT_CONFIG``); their URIs name the proxy by
``module-path``, so SoftHSM2 stays this process's default module for every
other test. A machine without NSS fails here: ``make test`` installs it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT, read_env_file
from vault.token import Pkcs11Uri

SETUP = ROOT / "nss" / "setup.sh"


@pytest.fixture(scope="session")
def nss_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("nss")
    subprocess.run(["bash", str(SETUP), "--dir", str(directory), "--quiet"], check=True)
    env = read_env_file(directory / "env")
    os.environ["VAULT_P11KIT_CONFIG"] = env["VAULT_P11KIT_CONFIG"]
    (directory / "proxy").write_text(env["VAULT_PKCS11_MODULE"])
    return directory


@pytest.fixture(scope="session")
def nss_uri(nss_dir: Path) -> Callable[..., Pkcs11Uri]:
    """``nss_uri("nss-root", object="x")``: a URI for an NSS token, with its PIN file and p11-kit's proxy."""
    proxy = (nss_dir / "proxy").read_text()

    def make(label: str, **attrs: object) -> Pkcs11Uri:
        pin = nss_dir / "pins" / f"{label}.pin"
        return Pkcs11Uri(token=label, pin_source=f"file:{pin}", module_path=proxy, **attrs)  # type: ignore[arg-type]

    return make
