"""The writer's journal: each captured exchange appended to a local file before its answer's last
byte is sent, so a proxy killed without warning (SIGKILL, the OOM killer) loses no trace.

Why: the writer batches exchanges in memory for a moment (``writer._LINGER``) before they are in
the store or the outbox; a process that dies then takes them with it. The journal holds each one
from the moment the request path hands it over until the writer has stored it. An append is one
``write()`` to a file opened ``O_APPEND``: it is in the kernel's page cache when the call returns,
so it survives the process (not a power cut: nothing is synced, which would cost the request path
a disk flush).

What is written is what the writer process is sent (:data:`.writerproc.FIELDS`, a :mod:`marshal`
frame, credentials masked as :func:`.capture.scrub` masks them), never the
parsed request or the credentials sent upstream. Redaction and the body cap apply when the row is
built, as without a journal; the journal is private (0600 in a 0700 directory) and short-lived.

Segments: the request path appends to the newest segment file; the writer thread, after each
batch, deletes every segment whose exchanges are all stored (exchanges are handed over and stored
in order, so a count says which). The newest segment is closed and deleted once it is fully
stored and a second old, so the journal holds about the last second of traffic plus whatever the
writer has not stored yet. At start-up, the segments an earlier run left are read back
(:meth:`Journal.recover`); the caller stores the exchanges not already stored (by trace id).
"""

from __future__ import annotations

import contextlib
import logging
import marshal
import os
import struct
import threading
import time

from ..config.policy import StoragePolicy
from .capture import scrubbed
from .writerproc import exchange_of, fields_of, price_table, price_tuples

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from ..config.pricing import Price
    from .capture import Exchange

log = logging.getLogger("prysmai.proxy")

_HEADER = struct.Struct(">I")
#: A segment is closed once it holds this many bytes (a new one is started), or once every
#: exchange in it is stored and it is this many seconds old.
SEGMENT_BYTES = 8 << 20
SEGMENT_SECONDS = 1.0
_PREFIX = "segment-"


class _Segment:
    __slots__ = ("fd", "last", "opened", "path", "policies", "prices", "size")

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.size = 0
        self.last = 0  # the sequence number of its last exchange
        self.opened = time.monotonic()
        # Price tables and policies written to this segment so far, by id -> number.
        self.prices: dict[int, int] = {}
        self.policies: dict[StoragePolicy, int] = {}


class Journal:
    """The journal in ``directory`` (see the module docstring). :meth:`append` is called on the
    event loop thread, :meth:`done` on the writer thread."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []  # oldest first; the last one is appended to
        self._next = 0  # the next segment's number
        self._appended = 0  # exchanges handed over (each has the next sequence number)
        self._done = 0  # exchanges the writer has finished with, in order
        self.failed = 0  # exchanges that could not be journaled (still stored: they are in memory)

    # -- start-up ----------------------------------------------------------------------------------
    def recover(self) -> list[Exchange]:
        """Create the directory (0700), and read back the exchanges the segments of an earlier
        run hold (deleting those segments: the caller hands every exchange back to :meth:`append`
        or has stored it). A segment cut short (killed mid-append) yields what precedes the cut."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(self.directory, 0o700)
        names = sorted(
            (n for n in os.listdir(self.directory) if n.startswith(_PREFIX) and n[len(_PREFIX) :].isdigit()),
            key=lambda n: int(n[len(_PREFIX) :]),
        )
        if names:
            self._next = int(names[-1][len(_PREFIX) :]) + 1
        found: list[Exchange] = []
        for name in names:
            path = os.path.join(self.directory, name)
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as exc:
                log.error("trace journal: cannot read %s (%s); its traces are lost", path, exc)
                continue
            found.extend(_read_segment(data, path))
        self._leftovers = [os.path.join(self.directory, n) for n in names]
        return found

    def forget_recovered(self) -> None:
        """Delete the earlier run's segments (their exchanges are stored or journaled again)."""
        for path in getattr(self, "_leftovers", []):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._leftovers = []

    # -- the request path --------------------------------------------------------------------------
    def append(self, ex: Exchange, secrets: tuple[bytes, ...] = ()) -> None:
        """Journal ``ex`` with the known credentials ``secrets`` masked (in a copy: ``ex`` may still
        be on its way to the client). Never raises: an exchange that cannot be journaled is
        counted and logged, and still stored from memory."""
        with self._lock:
            self._appended += 1
            try:
                ex = scrubbed(ex, secrets)
                segment = self._current()
                records = []
                prices = ex.provider_prices
                price_ref = -1
                if prices is not None:
                    price_ref = segment.prices.get(id(prices), -1)
                    if price_ref < 0:
                        price_ref = segment.prices[id(prices)] = len(segment.prices)
                        records.append(marshal.dumps(("prices", price_ref, price_tuples(prices))))
                policy_ref = segment.policies.get(ex.policy, -1)
                if policy_ref < 0:
                    policy_ref = segment.policies[ex.policy] = len(segment.policies)
                    values: Any = ex.policy.as_tuple()
                    records.append(marshal.dumps(("policy", policy_ref, values)))
                records.append(marshal.dumps(("trace", fields_of(ex), price_ref, policy_ref)))
                frame = b"".join(_HEADER.pack(len(r)) + r for r in records)
                os.write(segment.fd, frame)
                segment.size += len(frame)
                segment.last = self._appended
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # (OSError, marshal's ValueError, anything else): never the caller's
                self.failed += 1
                if self.failed == 1 or not self.failed % 1000:
                    log.error(
                        "trace journal %s: cannot append (%s); %d trace(s) so far kept in memory only",
                        self.directory,
                        exc,
                        self.failed,
                    )
                if self._segments:
                    self._segments[-1].last = self._appended

    def _current(self) -> _Segment:
        if self._segments and self._segments[-1].fd >= 0 and self._segments[-1].size < SEGMENT_BYTES:
            return self._segments[-1]
        if self._segments and self._segments[-1].fd >= 0:
            os.close(self._segments[-1].fd)
            self._segments[-1].fd = -1
        path = os.path.join(self.directory, f"{_PREFIX}{self._next}")
        self._next += 1
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o600)
        segment = _Segment(path, fd)
        segment.last = self._appended - 1
        self._segments.append(segment)
        return segment

    # -- the writer thread -------------------------------------------------------------------------
    def done(self, n: int) -> None:
        """``n`` more exchanges (the oldest handed over) are stored, or given up on: delete the
        segments that hold nothing else."""
        if n <= 0:
            return
        gone: list[_Segment] = []
        with self._lock:
            self._done += n
            while self._segments and self._segments[0].last <= self._done:
                segment = self._segments[0]
                newest = len(self._segments) == 1
                if newest and segment.fd >= 0 and time.monotonic() - segment.opened < SEGMENT_SECONDS:
                    break  # still being appended to, and young: keep it open
                if segment.fd >= 0:
                    os.close(segment.fd)
                    segment.fd = -1
                gone.append(self._segments.pop(0))
        for segment in gone:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(segment.path)

    def close(self, everything_stored: bool) -> None:
        """Close the journal; delete it when ``everything_stored`` (a clean stop), else keep it
        for the next start."""
        with self._lock:
            for segment in self._segments:
                if segment.fd >= 0:
                    os.close(segment.fd)
                    segment.fd = -1
                if everything_stored:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(segment.path)
            self._segments = []


def _read_segment(data: bytes, path: str) -> list[Exchange]:
    prices: dict[int, Mapping[str, Price]] = {}
    policies: dict[int, StoragePolicy] = {}
    found: list[Exchange] = []
    pos = 0
    while pos + _HEADER.size <= len(data):
        (size,) = _HEADER.unpack_from(data, pos)
        start = pos + _HEADER.size
        if start + size > len(data):
            break  # the last append was cut short: nothing after it was written
        try:
            record: Any = marshal.loads(data[start : start + size])
            kind = record[0]
            if kind == "prices":
                prices[record[1]] = price_table(record[2])
            elif kind == "policy":
                policies[record[1]] = StoragePolicy.from_tuple(record[2])
            elif kind == "trace":
                found.append(exchange_of(record[1], prices.get(record[2]), policies.get(record[3])))
        except (ValueError, EOFError, TypeError, IndexError, KeyError) as exc:
            log.error("trace journal %s: an unreadable record (%s) skipped", path, exc)
        pos = start + size
    return found


__all__ = ["Journal"]
