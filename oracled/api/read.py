"""Read-only endpoints: prices, markets, per-market sources, daemon info."""

from __future__ import annotations

import numpy as np
from aiohttp import web

from oracled.api.context import ApiContext
from oracled.api.encoding import Body, counted_response
from oracled.api.errors import ApiError, encode_json, json_response
from oracled.api.params import market_list, path_market, query_once
from oracled.config import Config, MarketConfig, MarketSource, slot_route
from oracled.core import RoundResult
from oracled.model import Quote, Report, SourceValue
from oracled.sources.stats import SourceStats

__all__ = ["ReadHandlers"]

_PRICES_PARAMETERS = frozenset({"markets"})
# The price bodies a round keeps are bounded by count (`api.round_bodies`) and by bytes
# (`api.round_body_bytes`, their gzip forms included); past either a body is made per request,
# so that a client cycling selections cannot grow memory. A client chooses its selections: at
# 1,000 markets, 256 of 256 markets each were about 33 MB by count alone; the default 8 MiB
# holds the whole array at 1,000 markets (0.7-1.3 MB, and its gzip) several times over.


def _decimal(value: float | None) -> str | None:
    """A quote's float as a plain decimal string (never exponent notation)."""
    if value is None:
        return None
    return np.format_float_positional(value, trim="-")


#: A price body's key: whether it is an array (`/v1/prices`), and the markets asked (None: all).
_Key = tuple[bool, tuple[str, ...] | None]


def _routed(cfg: Config, m: MarketConfig, s: MarketSource, row: dict[str, object]) -> None:
    """Name the conversion leg of a routed slot in its row (`via`); other rows go without."""
    via = slot_route(cfg, m, s.pair)
    if via is not None:
        row["via"] = via


def _source_view(cfg: Config, m: MarketConfig, s: MarketSource) -> dict[str, object]:
    row: dict[str, object] = {
        "source": s.source,
        "pair": s.pair,
        "kind": s.kind,
        "weight": s.weight,
    }
    _routed(cfg, m, s, row)
    return row


def _market_view(cfg: Config, m: MarketConfig) -> dict[str, object]:
    return {
        "symbol": m.symbol,
        "price_exponent": m.price_exponent,
        "min_sources": m.min_sources,
        "max_age_ms": m.max_age_ms,
        "lag_ms": m.lag_ms,
        "max_deviation": m.max_deviation,
        "circuit_breaker": m.circuit_breaker,
        "max_confidence_ratio": m.max_confidence_ratio,
        "min_price": m.min_price,
        "max_price": m.max_price,
        "sources": [_source_view(cfg, m, s) for s in m.sources],
        # Additive: the mark configuration, none for a spot-only market (no perpetual, no mark).
        "perp_sources": [_source_view(cfg, m, s) for s in m.perp_sources],
        "mark": m.mark.model_dump() if m.perp_sources else None,
    }


def _quote_view(q: Quote) -> dict[str, object]:
    return {
        "bid": _decimal(q.bid),
        "ask": _decimal(q.ask),
        "price": _decimal(q.price),
        "recv_ts": q.recv_ts,
        "venue_ts": q.venue_ts,
    }


def _connection(stats: SourceStats) -> dict[str, object]:
    return {
        "state": stats.state.value,
        "last_quote_ms": stats.last_quote_ms,
        "last_frame_ms": stats.last_frame_ms,
        "reconnects": stats.reconnects,
        "malformed": stats.malformed,
    }


def _instrument(stats: SourceStats | None, pair: str, kind: str) -> dict[str, object] | None:
    """The source's own view of the venue instrument behind a market's entry: a venue may refuse
    it or leave it silent (unquoted by a streaming connection, or left out of the REST answers
    while polling) while its other instruments quote, which
    the entry's `reason` (no_quote, stale) does not tell apart. None without a running source."""
    if stats is None:
        return None
    symbol = stats.symbol_of.get((pair, kind))
    failed = stats.failed_instruments
    refused = failed.get(symbol) if symbol is not None else None
    return {
        "symbol": symbol,
        # One refused before it had a symbol (an unserved kind, no feed configured) by its pair.
        "refused": failed.get(pair) if refused is None else refused,
        "silent_since": None if symbol is None else stats.silent_instruments.get(symbol),
    }


def _part(report: Report | None, j: int, source: str, pair: str) -> SourceValue | None:
    """The part of the `j`th configured source of a market in the latest round, if it had one.

    A reload may add, remove or reorder a market's sources before the next round: a source is
    found by name where its position changed, and one the round did not have has no part yet,
    never another source's.
    """
    if report is None:
        return None
    parts = report.sources
    if j < len(parts) and parts[j].id == source and parts[j].pair == pair:
        return parts[j]
    found = [p for p in parts if p.id == source and p.pair == pair]
    return found[0] if len(found) == 1 else None


class ReadHandlers:
    """Handlers over the hub's latest round and the static config."""

    __slots__ = (
        "_bodies",
        "_bytes",
        "_ctx",
        "_known",
        "_markets_body",
        "_round",
    )

    def __init__(self, ctx: ApiContext) -> None:
        self._ctx = ctx
        self._known = ctx.core.index
        # The config changes only on reload: its view is encoded once per config object.
        self._markets_body = (ctx.current_config, Body(self._markets_view(ctx.current_config)))
        # This round's price bodies, by what was asked: every client of a round shares them.
        self._round: RoundResult | None = None
        self._bodies: dict[_Key, Body] = {}
        self._bytes = 0  # what `_bodies` holds, plain and gzip: at most api.round_body_bytes

    async def _answer(
        self, request: web.Request, body: Body, key: _Key | None = None
    ) -> web.Response:
        response, made = await counted_response(request, body, self._ctx.hub)
        if made and key is not None and self._bodies.get(key) is body:
            self._gzipped(key, body)
        return response

    @property
    def compressions(self) -> int:
        """Bodies gzipped: once per body, however many clients ask. The hub holds the count,
        where /metrics reads it (`oracled_api_bodies_gzipped_total`)."""
        return self._ctx.hub.bodies_gzipped

    @property
    def compressed_off_loop(self) -> int:
        """Of `compressions`, those made in a worker thread (large bodies):
        `oracled_api_bodies_gzipped_off_loop_total`."""
        return self._ctx.hub.bodies_gzipped_off_loop

    @property
    def uncached(self) -> int:
        """Price bodies served without being kept: no room left in the round. The hub holds
        the count, where /metrics reads it (`oracled_api_price_bodies_uncached_total`)."""
        return self._ctx.hub.price_bodies_uncached

    def held_bytes(self) -> int:
        """What this round's kept price bodies hold now, plain and gzip, counted afresh."""
        return sum(len(b.plain) + len(b.packed or b"") for b in self._bodies.values())

    def _round_body(self, result: RoundResult, key: _Key) -> Body | None:
        if result is not self._round:  # a new round: the old bodies go in one go
            self._round, self._bodies, self._bytes = result, {}, 0
        return self._bodies.get(key)

    def _keep(self, key: _Key, body: Body) -> Body:
        size = len(body.plain)
        api = self._ctx.current_config.api  # a reload applies new bounds
        if len(self._bodies) < api.round_bodies and self._bytes + size <= api.round_body_bytes:
            self._bodies[key] = body
            self._bytes += size
        else:
            self._ctx.hub.price_bodies_uncached += 1
        return body

    def _gzipped(self, key: _Key, body: Body) -> None:
        """A kept body got its gzip form (made once, on first demand): count it against the
        budget, or let the body go if it no longer fits (the next request makes it anew)."""
        packed = body.packed
        if packed is None:
            return
        if self._bytes + len(packed) <= self._ctx.current_config.api.round_body_bytes:
            self._bytes += len(packed)
        else:
            del self._bodies[key]
            self._bytes -= len(body.plain)
            self._ctx.hub.price_bodies_uncached += 1

    def _not_ready(self) -> ApiError:
        return ApiError(503, "not_ready", "no round has completed yet; retry shortly")

    def _check_fresh(self) -> None:
        """Refuse to serve a round the loop has not followed for READY_ROUNDS intervals (5 s at
        least): a stuck loop's last round would be read as live prices. 503 `stalled`, as
        /readyz is then; the streams send no snapshot of it (an error frame `stalled` instead)
        and their reports carry their `ts`."""
        stalled = self._ctx.stalled()
        if stalled is not None:
            raise ApiError(
                503,
                "stalled",
                f"{stalled}, so its prices are not served as current; retry shortly",
            )

    def _not_priced(self) -> ApiError:
        # A reload added the market after the latest round: the next round prices it.
        return ApiError(503, "not_ready", "a market added by a reload has no round yet; retry")

    async def prices(self, request: web.Request) -> web.Response:
        """Latest report of every market, or of `?markets=A/B,C/D`: a JSON array of reports."""
        query = query_once(request.query, _PRICES_PARAMETERS)
        selected: list[str] | None = None
        if "markets" in query:
            items = [part for part in query["markets"].split(",") if part.strip()]
            selected = market_list(items, self._known)
        hub = self._ctx.hub
        result = hub.latest_result
        if result is None:
            raise self._not_ready()
        self._check_fresh()
        key: _Key = (True, None if selected is None else tuple(selected))
        body = self._round_body(result, key)
        if body is None:
            names = hub.markets if selected is None else selected
            # Joined from the hub's per-round cache: no report is encoded twice, whoever asks.
            # Those not encoded yet are encoded in one pass (one market: the Report path).
            try:
                parts = (
                    hub.encoded_many(names) if len(names) > 1 else [hub.encoded(m) for m in names]
                )
            except LookupError:
                raise self._not_priced() from None
            body = self._keep(key, Body(b"[" + b",".join(parts) + b"]"))
        return await self._answer(request, body, key)

    async def price(self, request: web.Request) -> web.Response:
        """Latest report of one market."""
        market = path_market(request.match_info["market"], self._known)
        hub = self._ctx.hub
        result = hub.latest_result
        if result is None:
            raise self._not_ready()
        self._check_fresh()
        key: _Key = (False, (market,))
        body = self._round_body(result, key)
        if body is None:
            try:
                body = self._keep(key, Body(hub.encoded(market)))
            except LookupError:
                raise self._not_priced() from None
        return await self._answer(request, body, key)

    async def markets(self, request: web.Request) -> web.Response:
        """Configured markets and their gate parameters."""
        cfg = self._ctx.current_config
        if self._markets_body[0] is not cfg:
            self._markets_body = (cfg, Body(self._markets_view(cfg)))
        return await self._answer(request, self._markets_body[1])

    @staticmethod
    def _markets_view(cfg: Config) -> bytes:
        return encode_json({"markets": [_market_view(cfg, m) for m in cfg.markets]})

    async def sources(self, request: web.Request) -> web.Response:
        """Each configured source of a market: latest quote, age, part in the last round, link,
        and whether the venue refused its instrument or left it silent."""
        ctx = self._ctx
        market = path_market(request.match_info["market"], self._known)
        config = ctx.current_config
        cfg = config.market(market)
        assert cfg is not None  # every known market is configured
        report = ctx.hub.report(market)
        now = ctx.clock.now_ms()
        latest = ctx.core.book.latest
        rows: list[dict[str, object]] = []
        for j, ms in enumerate(cfg.sources):
            quote = latest.get((ms.source, ms.pair, ms.kind))
            part = _part(report, j, ms.source, ms.pair)
            stats = ctx.source_stats.get(ms.source)
            stamp = None
            if quote is not None:  # the core's age rule: venue time where sent, else receipt
                stamp = quote.recv_ts if quote.venue_ts is None else quote.venue_ts
            row: dict[str, object] = {
                "source": ms.source,
                "pair": ms.pair,
                "kind": ms.kind,
                "weight": ms.weight,
                "quote": None if quote is None else _quote_view(quote),
                "age_ms": None if stamp is None else now - stamp,
                "used": None if part is None else part.used,
                "reason": None if part is None else part.reason,
                "value": None if part is None else part.value,
                "connection": None if stats is None else _connection(stats),
                "instrument": _instrument(stats, ms.pair, ms.kind),
            }
            _routed(config, cfg, ms, row)
            rows.append(row)
        return json_response(
            {
                "market": market,
                "round": None if report is None else report.round,
                "ts": None if report is None else report.ts,
                "now": now,
                # The round's parts (used, reason, value) are that round's: say when it is no
                # current round, in the words of the price endpoints' 503 `stalled`.
                "stalled": None if report is None else ctx.stalled(),
                "sources": rows,
                "perp_sources": self._perp_rows(config, cfg, now),
            }
        )

    def _perp_rows(self, config: Config, cfg: MarketConfig, now: int) -> list[dict[str, object]]:
        """The market's perp_sources as the mark engine saw them in the latest round: used, or
        why not (docs/mark.md), and the mid in market units; empty for a spot-only market."""
        ctx = self._ctx
        result = ctx.hub.latest_result
        values = None
        decimals = 0
        # Only a round of the config in force: after a reload, until the next round, the
        # entries have no part yet rather than another entry's.
        if result is not None and result.mark is not None and result.layout is ctx.core.layout:
            i = ctx.core.index.get(cfg.symbol)
            if i is not None:
                values = result.mark.values.get(i)
                decimals = int(result.layout.decimals[i])
        rows: list[dict[str, object]] = []
        for k, ps in enumerate(cfg.perp_sources):
            quote = ctx.core.book.perps.get((ps.source, ps.pair, ps.kind))
            stats = ctx.source_stats.get(ps.source)
            stamp = None
            if quote is not None:
                stamp = quote.recv_ts if quote.venue_ts is None else quote.venue_ts
            known = values is not None and k < len(values.perp_reasons)
            mid = values.perp_mids[k] if values is not None and known else float("nan")
            row: dict[str, object] = {
                "source": ps.source,
                "pair": ps.pair,
                "kind": ps.kind,
                "quote": None if quote is None else _quote_view(quote),
                "age_ms": None if stamp is None else now - stamp,
                "used": None if values is None or not known else values.perp_reasons[k] is None,
                "reason": values.perp_reasons[k] if values is not None and known else None,
                "value": None if mid != mid else f"{mid:.{decimals}f}",
                "connection": None if stats is None else _connection(stats),
                "instrument": _instrument(stats, ps.pair, ps.kind),
            }
            via = slot_route(config, cfg, ps.pair)
            if via is not None:
                row["via"] = via
            rows.append(row)
        return rows

    async def info(self, request: web.Request) -> web.Response:
        """Version and shape of the running daemon, its latest round (and whether the loop has
        stalled since), and what its consumers must configure to verify it: the address that
        signs its rounds and the deployment they are signed for."""
        ctx = self._ctx
        result = ctx.hub.latest_result
        # [signing] is read at start-up only, and a reload keeps its running values in the
        # config in force (oracled/reload.py), so this is the deployment the signer signs for.
        signing = ctx.current_config.signing
        return json_response(
            {
                "version": ctx.version,
                "round_interval_ms": ctx.current_config.oracle.round_interval_ms,
                "markets": len(ctx.current_config.markets),
                "round": None if result is None else result.round,
                "ts": None if result is None else result.ts,
                # The latest round, not a current one while the loop is stalled: say so, in
                # the words of the price endpoints' 503 `stalled` (as the sources endpoint does).
                "stalled": None if result is None else ctx.stalled(),
                "signer": ctx.hub.signer,
                "deployment": signing.deployment if ctx.hub.signer is not None else None,
            }
        )
