"""Installs are the same every time: the lock files pin what pyproject.toml asks for, and both the
station install (the library alone) and the full install pass ``pip check``.

The install tests are real ``pip install`` runs into new virtual environments, from the package index
the machine is configured with (as ``make setup`` is), with the hashes the lock files pin.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
CLI_ONLY = {"click", "pyyaml", "sigstore", "sigstore-models", "pydantic", "shamir-mnemonic", "pkilint", "rich"}
_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)(?: ; ([^\\]+))?", re.MULTILINE)


def pins(lock: str, *, here: bool = False) -> dict[str, str]:
    """The versions a lock file pins, by canonical name (with ``here``, only those for this platform)."""
    return {
        canonicalize_name(name): version
        for name, version, marker in _PIN.findall((ROOT / lock).read_text())
        if not (here and marker and not Marker(marker.strip()).evaluate())
    }


def requirements(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [Requirement(text) for text in project["dependencies"]]
    for extra in extras:
        found += [Requirement(text) for text in project["optional-dependencies"][extra]]
    return found


@pytest.mark.parametrize(
    ("lock", "extras"), [("requirements.lock", ("cli", "test", "esp32")), ("requirements-station.lock", ())]
)
def test_each_lock_pins_a_version_of_every_requirement_that_pyproject_allows(
    lock: str, extras: tuple[str, ...]
) -> None:
    pinned = pins(lock)
    for requirement in requirements(*extras):
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{lock} does not pin {name}: run make lock"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{lock} pins {name}=={pinned[name]}, outside {requirement.specifier}: run make lock"
        )
    for line in (ROOT / lock).read_text().splitlines():  # every pin carries its hashes
        if _PIN.match(line):
            assert line.rstrip().endswith("\\"), f"{lock}: {line} has no hash"


def test_the_station_lock_holds_nothing_of_the_cli() -> None:
    pinned = pins("requirements-station.lock")
    assert {"cryptography", "python-pkcs11"} <= set(pinned)
    assert not CLI_ONLY & set(pinned)
    assert set(pinned) <= set(pins("requirements.lock"))  # the same versions as the full install's tree
    full = pins("requirements.lock")
    assert all(full[name] == version for name, version in pinned.items())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vault built as a wheel from a copy of this checkout's sources (nothing is written into the checkout)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "vault", source / "vault", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    pip(sys.executable, "wheel", "-q", "--no-deps", "-w", str(out), str(source))
    (built,) = out.glob("vault-*.whl")
    return built


def pip(python: str | Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_REQUIRE", "VIRTUAL_ENV"))}
    result = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def install(tmp: Path, lock: str, wheel: Path) -> Path:
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    pip(python, "install", "-q", "--require-hashes", "-r", str(ROOT / lock))
    pip(python, "install", "-q", "--no-deps", str(wheel))
    return python


def test_a_station_install_is_the_library_alone_and_pip_check_is_clean(wheel: Path, tmp_path: Path) -> None:
    python = install(tmp_path, "requirements-station.lock", wheel)
    assert "No broken requirements" in pip(python, "check").stdout
    listed = {canonicalize_name(line.split("==")[0]) for line in pip(python, "freeze").stdout.split()}
    assert not CLI_ONLY & listed
    probe = subprocess.run(
        [str(python), "-I", "-c", "import vault.verify, sys; print('click' in sys.modules)"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert (probe.returncode, probe.stdout.strip()) == (0, "False"), probe.stderr
    command = subprocess.run([str(python.parent / "vault"), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert command.returncode == 2
    assert command.stderr.count("\n") == 1 and "pip install 'vault[cli]'" in command.stderr, command.stderr


def test_the_full_install_is_the_lock_and_pip_check_is_clean() -> None:
    """The environment the tests run in is the full install ``make setup`` makes from requirements.lock."""
    assert "No broken requirements" in pip(sys.executable, "check").stdout
    installed = {
        canonicalize_name(line.split("==")[0]): line.split("==")[1]
        for line in pip(sys.executable, "freeze", "--exclude-editable").stdout.split()
        if "==" in line
    }
    differ = {name: (version, installed.get(name)) for name, version in pins("requirements.lock", here=True).items()
              if installed.get(name) != version}  # fmt: skip
    assert not differ, f"the environment is not the lock (pinned, installed): {differ}; run make setup"
