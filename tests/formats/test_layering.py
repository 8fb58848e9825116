"""vault.formats is the bottom layer: standard library, cryptography and vault.crypto/errors only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import vault.formats

ALLOWED_VAULT = {"vault.crypto", "vault.errors"}


def test_formats_imports_nothing_heavy() -> None:
    code = (
        "import sys, vault.formats\n"
        "heavy = ('click', 'yaml', 'sigstore', 'rich', 'pkcs11', 'vault.token', 'vault.cli', 'vault.ceremony')\n"
        "print(','.join(sorted(m for m in heavy if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_formats_source_imports_only_allowed_modules() -> None:
    package = Path(vault.formats.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top == "vault":
                    assert name in ALLOWED_VAULT or name.startswith("vault.formats"), f"{path.name} imports {name}"
                else:
                    assert top in sys.stdlib_module_names or top == "cryptography", f"{path.name} imports {name}"


def test_public_surface_is_named() -> None:
    for name in vault.formats.__all__:
        assert hasattr(vault.formats, name), name
