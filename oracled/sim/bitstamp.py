"""A loopback Bitstamp venue: the WebSocket v2 endpoint and the REST tickers, with faults.

It speaks the real protocol (see oracled/sources/bitstamp.py for the docs): ``bts:subscribe`` to
``order_book_<pair>`` acked by ``bts:subscription_succeeded``, ``data`` events carrying the top of
the book as decimal strings with ``timestamp`` and ``microtimestamp``, ``bts:heartbeat`` answered
with ``{"status":"success"}``, ``bts:error`` for requests it cannot read, ``bts:request_reconnect``
on demand (`request_reconnect()`), and ``GET /api/v2/ticker/`` (every pair) and
``GET /api/v2/ticker/<pair>/`` with Bitstamp's ticker rows.

Deliberate differences from the real venue: a subscription to a market it does not list gets a
``bts:error`` naming the channel (the real venue acks it and stays silent), so that the adapter's
error path is exercised; books carry `depth` levels a side rather than 100.

Faults: every one of `VenueSim` (spike, silence, disconnect, garbage, burst, replay_stale,
ws_enabled, rest_enabled, rest_status, rest_delay_s, reset) plus `request_reconnect()`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from aiohttp import web

from oracled.sim._base import Client, Out, VenueSim
from oracled.sim.paths import PricePath

__all__ = ["GARBAGE", "BitstampSim"]

_CHANNEL: Final = "order_book_"
_FUTURE: Final = "9999999999999999"  # a microtimestamp no real book is newer than


def _book(bids: str, asks: str, stamp: str = _FUTURE) -> str:
    return (
        f'{{"data":{{"timestamp":"{stamp[:10]}","microtimestamp":"{stamp}","bids":{bids},'
        f'"asks":{asks}}},"channel":"order_book_btcusd","event":"data"}}'
    )


# One of each kind of bad frame the adapter must survive: broken JSON, wrong shapes, and
# well-formed books whose best prices are NaN, infinite, zero, negative, not numbers or crossed.
GARBAGE: Final[tuple[str, ...]] = (
    '{"data":{"timestamp":"1","microtimestamp":"1000000","bids":[["67000.1",',
    "not json at all",
    '{"data":[1,2,3],"channel":"order_book_btcusd","event":"data"}',
    _book("[[67000.1,1.0]]", "[[67000.2,1.0]]"),
    '{"hello":"world"}',
    "[]",
    _book('[["NaN","1.0"]]', '[["NaN","1.0"]]'),
    _book('[["inf","1.0"]]', '[["inf","1.0"]]'),
    _book('[["0.00","1.0"]]', '[["0.00","1.0"]]'),
    _book('[["-5.00","1.0"]]', '[["-4.00","1.0"]]'),
    _book('[["abc","1.0"]]', '[["67000.20","1.0"]]'),
    _book('[["70000.00","1.0"]]', '[["60000.00","1.0"]]'),
    _book('[["67000.10","1.0"]]', '[["67000.20","1.0"]]', stamp="soon"),
)


def _num(x: float) -> str:
    """A price as Bitstamp prints it: a decimal string with about eight significant digits."""
    places = min(12, max(0, 7 - math.floor(math.log10(abs(x))))) if x else 2
    return f"{x:.{places}f}"


def market(pair: str) -> str:
    """Bitstamp's market name of a canonical pair: BTC/USD -> btcusd."""
    return pair.replace("/", "").lower()


class BitstampSim(VenueSim):
    """A Bitstamp venue on loopback; see the module docstring for the protocol and faults.

    `prices` is keyed by canonical pair (``BTC/USD``); the venue serves it as ``btcusd``.
    """

    name = "bitstamp"
    GARBAGE: ClassVar[tuple[str, ...]] = GARBAGE

    def __init__(self, prices: Mapping[str, float], *, depth: int = 3, **kwargs: Any) -> None:
        super().__init__({market(p): v for p, v in prices.items()}, **kwargs)
        self.depth = depth
        self._pairs = {market(p): p for p in prices}

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.ws_handler)
        app.router.add_get("/api/v2/ticker/", self._tickers)
        app.router.add_get("/api/v2/ticker/{market}/", self._ticker)

    def request_reconnect(self) -> int:
        """Ask every client to reconnect, as Bitstamp does before maintenance; return how many."""
        for client in self.clients:
            client.send('{"event":"bts:request_reconnect","channel":"","data":""}')
        return len(self.clients)

    def on_text(self, client: Client, text: str) -> None:
        try:
            req = json.loads(text)
        except ValueError:
            req = None
        event = req.get("event") if isinstance(req, dict) else None
        if event == "bts:heartbeat":
            client.send('{"event":"bts:heartbeat","channel":"","data":{"status":"success"}}')
            return
        data = req.get("data") if isinstance(req, dict) else None
        channel = data.get("channel") if isinstance(data, dict) else None
        if event not in ("bts:subscribe", "bts:unsubscribe") or not isinstance(channel, str):
            self._error(client, "", "Incorrect JSON format.")
            return
        symbol = channel[len(_CHANNEL) :] if channel.startswith(_CHANNEL) else None
        if symbol is None or symbol not in self.paths:
            self._error(client, channel, "Bad subscription string.")
            return
        if event == "bts:subscribe":
            client.streams.add(symbol)
            reply = "bts:subscription_succeeded"
        else:
            client.streams.discard(symbol)
            reply = "bts:unsubscription_succeeded"
        client.send(json.dumps({"event": reply, "channel": channel, "data": {}}))

    def data_frame(self, symbol: str, path: PricePath, now: float) -> str:
        mid = path.published(now)
        half = mid * self.spread_bps / 20_000.0
        tick = mid * 1e-5
        bids = [[_num(mid - half - i * tick), f"{path.size():.8f}"] for i in range(self.depth)]
        asks = [[_num(mid + half + i * tick), f"{path.size():.8f}"] for i in range(self.depth)]
        micro = time.time_ns() // 1000
        data = {
            "timestamp": str(micro // 1_000_000),
            "microtimestamp": str(micro),
            "bids": bids,
            "asks": asks,
        }
        event = {"data": data, "channel": f"{_CHANNEL}{symbol}", "event": "data"}
        return json.dumps(event, separators=(",", ":"))

    def _error(self, client: Client, channel: str, message: str) -> None:
        self.stats.errors_sent += 1
        body = {
            "event": "bts:error",
            "channel": channel,
            "data": {"code": None, "message": message},
        }
        client.outbox.put_nowait((Out.CONTROL, json.dumps(body)))

    def _row(self, symbol: str) -> dict[str, str]:
        bid, ask = self.book(symbol)
        mid = (bid + ask) / 2
        return {
            "timestamp": str(int(time.time())),
            "open": _num(mid),
            "high": _num(mid * 1.02),
            "low": _num(mid * 0.98),
            "last": _num(mid),
            "volume": "123.45678900",
            "vwap": _num(mid),
            "bid": _num(bid),
            "ask": _num(ask),
            "side": "0",
            "open_24": _num(mid),
            "percent_change_24": "0.00",
            "pair": self._pairs[symbol],
            "market_type": "SPOT",
        }

    async def _tickers(self, request: web.Request) -> web.Response:
        refused = await self.rest_gate()
        if refused is not None:
            return refused
        return web.json_response([self._row(s) for s in self.paths])

    async def _ticker(self, request: web.Request) -> web.Response:
        refused = await self.rest_gate()
        if refused is not None:
            return refused
        symbol = request.match_info["market"]
        if symbol not in self.paths:
            return web.json_response({"errors": [{"message": "Not found"}]}, status=404)
        row = self._row(symbol)
        del row["pair"], row["market_type"]  # the one-pair answer names no pair
        return web.json_response(row)
