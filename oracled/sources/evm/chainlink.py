"""Chainlink AggregatorV3 feeds, read through their proxy, and distrusted the documented ways.

Per block: `latestRoundData()`, `aggregator()` and `decimals()` on the proxy, and the current
aggregator's `minAnswer()`/`maxAnswer()` (an OCR aggregator refuses a report whose median is
outside them, so the feed pauses at its last answer inside: LUNA/USD stayed by its floor while
the market fell far below it; an answer on a bound is not a market price). `description()` is
read when the aggregator is first seen or replaced; the reader then reads the same block again
with the full set of calls.

Decimals and bounds are held, and a change is taken only when a second answer (another request)
says the same: one lying answer scaled a feed by a power of ten until the aggregator changed
(`_Held`). An answer of them that is not one ABI word is garbage (`ValueError`: `decode_error`).

Rejected (counted drop reasons): `updatedAt == 0` (`incomplete_round`), `updatedAt` more than a
minute after the block read (`future_round`), `answer <= 0` (`non_positive`),
`answeredInRound < roundId` (`carried_over_round`), a round older than one already published
and of no later phase (`older_round`, after a reorg; a later phase's older round, after the
proxy moved to another aggregator, is not newer, and the last quote stands, flagged `stale`
past the heartbeat as any round is). The first four are
garbage from the feed itself, so its previous quote is not trusted either: the reader publishes
it again flagged `bad_answer` until a valid round arrives (as after `unconfirmed_config`:
decimals or bounds two answers disagree on); after `older_round` the published
round is no longer on the chain, and the reader publishes it again flagged `reorged`. A round
refused is counted once while it stays the latest, known by all five words of its answer (the
honest answer of a round after a garbled one is a valid round, not the one refused). Flagged
(the core excludes the slot with the flag as reason): an answer at a bound (`at_bound`); a round
older than the feed's heartbeat by the block's clock (`stale`). `venue_ts` is `updatedAt`.

Interfaces: https://docs.chain.link/data-feeds/api-reference and
https://docs.chain.link/data-feeds#check-the-latest-answer-against-reasonable-limits
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Generic, TypeVar

import msgspec
import structlog
from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError

from oracled.config import FeedSpec
from oracled.model import Quote
from oracled.sources.evm.chain import decode_round
from oracled.sources.evm.feed import Block, Call, Feed, FeedResult
from oracled.sources.evm.multicall import selector
from oracled.sources.evm.source import ChainSource

__all__ = ["ChainlinkFeed", "ChainlinkSource"]

_LATEST_ROUND: Final = selector("latestRoundData()")
_DECIMALS: Final = selector("decimals()")
_DESCRIPTION: Final = selector("description()")
_AGGREGATOR: Final = selector("aggregator()")
_MIN_ANSWER: Final = selector("minAnswer()")
_MAX_ANSWER: Final = selector("maxAnswer()")
#: A proxy's roundId is `phaseId << 64 | aggregatorRoundId`: the phase counts the aggregators the
#: proxy has pointed to (https://docs.chain.link/data-feeds/historical-data).
_PHASE_SHIFT: Final = 64
#: How far past the block read a round's `updatedAt` may be before it is refused
#: (`future_round`). None is, from a real aggregator; the margin keeps a round a few seconds
#: ahead (a test node's hand-set round) and costs at most a minute of later rounds, where a
#: round stamped a year ahead held off every real one for a year.
_AHEAD_S: Final = 60


#: Decimals and bounds after a change seen in one answer only: the round is withheld and the
#: last quote flagged `bad_answer` (see `_Held`).
_UNCONFIRMED: Final = "unconfirmed_config"

_T = TypeVar("_T")


def _address(data: bytes) -> str | None:
    if len(data) < 32 or any(data[:12]):
        return None
    return "0x" + data[12:32].hex()


def _word(result: tuple[bool, bytes], name: str) -> int | None:
    """The signed word a one-word call answered; None when it reverted or answered nothing (an
    address without code does). Any other length is garbage: before, the first word of a longer
    answer was taken, so a malformed answer could set a feed's decimals."""
    ok, data = result
    if not ok or not data:
        return None
    if len(data) != 32:
        raise ValueError(f"{name}() answered {len(data)} bytes, not one word")
    return int.from_bytes(data, "big", signed=True)


def _places(result: tuple[bool, bytes]) -> int | None:
    places = _word(result, "decimals")
    return places if places is not None and 0 <= places <= 36 else None


class _Held(Generic[_T]):
    """A value of the aggregator's that scales or bounds every answer (decimals, bounds), taken
    from the chain only when two answers, in two requests, agree.

    A change seen in one answer asks for the block to be read again (`again`); the second
    answer adopts it (`adopted`), or brings back the value held (`held`), or names a third
    (`unconfirmed`: the round is withheld, and the next block's answer is compared with that
    one). So one lying answer is never used, and the honest answers take a taken lie back at
    the next block. A node that lies twice in a row with the same value is a consistent liar
    (docs/onchain.md, *Known limits*)."""

    __slots__ = ("_pending", "_pending_at", "known", "value")

    def __init__(self) -> None:
        self.value: _T | None = None
        self.known = False
        self._pending: tuple[_T] | None = None  # boxed: None (no bounds) can be pending too
        self._pending_at: str | None = None  # the block hash of the pending answer

    def offer(self, value: _T, at: str, *, first_taken: bool = False) -> str:
        """`held`, `adopted`, `again` or `unconfirmed` (above); `first_taken` adopts the first
        value of all (bounds, which the re-read that confirms decimals cannot ask for)."""
        if self.known and value == self.value:
            self._pending = None
            return "held"
        if (self._pending is not None and self._pending[0] == value) or (
            first_taken and not self.known
        ):
            self.value, self.known, self._pending = value, True, None
            return "adopted"
        again = self._pending_at != at
        self._pending, self._pending_at = (value,), at
        return "again" if again else "unconfirmed"


class ChainlinkFeed(Feed):
    """One Chainlink proxy for one canonical pair."""

    __slots__ = (
        "_aggregator",
        "_bounds",
        "_call_failing",
        "_calls",
        "_decimals",
        "_heartbeat_s",
        "_last",
        "_last_quote",
        "_learning",
        "_log",
        "_phase_behind",
        "_proxy",
        "_rejected",
        "_scale",
        "_settled",
        "_unconfirmed_logged",
        "_unusable_logged",
        "description",
    )

    distrusting = frozenset(
        {"incomplete_round", "future_round", "non_positive", "carried_over_round", _UNCONFIRMED}
    )
    reorged = frozenset({"older_round"})

    def __init__(self, source_id: str, pair: str, spec: FeedSpec) -> None:
        super().__init__(source_id, pair)
        if spec.address is None or spec.heartbeat_s is None:
            raise ValueError("a Chainlink feed needs address and heartbeat_s")
        self._proxy = spec.address
        self._heartbeat_s = spec.heartbeat_s
        self._log = structlog.get_logger("oracled").bind(source=source_id, pair=pair)
        self._aggregator: str | None = None
        self._bounds: _Held[tuple[int, int] | None] = _Held()
        self._decimals: _Held[int | None] = _Held()
        self._scale = 1.0
        self.description: str | None = None
        # (roundId, updatedAt, answer, flag) of the last quote. The round last refused, whole
        # (the words of `latestRoundData()`): its answer of the same round id and time can be
        # garbled, by a node or a relay, and the honest answer that follows is no refused one.
        self._last: tuple[int, int, int, str | None] | None = None
        self._last_quote: Quote | None = None  # the last quote made, as it was made
        self._rejected: tuple[int, int, int, int, int] | None = None
        self._learning = True
        self._unusable_logged = False
        self._unconfirmed_logged: object = None  # the answer last logged as unconfirmed
        # The raw answers of the decimals and bounds held, while no change is pending: the same
        # bytes again skip the weighing, as they do on almost every block.
        self._settled: Sequence[tuple[bool, bytes]] | None = None
        self._call_failing = False  # logged once while latestRoundData() reverts
        self._phase_behind: int | None = None  # a new phase's round older than the last: logged
        self._calls = self._learning_calls()

    def _learning_calls(self) -> tuple[Call, ...]:
        p = self._proxy
        return (Call(p, _LATEST_ROUND), Call(p, _AGGREGATOR), Call(p, _DECIMALS),
                Call(p, _DESCRIPTION))  # fmt: skip

    def _steady_calls(self, aggregator: str) -> tuple[Call, ...]:
        """Every block's reads; a new tuple each time, so that the reader sees them renewed."""
        p = self._proxy
        return (Call(p, _LATEST_ROUND), Call(p, _AGGREGATOR), Call(p, _DECIMALS),
                Call(aggregator, _MIN_ANSWER), Call(aggregator, _MAX_ANSWER))  # fmt: skip

    def calls(self) -> Sequence[Call]:
        return self._calls

    def decode(
        self, results: Sequence[tuple[bool, bytes]], block: Block, recv_ts: int
    ) -> FeedResult:
        (ok, data), (agg_ok, agg_data) = results[0], results[1]
        aggregator = _address(agg_data) if agg_ok else None
        aggregator = aggregator or self._proxy.lower()  # no aggregator(): the address itself
        if self._learning:  # decimals and description, then the same block again
            return self._learn(aggregator, results[2], results[3], block)
        if aggregator != self._aggregator:
            self._learning = True  # replaced upstream: learn it again
            self._calls = self._learning_calls()
            return None
        said = results[2:5]
        if said != self._settled:  # the answers of the values held: nothing to weigh
            held = self._hold(said[0], said[1], said[2], block)
            if held == "":
                return None  # a change in this answer only: the same block read again
            if held is not None:
                return held
            self._settled = said
        if not ok:
            if not self._call_failing:
                self._call_failing = True
                self._log.warning(
                    "chainlink round unreadable", proxy=self._proxy, revert="0x" + data[:4].hex(),
                    block=block.number, hint="latestRoundData() reverts: check the proxy address",
                )  # fmt: skip
            return "call_failed"
        self._call_failing = False
        words = decode_round(data)
        round_id, answer, _started, updated_at, answered_in = words
        if self._rejected == words:
            return None  # refused already; counted once while it stays the latest
        reason = self._refuse(round_id, answer, updated_at, answered_in, block.timestamp)
        if reason is not None:
            self._rejected = words
            if self._last is not None:
                # The reader now publishes the last quote flagged (bad_answer or reorged): the
                # next valid read is new, even the same round again (a reorg took the bad one
                # away, or brought the reorged one back).
                self._last = (*self._last[:3], reason)
            self._log.warning(
                "chainlink round refused", reason=reason, round_id=round_id, answer=answer,
                updated_at=updated_at, answered_in_round=answered_in, block=block.number,
            )  # fmt: skip
            return reason
        if self._last is not None and updated_at < self._last[1]:
            return self._behind_new_phase(round_id, updated_at, self._last, block, recv_ts)
        flag: str | None = None
        bounds = self._bounds.value
        if bounds is not None and not bounds[0] < answer < bounds[1]:
            flag = "at_bound"
        elif block.timestamp - updated_at > self._heartbeat_s:
            flag = "stale"
        key = (round_id, updated_at, answer, flag)
        if self._last == key:
            return None  # nothing new in this block
        self._last = key
        self._rejected = None  # a valid round read since: the same garbage again is refused
        self._last_quote = Quote(
            self.source_id, self.pair, recv_ts, answer * self._scale, venue_ts=updated_at * 1000,
            flag=flag, block=block.number, block_ts=block.timestamp * 1000,
        )  # fmt: skip
        return self._last_quote

    def _hold(
        self,
        decimals: tuple[bool, bytes],
        low: tuple[bool, bytes],
        high: tuple[bool, bytes],
        block: Block,
    ) -> str | None:
        """None when the block's decimals and bounds are the ones held (or a change confirmed
        now); "" when a change was seen in this answer only (the calls renewed: the reader reads
        the block again); else the drop reason (`unconfirmed_config`, `no_decimals`)."""
        places = _places(decimals)
        low_word, high_word = _word(low, "minAnswer"), _word(high, "maxAnswer")
        bounds = (low_word, high_word) if low_word is not None and high_word is not None else None
        self._settled = None  # weighed again until these answers are the held values
        changed = self._decimals.known  # a value held before: its change is logged
        said = (
            self._decimals.offer(places, block.hash),
            self._bounds.offer(bounds, block.hash, first_taken=True),
        )
        if "unconfirmed" in said:
            if self._unconfirmed_logged != (places, bounds):
                self._unconfirmed_logged = (places, bounds)
                self._log.warning(
                    "chainlink decimals or bounds changed in one answer only: round withheld",
                    decimals=places, held_decimals=self._decimals.value, bounds=bounds,
                    held_bounds=self._bounds.value, block=block.number,
                )  # fmt: skip
            return self._distrust(_UNCONFIRMED)
        if "again" in said:
            self._calls = self._steady_calls(self._aggregator or self._proxy)
            return ""
        self._unconfirmed_logged = None
        if said[0] == "adopted" and changed:
            self._log.warning(
                "chainlink decimals changed: taken after two answers", decimals=places,
                block=block.number,
            )  # fmt: skip
        if self._decimals.value is None:  # two answers: no usable decimals now
            return self._distrust("no_decimals")
        self._scale = 10.0**-self._decimals.value
        return None

    def _distrust(self, reason: str) -> str:
        """The reader publishes the last quote again flagged: the next valid read is new, even
        of the same round."""
        if self._last is not None:
            self._last = (*self._last[:3], reason)
        return reason

    def _refuse(
        self, round_id: int, answer: int, updated_at: int, answered_in: int, block_ts: int
    ) -> str | None:
        if updated_at == 0:
            return "incomplete_round"
        if updated_at > block_ts + _AHEAD_S:
            # An aggregator stamps a round with the time of the block that wrote it, so no round
            # read at a block is newer than that block: such a time is garbage (a node's or a
            # relay's). Taken as a round, it voted with a time from the future, and every real
            # round after it, older, was refused as `older_round` until the chain caught up.
            return "future_round"
        if answer <= 0:
            return "non_positive"
        if answered_in < round_id:
            return "carried_over_round"
        last = self._last
        if last is not None and updated_at < last[1] and not self._newer_phase(round_id):
            return "older_round"
        return None

    def _newer_phase(self, round_id: int) -> bool:
        """The round is of a later phase than the last published: the proxy now points to
        another aggregator (and no reorg took it back: that would be an earlier phase)."""
        return self._last is not None and round_id >> _PHASE_SHIFT > self._last[0] >> _PHASE_SHIFT

    def _behind_new_phase(
        self,
        round_id: int,
        updated_at: int,
        last: tuple[int, int, int, str | None],
        block: Block,
        recv_ts: int,
    ) -> Quote | None:
        """A new aggregator's latest round older than the previous aggregator's last one (the
        two ran side by side before the proxy moved). Not a reorg, which `older_round` would
        say, withdrawing a valid price until the new aggregator's next round (up to a
        heartbeat); not a newer price either (the core orders a slot by venue time). The last
        quote stands and ages by its own `updatedAt`; logged once per such round. Once the
        block's time is past its heartbeat, it is published again flagged `stale`, as on the
        normal path: before, it voted on until the core's age limit (the heartbeat plus 10 %)."""
        stale = None
        quote = self._last_quote
        if last[3] is None and quote is not None and block.timestamp - last[1] > self._heartbeat_s:
            self._last = (*last[:3], "stale")
            stale = msgspec.structs.replace(
                quote, recv_ts=recv_ts, flag="stale", block=block.number,
                block_ts=block.timestamp * 1000,
            )  # fmt: skip
        if self._phase_behind != round_id:
            self._phase_behind = round_id
            self._log.info(
                "chainlink new phase behind the last round: last kept", round_id=round_id,
                phase=round_id >> _PHASE_SHIFT, updated_at=updated_at, last_round_id=last[0],
                last_updated_at=last[1], block=block.number,
            )  # fmt: skip
        return stale

    def _learn(
        self,
        aggregator: str,
        decimals: tuple[bool, bytes],
        description: tuple[bool, bytes],
        block: Block,
    ) -> FeedResult:
        places = _places(decimals)
        if places is None:
            if not self._unusable_logged:  # a wrong address: else only a counter would say so
                self._unusable_logged = True
                self._log.error(
                    "chainlink feed unusable", proxy=self._proxy, decimals=places,
                    hint="no decimals() from 0 to 36 at this address: check it is the feed's "
                    "proxy on this chain",
                )  # fmt: skip
            return "no_decimals"
        # The first answer of a change (or of all, at start): the re-read below confirms it.
        self._decimals.offer(places, block.hash)
        self._settled = None
        if description[0]:
            try:
                (self.description,) = abi_decode(["string"], description[1])
            except (DecodingError, UnicodeDecodeError) as exc:
                # A label only: the feed reads on without it. eth_abi raises UnicodeDecodeError
                # for bytes that are not UTF-8, which escaped and kept the feed learning.
                self.description = None
                self._log.warning(
                    "chainlink description unreadable", proxy=self._proxy, error=str(exc)[:200],
                    block=block.number,
                )  # fmt: skip
        if aggregator != self._aggregator:  # bounds are the aggregator's own: learned anew
            self._bounds = _Held()
        self._aggregator = aggregator
        self._learning = False
        self._calls = self._steady_calls(aggregator)
        self._log.info(
            "chainlink feed", aggregator=aggregator, decimals=places, description=self.description
        )
        return None


class ChainlinkSource(ChainSource):
    """Source type `chainlink`: one proxy per pair (`feeds.<pair>.address`, `heartbeat_s`)."""

    def build_feed(self, pair: str, spec: FeedSpec) -> Feed:
        return ChainlinkFeed(self.source_id, pair, spec)
