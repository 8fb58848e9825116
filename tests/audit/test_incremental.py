"""Incremental audits (``audit(..., state=DIR)``): the report of a full audit, from only what is new."""

from __future__ import annotations

import datetime
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec

import vault.audit._index
from tests.audit.conftest import Forge, World, serious
from tests.audit.test_checks import other_station
from vault.audit import Report, Thresholds, audit
from vault.audit._state import StateFolder
from vault.cli import cli, main
from vault.errors import InputError
from vault.hpke import SoftwareDecapsulator
from vault.token import TokenKey, format_uri


@pytest.fixture(autouse=True, params=["layered", "merged"])
def layering(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test twice: every run adds its rows to the state's layered index (as when they are few beside
    its base), and every run merges them into one file first (as when they have grown)."""
    monkeypatch.setattr(vault.audit._index, "MERGE_SHARE", 1e9 if request.param == "layered" else 0.0)
    return str(request.param)


def _audit(world: World, key: TokenKey, paths: list[Path], state: Path | None = None, **kw: Any) -> Report:
    return audit(
        paths, policy=world.policy, root_certificate=world.root_cert, bundle_path=world.bundle_path,
        decapsulator=key, workers=1, state=state, **kw,
    )  # fmt: skip


def _same(report: Report) -> dict[str, Any]:
    """The report but for when it was made and how long it took."""
    shown = json.loads(report.to_json())
    del shown["generated"], shown["summary"]["seconds"]
    return shown


def test_an_incremental_audit_gives_the_full_audit_s_report_with_a_clone_in_the_old_exports(
    forge: Forge, world: World, auditor_key: TokenKey, tmp_path: Path, layering: str
) -> None:
    evidence, state = tmp_path / "evidence", tmp_path / "state"
    devices = forge.provision(4)
    first = forge.export(evidence)
    forge.provision(2)
    forge.add("provisioned", forge.device(hardware_id=devices[1].hardware_id))  # its twin is in export 1
    forge.add("failed", failed_step="program", detail="probe lost contact")
    second = forge.export(evidence)
    forge.provision(1)
    third = forge.export(evidence)

    full = _audit(world, auditor_key, [first, second, third])
    assert "duplicate-hardware-id" in serious(full)

    _audit(world, auditor_key, [first], state)  # the first run makes the state
    base = (state / "gen-1" / "audit-index-base.sqlite").stat()
    _audit(world, auditor_key, [first, second], state)  # export 1 again (skipped) and export 2
    incremental = _audit(world, auditor_key, [third], state)  # only the new one
    assert _same(incremental) == _same(full)
    assert sorted(p.name for p in state.iterdir() if not p.name.startswith(".")) == ["current", "gen-3"]
    now = (state / "gen-3" / "audit-index-base.sqlite").stat()
    # the base the first run made, never written since (the same file), unless every run merged
    assert ((now.st_ino, now.st_mtime_ns) == (base.st_ino, base.st_mtime_ns)) == (layering == "layered")
    assert incremental.manifests == full.manifests == len(forge.log)


def test_a_finding_the_state_kept_is_asked_again_when_new_rows_touch_its_group(
    forge: Forge, world: World, auditor_key: TokenKey, tmp_path: Path
) -> None:
    """A clone, a shared serial and a replayed manifest found in the first two exports come back in the third:
    their kept answers give way to the answers asked again (not both, nor the old)."""
    evidence, state = tmp_path / "evidence", tmp_path / "state"
    twin = forge.provision(1)[0]
    serial = forge.add("provisioned").manifest.serial
    replayed = forge.add("provisioned")
    first = forge.export(evidence)
    forge.add("provisioned", forge.device(hardware_id=twin.hardware_id))
    forge.add("provisioned", forge.device(serial))
    forge.log.append(replace(replayed, envelope=replayed.envelope))
    second = forge.export(evidence)
    forge.add("provisioned", forge.device(hardware_id=twin.hardware_id))  # a third time
    forge.add("provisioned", forge.device(serial))  # a third device
    forge.log.append(replace(replayed, envelope=replayed.envelope))  # a third position
    third = forge.export(evidence)

    full = _audit(world, auditor_key, [first, second, third])
    assert {"duplicate-hardware-id", "duplicate-serial", "manifest-replayed"} <= full.codes()
    _audit(world, auditor_key, [first], state)
    kept = _audit(world, auditor_key, [second], state)
    assert {"duplicate-hardware-id", "duplicate-serial", "manifest-replayed"} <= kept.codes()
    incremental = _audit(world, auditor_key, [third], state)
    assert _same(incremental) == _same(full)
    folder = StateFolder(state, auditor_key)  # what the next run starts from: each group's answer once, now
    try:
        answers = folder.load(folder.stage())["questions"]["answers"]  # type: ignore[index]
    finally:
        folder.release()
    assert [r[:2] for r in answers["devices"]] == [(twin.hardware_id.hex(), 3)]
    assert [r for r in answers["serials"]] == [(serial, 3)]


def test_the_exports_are_listed_as_in_a_full_audit_when_a_later_run_adds_to_the_first_station(
    forge: Forge, world: World, station_keys: dict[str, tuple[TokenKey, TokenKey]], auditor_key: TokenKey,
    tmp_path: Path,
) -> None:  # fmt: skip
    """A full audit lists the exports per station by sequence; the state's listing is in the order of its runs."""
    evidence, state = tmp_path / "evidence", tmp_path / "state"
    two = other_station(world, station_keys, forge)
    first = _exports(forge, evidence, 2)[0]
    two.provision(2)
    other = two.export(evidence)
    second = _exports(forge, evidence, 1)[0]

    full = _audit(world, auditor_key, [first, other, second])
    _audit(world, auditor_key, [first, other], state)
    incremental = _audit(world, auditor_key, [second], state)
    listed = [(e.station_id, e.sequence) for e in incremental.exports]
    assert listed == [("station-1", 1), ("station-1", 2), ("station-2", 1)]
    assert _same(incremental) == _same(full)


def test_a_copy_of_an_audited_export_under_another_name_is_listed_as_a_duplicate_as_in_a_full_audit(
    forge: Forge, world: World, auditor_key: TokenKey, tmp_path: Path
) -> None:
    evidence, state = tmp_path / "evidence", tmp_path / "state"
    first, second = _exports(forge, evidence, 2, 1)
    copy = tmp_path / "elsewhere" / first.name
    copy.parent.mkdir()
    shutil.copyfile(first, copy)

    full = _audit(world, auditor_key, [first, second, copy])
    _audit(world, auditor_key, [first], state)
    incremental = _audit(world, auditor_key, [first, second, copy], state)
    statuses = sorted((e.file, e.status) for e in incremental.exports)
    assert [status for file, status in statuses if file.endswith("elsewhere/" + first.name)] == ["duplicate"]
    assert _same(incremental) == _same(full)
    again = _audit(world, auditor_key, [first, second, copy], state)  # held by the state now: listed once
    assert sorted((e.file, e.status) for e in again.exports) == statuses


def test_a_new_export_that_rewrites_the_audited_log_is_flagged_as_in_a_full_audit(
    forge: Forge, world: World, auditor_key: TokenKey, tmp_path: Path
) -> None:
    evidence, state = tmp_path / "evidence", tmp_path / "state"
    forge.provision(6)
    first = forge.export(evidence)
    for position in (2, 4):  # an insider re-signs the log from the start with other devices there
        forge.log[position] = forge.manifest("provisioned", sequence=position, unit=position + 1)
    forge.provision(2)
    rewritten = forge.export(evidence, start=0)  # export 2, a history of its own

    full = _audit(world, auditor_key, [first, rewritten])
    assert "log-forked" in serious(full)
    _audit(world, auditor_key, [first], state)
    incremental = _audit(world, auditor_key, [rewritten], state)
    assert _same(incremental) == _same(full)


def _exports(forge: Forge, folder: Path, *units: int) -> list[Path]:
    """One export after each batch of ``units`` provisioned devices."""
    exports = []
    for count in units:
        forge.provision(count)
        exports.append(forge.export(folder))
    return exports


def test_an_export_that_forks_an_audited_one_or_comes_before_it_is_refused(
    forge: Forge, world: World, auditor_key: TokenKey, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first, second, third = _exports(forge, tmp_path / "evidence", 3, 2, 1)
    _audit(world, auditor_key, [first, third], state)  # export 2 not received yet: a gap
    forge.log[1] = forge.manifest("provisioned", sequence=1, unit=2)
    other = forge.export(tmp_path / "other", sequence=1, start=0, size=3, record_export=False)
    with pytest.raises(InputError, match="claims export 1 of station-1, which the audit state holds"):
        _audit(world, auditor_key, [other], state)
    with pytest.raises(InputError, match="is export 2 of station-1, earlier than export 3 the audit state"):
        _audit(world, auditor_key, [second], state)
    # a full audit reports the same file as a fork
    assert "log-forked" in serious(_audit(world, auditor_key, [first, second, third, other]))


def test_a_state_edited_swapped_or_made_for_other_inputs_is_refused(
    forge: Forge, world: World, auditor_key: TokenKey, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first, second = _exports(forge, tmp_path / "evidence", 3, 1)
    _audit(world, auditor_key, [first], state)
    generation = state / (state / "current").read_text().strip()
    blob = generation / "state.pickle"
    original = blob.read_bytes()

    # another auditor's key (or anyone without the token's) cannot make or read a state that passes
    stranger = SoftwareDecapsulator(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(InputError, match="not authentic for this auditor's token"):
        theirs = StateFolder(state, stranger)
        theirs.load(theirs.stage())
    theirs.release()

    blob.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # one bit changed
    with pytest.raises(InputError, match="not authentic for this auditor's token"):
        _audit(world, auditor_key, [second], state)
    blob.write_bytes(original)

    for name in ("audit-index.sqlite", "audit-index-base.sqlite"):  # either file of the identity index changed
        (generation / name).chmod(0o600)  # the base is made read-only
        with (generation / name).open("ab") as index:
            index.write(b"\0")
        with pytest.raises(InputError, match="not authentic"):
            _audit(world, auditor_key, [second], state)
        with (generation / name).open("r+b") as index:
            index.truncate(index.seek(0, 2) - 1)
    (generation / "audit-index-base.sqlite").rename(tmp_path / "base")  # or gone
    with pytest.raises(InputError, match="incomplete: No such file"):
        _audit(world, auditor_key, [second], state)
    (tmp_path / "base").rename(generation / "audit-index-base.sqlite")

    (generation / "format").unlink()  # a state of this format without the file: the MAC decides (it holds)
    ours = StateFolder(state, auditor_key)
    try:
        assert ours.load(ours.stage()) is not None
    finally:
        ours.release()
    (generation / "audit-index-base.sqlite").rename(tmp_path / "base")  # as vault-audit-state/v1 left it
    with pytest.raises(InputError, match=r"made by another version of vault \('vault-audit-state/v1'"):
        _audit(world, auditor_key, [second], state)
    (tmp_path / "base").rename(generation / "audit-index-base.sqlite")
    (generation / "format").write_text("vault-audit-state/v2\n")  # v2 kept the index in one file
    with pytest.raises(InputError, match=r"made by another version of vault \('vault-audit-state/v2'"):
        _audit(world, auditor_key, [second], state)
    (generation / "format").write_text("vault-audiu-state/v3\n")  # edited, not an older vault's: the MAC decides
    ours = StateFolder(state, auditor_key)
    try:
        assert ours.load(ours.stage()) is not None  # the format file only names an older vault; it guards nothing
    finally:
        ours.release()
    (generation / "format").write_text("vault-audit-state/v3\n")

    with pytest.raises(InputError, match="other thresholds"):
        _audit(world, auditor_key, [second], state, thresholds=Thresholds(max_reworks=9))
    report = _audit(world, auditor_key, [second], state)  # intact again: it carries on
    assert report.manifests == 4


def test_a_base_others_could_write_after_it_is_hashed_is_refused_and_the_same_command_then_runs(
    forge: Forge, world: World, auditor_key: TokenKey, tmp_path: Path
) -> None:
    """The index's base is linked from one generation to the next, not copied: a file planted in its place
    (a link, another user's file, one others may write, a pipe) could be written after it is hashed, so it
    is refused, with one line and without waiting on a pipe; the base a run makes is read-only."""
    state = tmp_path / "state"
    first, second = _exports(forge, tmp_path / "evidence", 3, 1)
    _audit(world, auditor_key, [first], state)
    base = state / "gen-1" / "audit-index-base.sqlite"
    assert base.stat().st_mode & 0o777 == 0o400
    kept = tmp_path / "kept-base"
    base.rename(kept)

    base.symlink_to(kept)  # the same bytes, through a link
    with pytest.raises(InputError, match="something other than a file only this user can write"):
        _audit(world, auditor_key, [second], state)
    base.unlink()
    shutil.copyfile(kept, base)
    base.chmod(0o664)  # the same bytes, writable by the group
    with pytest.raises(InputError, match="something other than a file only this user can write"):
        _audit(world, auditor_key, [second], state)
    base.unlink()
    os.mkfifo(base)  # a pipe: hashing it would wait forever
    with pytest.raises(InputError, match="something other than a file only this user can write"):
        _audit(world, auditor_key, [second], state)
    base.unlink()
    os.mkfifo(state / "gen-1" / "audit-index.sqlite.new")
    (state / "gen-1" / "audit-index.sqlite").rename(tmp_path / "small")
    (state / "gen-1" / "audit-index.sqlite.new").rename(state / "gen-1" / "audit-index.sqlite")
    kept.rename(base)
    with pytest.raises(InputError, match="something other than a file only this user can write"):
        _audit(world, auditor_key, [second], state)
    (tmp_path / "small").replace(state / "gen-1" / "audit-index.sqlite")

    report = _audit(world, auditor_key, [second], state)  # the state as the first run left it: it carries on
    assert report.manifests == 4


def test_the_command_line_keeps_the_state_and_refuses_an_edited_one_in_one_line(
    forge: Forge, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evidence, state = tmp_path / "evidence", tmp_path / "state"
    forge.provision(3)
    forge.export(evidence)
    argv = ["audit", str(evidence), "--root-cert", str(world.root_cert_path), "--policy", str(world.policy_path),
            "--bundle", str(world.bundle_path), "--token", format_uri(world.tokens["auditor"]), "--workers", "1",
            "--state", str(state)]  # fmt: skip
    first = CliRunner().invoke(cli, argv, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    forge.provision(2)
    forge.export(evidence)
    second = CliRunner().invoke(cli, argv, catch_exceptions=False)
    assert second.exit_code == 0 and "audited     2 export(s)" in second.output and "5 manifests" in second.output
    blob = state / (state / "current").read_text().strip() / "state.pickle"
    blob.write_bytes(blob.read_bytes().replace(b"station-1", b"station-9", 1))
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not authentic for this auditor's token" in err, err


def test_a_state_folder_whose_parent_is_missing_is_a_typo_refused_in_one_line(
    forge: Forge, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first run makes the state folder, never its parents: a mistyped parent would start a new state."""
    evidence, typo = tmp_path / "evidence", tmp_path / "audti" / "state"
    forge.provision(1)
    forge.export(evidence)
    with pytest.raises(SystemExit) as exited:
        main(["audit", str(evidence), "--root-cert", str(world.root_cert_path), "--policy", str(world.policy_path),
              "--bundle", str(world.bundle_path), "--token", format_uri(world.tokens["auditor"]), "--workers", "1",
              "--state", str(typo)])  # fmt: skip
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"no folder {typo.parent} for the audit state" in err, err
    assert not typo.parent.exists()


def test_one_audit_at_a_time_uses_a_state_and_a_stopped_run_s_staging_goes(
    forge: Forge, world: World, auditor_key: TokenKey, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first, second = _exports(forge, tmp_path / "evidence", 2, 1)
    _audit(world, auditor_key, [first], state)
    stopped = state / ".staging-stopped"  # what a run killed halfway leaves
    stopped.mkdir()
    (state / "gen-0").mkdir()  # a generation a run stopped before removing, once it had switched `current`
    (stopped / "audit-index.sqlite").write_bytes(b"half")
    holder = StateFolder(state, auditor_key)
    holder.lock()
    try:
        with pytest.raises(InputError, match="another audit is using the audit state"):
            _audit(world, auditor_key, [second], state)
    finally:
        holder.release()
    assert _audit(world, auditor_key, [second], state).manifests == 3
    assert not stopped.exists() and sorted(p.name for p in state.iterdir()) == [".lock", "current", "gen-2"]


def test_a_first_run_stopped_before_naming_its_generation_is_completed_by_the_same_command(
    forge: Forge, world: World, auditor_key: TokenKey, tmp_path: Path
) -> None:
    """Its generation is renamed into place, then `current` is written: stopped between the two, the folder
    holds `gen-1` alone, and the same audit again starts the state afresh (a folder of other files is refused)."""
    state = tmp_path / "state"
    first, second = _exports(forge, tmp_path / "evidence", 2, 1)
    _audit(world, auditor_key, [first], state)
    (state / "current").unlink()  # as a first run stopped before its last rename leaves the folder
    assert _audit(world, auditor_key, [first], state).manifests == 2
    assert sorted(p.name for p in state.iterdir()) == [".lock", "current", "gen-1"]
    assert _audit(world, auditor_key, [second], state).manifests == 3
    (state / "current").unlink()
    (state / "gen-2").rename(state / "gen-7")  # not what a stopped first run leaves
    with pytest.raises(InputError, match="holds files but no audit state"):
        _audit(world, auditor_key, [first, second], state)


def test_each_question_asked_of_the_new_rows_only_gives_the_full_audit_s_findings(
    forge: Forge, world: World, station_keys: dict[str, tuple[TokenKey, TokenKey]], auditor_key: TokenKey,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Every finding of a question the incremental audit asks only about the touched groups, each with its
    other half in an export the state already audited."""
    limits = Thresholds(min_cycle=30, max_reworks=1)  # more than 3 units a minute; more than 1 rework
    evidence, state = tmp_path / "evidence", tmp_path / "state"
    two = other_station(world, station_keys, forge)
    # export 1 of station-1: the first halves
    twin = forge.provision(1)[0]
    reworked = forge.device()
    forge.add("rework", reworked, unit=forge.add("provisioned", reworked).manifest.unit)  # 1: at the limit
    serial = forge.add("provisioned").manifest.serial
    scrapped = forge.device()
    forge.add("scrap", scrapped, unit=forge.add("failed", scrapped, failed_step="verify").manifest.unit)
    failing = forge.device()
    forge.add("failed", failing, failed_step="program", lots={"mcu": "L1"})
    owner = forge.add("provisioned").manifest
    replayed = forge.add("provisioned", lots={"mcu": "L1"})
    hole = forge.units + 1
    forge.add("provisioned", unit=hole + 1)  # unit `hole` left out: filled by export 2
    forge.units = hole + 1
    mallory = forge.time + datetime.timedelta(minutes=1)
    for i in range(5):  # 20 minutes at station-1
        forge.add("provisioned", when=mallory + datetime.timedelta(minutes=4 * i), operator="mallory")
    burst = forge.time + datetime.timedelta(minutes=5)
    for i in range(2):  # two units in 20 s: half a burst
        forge.add("provisioned", when=burst + datetime.timedelta(seconds=10 * i))
    first = forge.export(evidence)
    # export 2 of station-1 and export 1 of station-2: the other halves
    for i in range(2):  # two more in the same minute: 4 > 3
        forge.add("provisioned", when=burst + datetime.timedelta(seconds=30 + 10 * i))
    forge.add("provisioned", forge.device(hardware_id=twin.hardware_id))  # a clone
    forge.add("rework", reworked, unit=hole + 1)  # the second rework: past the limit
    forge.add("provisioned", forge.device(serial))  # one serial on two devices
    forge.add("provisioned", scrapped)  # back after its scrap
    forge.add("retry", failing, unit=forge.add("failed", failing, failed_step="program").manifest.unit)
    forge.add("label-mismatch", forge.device(), label=owner.serial, serial=None, unit=None)
    forge.add("provisioned", unit=hole)
    forge.log.append(replace(replayed, envelope=replayed.envelope))  # the same manifest at a second position
    second = forge.export(evidence)
    for i in range(6):  # at station-2 from 5 minutes in: her stretches overlap by 15 minutes
        two.add("provisioned", when=mallory + datetime.timedelta(minutes=5 + 3 * i), operator="mallory")
    other = two.export(evidence)
    forge.provision(1)
    third = forge.export(evidence)

    full = _audit(world, auditor_key, [first, second, other, third], thresholds=limits)
    expected = {"duplicate-hardware-id", "rework-repeated", "duplicate-serial", "scrap-reprovisioned",
                "label-misbound", "manifest-replayed", "cycle-too-fast", "operator-two-stations"}  # fmt: skip
    assert expected <= full.codes(), full.codes()
    assert "unit-hole" not in full.codes() and any(lot.lot == "L1" for lot in full.lots)
    assert _audit(world, auditor_key, [first], state, thresholds=limits).codes() >= {"unit-hole"}
    _audit(world, auditor_key, [first, second], state, thresholds=limits)
    incremental = _audit(world, auditor_key, [third, other], state, thresholds=limits)
    assert _same(incremental) == _same(full)
