"""A rewritten history names the entries that disappeared, not only the export that shows it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.audit.conftest import Entry, Forge, Report, serious
from vault.audit import Finding

Audit = Callable[..., Report]


def _one(report: Report, code: str) -> Finding:
    (finding,) = [f for f in report.findings if f.code == code]
    return finding


def _named(finding: Finding) -> set[tuple[int | None, str | None, str | None, str | None]]:
    """The entries a finding names (the export itself, with no manifest, left out)."""
    return {(e.position, e.manifest_id, e.hardware_id, e.serial) for e in finding.evidence if e.manifest_id}


def _as(entry: Entry, position: int) -> tuple[int, str, str, str | None]:
    m = entry.manifest
    return position, m.id, m.hardware_id, m.serial


def test_an_export_that_rewrites_exported_entries_names_each_one_gone(
    forge: Forge, tmp_path: Path, run_audit: Audit
) -> None:
    forge.provision(6)
    first = forge.export(tmp_path / "evidence")
    honest = list(forge.log)
    # an insider re-signs the log from the start: unit 3 (position 2) and unit 5 (position 4) now show other devices
    for position in (2, 4):
        forge.log[position] = forge.manifest("provisioned", sequence=position, unit=position + 1)
    forge.provision(2)
    rewritten = forge.export(tmp_path / "evidence", start=0)  # no previous checkpoint: a history of its own
    report = run_audit([first, rewritten])
    forked = _one(report, "log-forked")
    assert _named(forked) == {_as(honest[2], 2), _as(honest[4], 4)}
    assert forked.count == 2 and "2 entries verified in earlier exports" in forked.message
    assert forked.evidence[0].export == str(rewritten.absolute()) and forked.evidence[0].manifest_id is None
    assert {e.export for e in forked.evidence[1:]} == {str(first.absolute())}
    assert set(forked.hardware_ids) == {honest[2].manifest.hardware_id, honest[4].manifest.hardware_id}


def test_its_clean_twin_gives_nothing(forge: Forge, tmp_path: Path, run_audit: Audit) -> None:
    forge.provision(6)
    first = forge.export(tmp_path / "evidence")
    forge.provision(2)
    report = run_audit([first, forge.export(tmp_path / "evidence")])
    assert serious(report) == set(), [f.message for f in report.findings]


def test_a_later_export_not_proven_to_extend_names_what_its_proof_shows_changed(
    forge: Forge, tmp_path: Path, run_audit: Audit
) -> None:
    forge.provision(7)  # 4 + 2 + 1 entries: the proof restates each of those subtrees
    first = forge.export(tmp_path / "evidence")
    honest = forge.log[6]
    forge.log[6] = forge.manifest("provisioned", sequence=6, unit=7)  # the last exported unit, rewritten
    forge.provision(2)
    second = forge.export(tmp_path / "evidence")  # from the genuine checkpoint, with a proof over the new log
    report = run_audit([first, second])
    proof = _one(report, "consistency-proof-invalid")
    assert _named(proof) == {_as(honest, 6)} and proof.count == 1
    assert "1 entry verified in earlier exports" in proof.message
    assert f"first at position 6, serial {honest.manifest.serial}" in proof.message


def test_a_previous_checkpoint_of_another_history_names_what_it_changed(
    forge: Forge, tmp_path: Path, run_audit: Audit
) -> None:
    forge.provision(7)
    first = forge.export(tmp_path / "evidence")
    honest = forge.log[5]
    forge.log[5] = forge.manifest("provisioned", sequence=5, unit=6)
    forge.exports.pop()  # the insider's station exports as if the rewritten log were the one exported
    forge.export(tmp_path / "unsent")
    forge.provision(2)
    second = forge.export(tmp_path / "evidence", sequence=2)
    report = run_audit([first, second])
    forked = _one(report, "log-forked")
    # the proof binds the rewritten subtree [4, 6): both its entries are named, the changed one among them
    assert _as(honest, 5) in _named(forked) and {e.position for e in forked.evidence if e.manifest_id} == {4, 5}
