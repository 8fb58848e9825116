"""Reach a module that needs C_Initialize arguments (NSS softoken) through p11-kit's proxy.

python-pkcs11 calls ``C_Initialize(NULL)``; NSS's softoken refuses that
(CKR_ARGUMENTS_BAD): it must be told its database folder. p11-kit's proxy
module (``p11-kit-proxy.so``, the same file as ``libp11-kit.so.0``) loads the
modules its configuration names and passes each one's ``x-init-reserved``
string at C_Initialize, so vault loads the proxy and the configuration says
where NSS keeps its tokens.

p11-kit reads a user's own configuration (``~/.config/pkcs11``) except in a
process running as root, where it reads only the system's. So that the
same set-up works for every user and never touches ``/etc/pkcs11``, a
folder named by ``$VAULT_P11KIT_CONFIG`` (holding ``pkcs11.conf`` and
``modules/``, as ``nss/setup.sh`` writes it) replaces p11-kit's system and
user configuration in this process, through p11-kit's own
``p11_kit_override_system_files`` (declared in ``p11-kit/p11-kit.h``). Only
the proxy is affected, and only when the variable is set; see
docs/adr/0009-second-module.md.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from vault.errors import ModuleLoadError

CONFIG_ENV = "VAULT_P11KIT_CONFIG"

# p11-kit keeps the pointers it is given: the strings must live as long as the process.
_kept: list[ctypes.c_char_p] = []


def is_p11kit_proxy(path: str) -> bool:
    """Whether ``path`` is p11-kit's proxy module (``p11-kit-proxy.so`` or ``libp11-kit.so*``)."""
    name = Path(os.path.realpath(path)).name
    return name.startswith("libp11-kit.so") or Path(path).name.startswith(("p11-kit-proxy", "libp11-kit.so"))


def prepare(path: str) -> None:
    """Before the proxy at ``path`` is initialised, point it at ``$VAULT_P11KIT_CONFIG`` if that is set.

    Raises:
        ModuleLoadError: the folder has no ``pkcs11.conf`` or ``modules/``, or
            the library lacks the call.
    """
    folder = os.environ.get(CONFIG_ENV)
    if not folder or not is_p11kit_proxy(path):
        return
    base = Path(folder)
    conf, modules = base / "pkcs11.conf", base / "modules"
    if not conf.is_file() or not modules.is_dir():
        raise ModuleLoadError(f"${CONFIG_ENV} is {folder}, which has no pkcs11.conf and modules/ folder for p11-kit")
    try:
        lib = ctypes.CDLL(path)
        override = lib.p11_kit_override_system_files
    except (OSError, AttributeError) as e:
        raise ModuleLoadError(f"{path} cannot take a private p11-kit configuration: {e}") from e
    override.restype = None
    strings = [ctypes.c_char_p(os.fsencode(p)) for p in (conf, conf, modules, modules, modules)]
    _kept.extend(strings)
    override(*strings)
