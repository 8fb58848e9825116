"""tpm2-pkcs11 on a software TPM (swtpm): tokens made by ``tpm/setup.sh``, as users make them.

The script starts swtpm, a private D-Bus bus and tpm2-abrmd for a folder of
this run and stops them at the end. The module reads ``TPM2_PKCS11_STORE``,
``TPM2_PKCS11_TCTI`` and the bus address when it is loaded, so they are set
in this process first; the URIs name the module by ``module-path``, so
SoftHSM2 stays the default module for every other test. A machine without
the packages fails here: ``make test`` installs them.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, read_env_file
from vault.token import Pkcs11Uri

SETUP = ROOT / "tpm" / "setup.sh"


@pytest.fixture(scope="session")
def tpm_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("tpm")
    subprocess.run(["bash", str(SETUP), "--dir", str(directory), "--quiet"], check=True)
    env = read_env_file(directory / "env")
    for name in ("TPM2_PKCS11_STORE", "TPM2_PKCS11_TCTI", "DBUS_SESSION_BUS_ADDRESS"):
        os.environ[name] = env[name]
    (directory / "module").write_text(env["VAULT_PKCS11_MODULE"])
    yield directory
    subprocess.run(["bash", str(SETUP), "--dir", str(directory), "--stop"], check=False)


@pytest.fixture(scope="session")
def tpm_uri(tpm_dir: Path) -> Callable[..., Pkcs11Uri]:
    """``tpm_uri("tpm-release", object="x")``: a URI for a TPM token, with its PIN file and the module."""
    module = (tpm_dir / "module").read_text()

    def make(label: str, **attrs: object) -> Pkcs11Uri:
        pin = tpm_dir / "pins" / f"{label}.pin"
        return Pkcs11Uri(token=label, pin_source=f"file:{pin}", module_path=module, **attrs)  # type: ignore[arg-type]

    return make
