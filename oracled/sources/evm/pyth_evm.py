"""Pyth price feeds on an EVM chain: `getPriceUnsafe(id)` on the Pyth contract, every block.

`getPriceUnsafe` returns the stored price whatever its age (`getPriceNoOlderThan` would revert
instead, and a revert carries less information than the age), so staleness is judged here:
`publishTime` more than the feed's `max_age_s` from the block's clock, behind it or ahead of it
(as Pyth's own `getPriceNoOlderThan` counts it), flags the quote `stale`,
and a band wider than the source's `max_conf_ratio` of the price flags it `confidence` (as the
Hermes adapter does).
The quote is emitted like the Hermes adapter's: ``bid = (price - conf) * 10**expo``,
``ask = (price + conf) * 10**expo``, so the core's mid is Pyth's price and its spread the
confidence band; `venue_ts` is `publishTime`.

Refused (counted drop reasons): a publishTime older than one already published (`older_price`,
after a reorg; not older than one stamped more than `max_age_s` past its block, which was
flagged stale and orders nothing); and garbage from the feed itself, after which its previous
quote is not trusted either and the reader publishes it again flagged `bad_answer` until a
valid price arrives: `malformed` words, no price yet (`no_price`), `non_positive`, a band
reaching zero (`wide_confidence`).
A price is known by all four words (an honest answer after a garbled one of the same time is
news), and a refusal is counted once while it stays the latest.

Return value (a static struct, four words): ``(int64 price, uint64 conf, int32 expo,
uint256 publishTime)``; https://docs.pyth.network/price-feeds/api-reference/evm/get-price-unsafe
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import structlog

from oracled.bands import BAND_SLACK
from oracled.config import FeedSpec, SourceConfig
from oracled.model import Quote
from oracled.sources.evm.feed import Block, Call, Feed, FeedResult
from oracled.sources.evm.multicall import selector
from oracled.sources.evm.source import ChainSource

__all__ = ["DEFAULT_MAX_CONF_RATIO", "PythEvmFeed", "PythEvmSource"]

_GET_PRICE_UNSAFE: Final = selector("getPriceUnsafe(bytes32)")
_I64: Final = 1 << 63
#: The contract stores publishTime as a uint64 (its PriceInfo): a larger one is not its answer.
_U64: Final = 1 << 64
_MAX_EXPO: Final = 36
DEFAULT_MAX_CONF_RATIO: Final = float(SourceConfig.model_fields["max_conf_ratio"].get_default())


class PythEvmFeed(Feed):
    """One Pyth price id on one Pyth contract, for one canonical pair."""

    __slots__ = (
        "_call_failing",
        "_calls",
        "_feed_id",
        "_garbled",
        "_last",
        "_last_ahead",
        "_log",
        "_max_age_s",
        "_max_conf_ratio",
        "_rejected",
    )

    distrusting = frozenset({"malformed", "no_price", "non_positive", "wide_confidence"})
    reorged = frozenset({"older_price"})

    def __init__(
        self,
        source_id: str,
        pair: str,
        contract: str,
        spec: FeedSpec,
        *,
        max_conf_ratio: float = DEFAULT_MAX_CONF_RATIO,
    ) -> None:
        super().__init__(source_id, pair)
        # A band of exactly the ratio is not wider than it (BAND_SLACK, as the gates' band):
        # 5,190,000,000,000 x 0.0003 rounds under 1,557,000,000.
        self._max_conf_ratio = max_conf_ratio * BAND_SLACK
        if spec.feed_id is None or spec.max_age_s is None:
            raise ValueError("a Pyth feed needs feed_id and max_age_s")
        feed_id = bytes.fromhex(spec.feed_id[2:])
        self._feed_id = spec.feed_id
        self._calls = (Call(contract, _GET_PRICE_UNSAFE + feed_id),)
        self._call_failing = False  # logged once while the read reverts
        self._garbled = False  # logged once while the answer is not a price
        self._max_age_s = spec.max_age_s
        # publishTime, price, conf, expo and flag of the last quote; the words refused last. A
        # price is known by all its words: an answer of the same time can be garbled (by a node
        # or a relay), and the honest answer after it is news, not the same price again.
        self._last: tuple[int, int, int, int, str | None] | None = None
        self._rejected: tuple[int, int, int, int] | None = None
        # The last price was stamped more than max_age_s past its block (flagged stale): no
        # time to order by. A price older than it is not a reorg's: before, one such answer (a
        # node's or a relay's garbage) had every real price after it refused `older_price`.
        self._last_ahead = False
        self._log = structlog.get_logger("oracled").bind(source=source_id, pair=pair)

    def calls(self) -> Sequence[Call]:
        return self._calls

    def decode(
        self, results: Sequence[tuple[bool, bytes]], block: Block, recv_ts: int
    ) -> FeedResult:
        ok, data = results[0]
        if not ok:  # e.g. PriceFeedNotFound (0x14aebe68): the id is not on this contract
            if not self._call_failing:
                self._call_failing = True
                self._log.warning(
                    "pyth price unreadable", feed_id=self._feed_id, revert="0x" + data[:4].hex(),
                    block=block.number, hint="check the feed id and the Pyth contract address",
                )  # fmt: skip
            return "call_failed"
        self._call_failing = False
        if len(data) < 128:  # e.g. the address holds no contract: an empty answer
            return self._malformed(f"{len(data)} bytes, not four words", block)
        price = int.from_bytes(data[0:32], "big", signed=True)
        conf = int.from_bytes(data[32:64], "big", signed=True)
        expo = int.from_bytes(data[64:96], "big", signed=True)
        publish_time = int.from_bytes(data[96:128], "big")
        if not (
            -_I64 <= price < _I64
            and 0 <= conf < _I64
            and -_MAX_EXPO <= expo <= _MAX_EXPO
            and publish_time < _U64
        ):
            return self._malformed(
                f"out of range: price {price} conf {conf} expo {expo} publishTime {publish_time}",
                block,
            )
        self._garbled = False
        words = (publish_time, price, conf, expo)
        last = self._last
        if last is not None and publish_time < last[0] and not self._last_ahead:
            return self._refused("older_price", words, block)
        if publish_time == 0:
            return self._refused("no_price", words, block)
        if price <= 0:
            return self._refused("non_positive", words, block)
        if conf >= price:  # the band reaches zero: no usable bid
            return self._refused("wide_confidence", words, block)
        flag: str | None = None
        # Either way, as Pyth's own getPriceNoOlderThan (`diff(block.timestamp, publishTime)`):
        # a publishTime far ahead of the block is no fresher than one far behind it.
        ahead = publish_time - block.timestamp > self._max_age_s
        if ahead or block.timestamp - publish_time > self._max_age_s:
            flag = "stale"
        elif conf > price * self._max_conf_ratio:
            flag = "confidence"
        if last == (*words, flag):
            return None
        self._last = (*words, flag)
        self._last_ahead = ahead
        self._rejected = None  # a valid price read since: the same garbage again is refused
        scale = 10.0**expo
        return Quote(
            self.source_id, self.pair, recv_ts, None, (price - conf) * scale,
            (price + conf) * scale, venue_ts=publish_time * 1000, flag=flag,
            block=block.number, block_ts=block.timestamp * 1000,
        )  # fmt: skip

    def _malformed(self, what: str, block: Block) -> str:
        """Words that are not a Pyth price: counted on every block, logged once while they
        last, and distrusted like any garbage, so that the same valid price read again after
        them is published again unflagged (before, a short answer was not distrusted: the
        reader flagged the last quote `bad_answer`, and the feed, seeing that price unchanged,
        never published it again until a new one came)."""
        if not self._garbled:
            self._garbled = True
            self._log.warning(
                "pyth price malformed", feed_id=self._feed_id, answer=what, block=block.number,
                hint="check the Pyth contract address",
            )  # fmt: skip
        return self._distrusted("malformed")

    def _refused(self, reason: str, words: tuple[int, int, int, int], block: Block) -> str | None:
        """A refused price is counted and logged once, not on every block it stays stored."""
        if self._rejected == words:
            return None
        self._rejected = words
        self._distrusted(reason)
        publish_time, price, conf, expo = words
        self._log.warning(
            "pyth price refused", reason=reason, price=price, conf=conf, expo=expo,
            publish_time=publish_time, block=block.number,
        )  # fmt: skip
        return reason

    def _distrusted(self, reason: str) -> str:
        """A garbage price, or one older than the last (a reorg took the last away): the reader
        now publishes the last quote flagged (bad_answer or reorged), so the next valid read is
        new even if it repeats the last price (a reorg took the bad away, or brought the last
        back)."""
        if (reason in self.distrusting or reason in self.reorged) and self._last is not None:
            self._last = (*self._last[:4], reason)
        return reason


class PythEvmSource(ChainSource):
    """Source type `pyth_evm`: the Pyth contract in `address`, one price id per pair."""

    def build_feed(self, pair: str, spec: FeedSpec) -> Feed:
        if self.cfg.address is None:
            raise ValueError("a pyth_evm source needs the Pyth contract address")
        return PythEvmFeed(
            self.source_id, pair, self.cfg.address, spec, max_conf_ratio=self.cfg.max_conf_ratio
        )
