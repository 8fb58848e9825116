"""The ESP-IDF partition table, read from flash: where a release's ``partition:`` target is.

The table is a run of 32-byte entries (magic ``AA 50``, type, subtype,
offset, size, a 16-byte label, flags), optionally followed by an MD5 entry
(magic ``EB EB``) and ended by erased flash (``FF``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vault.errors import DeviceError

__all__ = ["TABLE_SIZE", "Partition", "find_partition", "parse_partition_table"]

TABLE_SIZE = 0xC00
_ENTRY = struct.Struct("<2sBBII16sI")


@dataclass(frozen=True)
class Partition:
    """One partition: its label, where it starts and how large it is."""

    label: str
    offset: int
    size: int


def parse_partition_table(data: bytes) -> list[Partition]:
    """Every partition in ``data`` (the table as read from flash).

    Raises:
        DeviceError: the flash holds no partition table, or a malformed one.
    """
    partitions = []
    for start in range(0, len(data) - _ENTRY.size + 1, _ENTRY.size):
        magic, _type, _subtype, offset, size, label, _flags = _ENTRY.unpack_from(data, start)
        if magic == b"\xaa\x50":
            name = label.rstrip(b"\x00").decode("ascii", "replace")
            partitions.append(Partition(name, offset, size))
        elif magic in (b"\xeb\xeb", b"\xff\xff"):
            break
        else:
            raise DeviceError(f"the partition table is malformed at entry {start // _ENTRY.size}")
    if not partitions:
        raise DeviceError("the flash holds no partition table (program the release's partition table first)")
    return partitions


def find_partition(data: bytes, label: str) -> Partition:
    """The partition called ``label``.

    Raises:
        DeviceError: no table, or no partition of that name (the names found are listed).
    """
    partitions = parse_partition_table(data)
    for partition in partitions:
        if partition.label == label:
            return partition
    names = ", ".join(p.label for p in partitions)
    raise DeviceError(f"the partition table has no partition '{label}' ({names})")
