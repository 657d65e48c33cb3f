"""The wire contract between the SDK and the Prysm proxy: header names and value encodings.

Header values must be ASCII on the wire (HTTP clients and proxies reject or mangle anything
else), so every value the SDK sends is encoded as follows, and the proxy decodes it the same way:

* ``X-Prysm-User-Id`` / ``X-Prysm-Session-Id``: the id's UTF-8 bytes, where every byte outside
  printable ASCII (``0x21``-``0x7E``) and every ``%`` is percent-encoded (``%XX``, RFC 3986).
  A plain ASCII id is therefore sent as it is. Decode with :func:`decode_id`
  (``urllib.parse.unquote``).
* ``X-Prysm-Metadata``: the metadata object as compact JSON with non-ASCII characters escaped
  (``\\uXXXX``), so the value is pure ASCII. Decode with :func:`decode_metadata` (``json.loads``).

Each encoded value is at most :data:`MAX_HEADER_VALUE_BYTES` long (nginx's default limit for one
header line is 8 KiB).

Clients without the SDK do not encode: curl and Go send a value's UTF-8 bytes as they are, Node's
``http`` module (under the ``openai`` package) sends each character of a string as one latin-1
byte. The proxy reads a value's bytes with :func:`header_text` -- as UTF-8 when they are valid
UTF-8, else as latin-1 -- before decoding it as above, so ``{"city":"Zürich"}`` arrives as sent
from all three.

This module is imported at interpreter start-up under ``PRYSM_AUTO``, so it imports nothing at
module level.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

USER_ID_HEADER = "X-Prysm-User-Id"
SESSION_ID_HEADER = "X-Prysm-Session-Id"
METADATA_HEADER = "X-Prysm-Metadata"
#: Optional per-request upstream (provider) key; overrides the proxy's stored credentials.
UPSTREAM_KEY_HEADER = "X-Prysm-Upstream-Key"
#: Set by the proxy on every response.
TRACE_ID_HEADER = "X-Prysm-Trace-Id"
LATENCY_HEADER = "X-Prysm-Latency-Ms"
#: Set (to ``proxy``) by the proxy on the responses it makes itself, never on a provider's answer it
#: relays: the SDK falls back to the provider only on a 502/503/504 that carries it.
ORIGIN_HEADER = "X-Prysm-Origin"

#: Which keys the proxy's 401 answer says it accepts: a proxy run from a config file names the
#: first, one run with keys on its command line the second (``prysmai doctor`` gives the matching
#: advice).
KEYS_FROM_CONFIG = "a key of one of the projects in the proxy's config file"
KEYS_FROM_FLAGS = "a key given to the proxy (--key, --keys-file or PRYSM_PROXY_KEYS)"

#: Every Prysm key starts with this prefix.
KEY_PREFIX = "sk-prysm-"
#: The largest encoded header value the SDK sends and the proxy accepts.
MAX_HEADER_VALUE_BYTES = 8192
#: How deeply the SDK lets metadata nest (the object itself is level 1): far beyond any real tags,
#: far below what would exhaust a JSON codec's recursion on either side.
MAX_METADATA_DEPTH = 64

_PLAIN = frozenset(range(0x21, 0x7F)) - {ord("%")}


def encode_id(value: str) -> str:
    """Encode a user or session id for its header (see the module docstring)."""
    if value.isascii() and value.isprintable() and " " not in value and "%" not in value:
        return value  # the common case: nothing to escape
    data = value.encode("utf-8")  # lone surrogates raise UnicodeEncodeError, a ValueError
    return "".join(chr(b) if b in _PLAIN else f"%{b:02X}" for b in data)


def decode_id(value: str) -> str:
    """Decode a header value produced by :func:`encode_id`; raises ``ValueError`` if malformed."""
    if "%" not in value:
        return value
    from urllib.parse import unquote_to_bytes

    return unquote_to_bytes(value).decode("utf-8")


def header_text(value: bytes) -> str:
    """A header value's bytes as text: UTF-8 when they are valid UTF-8 (the SDK's ASCII, curl, Go),
    else latin-1, one character per byte (what Node's ``http`` module sends for a string)."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def encode_metadata(metadata: Mapping[str, Any]) -> str:
    """Encode metadata as compact, ASCII-only JSON; raises ``ValueError`` if it is not JSON."""
    import json

    try:
        return json.dumps(metadata, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata must be JSON-serialisable: {exc}") from None
    except RecursionError:
        raise ValueError("metadata is nested too deeply to encode; flatten it.") from None


def decode_metadata(value: str) -> dict[str, Any]:
    """Decode an ``X-Prysm-Metadata`` value; raises ``ValueError`` unless it is a JSON object."""
    import json

    decoded = json.loads(value)
    if not isinstance(decoded, dict):
        raise ValueError("X-Prysm-Metadata must be a JSON object")
    return decoded
