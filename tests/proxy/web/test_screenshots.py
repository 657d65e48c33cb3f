"""docs/screenshots/make.py makes every screenshot the docs show, from the demo, in chromium: run
here into a temporary folder, so the script keeps working as the pages change."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .. import browser as b

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "docs" / "screenshots" / "make.py"
PNG = b"\x89PNG\r\n\x1a\n"


def test_the_screenshot_script_makes_every_screenshot_the_docs_show(tmp_path: Path) -> None:
    b.chromium_path()  # skip (or fail in CI) without chromium
    shown = sorted(p.name for p in (ROOT / "docs" / "screenshots").glob("*.png"))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True, timeout=280
    )
    assert done.returncode == 0, done.stdout + done.stderr
    made = sorted(p.name for p in tmp_path.glob("*.png"))
    assert made == shown  # one for each in the docs, none missing, none extra
    for name in made:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, name
    # Every screenshot the README and the docs link to is one the script makes.
    linked = {
        line.split("screenshots/", 1)[1].split(")", 1)[0]
        for doc in (ROOT / "README.md", *(ROOT / "docs").glob("*.md"))
        for line in doc.read_text().splitlines()
        if "screenshots/" in line and ".png" in line
    }
    assert linked <= set(made), linked
