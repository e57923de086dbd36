"""A loopback Gemini venue: the v2 market-data WebSocket with a real book, and REST ``pubticker``.

It speaks the protocol described in oracled/sources/gemini.py: ``/v2/marketdata`` takes
``subscribe`` messages for the ``l2`` feed, answers each new symbol with a snapshot
``l2_updates`` (all levels, plus ``trades`` and ``auction_events``), then sends diffs of one shared
book per symbol (levels on a price grid whose top follows the walk; a diff changes only what the
move needs, a level that disappears is sent with quantity 0: see `GeminiSim.data_frame`),
``heartbeat`` frames every few seconds with the venue time in ms, ``trade`` frames on demand
(`trade`), and ``GET /v1/pubticker/{symbol}``.

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

    def _grid(self, symbol: str) -> tuple[str, str, float]:
        """The best bid and ask (as sent) around the published mid now, and the price tick."""
        mid = self.paths[symbol].published(self.now())
        tick = 10.0 ** (math.floor(math.log10(mid)) - 4)
        half = max(mid * self.spread_bps / 20_000.0, tick)
        bid = _text(math.floor((mid - half) / tick) * tick, tick)
        return bid, _text(math.ceil((mid + half) / tick) * tick, tick), tick

    def levels(self, symbol: str) -> dict[tuple[str, str], str]:
        """A fresh book around the mid now, `depth` levels a side on the tick grid: (side, price
        text) -> quantity text. The book a symbol starts with; diffs evolve it from there."""
        bid, ask, tick = self._grid(symbol)
        path = self.paths[symbol]
        book: dict[tuple[str, str], str] = {}
        for k in range(self.depth):
            book["buy", _text(float(bid) - k * tick, tick)] = f"{path.size():.6f}"
            book["sell", _text(float(ask) + k * tick, tick)] = f"{path.size():.6f}"
        return book

    def _current(self, symbol: str) -> dict[tuple[str, str], str]:
        book = self._books.get(symbol)
        if book is None:
            book = self._books[symbol] = self.levels(symbol)
        return book

    def top(self, symbol: str) -> tuple[float, float]:
        """The best bid and ask of the book this venue has published for `symbol`."""
        book = self._current(symbol)
        return (
            max(float(p) for side, p in book if side == "buy"),
            min(float(p) for side, p in book if side == "sell"),
        )

    def data_frame(self, symbol: str, path: PricePath, now: float) -> str:
        """The changes that take the published book to the mid now, and no more, as the venue
        sends them: recorded Gemini diffs carry a median of two changes (three on average), so
        shifting the whole grid with every tick of the mid would be unrealistic (and slow).

        Levels the move made wrong leave (bids above the new best bid, asks below the new best
        ask) and the new best bid and ask appear if absent; deeper levels stay, gaps and all. A
        frame in which the top did not move changes one level of one side: a side holding more
        than `depth` levels loses its farthest, one holding fewer gains the free price nearest
        its best, else the best level gets a new size. A side gains at most one level a frame,
        and one beyond twice `depth` is trimmed at once from the far end, so the book stays
        bounded. The best bid and ask are therefore always those of `_grid`.
        """
        book = self._current(symbol)
        best_bid, best_ask, tick = self._grid(symbol)
        bid_f, ask_f = float(best_bid), float(best_ask)
        changes: list[list[str]] = []

        def remove(side: str, price: str) -> None:
            del book[side, price]
            changes.append([side, price, "0"])

        def add(side: str, price: str) -> None:
            qty = book[side, price] = f"{path.size():.6f}"
            changes.append([side, price, qty])

        bids: list[tuple[float, str]] = []  # (price, price as sent), best first once sorted
        asks: list[tuple[float, str]] = []
        for side, price in list(book):
            value = float(price)
            if side == "buy":
                if value > bid_f:
                    remove(side, price)
                else:
                    bids.append((value, price))
            elif value < ask_f:
                remove(side, price)
            else:
                asks.append((value, price))
        # Compared as numbers: after a change of tick one price may be written two ways.
        if all(value != bid_f for value, _ in bids):
            add("buy", best_bid)
            bids.append((bid_f, best_bid))
        if all(value != ask_f for value, _ in asks):
            add("sell", best_ask)
            asks.append((ask_f, best_ask))
        bids.sort(reverse=True)
        asks.sort()
        if not changes:
            side, levels, away = (
                ("buy", bids, -tick) if next(self.sequence) % 2 else ("sell", asks, tick)
            )
            if len(levels) > self.depth:
                remove(side, levels.pop()[1])
            elif len(levels) < self.depth:  # fewer than `depth` held: one of these is free
                held = {value for value, _ in levels}
                free = (_text(levels[0][0] + away * k, tick) for k in range(1, self.depth + 1))
                price = next(p for p in free if float(p) not in held)
                add(side, price if float(price) > 0.0 else levels[0][1])
            else:
                add(side, levels[0][1])
        for side, levels in (("buy", bids), ("sell", asks)):
            if len(levels) > 2 * self.depth:
                remove(side, levels[-1][1])
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
