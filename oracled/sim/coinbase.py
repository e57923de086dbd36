"""A loopback Coinbase Advanced Trade venue: the market-data WebSocket and the REST ticker.

It speaks the protocol described in oracled/sources/coinbase.py: one-channel subscribe messages
(``ticker`` with ``product_ids``, ``heartbeats`` without), a ``subscriptions`` message answering
each subscribe with everything the connection holds, a ``snapshot`` ticker event per product on
subscribe then ``update`` events, ``heartbeats`` once a second to subscribed connections only,
``sequence_num`` on every channel message, error frames ``{"type":"error","message":...}``, the
limit of 8 incoming messages a second (a client over it is closed with 1008), and
``GET /api/v3/brokerage/market/products/{product_id}/ticker``.

Assumptions where the public docs are silent: a subscribe naming an unknown product is refused
whole with ``{"type":"error","message":"Failed to subscribe","reason":"<id> is not a valid
product"}`` (the older Exchange feed's shape), and an unknown product on REST answers 400
``INVALID_ARGUMENT`` (``unknown_status=404``: 404 ``NOT_FOUND`` in the same envelope, the other
answer the adapter takes as that product refused; the docs name neither, and the wording of both
is the simulator's). ``sequence_num`` comes from one counter shared by all connections, so each
connection sees it strictly increasing (the venue's docs do not say what it counts; the adapter's
check holds whichever way it is counted).

-USDC products: the docs say that on market-data channels a -USDC product (but USDT-USDC and
EURC-USDC) returns the same data as the matching -USD product, not which product id the frames
carry. By default a -USDC product listed in ``prices`` is a book of its own, named as subscribed;
``usdc_as_usd=True`` serves a -USDC product whose -USD twin is listed with the twin's book under
the twin's name (subscription, acknowledgement, tickers and REST alike).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

from aiohttp import web

from oracled.sim._base import Client, Out, VenueSim
from oracled.sim.paths import PricePath

__all__ = ["GARBAGE", "CoinbaseSim", "price_text"]

_TICK: Final = '{"type":"ticker","product_id":"BTC-USD","price":"67000.00",'

# One of each kind of bad frame: broken JSON, wrong shapes, and well-formed tickers whose prices
# are NaN, infinite, zero, negative, not numbers, empty, or crossed, and an unreadable timestamp.
GARBAGE: Final[tuple[str, ...]] = (
    '{"channel":"ticker","client_id":"","timestamp":"2026-04-07T14:30:03.000000Z","sequence_n',
    "not json at all",
    '{"channel":"ticker","events":[{"type":"update","tickers":[1,2,3]}]}',
    '{"channel":"ticker","events":[{"type":"update","tickers":[{"type":"ticker",'
    '"product_id":"BTC-USD","best_bid":67000.1,"best_ask":67000.2}]}]}',
    '{"hello":"world"}',
    "[]",
    '{"channel":"ticker","events":[{"type":"update","tickers":['
    + _TICK
    + '"best_bid":"NaN","best_ask":"NaN"}]}]}',
    '{"channel":"ticker","events":[{"type":"update","tickers":['
    + _TICK
    + '"best_bid":"Infinity","best_ask":"Infinity"}]}]}',
    '{"channel":"ticker","events":[{"type":"update","tickers":['
    + _TICK
    + '"best_bid":"0.00","best_ask":"0.00"}]}]}',
    '{"channel":"ticker","events":[{"type":"update","tickers":['
    + _TICK
    + '"best_bid":"-5.00","best_ask":"-4.00"}]}]}',
    '{"channel":"ticker","events":[{"type":"update","tickers":['
    + _TICK
    + '"best_bid":"abc","best_ask":"67000.01"}]}]}',
    '{"channel":"ticker","events":[{"type":"update","tickers":['
    + _TICK
    + '"best_bid":"","best_ask":""}]}]}',
    '{"channel":"ticker","events":[{"type":"update","tickers":['
    + _TICK
    + '"best_bid":"70000.00","best_ask":"60000.00"}]}]}',
    '{"channel":"ticker","timestamp":"yesterday","events":[{"type":"update","tickers":['
    + _TICK
    + '"best_bid":"67000.00","best_ask":"67000.01"}]}]}',
)


def price_text(price: float) -> str:
    """A price with the venue's usual precision: cents for large prices, more digits below."""
    if price >= 100.0:
        return f"{price:.2f}"
    if price >= 1.0:
        return f"{price:.4f}"
    return f"{price:.8f}"


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class CoinbaseSim(VenueSim):
    """A Coinbase Advanced Trade venue on loopback; see the module docstring."""

    name = "coinbase"
    GARBAGE: ClassVar[tuple[str, ...]] = GARBAGE

    def __init__(
        self,
        prices: Mapping[str, float],
        *,
        heartbeat_s: float = 1.0,
        message_limit: int = 8,
        usdc_as_usd: bool = False,
        unknown_status: int = 400,
        **kwargs: Any,
    ) -> None:
        super().__init__(prices, message_limit=message_limit, **kwargs)
        self.heartbeat_s = heartbeat_s
        self.usdc_as_usd = usdc_as_usd
        self.unknown_status = unknown_status
        self._beats = 0

    def served(self, product: str) -> str:
        """The book a product id is served from: its -USD twin's under `usdc_as_usd`."""
        if self.usdc_as_usd and product.endswith("-USDC") and product[:-1] in self.paths:
            return product[:-1]
        return product

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.ws_handler)
        app.router.add_get(
            "/api/v3/brokerage/market/products/{product_id}/ticker", self._rest_handler
        )

    def background(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self._heartbeat_loop(), name="sim:coinbase:heartbeats")]

    def restart_sequence(self) -> None:
        """Start ``sequence_num`` over from 1 on the open connections, as a venue failover
        behind the same socket would (a fault for tests: the numbers go far back)."""
        self.sequence = itertools.count(1)

    def envelope(self, channel: str, events: list[dict[str, Any]]) -> str:
        """One channel message with the next sequence number."""
        body = {
            "channel": channel,
            "client_id": "",
            "timestamp": _stamp(),
            "sequence_num": next(self.sequence),
            "events": events,
        }
        return json.dumps(body, separators=(",", ":"))

    def ticker(self, symbol: str, kind: str = "update") -> str:
        """A ticker message for `symbol` at the current book."""
        bid, ask = self.book(symbol)
        path = self.paths[symbol]
        mid = path.published(self.now())
        row = {
            "type": "ticker",
            "product_id": symbol,
            "price": price_text(mid),
            "volume_24_h": "15328.12345678",
            "low_24_h": price_text(mid * 0.98),
            "high_24_h": price_text(mid * 1.02),
            "low_52_w": price_text(mid * 0.5),
            "high_52_w": price_text(mid * 1.5),
            "price_percent_chg_24_h": "1.85",
            "best_bid": price_text(bid),
            "best_bid_quantity": f"{path.size():.8f}",
            "best_ask": price_text(ask),
            "best_ask_quantity": f"{path.size():.8f}",
        }
        return self.envelope("ticker", [{"type": kind, "tickers": [row]}])

    def data_frame(self, symbol: str, path: PricePath, now: float) -> str:
        return self.ticker(symbol)

    def on_text(self, client: Client, text: str) -> None:
        try:
            req = json.loads(text)
        except ValueError:
            self._error(client, "Failed to parse the request", "malformed JSON")
            return
        if not isinstance(req, dict) or req.get("type") not in ("subscribe", "unsubscribe"):
            self._error(client, "Failed to subscribe", "unknown message type")
            return
        channel = req.get("channel")
        subscribe = req["type"] == "subscribe"
        if channel == "heartbeats":
            client.state["heartbeats"] = subscribe
            self._ack(client)
            return
        if channel != "ticker":
            self._error(client, "Failed to subscribe", f"unsupported channel {channel!r}")
            return
        products = req.get("product_ids")
        if not isinstance(products, list) or not products:
            self._error(client, "Failed to subscribe", "product_ids is required")
            return
        products = [self.served(p) if isinstance(p, str) else p for p in products]
        unknown = [p for p in products if p not in self.paths]
        if unknown:
            self._error(client, "Failed to subscribe", f"{unknown[0]} is not a valid product")
            return
        if not subscribe:
            client.streams.difference_update(products)
            self._ack(client)
            return
        client.streams.update(products)
        self._ack(client)
        for product in products:
            client.send(self.ticker(product, "snapshot"), Out.DATA)

    def _ack(self, client: Client) -> None:
        listed: dict[str, list[str]] = {}
        if client.streams:
            listed["ticker"] = sorted(client.streams)
        if client.state.get("heartbeats"):
            listed["heartbeats"] = ["heartbeats"]
        client.send(self.envelope("subscriptions", [{"subscriptions": listed}]))

    def _error(self, client: Client, message: str, reason: str) -> None:
        self.stats.errors_sent += 1
        body = {"type": "error", "message": message, "reason": reason}
        client.send(json.dumps(body, separators=(",", ":")))

    async def _heartbeat_loop(self) -> None:
        """One heartbeat a second to each connection subscribed to the heartbeats channel."""
        while True:
            await asyncio.sleep(self.heartbeat_s)
            if self.silent:
                continue
            self._beats += 1
            event = {
                "current_time": datetime.now(UTC).isoformat(sep=" "),
                "heartbeat_counter": self._beats,
            }
            for client in self.clients:
                if client.state.get("heartbeats"):
                    client.outbox.put_nowait((Out.HEARTBEAT, self.envelope("heartbeats", [event])))

    async def _rest_handler(self, request: web.Request) -> web.Response:
        refused = await self.rest_gate()
        if refused is not None:
            return refused
        product = self.served(request.match_info["product_id"])
        if product not in self.paths:
            if self.unknown_status == 404:
                code, detail = "NOT_FOUND", f"product {product} not found"
            else:
                code, detail = "INVALID_ARGUMENT", "valid product_id is required"
            error = {"error": code, "error_details": detail, "message": detail}
            return web.json_response(error, status=self.unknown_status)
        bid, ask = self.book(product)
        path = self.paths[product]
        trade = {
            "trade_id": str(next(self.sequence)),
            "product_id": product,
            "price": price_text(ask),
            "size": f"{path.size():.8f}",
            "time": _stamp(),
            "side": "BUY",
            "bid": "",
            "ask": "",
            "exchange": "coinbase",
        }
        body: dict[str, Any] = {
            "trades": [trade],
            "best_bid": price_text(bid),
            "best_ask": price_text(ask),
        }
        return web.json_response(body)
