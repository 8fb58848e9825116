"""Finding device adapters by name: the ``vault.devices`` entry points, loaded lazily.

A vendor or a factory ships an adapter as its own package, declaring (in its
``pyproject.toml``)::

    [project.entry-points."vault.devices"]
    acme-jtag = "acme_vault:make_fixture"

and ``adapter: acme-jtag`` in a station configuration finds it. vault's own
adapters (``simulated``, ``command``) are found without package metadata
too, so the station library works from a source checkout. Two installed
packages claiming one name are refused rather than one picked silently.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import EntryPoint, entry_points
from typing import cast

from vault.errors import AdapterError
from vault.verify.devices._protocol import Adapter

__all__ = ["ENTRY_POINT_GROUP", "installed_adapters", "load_adapter"]

ENTRY_POINT_GROUP = "vault.devices"

_BUILTIN = {
    "simulated": "vault.verify.devices._simulated:simulated_adapter",
    "command": "vault.verify.devices._command:command_adapter",
    "esp32": "vault.verify.devices.esp32:esp32_adapter",
}


def _entry_points() -> dict[str, list[EntryPoint]]:
    found: dict[str, list[EntryPoint]] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.value not in {p.value for p in found.get(point.name, [])}:  # one package seen twice on the path
            found.setdefault(point.name, []).append(point)
    return found


def installed_adapters() -> list[str]:
    """The names of every adapter this Python can load, sorted."""
    return sorted(set(_BUILTIN) | set(_entry_points()))


def load_adapter(name: str) -> Adapter:
    """Import the adapter ``name`` (only now: its dependencies are imported by it alone).

    Raises:
        AdapterError: no adapter has that name (the message lists those
            installed), two packages claim it, or it fails to import.
    """
    points = _entry_points().get(name, [])
    if len(points) > 1:
        raise AdapterError(
            f"two installed packages provide device adapter '{name}' ({', '.join(p.value for p in points)}); "
            "uninstall one"
        )
    target = points[0].value if points else _BUILTIN.get(name)
    if target is None:
        installed = installed_adapters()
        close = difflib.get_close_matches(name, installed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise AdapterError(f"no device adapter '{name}' is installed{hint}; installed: {', '.join(installed)}")
    module_name, _, attribute = target.partition(":")
    try:
        loaded: object = importlib.import_module(module_name)
        for part in attribute.split("."):
            loaded = getattr(loaded, part)
    except ImportError as e:
        raise AdapterError(f"device adapter '{name}' cannot be imported ({target}): {e}") from e
    except AttributeError as e:
        raise AdapterError(f"device adapter '{name}' names {target}, which does not exist") from e
    if not callable(loaded):
        raise AdapterError(f"device adapter '{name}' names {target}, which is not callable")
    return cast(Adapter, loaded)
