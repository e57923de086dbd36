"""A loopback Binance USDⓈ-M futures venue: ``/public`` book tickers and REST.

It speaks the real wire protocol (see oracled/sources/binance_usdm.py for the docs): combined
``<symbol>@bookTicker`` frames with ``e``/``u``/``E``/``T`` on ``/public/stream``, the spot-style
``SUBSCRIBE`` / ``UNSUBSCRIBE`` / ``LIST_SUBSCRIPTIONS`` control messages with their acks and
errors (`BinanceSim`'s), protocol pings every 3 minutes with a 10 minute pong deadline, the 10
incoming messages a second limit, and ``GET /fapi/v1/ticker/bookTicker`` (one symbol, or all of
them). The venue's other paths (``/market`` mark prices among them) are not served: the adapter
does not use them.

As in `BinanceSim`, an unknown stream gets an error frame and refuses the whole request (the real
venue accepts a well-formed unknown stream and stays silent), so that the adapter's error path
can be exercised. Every fault of `VenueSim` applies.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from aiohttp import web

from oracled.sim.binance import BinanceSim
from oracled.sim.paths import PricePath

__all__ = ["GARBAGE", "BinanceUsdmSim"]

_BOOK: Final = "@bookTicker"
_FUTURE: Final = 9_999_999_999_999  # update id and time far ahead: no garbage is dropped as stale


def _book(fields: str) -> str:
    return f'{{"stream":"btcusdt@bookTicker","data":{{"e":"bookTicker",{fields}}}}}'


def _ids(u: int) -> str:
    return f'"u":{_FUTURE - u},"E":{_FUTURE},"T":{_FUTURE},"s":"BTCUSDT"'


# One of each kind of bad frame the adapter must survive: broken JSON, wrong shapes (null prices; a
# bare JSON number would be a valid price), and well-formed book tickers whose prices are NaN,
# infinite, zero, negative, not numbers, crossed.
GARBAGE: Final[tuple[str, ...]] = (
    _book(f'{_ids(1)},"b":'),
    "not json at all",
    '{"stream":"btcusdt@bookTicker","data":[1,2,3]}',
    _book(f'{_ids(2)},"b":null,"B":"1","a":null,"A":"1"'),
    '{"hello":"world"}',
    "[]",
    _book(f'{_ids(3)},"b":"NaN","B":"1","a":"NaN","A":"1"'),
    _book(f'{_ids(4)},"b":"inf","B":"1","a":"inf","A":"1"'),
    _book(f'{_ids(5)},"b":"0.00","B":"1","a":"0.00","A":"1"'),
    _book(f'{_ids(6)},"b":"-5.00","B":"1","a":"-4.00","A":"1"'),
    _book(f'{_ids(7)},"b":"abc","B":"1","a":"1","A":"1"'),
    _book(f'{_ids(8)},"b":"70000.00","B":"1","a":"60000.00","A":"1"'),
)


class BinanceUsdmSim(BinanceSim):
    """A Binance USDⓈ-M venue on loopback; see the module docstring for protocol and faults."""

    name = "binance_usdm"
    GARBAGE: ClassVar[tuple[str, ...]] = GARBAGE

    def __init__(
        self,
        prices: Mapping[str, float],
        *,
        ping_interval_s: float = 180.0,
        pong_timeout_s: float = 600.0,
        message_limit: int = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            prices,
            ping_interval_s=ping_interval_s,
            pong_timeout_s=pong_timeout_s,
            message_limit=message_limit,
            **kwargs,
        )

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/public/stream", self.ws_handler)
        app.router.add_get("/fapi/v1/ticker/bookTicker", self._futures_rest)

    def data_frame(self, symbol: str, path: PricePath, now: float) -> str:
        mid = path.published(now)
        half = mid * self.spread_bps / 20_000.0
        ms = int(time.time() * 1000)
        return (
            f'{{"stream":"{symbol.lower()}{_BOOK}","data":{{"e":"bookTicker",'
            f'"u":{next(self.sequence)},"E":{ms},"T":{ms - 1},"s":"{symbol}",'
            f'"b":"{mid - half:.8f}","B":"{path.size():.3f}",'
            f'"a":"{mid + half:.8f}","A":"{path.size():.3f}"}}}}'
        )

    async def _futures_rest(self, request: web.Request) -> web.Response:
        refused = await self.rest_gate()
        if refused is not None:
            return refused
        single = request.query.get("symbol")
        if single is not None and single not in self.paths:
            return self._rest_error(-1121, "Invalid symbol.")
        rows = [self._futures_row(s) for s in ([single] if single else sorted(self.paths))]
        return web.json_response(rows[0] if single else rows)

    def _futures_row(self, symbol: str) -> dict[str, Any]:
        bid, ask = self.book(symbol)
        path = self.paths[symbol]
        ms = self.book_ms()  # the transaction time of the book's last change
        return {
            "symbol": symbol,
            "bidPrice": f"{bid:.8f}",
            "bidQty": f"{path.size():.3f}",
            "askPrice": f"{ask:.8f}",
            "askQty": f"{path.size():.3f}",
            "time": ms,
            "lastUpdateId": next(self.sequence),
        }
