"""``prysmai keys new`` and ``prysmai keys hash``: make a key, and the line that puts it in a config
file as a hash (so the file holds no secret).

Imported on every ``prysmai`` invocation: standard library only at module level.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_PROJECT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")


def add_parser(subparsers: Any) -> None:
    """Add ``keys new`` and ``keys hash`` to ``prysmai``."""
    keys = subparsers.add_parser(
        "keys",
        help="make a Prysm key for a project, or hash one for the config file",
        description=(
            "Keys for the proxy's config file (docs/projects.md). `keys new --project NAME` prints a fresh "
            "key and its sha256: form for the project's keys; `keys hash` reads keys on stdin and prints "
            "their sha256: forms and ids."
        ),
    )
    sub = keys.add_subparsers(dest="keys_command", metavar="new | hash")
    sub.required = True
    new = sub.add_parser(
        "new",
        help="print a fresh key and the line to add to the config",
        description="Print a fresh key (shown once) and its hashed line for the project's keys in the config.",
    )
    new.add_argument("--project", required=True, metavar="NAME", help="the project the key is for")
    new.add_argument(
        "--config",
        metavar="PATH",
        help="check that the project exists in this config file (default: $PRYSM_CONFIG, if set)",
    )
    new.set_defaults(handler=run)
    hashed = sub.add_parser(
        "hash",
        help="print the sha256: form and id of keys read on stdin",
        description=(
            "Read keys on stdin (one per line, as in a --keys-file: blank lines and # comments skipped; asked "
            "for without echo on a terminal) and print each one's sha256: form and key id, to move existing "
            "keys into a config file without writing them down."
        ),
    )
    hashed.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """``prysmai keys new`` / ``prysmai keys hash``."""
    if args.keys_command == "new":
        return _new(args.project, args.config)
    return _hash()


def _err(message: str) -> int:
    print(f"prysmai: {message}", file=sys.stderr)
    return 2


def _new(project: str, config: str | None) -> int:
    from ..config.keys import generate_key, key_digest, key_id

    try:
        from ..config import file as projectconfig
    except ImportError:  # Python < 3.11 without the proxy extra, which brings tomli
        return _err("reading a config file needs the proxy's extra below Python 3.11: pip install '.[proxy]'")

    if not _PROJECT_NAME.match(project):
        return _err("--project: a project name has 1 to 64 letters, digits, '_', '.' or '-'")
    path = config or os.environ.get(projectconfig.CONFIG_ENV) or None
    has_keys = False
    if path is not None:
        try:
            # The proxy's secrets need not be set where keys are made: only the structure is read.
            tenancy = projectconfig.load(path, secrets=False)
        except projectconfig.ConfigError as exc:
            return _err(str(exc))
        if project not in tenancy.projects:
            names = ", ".join(sorted(tenancy.projects))
            return _err(f"{path} has no project {project!r} (its projects: {names}); add a [[projects]] table first")
        has_keys = _declares_keys(path, project)
    key = generate_key()
    where = f"in {path}" if path else "in the config file"
    also = ", beside the keys it has" if has_keys else ""
    print(
        f"New key for project {project!r} ({key_id(key)}). It is shown only now: give it to the project's\n"
        "clients (PRYSM_API_KEY, or prysm_key=...).\n"
        "\n"
        f"    {key}\n"
        "\n"
        f"Add its hash to the project's keys {where}{also}\n"
        "(the file then holds no secret):\n"
        "\n"
        "    [[projects]]\n"
        f'    name = "{project}"\n'
        f'    keys = ["sha256:{key_digest(key).hex()}"]   # {key_id(key)}\n'
        "\n"
        "A running proxy takes it when the file changes (or on SIGHUP)."
    )
    return 0


def _declares_keys(path: str, project: str) -> bool:
    """Whether the project already has a keys list (the line then says to append to it)."""
    from ..config import file as projectconfig

    try:
        _, doc = projectconfig.read_document(path)
    except projectconfig.ConfigError:
        return False
    return any(isinstance(p, dict) and p.get("name") == project and p.get("keys") for p in doc.get("projects", []))


def _hash() -> int:
    from ..config.keys import KeyConfigError, _validate, key_digest, key_id

    if sys.stdin.isatty():
        import getpass

        lines = [getpass.getpass("key (not shown): ")]
    else:
        lines = sys.stdin.read().splitlines()
    # As a keys file (--keys-file): blank lines and lines starting with # are skipped.
    found = [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip() and not line.lstrip().startswith("#")]
    if not found:
        return _err("keys hash: no key on stdin; e.g. `prysmai keys hash < keys.txt` (one key per line)")
    out = []
    for n, line in found:
        try:
            key = _validate(line, f"stdin line {n}")
        except KeyConfigError as exc:
            return _err(f"keys hash: {exc}")
        out.append(f"sha256:{key_digest(key).hex()}  {key_id(key)}")
    print("\n".join(out))
    return 0
