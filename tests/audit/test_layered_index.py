"""A kept index in two files (its base only read, the rows added since in a small file): each question an
incremental run asks reaches the base's rows through its indexes, never by reading the base whole."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import vault.audit._index
from vault.audit._index import _LOOK_UP, _TOUCHED, _TOUCHED_COLUMNS, Index


def _row(n: int) -> tuple[object, ...]:
    # position, manifest id, event, hardware id, serial, device key id, has unit, in bundle, unit, failed step,
    # week, time, fixture, operator
    return (n, f"m{n}", "provisioned", f"h{n}", f"s{n}", f"k{n}", 1, 1, n, None, None, 1000 + n, 1, "op")


@pytest.fixture
def layered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Index:
    first = Index(tmp_path)
    first.add(1, 1, [_row(n) for n in range(3000)])
    first.finish_loading(kept=True)
    first.keep()
    monkeypatch.setattr(vault.audit._index, "MERGE_SHARE", 1e9)  # the added rows stay apart however few the base's
    index = Index(tmp_path, existing=True)
    assert index.layered and index.base.exists()
    index.add(1, 2, [_row(n) for n in range(3000, 3100)])
    index.finish_loading(kept=True)
    return index


def _plan(db: sqlite3.Connection, sql: str, params: object = ()) -> list[str]:
    return [str(step[3]) for step in db.execute(f"EXPLAIN QUERY PLAN {sql}", params)]  # type: ignore[arg-type]


def _searches(plan: list[str]) -> int:
    """How many steps reach a table of the index through one of its indexes (one per file, when both are)."""
    return sum(step.startswith("SEARCH") and "INDEX entries_by" in step for step in plan)


def _reads_whole(plan: list[str]) -> list[str]:
    """The steps that read a table of the index (not a temporary one) from end to end."""
    return [step for step in plan if step.startswith("SCAN") and ("entries" in step or "lots" in step)]


def test_the_touched_groups_and_their_rows_are_looked_up_through_the_indexes_of_both_files(
    layered: Index, tmp_path: Path
) -> None:
    db = layered._db
    values = {"last": layered._last["entries"], "last_label": layered._last["labels"], "first": 2}
    for group, sql in _TOUCHED.items():
        db.execute("ATTACH DATABASE ? AS looked", (str(tmp_path / f"{group}.sqlite"),))
        columns = _TOUCHED_COLUMNS.get(group, "value")
        db.execute(f"CREATE TABLE looked.touched ({columns}, PRIMARY KEY ({columns})) WITHOUT ROWID")
        both = layered._both(sql)
        assert not _reads_whole(_plan(db, both, values)), (group, _plan(db, both, values))
        db.execute(f"INSERT OR IGNORE INTO looked.touched {both}", values)
        if group == "hardware_id":
            assert db.execute("SELECT COUNT(*) FROM looked.touched").fetchone()[0] == 100  # this run's rows only
        plan = _plan(db, layered._both(_LOOK_UP[group]))
        assert _searches(plan) == 2 and not _reads_whole(plan), (group, plan)
        if group == "device":
            rows = db.execute(layered._both(_LOOK_UP["device"])).fetchall()
            assert sorted(r[2] for r in rows) == list(range(3000, 3100))  # their positions
        db.execute("DETACH DATABASE looked")


def test_an_incremental_run_leaves_no_file_of_its_questions_beside_the_index(layered: Index) -> None:
    answers = {name: [] for name in (*vault.audit._index.KEPT,)}
    layered.grouped_since(2, {"answers": answers, "tallies": {name: {} for name in vault.audit._index.TALLIES}},
                          limit=10, params={"max_reworks": 1, "per_minute": 60, "window": 600})  # fmt: skip
    assert sorted(p.name for p in layered.path.parent.iterdir()) == ["audit-index-base.sqlite", "audit-index.sqlite"]


def test_the_rows_behind_findings_come_from_both_files_through_their_indexes(layered: Index) -> None:
    traced: list[str] = []
    layered._db.set_trace_callback(traced.append)
    by_serial = layered.rows_for("serial", ["s5", "s3050"], 5)
    by_unit = layered.rows_for_units([(1, 1, 5), (1, 1, 3050)], 5)
    named = layered.unit_rows(["s5", "s3050"], 5)
    layered._db.set_trace_callback(None)
    assert by_serial == {"s5": [(1, 1, 5, "m5", "provisioned", "h5", "s5")],
                         "s3050": [(1, 2, 3050, "m3050", "provisioned", "h3050", "s3050")]}  # fmt: skip
    assert [rows for rows in by_unit.values()] == [by_serial["s5"], by_serial["s3050"]]
    assert {serial: count for serial, (count, _) in named.items()} == {"s5": 1, "s3050": 1}
    questions = [sql for sql in traced if sql.startswith("SELECT")]
    assert len(questions) == 3
    for sql in questions:
        plan = _plan(layered._db, sql)
        assert _searches(plan) == 2 and not _reads_whole(plan), plan


def test_a_layered_index_grown_past_its_share_is_merged_into_one_file(
    layered: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    layered.keep()
    monkeypatch.setattr(vault.audit._index, "MERGE_SHARE", 1 / 8)  # 100 rows beside 3,000: under it
    again = Index(layered.path.parent, existing=True)
    assert again.layered
    again.keep()
    monkeypatch.setattr(vault.audit._index, "MERGE_SHARE", 0.0)
    merged = Index(layered.path.parent, existing=True)
    assert not merged.layered and not merged.base.exists()
    assert merged._db.execute("SELECT COUNT(*), COUNT(DISTINCT hardware_id) FROM entries").fetchone() == (3100, 3100)
    merged.add(1, 3, [_row(3100)])
    merged.finish_loading(kept=True)
    merged.keep()  # one file again: it becomes the next base, and the operators' stretches move on
    assert merged.layered is False and merged.base.exists()
    with sqlite3.connect(merged.base) as base:
        assert base.execute("SELECT COUNT(*) FROM entries").fetchone() == (3101,)
