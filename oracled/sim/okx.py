"""A loopback OKX v5 venue: the public ``tickers`` WebSocket channel and REST tickers, with faults.

It speaks the protocol described in oracled/sources/okx.py: ``{"op":"subscribe","args":[...]}``
with an optional ``id`` echoed in every answer, one ``{"event":"subscribe","arg":{..},"connId":..}``
ack per arg, ``{"event":"error","code":"60018",..}`` for an instrument it does not list (the other
args of the request are still subscribed, as on the venue), ``60012`` for a request it cannot read,
the text ``ping`` answered by ``pong``, ``notice`` 64008 on demand (`notice()`), ticker pushes
shaped like the 2022 recording, ``GET /api/v5/market/tickers?instType=`` and
``GET /api/v5/market/ticker?instId=``.

REST errors are worded as the docs' error table has them: a body ``{"code":..,"msg":..,
"data":[]}`` under the status the table gives the code. An unknown ``instId`` is 51001 "Instrument
ID does not exist" with HTTP 200; a bad ``instType`` 51000 with 400; `rest_status` 429 is 50011
"Rate limit reached" (no Retry-After: the docs name none), 503 is 50001 "Service temporarily
unavailable", 500 is 50026 "System error". `code_status`, when set, sends every such answer under
that status instead (a gateway that words them otherwise: the client must read the code either
way).

A subscription is answered, after the request's acks, with each newly subscribed instrument's
current ticker: the last one made, in the push's own shape, its ``ts`` the time the book last
changed however long ago (the venue's opening, if it never changed). The docs say only that a
ticker is pushed on a trade or a change of the best bid or ask; the venue also answers each
subscription: in the 2022 recording each ``tickers`` arg was answered 3 ms after the acks with
a ticker 2.4 to 2.5 s old, stamped before the subscribe was sent (``UNI-USD-SWAP`` sent nothing
else in 11 s), and the same args asked again on the connection were acked with no second
ticker. A muted instrument's ticker goes out too; a silent venue answers nothing.

Instruments are named as on the venue: ``BTC-USDT`` is spot, ``BTC-USDT-SWAP`` a perpetual swap.
Each instrument's ``ts`` strictly increases, as a real 100 ms ticker does, so that a `replay_stale`
frame is recognisably older. A client over ``message_limit`` messages a second is closed with 1008:
OKX documents only 3 connection requests a second and 480 subscribe requests an hour, so this is a
stricter stand-in that keeps the client's pacing honest. With `idle_timeout_s` set, a connection
that has had neither a message from its client nor a push for that long is closed (1008; counted in
`idle_cuts`), as the venue closes one after 30 s without data unless the client pings (its
WebSocket overview: a client keeps a quiet connection with the text ``ping``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from collections.abc import Mapping
from typing import Any, ClassVar, Final

import aiohttp
from aiohttp import web

from oracled.sim._base import Client, Out, SimStats, VenueSim
from oracled.sim.paths import PricePath

__all__ = ["GARBAGE", "OkxSim", "SimStats"]

_UPGRADE: Final = "The connection will soon be closed for a service upgrade. Please reconnect."
#: `rest_status`'s answers, as the docs' error table words them: status -> (code, msg).
_REFUSALS: Final = {
    429: ("50011", "Rate limit reached. Please refer to API documentation and throttle requests "
          "accordingly."),
    503: ("50001", "Service temporarily unavailable. Try again later"),
    500: ("50026", "System error. Try again later"),
}  # fmt: skip
_PUSH: Final = '{{"arg":{{"channel":"tickers","instId":"{sym}"}},"data":[{row}]}}'

# One of each kind of bad frame: broken JSON, truncated, wrong shapes, and well-formed tickers whose
# prices are NaN, infinite, zero, negative, empty (no book side), not numbers, or crossed. Their
# far-future ts keeps the adapter's ordering check from hiding them behind an older-frame drop.
GARBAGE: Final[tuple[str, ...]] = (
    '{"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[{"instType":"SPOT","instId":"BTC-US',
    "not json at all",
    '{"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":{"bidPx":"1","askPx":"2"}}',
    '{"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[]}',
    '{"event":"mystery"}',
    "[]",
    '{"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT",'
    '"bidPx":"NaN","askPx":"NaN","ts":"9999999999999"}]}',
    '{"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT",'
    '"bidPx":"inf","askPx":"inf","ts":"9999999999999"}]}',
    '{"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT",'
    '"bidPx":"0","askPx":"0","ts":"9999999999999"}]}',
    '{"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT",'
    '"bidPx":"-5","askPx":"-4","ts":"9999999999999"}]}',
    '{"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT",'
    '"bidPx":"","askPx":"67000.1","ts":"9999999999999"}]}',
    '{"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT",'
    '"bidPx":"abc","askPx":"1","ts":"9999999999999"}]}',
    '{"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT",'
    '"bidPx":"70000","askPx":"60000","ts":"9999999999999"}]}',
    '{"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT",'
    '"bidPx":67000.1,"askPx":67000.2,"ts":"9999999999999"}]}',
)


def _num(value: float) -> str:
    """OKX prints decimals without trailing zeros (``30236``, ``30228.7``)."""
    text = f"{value:.8f}".rstrip("0")
    return text.rstrip(".") if text.endswith(".") else text


class OkxSim(VenueSim):
    """An OKX v5 public venue on loopback; see the module docstring for the protocol and faults."""

    name = "okx"
    GARBAGE: ClassVar[tuple[str, ...]] = GARBAGE

    def __init__(
        self,
        prices: Mapping[str, float],
        *,
        message_limit: int = 3,
        idle_timeout_s: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(prices, message_limit=message_limit, **kwargs)
        self.idle_timeout_s = idle_timeout_s
        #: The HTTP status of every answer carrying an error code; None: the documented one.
        self.code_status: int | None = None
        self.idle_cuts = 0  # connections closed for the venue's 30-s rule (`idle_timeout_s`)
        self.pings_received = 0  # text "ping" messages from clients
        self._last_ts: dict[str, int] = {}
        self._current: dict[str, dict[str, str]] = {}  # each instrument's last ticker made
        self._conn_ids = itertools.count(0xA4D3AE55)
        self._epoch_ms = 0.0
        self._epoch_loop = 0.0

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/ws/v5/public", self.ws_handler)
        app.router.add_get("/api/v5/market/tickers", self._tickers)
        app.router.add_get("/api/v5/market/ticker", self._ticker)

    def on_connect(self, client: Client) -> None:
        client.state["connId"] = f"{next(self._conn_ids):08x}"[-8:]
        client.state["active"] = self.now()

    def background(self) -> list[asyncio.Task[None]]:
        if self.idle_timeout_s is None:
            return []
        return [asyncio.create_task(self._reap(), name="sim:okx:idle")]

    async def _reap(self) -> None:
        """Close each connection that has had no message from its client (a ``ping`` is one, and
        is answered) and no push for `idle_timeout_s`: the venue's 30-s rule."""
        assert self.idle_timeout_s is not None
        limit = self.idle_timeout_s
        while True:
            await asyncio.sleep(min(limit / 4, 1.0))
            now = self.now()
            for client in list(self.clients):
                active = client.state["active"]
                assert isinstance(active, float)
                if now - active > limit:
                    self.idle_cuts += 1
                    client.state["active"] = math.inf  # closed once
                    await client.ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION)

    def _fan_out(self, symbol: str, frame: str, *, remember: bool = True) -> int:
        sent = super()._fan_out(symbol, frame, remember=remember)
        if sent:  # a push keeps its subscribers' connections alive
            now = self.now()
            for client in self.clients:
                if symbol in client.streams:
                    client.state["active"] = now
        return sent

    def notice(self) -> None:
        """Announce a close for a service upgrade (64008) to every client, as the venue does."""
        for client in self.clients:
            self._event(client, None, event="notice", code="64008", msg=_UPGRADE)

    # ----------------------------------------------------------------- WebSocket protocol

    def on_text(self, client: Client, text: str) -> None:
        client.state["active"] = self.now()
        if text == "ping":
            self.pings_received += 1
            client.send("pong")
            return
        try:
            req = json.loads(text)
        except ValueError:
            req = None
        if not isinstance(req, dict) or req.get("op") not in ("subscribe", "unsubscribe"):
            self._error(client, None, "60012", f"Invalid request: {text[:100]}")
            return
        request_id = req.get("id")
        args = req.get("args")
        if not isinstance(args, list) or not args:
            self._error(client, request_id, "60012", f"Invalid request: {text[:100]}")
            return
        fresh: list[str] = []  # instruments this request subscribed anew: each gets a snapshot
        for arg in args:
            channel = arg.get("channel") if isinstance(arg, dict) else None
            inst = arg.get("instId") if isinstance(arg, dict) else None
            if channel != "tickers" or inst not in self.paths:
                self._error(
                    client,
                    request_id,
                    "60018",
                    f"Wrong URL or channel:{channel},instId:{inst} doesn't exist. Please use the "
                    "correct URL, channel and parameters referring to API document.",
                )
                continue
            if req["op"] == "subscribe":
                if inst not in client.streams:
                    fresh.append(inst)
                client.streams.add(inst)
            else:
                client.streams.discard(inst)
            self._event(
                client, request_id, event=req["op"], arg={"channel": channel, "instId": inst}
            )
        for inst in fresh:
            client.send(self.snapshot_frame(inst), Out.DATA)

    def _event(self, client: Client, request_id: Any, **fields: Any) -> None:
        body = {"id": request_id} if request_id is not None else {}
        body.update(fields)
        body["connId"] = client.state["connId"]
        client.send(json.dumps(body, separators=(",", ":")))

    def _error(self, client: Client, request_id: Any, code: str, msg: str) -> None:
        self.stats.errors_sent += 1
        self._event(client, request_id, event="error", code=code, msg=msg)

    def data_frame(self, symbol: str, path: PricePath, now: float) -> str:
        return _PUSH.format(sym=symbol, row=json.dumps(self._row(symbol, path, now)))

    def snapshot_frame(self, symbol: str) -> str:
        """The ticker a new subscription to `symbol` is answered with: the current one, as
        last made (pushed or polled), its ``ts`` the book's last change; before the first, the
        book as it opened, stamped with the opening."""
        row = self._current.get(symbol)
        if row is None:
            row = self._row(symbol, self.paths[symbol], self.now(), ts=int(self._epoch_ms))
        return _PUSH.format(sym=symbol, row=json.dumps(row))

    def _row(
        self, symbol: str, path: PricePath, now: float, ts: int | None = None
    ) -> dict[str, str]:
        bid, ask = self.book(symbol)
        # Unique, strictly increasing event times per instrument; a frozen book's ticker is the
        # one generated last, time included.
        if ts is None:
            ts = self._last_ts.get(symbol, 0)
            if not (self.frozen and ts):
                ts = max(int(self._wall_ms()), ts + 1)
        self._last_ts[symbol] = ts
        size = _num(path.size())
        mid = (bid + ask) / 2.0
        row = self._current[symbol] = {
            "instType": "SWAP" if symbol.endswith("-SWAP") else "SPOT",
            "instId": symbol,
            "last": _num(mid),
            "lastSz": size,
            "askPx": _num(ask),
            "askSz": size,
            "bidPx": _num(bid),
            "bidSz": size,
            "open24h": _num(mid),
            "high24h": _num(mid * 1.01),
            "low24h": _num(mid * 0.99),
            "sodUtc0": _num(mid),
            "sodUtc8": _num(mid),
            "volCcy24h": "1000",
            "vol24h": "10",
            "ts": str(ts),
        }
        return row

    def _wall_ms(self) -> float:
        # Event times look like the venue's (Unix ms) but advance with the loop's clock.
        return self._epoch_ms + (self.now() - self._epoch_loop) * 1000.0

    async def start(self) -> None:
        self._epoch_ms = time.time() * 1000.0
        self._epoch_loop = self.now()
        await super().start()

    # ----------------------------------------------------------------- REST

    async def _tickers(self, request: web.Request) -> web.Response:
        refused = await self.rest_gate()
        if refused is not None:
            return refused
        inst_type = request.query.get("instType")
        if inst_type not in ("SPOT", "SWAP", "FUTURES", "OPTION"):
            return self._rest_error(400, "51000", "Parameter instType error")
        now = self.now()
        rows = [
            self._row(sym, path, now)
            for sym, path in self.paths.items()
            if sym.endswith("-SWAP") == (inst_type == "SWAP") and inst_type in ("SPOT", "SWAP")
        ]
        return web.json_response({"code": "0", "msg": "", "data": rows})

    async def _ticker(self, request: web.Request) -> web.Response:
        refused = await self.rest_gate()
        if refused is not None:
            return refused
        symbol = request.query.get("instId", "")
        if symbol not in self.paths:
            return self._rest_error(200, "51001", "Instrument ID does not exist")
        row = self._row(symbol, self.paths[symbol], self.now())
        return web.json_response({"code": "0", "msg": "", "data": [row]})

    def rest_refusal(self, status: int) -> web.Response:
        """`rest_status`'s answer, coded as the venue codes it where the docs give the status."""
        if status not in _REFUSALS:
            return super().rest_refusal(status)
        return self._rest_error(status, *_REFUSALS[status])

    def _rest_error(self, status: int, code: str, msg: str) -> web.Response:
        """An error answer: OKX's body, under `status` unless `code_status` says otherwise."""
        body = {"code": code, "msg": msg, "data": []}
        return web.json_response(body, status=self.code_status or status)

    def reset(self) -> None:
        super().reset()
        self.code_status = None
