"""The printable transcript: the subtitle, whole details, and signature lines for everyone present."""

from __future__ import annotations

import html
import re
from pathlib import Path

from tests.ceremony.conftest import POLICIES, Setup
from vault.ceremony import Transcript
from vault.formats import Envelope


def _page(folder: Path) -> tuple[str, Transcript]:
    transcript = Transcript.from_bytes(Envelope.from_json((folder / "transcript.json").read_bytes()).payload)
    return (folder / "transcript.html").read_text(), transcript


def _subtitle(page: str) -> str:
    found = re.search(r'<p class="sub">(.*?)</p>', page, re.DOTALL)
    assert found is not None
    return html.unescape(" ".join(found.group(1).split()))


def _signature_lines(page: str) -> list[str]:
    return [html.unescape(p) for p in re.findall(r'<div class="line">(.*?)<br>signature, date</div>', page)]


def test_every_transcript_has_its_subtitle_details_and_signature_lines(setup: Setup) -> None:
    page, transcript = _page(setup.root)
    started = transcript.header["started"]
    assert _subtitle(page) == f"root ceremony, Example Devices Ltd, started {started}; 2 of 3 officers needed."
    assert _signature_lines(page) == [
        "Alice Martin (officer-1), officer",
        "Bilal Khan (officer-2), officer",
        "Chen Wei (officer-3), officer",
        "Dana Okafor (internal audit), witness",
    ]

    code, _, err = setup.ceremony(POLICIES / "roles.yaml", setup.root / "policy-v1.json", "roles")
    assert code == 0, err
    code, _, err = setup.ceremony(POLICIES / "backup.yaml", setup.tmp / "roles" / "policy-v2.json", "backup")
    assert code == 0, err
    for folder, kind in (("roles", "roles"), ("backup", "backup")):
        page, transcript = _page(setup.tmp / folder)
        started = transcript.header["started"]
        assert _subtitle(page) == (
            f"{kind} ceremony, Example Devices Ltd, started {started}; 2 of 3 officers needed, under trust policy "
            f"v{transcript.header['policy_version']}."
        )
        # the officers present sign (officer-1 brought a paper share, officer-3 a sealed one)
        assert _signature_lines(page) == ["officer-1, officer", "officer-3, officer"]

        # every detail is there whole: key ids, SPKI, the share set record; no value is cut short
        for step in transcript.steps:
            for value in step.details.values():
                shown = value if isinstance(value, str) else None
                if shown is not None:
                    assert html.escape(shown) in page, (step.action, shown)
            for digest in [*step.inputs.values(), *step.outputs.values()]:
                assert f"<code>{digest}</code>" in page
    spki = next(s.details["spki"] for s in transcript.steps if s.action == "root-key")
    assert len(spki) > 100 and f"<code>{spki}</code>" in page
    assert '"share_digests": [' in html.unescape(page)  # the backup's share set, whole

    # laid out for A4 and Letter: fixed columns, long values wrap at any character inside their cell
    assert "table-layout:fixed" in page and "max-width:186mm" in page
    assert re.search(r"code\{[^}]*overflow-wrap:anywhere", page)
    assert "<script" not in page
