"""On-chain feeds decoded from hand-built answers, and built from their config tables: the drop
reasons a live contract rarely shows, and the config that cannot make a feed."""

from __future__ import annotations

import aiohttp
import pytest
from eth_abi.abi import encode

from oracled.clock import SystemClock
from oracled.config import FeedSpec, SourceConfig
from oracled.model import Quote
from oracled.sources.evm.chainlink import ChainlinkFeed, ChainlinkSource
from oracled.sources.evm.feed import Block
from oracled.sources.evm.pyth_evm import PythEvmFeed, PythEvmSource
from oracled.sources.stats import SourceStats

PYTH = "0x" + "11" * 20
PROXY = "0x" + "22" * 20
FEED_ID = "0x" + "ab" * 32
NOW = 1_700_000_000
BLOCK = Block(100, "0x" + "cd" * 32, NOW)


def pyth_answer(price: int, conf: int, expo: int, publish_time: int) -> bytes:
    """getPriceUnsafe's four words; each is written as a full signed word so that values out
    of the struct's own ranges (int64, uint64, int32) can be sent as a lying node would."""
    return encode(["int256", "int256", "int256", "uint256"], [price, conf, expo, publish_time])


def pyth_feed(max_age_s: int = 60) -> PythEvmFeed:
    return PythEvmFeed("py", "ETH/USD", PYTH, FeedSpec(feed_id=FEED_ID, max_age_s=max_age_s))


@pytest.mark.parametrize(
    "data",
    [
        pyth_answer(300_000, 100, -2, NOW)[:96],  # three words, no publishTime
        pyth_answer(1 << 63, 100, -2, NOW),  # price past int64
        pyth_answer(300_000, -1, -2, NOW),  # negative confidence
        pyth_answer(300_000, 100, 37, NOW),  # exponent past any real feed's
        # past the contract's uint64, found by the reader's fuzz (test_chain_fuzz.py): before,
        # published flagged stale with a venue time of 10**80 ms
        pyth_answer(300_000, 100, -2, (1 << 256) - 1),
    ],
    ids=["short", "price_range", "conf_range", "expo_range", "publish_time_range"],
)
def test_a_pyth_answer_of_the_wrong_shape_is_malformed(data: bytes) -> None:
    """An answer too short for the struct, or with a field outside its Solidity type, is
    dropped as `malformed`, never read into a price."""
    assert pyth_feed().decode([(True, data)], BLOCK, NOW * 1000) == "malformed"


@pytest.mark.parametrize(
    ("price", "publish_time", "reason"),
    [(300_000, 0, "no_price"), (0, NOW, "non_positive"), (-300_000, NOW, "non_positive")],
)
def test_a_pyth_price_never_published_or_not_positive_is_dropped(
    price: int, publish_time: int, reason: str
) -> None:
    """A slot that was never written (publishTime 0) and a price at or below zero are drop
    reasons, not quotes."""
    data = pyth_answer(price, 0, -2, publish_time)
    assert pyth_feed().decode([(True, data)], BLOCK, NOW * 1000) == reason


def test_a_pyth_price_read_again_is_emitted_once_and_again_when_it_goes_stale() -> None:
    """The same stored price on the next block is nothing new (no duplicate quote); once the
    block's clock passes max_age_s it is emitted again, flagged stale."""
    feed = pyth_feed(max_age_s=60)
    data = pyth_answer(300_000, 100, -2, NOW)
    first = feed.decode([(True, data)], BLOCK, NOW * 1000)
    assert isinstance(first, Quote) and first.flag is None
    later = Block(101, "0x" + "ce" * 32, NOW + 12)
    assert feed.decode([(True, data)], later, (NOW + 12) * 1000) is None
    stale = Block(110, "0x" + "cf" * 32, NOW + 61)
    again = feed.decode([(True, data)], stale, (NOW + 61) * 1000)
    assert isinstance(again, Quote) and again.flag == "stale"
    assert again.bid == first.bid


@pytest.mark.parametrize(("conf", "flag"), [(1_557_000_000, None), (1_557_000_001, "confidence")])
def test_a_pyth_band_of_exactly_max_conf_ratio_is_not_flagged(conf: int, flag: str | None) -> None:
    """A band of exactly `max_conf_ratio` of the price is not wider than it: 15.57 on 51,900 at
    0.0003 votes, as the gates take a band of exactly `max_confidence_ratio`. Before, the
    product rounded under the conf and the price was flagged `confidence`; one unit wider is."""
    spec = FeedSpec(feed_id=FEED_ID, max_age_s=60)
    feed = PythEvmFeed("py", "ETH/USD", PYTH, spec, max_conf_ratio=0.0003)
    got = feed.decode([(True, pyth_answer(5_190_000_000_000, conf, -8, NOW))], BLOCK, NOW * 1000)
    assert isinstance(got, Quote) and got.flag == flag


@pytest.mark.parametrize(
    ("build", "spec"),
    [
        (lambda s: ChainlinkFeed("cl", "ETH/USD", s), FeedSpec(address=PROXY)),
        (lambda s: ChainlinkFeed("cl", "ETH/USD", s), FeedSpec(heartbeat_s=3600)),
        (lambda s: PythEvmFeed("py", "ETH/USD", PYTH, s), FeedSpec(feed_id=FEED_ID)),
        (lambda s: PythEvmFeed("py", "ETH/USD", PYTH, s), FeedSpec(max_age_s=60)),
    ],
    ids=["chainlink_no_heartbeat", "chainlink_no_address", "pyth_no_max_age", "pyth_no_id"],
)
def test_a_feed_spec_missing_what_the_feed_needs_is_refused(build: object, spec: FeedSpec) -> None:
    """Without its address and heartbeat (Chainlink) or its price id and max age (Pyth) a feed
    cannot judge what it reads: building it raises instead of reading unchecked."""
    with pytest.raises(ValueError, match="needs"):
        build(spec)  # type: ignore[operator]


async def test_the_sources_build_a_feed_per_configured_pair_and_report_the_rest() -> None:
    """A chainlink or pyth_evm source builds one feed per spot pair that has a feed table;
    a pair without one is reported as failed, not silently unread; a pyth_evm source without
    its contract address is refused; and a source run without a chain reader says so."""
    clock = SystemClock()
    pairs = [("ETH/USD", "spot"), ("BTC/USD", "spot")]
    async with aiohttp.ClientSession() as http:
        cl_cfg = SourceConfig(
            type="chainlink", chain="local",
            feeds={"ETH/USD": FeedSpec(address=PROXY, heartbeat_s=3600)},
        )  # fmt: skip
        stats = SourceStats("cl")
        cl = ChainlinkSource("cl", cl_cfg, pairs, lambda q: None, clock, http, stats)
        assert [(type(f).__name__, f.pair) for f in cl.feeds] == [("ChainlinkFeed", "ETH/USD")]
        assert set(stats.failed_instruments) == {"BTC/USD"}
        py_feeds = {"ETH/USD": FeedSpec(feed_id=FEED_ID, max_age_s=60)}
        py_cfg = SourceConfig(type="pyth_evm", chain="local", address=PYTH, feeds=py_feeds)
        py = PythEvmSource("py", py_cfg, pairs[:1], lambda q: None, clock, http, SourceStats("py"))
        assert [type(f).__name__ for f in py.feeds] == ["PythEvmFeed"]
        no_contract = SourceConfig(type="pyth_evm", chain="local", feeds=py_feeds)
        with pytest.raises(ValueError, match="Pyth contract address"):
            PythEvmSource("py", no_contract, pairs[:1], lambda q: None, clock, http,
                          SourceStats("py"))  # fmt: skip
        with pytest.raises(RuntimeError, match="without a chain reader"):
            await cl.run()


def test_a_pyth_price_after_one_stamped_far_ahead_of_its_block_is_published() -> None:
    """A price stamped more than max_age_s past its block is flagged stale and orders nothing:
    the real price read at the next block, older than it, is published unflagged, not refused
    as `older_price`. Found by fuzzing the reader with a hostile node
    (tests/chain/test_chain_fuzz.py): before, one answer stamped a year ahead had every real
    price after it refused, and the stale one re-emitted `reorged`, until the chain reached
    that time, and a real one after it orders again."""
    feed = pyth_feed(max_age_s=60)
    ahead = feed.decode([(True, pyth_answer(300_000, 100, -2, NOW + 365 * 86_400))], BLOCK, NOW)
    assert isinstance(ahead, Quote) and ahead.flag == "stale"
    later = Block(101, "0x" + "ce" * 32, NOW + 12)
    real = feed.decode([(True, pyth_answer(301_000, 100, -2, NOW + 10))], later, NOW + 12_000)
    assert isinstance(real, Quote), real
    assert (real.flag, real.venue_ts) == (None, (NOW + 10) * 1000)
    # a real price orders again: one older than it is a reorg's
    older = pyth_answer(300_500, 100, -2, NOW + 5)
    assert feed.decode([(True, older)], later, NOW + 12_000) == "older_price"
