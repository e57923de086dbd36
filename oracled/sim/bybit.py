"""A loopback Bybit v5 venue: ``/v5/public/spot`` and ``/v5/public/linear`` streams, REST tickers.

It speaks the real wire protocol (see oracled/sources/bybit.py for the docs): ``{"op":"subscribe",
"args":[...],"req_id":..}`` with ``{"success":true,...,"op":"subscribe"}`` acks and
``"success":false`` refusals, JSON pongs to the client's ``{"op":"ping"}`` (no protocol pings from
the server), spot ``orderbook.1.<SYMBOL>``, pushed as snapshots only (each the best level of both
sides with a new ``u``, as the venue's orderbook page says level 1 is sent),
and linear ``tickers.<SYMBOL>``, a snapshot to the subscriber and then deltas (which carry only the
fields that changed: some carry no price at all, only a best size), and
``GET /v5/market/tickers?category=spot|linear``.

Both categories list every symbol the simulator was given, each with its own price path: path keys
are ``"<category>:<SYMBOL>"`` (``"linear:BTCUSDT"``), which is what `spike`, `set_price` and `book`
take. Choices where the docs are silent: an unknown symbol refuses the whole request with
``Invalid symbol :[<topic>]`` (`error_req_id = False` leaves the ``req_id`` out, as in a recorded
refusal); a topic already subscribed is refused with ``already subscribed``; `ping_timeout_s`, when
set, cuts a client that has not pinged for that long (the real venue cuts after 10 minutes
without ping-pong or data). Every fault of `VenueSim` applies. Level-1 frames carry ``cts``, the
matching-engine time of the book, a little before ``ts``; as on the venue, a level-1 book that has
not changed for `repush_s` (3 s) is pushed again as a snapshot with the same ``u`` and ``cts``
and a new ``ts`` (seen here while the books are frozen, the only time they do not change).
REST ``time`` is the answer's own server time.

A REST rate limit is said as the v5 rate-limit page says it, inside HTTP 200: `rest_status` 429
answers ``{"retCode":10006,"retMsg":"Too many visits!",..}`` with ``X-Bapi-Limit``,
``X-Bapi-Limit-Status`` (0 left) and ``X-Bapi-Limit-Reset-Timestamp``, the epoch milliseconds
`rate_limit_reset_ms` ahead (every other answer sends the current time there, as the docs say).
`rate_limit_code` 10018 answers the IP limit's code instead (its message is ours: the page quotes
none for it). `rest_status` 403 is the IP ban that follows the IP limit, as the page words it:
HTTP 403, "access too frequent" (the page gives no body: plain text here is ours). Other statuses
stay generic. `rest_status_of` fails one category's REST calls alone (the source of that
category meets a limit first), and `rest_requests_of` counts each category's calls.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final

import aiohttp
from aiohttp import web

from oracled.sim._base import Client, Out, VenueSim
from oracled.sim.paths import PricePath

__all__ = ["GARBAGE", "BybitSim"]

_F: Final = 9_999_999_999_999  # far-future ts and update id: garbage is never dropped as stale
_CATEGORIES: Final = ("spot", "linear")
_API_LIMIT: Final = 10006  # the API rate limit's retCode
_LIMIT: Final = 600  # X-Bapi-Limit sent with REST answers (the docs' IP figure stands in)
_LIMIT_MESSAGES: Final = {_API_LIMIT: "Too many visits!", 10018: "Too many requests from this IP"}


def _level1(levels: str) -> str:
    return (
        f'{{"topic":"orderbook.1.BTCUSDT","type":"snapshot","ts":{_F},'
        f'"data":{{"s":"BTCUSDT",{levels},"u":{_F}}}}}'
    )


def _ticker(fields: str) -> str:
    return (
        f'{{"topic":"tickers.BTCUSDT","type":"delta","data":{{"symbol":"BTCUSDT",{fields}}},'
        f'"cs":1,"ts":{_F}}}'
    )


# One of each kind of bad frame the adapters must survive, for both topics: broken JSON, wrong
# shapes (a price that is null or true; a bare JSON number would be a valid price), and
# well-formed updates whose prices are NaN, infinite, zero, negative, not numbers or crossed. Each
# is counted once as malformed by a spot or a linear client (the other topic's frames are a wrong
# shape to it).
GARBAGE: Final[tuple[str, ...]] = (
    '{"topic":"orderbook.1.BTCUSDT","type":"delta","ts":',
    "not json at all",
    '{"topic":"orderbook.1.BTCUSDT","type":"delta","ts":1,"data":[1,2]}',
    '{"hello":"world"}',
    "[]",
    _level1('"b":[["NaN","1"]],"a":[["NaN","1"]]'),
    _level1('"b":[["inf","1"]],"a":[]'),
    _level1('"b":[["0","1"]],"a":[["0","1"]]'),
    _level1('"b":[["-5.00","1"]],"a":[["-4.00","1"]]'),
    _level1('"b":[["abc","1"]],"a":[]'),
    _level1('"b":[["67000.00","x"]],"a":[]'),
    _level1('"b":[["70000.00","1"]],"a":[["60000.00","1"]]'),
    _level1('"b":[[null,"1"]],"a":[]'),
    _ticker('"bid1Price":"NaN","ask1Price":"NaN"'),
    _ticker('"bid1Price":"","ask1Price":"67000.00"'),
    _ticker('"bid1Price":"-1.00","ask1Price":"-0.50"'),
    _ticker('"bid1Price":"70000.00","ask1Price":"60000.00"'),
    _ticker('"bid1Price":true'),
)


def _limit_headers(reset_ms: int, left: int) -> dict[str, str]:
    """The rate-limit headers every REST answer carries; the reset is the current time unless the
    limit was exceeded."""
    return {
        "X-Bapi-Limit": str(_LIMIT),
        "X-Bapi-Limit-Status": str(left),
        "X-Bapi-Limit-Reset-Timestamp": str(reset_ms),
    }


def _fmt(price: float) -> str:
    """Decimal text with about six significant digits, as the venue's tick sizes give."""
    decimals = max(2, min(8, 5 - math.floor(math.log10(price))))
    return f"{price:.{decimals}f}"


class BybitSim(VenueSim):
    """A Bybit v5 venue on loopback; see the module docstring for protocol and faults."""

    name = "bybit"
    GARBAGE: ClassVar[tuple[str, ...]] = GARBAGE

    def __init__(
        self,
        prices: Mapping[str, float],
        *,
        categories: Sequence[str] = _CATEGORIES,
        ping_timeout_s: float | None = None,
        message_limit: int = 10,
        repush_s: float = 3.0,
        rate_limit_reset_ms: int = 1_000,
        **kwargs: Any,
    ) -> None:
        keyed = {f"{c}:{s.upper()}": p for c in categories for s, p in prices.items()}
        super().__init__(keyed, message_limit=message_limit, **kwargs)
        self.ping_timeout_s = ping_timeout_s
        self.repush_s = repush_s
        #: How far ahead a rate-limit answer's ``X-Bapi-Limit-Reset-Timestamp`` lies.
        self.rate_limit_reset_ms = rate_limit_reset_ms
        #: Set: sent as that header's text instead (a garbled header, such as "inf" or "1e9").
        self.rate_limit_reset_text: str | None = None
        self.rate_limit_code = _API_LIMIT  # the retCode of `rest_status` 429's answer
        #: Category -> the status its REST calls fail with, as `rest_status` fails them all (a
        #: limit met by one category's source first), and each category's REST calls counted.
        self.rest_status_of: dict[str, int] = {}
        self.rest_requests_of: Counter[str] = Counter()
        self.repushed = 0  # level-1 snapshots pushed again for an unchanged book
        self._cts: dict[str, int] = {}  # matching-engine time of each spot book's last change
        self._pushed: dict[str, float] = {}  # loop time of each spot key's last frame
        self._sizes: dict[str, tuple[str, int]] = {}  # each spot key's last size and seq
        self.error_req_id = True
        self.pings_received = 0
        self._top: dict[str, tuple[str, str]] = {}  # last published bid/ask text per key
        self._u: dict[str, int] = {}  # update id per key (orderbook)
        self._ts: dict[str, int] = {}  # last frame time per key, strictly increasing
        self._deltas: dict[str, int] = {}  # linear deltas sent per key
        self._conn_ids = itertools.count(1)

    # ----------------------------------------------------------------- routes and control

    def routes(self, app: web.Application) -> None:
        for category in _CATEGORIES:
            app.router.add_get(f"/v5/public/{category}", self.ws_handler)
        app.router.add_get("/v5/market/tickers", self._rest_handler)

    def background(self) -> list[asyncio.Task[None]]:
        if self.ping_timeout_s is None:
            return []
        return [asyncio.create_task(self._reap(), name="sim:bybit:reap")]

    def on_connect(self, client: Client) -> None:
        client.state["category"] = client.request.path.rsplit("/", 1)[-1]
        client.state["conn_id"] = f"sim-{next(self._conn_ids)}"
        client.state["last_ping"] = self.now()

    def on_text(self, client: Client, text: str) -> None:
        try:
            req = json.loads(text)
        except ValueError:
            req = None
        if not isinstance(req, dict) or not isinstance(req.get("op"), str):
            self._reply(client, False, "error:request not json or op missing", "", None)
            return
        op, req_id = req["op"], req.get("req_id")
        if op == "ping":
            self.pings_received += 1
            client.state["last_ping"] = self.now()
            self._reply(client, True, "pong", "ping", req_id)
        elif op in ("subscribe", "unsubscribe"):
            self._subscribe(client, op, req.get("args"), req_id)
        else:
            self._reply(client, False, f"error:illegal op {op}", op, req_id)

    def _reply(self, client: Client, ok: bool, msg: str, op: str, req_id: Any) -> None:
        reply: dict[str, Any] = {"success": ok, "ret_msg": msg, "conn_id": client.state["conn_id"]}
        if req_id is not None and (ok or self.error_req_id):
            reply["req_id"] = req_id
        reply["op"] = op
        if not ok:
            self.stats.errors_sent += 1
        client.send(json.dumps(reply, separators=(",", ":")))

    def _key(self, client: Client, topic: str) -> str | None:
        """The path key of a topic this client's category serves, or None."""
        category = client.state["category"]
        prefix = "orderbook.1." if category == "spot" else "tickers."
        if not topic.startswith(prefix):
            return None
        key = f"{category}:{topic[len(prefix) :]}"
        return key if key in self.paths else None

    def _subscribe(self, client: Client, op: str, args: Any, req_id: Any) -> None:
        if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
            self._reply(client, False, "error:args must be a non-empty list", op, req_id)
            return
        if client.state["category"] == "spot" and len(args) > 10:
            self._reply(client, False, "error:args size >10", op, req_id)
            return
        keys = [self._key(client, topic) for topic in args]
        for topic, key in zip(args, keys, strict=True):
            if key is None:
                self._reply(client, False, f"Invalid symbol :[{topic}]", op, req_id)
                return
            if op == "subscribe" and key in client.streams:
                self._reply(client, False, f"error:already subscribed,topic:{topic}", op, req_id)
                return
        chosen = {k for k in keys if k is not None}
        spot = client.state["category"] == "spot"
        if op == "unsubscribe":
            client.streams -= chosen
            self._reply(client, True, "", op, req_id)
            return
        client.streams |= chosen
        self._reply(client, True, "subscribe" if spot else "", op, req_id)
        for key in sorted(chosen):
            client.send(self.snapshot_frame(key), Out.DATA)

    async def _reap(self) -> None:
        """Cut clients that stopped pinging (only when `ping_timeout_s` is set)."""
        assert self.ping_timeout_s is not None
        while True:
            await asyncio.sleep(min(self.ping_timeout_s / 4, 1.0))
            now = self.now()
            for client in list(self.clients):
                last = client.state["last_ping"]
                assert isinstance(last, float)
                if now - last > self.ping_timeout_s:
                    self.stats.pong_timeouts += 1
                    await client.ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION)

    # ----------------------------------------------------------------- frames

    def _tick(self, key: str) -> int:
        """A frame time in ms, strictly increasing per key so that replays are recognisable."""
        ts = max(int(time.time() * 1000), self._ts.get(key, 0) + 1)
        self._ts[key] = ts
        return ts

    def _texts(self, key: str) -> tuple[str, str]:
        bid, ask = self.book(key)
        return _fmt(bid), _fmt(ask)

    def snapshot_frame(self, key: str) -> str:
        """The full state a new subscriber gets first."""
        category, symbol = key.split(":", 1)
        bid, ask = self._top.get(key) or self._texts(key)
        self._top[key] = (bid, ask)
        size = f"{self.paths[key].size():.3f}"
        if category == "spot":
            u = self._u.setdefault(key, 1)
            ts, seq = self._tick(key), next(self.sequence)
            cts = self._cts.setdefault(key, ts - 2)
            self._pushed[key], self._sizes[key] = self.now(), (size, seq)
            return (
                f'{{"topic":"orderbook.1.{symbol}","type":"snapshot","ts":{ts},'
                f'"data":{{"s":"{symbol}","b":[["{bid}","{size}"]],"a":[["{ask}","{size}"]],'
                f'"u":{u},"seq":{seq}}},"cts":{cts}}}'
            )
        mid = _fmt((float(bid) + float(ask)) / 2)
        data = {
            "symbol": symbol,
            "tickDirection": "PlusTick",
            "price24hPcnt": "0.0012",
            "lastPrice": ask,
            "prevPrice24h": mid,
            "highPrice24h": ask,
            "lowPrice24h": bid,
            "prevPrice1h": mid,
            "markPrice": mid,
            "indexPrice": mid,
            "openInterest": "68744.761",
            "openInterestValue": "1183601235.91",
            "turnover24h": "1570383121.943499",
            "volume24h": "91705.276",
            "nextFundingTime": "1673280000000",
            "fundingRate": "0.0001",
            "bid1Price": bid,
            "bid1Size": size,
            "ask1Price": ask,
            "ask1Size": size,
        }
        frame = {
            "topic": f"tickers.{symbol}",
            "type": "snapshot",
            "data": data,
            "cs": next(self.sequence),
            "ts": self._tick(key),
        }
        return json.dumps(frame, separators=(",", ":"))

    def data_frame(self, symbol: str, path: PricePath, now: float) -> str:
        key = symbol  # the base passes the path key
        category, name = key.split(":", 1)
        bid, ask = self._texts(key)
        self._top[key] = (bid, ask)
        size = f"{path.size():.3f}"
        if category == "spot":
            # Level 1 is pushed as snapshots only (the venue's docs): the whole best level of
            # each side, a new `u` for each change.
            u = self._u.get(key, 0) + 1
            self._u[key] = u
            ts, seq = self._tick(key), next(self.sequence)
            cts = self._cts[key] = ts - 2
            self._pushed[key], self._sizes[key] = now, (size, seq)
            return (
                f'{{"topic":"orderbook.1.{name}","type":"snapshot","ts":{ts},'
                f'"data":{{"s":"{name}","b":[["{bid}","{size}"]],"a":[["{ask}","{size}"]],'
                f'"u":{u},"seq":{seq}}},"cts":{cts}}}'
            )
        # Every fourth delta of each symbol changes no price, only a best size: the kept prices
        # must hold. (Counted per symbol: one count for all would give these deltas always to
        # the same symbols when their number is a multiple of four, and their prices would never
        # move.) A delta without any best level or last price is no quote (`unchanged`).
        sent = self._deltas[key] = self._deltas.get(key, 0) + 1
        if sent % 4 == 0:
            fields = (
                f'"symbol":"{name}","bid1Size":"{size}","openInterest":"{path.size() * 1000:.3f}"'
            )
        else:
            fields = (
                f'"symbol":"{name}","lastPrice":"{ask}","bid1Price":"{bid}","bid1Size":"{size}",'
                f'"ask1Price":"{ask}","ask1Size":"{size}"'
            )
        return (
            f'{{"topic":"tickers.{name}","type":"delta","data":{{{fields}}},'
            f'"cs":{next(self.sequence)},"ts":{self._tick(key)}}}'
        )

    def held_frame(self, symbol: str, now: float) -> str | None:
        """A frozen spot book is pushed again every `repush_s`: a snapshot of the same book
        (``u``, ``seq`` and ``cts`` too) with a new ``ts`` (linear tickers send nothing)."""
        key = symbol  # the base passes the path key
        category, name = key.split(":", 1)
        if category != "spot" or key not in self._top:
            return None
        if now - self._pushed.get(key, now) < self.repush_s:
            return None
        self._pushed[key] = now
        self.repushed += 1
        bid, ask = self._top[key]
        size, seq = self._sizes[key]
        return (
            f'{{"topic":"orderbook.1.{name}","type":"snapshot","ts":{self._tick(key)},'
            f'"data":{{"s":"{name}","b":[["{bid}","{size}"]],"a":[["{ask}","{size}"]],'
            f'"u":{self._u[key]},"seq":{seq}}},"cts":{self._cts[key]}}}'
        )

    # ----------------------------------------------------------------- REST

    async def _rest_handler(self, request: web.Request) -> web.Response:
        category = request.query.get("category", "")
        self.rest_requests_of[category] += 1
        refused = await self.rest_gate()
        if refused is not None:
            return refused
        if (status := self.rest_status_of.get(category)) is not None:
            return self.rest_refusal(status)
        ms = int(time.time() * 1000)
        keys = sorted(k for k in self.paths if k.split(":", 1)[0] == category)
        if category not in _CATEGORIES:
            return self._rest_error(10001, "Illegal category", ms)
        symbol = request.query.get("symbol")
        if symbol is not None:
            keys = [k for k in keys if k == f"{category}:{symbol}"]
            if not keys:
                return self._rest_error(10001, "Not supported symbols", ms)
        rows = [self._rest_row(k) for k in keys]
        body = {
            "retCode": 0,
            "retMsg": "OK",
            "result": {"category": category, "list": rows},
            "retExtInfo": {},
            "time": ms,
        }
        return web.json_response(body, headers=_limit_headers(ms, left=_LIMIT - 1))

    def _rest_row(self, key: str) -> dict[str, str]:
        category, symbol = key.split(":", 1)
        bid, ask = self._texts(key)
        size = f"{self.paths[key].size():.3f}"
        row = {
            "symbol": symbol,
            "bid1Price": bid,
            "bid1Size": size,
            "ask1Price": ask,
            "ask1Size": size,
            "lastPrice": ask,
            "prevPrice24h": bid,
            "price24hPcnt": "0.0012",
            "highPrice24h": ask,
            "lowPrice24h": bid,
            "turnover24h": "95949815.680875",
            "volume24h": "5865.470182",
        }
        if category == "linear":
            row |= {"markPrice": bid, "indexPrice": bid, "fundingRate": "0.0001"}
        return row

    def reset(self) -> None:
        super().reset()
        self.rate_limit_code = _API_LIMIT
        self.rate_limit_reset_text = None
        self.rest_status_of = {}

    def rest_refusal(self, status: int) -> web.Response:
        """A 429 is said as Bybit says a rate limit: a code inside HTTP 200, the reset ahead in
        ``X-Bapi-Limit-Reset-Timestamp``; a 403 as its IP ban, in the page's words."""
        if status == 403:
            return web.Response(status=403, text="access too frequent")
        if status != 429:
            return super().rest_refusal(status)
        ms = int(time.time() * 1000)
        code = self.rate_limit_code
        reply = self._rest_error(code, _LIMIT_MESSAGES.get(code, "rate limit"), ms)
        reply.headers.update(_limit_headers(ms + self.rate_limit_reset_ms, left=0))
        if self.rate_limit_reset_text is not None:
            reply.headers["X-Bapi-Limit-Reset-Timestamp"] = self.rate_limit_reset_text
        return reply

    @staticmethod
    def _rest_error(code: int, msg: str, ms: int) -> web.Response:
        body = {"retCode": code, "retMsg": msg, "result": {}, "retExtInfo": {}, "time": ms}
        return web.json_response(body, headers=_limit_headers(ms, left=_LIMIT - 1))
