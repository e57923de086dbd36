"""Pyth Hermes: parsed price updates from the Server-Sent Events stream, REST latest as fallback.

Docs: https://docs.pyth.network/price-feeds/api-instances-and-providers/hermes (endpoints, rate
limit), https://docs.pyth.network/api-reference/pyth-core/hermes/price_stream_sse_handler (the
stream) and the server source, pyth-network/pyth-crosschain ``apps/hermes/server`` (``sse.rs``).

Wire sample (one SSE event of ``GET /v2/updates/price/stream?ids[]=<id>&parsed=true``; the JSON is
the v2 ``PriceUpdate``, here the recorded BTC/USD update, ``binary`` shortened)::

    data:{"binary":{"encoding":"hex","data":["504e4155..."]},"parsed":[{"id":"e62df6c8b4a85fe1a6
     7db44dc12de5db330f7ac66b72dc658afedf0f4a415b43","price":{"price":"5190075917635","conf":
     "2661582364","expo":-8,"publish_time":1708363256},"ema_price":{"price":"5209141800000",
     "conf":"3290086600","expo":-8,"publish_time":1708363256},"metadata":{"slot":125976528,
     "proof_available_time":1708363257,"prev_publish_time":1708363255}}]}

Quotes: price = ``price * 10**expo``; Pyth's confidence interval is used as the spread, ``bid =
(price - conf) * 10**expo`` and ``ask = (price + conf) * 10**expo``, so the core's mid is exactly
Pyth's price and the spread shows Pyth's own uncertainty. ``venue_ts = publish_time * 1000``.
A band wider than the source's ``max_conf_ratio`` of the price (0.02 by default) is still
quoted, flagged ``confidence``: the core excludes the slot with that reason (docs/onchain.md).
Pyth is one source among many: no extra weight, the core judges it like any venue. We read only
the ``parsed`` JSON and never verify the signed ``binary`` payload (VAA / accumulator update):
the JSON is trusted as the venue's word, exactly like an exchange's ticker, even where (as in one
published v1 test fixture) the JSON and the signed payload disagree.

Instruments: the config maps each canonical pair to its Pyth feed id (32 bytes hex, ``0x``
optional, any case; e.g. ``"BTC/USD" = "0xe62d...5b43"``). There is no naming rule for ids, so
a pair without a mapped id is marked failed at start-up; nothing is fetched to find ids.

Transport: SSE, not WebSocket, so `_session` is replaced here; the base's watchdog, backoff, REST
fallback, counting and price hygiene are reused. The feed ids travel in the URL (no subscribe
messages, no acks). Rules from the docs and the server source that shape this file:

- Hermes validates the ids when the stream opens: unknown ids answer ``404 Price ids not found:
  0x<id>, ...``; those ids are marked failed and the stream is reopened at once without them.
- It sends an SSE comment ``:`` after 15 s without data (axum's default keep-alive); Pythnet
  updates every 400 ms, so any line, data or comment, counts as life for the watchdog.
- It closes every stream after 24 h, sending ``event:error`` / ``data:Connection timeout reached
  (24h)`` first; that is taken as a planned rotation (reconnect at once, stream never down). The
  config's ``max_connection_age_s`` (23 h by default) rotates before it.
- Other ``event:error`` events (e.g. a lagging server) are counted as ``venue_error``.
- Out-of-order updates are filtered by the server (``allow_unordered`` is left false); the
  adapter also drops, per feed, an update older than the last one by (publish_time, slot), and
  an exact repeat (same publish_time and slot), e.g. a REST answer echoing a streamed update.
  Only a quoted update sets that bar: one from the future (dropped by the base) does not.
- Public rate limit: 30 requests per 10 s per IP, every endpoint counted, then 429 for 60 s.
  The stream is one request per connection; REST ``/v2/updates/price/latest`` takes many ids,
  so one poll is one request for up to `rest_batch_size` ids (2 s interval by default: 5
  requests per 10 s). Polls are paced (`rest_rate_per_s`, `rest_burst`): at most 2 at once,
  then 2 a second, so 22 in any 10 s, leaving 8 of the 30 for the stream's reconnects; before,
  more than 250 feeds (6 requests a poll) or a short ``rest_poll_interval_s`` went past the
  limit and met the 60 s ban. Failed ids are left out of polls. The docs name no
  ``Retry-After`` for the 429, so after one the next poll waits the documented 60 s
  (`rate_limit_wait_s`), not one poll interval. The limit counts the IP's requests, whichever
  source sends them: a 429 rests every source polling the same REST host for those 60 s
  (`oracled.sources.hostrests`), and those sources take their turns from one pacer
  (`rest_rate_per_ip`), so that two sources (two sets of feeds, say) stay under the limit
  together, not each. Stream opens are requests of the IP too: a 429 on one rests the host
  as a poll's does, and no stream opens while its host rests (`_host_rest_over`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, Final

import aiohttp
import msgspec
from multidict import MultiDict

from oracled.bands import BAND_SLACK
from oracled.clock import Clock
from oracled.config import SourceConfig
from oracled.model import Kind, Quote
from oracled.sources._base import VENUE_TEXT_KEPT, Source, read_integer
from oracled.sources.hostrests import rest_host
from oracled.sources.stats import SourceStats

__all__ = ["PythHermesSource", "normalize_feed_id"]

_HEX_ID: Final = re.compile(r"[0-9a-f]{64}")
_MISSING: Final = "Price ids not found:"
_TIMEOUT_NOTICE: Final = "Connection timeout reached"
# Exponents beyond this cannot be a real price (Pyth uses about -12..0) and could overflow floats.
_MAX_EXPO: Final = 30
_POW10: Final = tuple(10**k for k in range(_MAX_EXPO + 1))  # no pow() per update
_I64: Final = 2**63
# A partial SSE line longer than this is not Hermes: the connection is dropped.
_MAX_LINE: Final = 4 * 1024 * 1024
_SSE_HEADERS: Final = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
# How long the public Hermes answers 429 to a client that went over its limit (docs).
_RATE_LIMIT_BAN_S: Final = 60.0
# The stream has no total or read timeout: the base's watchdog judges liveness.
_STREAM_TIMEOUT: Final = aiohttp.ClientTimeout(total=None, sock_read=None)


def normalize_feed_id(raw: str) -> str | None:
    """A feed id as Hermes prints it (64 lower-case hex digits, no 0x), or None if malformed."""
    text = raw.strip().lower().removeprefix("0x")
    return text if _HEX_ID.fullmatch(text) else None


class _Price(msgspec.Struct, gc=False):
    price: str
    conf: str
    expo: int
    publish_time: int


class _Meta(msgspec.Struct, gc=False):
    slot: int | None = None


class _Feed(msgspec.Struct, gc=False):
    id: str
    price: _Price
    metadata: _Meta | None = None


class _Update(msgspec.Struct, gc=False):
    parsed: list[_Feed]


_UPDATE = msgspec.json.Decoder(_Update)


class _SseLines:
    """Incremental Server-Sent Events parser (WHATWG rules, LF or CRLF line ends).

    `feed(chunk)` returns the events completed by `chunk`: ``(type, data)`` for a dispatched
    event and ``(None, text)`` for each comment line (keep-alives).
    """

    __slots__ = ("_buf", "_data", "_size", "_type")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[str] = []
        self._size = 0  # characters in `_data`: an event's lines are bounded as one line is
        self._type = ""

    @property
    def pending(self) -> int:
        """Bytes of the line not yet ended."""
        return len(self._buf)

    @property
    def pending_event(self) -> int:
        """Characters of data lines of the event not yet ended."""
        return self._size

    def feed(self, chunk: bytes) -> list[tuple[str | None, str]]:
        if b"\n" not in chunk:  # a long event arriving in pieces: no line to parse yet
            self._buf += chunk
            return []
        *lines, self._buf = (self._buf + chunk).split(b"\n")
        out: list[tuple[str | None, str]] = []
        for raw in lines:
            line = raw.removesuffix(b"\r").decode("utf-8", errors="replace")
            if not line:
                if self._data:
                    out.append((self._type or "message", "\n".join(self._data)))
                self._data, self._size, self._type = [], 0, ""
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if not name:
                out.append((None, value))
            elif name == "data":
                self._data.append(value)
                self._size += len(value) + 1
            elif name == "event":
                self._type = value
            # "id", "retry" and unknown fields are ignored, as the SSE rules say.
        return out


class PythHermesSource(Source):
    default_ws_url: ClassVar[str] = "https://hermes.pyth.network"
    default_rest_url: ClassVar[str | None] = "https://hermes.pyth.network"
    #: Ids in one latest-price request: keeps the URL near 4 KB (75 characters an id).
    rest_batch_size: ClassVar[int] = 50
    #: Under the public limit of 30 requests per 10 s per IP (module docstring): 22 polls in
    #: any 10 s at most, the rest of the 30 left for the stream's reconnects.
    rest_rate_per_s: ClassVar[float | None] = 2.0
    rest_burst: ClassVar[float] = 2.0
    #: The limit is the IP's: the sources polling one Hermes host share one pacer.
    rest_rate_per_ip: ClassVar[bool] = True
    #: Not filtered: the SSE stream has its own `_session`, and each update carries its own
    #: ``publish_time`` (an exact repeat is dropped as ``duplicate``), so none looks fresher.
    snapshot_on_subscribe: ClassVar[bool] = False

    def __init__(
        self,
        source_id: str,
        cfg: SourceConfig,
        pairs: Sequence[tuple[str, Kind]],
        emit: Callable[[Quote], None],
        clock: Clock,
        session: aiohttp.ClientSession,
        stats: SourceStats,
    ) -> None:
        ids: dict[str, str] = {}
        mapped: list[tuple[str, Kind]] = []
        for pair, kind in pairs:
            raw = cfg.instruments.get(pair)
            feed = normalize_feed_id(raw) if raw is not None else None
            if kind not in self.kinds:
                pass  # the base refuses it
            elif feed is None:
                stats.failed_instruments[pair] = (
                    f"no Pyth feed id configured for {pair}"
                    if raw is None
                    else f"{raw!r} is not a Pyth feed id (32 bytes in hex)"
                )
                continue
            elif feed in ids.values():
                stats.failed_instruments[pair] = f"feed id {feed} is already used by another pair"
                continue
            else:
                ids[pair] = feed
            mapped.append((pair, kind))
        cfg = cfg.model_copy(update={"instruments": ids})
        super().__init__(source_id, cfg, mapped, emit, clock, session, stats)
        # Newest (publish_time, slot) seen per feed, so that no older update overrides it.
        self._newest: dict[str, tuple[int, int]] = {}
        # A band of exactly the ratio is not wider than it (BAND_SLACK, as the gates' band):
        # 5,190,000,000,000 x 0.0003 rounds under 1,557,000,000.
        self._max_conf_ratio = cfg.max_conf_ratio * BAND_SLACK
        # The stream's host in `host_rests` (one key with a REST URL of the same host): the
        # limit counts the stream's opens with the polls, and a 429 on either rests both.
        self._stream_host = rest_host(self.stream_url())
        self._stream_waited = float("-inf")  # the host's rest the stream last said it waits for

    # ----------------------------------------------------------------- venue hooks

    def venue_symbol(self, pair: str) -> str:
        """Never reached: pairs without a mapped feed id are refused in __init__."""
        raise LookupError(f"no Pyth feed id for {pair}")

    def stream_url(self) -> str:
        base = self.ws_url
        if base.startswith(("ws://", "wss://")):  # the config may name the stream as ws(s)
            base = "http" + base[2:]
        return f"{base}/v2/updates/price/stream"

    def subscribe_message(self, request_id: int, symbols: Sequence[str]) -> str:
        """Hermes has no subscribe messages: the ids travel in the stream URL."""
        raise NotImplementedError

    def on_message(self, data: str | bytes, recv_ts: int) -> None:
        try:
            update = _UPDATE.decode(data)
        except msgspec.ValidationError:
            self._bad("shape")
            return
        except msgspec.DecodeError:
            self._bad("decode")
            return
        if not update.parsed:  # an update of no feed: a data frame that says nothing
            self._bad("shape")
            return
        for feed in update.parsed:
            self._feed(feed, recv_ts)

    async def _fetch(
        self, url: str, query: Mapping[str, str]
    ) -> tuple[int | None, bytes, str | None]:
        """The base's GET; a 404 naming unknown ids fails them, so the next poll leaves them out.
        A 429 is the IP's (module doc): every source polling the host rests with this one."""
        status, body, error = await super()._fetch(url, query)
        if status == 404:
            self._fail_missing(body.decode(errors="replace"))
        elif status == 429:
            self._limit_ip_wide = True
        return status, body, error

    def rate_limit_wait_s(self, headers: Mapping[str, str]) -> float:
        """Hermes answers 429 for the 60 s after a client went over its limit (docs); a
        ``Retry-After``, if one comes, is obeyed instead."""
        return super().rate_limit_wait_s(headers) or _RATE_LIMIT_BAN_S

    def rest_request(self, symbols: Sequence[str]) -> tuple[str, Mapping[str, str]] | None:
        return f"{self.rest_url}/v2/updates/price/latest", self._query(symbols)

    def on_rest(self, body: bytes, recv_ts: int) -> None:
        self.on_message(body, recv_ts)

    # ----------------------------------------------------------------- decoding

    def _feed(self, feed: _Feed, recv_ts: int) -> None:
        symbol = feed.id
        if symbol not in self._by_symbol:
            self.stats.dropped["unknown_symbol"] += 1
            return
        p = feed.price
        expo = p.expo
        try:
            price, conf = read_integer(p.price), read_integer(p.conf)
        except ValueError:
            self._bad_number(p.price, p.conf)
            return
        # Pyth's price is an i64 and its conf a u64; beyond that a float could overflow.
        if not (-_I64 <= price < _I64 and -_I64 <= conf < _I64 and -_MAX_EXPO <= expo <= _MAX_EXPO):
            self._bad("bad_number")
            return
        # Hygiene on the integers, before the order check, so that a bad update never counts
        # as the newest one; the reasons are the base's.
        if price <= 0:
            self._bad("non_positive")
            return
        if conf < 0:
            self._bad("crossed")  # bid = price - conf would sit above ask
            return
        if conf >= price:
            self._bad("wide_confidence")  # the band reaches zero: no usable bid
            return
        meta = feed.metadata
        slot = None if meta is None else meta.slot
        publish_time = p.publish_time
        key = (publish_time, -1 if slot is None else slot)
        newest = self._newest.get(symbol)
        if newest is not None and (key < newest or (key == newest and slot is not None)):
            self.stats.dropped["out_of_order" if key < newest else "duplicate"] += 1
            return
        # Integer sums, one correctly rounded division: no float error beyond the last bit.
        if expo < 0:
            scale = _POW10[-expo]
            bid, ask = (price - conf) / scale, (price + conf) / scale
        else:
            scale = _POW10[expo]
            bid, ask = float((price - conf) * scale), float((price + conf) * scale)
        quotes = self.stats.quotes
        flag = "confidence" if conf > price * self._max_conf_ratio else None
        self._quote(symbol, bid, ask, recv_ts, publish_time * 1000, None, flag)
        if self.stats.quotes != quotes:  # only a used update moves the bar (none from the future)
            self._newest[symbol] = key

    def _query(self, ids: Sequence[str]) -> MultiDict[str]:
        query: MultiDict[str] = MultiDict(("ids[]", i) for i in ids)
        query.add("parsed", "true")
        query.add("encoding", "base64")  # a third smaller than hex; we never read it anyway
        return query

    def _fail_missing(self, text: str) -> int:
        """Mark failed the ids a ``404 Price ids not found: 0x.., 0x..`` names; return how many."""
        _, found, listed = text.partition(_MISSING)
        failed, said = 0, text.strip()[:VENUE_TEXT_KEPT]
        for item in listed.split(",") if found else ():
            symbol = normalize_feed_id(item)
            if symbol in self._by_symbol and symbol not in self.stats.failed_instruments:
                self._log.warning("instrument failed", symbol=symbol, message=said)
                self.stats.failed_instruments[symbol] = said
                failed += 1
        return failed

    # ----------------------------------------------------------------- SSE transport

    async def _session(self) -> str:
        """One SSE stream from request to end; returns why it ended (see the base)."""
        self._cut = None
        await self._host_rest_over()
        async with asyncio.timeout(self.cfg.liveness_timeout_s):
            opened = await self._open()
        if isinstance(opened, str):
            return opened
        if opened is None:  # every id failed: nothing to stream until the config changes
            self._stream_down("no valid Pyth feed ids")
            await asyncio.Event().wait()
        assert opened is not None
        try:
            return await self._watched(lambda: self._read_events(opened))
        finally:
            opened.close()  # never hand a half-read stream back to the pool

    async def _open(self) -> aiohttp.ClientResponse | str | None:
        """Open the stream for every healthy id; unknown ids are failed and the rest retried."""
        while True:
            ids = [s for s in self.symbols if s not in self.stats.failed_instruments]
            if not ids:
                return None
            resp = await self._http.get(
                self.stream_url(),
                params=self._query(ids),
                headers=_SSE_HEADERS,
                timeout=_STREAM_TIMEOUT,
                allow_redirects=False,  # as every REST request (Source._fetch)
            )
            if resp.status == 200 and resp.content_type == "text/event-stream":
                return resp
            try:
                text = (await resp.content.read(1024)).decode(errors="replace")
            finally:
                resp.close()
            if resp.status == 404 and self._fail_missing(text):
                continue  # one more request without the unknown ids: no backoff, no storm
            if resp.status == 429 and self._stream_host is not None:
                # The IP's limit (module doc), as a poll's 429: the host rests for every source
                # of it, this stream's next open included (`_host_rest_over`).
                wait = self.rate_limit_wait_s(resp.headers)
                said = f"HTTP 429: {text[:200]}"
                until = self._clock.monotonic() + wait
                self.host_rests.rest(self._stream_host, until, self.source_id, said)
                self._log.warning("stream rate limited", delay_s=wait, error=said)
            if resp.status == 200:  # e.g. a proxy's page: not a stream at all
                return f"not an event stream ({resp.content_type})"
            return f"HTTP {resp.status}: {text[:200]}"

    async def _host_rest_over(self) -> None:
        """Wait out a rest of the stream's host (a 429 that a poll or a stream open of any
        source of the host met) before opening: the open is one of the IP's requests, and one
        sent into the limit only meets the 429 again. Down meanwhile, said once a rest, with
        who learnt it; the clock read again at most every poll interval, as the polls' wait
        (`_host_resting`): the rest may be moved on. Before, the stream reopened into the ban
        at its backoff (0.5 s doubling), and its own 429s rested nothing."""
        while True:
            until, by, why = self.host_rests.until(self._stream_host)
            left = until - self._clock.monotonic()
            if left <= 0.0:
                return
            self._stream_down(f"host rested by {by}: {why}")
            if until != self._stream_waited:
                self._stream_waited = until
                self._log.warning("stream host rested", by=by, delay_s=round(left, 3), error=why)
            await asyncio.sleep(min(left, self.cfg.rest_poll_interval_s))

    async def _read_events(self, resp: aiohttp.ClientResponse) -> str:
        clock, stats = self._clock, self.stats
        parser = _SseLines()
        async for chunk in resp.content.iter_any():
            self._last_rx = self._rx_at = clock.monotonic()
            for kind, data in parser.feed(chunk):
                recv_ts = clock.now_ms()
                stats.frames += 1
                stats.last_frame_ms = recv_ts
                if kind is None:
                    continue  # keep-alive comment: life, nothing else
                before = stats.quotes
                try:
                    why = self._event(kind, data, recv_ts)
                except RecursionError:  # JSON nested past the decoder's depth limit
                    self._bad("decode")
                    continue
                if why is not None:
                    return why
                if not self._streaming and stats.quotes != before:
                    self._stream_up()
            if parser.pending > _MAX_LINE:
                self._bad("line_too_long")
                return "line too long"
            if parser.pending_event > _MAX_LINE:
                self._bad("event_too_long")
                return "event too long"
        return "closed by venue (end of stream)"

    def _event(self, kind: str, data: str, recv_ts: int) -> str | None:
        """Handle one SSE event; a non-None result ends the connection with that reason."""
        if kind == "message":
            self.on_message(data, recv_ts)
        elif kind == "error" and data.startswith(_TIMEOUT_NOTICE):
            return "server_shutdown"  # the 24 h limit: reconnect at once, as planned
        elif kind == "error":
            self._reject(None, data)
        else:
            self._bad("unknown_event")
        return None
