"""Several bundles in one audit: each manifest against its own bundle, units reconciled per bundle and station."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.audit.conftest import Forge, Report, read_release, serious
from tests.verify.conftest import POLICIES, World, vault
from vault.audit import Reconciliation, audit
from vault.cli import cli, main
from vault.token import TokenKey, format_uri
from vault.verify import SimulatedDevice

Audit = Callable[..., Report]


@pytest.fixture(scope="module")
def release_b(world: World) -> Path:
    """A second release of the product (1.5.0, same security counter): station-1 3 units, station-2 2."""
    return world.bundle(allocation="{station-1: 3, station-2: 2}", version="1.5.0", total=5)


def _two_releases(world: World, release_b: Path, folder: Path) -> list[Path]:
    """station-1 runs release A (the world's bundle), then release B, through the station library."""
    evidence = folder / "evidence"
    exports = []
    with world.station(folder / "station-1") as station:
        station.load(world.bundle_path, world.policy)
        for i in range(2):
            station.provision(SimulatedDevice(label=f"A-{i}"), label=f"A-{i}", fixture=1)
        exports.append(station.export(evidence).path)
        station.load(release_b, world.policy)
        for i in range(3):
            station.provision(SimulatedDevice(label=f"B-{i}"), label=f"B-{i}", fixture=1)
        exports.append(station.export(evidence).path)
    return exports


def _used(r: Reconciliation) -> tuple[int, int, int, int]:
    return r.allocation, r.reserved, r.provisioned, r.highest_unit


def test_a_station_that_ran_two_releases_is_clean_with_both_bundles(
    world: World, release_b: Path, tmp_path: Path, run_audit: Audit
) -> None:
    exports = _two_releases(world, release_b, tmp_path)
    report = run_audit(exports, bundle=[world.bundle_path, release_b])
    assert serious(report) == set(), [f.message for f in report.findings]
    assert report.bundle is None and [b.bundle.version for b in report.bundles] == ["1.4.0", "1.5.0"]
    a, b = ({station: _used(r) for station, r in item.stations} for item in report.bundles)
    assert a == {"station-1": (20, 2, 2, 2), "station-2": (10, 0, 0, 0)}
    assert b == {"station-1": (3, 3, 3, 3), "station-2": (2, 0, 0, 0)}
    assert _used(report.bundles[0].totals) == (1000, 2, 2, 2) and _used(report.bundles[1].totals) == (5, 3, 3, 3)
    one = next(s for s in report.stations if s.station_id == "station-1")
    assert _used(one.reconciliation) == (23, 5, 5, 3) and one.reconciliation.units_provisioned == 5
    assert _used(report.totals[0]) == (1005, 5, 5, 3)
    value = json.loads(report.to_json())
    assert value["bundle"] is None  # several bundles: each is in "bundles", never one of them as "the" bundle
    reconciled = value["bundles"][1]["reconciliation"]
    assert reconciled["stations"]["station-1"]["reserved"] == 3 and reconciled["totals"]["allocation"] == 5
    html = report.to_html()
    assert html.count("<h3>example-sensor 1.") == 2


def test_with_one_bundle_the_other_release_s_manifests_are_bundle_mismatch(
    world: World, release_b: Path, tmp_path: Path, run_audit: Audit
) -> None:
    exports = _two_releases(world, release_b, tmp_path)
    only_a = run_audit(exports)
    assert serious(only_a) == {"bundle-mismatch"}
    (mismatch,) = only_a.at_or_above("medium")
    assert mismatch.count == 3 and {e.position for e in mismatch.evidence} == {2, 3, 4}
    assert only_a.bundle is not None and only_a.bundle.version == "1.4.0"
    value = json.loads(only_a.to_json())  # one bundle: "bundle" reads as before, "bundles" has it too
    assert value["bundle"]["version"] == "1.4.0" and len(value["bundles"]) == 1
    assert value["stations"][0]["reconciliation"]["allocation"] == 20

    only_b = run_audit(exports, bundle=release_b)
    assert serious(only_b) == {"bundle-mismatch"}
    assert only_b.at_or_above("medium")[0].count == 2


@pytest.fixture
def forge_b(forge: Forge, world: World, release_b: Path) -> Callable[[], None]:
    """Switch the forge to release B: its next manifests name bundle B, numbered from unit 1."""

    def switch() -> None:
        forge.release = read_release(world, release_b)
        forge.units = 0

    return switch


def test_an_over_allocation_of_b_is_found_while_a_is_clean(
    world: World, release_b: Path, forge: Forge, forge_b: Callable[[], None], tmp_path: Path, run_audit: Audit
) -> None:
    forge.provision(2)
    forge_b()
    forge.provision(3)
    first = forge.export(tmp_path / "evidence")
    clean = run_audit([first], bundle=[world.bundle_path, release_b])
    assert serious(clean) == set(), [f.message for f in clean.findings]

    forge.provision(1)  # a fourth unit of B: its allocation at station-1 is 3
    report = run_audit([first, forge.export(tmp_path / "evidence")], bundle=[world.bundle_path, release_b])
    assert serious(report) == {"over-allocation"}
    (over,) = report.at_or_above("medium")
    bundle_b = report.bundles[1].bundle
    assert over.count == 1 and over.stations == ("station-1",)
    assert f"of bundle {bundle_b.bundle_id} (example-sensor 1.5.0)" in over.message
    a, b = (dict(item.stations)["station-1"] for item in report.bundles)
    assert (a.reserved, a.left, b.reserved, b.left) == (2, 18, 4, -1)


def test_a_unit_number_is_per_bundle(
    world: World, release_b: Path, forge: Forge, forge_b: Callable[[], None], tmp_path: Path, run_audit: Audit
) -> None:
    forge.provision(1)
    forge_b()
    forge.provision(1)
    forge.add("provisioned", unit=1)  # a second device on unit 1 of B: shared; unit 1 of A is another unit
    report = run_audit([forge.export(tmp_path)], bundle=[world.bundle_path, release_b])
    assert serious(report) == {"unit-shared"}
    (shared,) = report.at_or_above("medium")
    assert len(shared.hardware_ids) == 2 and {e.position for e in shared.evidence} == {1, 2}


def _argv(world: World, exports: list[Path], *bundles: Path) -> list[str]:
    argv = ["audit", *map(str, exports), "--root-cert", str(world.root_cert_path), "--policy", str(world.policy_path)]
    for bundle in bundles:
        argv += ["--bundle", str(bundle)]
    return [*argv, "--token", format_uri(world.tokens["auditor"]), "--workers", "1"]


def test_bundle_repeated_or_a_folder_on_the_command_line(world: World, release_b: Path, tmp_path: Path) -> None:
    exports = _two_releases(world, release_b, tmp_path)
    runner = CliRunner()
    repeated = runner.invoke(cli, _argv(world, exports, world.bundle_path, release_b), catch_exceptions=False)
    assert repeated.exit_code == 0, repeated.output
    assert "PASS: no finding at or above high" in repeated.output
    assert repeated.output.count("release     example-sensor 1.") == 2
    assert "2 of 1,000 units reserved" in repeated.output and "3 of 5 units reserved" in repeated.output

    releases = tmp_path / "releases"
    releases.mkdir()
    shutil.copy(world.bundle_path, releases / "a.vbundle")
    shutil.copy(release_b, releases / "b.vbundle")
    (releases / ".hidden").write_text("an editor's lock file is not read")
    out = tmp_path / "audit.json"
    folder = runner.invoke(cli, [*_argv(world, exports, releases), "--json", str(out)], catch_exceptions=False)
    assert folder.exit_code == 0, folder.output
    value = json.loads(out.read_text())
    assert [b["version"] for b in value["bundles"]] == ["1.4.0", "1.5.0"]
    assert value["summary"]["findings"]["high"] == 0 and value["summary"]["findings"]["medium"] == 0
    # the folder and a file in it, or a copy of a bundle: each bundle is read once
    again = runner.invoke(cli, _argv(world, exports, releases, release_b, world.bundle_path), catch_exceptions=False)
    assert again.exit_code == 0 and again.output.count("release     example-sensor 1.") == 2


def _fails_in_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("vault: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_bundle_inputs_are_one_line_and_exit_1(
    world: World, release_b: Path, forge: Forge, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forge.provision(1)
    exports = [forge.export(tmp_path / "evidence")]
    releases = tmp_path / "releases"
    releases.mkdir()
    shutil.copy(world.bundle_path, releases / "a.vbundle")
    (releases / "release.yaml").write_text("product: example-sensor\n")
    err = _fails_in_one_line(_argv(world, exports, releases), capsys)
    assert err.startswith(f"vault: error: {releases / 'release.yaml'}: ") and "vault bundle" in err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"{empty} holds no release bundle" in _fails_in_one_line(_argv(world, exports, empty), capsys)

    # one bundle before and after its promotion: two files, one bundle id; the audit never picks one silently
    before = world.bundle(allocation="{station-1: 5}", version="1.4.3", promote=False)
    after = tmp_path / "promoted.vbundle"
    shutil.copy(before, after)
    policy = ["--policy", str(world.policy_path), "--root-cert", str(world.root_cert_path)]
    key = world.key("release", "release-signer")
    vault("bundle", "promote", str(after), "--key", key, "--log", str(world.promotions), *policy)
    err = _fails_in_one_line(_argv(world, exports, before, after), capsys)
    assert "two different bundles with one bundle id" in err and str(before) in err and str(after) in err


def test_a_policy_older_than_the_one_the_release_was_built_under_is_refused(
    world: World, forge: Forge, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forge.provision(1)
    exports = [forge.export(tmp_path / "evidence")]
    stale = next((world.policy_path.parent.parent / "enrol-1").glob("policy-v*.json"))
    argv = _argv(world, exports, world.bundle_path)
    argv[argv.index(str(world.policy_path))] = str(stale)
    err = _fails_in_one_line(argv, capsys)
    assert "the release was built under trust policy v" in err and "stale: give the current policy" in err
    assert f"the policy given is v{stale.stem.removeprefix('policy-v')}" in err


@pytest.mark.slow
def test_a_bundle_whose_station_a_later_policy_revoked_still_audits(
    softhsm_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "world").mkdir()
    world = World(tmp_path / "world")  # its own: the revocation moves the root token's policy head
    evidence = tmp_path / "evidence"
    with world.station(tmp_path / "station-1") as station:
        station.load(world.bundle_path, world.policy)
        for i in range(2):
            station.provision(SimulatedDevice(label=f"S1-{i}"), label=f"S1-{i}", fixture=1)
        exports = [station.export(evidence).path]
    shares = ["--share", str(world.folder / "root" / "shares" / "officer-1.txt")]
    shares += ["--share", str(world.folder / "root" / "shares" / "officer-2.txt")]
    vault("ceremony", "run", str(POLICIES / "revoke.yaml"), "--credentials", str(world.folder / "creds.yaml"),
          "--policy", str(world.policy_path), "--root-cert", str(world.root_cert_path), *shares,
          "--out", str(tmp_path / "revoke"), "--rehearsal", "--yes")  # fmt: skip
    later = (tmp_path / "revoke" / "policy-v5.json").read_bytes()
    from vault.token import open_token

    with open_token(world.tokens["auditor"]) as session:
        key: TokenKey = session.key(label="auditor-decrypt")
        report = audit(exports, policy=later, root_certificate=world.root_cert, bundle_path=world.bundle_path,
                       decapsulator=key, workers=1)  # fmt: skip
    assert report.policy_version == 5
    assert report.codes() <= {"unit-failed", "station-no-evidence"}  # station-2 (revoked) sent nothing
    assert serious(report, "low") <= {"station-no-evidence"}
    assert report.bundle is not None and report.bundle.promoted
    reconciled = dict(report.bundles[0].stations)
    assert _used(reconciled["station-1"]) == (20, 2, 2, 2) and _used(reconciled["station-2"]) == (10, 0, 0, 0)
