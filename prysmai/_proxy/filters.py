"""Trace filters shared by the CLI flags and the read API's query string (standard library only)."""

from __future__ import annotations

import argparse

from .report import parse_since

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FILTER_KEYS = ("model", "user", "session", "status")
#: The allowed range of ``limit`` (``?limit=``, ``--limit``).
LIMIT_RANGE = (1, 10_000)


def check_limit(value: int, name: str = "limit") -> int:
    """``value`` if within :data:`LIMIT_RANGE`, else ``ValueError`` naming the range."""
    low, high = LIMIT_RANGE
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}")
    return value


def filters_from_query(query: dict[str, str]) -> dict[str, Any]:
    """``?model=&user=&session=&status=&since=&limit=``; raises ``ValueError`` on a bad value."""
    filters: dict[str, Any] = {k: query[k] for k in FILTER_KEYS if query.get(k)}
    if query.get("since"):
        filters["since"] = parse_since(query["since"])
    if query.get("limit"):
        text = query["limit"].strip()
        if not text.lstrip("-").isdigit() or len(text) > 20:
            raise ValueError(f"limit must be an integer between {LIMIT_RANGE[0]} and {LIMIT_RANGE[1]}")
        filters["limit"] = check_limit(int(text))
    return filters


def filters_from_args(args: argparse.Namespace) -> dict[str, Any]:
    filters: dict[str, Any] = {k: getattr(args, k) for k in FILTER_KEYS if getattr(args, k, None)}
    if getattr(args, "since", None):
        filters["since"] = parse_since(args.since)
    if getattr(args, "limit", None) is not None:
        check_limit(args.limit, "--limit")
    return filters
