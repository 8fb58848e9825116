"""A printable HTML page of a ceremony transcript, with signature lines for everyone present.

Self-contained (no scripts, no network): open it in a browser and print it,
on A4 or US Letter. Every digest is shown in hex and as words people can
read aloud; every detail is shown whole (long hex, SPKI and share-set data
wrap inside their cell, never cut off). Each officer present and each
witness gets a signature line.

The page is laid out for the narrower of the two papers (A4: 210 mm less
the margins): each step is a short row (number, time, actor, step) over a
full-width row with its inputs, outputs and details, so nothing needs a
column wider than the page.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from typing import Any

from vault._words import readable_digest
from vault.ceremony._transcript import Transcript

_STYLE = """
@page{margin:12mm}
*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;font-size:10pt;margin:0 auto;max-width:186mm;color:#111}
h1{margin:0;font-size:16pt} h2{font-size:12pt;margin-top:1.5em} .sub{color:#444;margin-top:.2em}
.rehearsal{background:#b00;color:#fff;font-weight:bold;padding:.5em 1em;font-size:12pt;text-align:center;
 -webkit-print-color-adjust:exact;print-color-adjust:exact}
code{font-family:ui-monospace,monospace;font-size:8pt;overflow-wrap:anywhere;word-break:break-all}
.words{color:#036;overflow-wrap:anywhere}
table{border-collapse:collapse;width:100%;table-layout:fixed;margin-top:1em}
th,td{border:1px solid #999;padding:.25em .4em;vertical-align:top;text-align:left;overflow-wrap:anywhere}
th{background:#eee} col.n{width:2.2em} col.t{width:13em} col.a{width:8em}
tbody{break-inside:avoid;page-break-inside:avoid}
td.more{border-top:none;padding-left:1.2em}
dl{margin:0;display:grid;grid-template-columns:minmax(6em,max-content) minmax(0,1fr);column-gap:.6em;row-gap:.15em}
dt{font-weight:bold;overflow-wrap:anywhere} dd{margin:0;min-width:0;overflow-wrap:anywhere}
.sig{margin-top:1.5em;display:grid;grid-template-columns:repeat(auto-fill,minmax(16em,1fr));gap:2.5em 2em}
.line{border-top:1px solid #000;padding-top:.3em;break-inside:avoid;overflow-wrap:anywhere}
"""


def _digest(digest: str) -> str:
    if len(digest) != 64 or digest.strip("0123456789abcdef"):
        return f"<code>{html.escape(digest)}</code>"
    return f'<code>{html.escape(digest)}</code><br><span class="words">{readable_digest(digest)}</span>'


def _value(value: Any) -> str:
    if isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, sort_keys=True, separators=(", ", ": "))
    # Long unbroken values (hex, base64, JSON) are code, which wraps at any character.
    if len(text) > 24 and " " not in text.strip():
        return f"<code>{html.escape(text)}</code>"
    if isinstance(value, dict | list):
        return f"<code>{html.escape(text)}</code>"
    return html.escape(text)


def _more(inputs: Mapping[str, str], outputs: Mapping[str, str], details: Mapping[str, Any]) -> str:
    rows = [f"<dt>in: {html.escape(name)}</dt><dd>{_digest(d)}</dd>" for name, d in inputs.items()]
    rows += [f"<dt>out: {html.escape(name)}</dt><dd>{_digest(d)}</dd>" for name, d in outputs.items()]
    rows += [f"<dt>{html.escape(str(k))}</dt><dd>{_value(v)}</dd>" for k, v in details.items()]
    return f"<dl>{''.join(rows)}</dl>" if rows else ""


def _people(header: Mapping[str, Any]) -> list[str]:
    """Everyone who signs the printed page: the officers present, then the witnesses."""
    people = []
    officers = header.get("officers")
    if isinstance(officers, list):  # the root ceremony: every officer, by name
        for o in officers:
            if isinstance(o, Mapping):
                people.append(f"{o.get('name', '')} ({o.get('id', '')}), officer")
    else:
        present = header.get("officers_present")  # every later ceremony: the officers present, by id
        people += [f"{officer}, officer" for officer in (present if isinstance(present, list) else [])]
    witnesses = header.get("witnesses")
    people += [f"{w}, witness" for w in (witnesses if isinstance(witnesses, list) else [])]
    return people


def _subtitle(header: Mapping[str, Any]) -> str:
    parts = [f"{header.get('type', '?')} ceremony"]
    if header.get("station"):
        parts[0] += f" for station {header['station']}"
    if header.get("organization"):
        parts.append(str(header["organization"]))
    parts.append(f"started {header.get('started', '?')}")
    threshold = header.get("threshold")
    officers = header.get("officers")
    total = len(officers) if isinstance(officers, list) else header.get("officers_total")
    needed = f"{threshold} of {total} officers needed" if total else f"{threshold} officers needed"
    if isinstance(header.get("policy_version"), int):
        needed += f", under trust policy v{header['policy_version']}"
    return html.escape(", ".join(parts)) + "; " + html.escape(needed if threshold is not None else "")


def render_transcript(transcript: Transcript) -> str:
    """The transcript as one printable HTML page."""
    header = transcript.header
    banner = (
        '<div class="rehearsal">REHEARSAL &mdash; NOT A PRODUCTION CEREMONY &mdash; KEYS ARE NOT TRUSTED</div>'
        if header.get("rehearsal")
        else ""
    )
    steps = []
    for step in transcript.steps:
        more = _more(step.inputs, step.outputs, step.details)
        steps.append(
            f'<tbody class="step"><tr><td>{step.index}</td><td>{html.escape(step.time)}</td>'
            f"<td>{html.escape(step.actor)}</td><td>{html.escape(step.action)}</td></tr>"
            + (f'<tr><td></td><td class="more" colspan="3">{more}</td></tr>' if more else "")
            + "</tbody>"
        )
    lines = "".join(f'<div class="line">{html.escape(p)}<br>signature, date</div>' for p in _people(header))
    name = html.escape(str(header.get("name", "ceremony")))
    head = transcript.head
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{name}</title>
<style>{_STYLE}</style></head><body>
{banner}
<h1>{name}</h1>
<p class="sub">{_subtitle(header)}.</p>
<p>Script SHA-256 {_digest(str(header.get("script_sha256", "")))}<br>
Transcript head {_digest(head)}</p>
<table><colgroup><col class="n"><col class="t"><col class="a"><col></colgroup>
<thead><tr><th>#</th><th>time (UTC)</th><th>actor</th><th>step, then its inputs, outputs and details</th></tr></thead>
{"".join(steps)}</table>
{banner}
<h2>Signed by the officers present and the witnesses</h2>
<p>By signing, each person confirms that the steps above happened as recorded and that the transcript
head read aloud matched the words printed here.</p>
<div class="sig">{lines}</div>
</body></html>
"""
