"""Chainlink feeds read from the local node: normal rounds, and every round a reader must refuse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from chain_rig import (
    Anvil,
    Chain,
    Deployed,
    Tokens,
    new_token,
)
from eth_abi.abi import encode as abi_encode
from reading import WARPED, chainlink_spec, make_reader, watch, watch_eth
from rpc_proxy import Lies, RpcProxy, with_result
from structlog.testing import capture_logs

from oracled.eth import selector
from oracled.sources.evm.chainlink import ChainlinkFeed

pytestmark = pytest.mark.asyncio(loop_scope="session")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "chainlink"
SET_ROUND = "setRound(uint80,int256,uint256,uint256,uint80)"
DECIMALS = selector("decimals()")
AGGREGATOR = selector("aggregator()")
MAX_ANSWER = selector("maxAnswer()")
DESCRIPTION = selector("description()")
ROUND = selector("latestRoundData()")


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


_PHASE_1, _PHASE_2 = 1 << 64, 2 << 64  # a proxy's roundId: phaseId << 64 | aggregator round


async def _new_phase_behind(chain: Chain, snapshot: Deployed, reader: Any) -> tuple[int, str]:
    """Round 7 of phase 1 at the block's time, read by `reader`; then the proxy moves to a new
    aggregator (phase 2) whose latest round, 3, is 30 s older: the block's time then, and the
    new aggregator's address."""
    await chain.warp(60)  # the rounds below are younger than the one set at deployment
    now = await chain.timestamp()
    await chain.transact(
        snapshot.btc_aggregator, SET_ROUND, _PHASE_1 | 7, 60_000_00000000, now, now, _PHASE_1 | 7
    )
    assert await reader.poll_once()
    newer = await chain.deploy(
        "TestAggregator", ["uint8", "string", "int192", "int192"],
        [8, "BTC / USD", 1000_00000000, 1_000_000_00000000],
    )  # fmt: skip
    await chain.transact(
        newer, SET_ROUND, _PHASE_2 | 3, 59_900_00000000, now - 30, now - 30, _PHASE_2 | 3
    )
    await chain.transact(snapshot.btc_proxy, "setAggregator(address)", newer)
    return now, newer


async def test_normal_read_through_the_proxy(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """A MockV3Aggregator behind a proxy reads as 3000.00 with its updatedAt as venue time and
    the block it was read at; the first block costs one extra read to learn decimals, the next
    block two round trips (its head, then its read)."""
    reader = make_reader([anvil.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
    assert await reader.poll_once()
    head = await chain.block()
    (_, _, _, updated_at, _) = await chain.call(
        snapshot.eth_proxy, "latestRoundData()",
        returns=["uint80", "int256", "uint256", "uint256", "uint80"],
    )  # fmt: skip
    quote = got.last
    assert (quote.price, quote.flag, quote.venue_ts) == (3000.0, None, updated_at * 1000)
    assert quote.block == int(head["number"], 16)
    assert quote.block_ts == int(head["timestamp"], 16) * 1000
    assert reader.stats.round_trips == 3
    await chain.transact(snapshot.eth_aggregator, "updateAnswer(int256)", 3012_50000000)
    assert await reader.poll_once()
    assert got.last.price == 3012.5
    assert reader.stats.round_trips == 5
    assert len(got.quotes) == 2


async def test_real_mainnet_rounds_replayed(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """The mainnet BTC/USD round of the fixture reads back exactly; the real all-zero round of a
    phase boundary is refused as incomplete and never becomes a price: the good quote before it
    is published again once, flagged `bad_answer`."""
    doc = json.loads((FIXTURES / "latestRoundData_BTC_USD_mainnet.json").read_text())
    real = doc["latestRoundData_equivalent"]
    now = await chain.timestamp()
    await chain.transact(
        snapshot.btc_aggregator, SET_ROUND, int(real["roundId"]), int(real["answer"]), now, now,
        int(real["answeredInRound"]),
    )  # fmt: skip
    reader = make_reader([anvil.url], http)
    got = watch(reader, ChainlinkFeed("cl", "BTC/USD", chainlink_spec(snapshot.btc_proxy)))
    assert await reader.poll_once()
    assert got.last.price == pytest.approx(43066.45100191, rel=1e-15)
    zero = doc["phase_boundary_example"]["getRoundData_of_first_round_of_phase_(nonexistent)"]
    await chain.transact(
        snapshot.btc_aggregator, SET_ROUND, int(zero["roundId"]), int(zero["answer"]),
        zero["startedAt"], zero["updatedAt"], int(zero["answeredInRound"]),
    )  # fmt: skip
    assert await reader.poll_once()
    assert got.stats.dropped["incomplete_round"] == 1
    assert len(got.quotes) == 2
    assert [q.flag for q in got.quotes] == [None, "bad_answer"]
    assert got.last.price == pytest.approx(43066.45100191, rel=1e-15)
    await chain.mine()
    assert await reader.poll_once()
    assert got.stats.dropped["incomplete_round"] == 1  # one bad round is counted once
    assert len(got.quotes) == 2


async def test_stale_round_is_flagged(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """A round older than the feed's heartbeat by the block's clock is re-published flagged
    `stale`, so the core excludes it whatever the market's own age limit."""
    reader = make_reader([anvil.url], http, max_clock_skew_ms=WARPED)
    # A round of the test's own, its blocks stamped by hand: its age is the chain's alone, not
    # the wall time since the session deployed the aggregator or a busy machine took between
    # two blocks (a warp of 599 s read 601 s old once under load).
    await chain.transact(snapshot.eth_aggregator, "updateAnswer(int256)", 3000_00000000)
    got = watch(reader, ChainlinkFeed("cl", "ETH/USD", chainlink_spec(snapshot.eth_proxy, 600)))
    assert await reader.poll_once()
    assert got.last.flag is None and got.last.venue_ts is not None
    updated_s = got.last.venue_ts // 1000
    await chain.rpc("evm_setNextBlockTimestamp", [updated_s + 600])
    await chain.mine()
    assert await reader.poll_once()
    assert len(got.quotes) == 1  # at the heartbeat, not past it: nothing new
    await chain.rpc("evm_setNextBlockTimestamp", [updated_s + 601])
    await chain.mine()
    assert await reader.poll_once()
    assert (got.last.flag, got.last.price, len(got.quotes)) == ("stale", 3000.0, 2)
    await chain.transact(snapshot.eth_aggregator, "updateAnswer(int256)", 3001_00000000)
    assert await reader.poll_once()
    assert (got.last.flag, got.last.price) == (None, 3001.0)


async def test_answered_in_older_round_is_refused(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """answeredInRound < roundId (an answer carried over from an older round) is dropped with a
    counted reason, logged once (not on every block it stays the latest), and the previous
    good quote is re-emitted once, flagged `bad_answer`: a feed that answers garbage now is not
    trusted for its previous answer either."""
    reader = make_reader([anvil.url], http)
    got = watch(reader, ChainlinkFeed("cl", "BTC/USD", chainlink_spec(snapshot.btc_proxy)))
    assert await reader.poll_once()
    now = await chain.timestamp()
    await chain.transact(snapshot.btc_aggregator, SET_ROUND, 10, 61_000_00000000, now, now, 9)
    with capture_logs() as logs:
        assert await reader.poll_once()
        await chain.mine()
        assert await reader.poll_once()
    assert got.stats.dropped["carried_over_round"] == 1
    assert [(q.price, q.flag) for q in got.quotes] == [(60000.0, None), (60000.0, "bad_answer")]
    (refused,) = [e for e in logs if e["event"] == "chainlink round refused"]
    assert (refused["reason"], refused["round_id"], refused["answered_in_round"]) == (
        "carried_over_round", 10, 9,
    )  # fmt: skip


async def test_non_positive_answer_is_refused(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """A negative answer, and an answer of zero, are each dropped as `non_positive`."""
    reader = make_reader([anvil.url], http)
    got = watch(reader, ChainlinkFeed("cl", "BTC/USD", chainlink_spec(snapshot.btc_proxy)))
    now = await chain.timestamp()
    await chain.transact(snapshot.btc_aggregator, SET_ROUND, 7, -5, now, now, 7)
    assert await reader.poll_once()
    assert got.stats.dropped["non_positive"] == 1
    await chain.transact(snapshot.btc_aggregator, SET_ROUND, 8, 0, now + 1, now + 1, 8)
    assert await reader.poll_once()
    assert got.stats.dropped["non_positive"] == 2
    assert got.quotes == []


async def test_answer_at_min_or_max_answer_is_flagged_not_priced(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """A crash below the aggregator's minAnswer is clamped on chain to the floor, a spike above
    maxAnswer to the ceiling; the reader learns the bounds through proxy.aggregator() and flags
    either bound value `at_bound`."""
    reader = make_reader([anvil.url], http)
    got = watch(reader, ChainlinkFeed("cl", "BTC/USD", chainlink_spec(snapshot.btc_proxy)))
    assert await reader.poll_once()
    assert got.last.flag is None
    await chain.transact(snapshot.btc_aggregator, "updateAnswer(int256)", 12_00000000)
    assert await reader.poll_once()
    assert (got.last.price, got.last.flag) == (1000.0, "at_bound")
    await chain.transact(snapshot.btc_aggregator, "updateAnswer(int256)", 60_000_00000000)
    assert await reader.poll_once()
    assert (got.last.price, got.last.flag) == (60000.0, None)
    await chain.transact(snapshot.btc_aggregator, "updateAnswer(int256)", 5_000_000_00000000)
    assert await reader.poll_once()
    assert (got.last.price, got.last.flag) == (1_000_000.0, "at_bound")


async def test_aggregator_replaced_behind_the_proxy(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """When the proxy points to a new aggregator, the feed learns it again on the same block
    and publishes the new aggregator's answer with the new bounds."""
    reader = make_reader([anvil.url], http)
    feed = ChainlinkFeed("cl", "BTC/USD", chainlink_spec(snapshot.btc_proxy))
    got = watch(reader, feed)
    assert await reader.poll_once()
    newer = await chain.deploy(
        "TestAggregator", ["uint8", "string", "int192", "int192"], [6, "BTC / USD", 1, 10**15]
    )
    await chain.transact(newer, "updateAnswer(int256)", 59_000_000000)
    await chain.transact(snapshot.btc_proxy, "setAggregator(address)", newer)
    assert await reader.poll_once()
    assert (got.last.price, got.last.flag) == (59000.0, None)
    assert feed.description == "BTC / USD"


async def test_a_new_phase_whose_round_is_older_keeps_the_last_quote_and_a_reorg_does_not(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """A proxy's roundId is `phaseId << 64 | aggregatorRoundId` (as EACAggregatorProxy adds the
    phase; here the rounds carry it). The proxy moves to a new aggregator whose latest round
    (phase 2) is 30 s older than the last one published from phase 1: the two aggregators ran
    side by side. That is no reorg: nothing is dropped or withdrawn, the last quote stands
    unflagged, and one info line says so; the new aggregator's next round is published. Before,
    it was refused `older_round` and the last quote withdrawn as `reorged` until that next
    round. A reorg that then takes the phase's newer round away (same phase, older round) is
    still `older_round`, withdrawn."""
    reader = make_reader([anvil.url], http, max_clock_skew_ms=WARPED)
    got = watch(reader, ChainlinkFeed("cl", "BTC/USD", chainlink_spec(snapshot.btc_proxy)))
    _, newer = await _new_phase_behind(chain, snapshot, reader)
    with capture_logs() as logs:
        assert await reader.poll_once()
        await chain.mine()
        assert await reader.poll_once()
    assert [(q.price, q.flag) for q in got.quotes] == [(60000.0, None)]
    assert not got.stats.dropped
    assert [e["event"] for e in logs if e["log_level"] != "debug"] == [
        "chainlink feed", "chainlink new phase behind the last round: last kept",
    ]  # fmt: skip
    later = await chain.timestamp()
    await chain.transact(
        newer, SET_ROUND, _PHASE_2 | 4, 59_800_00000000, later, later, _PHASE_2 | 4
    )
    assert await reader.poll_once()
    await chain.reorg(1)
    assert await reader.poll_once()
    assert [(q.price, q.flag) for q in got.quotes] == [
        (60000.0, None), (59800.0, None), (59800.0, "reorged"),
    ]  # fmt: skip
    assert got.stats.dropped == {"older_round": 1}


async def test_the_last_quote_kept_over_a_new_phase_behind_it_is_flagged_stale_at_the_heartbeat(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """The proxy moves to a new aggregator whose latest round is older than the last one
    published: the last quote stands, and once the block's time is past the feed's heartbeat
    (not at it) it is published again flagged `stale`, once, as a round read on the normal path
    is. Before, nothing was said until the new aggregator's next round: the quote voted on past
    its heartbeat until the core's age limit, the heartbeat plus 10 %."""
    reader = make_reader([anvil.url], http, max_clock_skew_ms=WARPED)
    feed = ChainlinkFeed("cl", "BTC/USD", chainlink_spec(snapshot.btc_proxy, 600))
    got = watch(reader, feed)
    now, newer = await _new_phase_behind(chain, snapshot, reader)
    assert await reader.poll_once()
    await chain.rpc("evm_setNextBlockTimestamp", [now + 600])
    await chain.mine()
    assert await reader.poll_once()
    assert [(q.price, q.flag) for q in got.quotes] == [(60000.0, None)]  # at the heartbeat
    await chain.rpc("evm_setNextBlockTimestamp", [now + 601])
    await chain.mine()
    assert await reader.poll_once()
    await chain.mine()
    assert await reader.poll_once()
    assert [(q.price, q.flag) for q in got.quotes] == [(60000.0, None), (60000.0, "stale")]
    assert got.last.venue_ts == got.quotes[0].venue_ts == now * 1000
    assert got.last.block_ts == (now + 601) * 1000
    later = await chain.timestamp()
    await chain.transact(
        newer, SET_ROUND, _PHASE_2 | 4, 59_800_00000000, later, later, _PHASE_2 | 4
    )
    assert await reader.poll_once()
    assert (got.last.price, got.last.flag) == (59800.0, None)
    assert not got.stats.dropped


async def test_a_proxy_without_latest_round_data_is_dropped_as_call_failed(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, tokens: Tokens, snapshot: Deployed
) -> None:
    """An address with `decimals()` but no `latestRoundData()` (here an ERC-20: a wrong
    address in the config) is learned, then every block's reverted read is dropped as
    `call_failed`; no price is ever made of the revert, and one warning names the proxy (a
    counter alone would not say which address to check)."""
    reader = make_reader([anvil.url], http)
    feed = ChainlinkFeed("cl", "ETH/USD", chainlink_spec(tokens.weth))
    got = watch(reader, feed)
    with capture_logs() as logs:
        assert await reader.poll_once()
        await chain.mine()
        assert await reader.poll_once()
    assert feed.description is None  # no description() either
    assert got.stats.dropped["call_failed"] == 2
    assert got.stats.dropped["decode_error"] == 0
    assert got.quotes == []
    warned = [e for e in logs if e["event"] == "chainlink round unreadable"]
    assert [(e["proxy"], e["pair"]) for e in warned] == [(tokens.weth, "ETH/USD")]


@pytest.mark.parametrize("where", ["no_code", "too_many_decimals"])
async def test_a_proxy_without_usable_decimals_is_never_priced(
    anvil: Anvil,
    http: aiohttp.ClientSession,
    chain: Chain,
    tokens: Tokens,
    snapshot: Deployed,
    where: str,
) -> None:
    """Without `decimals()` (an account with no code answers every call with nothing) or with
    more than 36 of them, the scale of an answer is unknown: dropped `no_decimals` on every
    block, no quote, and one error naming the address (a wrong address in the config is
    otherwise only a counter)."""
    if where == "no_code":
        address = chain.account
    else:
        address = await new_token(chain, tokens.operator, "ODD", 40)
    reader = make_reader([anvil.url], http)
    got = watch(reader, ChainlinkFeed("cl", "ETH/USD", chainlink_spec(address)))
    with capture_logs() as logs:
        assert await reader.poll_once()
        await chain.mine()
        assert await reader.poll_once()
    assert got.stats.dropped["no_decimals"] == 2
    assert got.quotes == []
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [(e["event"], e["proxy"]) for e in errors] == [("chainlink feed unusable", address)]


async def test_a_garbage_answer_flags_the_previous_quote_until_a_valid_round(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """After a good round, a negative answer and then an answer of zero are dropped
    `non_positive`; the good quote is published again at once, flagged `bad_answer` (so the
    slot is excluded now, not when the heartbeat runs out), once however many bad blocks
    follow, and the next valid round is published unflagged."""
    reader = make_reader([anvil.url], http)
    got = watch(reader, ChainlinkFeed("cl", "BTC/USD", chainlink_spec(snapshot.btc_proxy)))
    assert await reader.poll_once()
    now = await chain.timestamp()
    await chain.transact(snapshot.btc_aggregator, SET_ROUND, 7, -5, now, now, 7)
    assert await reader.poll_once()
    await chain.transact(snapshot.btc_aggregator, SET_ROUND, 8, 0, now + 1, now + 1, 8)
    assert await reader.poll_once()
    await chain.mine()
    assert await reader.poll_once()
    assert got.stats.dropped["non_positive"] == 2
    assert [(q.price, q.flag) for q in got.quotes] == [(60000.0, None), (60000.0, "bad_answer")]
    assert got.quotes[1].venue_ts == got.quotes[0].venue_ts  # the same value, not a new one
    await chain.transact(snapshot.btc_aggregator, SET_ROUND, 9, 61_000_00000000, now + 2,
                         now + 2, 9)  # fmt: skip
    assert await reader.poll_once()
    assert (got.last.price, got.last.flag, len(got.quotes)) == (61000.0, None, 3)


async def test_a_round_stamped_after_its_block_is_refused_and_the_next_round_published(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """An aggregator stamps a round with the time of the block that wrote it, so a round read
    at a block cannot be newer than that block: one stamped after it (here a year ahead) is
    dropped `future_round`, the good quote is published again flagged `bad_answer`, and the
    next valid round is published unflagged. Found by fuzzing the reader with a hostile node
    (tests/chain/test_chain_fuzz.py): before, the round was published unflagged with a time
    from the future, and every real round after it, older, was refused as `older_round` (the
    future one re-emitted `reorged`) until the chain reached that time."""
    reader = make_reader([anvil.url], http)
    got = watch(reader, ChainlinkFeed("cl", "BTC/USD", chainlink_spec(snapshot.btc_proxy)))
    assert await reader.poll_once()
    now = await chain.timestamp()
    ahead = now + 365 * 86_400
    await chain.transact(snapshot.btc_aggregator, SET_ROUND, 7, 61_000_00000000, ahead, ahead, 7)
    assert await reader.poll_once()
    assert got.stats.dropped == {"future_round": 1}
    assert [(q.price, q.flag) for q in got.quotes] == [(60000.0, None), (60000.0, "bad_answer")]
    later = await chain.timestamp()
    await chain.transact(snapshot.btc_aggregator, SET_ROUND, 8, 62_000_00000000, later, later, 8)
    assert await reader.poll_once()
    assert (got.last.price, got.last.flag, got.last.venue_ts) == (62000.0, None, later * 1000)


async def test_a_reorg_that_takes_the_garbage_round_away_unflags_the_same_round(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed
) -> None:
    """A carried-over round flags the previous quote `bad_answer`; when a reorg replaces that
    block with one where the good round is still the latest, the same round is published again
    unflagged (it is not taken for "nothing new")."""
    reader = make_reader([anvil.url], http)
    got = watch(reader, ChainlinkFeed("cl", "BTC/USD", chainlink_spec(snapshot.btc_proxy)))
    assert await reader.poll_once()
    before = await chain.snapshot()
    now = await chain.timestamp()
    await chain.transact(snapshot.btc_aggregator, SET_ROUND, 10, 61_000_00000000, now, now, 9)
    assert await reader.poll_once()
    await chain.revert(before)
    await chain.mine()
    assert await reader.poll_once()  # same height, new hash: read
    assert reader.stats.reorgs == 1
    assert [(q.price, q.flag) for q in got.quotes] == [
        (60000.0, None), (60000.0, "bad_answer"), (60000.0, None),
    ]  # fmt: skip


async def test_one_lying_decimals_answer_never_scales_the_feed(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """A node garbles `aggregator()` in one answer (the feed learns its aggregator again, on the
    same block) and answers 6 decimals to the read that learns; later, it answers 18 in one
    every-block read. Neither lie is used: each change asks for the block again, whose honest
    answer brings back the 8 held, and every price published is the chain's. Found by fuzzing
    the reader (test_chain_fuzz.py): before, the 6 was taken and every later price of the feed
    was 100 times too high until the aggregator changed."""
    reader = make_reader([proxy.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
    assert await reader.poll_once()
    proxy.rewrite = Lies((AGGREGATOR, True, _word(0xDEAD)), (DECIMALS, True, _word(6)))
    await chain.transact(snapshot.eth_aggregator, "updateAnswer(int256)", 3001_00000000)
    assert await reader.poll_once()
    proxy.rewrite = Lies((DECIMALS, True, _word(18)))
    await chain.transact(snapshot.eth_aggregator, "updateAnswer(int256)", 3002_00000000)
    assert await reader.poll_once()
    await chain.transact(snapshot.eth_aggregator, "updateAnswer(int256)", 3003_00000000)
    assert await reader.poll_once()
    assert [(q.price, q.flag) for q in got.quotes] == [
        (3000.0, None), (3001.0, None), (3002.0, None), (3003.0, None),
    ]  # fmt: skip
    assert not got.stats.dropped


async def test_a_decimals_change_two_answers_disagree_on_is_withheld_until_confirmed(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """A block whose read says 6 decimals and whose read again says 18 (neither the 8 held)
    takes neither: its round is withheld (`unconfirmed_config`), the last quote is published
    again flagged `bad_answer` and one warning says why; the next block's honest answer is the
    8 held, and the same round is published unflagged."""
    reader = make_reader([proxy.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
    assert await reader.poll_once()
    proxy.rewrite = Lies((DECIMALS, True, _word(6)), (DECIMALS, True, _word(18)))
    await chain.mine()
    with capture_logs() as logs:
        assert await reader.poll_once()
    assert got.stats.dropped == {"unconfirmed_config": 1}
    (warned,) = [e for e in logs if e["log_level"] == "warning"]
    assert (warned["decimals"], warned["held_decimals"]) == (18, 8)
    await chain.mine()
    assert await reader.poll_once()
    assert [(q.price, q.flag) for q in got.quotes] == [
        (3000.0, None), (3000.0, "bad_answer"), (3000.0, None),
    ]  # fmt: skip


async def test_a_decimals_change_said_twice_is_taken(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """A change of decimals that a block's read and its read again both say (as a real
    aggregator swap, test_aggregator_replaced_behind_the_proxy) is taken and logged; and when
    the answers go back to the chain's 8, that is a change said twice too, taken at once: a
    value taken is never kept for good by the answers that follow."""
    reader = make_reader([proxy.url], http)
    got = watch_eth(reader, snapshot.eth_proxy)
    assert await reader.poll_once()
    proxy.rewrite = Lies((DECIMALS, True, _word(6)), (DECIMALS, True, _word(6)))
    await chain.transact(snapshot.eth_aggregator, "updateAnswer(int256)", 3001_00000000)
    with capture_logs() as logs:
        assert await reader.poll_once()
    assert [e["decimals"] for e in logs if e["event"].startswith("chainlink decimals")] == [6]
    await chain.transact(snapshot.eth_aggregator, "updateAnswer(int256)", 3002_00000000)
    assert await reader.poll_once()
    assert [q.price for q in got.quotes] == [3000.0, 300100.0, 3002.0]
    assert not got.stats.dropped


@pytest.mark.parametrize("call", ["decimals", "maxAnswer"])
async def test_an_answer_longer_than_one_word_is_malformed(
    anvil: Anvil,
    http: aiohttp.ClientSession,
    chain: Chain,
    snapshot: Deployed,
    proxy: RpcProxy,
    call: str,
) -> None:
    """A `decimals()` answer (at the read that learns the feed) or a `maxAnswer()` answer (read
    every block) of two words, the first a valid one, is garbage: counted `decode_error` (and
    malformed), its block not priced for the feed, and the next honest block is. Before, only
    the first word was read: a 6 there scaled the feed for good."""
    lie = (DECIMALS, True, _word(6) + _word(0))
    if call == "maxAnswer":
        lie = (MAX_ANSWER, True, _word(10**18) + _word(0))
    reader = make_reader([proxy.url], http)
    got = watch(reader, ChainlinkFeed("cl", "BTC/USD", chainlink_spec(snapshot.btc_proxy)))
    if call == "maxAnswer":
        assert await reader.poll_once()
        await chain.mine()
    proxy.rewrite = Lies(lie)
    assert await reader.poll_once()
    assert got.stats.dropped == {"decode_error": 1} and got.stats.malformed == 1
    await chain.transact(snapshot.btc_aggregator, "updateAnswer(int256)", 61_000_00000000)
    assert await reader.poll_once()
    assert (got.last.price, got.last.flag) == (61000.0, None)


async def test_one_lying_bound_answer_is_never_used(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """A `maxAnswer()` of 1 (every price at the bound) in one every-block read is weighed as a
    decimals change is: the block is read again, its honest answer brings back the bound held,
    and the round is published unflagged. Before, the one answer flagged it `at_bound`."""
    reader = make_reader([proxy.url], http)
    got = watch(reader, ChainlinkFeed("cl", "BTC/USD", chainlink_spec(snapshot.btc_proxy)))
    assert await reader.poll_once()
    proxy.rewrite = Lies((MAX_ANSWER, True, _word(1)))
    await chain.transact(snapshot.btc_aggregator, "updateAnswer(int256)", 61_000_00000000)
    assert await reader.poll_once()
    assert [(q.price, q.flag) for q in got.quotes] == [(60000.0, None), (61000.0, None)]
    assert not got.stats.dropped


@pytest.mark.parametrize(
    ("word", "value", "reason"),
    [(1, 0, "non_positive"), (4, 0, "carried_over_round")],
    ids=["answer", "answeredInRound"],
)
async def test_a_garbled_answer_of_the_round_published_does_not_withhold_it_till_the_next(
    anvil: Anvil,
    http: aiohttp.ClientSession,
    chain: Chain,
    snapshot: Deployed,
    proxy: RpcProxy,
    word: int,
    value: int,
    reason: str,
) -> None:
    """A node (or a relay) garbles one word of the round already published, in one answer: it
    is refused and the quote flagged `bad_answer`; the next block's honest answer of the same
    round publishes it again unflagged, and the same garbled answer after it is refused (and
    counted) again. Before, a refusal was remembered by round id and time alone: the honest
    answer of that round was taken for the one refused, and the feed stayed withdrawn until
    the aggregator's next round, a heartbeat on a calm market (a day for several feeds)."""
    reader = make_reader([proxy.url], http)
    got = watch(reader, ChainlinkFeed("cl", "BTC/USD", chainlink_spec(snapshot.btc_proxy)))
    assert await reader.poll_once()
    honest = await chain.rpc(
        "eth_call", [{"to": snapshot.btc_proxy, "data": "0x" + ROUND.hex()}, "latest"]
    )
    words = bytearray(bytes.fromhex(honest[2:]))
    words[32 * word : 32 * word + 32] = _word(value)
    for _ in range(2):
        proxy.rewrite = Lies((ROUND, True, bytes(words)))
        await chain.mine()
        assert await reader.poll_once()
        await chain.mine()
        assert await reader.poll_once()
    assert [(q.price, q.flag) for q in got.quotes] == [
        (60000.0, None), (60000.0, "bad_answer"), (60000.0, None),
        (60000.0, "bad_answer"), (60000.0, None),
    ]  # fmt: skip
    assert got.stats.dropped == {reason: 2}


async def test_a_description_that_is_not_utf8_is_a_label_lost_not_a_feed(
    anvil: Anvil, http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """A proxy whose `description()` is a string of bytes that are not UTF-8 (here every answer
    of it, as a contract of its own would give) is priced from its first block, without a
    description, and one warning says so. Before, eth_abi's UnicodeDecodeError escaped the
    feed's learning (only its DecodingError was caught): each block was dropped `decode_error`
    and the feed learned again, never priced."""

    def garbled(request: Any, answer: Any) -> Any:
        if request.get("method") != "eth_call":
            return answer
        bad = abi_encode(["bytes"], [b"\xffBTC / USD"])
        return {**answer, "result": with_result(request, answer["result"], DESCRIPTION, True, bad)}

    reader = make_reader([proxy.url], http)
    feed = ChainlinkFeed("cl", "BTC/USD", chainlink_spec(snapshot.btc_proxy))
    got = watch(reader, feed)
    proxy.rewrite = garbled
    with capture_logs() as logs:
        assert await reader.poll_once()
        await chain.transact(snapshot.btc_aggregator, "updateAnswer(int256)", 61_000_00000000)
        assert await reader.poll_once()
    assert [(q.price, q.flag) for q in got.quotes] == [(60000.0, None), (61000.0, None)]
    assert not got.stats.dropped
    assert feed.description is None
    unreadable = [e for e in logs if e["event"] == "chainlink description unreadable"]
    assert [e["proxy"] for e in unreadable] == [snapshot.btc_proxy]
