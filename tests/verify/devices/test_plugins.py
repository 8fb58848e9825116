"""Adapter lookup by entry point, with an adapter package really installed (pip, offline) into a new environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

PACKAGE = {
    "pyproject.toml": (
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "acme-vault-adapter"\nversion = "0.1"\n'
        '[project.entry-points."vault.devices"]\n'
        'acme-jtag = "acme_vault:make_fixture"\n'
        'simulated = "acme_vault:make_fixture"\n'  # claims a name vault already ships
        'acme-broken = "acme_vault_missing:make_fixture"\n'
    ),
    "acme_vault/__init__.py": (
        "import sys\n"
        "HEAVY = 'vendor sdk imported'  # stands for a heavy dependency, imported only with the adapter\n"
        "def make_fixture(options, *, fixture, timeouts, dry_run):\n"
        "    return {'adapter': 'acme-jtag', 'port': options['port'], 'slot': fixture, 'dry_run': dry_run}\n"
    ),
}

PROBE = """
import json, sys
from vault.errors import AdapterError
from vault.verify.devices import DEFAULT_TIMEOUTS, installed_adapters, load_adapter
out = {"installed": installed_adapters(), "imported_before": "acme_vault" in sys.modules}
out["made"] = load_adapter("acme-jtag")({"port": "/dev/ttyACM0"}, fixture=3, timeouts=DEFAULT_TIMEOUTS, dry_run=True)
for name in ("simulated", "acme-broken", "nope"):
    try:
        load_adapter(name)
        out[name] = "loaded"
    except AdapterError as e:
        out[name] = str(e)
print(json.dumps(out))
"""


@pytest.mark.slow
def test_an_adapter_installed_as_its_own_package_is_found_by_name(tmp_path: Path) -> None:
    source = tmp_path / "acme"
    for name, text in PACKAGE.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(text)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    # the new environment sees vault and its dependencies from this one, and holds the adapter package alone
    Path(purelib, "vault-test.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--target", purelib, str(source)], check=True, capture_output=True)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    result = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert {"acme-jtag", "acme-broken", "command", "simulated"} <= set(found["installed"])
    assert found["imported_before"] is False  # listing adapters imports none of them
    assert found["made"] == {"adapter": "acme-jtag", "port": "/dev/ttyACM0", "slot": 3, "dry_run": True}
    assert found["simulated"].startswith("two installed packages provide device adapter 'simulated'")
    assert found["acme-broken"].startswith("device adapter 'acme-broken' cannot be imported")
    assert "no device adapter 'nope' is installed" in found["nope"] and "acme-jtag" in found["nope"]
    # the test environment itself never saw the package
    from vault.verify.devices import installed_adapters

    assert "acme-jtag" not in installed_adapters()
