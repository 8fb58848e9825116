"""The README's station library example runs as written (with the test world's files put in)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.verify.conftest import ROOT, World
from vault.token import format_uri


def readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"In your own software.*?```python\n(.*?)```", readme, re.S)
    assert found, "the README's station guide has no Python example after 'In your own software'"
    return found.group(1)


def test_the_readme_station_example_runs(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = readme_example()
    names = {
        "pkcs11:token=vault-station-1?pin-source=file:.softhsm/pins/vault-station-1.pin": format_uri(
            world.tokens["station-1"], redact_pin=False
        ),
        '"root-ca.pem"': repr(str(world.root_cert_path)),
        '"policy-v4.json"': repr(str(world.policy_path)),
        '"release.vbundle"': repr(str(world.bundle_path)),
    }
    for name, value in names.items():
        assert name in code, f"the README example no longer names {name}"
        code = code.replace(name, value)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102 (the README's own code)
    assert capsys.readouterr().out == "provisioned SN-0001 19\n"
    assert [p.suffix for p in sorted((tmp_path / "evidence").iterdir())] == [".station-copy", ".vault-evidence"]
    assert (tmp_path / "station-state" / "station.sqlite").is_file()
