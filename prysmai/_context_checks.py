"""What ``prysm_context`` accepts: ids and metadata are checked once, when they are set.

Everything that could fail later (on the wire, or in the proxy's store) fails here instead, with a
``TypeError`` or ``ValueError`` that says what to change: ids are non-empty strings without control
characters; metadata is a mapping with string keys and JSON values, nested at most
:data:`~prysmai._wire.MAX_METADATA_DEPTH` levels, whose text is valid Unicode (no lone surrogates
such as ``"\\ud800"``, which JSON can escape but no UTF-8 store can hold), and whose encoded header
fits in :data:`~prysmai._wire.MAX_HEADER_VALUE_BYTES`.
"""

from __future__ import annotations

from types import MappingProxyType

from ._wire import MAX_HEADER_VALUE_BYTES, MAX_METADATA_DEPTH, encode_id, encode_metadata

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

EMPTY_METADATA: Mapping[str, Any] = MappingProxyType({})


def check_id(value: object, name: str) -> str | None:
    """``value`` if it can be sent as a user or session id (``None`` passes through)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, not {type(value).__name__}.")
    if not value:
        raise ValueError(f"{name} must not be empty; pass None to leave it unchanged.")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ValueError(f"{name} must not contain control characters such as CR or LF: {value!r}.")
    try:
        encoded = encode_id(value)
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid Unicode text (it holds a lone surrogate): {value!r}.") from None
    if len(encoded) > MAX_HEADER_VALUE_BYTES:
        raise ValueError(f"{name} is {len(encoded)} bytes once encoded; the limit is {MAX_HEADER_VALUE_BYTES}.")
    return value


def check_metadata(metadata: object) -> Mapping[str, Any]:
    """A private, read-only deep copy of ``metadata`` once it is known to be sendable."""
    if metadata is None:
        return EMPTY_METADATA
    from collections.abc import Mapping as _Mapping

    if not isinstance(metadata, _Mapping):
        raise TypeError(f"metadata must be a mapping (dict) of str to JSON values, not {type(metadata).__name__}.")
    for key in metadata:
        if not isinstance(key, str):
            raise ValueError(f"metadata keys must be strings, got {key!r}.")
    _check_shape(metadata)
    import json

    # A deep, private copy: later changes to the caller's dict (or its nested lists) cannot leak in.
    return MappingProxyType(json.loads(encode_checked(metadata)))


def encode_checked(metadata: Mapping[str, Any]) -> str:
    """The ``X-Prysm-Metadata`` value of already-checked metadata; ``ValueError`` if it is too large."""
    encoded = encode_metadata(dict(metadata))
    if len(encoded) > MAX_HEADER_VALUE_BYTES:
        raise ValueError(
            f"metadata is {len(encoded)} bytes once encoded as JSON; the limit is {MAX_HEADER_VALUE_BYTES} "
            "(one HTTP header). Send large payloads in the request itself."
        )
    return encoded


def _check_shape(metadata: Mapping[str, Any]) -> None:
    """Depth, size and text checks, iteratively: deep input must give a ValueError, not a RecursionError.

    Bounded work whatever the input: every JSON value takes at least one byte of the header, so a
    value with more parts than the header has bytes is refused without looking further.
    """
    budget = MAX_HEADER_VALUE_BYTES
    stack: list[tuple[object, int]] = [(metadata, 1)]
    while stack:
        node, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise ValueError(
                f"metadata holds more values than fit in one {MAX_HEADER_VALUE_BYTES}-byte header. "
                "Send large payloads in the request itself."
            )
        if isinstance(node, str):
            _check_text(node)
        elif isinstance(node, (dict, MappingProxyType)) or node is metadata:
            if depth > MAX_METADATA_DEPTH:
                raise ValueError(
                    f"metadata is nested more than {MAX_METADATA_DEPTH} levels deep (or contains itself); flatten it."
                )
            for key, value in node.items():  # type: ignore[attr-defined]
                if isinstance(key, str):
                    _check_text(key)
                stack.append((value, depth + 1))
        elif isinstance(node, (list, tuple)):
            if depth > MAX_METADATA_DEPTH:
                raise ValueError(
                    f"metadata is nested more than {MAX_METADATA_DEPTH} levels deep (or contains itself); flatten it."
                )
            stack.extend((item, depth + 1) for item in node)


def _check_text(text: str) -> None:
    if len(text) > MAX_HEADER_VALUE_BYTES:
        raise ValueError(
            f"metadata holds a string of {len(text)} characters; the whole value must fit in one "
            f"{MAX_HEADER_VALUE_BYTES}-byte header. Send large payloads in the request itself."
        )
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"metadata holds text that is not valid Unicode (a lone surrogate such as '\\ud800'): {text!r}. "
            "Decode bytes with errors='replace' or drop the character."
        ) from None
