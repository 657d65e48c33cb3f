"""What an installed package and its sdist carry: the licence, the changelog, the docs, the URLs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_sdist_and_wheel_carry_licence_docs_and_urls(tmp_path: Path) -> None:
    # A copy of the tree: building writes build/ and *.egg-info next to the sources.
    source = tmp_path / "src"
    junk = (".venv*", ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "*.db*")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*junk))
    # --no-isolation: build with this environment's setuptools (no download), as .ci/run installs it.
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    tmp_path = out
    (sdist,) = tmp_path.glob("prysmai-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in (
        "LICENSE",
        "CHANGELOG.md",
        "README.md",
        "docs/proxy.md",
        "docs/operations.md",
        "docs/systemd/prysmai-proxy.service",
        "docs/projects.md",
        "docs/prysm.example.toml",
    ):
        assert needed in names, needed
    (wheel,) = tmp_path.glob("prysmai-*.whl")
    with zipfile.ZipFile(wheel) as whl:
        metadata_name = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = whl.read(metadata_name).decode()
        assert any(n.endswith("LICENSE") for n in whl.namelist())
        assert "prysmai/_proxy/config/pricing.json" in whl.namelist()
    assert "Project-URL: Homepage, " in metadata
    assert "Provides-Extra: proxy" in metadata
    assert "uvicorn[standard]" in metadata and "aiohttp" in metadata
    # The config file's TOML reader below Python 3.11 (tomllib from 3.11).
    assert 'Requires-Dist: tomli>=1.1; python_version < "3.11" and extra == "proxy"' in metadata
