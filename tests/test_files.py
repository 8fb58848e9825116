"""Bounded reads: ``read_capped`` reads at most its cap plus one byte, from any kind of file, and never waits."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from vault._files import ends_with, read_capped, size_text, write_folder
from vault.container import BundleReader
from vault.errors import FormatError, InputError
from vault.evidence import EvidenceReader


def test_a_file_within_its_cap_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_bytes(b"x" * 100)
    assert read_capped(path, 100, "trust policy") == b"x" * 100


def test_a_regular_file_over_its_cap_is_refused_from_its_size(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    with path.open("wb") as f:
        f.truncate(1024**3)  # sparse: no disk, and never read
    with pytest.raises(FormatError, match=r"policy.json: trust policy is larger than the 4 MiB limit \(1073741824"):
        read_capped(path, 4 * 1024 * 1024, "trust policy")


def test_dev_zero_is_refused_after_cap_plus_one_bytes() -> None:
    with pytest.raises(FormatError, match="/dev/zero: transcript is larger than the 1 KiB limit"):
        read_capped("/dev/zero", 1024, "transcript")


def test_dev_null_reads_as_empty() -> None:
    assert read_capped("/dev/null", 10, "transcript") == b""


def test_a_fifo_nobody_writes_to_reads_empty_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result: list[bytes] = []
    reader = threading.Thread(target=lambda: result.append(read_capped(fifo, 10, "trust policy")), daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "read_capped waited for a writer"
    assert result == [b""]


def test_a_pipe_is_read_to_its_end_and_an_endless_one_is_cut_at_the_cap(tmp_path: Path) -> None:
    read, write = os.pipe()
    os.write(write, b"hello")
    os.close(write)
    assert read_capped(f"/proc/self/fd/{read}", 10, "trust policy") == b"hello"
    os.close(read)

    read, write = os.pipe()
    stop = threading.Event()

    def endless() -> None:
        try:
            while not stop.is_set():
                os.write(write, b"z" * 4096)
        except OSError:
            pass  # the reader closed its end

    writer = threading.Thread(target=endless, daemon=True)
    writer.start()
    try:
        with pytest.raises(FormatError, match="larger than the 64 KiB limit"):
            read_capped(f"/proc/self/fd/{read}", 64 * 1024, "trust policy")
    finally:
        stop.set()
        os.close(read)
        writer.join(10)
        os.close(write)


def test_a_folder_or_a_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a folder, not a file"):
        read_capped(tmp_path, 10, "trust policy")
    with pytest.raises(InputError, match="cannot read trust policy .*missing.json: No such file or directory"):
        read_capped(tmp_path / "missing.json", 10, "trust policy")


def test_bundle_and_evidence_readers_refuse_devices_and_never_wait_on_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for reader in (BundleReader, EvidenceReader):
        for path in (Path("/dev/zero"), fifo):
            outcome: list[BaseException] = []

            def attempt(reader: type = reader, path: Path = path, outcome: list[BaseException] = outcome) -> None:
                try:
                    reader(path)
                except BaseException as e:  # handed to the test thread
                    outcome.append(e)

            thread = threading.Thread(target=attempt, daemon=True)
            thread.start()
            thread.join(10)
            assert not thread.is_alive(), f"{reader.__name__} waited on {path}"
            assert len(outcome) == 1 and isinstance(outcome[0], InputError), outcome
            assert "is not a regular file" in str(outcome[0])


def test_ends_with_reads_only_the_tail(tmp_path: Path) -> None:
    path = tmp_path / "log.abandoned"
    path.write_bytes(b"first\nsecond\n")
    assert ends_with(path, b"second\n")
    assert not ends_with(path, b"first\n")
    assert not ends_with(path, b"x" * 100)
    assert not ends_with("/dev/zero", b"\0")


@pytest.mark.parametrize(
    ("size", "text"), [(4 * 1024 * 1024, "4 MiB"), (256 * 1024, "256 KiB"), (1000, "1000 bytes"), (1024**3, "1 GiB")]
)
def test_size_text(size: int, text: str) -> None:
    assert size_text(size) == text


def test_a_folder_another_writer_finished_meanwhile_is_kept_and_the_second_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    target = tmp_path / "registry"
    real = tempfile.mkdtemp

    def other_writer_finishes(*args: object, **kwargs: object) -> str:  # while this one writes its files
        work = real(*args, **kwargs)  # type: ignore[call-overload]
        target.mkdir()
        (target / "allowed-devices.json").write_text("the first export")
        return work

    monkeypatch.setattr(tempfile, "mkdtemp", other_writer_finishes)
    with pytest.raises(InputError, match="registry exists; vault does not write over files"):
        write_folder(target, {"allowed-devices.json": b"the second export"})
    assert (target / "allowed-devices.json").read_text() == "the first export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["registry"]  # no hidden half-written folder left
