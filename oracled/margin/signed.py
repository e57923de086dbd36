"""`oracled margin` in signed mode: decisions only on prices a quorum of allowed signers signed.

The unsigned mode believes its WebSocket: whoever can change a frame on the way (a proxy, a
network path in other hands) sets the price it liquidates on. In signed mode the service asks
each daemon for `signed` frames (docs/contracts.md; they cannot be batched), verifies every one
with `oracled.client.OracleClient` (the accounts file's signers grouped by identity, its
deployment and quorum, the policy's `max_report_age_ms` and `max_report_future_ms`) and gives the
engine the client's quorum view of each market, never a frame itself:

* the price is the median of a quorum of identities' live signed prices; the mark is their
  signed mark (the perpetual's leaf), `perps` only when every one of them made it from the
  perpetuals, else a `fallback` mark the policy's `mark_fallback` rules on;
* each view names the verified reports it was made of (`PriceView.signers`), so that every
  decision on it says whose signed messages of which round it rests on (`PriceRef.signers`);
* a market without a verified quorum is frozen with reason `unknown:no_quorum`, a pause like
  any other (measured from its last usable view);
* a daemon's signed frames come one per market, so the service groups them by round time: the
  engine's views are refreshed, and a decision taken, once a daemon's round is complete (every
  market it serves, or its next round began). A round counts only once complete: while a round
  of any daemon is coming in, a live view is made of each identity's reports up to its last
  complete round (`OracleClient.price`'s `upto`), so every decision rests on one round of each
  daemon across its markets (but a market missing from a round, which keeps that daemon's
  report before it), never on a round half in, nor on the first frame of a daemon's next round
  that completed the one before. A daemon left mid-round holds back no other: its complete
  rounds count until they age out. A view without a price goes at once: it mixes no rounds;
* every change of a quorum view reaches the engine at once, older or newer: a report withdrawn
  (a stall, an equivocation) may have been the newest; at the tick, reports age out;
* a daemon's `stalled` frame (its round loop stalled, or its rounds go unsigned past its stall
  limit: the signed notice either way) withdraws its reports: the client verifies it as the
  StallNotice of the signer it names (`OracleClient.take_stall`) and takes that signer as
  stalled, so its identity's reports leave every quorum at once, however young, until a
  report of a later round of it is verified. A market the other replicas still make a quorum
  of is priced by them, as if the daemon were down; one they do not is frozen with reason
  `stalled` (the cause of its lost quorum). A daemon not yet verified from counts toward no
  quorum: its stall changes nothing; nor does a frame the client refuses (unsigned, signed by
  another key, or too soon after the signer's round), which anyone on the way could write.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import IO

import aiohttp
import structlog

from oracled.client import MarketView, OracleClient, Rejection
from oracled.client_stream import STALLED, Request, Subscriptions
from oracled.eth import checksum_address
from oracled.lograte import LogEveryMinute
from oracled.margin.config import SignedFeed
from oracled.margin.engine import MarginEngine
from oracled.margin.prices import PriceView, SignerRef, parse_price
from oracled.margin.reads import Reads
from oracled.margin.service import MarginService, _wall_ms
from oracled.publish.signer import SIGNED_FORMAT
from oracled.urls import shown_url

__all__ = ["NO_QUORUM", "STALLED_QUORUM", "SignedMarginService", "view_of"]

_log = structlog.get_logger(component="margin")

#: The reason a view without a verified quorum carries (frozen as `unknown:no_quorum`).
NO_QUORUM = "no_quorum"
#: Why a market has no quorum when stalled daemons' reports were left out of it.
STALLED_QUORUM = "stalled"
#: The quorum statuses with a price.
_LIVE = frozenset({"active", "degraded"})


def view_of(market: MarketView) -> PriceView:
    """The engine's view of a verified quorum view (`active`, `degraded` or `paused`).

    ValueError, as `PriceView.from_wire`, for a price or mark that is no positive finite
    number: a signature proves who said it, not that it is a price (a market quoting below its
    exponent's resolution is signed `active` at 0)."""
    live = [r for r in market.reports if r.signer in market.signers]
    at_ts = [r.round for r in live if r.ts == market.ts]
    mark_text = None if market.mark is None else str(market.mark)
    mode = None
    if market.mark is not None:
        mode = "perps" if all(r.mark_mode == "perps" for r in live) else "fallback"
    elif any(r.mark_mode is not None for r in live):  # a perpetual market without a mark
        mode = "none"
    price_text = None if market.price is None else str(market.price)
    signers = tuple(
        SignerRef(
            identity=r.identity,
            address=r.signer,
            ts=r.ts,
            round=r.round,
            status=r.status,
            price=None if r.price is None else str(r.price),
            mark=None if r.mark is None else str(r.mark),
            format=SIGNED_FORMAT,  # the client verifies in this daemon's format only
        )
        for r in sorted(live, key=lambda r: (r.identity, r.signer))
    )
    return PriceView(
        market=market.market,
        ts=market.ts or 0,
        round=max(at_ts, default=0),
        status=market.status,
        reasons=(),  # not signed
        price=parse_price(price_text),
        price_text=price_text,
        last_good=None,  # not signed: the engine's own last usable view is the last good one
        last_good_text=None,
        last_good_ts=None,
        mark=parse_price(mark_text),
        mark_text=mark_text,
        signature=None,
        mark_mode=mode,
        signers=signers,
    )


def _no_quorum(market: str, now_ms: int) -> PriceView:
    return PriceView(
        market=market,
        ts=now_ms,
        round=0,
        status="unknown",
        reasons=(NO_QUORUM,),
        price=None,
        price_text=None,
        last_good=None,
        last_good_text=None,
        last_good_ts=None,
        mark=None,
        mark_text=None,
        signature=None,
    )


class SignedMarginService(MarginService):
    """The margin service on verified signed prices of one or more daemons."""

    def __init__(
        self,
        engine: MarginEngine,
        urls: Sequence[str],
        out: IO[bytes],
        feed: SignedFeed,
        *,
        step_ms: int = 1_000,
        reconnect_max_s: float = 5.0,
        clock: Callable[[], int] = _wall_ms,
        retry_s: float = 10.0,
    ) -> None:
        if not urls:
            raise ValueError("give at least one daemon's stream URL")
        super().__init__(
            engine,
            urls[0],
            out,
            step_ms=step_ms,
            reconnect_max_s=reconnect_max_s,
            clock=clock,
            retry_s=retry_s,
        )
        self.urls = tuple(dict.fromkeys(urls))
        policy = engine.book.policy
        self.client = OracleClient(
            feed.allowed(),
            deployment=feed.deployment,
            quorum=feed.quorum,
            max_age_ms=policy.max_report_age_ms,
            max_future_ms=policy.max_report_future_ms,
            now_ms=clock,
        )
        self._subs_by_url = {url: Subscriptions(engine.markets) for url in self.urls}
        # Per daemon: the round time being received and the markets of it verified so far
        # (None once the round was complete and decided on).
        self._round: dict[str, tuple[int, set[str] | None]] = {}
        # Per identity, the time of its last complete round: the newest of its reports that
        # count while a round of any daemon is coming in (`OracleClient.price`'s `upto`).
        self._settled: dict[str, int] = {}
        # The last verified view given to the engine per market, and the markets now frozen
        # for want of a quorum, with why (NO_QUORUM, or STALLED_QUORUM).
        self._fed: dict[str, PriceView] = {}
        self._unverified: dict[str, str] = {}
        # Per market, the last quorum view that was no price (said once, not at every tick).
        self._bad: dict[str, MarketView] = {}
        # Which markets' views can have changed since the last refresh (reading every one
        # took about 40 ms a refresh at 1,000 markets): see `oracled.margin.reads`.
        self._reads = Reads(
            engine.markets,
            max_age_ms=policy.max_report_age_ms,
            max_future_ms=policy.max_report_future_ms,
        )
        self._stalls_read = False  # a stall was held at the last refresh
        self._refused_stalls = LogEveryMinute()  # `stalled` frames the client refused, per URL
        self._equivocated = 0  # the client's equivocations at the last refresh

    @property
    def unavailable(self) -> dict[str, str]:
        """Markets refused or removed by every daemon read, with the last one's code."""
        out: dict[str, str] = {}
        for market in self.engine.markets:
            codes = [s.unavailable.get(market) for s in self._subs_by_url.values()]
            if all(codes) and codes:
                out[market] = str(codes[-1])
        return out

    def _subs_of(self, url: str) -> Subscriptions:
        return self._subs_by_url[url]

    def _unavailable(self, market: str, code: str, url: str) -> None:
        # Only when no daemon read serves it: another replica's prices may still make a quorum.
        if market in self.unavailable:
            self.engine.book.mark_unavailable(market, code)

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, requests: Iterable[Request]) -> None:
        for markets in requests:  # signed frames come one per market: grouped by round time
            await ws.send_json({"op": "subscribe", "markets": markets, "signed": True})

    def _frame(self, raw: str | bytes, url: str) -> tuple[Request, ...]:
        text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
        if not text.startswith('{"type":"signed"'):
            frame = self._decode(text)
            if frame is None:
                return ()
            if frame.type == "error" and frame.code == STALLED:
                self._stalled_frame(text, frame.message or "", url)  # its signed word only
                return ()
            if frame.type in ("subscribed", "error"):
                return self._answer(frame, url)  # acks and errors are read alike
            # Anything else (an unsigned report put on the way) goes to the client, which
            # refuses it with its reason: only a verified price moves the engine.
        try:
            sp = self.client.feed(text)  # refusals are counted and logged by the client
        except Rejection as exc:
            if exc.reason == "equivocation":  # the signer's report of that time was withdrawn
                self._decide()
            return ()
        self.reports += 1
        signer = sp.signer
        if signer not in self.client.identity_of:
            # Written in another case: the signature covers no `signer` field, and the client
            # takes one that names the signing key in any case. Identities are by EIP-55.
            signer = checksum_address(signer)
        if self._subs_of(url).reported(sp.market):
            self._available((sp.market,))
        identity = self.client.identity_of[signer]
        live = sp.status in _LIVE
        self._reads.verified(sp.market, identity, sp.ts, self._settled.get(identity), live=live)
        self._arrived(url, signer, sp.market, sp.ts)
        return ()

    def _arrived(self, url: str, signer: str, market: str, ts: int) -> None:
        """Group a daemon's verified frames by round time; decide once its round is complete."""
        current, seen = self._round.get(url, (-1, None))
        if ts > current:
            self._round[url] = (ts, {market})  # coming in: counts once it is complete
            if seen:  # the next round began: the one before is all there will be
                self._round_complete(signer, current)
            current, seen = self._round[url]
        if ts != current or seen is None:
            return  # a late frame (taken by the client) or one of a round decided on
        seen.add(market)
        unavailable = self._subs_of(url).unavailable
        markets = self.engine.markets
        # The sizes first: the scan alone, at every frame, was 1,000 x 1,000 steps a round.
        if len(seen) + len(unavailable) >= len(markets) and all(
            m in seen or m in unavailable for m in markets
        ):
            self._round[url] = (current, None)
            self._round_complete(signer, current)

    def _round_complete(self, signer: str, ts: int) -> None:
        """`signer`'s round `ts` is all there will be: its reports up to it count."""
        identity = self.client.identity_of[signer]
        self._settled[identity] = max(ts, self._settled.get(identity, ts))
        self._reads.cut(identity, self._settled[identity])
        self._refresh()
        super()._decide()

    def _stalled_frame(self, text: str, message: str, url: str) -> None:
        """`url`'s daemon stalled: its signer's reports leave every quorum, the others price.
        Only on the daemon's StallNotice, which the client verifies (`take_stall`): a frame
        anyone on the way could write freezes nothing, as it moves no price."""
        stall = self.client.take_stall(text, shown_url(url))
        if stall is None:  # refused, or nothing held of it: it counts toward no quorum
            # Anyone on the way can send any number: a line a minute per daemon, with the count.
            count = self._refused_stalls.due(url, time.monotonic())
            if count is not None:
                _log.warning(
                    "stalled",
                    message=message[:200],
                    url=shown_url(url),
                    identity=None,
                    frames=count,
                )
            return
        _log.warning("stalled", message=message, url=shown_url(url), identity=stall.identity)
        self._refresh()
        super()._decide()

    def _refresh(self) -> None:
        """Give the engine the client's view of every market that changed. A live one of a
        market a daemon's round still coming in has reached is made of each identity's complete
        rounds only (`_settled`): no market is priced from a round whose other markets are still
        to come. A view without a price is taken at once: it mixes no rounds. Only the markets
        whose view can have changed are read (`_to_read`), and the plain view of one a round is
        coming in for only when it is not known to be live (`_known_live`)."""
        now = self.clock()
        arriving = self._arriving()
        for market in self._to_read(now, arriving):
            upto = market in arriving
            known = self._known_live(market) if upto else None
            plain: MarketView | None = None
            if known is None:
                plain = self.client.price(market)
                oldest = min((r.ts for r in plain.reports), default=None)
            else:
                oldest = known  # live at least until the report of that time ages out
            live = plain is None or plain.status in _LIVE
            if plain is None or (upto and live):
                # Taken while the plain view is live: its reports' ages count too.
                quorum = self.client.price(market, upto=self._settled)
                ages = [r.ts for r in quorum.reports]
                oldest = min(ages if oldest is None else [*ages, oldest], default=None)
            else:
                quorum = plain
            self._reads.read(market, oldest, live)
            self._take(market, quorum, now)

    def _known_live(self, market: str) -> int | None:
        """When `market`'s plain view is known to be live (`oracled.margin.reads`), so that it
        need not be read, the oldest round time its last read counted; else None."""
        return self._reads.known_live(market)

    def _to_read(self, now: int, arriving: set[str]) -> Iterable[str]:
        """The markets whose quorum view can have changed since the last refresh, in the
        engine's order (`oracled.margin.reads`); every market while a stall is held or on the
        refresh after one ended, and after an equivocation, cases not bounded there."""
        stalled = bool(self.client.stalled)
        equivocated = self.client.equivocated.total()
        if stalled or self._stalls_read or equivocated != self._equivocated:
            self._reads.everything()
        self._stalls_read, self._equivocated = stalled, equivocated
        return self._reads.due(now, arriving)

    def _arriving(self) -> set[str]:
        """The markets of the daemons' rounds still coming in, verified so far: elsewhere every
        report held is of a complete round (its view is the same up to `_settled`)."""
        return {market for _, seen in self._round.values() if seen for market in seen}

    def _take(self, market: str, quorum: MarketView, now: int) -> None:
        """Give the engine the client's view of `market`, if it changed."""
        if quorum.status == "unknown":
            self._freeze(market, quorum, now)
            return
        try:
            view = view_of(quorum)
        except ValueError as exc:  # the market keeps its last view, which ages
            if self._bad.get(market) != quorum:  # said once, however many ticks see it
                self._bad[market] = quorum
                self._bad_report(market, str(exc))
            return
        fed = self._fed.get(market)
        # Any change, older or not: a replica's report came, or one left (aged out, its daemon
        # stalled, its signer equivocated), and the one that left may have been the newest.
        if fed is None or view != fed or market in self._unverified:
            self._fed[market] = view
            self._unverified.pop(market, None)
            self.engine.on_report(view, in_order=True)

    def _freeze(self, market: str, quorum: MarketView, now: int) -> None:
        """No verified quorum (any more): frozen, with reason `stalled` when stalled daemons'
        reports were left out of it; a market never verified stays `no_report`."""
        if market not in self._fed:
            return
        reason = STALLED_QUORUM if quorum.stalled else NO_QUORUM
        if self._unverified.get(market) == reason:
            return  # frozen already, for that reason
        self._unverified[market] = reason
        stalled = [s.identity for s in quorum.stalled]
        _log.warning(
            "no_quorum", market=market, quorum=self.client.quorum, reason=reason, stalled=stalled
        )
        if reason == STALLED_QUORUM:
            self.engine.book.mark_stalled((market,))
        else:
            self.engine.on_report(_no_quorum(market, now), in_order=True)

    def _decide(self) -> None:
        # A quorum view changes with time too: a report ages out, and the view lapses, turns
        # paused, or is the median of the others. Taken at the tick, not a round later.
        self._refresh()
        super()._decide()
