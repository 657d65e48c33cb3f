"""The cost of hashing a presented key on a cold request path: OpenSSL's SHA-256 against the
interpreter's built-in one (what ``prysmai._proxy.config.keys.sha256`` picks).

Every forwarded request hashes its ``sk-prysm-`` key once. A proxy between two requests of a slow
client has its caches filled with other work, so what the request pays is the hash's cold cost,
not its hot-loop cost. Each sample here sleeps 20 ms, walks an 8 MiB buffer (evicting the CPU's
caches, as the other processes of a busy machine do) and times one call.

    python bench/key_hash.py [--samples 300]
"""

from __future__ import annotations

import argparse
import hashlib
import time
import timeit
from collections.abc import Callable

from _common import emit, median

from prysmai._proxy.config.keys import sha256

KEY = b"sk-prysm-" + b"k3yK3YkeyKEYk3yK3YkeyKEYk3yK3Yke"


def _cold(fn: Callable[[], object], samples: int) -> list[float]:
    junk = bytearray(8 << 20)
    ones = b"\x01" * len(junk[::64])
    out = []
    for _ in range(samples):
        time.sleep(0.02)
        junk[::64] = ones
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e6)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    candidates: dict[str, Callable[[], object]] = {
        "openssl": lambda: hashlib.sha256(KEY).digest(),
        "built-in": lambda: sha256(KEY).digest(),
    }
    assert candidates["openssl"]() == candidates["built-in"](), "not the same digest"
    cold: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(3):  # interleaved, so both see the same machine
        for name, fn in candidates.items():
            cold[name] += _cold(fn, args.samples // 3)
    for name, fn in candidates.items():
        hot = min(timeit.repeat(fn, number=10_000, repeat=5)) / 10_000 * 1e6
        emit(
            {
                "bench": "key_hash",
                "hash": name,
                "implementation": repr(hashlib.sha256 if name == "openssl" else sha256),
                "cold_p50_us": round(median(cold[name]), 2),
                "hot_us": round(hot, 3),
            }
        )


if __name__ == "__main__":
    main()
