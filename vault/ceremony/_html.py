"""A printable HTML page of a ceremony transcript, with witness signature lines.

Self-contained (no scripts, no network): open it in a browser and print it.
Every digest is shown in hex and as words people can read aloud.
"""

from __future__ import annotations

import html

from vault._words import readable_digest
from vault.ceremony._transcript import Transcript

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#111}
h1{margin-bottom:0} .sub{color:#555;margin-top:.2em}
.rehearsal{background:#b00;color:#fff;font-weight:bold;padding:.6em 1em;font-size:1.3em;text-align:center}
table{border-collapse:collapse;width:100%;margin-top:1em}
td,th{border:1px solid #999;padding:.3em .5em;vertical-align:top}
th{background:#eee;text-align:left} code{font-size:.85em;word-break:break-all} .words{color:#036}
.sig{margin-top:2.5em;display:flex;gap:3em;flex-wrap:wrap} .line{width:18em;border-top:1px solid #000;padding-top:.3em}
@media print{.rehearsal{-webkit-print-color-adjust:exact;print-color-adjust:exact}}
"""


def _digests(mapping: dict[str, str]) -> str:
    rows = []
    for name, digest in mapping.items():
        rows.append(
            f"<div><b>{html.escape(name)}</b><br><code>{digest}</code><br>"
            f"<span class=words>{readable_digest(digest)}</span></div>"
        )
    return "".join(rows) or "&mdash;"


def render_transcript(transcript: Transcript) -> str:
    """The transcript as one printable HTML page."""
    header = transcript.header
    rehearsal = bool(header.get("rehearsal"))
    banner = (
        '<div class="rehearsal">REHEARSAL &mdash; NOT A PRODUCTION CEREMONY &mdash; KEYS ARE NOT TRUSTED</div>'
        if rehearsal
        else ""
    )
    steps = []
    for step in transcript.steps:
        details = ", ".join(f"{html.escape(str(k))}: {html.escape(str(v))[:200]}" for k, v in step.details.items())
        steps.append(
            f"<tr><td>{step.index}</td><td>{html.escape(step.time)}</td><td>{html.escape(step.actor)}</td>"
            f"<td>{html.escape(step.action)}</td><td>{_digests(dict(step.inputs))}</td>"
            f"<td>{_digests(dict(step.outputs))}</td><td>{details}</td></tr>"
        )
    people = [f"{o['name']} ({o['id']}), officer" for o in header.get("officers", [])]
    people += [f"{w}, witness" for w in header.get("witnesses", [])]
    lines = "".join(f'<div class="line">{html.escape(p)}<br>signature, date</div>' for p in people)
    head = transcript.head
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(str(header.get("name", "ceremony")))}</title>
<style>{_STYLE}</style></head><body>
{banner}
<h1>{html.escape(str(header.get("name", "")))}</h1>
<p class="sub">{html.escape(str(header.get("type", "")))} ceremony, {html.escape(str(header.get("organization", "")))},
started {html.escape(str(header.get("started", "")))}; {header.get("threshold", "?")} of
{len(header.get("officers", []))} officers needed.</p>
<p>Script SHA-256 <code>{html.escape(str(header.get("script_sha256", "")))}</code><br>
Transcript head <code>{head}</code><br><span class="words">{readable_digest(head)}</span></p>
<table><tr><th>#</th><th>time (UTC)</th><th>actor</th><th>step</th><th>inputs</th><th>outputs</th><th>details</th></tr>
{"".join(steps)}</table>
{banner}
<h2>Witnessed by</h2>
<p>By signing, each person confirms that the steps above happened as recorded and that the transcript
head read aloud matched the words printed here.</p>
<div class="sig">{lines}</div>
</body></html>
"""
