"""The token layer (which the station library builds on) stays free of CLI and ceremony dependencies."""

from __future__ import annotations

import subprocess
import sys


def test_token_layer_imports_without_click_yaml_or_sigstore() -> None:
    code = (
        "import sys, vault.token, vault.crypto, vault.errors\n"
        "heavy = sorted(m for m in ('click', 'yaml', 'sigstore', 'rich', 'vault.cli') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
