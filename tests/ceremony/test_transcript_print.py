"""The printable transcript rendered by a real browser (headless Chromium) at the printable width of A4 and
US Letter: no element's content is wider than the element (its scroll width never exceeds its client width)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.ceremony.conftest import POLICIES, Setup

# the printable width at 96 CSS px per inch, Chromium's default print margins (0.4 in) taken off
PAPERS = {"A4": round((210 / 25.4 - 0.8) * 96), "Letter": round((8.5 - 0.8) * 96)}

_PROBE = """<script>
window.addEventListener("load", () => {
  const over = [];
  for (const e of document.querySelectorAll("body *")) {
    if (e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1) {
      over.push(`${e.tagName.toLowerCase()}.${e.className}: ${e.scrollWidth} > ${e.clientWidth}`);
    }
  }
  const page = document.documentElement;
  if (page.scrollWidth > page.clientWidth + 1) over.push(`page: ${page.scrollWidth} > ${page.clientWidth}`);
  document.body.setAttribute("data-overflow", JSON.stringify(over));
});
</script>"""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "headless Chromium is needed for this test: 'make setup' installs it (apt-get install chromium)"
    return found


def overflowing(page: Path, width: int, work: Path) -> list[str]:
    """What overflows when ``page`` is laid out ``width`` CSS px wide (the probe runs in the page)."""
    probe = work / f"probe-{width}.html"
    probe.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    done = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--window-size={width},1200", "--virtual-time-budget=3000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    found = re.search(r'data-overflow="([^"]*)"', done.stdout)
    assert found is not None, f"Chromium did not run the probe: {done.stderr[-2000:]}"
    result: list[str] = json.loads(found.group(1).replace("&quot;", '"'))
    return result


def test_transcripts_fit_a4_and_letter_in_a_real_browser(setup: Setup, tmp_path: Path) -> None:
    code, _, err = setup.ceremony(POLICIES / "roles.yaml", setup.root / "policy-v1.json", "roles")
    assert code == 0, err
    for page in (setup.root / "transcript.html", setup.tmp / "roles" / "transcript.html"):
        for paper, width in PAPERS.items():
            assert overflowing(page, width, tmp_path) == [], (page.parent.name, paper)


def test_the_probe_sees_an_overflow(tmp_path: Path) -> None:
    page = tmp_path / "wide.html"
    wide = "ab" * 400
    page.write_text(f'<html><body><div style="width:300px;overflow:auto"><code>{wide}</code></div></body></html>')
    assert overflowing(page, PAPERS["A4"], tmp_path) != []


@pytest.fixture(autouse=True)
def _no_stray_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # Chromium keeps its profile under $HOME
