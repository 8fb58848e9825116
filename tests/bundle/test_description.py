"""The release description's documentation is true: the example file builds as it is, every field is documented."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from tests.bundle.conftest import Release
from tests.ceremony.test_quorum_ceremonies import assert_one_line_error
from vault._yaml import Checked, List, Map, Record
from vault.bundle import _description

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "policies" / "release.yaml"
PAGE = ROOT / "docs" / "release-description.md"


def test_the_example_description_builds_as_it_is(release: Release) -> None:
    folder = release.setup.tmp / "example"
    (folder / "images").mkdir(parents=True)
    shutil.copy(EXAMPLE, folder / "release.yaml")
    for name in ("app.bin", "config.bin"):
        shutil.copy(release.setup.tmp / "images" / name, folder / "images" / name)
    out = folder / "release.vbundle"
    code, stdout, err = release.bundle("build", str(folder / "release.yaml"), "-o", str(out), "--json")
    assert code == 0, err
    assert [i["name"] for i in json.loads(stdout)["images"]] == ["app.bin", "config.bin"]
    code, stdout, err = release.bundle("inspect", str(out), "--json")
    assert code == 0, err
    view = json.loads(stdout)
    assert (view["product"], view["version"], view["security_counter"]) == ("example-sensor", "1.4.0", 7)
    assert view["production"] == {"total": 1000, "allocation": {"station-1": 600}}

    # a refusal the page lists reads as the page says
    text = (folder / "release.yaml").read_text().replace("version:", "versoin:")
    (folder / "typo.yaml").write_text(text)
    code, _, err = release.bundle("build", str(folder / "typo.yaml"), "-o", str(folder / "typo.vbundle"))
    assert code == 1
    assert_one_line_error(err, "unknown field 'versoin' (did you mean 'version'?)")
    assert "unknown field 'versoin' (did you mean 'version'?)" in PAGE.read_text()


def schema_fields(kind: object, prefix: str = "") -> list[str]:
    """Every field the parser accepts, as the page names them (``production.total``, ``images[].name``)."""
    names: list[str] = []
    if isinstance(kind, Record):
        for name, field in kind.fields.items():
            names.append(prefix + name)
            names += schema_fields(field.kind, f"{prefix}{name}.")
    elif isinstance(kind, List):
        names += schema_fields(kind.item, prefix[:-1] + "[].")
    elif isinstance(kind, Checked):
        names += schema_fields(kind.inner, prefix)
    elif isinstance(kind, Map):
        names += schema_fields(kind.value, prefix + "NAME.")
    return names


def test_every_field_is_documented_and_the_docstring_points_at_files_that_exist() -> None:
    page = PAGE.read_text()
    documented = [
        name.replace("…provenance.", "images[].provenance.")
        for name in re.findall(r"^\| `([^`]+)` \|", page, flags=re.MULTILINE)
    ]
    assert documented == schema_fields(_description._SCHEMA)
    doc = _description.__doc__ or ""
    named = re.findall(r"``((?:docs|policies)/[\w./-]+)``", doc)
    assert set(named) == {"docs/release-description.md", "policies/release.yaml"}
    for path in named:
        assert (ROOT / path).is_file(), path
