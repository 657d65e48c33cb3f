"""Trace filters shared by the CLI flags and the read API's query string (standard library only)."""

from __future__ import annotations

import argparse

from .report import parse_since

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FILTER_KEYS = ("model", "user", "session", "status")


def filters_from_query(query: dict[str, str]) -> dict[str, Any]:
    """``?model=&user=&session=&status=&since=&limit=``; raises ``ValueError`` on a bad value."""
    filters: dict[str, Any] = {k: query[k] for k in FILTER_KEYS if query.get(k)}
    if query.get("since"):
        filters["since"] = _since(query["since"], "since")
    if query.get("limit"):
        try:
            filters["limit"] = int(query["limit"])
        except ValueError:
            raise ValueError("limit must be an integer") from None
    return filters


def filters_from_args(args: argparse.Namespace) -> dict[str, Any]:
    filters: dict[str, Any] = {k: getattr(args, k) for k in FILTER_KEYS if getattr(args, k, None)}
    if getattr(args, "since", None):
        filters["since"] = _since(args.since, "--since")
    return filters


def _since(value: str, name: str) -> float:
    """Name the setting as the caller spelled it: the query parameter, or the CLI flag."""
    try:
        return parse_since(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
