"""The trace store holds every prompt and answer: it is created readable by its owner only.

SQLite gives the ``-wal`` and ``-shm`` files it creates the mode of the database file, so creating
the database file as 0600 (in a directory created as 0700) before SQLite opens it covers all three.
A path that is a symbolic link is followed first, as SQLite follows it: the file it names is the
one created 0600, with its ``-wal`` and ``-shm`` beside it (a dangling link would otherwise be
created by SQLite itself, with its default 0644). Existing files and directories are left as they
are; :func:`loose_mode` lets the proxy warn.
"""

from __future__ import annotations

import contextlib
import os
import stat

FILE_MODE = 0o600
DIR_MODE = 0o700


def prepare(path: str) -> None:
    """Create ``path``'s directory (0700) and an empty ``path`` (0600) if they do not exist."""
    if path == ":memory:" or path.startswith("file:"):
        return
    path = os.path.realpath(path)  # the file a link names (O_EXCL below would refuse the link itself)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        # Only the last directory gets 0700 (os.makedirs' mode applies to the leaf); parents such
        # as ~/.local/share get the usual umask.
        os.makedirs(directory, mode=DIR_MODE, exist_ok=True)
        with contextlib.suppress(OSError):  # a umask cannot widen it, but an odd one could narrow it
            os.chmod(directory, DIR_MODE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    try:
        if hasattr(os, "fchmod"):  # POSIX: exactly 0600 whatever the umask
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def loose_mode(path: str) -> int | None:
    """The permission bits of ``path`` if group or others may read or write it, else ``None``."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    return mode if mode & 0o077 else None
