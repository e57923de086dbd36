"""`oracled margin`: the engine fed by `WS /v1/stream`, the way an outside risk engine would be.

It subscribes to the markets the accounts need, one `reports` frame a round (`batch`), turns the
reports into the engine's view, and takes decisions after each round's reports (never between
two markets' reports of one round) and on a steady tick of the local clock, so that a stream
that goes quiet turns into `stale_report` freezes instead of silence, and the daemon's `stalled`
frame into `stalled` freezes at once. Every decision is written as one JSON line; connection
changes are logged. A dropped connection is retried with backoff, as is a handshake that was
redirected: only the daemon named is read.

The daemon refuses a whole subscribe request for one market it does not have. The service does
not let one such market cost it every price: a request of several markets refused for a market
(`unknown_market`, `bad_query`) is asked again market by market (the daemon answers requests in
order, one frame each), and a market refused alone, or removed later by a reload
(`market_removed`), is frozen with the daemon's code (`unavailable`) and logged once by name,
while the other markets keep their prices. Such a market is asked for again every `retry_s`, so
that one a reload adds (back) is priced again without a restart, and is left out of the first
request of a new connection (one request of the markets served, not a split on every
reconnect) and asked for alone right after it. The bookkeeping is the client library's
(`oracled.client_stream.Subscriptions`), shared with `OracleClient.watch_ws`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import IO

import aiohttp
import msgspec
import structlog

from oracled.client_stream import ERROR_CODES, STALLED, Request, Subscriptions
from oracled.headers import redirected_to
from oracled.lograte import LogEveryMinute
from oracled.margin.decisions import encode_decision
from oracled.margin.engine import MarginEngine
from oracled.margin.prices import PriceView, WireReport
from oracled.urls import shown_url

__all__ = ["MarginService"]

_log = structlog.get_logger(component="margin")


class _Frame(msgspec.Struct, forbid_unknown_fields=False):
    type: str
    # `report`: one report; `reports` (the `batch` subscription): a round's, in market order.
    # Read report by report: one that cannot be read costs its own market the round, not all.
    data: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)  # empty when absent
    markets: list[str] | None = None
    code: str | None = None
    message: str | None = None


class _Named(msgspec.Struct, forbid_unknown_fields=False):
    """Just the market of a report that cannot be read otherwise, to say whose it was."""

    market: str


_frames = msgspec.json.Decoder(_Frame)
_batch = msgspec.json.Decoder(list[msgspec.Raw])
_report = msgspec.json.Decoder(WireReport)
_named = msgspec.json.Decoder(_Named)
#: What decoding a frame raises for what it cannot read: msgspec raises RecursionError, not
#: DecodeError, for JSON nested past the interpreter's recursion limit, which ended the service.
_UNREADABLE = (msgspec.DecodeError, RecursionError)


def _items(data: msgspec.Raw) -> list[msgspec.Raw]:
    """The reports of a frame's `data`: a batch's list, or the one report."""
    try:
        return _batch.decode(data)
    except _UNREADABLE:  # not a list: one report (the frame as a whole is valid JSON)
        return [data]


def _market_of(raw: msgspec.Raw) -> str | None:
    try:
        return _named.decode(raw).market
    except _UNREADABLE:
        return None


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class MarginService:
    """One stream connection (re-made when it drops) driving one engine."""

    def __init__(
        self,
        engine: MarginEngine,
        url: str,
        out: IO[bytes],
        *,
        step_ms: int = 1_000,
        reconnect_max_s: float = 5.0,
        clock: Callable[[], int] = _wall_ms,
        retry_s: float = 10.0,
    ) -> None:
        self.engine = engine
        self.url = url
        self.out = out
        self.step_ms = step_ms
        self.reconnect_max_s = reconnect_max_s
        self.clock = clock
        self.retry_s = retry_s
        self.reports = 0
        self.decisions = 0
        #: Frames that could not be read (no JSON, no frame), dropped: logged once a minute.
        self.bad_frames = 0
        self.connected = asyncio.Event()
        #: The daemons read, one connection each (signed mode may read several).
        self.urls: tuple[str, ...] = (url,)
        # No market, no request: an empty list would ask for every market.
        self._subs = Subscriptions(engine.markets)
        self._wanted = frozenset(engine.markets)
        self._bad_reports = LogEveryMinute()
        self._bad_frame_log = LogEveryMinute()
        self._error_log = LogEveryMinute()  # per daemon URL and code (any other code: None)

    @property
    def unavailable(self) -> Mapping[str, str]:
        """Markets the daemon refused or removed, with its error code (they have no price)."""
        return self._subs.unavailable

    def _decide(self) -> None:
        decisions = self.engine.step(self.clock())
        for d in decisions:
            self.out.write(encode_decision(d) + b"\n")
        if decisions:
            self.out.flush()
            self.decisions += len(decisions)

    def _decode(self, raw: str | bytes) -> _Frame | None:
        """The frame, or None (counted, logged) for one that cannot be read and answers no
        request."""
        try:
            return _frames.decode(raw)
        except _UNREADABLE as exc:
            if raw[:15] not in ('{"type":"error"', b'{"type":"error"'):
                self._bad_frame(str(exc)[:200])
                return None
            # An error frame answers a request even when it cannot be read: keep the order.
            return _Frame("error", code="malformed", message=str(exc)[:200])

    def _frame(self, raw: str | bytes, url: str) -> tuple[Request, ...]:
        """Act on one frame of `url`'s daemon; return the subscribe requests to send."""
        frame = self._decode(raw)
        if frame is None:
            return ()
        if frame.type in ("report", "reports") and bytes(frame.data) not in (b"", b"null"):
            # Decided once the round's reports are all in: a hedge across two markets is not
            # judged on one market's new price against the other's of the round before.
            for raw in _items(frame.data):
                try:
                    report = _report.decode(raw)
                except _UNREADABLE as exc:  # the market keeps its last report
                    self._bad_report(_market_of(raw), str(exc)[:200])
                    continue
                if report.market not in self._wanted:  # kept, it would never be read
                    self._bad_report(report.market, "a market not asked for")
                    continue
                try:
                    view = PriceView.from_wire(report)
                except ValueError as exc:  # the market keeps its last report, which ages
                    self._bad_report(report.market, str(exc))
                    continue
                for problem in view.dropped:  # a pause is taken without them: counted
                    self._bad_report(report.market, f"{problem} (left out)")
                if self._subs.reported(report.market):
                    self._available((report.market,))
                self.engine.on_report(view, in_order=True)
                self.reports += 1
            self._decide()
        else:
            return self._answer(frame, url)
        return ()

    def _answer(self, frame: _Frame, url: str) -> tuple[Request, ...]:
        """An ack or an error frame (the same in both modes)."""
        subs = self._subs_of(url)
        if frame.type == "subscribed":
            _log.info("subscribed", markets=frame.markets)
            self._available(subs.acked(frame.markets or ()))
        elif frame.type == "error":
            return self._refused(frame, url)
        return ()

    def _subs_of(self, url: str) -> Subscriptions:
        """The subscription bookkeeping of `url`'s daemon."""
        return self._subs

    def _unavailable(self, market: str, code: str, url: str) -> None:
        """`url`'s daemon refused or removed `market`: freeze it with the daemon's code."""
        self.engine.book.mark_unavailable(market, code)

    def _bad_report(self, market: str | None, error: str) -> None:
        """A report that cannot be read, or with a price that is none: logged at most once a
        minute per market."""
        key = market if market in self._wanted else None  # bounded, whatever is sent
        count = self._bad_reports.due(key, time.monotonic())
        if count is not None:
            _log.warning("bad_report", market=market, error=error, reports=count)

    def _bad_frame(self, error: str) -> None:
        """A frame that cannot be read: counted, and logged at most once a minute (`frames`:
        how many since the last line), since a peer can send any number of them."""
        self.bad_frames += 1
        count = self._bad_frame_log.due(None, time.monotonic())
        if count is not None:
            _log.warning("bad_frame", error=error, frames=count)

    def _refused(self, frame: _Frame, url: str) -> tuple[Request, ...]:
        if frame.code == STALLED:  # answers no request; concerns every market
            self._stalled(frame.message or "", url)
            return ()
        refusal = self._subs_of(url).refused(frame.code or "unknown", frame.markets or ())
        if refusal.kind == "split":  # one bad market refused them all: ask for each alone
            _log.info("subscribe_refused", code=refusal.code, retry=len(refusal.markets))
            return refusal.send
        if refusal.kind == "error":  # a line a minute per code: a peer can send any number
            key = (url, refusal.code if refusal.code in ERROR_CODES else None)
            count = self._error_log.due(key, time.monotonic())
            if count is not None:
                message = None if frame.message is None else frame.message[:200]
                _log.warning("stream_error", code=refusal.code[:64], message=message, frames=count)
        for market in refusal.markets:  # newly unavailable (a retry refused again is not)
            self._unavailable(market, refusal.code, url)
            _log.warning(
                "market_unavailable",
                market=market,
                code=refusal.code,
                message=frame.message,
                url=shown_url(url),
            )
        if refusal.markets:
            self._decide()
        return ()

    def _stalled(self, message: str, url: str) -> None:
        """`url`'s daemon says its rounds have stalled: nothing it sent is current any more."""
        _log.warning("stalled", message=message, url=shown_url(url))
        self.engine.book.mark_stalled()
        self._decide()

    def _available(self, markets: Iterable[str]) -> None:
        """The daemon serves these again: their accounts wait for a report, not for a reload."""
        for market in markets:
            self.engine.book.unavailable.pop(market, None)
            _log.info("market_available", market=market)

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, requests: Iterable[Request]) -> None:
        for markets in requests:  # `batch`: a round's reports in one frame, decided together
            await ws.send_json({"op": "subscribe", "markets": markets, "batch": True})

    async def _retry(self, ws: aiohttp.ClientWebSocketResponse, url: str) -> None:
        """Ask again, one by one, for the markets the daemon refused or removed."""
        while True:
            await asyncio.sleep(self.retry_s)
            again = self._subs_of(url).retry()
            for (market,) in again:
                _log.debug("subscribe_retry", market=market)
            await self._send(ws, again)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.step_ms / 1000)
            self._decide()

    async def _connect_once(self, session: aiohttp.ClientSession, url: str) -> int | None:
        """One connection until it ends; the daemon's close code (1008: too slow), if it closed."""
        async with session.ws_connect(url, heartbeat=30.0) as ws:
            # Prices come from the daemon configured only, never from wherever it (or a proxy)
            # points.
            if (moved := redirected_to(ws)) is not None:
                raise aiohttp.ClientError(f"handshake redirected to {moved}")
            # `start` asks for the markets refused before alone, after the others.
            subs = self._subs_of(url)
            await self._send(ws, subs.start())
            _log.info("connected", url=shown_url(url), unavailable=sorted(subs.unavailable))
            self.connected.set()
            retry = asyncio.create_task(self._retry(ws, url), name="margin-retry")
            try:
                async for msg in ws:
                    if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                        await self._send(ws, self._frame(msg.data, url))
                    elif msg.type is aiohttp.WSMsgType.ERROR:
                        break
            finally:
                retry.cancel()
                await asyncio.gather(retry, return_exceptions=True)
            code = ws.close_code
        self.connected.clear()
        return code

    async def run(self) -> None:
        """Run until cancelled: a connection to each daemon, re-made with jittered backoff when
        it drops, and a step on the tick meanwhile."""
        async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as tg:
            tg.create_task(self._ticker(), name="margin-tick")
            for url in self.urls:
                tg.create_task(self._connection(session, url), name="margin-stream")

    async def _connection(self, session: aiohttp.ClientSession, url: str) -> None:
        delay = 0.1
        while True:
            try:
                code = await self._connect_once(session, url)
                delay = 0.1
                _log.warning("disconnected", url=shown_url(url), code=code)
            except (aiohttp.ClientError, OSError) as exc:
                self.connected.clear()
                _log.warning("connect_failed", url=shown_url(url), error=str(exc)[:200])
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.reconnect_max_s)
