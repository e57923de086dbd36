"""A loopback Kraken spot venue: the WebSocket v2 ``/v2`` endpoint and REST ``Ticker``, with faults.

It speaks the v2 protocol (see oracled/sources/kraken.py for the docs): a ``status`` message on
connect; ``subscribe`` to the ``ticker`` channel answered with one ack per symbol under the
request's ``req_id`` (``success:false`` with ``error`` and ``symbol`` for a pair it does not list),
then a ``snapshot`` per symbol and ``update`` frames whose prices are JSON numbers and whose
``timestamp`` is RFC 3339; ``{"channel":"heartbeat"}`` once a ``heartbeat_s`` to subscribed
clients; ``{"method":"ping"}`` answered with ``pong``; and ``GET /0/public/Ticker?pair=...`` with
Kraken's REST shape: asked by altname (``XBTUSD``), filed under the legacy key (``XXBTZUSD``;
``USDTZUSD`` for ``USDTUSD``, ``ZEURZUSD`` for ``EURUSD``),
errors as HTTP 200 with an ``error`` list (``EQuery:Unknown asset pair`` spoils the request).
A rate limit is worded the same way: `rest_status` 429 answers HTTP 200 with
``{"error":["EAPI:Rate limit exceeded"],"result":{}}`` (`rate_limit_error` picks another of the
venue's wordings), as Kraken's REST answers every API error, and so is a request past the base's
`rest_limit`; other statuses stay generic.

Deliberate simplifications: heartbeats go out every interval, not only when nothing else flowed;
one message limit (close with 1008 above ``message_limit`` a second) stands in for Kraken's
dynamic rate counter.

Faults: every one of `VenueSim` (spike, silence, disconnect, garbage, burst, replay_stale,
ws_enabled, rest_enabled, rest_status, rest_delay_s, reset).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

from aiohttp import web

from oracled.sim._base import Client, Out, VenueSim
from oracled.sim.paths import PricePath

__all__ = ["GARBAGE", "KrakenSim"]

_LEGACY: Final = {"BTC": "XBT", "DOGE": "XDG"}
_RATE_LIMIT: Final = "EAPI:Rate limit exceeded"
# Assets whose legacy REST pair keys carry X/Z prefixes (XXBTZUSD, XETHZUSD).
_CLASSIC: Final = frozenset({"XBT", "ETH", "LTC", "XRP", "XLM", "ETC", "XMR", "ZEC", "MLN", "REP"})
_FIAT: Final = frozenset({"USD", "EUR", "GBP", "JPY", "CAD"})
# Keys that follow neither rule: USDT/USD is filed with a Z on the quote side only.
_IRREGULAR: Final = {"USDTUSD": "USDTZUSD"}

_T: Final = '{"channel":"ticker","type":"update","data":[{"symbol":"BTC/USD",'
# One of each kind of bad frame the adapter must survive: broken JSON, wrong shapes, prices that
# are zero, negative, crossed, strings instead of numbers, NaN (not JSON at all) or out of range.
GARBAGE: Final[tuple[str, ...]] = (
    _T + '"bid":',
    "not json at all",
    '{"channel":"ticker","type":"update","data":{"symbol":"BTC/USD","bid":1,"ask":2}}',
    _T + '"bid":"67000.1","ask":"67000.2"}]}',
    '{"hello":"world"}',
    "[]",
    _T + '"bid":NaN,"ask":NaN}]}',
    _T + '"bid":1e999,"ask":1e999}]}',
    _T + '"bid":0.0,"ask":0.0}]}',
    _T + '"bid":-5.0,"ask":-4.0}]}',
    _T + '"bid":70000.0,"ask":60000.0}]}',
    '{"channel":"ticker","type":"update","data":[]}',
    _T + '"bid":67000.1,"ask":67000.2,"timestamp":"yesterday"}]}',
)


def _num(x: float) -> str:
    """A price as Kraken prints it: a plain decimal with about eight significant digits."""
    places = min(12, max(1, 7 - math.floor(math.log10(abs(x))))) if x else 1
    return f"{x:.{places}f}"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rest_names(symbol: str) -> tuple[str, str]:
    """(altname to ask by, key of the answer) of a v2 symbol, the way Kraken's REST names pairs."""
    base, _, quote = symbol.partition("/")
    base, quote = _LEGACY.get(base, base), _LEGACY.get(quote, quote)
    alt = f"{base}{quote}"
    if base in _CLASSIC and quote in _FIAT:
        return alt, f"X{base}Z{quote}"
    if base in _CLASSIC and quote in _CLASSIC:
        return alt, f"X{base}X{quote}"
    if base in _FIAT and quote in _FIAT:
        return alt, f"Z{base}Z{quote}"  # ZEURZUSD
    return alt, _IRREGULAR.get(alt, alt)


class KrakenSim(VenueSim):
    """A Kraken spot venue on loopback; see the module docstring for the protocol and faults."""

    name = "kraken"
    GARBAGE: ClassVar[tuple[str, ...]] = GARBAGE

    def __init__(
        self, prices: Mapping[str, float], *, heartbeat_s: float = 1.0, **kwargs: Any
    ) -> None:
        super().__init__(prices, **kwargs)
        self.heartbeat_s = heartbeat_s
        self._by_alt = {rest_names(s)[0]: s for s in self.paths}
        #: The error string of `rest_status` 429's answer (Kraken's wording of its REST limit).
        self.rate_limit_error = _RATE_LIMIT
        #: The pairs (altnames) each Ticker request past the REST faults named, in order.
        self.rest_asked: list[list[str]] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v2", self.ws_handler)
        app.router.add_get("/0/public/Ticker", self._rest_handler)

    def background(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self._heartbeat(), name="sim:kraken:heartbeat")]

    def on_connect(self, client: Client) -> None:
        status = {"api_version": "v2", "connection_id": 1, "system": "online", "version": "2.0.0"}
        client.send(_dump({"channel": "status", "type": "update", "data": [status]}))

    def on_text(self, client: Client, text: str) -> None:
        time_in = _now()
        try:
            req = json.loads(text)
        except ValueError:
            req = None
        if not isinstance(req, dict) or not isinstance(req.get("method"), str):
            self._error(client, "Malformed request", {}, time_in)
            return
        method, req_id = req["method"], req.get("req_id")
        head = {"method": method} | ({"req_id": req_id} if req_id is not None else {})
        if method == "ping":
            pong = {**head, "method": "pong", "time_in": time_in, "time_out": _now()}
            client.send(_dump(pong))
            return
        params = req.get("params")
        if method not in ("subscribe", "unsubscribe") or not isinstance(params, dict):
            self._error(client, f"Method not supported: {method}", head, time_in)
            return
        if params.get("channel") != "ticker":
            self._error(client, f"Channel not supported: {params.get('channel')}", head, time_in)
            return
        symbols = params.get("symbol")
        if not isinstance(symbols, list) or not symbols:
            self._error(client, "Missing or invalid symbol", head, time_in)
            return
        snapshot = params.get("snapshot", True) is not False
        for symbol in symbols:
            if symbol not in self.paths:
                err = {**head, "symbol": symbol}
                self._error(client, f"Currency pair not supported {symbol}", err, time_in)
                continue
            if method == "subscribe":
                client.streams.add(symbol)
            else:
                client.streams.discard(symbol)
            result = {"channel": "ticker", "symbol": symbol, "snapshot": snapshot}
            ack = {"method": method, "result": result, "success": True, "time_in": time_in}
            client.send(_dump({**ack, "time_out": _now(), **head}))
            if method == "subscribe" and snapshot:
                frame = self._ticker(symbol, self.paths[symbol], self.now(), "snapshot")
                client.outbox.put_nowait((Out.DATA, frame))

    def data_frame(self, symbol: str, path: PricePath, now: float) -> str:
        return self._ticker(symbol, path, now, "update")

    def _ticker(self, symbol: str, path: PricePath, now: float, kind: str) -> str:
        mid = path.published(now)
        half = mid * self.spread_bps / 20_000.0
        bid, ask = _num(mid - half), _num(mid + half)
        return (
            f'{{"channel":"ticker","type":"{kind}","data":[{{"symbol":"{symbol}",'
            f'"bid":{bid},"bid_qty":{path.size()},"ask":{ask},"ask_qty":{path.size()},'
            f'"last":{_num(mid)},"volume":1234.5678,"vwap":{_num(mid)},"low":{_num(mid * 0.98)},'
            f'"high":{_num(mid * 1.02)},"change":0.0,"change_pct":0.0,"timestamp":"{_now()}"}}]}}'
        )

    def _error(self, client: Client, message: str, head: dict[str, Any], time_in: str) -> None:
        self.stats.errors_sent += 1
        body = {"error": message, **head, "success": False, "time_in": time_in}
        client.send(_dump({**body, "time_out": _now()}))

    async def _heartbeat(self) -> None:
        frame = '{"channel":"heartbeat"}'
        while True:
            await asyncio.sleep(self.heartbeat_s)
            if self.silent:
                continue
            for client in self.clients:
                if client.streams:  # Kraken starts heartbeats with the first subscription
                    client.outbox.put_nowait((Out.HEARTBEAT, frame))

    def rest_refusal(self, status: int) -> web.Response:
        """A 429 is said as Kraken says a rate limit: an ``error`` list under HTTP 200."""
        if status != 429:
            return super().rest_refusal(status)
        return web.json_response({"error": [self.rate_limit_error], "result": {}})

    def reset(self) -> None:
        super().reset()
        self.rate_limit_error = _RATE_LIMIT

    async def _rest_handler(self, request: web.Request) -> web.Response:
        refused = await self.rest_gate()
        if refused is not None:
            return refused
        asked = request.query.get("pair")
        names = asked.split(",") if asked else [rest_names(s)[0] for s in self.paths]
        self.rest_asked.append(names)
        if any(n not in self._by_alt for n in names):
            return web.json_response({"error": ["EQuery:Unknown asset pair"]})
        result = {}
        for name in names:
            symbol = self._by_alt[name]
            bid, ask = self.book(symbol)
            mid = (bid + ask) / 2
            result[rest_names(symbol)[1]] = {
                "a": [_num(ask), "1", "1.000"],
                "b": [_num(bid), "1", "1.000"],
                "c": [_num(mid), "0.01000000"],
                "v": ["10.00000000", "100.00000000"],
                "p": [_num(mid), _num(mid)],
                "t": [10, 100],
                "l": [_num(mid * 0.98), _num(mid * 0.98)],
                "h": [_num(mid * 1.02), _num(mid * 1.02)],
                "o": _num(mid),
            }
        return web.json_response({"error": [], "result": result})


def _dump(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))
