"""Pyth on EVM read from the local node's MockPyth: the price band, staleness, unknown ids."""

from __future__ import annotations

import aiohttp
import pytest
from chain_rig import (
    PYTH_BTC_ID,
    PYTH_ETH_ID,
    Anvil,
    Chain,
    Deployed,
    pyth_update,
)
from reading import WARPED, make_reader, pyth_spec, watch
from rpc_proxy import Lies, RpcProxy
from structlog.testing import capture_logs

from oracled.clock import SystemClock
from oracled.config import SourceConfig
from oracled.eth import selector
from oracled.sources.evm.pyth_evm import PythEvmFeed, PythEvmSource
from oracled.sources.stats import SourceStats

pytestmark = pytest.mark.asyncio(loop_scope="session")

PRICE = selector("getPriceUnsafe(bytes32)")


async def test_normal_read_is_the_confidence_band(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """price 3000.12, conf 0.015 at expo -8 reads as bid = price - conf, ask = price + conf,
    with publishTime as venue time; both feeds of the contract come from one block read."""
    reader = make_reader([anvil.url], http)
    eth = watch(reader, PythEvmFeed("py", "ETH/USD", snapshot.pyth, pyth_spec(PYTH_ETH_ID)))
    btc = watch(reader, PythEvmFeed("py", "BTC/USD", snapshot.pyth, pyth_spec(PYTH_BTC_ID)))
    assert await reader.poll_once()
    (price,) = await chain.call(
        snapshot.pyth, "getPriceUnsafe(bytes32)", PYTH_ETH_ID,
        returns=["(int64,uint64,int32,uint256)"],
    )  # fmt: skip
    quote = eth.last
    assert quote.bid == pytest.approx(3000.105, rel=1e-12)
    assert quote.ask == pytest.approx(3000.135, rel=1e-12)
    assert quote.price is None
    assert quote.venue_ts == price[3] * 1000
    assert btc.last.bid == pytest.approx(59970.0, rel=1e-12)
    assert reader.stats.round_trips == 2  # the head, then the read
    assert quote.block == btc.last.block


async def test_stale_price_is_flagged(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """A publishTime older than max_age_s by the block's clock flags the quote `stale`; a fresh
    update clears it."""
    reader = make_reader([anvil.url], http, max_clock_skew_ms=WARPED)
    got = watch(reader, PythEvmFeed("py", "ETH/USD", snapshot.pyth, pyth_spec(PYTH_ETH_ID, 30)))
    assert await reader.poll_once()
    assert got.last.flag is None
    await chain.warp(31)
    assert await reader.poll_once()
    assert got.last.flag == "stale"
    now = await chain.timestamp()
    await pyth_update(chain, snapshot.pyth, PYTH_ETH_ID, 301_000_000_000, 2_000_000, -8, now)
    assert await reader.poll_once()
    assert (got.last.flag, got.last.bid) == (None, pytest.approx(3009.98, rel=1e-12))


async def test_a_publish_time_far_ahead_of_the_block_is_flagged_stale_too(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """Pyth's getPriceNoOlderThan takes the age either way (`diff(block.timestamp,
    publishTime)`): a price stamped more than max_age_s after the block it is read at is flagged
    `stale` as an old one is, and one a little ahead (within max_age_s) is not. Before, only an
    old one was flagged."""
    reader = make_reader([anvil.url], http)
    got = watch(reader, PythEvmFeed("py", "ETH/USD", snapshot.pyth, pyth_spec(PYTH_ETH_ID, 30)))
    now = await chain.timestamp()
    await pyth_update(chain, snapshot.pyth, PYTH_ETH_ID, 301_000_000_000, 2_000_000, -8, now + 20)
    assert await reader.poll_once()
    assert (got.last.flag, got.last.venue_ts) == (None, (now + 20) * 1000)
    await pyth_update(chain, snapshot.pyth, PYTH_ETH_ID, 302_000_000_000, 2_000_000, -8, now + 60)
    assert await reader.poll_once()
    block = await chain.timestamp()
    assert block + 30 < now + 60  # read at a block more than max_age_s before the publish time
    assert (got.last.flag, got.last.venue_ts) == ("stale", (now + 60) * 1000)
    assert not got.stats.dropped


async def test_unknown_price_id_is_dropped(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """An id the contract does not hold reverts inside the multicall: that feed is dropped with
    `call_failed` on every block, with one warning naming the id and the revert (Pyth's
    PriceFeedNotFound, 0x14aebe68), and its neighbour in the same read is unaffected."""
    reader = make_reader([anvil.url], http)
    bad = watch(reader, PythEvmFeed("py", "SOL/USD", snapshot.pyth, pyth_spec(b"\x01" * 32)))
    good = watch(reader, PythEvmFeed("py", "ETH/USD", snapshot.pyth, pyth_spec(PYTH_ETH_ID)))
    with capture_logs() as logs:
        assert await reader.poll_once()
        await chain.mine()
        assert await reader.poll_once()
    assert bad.stats.dropped["call_failed"] == 2
    assert bad.quotes == []
    assert len(good.quotes) == 1
    warned = [e for e in logs if e["event"] == "pyth price unreadable"]
    assert [(e["feed_id"], e["revert"]) for e in warned] == [("0x" + "01" * 32, "0x14aebe68")]


async def test_wide_confidence_is_dropped(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """A confidence band as wide as the price has no usable bid: dropped `wide_confidence`."""
    now = await chain.timestamp()
    await pyth_update(chain, snapshot.pyth, PYTH_ETH_ID, 100, 100, -8, now + 1)
    reader = make_reader([anvil.url], http)
    got = watch(reader, PythEvmFeed("py", "ETH/USD", snapshot.pyth, pyth_spec(PYTH_ETH_ID)))
    assert await reader.poll_once()
    assert got.stats.dropped["wide_confidence"] == 1
    assert got.quotes == []


async def test_a_refused_price_is_counted_and_logged_once_while_it_stays(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """A refused price that stays in the contract for many blocks is one refusal: counted
    once and logged once with its reason and values (as a refused Chainlink round is), not
    counted again on every block; the next refused price is counted and logged again."""
    now = await chain.timestamp()
    await pyth_update(chain, snapshot.pyth, PYTH_ETH_ID, 100, 100, -8, now + 1)
    reader = make_reader([anvil.url], http)
    got = watch(reader, PythEvmFeed("py", "ETH/USD", snapshot.pyth, pyth_spec(PYTH_ETH_ID)))
    with capture_logs() as logs:
        assert await reader.poll_once()
        await chain.mine(2)
        assert await reader.poll_once()
        await pyth_update(chain, snapshot.pyth, PYTH_ETH_ID, -5, 1, -8, now + 2)
        assert await reader.poll_once()
    assert got.stats.dropped == {"wide_confidence": 1, "non_positive": 1}
    refused = [e for e in logs if e["event"] == "pyth price refused"]
    assert [(e["reason"], e["price"], e["conf"]) for e in refused] == [
        ("wide_confidence", 100, 100),
        ("non_positive", -5, 1),
    ]
    assert got.quotes == []


async def test_an_older_publish_time_after_a_reorg_is_refused_and_the_newer_withdrawn(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """A block replaced at the same height by one holding an older publishTime than the price
    already published is read (a reorg), and its price is dropped `older_price`, never
    published over the newer one; the newer one, no longer on the chain, is published again
    flagged `reorged` (excluded) instead of voting on."""
    reader = make_reader([anvil.url], http)
    got = watch(reader, PythEvmFeed("py", "ETH/USD", snapshot.pyth, pyth_spec(PYTH_ETH_ID)))
    now = await chain.timestamp()
    before = await chain.snapshot()
    await pyth_update(chain, snapshot.pyth, PYTH_ETH_ID, 301_000_000_000, 2_000_000, -8, now + 20)
    assert await reader.poll_once()
    assert got.last.bid == pytest.approx(3009.98, rel=1e-12)
    await chain.revert(before)
    await pyth_update(chain, snapshot.pyth, PYTH_ETH_ID, 302_000_000_000, 2_000_000, -8, now + 10)
    assert await reader.poll_once()  # same height, new hash: read
    assert reader.stats.reorgs == 1
    assert got.stats.dropped["older_price"] == 1
    assert [(q.bid, q.flag) for q in got.quotes] == [
        (pytest.approx(3009.98, rel=1e-12), None), (pytest.approx(3009.98, rel=1e-12), "reorged"),
    ]  # fmt: skip


async def test_a_garbage_price_flags_the_previous_quote_until_a_valid_one(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """After a good price, a negative one is dropped `non_positive` and the good quote is
    published again, once, flagged `bad_answer`: the feed is not trusted for its previous price
    while it answers garbage. The next valid price is published unflagged."""
    reader = make_reader([anvil.url], http)
    got = watch(reader, PythEvmFeed("py", "ETH/USD", snapshot.pyth, pyth_spec(PYTH_ETH_ID)))
    assert await reader.poll_once()
    now = await chain.timestamp()
    await pyth_update(chain, snapshot.pyth, PYTH_ETH_ID, -5, 1, -8, now + 1)
    assert await reader.poll_once()
    await chain.mine()
    assert await reader.poll_once()
    assert got.stats.dropped["non_positive"] == 1
    assert [q.flag for q in got.quotes] == [None, "bad_answer"]
    assert got.quotes[1].bid == got.quotes[0].bid
    await pyth_update(chain, snapshot.pyth, PYTH_ETH_ID, 301_000_000_000, 2_000_000, -8, now + 2)
    assert await reader.poll_once()
    assert (got.last.flag, got.last.bid) == (None, pytest.approx(3009.98, rel=1e-12))


async def test_a_reorg_that_takes_the_garbage_away_unflags_the_same_price(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """A garbage price flags the previous quote `bad_answer`; when a reorg replaces that block
    with one where the good price is still the latest, the same good price is published again
    unflagged (it is not taken for "nothing new")."""
    reader = make_reader([anvil.url], http)
    got = watch(reader, PythEvmFeed("py", "ETH/USD", snapshot.pyth, pyth_spec(PYTH_ETH_ID)))
    assert await reader.poll_once()
    before = await chain.snapshot()
    now = await chain.timestamp()
    await pyth_update(chain, snapshot.pyth, PYTH_ETH_ID, 0, 0, -8, now + 1)
    assert await reader.poll_once()
    await chain.revert(before)
    await chain.mine()
    assert await reader.poll_once()  # same height, new hash: read
    assert reader.stats.reorgs == 1
    assert [q.flag for q in got.quotes] == [None, "bad_answer", None]
    assert got.quotes[2].bid == got.quotes[0].bid


async def test_a_band_wider_than_max_conf_ratio_is_flagged_confidence(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """A band of 67 % of the price (below the price: it has a bid) is quoted with its band and
    flagged `confidence` (default max_conf_ratio 0.02), not dropped, so the slot shows why it is
    excluded; a narrow band again is unflagged."""
    reader = make_reader([anvil.url], http)
    got = watch(reader, PythEvmFeed("py", "ETH/USD", snapshot.pyth, pyth_spec(PYTH_ETH_ID)))
    now = await chain.timestamp()
    await pyth_update(chain, snapshot.pyth, PYTH_ETH_ID, 300_000_000_000, 201_000_000_000, -8,
                      now + 1)  # fmt: skip
    assert await reader.poll_once()
    assert (got.last.flag, got.last.bid, got.last.ask) == (
        "confidence", pytest.approx(990.0), pytest.approx(5010.0),
    )  # fmt: skip
    await pyth_update(chain, snapshot.pyth, PYTH_ETH_ID, 300_000_000_000, 5_900_000_000, -8,
                      now + 2)  # fmt: skip
    assert await reader.poll_once()
    assert got.last.flag is None  # 1.97 %: inside the default
    assert not got.stats.dropped


async def test_max_conf_ratio_comes_from_the_source_config(
    anvil: Anvil, http: aiohttp.ClientSession, snapshot: Deployed
) -> None:
    """A `pyth_evm` source's `max_conf_ratio` reaches its feeds: at 0.000001 the deployed ETH
    price's band (0.0005 % of it) is flagged `confidence`; at the default it votes."""
    flags = []
    for ratio in (0.000001, None):
        extra = {} if ratio is None else {"max_conf_ratio": ratio}
        cfg = SourceConfig(type="pyth_evm", chain="local", address=snapshot.pyth,
                           feeds={"ETH/USD": pyth_spec(PYTH_ETH_ID)}, **extra)  # fmt: skip
        source = PythEvmSource(
            "py", cfg, [("ETH/USD", "spot")], lambda q: None, SystemClock(), http,
            SourceStats("py"),
        )  # fmt: skip
        reader = make_reader([anvil.url], http)
        got = watch(reader, source.feeds[0])
        assert await reader.poll_once()
        flags.append(got.last.flag)
    assert flags == ["confidence", None]


async def _garbled(chain: Chain, pyth: str, word: int, value: int) -> bytes:
    """The contract's current answer for the ETH price with word `word` set to `value`."""
    honest = await chain.rpc(
        "eth_call", [{"to": pyth, "data": "0x" + (PRICE + PYTH_ETH_ID).hex()}, "latest"]
    )
    words = bytearray(bytes.fromhex(honest[2:]))
    words[32 * word : 32 * word + 32] = (value % 2**256).to_bytes(32, "big")
    return bytes(words)


async def test_the_honest_answer_after_a_garbled_exponent_is_published(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """A node (or a relay) garbles the exponent of a new price in one answer: the price 100
    times too high is published, as any lie of one answer is (docs/onchain.md, *Known limits*),
    and the next block's honest answer of the same price publishes it as the chain holds it.
    Before, a price was known by its time, price and band alone, and the honest answer taken
    for nothing new: the lie stayed published, and voting, until Pyth's next update."""
    reader = make_reader([proxy.url], http)
    got = watch(reader, PythEvmFeed("py", "ETH/USD", snapshot.pyth, pyth_spec(PYTH_ETH_ID)))
    assert await reader.poll_once()
    now = await chain.timestamp()
    await pyth_update(chain, snapshot.pyth, PYTH_ETH_ID, 301_000_000_000, 2_000_000, -8, now + 1)
    proxy.rewrite = Lies((PRICE, True, await _garbled(chain, snapshot.pyth, 2, -6)))
    assert await reader.poll_once()
    await chain.mine()
    assert await reader.poll_once()
    assert [(q.bid, q.flag) for q in got.quotes] == [
        (pytest.approx(3000.105, rel=1e-12), None),
        (pytest.approx(300998.0, rel=1e-12), None),
        (pytest.approx(3009.98, rel=1e-12), None),
    ]
    assert got.quotes[1].venue_ts == got.quotes[2].venue_ts == (now + 1) * 1000


async def test_the_same_garbage_after_an_honest_answer_is_refused_again(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """A node (or a relay) answers a price of zero for the price published, in every other
    block: each such answer is dropped `non_positive` and flags the quote `bad_answer`, each
    honest answer between them publishes it again unflagged. Before, a refusal was remembered
    after a valid answer: the same garbage again was neither counted nor flagged."""
    reader = make_reader([proxy.url], http)
    got = watch(reader, PythEvmFeed("py", "ETH/USD", snapshot.pyth, pyth_spec(PYTH_ETH_ID)))
    assert await reader.poll_once()
    zero = await _garbled(chain, snapshot.pyth, 0, 0)
    for _ in range(2):
        proxy.rewrite = Lies((PRICE, True, zero))
        await chain.mine()
        assert await reader.poll_once()
        await chain.mine()
        assert await reader.poll_once()
    good = pytest.approx(3000.105, rel=1e-12)
    assert [(q.bid, q.flag) for q in got.quotes] == [
        (good, None), (good, "bad_answer"), (good, None), (good, "bad_answer"), (good, None),
    ]  # fmt: skip
    assert got.stats.dropped == {"non_positive": 2}
