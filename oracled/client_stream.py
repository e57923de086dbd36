"""`oracled.client_stream`: the subscriber's side of `WS /v1/stream`'s subscribe requests.

Shared by `OracleClient.watch_ws` and the margin service, so that both read the daemon's answers
the same way. It does no I/O: each method says what to send and what changed, and the caller
sends, logs and counts.

The daemon answers each subscribe request with one frame, in order: a `subscribed` ack (the
connection's whole set) or an `error` frame. It refuses a whole request for one market it does
not have (`unknown_market`, or `bad_query` for a name that is no market), so a request of several
markets refused so is asked again market by market; a market refused alone, or named by a
`market_removed` error frame (sent after a reload, answering no request), is unavailable with the
daemon's code until an ack lists it or a report of it arrives. A `stalled` error frame (the
daemon's rounds have stalled: sent after an ack in place of the latest round's snapshot, and
once per stalled round to every subscriber) answers no request either and concerns no market but
the daemon: its caller takes what it holds of that daemon as not current. The daemon never says
that a market came back, hence `retry`: ask for the unavailable markets again, one by one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from oracled.model import market_name

__all__ = [
    "ERROR_CODES",
    "MARKET_REMOVED",
    "MAX_REQUEST",
    "PER_MARKET",
    "STALLED",
    "Refusal",
    "Request",
    "Subscriptions",
]

MAX_REQUEST = 256  # markets in one subscribe request: the daemon refuses more
# Refusals that concern the markets named, not the request: ask for each market alone. Others
# (`signing_disabled`, `bad_request`...) would refuse each market alone just the same.
PER_MARKET = frozenset({"unknown_market", "bad_query"})
MARKET_REMOVED = "market_removed"  # an error frame that answers no request: names markets
STALLED = "stalled"  # an error frame that answers no request: the daemon's rounds have stalled
#: The codes of the daemon's error frames (docs/contracts.md, Stream errors) and `malformed`, a
#: consumer's own for an error frame it cannot read. Any other is a peer's invention (a relay, a
#: proxy on the way): counted and logged under one key, not one each, since each key is kept.
ERROR_CODES = frozenset(
    {"bad_request", "bad_query", "unknown_market", "signing_disabled", "malformed"}
    | {STALLED, MARKET_REMOVED}
)

#: The markets of one subscribe request; None asks for every market (also those added later).
Request = tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class Refusal:
    """What one error frame means, by `kind`:

    `split`        a request of several markets refused for a market: `send` asks for each alone
    `unavailable`  `markets` are unavailable from now on, with `code` (log each by name)
    `repeated`     the markets named were unavailable already (a retry refused again): say nothing
    `error`        a refusal of the request as a whole, or of no request: log and count it
    """

    code: str
    kind: Literal["split", "unavailable", "repeated", "error"]
    markets: tuple[str, ...] = ()
    send: tuple[Request, ...] = ()


@dataclass(frozen=True, slots=True)
class _Asked:
    markets: Request
    retry: bool


class Subscriptions:
    """One consumer's subscribe requests to one daemon, and the markets it does not serve.

    `unavailable` lasts across connections (a market refused before a reconnect is so after it,
    until an answer says otherwise, and is not logged again); the requests not answered yet are
    forgotten by `start`, the first thing on each new connection.
    """

    __slots__ = (
        "_listed",
        "_pending",
        "_retrying",
        "_served",
        "_unavailable",
        "markets",
        "unavailable",
    )

    def __init__(self, markets: Iterable[str] | None) -> None:
        # Canonical names (`btc-usd` -> `BTC/USD`), as the daemon's answers spell them; a name
        # that cannot be a market is asked for as given (and refused: `bad_query`).
        self.markets: tuple[str, ...] | None = (
            None if markets is None else tuple(dict.fromkeys(market_name(m) or m for m in markets))
        )
        self._pending: deque[_Asked] = deque()  # requests not answered yet, oldest first
        self._retrying: set[str] = set()  # markets whose retry is not answered yet
        self._unavailable: dict[str, str] = {}
        # With every market asked for, those reported and those the last ack listed: what a
        # `market_removed` frame may name (`_receiving`).
        self._served: set[str] = set()
        self._listed: frozenset[str] = frozenset()
        #: Markets the daemon refused or removed, with its error code (read-only view).
        self.unavailable: Mapping[str, str] = MappingProxyType(self._unavailable)

    def _ask(self, markets: Request, retry: bool = False) -> Request:
        self._pending.append(_Asked(markets, retry))
        if retry and markets:
            self._retrying.update(markets)
        return markets

    def _answered(self) -> _Asked | None:
        if not self._pending:
            return None
        asked = self._pending.popleft()
        if asked.retry and asked.markets:
            self._retrying.difference_update(asked.markets)
        return asked

    def start(self) -> list[Request]:
        """A new connection: the requests to send first (none for an empty list of markets).

        The markets refused before are left out of the first requests (they would refuse the
        whole request and have it split again on every reconnect) and asked for right after them,
        one request each, as `retry` does: a daemon restarted with such a market added back
        prices it at once, not `retry_s` later.
        """
        self._pending.clear()
        self._retrying.clear()
        if self.markets is None:
            return [self._ask(None)]
        named = tuple(m for m in self.markets if m not in self._unavailable)
        first = [self._ask(named[i : i + MAX_REQUEST]) for i in range(0, len(named), MAX_REQUEST)]
        return [*first, *self.retry()]

    def retry(self) -> list[tuple[str]]:
        """The unavailable markets to ask for again, one request each (every `retry_s`); one
        whose last retry is still unanswered is not asked twice."""
        again = [(m,) for m in self._unavailable if m not in self._retrying]
        for wanted in again:
            self._ask(wanted, retry=True)
        return again

    def acked(self, markets: Iterable[str]) -> list[str]:
        """A `subscribed` ack answering the oldest request: the markets it lists are served;
        returns those that were unavailable until now."""
        self._answered()
        listed = tuple(markets)
        if self.markets is None:
            self._listed = frozenset(listed)  # the connection's whole set: replaces the last
        return [m for m in listed if self._unavailable.pop(m, None) is not None]

    def _receiving(self, market: str) -> bool:
        """`market` is one the connection gets: asked for by name, or, with every market asked
        for, in the last ack's set or reported. A `market_removed` frame naming another is the
        peer's invention, and each name kept would be memory and a retry for ever."""
        if self.markets is not None:
            return market in self.markets
        return market in self._listed or market in self._served

    def reported(self, market: str) -> bool:
        """A report (or signed price) of `market` arrived: True if it was unavailable until now.
        Only for one the caller took (verified, or asked for): with every market asked for, a
        `market_removed` frame counts only for the markets reported so."""
        if self.markets is None:
            self._served.add(market)
        return self._unavailable.pop(market, None) is not None

    def refused(self, code: str, markets: Iterable[str] = ()) -> Refusal:
        """An error frame with `code` (`markets`: those a `market_removed` frame names, of which
        only the ones the connection gets count: `_receiving`)."""
        if code == STALLED:
            return Refusal(code, "error")  # after an ack: the next answer is another request's
        if code == MARKET_REMOVED:  # only markets this consumer gets: the peer may name any
            asked: Request = tuple(m for m in markets if self._receiving(m))
            retry = False
        else:
            answered = self._answered()
            asked, retry = (answered.markets, answered.retry) if answered else (None, False)
        if retry and asked and all(m in self._unavailable for m in asked):
            return Refusal(code, "repeated")
        if not asked or (code not in PER_MARKET and code != MARKET_REMOVED):
            return Refusal(code, "error")
        if code in PER_MARKET and len(asked) > 1:
            return Refusal(code, "split", asked, tuple(self._ask((m,)) for m in asked))
        new = tuple(m for m in asked if m not in self._unavailable)
        for market in new:
            self._unavailable[market] = code
        return Refusal(code, "unavailable" if new else "repeated", new)
