"""Close-outs against the evidence, and silence: each crafted case with its clean twin."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.audit.conftest import START, Forge, serious
from tests.verify.conftest import World
from vault import merkle
from vault.audit import Report, audit
from vault.cli import cli
from vault.closeout import Closeout, UnitsUsed, closeout_name, sign_closeout
from vault.token import TokenKey, format_uri


def closeout(forge: Forge, size: int | None = None, *, exports: int | None = None, used: int | None = None) -> bytes:
    """station-1's close-out of its log at ``size`` (default: all of it), signed with its token key."""
    size = len(forge.log) if size is None else size
    _, root = merkle.root_from_leaf_hashes([merkle.leaf_hash(e.envelope) for e in forge.log[:size]])
    units = forge.units if used is None else used
    c = Closeout(
        station_id=forge.station_id, bundle_id=forge.release.bundle_id,
        statement_sha256=forge.release.statement_sha256, product=forge.release.product,
        version=forge.release.version, security_counter=forge.release.security_counter,
        policy_version=forge.policy_version, allocation=20,
        units=UnitsUsed(units, units, 0, 0, 0), log_size=size, log_root=root.hex(),
        exports=len(forge.exports) if exports is None else exports, time=forge.tick(), clock="test",
    )  # fmt: skip
    return sign_closeout(c, forge.signing)


def write(folder: Path, forge: Forge, data: bytes) -> Path:
    path = folder / closeout_name(forge.station_id, forge.release.bundle_id)
    path.write_bytes(data)
    return path


@pytest.fixture
def run(world: World, auditor_key: TokenKey):  # type: ignore[no-untyped-def]
    def go(folder: Path, *, closeouts: tuple[Path, ...] = (), days: float = 0, silence: float = 7) -> Report:
        return audit(
            sorted(folder.glob("*.vault-evidence")), policy=world.policy, root_certificate=world.root_cert,
            bundle_path=world.bundle_path, decapsulator=auditor_key, workers=1,
            now=START + datetime.timedelta(days=days), closeouts=closeouts,
            max_silence=datetime.timedelta(days=silence),
        )  # fmt: skip

    return go


def test_a_close_out_that_matches_the_last_export_gives_nothing_serious(forge: Forge, tmp_path: Path, run) -> None:  # type: ignore[no-untyped-def]
    forge.provision(3)
    forge.export(tmp_path)
    forge.provision(2)
    forge.export(tmp_path)
    report = run(tmp_path, closeouts=(write(tmp_path, forge, closeout(forge)),), days=30)  # closed: never silent
    assert serious(report, "low") == {"station-no-evidence"}  # station-2 (allocated 10) sent nothing
    (closed,) = [f for f in report.findings if f.code == "station-closed"]
    assert closed.severity == "info" and "5 of 20 units used" in closed.message and "after export 2" in closed.message


def test_a_close_out_past_the_last_export_finds_the_withheld_export(forge: Forge, tmp_path: Path, run) -> None:  # type: ignore[no-untyped-def]
    forge.provision(3)
    first = forge.export(tmp_path)
    forge.provision(2)
    forge.export(tmp_path / "withheld")  # export 2 is made, and kept from the auditor
    report = run(tmp_path, closeouts=(write(tmp_path, forge, closeout(forge)),))
    (finding,) = report.at_or_above("medium")
    assert finding.code == "export-withheld" and finding.severity == "critical"
    assert "log positions 3 to 4" in finding.message and "1 export(s) were not given" in finding.message
    assert str(first.absolute()) in finding.message and finding.count == 2
    assert [e.export for e in finding.evidence][1] == str(first.absolute())


def test_a_close_out_whose_root_is_not_the_evidence_is_a_mismatch(forge: Forge, tmp_path: Path, run) -> None:  # type: ignore[no-untyped-def]
    forge.provision(3)
    forge.export(tmp_path)
    real = forge.log[2]
    forge.log[2] = forge.manifest("provisioned", unit=3, sequence=2)  # the close-out signs another entry 2
    data = closeout(forge)
    forge.log[2] = real
    report = run(tmp_path, closeouts=(write(tmp_path, forge, data),))
    assert serious(report) == {"closeout-mismatch"}
    (tmp_path / "second").mkdir()
    too_few = run(tmp_path, closeouts=(write(tmp_path / "second", forge, closeout(forge, used=2)),))
    assert serious(too_few) == {"closeout-mismatch"}
    assert "evidence names unit 3" in too_few.at_or_above("medium")[0].message


def test_a_forged_close_out_is_a_finding_naming_the_file(
    forge: Forge, tmp_path: Path, run, station_keys: dict[str, tuple[TokenKey, TokenKey]]  # type: ignore[no-untyped-def]
) -> None:
    forge.provision(2)
    forge.export(tmp_path)
    # station-2's key, in station-1's name
    other = Forge(forge.world, forge.release, "station-1", *station_keys["station-2"])
    other.log = forge.log
    path = write(tmp_path, forge, closeout(other))
    report = run(tmp_path, closeouts=(path,))
    (finding,) = report.at_or_above("high")
    assert finding.code == "closeout-invalid" and str(path.absolute()) in finding.message
    assert "not that station's signing key" in finding.message


def test_no_close_out_and_an_old_export_is_silence(forge: Forge, tmp_path: Path, run) -> None:  # type: ignore[no-untyped-def]
    forge.provision(2)
    forge.export(tmp_path)
    last = forge.export(tmp_path)  # nothing new: the station's last word
    report = run(tmp_path, days=10)
    (finding,) = report.at_or_above("medium")
    assert finding.code == "station-silent" and finding.severity == "high"
    assert str(last.absolute()) in finding.message and "(export 2," in finding.message
    assert "9 days" in finding.message and finding.stations == ("station-1",)
    assert serious(run(tmp_path, days=10, silence=14)) == set()  # a longer --max-silence allows it
    assert serious(run(tmp_path, days=1)) == set()  # the clean twin: a recent export


def test_the_command_reads_close_outs_beside_the_exports(world: World, forge: Forge, tmp_path: Path) -> None:
    forge.provision(2)
    forge.export(tmp_path)
    write(tmp_path, forge, closeout(forge, exports=1))
    argv = ["audit", str(tmp_path), "--root-cert", str(world.root_cert_path), "--policy", str(world.policy_path),
            "--bundle", str(world.bundle_path), "--token", format_uri(world.tokens["auditor"]),
            "--workers", "1"]  # fmt: skip
    result = CliRunner().invoke(cli, [*argv, "--json", "-"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    codes = {f["code"] for f in json.loads(result.stdout)["findings"]}
    assert "station-closed" in codes and "export-invalid" not in codes
    bad = CliRunner().invoke(cli, [*argv, "--max-silence", "soon"])
    assert bad.exit_code == 2 and "is not a duration" in bad.output
