"""Programs from Debian's packages that some tests drive (chromium, systemd-analyze, openssl).

A missing one skips its tests on a developer's machine (the README's test command needs only Python
and pip), and FAILS them in CI (``CI=true``): ``.ci/run`` installs each, so a missing one there is a
broken pipeline, not a reason to skip.
"""

from __future__ import annotations

import os
import shutil

import pytest


def require(program: str, package: str) -> str:
    """The path of ``program``; skip (fail in CI) when it is not installed."""
    path = shutil.which(program)
    if path is None:
        message = f"{program} is not installed (Debian: apt-get install {package}); .ci/run installs it"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return path
