"""``vault.verify`` imports in a clean environment that holds only cryptography and python-pkcs11.

A station installs the library with those two packages (and what they
themselves need) alone. The test makes such an environment: a new virtual
environment without pip, whose site-packages has one ``.pth`` file naming a
folder of links to exactly those distributions' files, and the repository
root (for ``vault`` itself). Nothing else from the test environment is
visible there, which the control (``import click`` fails) proves.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from vault.token import Pkcs11Uri, format_uri

ROOT = Path(__file__).resolve().parent.parent
STATION_DEPENDENCIES = ("cryptography", "python-pkcs11")
HEAVY = ("click", "yaml", "sigstore", "rich", "pkilint", "shamir_mnemonic", "pydantic")
HEAVY += ("vault.ceremony", "vault.bundle", "vault.cli", "vault.audit")


def closure(names: tuple[str, ...]) -> dict[str, metadata.Distribution]:
    """The distributions ``names`` need at run time, themselves included (no extras)."""
    found: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        dist = metadata.distribution(todo.pop())
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in found:
            continue
        found[key] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return found


def link_distributions(dists: dict[str, metadata.Distribution], folder: Path) -> set[str]:
    """Link every top-level file and folder of ``dists`` into ``folder``; returns the names linked."""
    linked: set[str] = set()
    for dist in dists.values():
        base = Path(str(dist.locate_file("")))
        for top in {file.parts[0] for file in dist.files or [] if file.parts and file.parts[0] != ".."}:
            source = base / top
            if source.exists() and not (folder / top).exists():
                (folder / top).symlink_to(source)
                linked.add(top)
    return linked


@pytest.fixture(scope="module")
def clean_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Python whose only third-party packages are the station's dependencies, and vault from this checkout."""
    base = tmp_path_factory.mktemp("clean")
    venv, packages = base / "venv", base / "packages"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    packages.mkdir()
    dists = closure(STATION_DEPENDENCIES)
    assert {"cryptography", "python-pkcs11", "cffi", "pycparser", "asn1crypto"} <= set(dists)
    linked = link_distributions(dists, packages)
    assert {"cryptography", "pkcs11", "cffi", "asn1crypto"} <= linked
    assert any(name.startswith("_cffi_backend") for name in linked)  # the compiled backend cryptography loads
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    assert Path(purelib) != Path(sysconfig.get_paths()["purelib"])
    Path(purelib, "station.pth").write_text(f"{packages}\n{ROOT}\n")
    return python


def run(python: Path, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -I -c code``: isolated from PYTHONPATH, the user site and the current folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run([str(python), "-I", "-c", code], capture_output=True, text=True, cwd=cwd, env=env)


def test_vault_verify_imports_with_cryptography_and_python_pkcs11_alone(clean_python: Path, tmp_path: Path) -> None:
    code = (
        "import json, sys, sysconfig\n"
        "import vault.verify\n"
        "from vault.verify import Station, SimulatedDevice, verify_device_proof\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules or any(n.startswith(m + '.') for n in sys.modules)]\n"
        "files = {getattr(m, '__file__', None) for m in list(sys.modules.values())} - {None}\n"
        "print(json.dumps({'heavy': heavy, 'vault': vault.verify.__file__, 'prefix': sys.prefix,\n"
        "                  'stdlib': sysconfig.get_paths()['stdlib'], 'files': sorted(files)}))\n"
    )
    result = run(clean_python, code, tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["heavy"] == []
    assert Path(report["vault"]).is_relative_to(ROOT / "vault")
    assert Path(report["prefix"]) == clean_python.parent.parent
    packages = clean_python.parent.parent.parent / "packages"
    places = [Path(report["stdlib"]), ROOT / "vault", packages]
    for file in map(Path, report["files"]):  # every module came from the standard library, vault or the links
        assert any(file.is_relative_to(place) for place in places), file


def test_the_station_token_layer_works_there_on_a_real_softhsm2_token(
    clean_python: Path, fresh_tokens: Callable[[list[str]], dict[str, Pkcs11Uri]], tmp_path: Path
) -> None:
    uri = format_uri(fresh_tokens(["clean-env"])["clean-env"])
    code = (
        "from cryptography.hazmat.primitives import hashes\n"
        "from cryptography.hazmat.primitives.asymmetric import ec\n"
        "from vault.token import open_token, parse_uri\n"
        f"with open_token(parse_uri({uri!r}), rw=True) as token:\n"
        "    key = token.generate_ec_key('station-signing')\n"
        "    signature = key.sign(b'manifest')\n"
        "key.public_key.verify(signature, b'manifest', ec.ECDSA(hashes.SHA256()))\n"
        "print(key.key_id)\n"
    )
    result = run(clean_python, code, tmp_path)  # SOFTHSM2_CONF and VAULT_PKCS11_MODULE are inherited
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip()) == 64


def test_the_clean_environment_really_lacks_the_cli_dependencies(clean_python: Path, tmp_path: Path) -> None:
    for module in ("click", "yaml", "sigstore", "pkilint"):
        result = run(clean_python, f"import {module}", tmp_path)
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, module
    # and so the CLI, which needs click, does not import there either
    result = run(clean_python, "import vault.cli", tmp_path)
    assert result.returncode != 0 and "No module named 'click'" in result.stderr
