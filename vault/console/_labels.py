"""Unit labels: a QR code with the unit's bound identity, written as PNG and ZPL, or sent to a printer command.

The label's content is a template over the fields of :data:`LABEL_FIELDS`,
filled from what the station bound to the device (its serial comes from the
device's identity in the station log, never from a typed value). An unknown
field is refused when the station configuration is read. segno draws the QR
code (imported only when a label is made); the ZPL is written for thermal
label printers (Zebra and compatibles), with the QR code drawn by the
printer itself (``^BQN``) and every text field hex-escaped (``^FH``).

Example::

    from vault.console import LabelSpec, LabelData, make_label

    spec = LabelSpec(content="{serial}|{hwid_sha256}|{date}", output=Path("labels"))
    data = LabelData.of(serial="SN-1", hardware_id="a1b2", product="fw", version="1.0", station="station-1",
                        when=datetime.datetime.now(datetime.UTC))
    printed = make_label(spec, data)
    print(printed.png, printed.zpl)
"""

from __future__ import annotations

import datetime
import hashlib
import io
import re
import string
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vault._files import write_new
from vault.errors import InputError, LabelError

__all__ = ["DEFAULT_CONTENT", "LABEL_FIELDS", "LabelData", "LabelSpec", "PrintedLabel",
           "check_template", "make_label"]  # fmt: skip

LABEL_FIELDS = {
    "serial": "the serial bound to the device (its identity in the station log)",
    "hardware_id": "the device's hardware id (hex)",
    "hwid_sha256": "the SHA-256 of the hardware id (hex), as the unit's manifest names its subject",
    "hwid_short": "the first 16 hex digits of that digest",
    "date": "the provisioning date (YYYY-MM-DD, UTC)",
    "time": "the provisioning time (YYYY-MM-DDTHH:MM:SSZ)",
    "product": "the release's product",
    "version": "the release's version",
    "station": "the station's id",
}
"""The fields a label template may name, and what each holds."""

DEFAULT_CONTENT = "{serial}|{hwid_sha256}|{date}"
"""The QR code's content unless the station configuration says otherwise."""

_MAX_CONTENT = 1024  # a QR code of error correction M holds about 2300 bytes; labels are small
_PRINTER_TIMEOUT = 60


def check_template(template: str) -> None:
    """Refuse a label template that names a field not in :data:`LABEL_FIELDS` or is not a plain template.

    Raises:
        InputError: the first unknown field (with the closest known one), or a malformed template.
    """
    import difflib

    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise InputError(f"the label template is malformed: {e}") from e
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in LABEL_FIELDS:
            close = difflib.get_close_matches(name, list(LABEL_FIELDS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise InputError(
                f"the label template has no field '{name}'{hint}; the fields are {', '.join(LABEL_FIELDS)}"
            )
        if spec or conversion:
            raise InputError(f"the label template's field '{name}' takes no format or conversion")
    if not template.strip():
        raise InputError("the label template is empty")


@dataclass(frozen=True)
class LabelSpec:
    """How this station makes labels: the QR content template, where files go, and the printer command.

    ``printer`` is a command (no shell) run once per label, in which ``{zpl}``
    and ``{png}`` are replaced by the files' paths; None writes the files only.
    """

    content: str = DEFAULT_CONTENT
    output: Path = Path("labels")
    printer: tuple[str, ...] | None = None


@dataclass(frozen=True)
class LabelData:
    """What a label may show about one unit."""

    fields: dict[str, str]

    @classmethod
    def of(
        cls, *, serial: str, hardware_id: str, product: str, version: str, station: str, when: datetime.datetime
    ) -> LabelData:
        digest = hashlib.sha256(bytes.fromhex(hardware_id)).hexdigest()
        utc = when.astimezone(datetime.UTC)
        return cls(
            {
                "serial": serial,
                "hardware_id": hardware_id,
                "hwid_sha256": digest,
                "hwid_short": digest[:16],
                "date": utc.strftime("%Y-%m-%d"),
                "time": utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "product": product,
                "version": version,
                "station": station,
            }
        )

    def render(self, template: str) -> str:
        check_template(template)
        text = template.format_map(self.fields)
        if len(text.encode()) > _MAX_CONTENT:
            raise LabelError(f"the label's content is {len(text.encode())} bytes; a label holds at most {_MAX_CONTENT}")
        return text


@dataclass(frozen=True)
class PrintedLabel:
    """One label made: its QR content and the files written."""

    content: str
    png: Path
    zpl: Path
    printed: bool  # a printer command ran and succeeded

    def describe(self) -> str:
        how = "printed, " if self.printed else ""
        return f"{how}QR {hashlib.sha256(self.content.encode()).hexdigest()[:16]}: {self.png.name}, {self.zpl.name}"


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def make_label(spec: LabelSpec, data: LabelData) -> PrintedLabel:
    """Write the unit's label as PNG and ZPL in ``spec.output`` and run the printer command, if any.

    A label already written for the serial is kept and a new one gets the
    next number (a reprint never writes over the first).

    Raises:
        LabelError: the QR code cannot be made, a file cannot be written, or the printer command failed.
    """
    import segno

    content = data.render(spec.content)
    serial = data.fields["serial"]
    try:
        qr = segno.make(content, error="m", micro=False)
        png = io.BytesIO()
        qr.save(png, kind="png", scale=8, border=4)
    except (ValueError, segno.DataOverflowError) as e:
        raise LabelError(f"the QR code for {serial} cannot be made: {e}") from e
    try:
        spec.output.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LabelError(f"cannot make the label folder {spec.output}: {e.strerror}") from e
    stem = _SAFE_NAME.sub("_", serial)
    for n in range(1, 1000):
        name = stem if n == 1 else f"{stem}.{n}"
        png_path, zpl_path = spec.output / f"{name}.png", spec.output / f"{name}.zpl"
        if not png_path.exists() and not zpl_path.exists():
            break
    else:
        raise LabelError(f"{spec.output} already holds 999 labels for {serial}")
    try:
        write_new(zpl_path, zpl(content, data).encode("ascii"))
        write_new(png_path, png.getvalue())
    except InputError as e:
        raise LabelError(f"the label for {serial} cannot be written: {e}") from e
    printed = False
    if spec.printer is not None:
        _print(spec.printer, png_path, zpl_path, serial)
        printed = True
    return PrintedLabel(content, png_path, zpl_path, printed)


def zpl(content: str, data: LabelData) -> str:
    """A ZPL II label: the QR code (printer-drawn, error correction M) and the serial and date beside it."""
    return (
        "^XA\n^CI28\n"
        f"^FO30,30^BQN,2,6^FH^FDMA,{_zpl_text(content)}^FS\n"
        f"^FO300,50^A0N,36,36^FH^FD{_zpl_text(data.fields['serial'])}^FS\n"
        f"^FO300,100^A0N,26,26^FH^FD{_zpl_text(data.fields['product'] + ' ' + data.fields['version'])}^FS\n"
        f"^FO300,140^A0N,26,26^FH^FD{_zpl_text(data.fields['date'])}^FS\n"
        "^XZ\n"
    )


def _zpl_text(text: str) -> str:
    """Field data with every byte that ZPL would read as a command (``^``, ``~``, ``_``) or that is not
    plain ASCII hex-escaped for ``^FH`` (``_5E``)."""
    out = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        out.append(ch if 32 <= byte < 127 and ch not in "^~_\\" else f"_{byte:02X}")
    return "".join(out)


def _print(command: tuple[str, ...], png: Path, zpl_file: Path, serial: str) -> None:
    argv = [part.replace("{zpl}", str(zpl_file)).replace("{png}", str(png)) for part in command]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=_PRINTER_TIMEOUT, check=False)
    except FileNotFoundError as e:
        raise LabelError(f"the printer command '{argv[0]}' is not installed") from e
    except subprocess.TimeoutExpired as e:
        raise LabelError(f"the printer command '{argv[0]}' did not finish in {_PRINTER_TIMEOUT} s") from e
    except OSError as e:
        raise LabelError(f"the printer command '{argv[0]}' cannot run: {e.strerror}") from e
    if done.returncode != 0:
        said = (done.stderr or done.stdout).decode("utf-8", "replace").strip().splitlines()
        last = f": {said[-1][:160]}" if said else ""
        raise LabelError(f"the printer command '{argv[0]}' failed for {serial} (exit {done.returncode}){last}")
