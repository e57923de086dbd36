"""A loopback Gemini venue: the v2 market-data WebSocket with a real book, and REST ``pubticker``.

It speaks the protocol described in oracled/sources/gemini.py: ``/v2/marketdata`` takes
``subscribe`` messages for the ``l2`` feed, answers each new symbol with a snapshot
``l2_updates`` (all levels, plus ``trades`` and ``auction_events``), then sends diffs of one shared
book per symbol (levels on a price grid around the walk; a level that disappears is sent with
quantity 0), ``heartbeat`` frames every few seconds with the venue time in ms, ``trade`` frames on
demand (`trade`), and ``GET /v1/pubticker/{symbol}``.

Assumptions where the public docs are silent: a subscribe naming an unknown symbol is refused
whole with ``{"type":"error","result":"error","reason":"InvalidSymbol","message":...}`` (the
REST error vocabulary) and nothing in it is subscribed; an unknown symbol on REST answers 400 with
the same body.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from aiohttp import web

from oracled.sim._base import Client, Out, VenueSim
from oracled.sim.paths import PricePath

__all__ = ["GARBAGE", "GeminiSim"]

_L2: Final = '{"type":"l2_updates","symbol":"BTCUSD","changes":'

# One of each kind of bad frame: broken JSON, wrong shapes (a null price; a bare JSON number would
# be a valid one), levels whose price is NaN, zero, negative or not a number, a bad side, a
# negative quantity, and (last, because it forces a resync) a bid far above every ask, which
# leaves the book crossed.
GARBAGE: Final[tuple[str, ...]] = (
    _L2 + '[["buy","67000.1',
    "not json at all",
    _L2 + '"none"}',
    _L2 + '[["buy",null,"1.5"]]}',
    '{"hello":"world"}',
    "[]",
    _L2 + '[["buy","NaN","1"]]}',
    _L2 + '[["sell","0","1"]]}',
    _L2 + '[["buy","-5.00","1"]]}',
    _L2 + '[["buy","abc","1"]]}',
    _L2 + '[["hold","67000.00","1"]]}',
    _L2 + '[["buy","67000.00","-1"]]}',
    _L2 + '[["buy","99999999.00","1"]]}',
)


def _text(value: float, tick: float) -> str:
    decimals = max(0, -math.floor(math.log10(tick)))
    return f"{value:.{decimals}f}"


class GeminiSim(VenueSim):
    """A Gemini v2 market-data venue on loopback; see the module docstring."""

    name = "gemini"
    GARBAGE: ClassVar[tuple[str, ...]] = GARBAGE

    def __init__(
        self,
        prices: Mapping[str, float],
        *,
        heartbeat_s: float = 5.0,
        depth: int = 3,
        message_limit: int = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(prices, message_limit=message_limit, **kwargs)
        self.heartbeat_s = heartbeat_s
        self.depth = depth
        self._books: dict[str, dict[tuple[str, str], str]] = {}

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v2/marketdata", self.ws_handler)
        app.router.add_get("/v1/pubticker/{symbol}", self._rest_handler)

    def background(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self._heartbeat_loop(), name="sim:gemini:heartbeats")]

    # ----------------------------------------------------------------- the book

    def levels(self, symbol: str) -> dict[tuple[str, str], str]:
        """The levels this venue would show now: (side, price text) -> quantity text."""
        mid = self.paths[symbol].published(self.now())
        tick = 10.0 ** (math.floor(math.log10(mid)) - 4)
        half = max(mid * self.spread_bps / 20_000.0, tick)
        best_bid = math.floor((mid - half) / tick)
        best_ask = math.ceil((mid + half) / tick)
        path = self.paths[symbol]
        book: dict[tuple[str, str], str] = {}
        for k in range(self.depth):
            book["buy", _text((best_bid - k) * tick, tick)] = f"{path.size():.6f}"
            book["sell", _text((best_ask + k) * tick, tick)] = f"{path.size():.6f}"
        return book

    def _current(self, symbol: str) -> dict[tuple[str, str], str]:
        book = self._books.get(symbol)
        if book is None:
            book = self._books[symbol] = self.levels(symbol)
        return book

    def data_frame(self, symbol: str, path: PricePath, now: float) -> str:
        """The diff from the last published book to the book now, as the venue sends it: levels
        that left, levels that appeared, and a new size at the top of one side (recorded Gemini
        l2_updates carry a median of two changes; resending every level would be unrealistic)."""
        old = self._current(symbol)
        fresh = self.levels(symbol)
        new = {key: old.get(key, qty) for key, qty in fresh.items()}
        side = "buy" if next(self.sequence) % 2 else "sell"
        top = (max if side == "buy" else min)((float(p), p) for (s, p) in new if s == side)[1]
        new[side, top] = fresh[side, top]
        self._books[symbol] = new
        changes = [[s, price, "0"] for s, price in old if (s, price) not in new]
        changes += [
            [s, price, qty] for (s, price), qty in new.items() if old.get((s, price)) != qty
        ]
        return json.dumps(
            {"type": "l2_updates", "symbol": symbol, "changes": changes}, separators=(",", ":")
        )

    def snapshot(self, symbol: str) -> str:
        book = self._current(symbol)
        changes = [[side, price, qty] for (side, price), qty in book.items()]
        trade = self._trade(symbol)
        body = {
            "type": "l2_updates",
            "symbol": symbol,
            "changes": changes,
            "trades": [trade],
            "auction_events": [],
        }
        return json.dumps(body, separators=(",", ":"))

    def _trade(self, symbol: str) -> dict[str, Any]:
        price = min(p for (side, p) in self._current(symbol) if side == "sell")
        return {
            "type": "trade",
            "symbol": symbol,
            "event_id": next(self.sequence),
            "timestamp": time.time_ns() // 1_000_000,
            "price": price,
            "quantity": f"{self.paths[symbol].size():.6f}",
            "side": "buy",
            "tid": next(self.sequence),
        }

    def trade(self, symbol: str) -> int:
        """Send one trade frame for `symbol` to its subscribers; returns how many got it."""
        return self._fan_out(symbol, json.dumps(self._trade(symbol), separators=(",", ":")))

    # ----------------------------------------------------------------- protocol

    def on_text(self, client: Client, text: str) -> None:
        try:
            req = json.loads(text)
        except ValueError:
            self._error(client, "InvalidJson", "Malformed JSON")
            return
        subs = req.get("subscriptions") if isinstance(req, dict) else None
        if req.get("type") not in ("subscribe", "unsubscribe") or not isinstance(subs, list):
            self._error(client, "InvalidRequest", "Expected a subscribe message")
            return
        wanted: list[str] = []
        for sub in subs:
            symbols = sub.get("symbols") if isinstance(sub, dict) else None
            if sub.get("name") != "l2" or not isinstance(symbols, list):
                self._error(client, "InvalidRequest", "Only the l2 feed is simulated")
                return
            wanted += [str(s).upper() for s in symbols]
        unknown = [s for s in wanted if s not in self.paths]
        if unknown:
            self._error(client, "InvalidSymbol", f"Supplied value '{unknown[0]}' is not a symbol")
            return
        if req["type"] == "unsubscribe":
            client.streams.difference_update(wanted)
            return
        for symbol in wanted:
            if symbol not in client.streams:
                client.streams.add(symbol)
                client.send(self.snapshot(symbol), Out.DATA)

    def _error(self, client: Client, reason: str, message: str) -> None:
        self.stats.errors_sent += 1
        body = {"type": "error", "result": "error", "reason": reason, "message": message}
        client.send(json.dumps(body, separators=(",", ":")))

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            if self.silent:
                continue
            frame = f'{{"type":"heartbeat","timestamp":{time.time_ns() // 1_000_000}}}'
            for client in self.clients:
                client.outbox.put_nowait((Out.HEARTBEAT, frame))

    async def _rest_handler(self, request: web.Request) -> web.Response:
        refused = await self.rest_gate()
        if refused is not None:
            return refused
        symbol = request.match_info["symbol"].upper()
        if symbol not in self.paths:
            body = {"result": "error", "reason": "InvalidSymbol", "message": "Unknown symbol"}
            return web.json_response(body, status=400)
        book = self._current(symbol)
        bid = max((p for (side, p) in book if side == "buy"), key=float)
        ask = min((p for (side, p) in book if side == "sell"), key=float)
        base, quote = symbol[:-3], symbol[-3:]
        ticker = {
            "bid": bid,
            "ask": ask,
            "volume": {
                base: "1234.5",
                quote: "82000000.0",
                "timestamp": time.time_ns() // 1_000_000,
            },
            "last": ask,
        }
        return web.json_response(ticker)
