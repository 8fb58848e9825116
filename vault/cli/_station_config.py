"""The station configuration file: strict YAML naming the station, its token, root, folders and fixtures.

Parsed here, above the station library, with the ceremony scripts'
machinery (:mod:`vault._yaml`): unknown fields are refused with ``file:line``
and "did you mean". Each fixture's ``options`` are the adapter's own; the
adapter checks them (without touching a device) and names a wrong one by
its path, which is turned into its line here. Relative paths, and relative
``file:`` PIN sources in the token URI, are taken from the file's folder.
Templates: ``stations/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vault._files import read_capped
from vault._yaml import (
    Checked,
    Enum,
    Field,
    Free,
    Hex,
    Int,
    Invalid,
    Kind,
    List,
    Located,
    Map,
    Record,
    Str,
    load_yaml,
)  # fmt: skip
from vault.ceremony._script import pin_source_from
from vault.console._labels import DEFAULT_CONTENT, LabelSpec, check_template
from vault.errors import AdapterError, InputError, ScriptError, UriError
from vault.token import Pkcs11Uri, parse_uri
from vault.verify.devices import DEFAULT_TIMEOUTS, check_timeouts, load_adapter
from vault.verify.devices._run import FixtureRun

__all__ = ["FixtureConfig", "StationConfig", "load_station_config"]

MAX_CONFIG = 256 * 1024
_TIMEOUTS = Map(Int(min=1, max=86400), key=Enum(list(DEFAULT_TIMEOUTS)), max_len=len(DEFAULT_TIMEOUTS))


@dataclass(frozen=True)
class _Lined(Kind):
    """A value with the line it starts on, for the checks made after the schema's."""

    inner: Kind

    def load(self, node: Any, path: str) -> tuple[Any, int]:
        return self.inner.load(node, path), int(node.start_mark.line) + 1


_FIXTURE = Record(
    {
        "slot": Field(Int(min=0, max=999)),
        "adapter": Field(Str(pattern=r"[a-z0-9][a-z0-9._-]{0,63}")),
        "options": Field(Free(), required=False),
        "timeouts": Field(_TIMEOUTS, required=False, default={}),
    }
)

_PERSON = Str(pattern=r"[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}")


def _check_template(template: str) -> None:
    try:
        check_template(template)
    except InputError as e:
        raise Invalid(str(e)) from e


def _check_component(component: dict[str, Any]) -> None:
    """A lot pattern that is a regular expression, and a configured lot that matches it."""
    try:
        pattern = re.compile(component["pattern"])
    except re.error as e:
        raise Invalid(f"not a regular expression: {e}", "pattern") from e
    lot = component.get("lot")
    if lot is not None and not pattern.fullmatch(lot):
        raise Invalid(f"lot {lot!r} does not match the pattern {component['pattern']!r}", "lot")


_COMPONENT = Checked(
    Record(
        {
            "pattern": Field(Str(max_len=256)),
            "lot": Field(Str(pattern=r"[ -~]{1,64}"), required=False),
        }
    ),
    _check_component,
)

_SCHEMA = Record(
    {
        "station": Field(Str(pattern=r"[a-z][a-z0-9-]{0,31}")),
        "token": Field(_Lined(Str(max_len=4096))),
        "root": Field(
            _Lined(
                Record(
                    {
                        "certificate": Field(Str(max_len=4096), required=False),
                        "fingerprint": Field(Hex(length=64), required=False),
                    }
                )
            )
        ),
        "state": Field(Str(max_len=4096)),
        "evidence": Field(Str(max_len=4096), required=False),
        "operators": Field(List(_PERSON, min_len=1, max_len=256)),
        "supervisors": Field(List(_PERSON, min_len=1, max_len=64), required=False),
        "export-warning-hours": Field(Int(min=1, max=24 * 90), required=False, default=12),
        "label": Field(
            Record(
                {
                    "source": Field(Enum(["adapter", "none"])),
                    "content": Field(Checked(Str(max_len=512), _check_template), required=False),
                    "output": Field(Str(max_len=4096), required=False),
                    "printer": Field(List(Str(max_len=4096), min_len=1, max_len=64), required=False),
                }
            ),
            required=False,
        ),
        "clock": Field(Record({"source": Field(Enum(["system"]))}), required=False),
        "timeouts": Field(_TIMEOUTS, required=False, default={}),
        "components": Field(Map(_COMPONENT, key=Str(pattern=r"[a-z0-9][a-z0-9_.-]{0,63}"), max_len=32), required=False),
        "fixtures": Field(List(_Lined(_FIXTURE), min_len=1, max_len=64)),
    }
)


@dataclass(frozen=True)
class FixtureConfig:
    """One fixture as configured: its slot, its adapter's name and options, and its step timeouts."""

    slot: int
    adapter: str
    options: Located
    timeouts: dict[str, float]
    index: int
    line: int


@dataclass(frozen=True)
class StationConfig:
    """A station configuration file, checked, with its paths resolved."""

    path: Path
    station_id: str
    token: Pkcs11Uri
    root_cert: Path | None
    root_fingerprint: str | None
    state: Path
    evidence: Path | None
    operators: tuple[str, ...]
    label_source: str
    labels: LabelSpec
    """How the console makes a label for each unit that passes (``label:`` content, output, printer)."""
    clock_source: str
    fixtures: tuple[FixtureConfig, ...]
    supervisors: tuple[str, ...] = ()
    """Who may acknowledge a fixture the console stopped (a label mismatch, a clone, a clock problem)."""
    export_warning_hours: int = 12
    """The console warns when the last evidence export is older than this."""
    components: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    """The components whose lot each unit's manifest records: name -> (lot code pattern, lot configured)."""

    def make_fixtures(self, *, dry_run: bool) -> list[FixtureRun]:
        """Every fixture from its adapter, options checked; no device is touched.

        Raises:
            ScriptError: an adapter is not installed, or refuses its options (``file:line`` of the field).
        """
        runs = []
        for f in self.fixtures:
            where = f"fixtures[{f.index}]"
            try:
                make = load_adapter(f.adapter)
            except AdapterError as e:
                raise ScriptError(f"{self.path}:{f.line}: {where}.adapter: {e}") from e
            try:
                fixture = make(f.options, fixture=f.slot, timeouts=f.timeouts, dry_run=dry_run)
            except AdapterError as e:
                line = f.options.lines.get(e.field, f.options.lines.get("", f.line))
                field = f"{where}.options.{e.field}" if e.field else f"{where}.options"
                raise ScriptError(f"{self.path}:{line}: {field}: {e}") from e
            if self.label_source == "adapter" and not getattr(fixture, "reads_labels", True):
                raise ScriptError(
                    f"{self.path}:{f.line}: {where}: adapter '{f.adapter}' as configured reads no labels, "
                    "but label.source is 'adapter'"
                )
            runs.append(FixtureRun(f.slot, fixture))
        return runs

    def check_operator(self, operator: str | None) -> str:
        """The operator running the station, who must be one the configuration allows."""
        if operator is None:
            if len(self.operators) == 1:
                return self.operators[0]
            allowed = ", ".join(self.operators)
            raise ScriptError(f"{self.path}: operators: name the operator with --operator ({allowed})")
        if operator not in self.operators:
            raise ScriptError(
                f"{self.path}: operators: '{operator}' is not allowed at this station ({', '.join(self.operators)})"
            )
        return operator


def load_station_config(path: Path) -> StationConfig:
    """Parse and check a station configuration (adapters are not loaded yet: see :meth:`make_fixtures`).

    Raises:
        ScriptError: a field is unknown, missing, mistyped or out of range, with its line.
    """
    data = read_capped(path, MAX_CONFIG, "station configuration")
    doc: dict[str, Any] = load_yaml(data, _SCHEMA, source=str(path))
    base = path.resolve().parent
    text, token_line = doc["token"]
    try:
        token = pin_source_from(parse_uri(text), base)
    except UriError as e:
        raise ScriptError(f"{path}:{token_line}: token: {e}") from e
    root, root_line = doc["root"]
    if (root["certificate"] is None) == (root["fingerprint"] is None):
        raise ScriptError(f"{path}:{root_line}: root: give exactly one of 'certificate' and 'fingerprint'")
    label = doc["label"] or {"source": "adapter"}
    fixtures = []
    slots: dict[int, int] = {}
    for i, (f, line) in enumerate(doc["fixtures"]):
        if f["slot"] in slots:
            raise ScriptError(f"{path}:{line}: fixtures[{i}].slot: slot {f['slot']} is fixtures[{slots[f['slot']]}]'s")
        slots[f["slot"]] = i
        options = f["options"] if f["options"] is not None else _empty()
        merged = check_timeouts({**doc["timeouts"], **f["timeouts"]})
        fixtures.append(FixtureConfig(f["slot"], f["adapter"], options, merged, i, line))
    return StationConfig(
        path=path,
        station_id=doc["station"],
        token=token,
        root_cert=None if root["certificate"] is None else base / root["certificate"],
        root_fingerprint=root["fingerprint"],
        state=base / doc["state"],
        evidence=None if doc["evidence"] is None else base / doc["evidence"],
        operators=tuple(doc["operators"]),
        label_source=label["source"],
        labels=LabelSpec(
            content=label.get("content") or DEFAULT_CONTENT,
            output=base / (label.get("output") or "labels"),
            printer=None if not label.get("printer") else tuple(label["printer"]),
        ),
        supervisors=tuple(doc["supervisors"] or ()),
        export_warning_hours=doc["export-warning-hours"],
        clock_source=(doc["clock"] or {"source": "system"})["source"],
        fixtures=tuple(fixtures),
        components={name: (c["pattern"], c.get("lot")) for name, c in (doc["components"] or {}).items()},
    )


def _empty() -> Located:
    empty = Located()
    empty.lines = {}
    return empty
