"""Market names as clients spell them: `BTC/USD`, URL-encoded `BTC%2FUSD`, or `BTC-USD`.

A slash cannot appear in a path segment without encoding, hence the dash form; both are accepted
everywhere (path, query, stream) and mapped to the canonical `BASE/QUOTE`.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Set

from multidict import MultiMapping

from oracled.api.errors import ApiError
from oracled.model import market_name

__all__ = ["market_list", "path_market", "query_once"]

MAX_LIST = 256  # markets named in one query or stream request


def path_market(text: str, known: Container[str]) -> str:
    """A market named in a URL path; 404 unless it is configured."""
    name = market_name(text)
    if name is None or name not in known:
        raise ApiError(
            404, "unknown_market", f"market {text[:64]!r} is not configured; see /v1/markets"
        )
    return name


def market_list(items: list[str], known: Container[str]) -> list[str]:
    """Markets named in a list: 400 if malformed or too many, 404 if any is not configured.

    Duplicates are removed, the first spelling's position kept.
    """
    if not items:
        raise ApiError(400, "bad_query", "markets: give at least one market, e.g. BTC/USD")
    if len(items) > MAX_LIST:
        raise ApiError(400, "bad_query", f"markets: at most {MAX_LIST} markets per request")
    names: dict[str, None] = {}
    for item in items:
        name = market_name(item)
        if name is None:
            raise ApiError(
                400, "bad_query", f"markets: {item[:64]!r} is not a market name like BTC/USD"
            )
        names[name] = None
    unknown = [n for n in names if n not in known]
    if unknown:
        listed = ", ".join(unknown)
        raise ApiError(404, "unknown_market", f"not configured: {listed}; see /v1/markets")
    return list(names)


def query_once(query: MultiMapping[str], allowed: Set[str]) -> Mapping[str, str]:
    """The query's parameters, each given at most once: 400 for an unknown or repeated one.

    A repeated parameter is refused, never half read: following its first value alone would
    serve a selection or a subscription other than the one asked for.
    """
    extra = sorted(set(query) - allowed)
    if extra:
        raise ApiError(400, "bad_query", f"unknown query parameter(s): {', '.join(extra)}")
    twice = sorted({key for key in query if len(query.getall(key)) > 1})
    if twice:
        listed = ", ".join(twice)
        raise ApiError(400, "bad_query", f"{listed}: give each parameter once (lists: a,b,c)")
    return {key: query[key] for key in query}
