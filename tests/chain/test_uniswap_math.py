"""Uniswap v3 feed without a node: tick math, decimals, inversion, rounding, return-data decoding.

Return data is built with eth_abi.encode in the exact shapes the pool returns (observe's two
dynamic arrays, slot0's seven words, liquidity's one), so the decoder is checked against the
ABI reference implementation rather than against itself.
"""

from __future__ import annotations

import math
from decimal import Decimal, getcontext

import pytest
from eth_abi.abi import encode
from eth_utils.abi import function_signature_to_4byte_selector
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from oracled.config import FeedSpec
from oracled.model import Quote
from oracled.sources import source_class
from oracled.sources.evm.feed import Block
from oracled.sources.evm.uniswap_v3 import (
    UniswapV3Feed,
    UniswapV3Source,
    decode_observe,
    decode_slot0_sqrt_price,
    decode_uint128,
    harmonic_mean_liquidity,
    mean_tick,
    revert_reason,
    sqrt_price_x96_to_price,
    tick_to_price,
)

POOL = "0x88e6A0c2dDD26FEEb64F039a2c41296FcB3f5640"  # the mainnet USDC/WETH 0.05 % pool
TOKEN0 = "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"  # its token0 (USDC) and token1 (WETH)
TOKEN1 = "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2"
BLOCK = Block(number=21_000_000, hash="0x" + "ab" * 32, timestamp=1_730_000_000)
RECV = 1_730_000_000_400
WINDOW = 300
Q128 = 1 << 128
INT56 = 1 << 55

getcontext().prec = 60


def ref_price(tick: int, decimals0: int, decimals1: int) -> float:
    """1.0001**tick x 10**(d0 - d1) in 60-digit decimal arithmetic: an independent reference."""
    return float(Decimal("1.0001") ** tick * Decimal(10) ** (decimals0 - decimals1))


def solidity_mean_tick(delta: int, window: int) -> int:
    """OracleLibrary.consult, transcribed: truncating division, then one down if negative and
    inexact."""
    quotient = abs(delta) // window * (1 if delta >= 0 else -1)
    if delta < 0 and delta % window != 0:
        quotient -= 1
    return quotient


def observe_data(tick: int, window: int = WINDOW, liquidity: int = 10**18, base: int = 0) -> bytes:
    """observe([window, 0]) of a pool that sat at `tick` with `liquidity` the whole window."""
    then = base
    now = base + tick * window
    spl_then = 5 * Q128
    spl_now = spl_then + (window << 128) // liquidity
    return encode(["int56[]", "uint160[]"], [[then, now], [spl_then, spl_now]])


def slot0_data(sqrt_price_x96: int, tick: int = 0) -> bytes:
    return encode(
        ["uint160", "int24", "uint16", "uint16", "uint16", "uint8", "bool"],
        [sqrt_price_x96, tick, 3, 100, 100, 0, True],
    )


def uint128_data(value: int) -> bytes:
    return encode(["uint128"], [value])


def sqrt_x96_at_tick(tick: int) -> int:
    """sqrtPriceX96 of a tick, from the decimal reference (good to far below one tick)."""
    return int((Decimal("1.0001") ** tick).sqrt() * (1 << 96))


def error_string(message: str) -> bytes:
    return function_signature_to_4byte_selector("Error(string)") + encode(["string"], [message])


def address_data(address: str) -> bytes:
    return encode(["address"], [address])


def learn(feed: UniswapV3Feed, decimals: tuple[int, int] | None = None) -> None:
    """Take the feed through its two set-up reads, the chain agreeing with its config."""
    assert (
        feed.decode([(True, address_data(TOKEN0)), (True, address_data(TOKEN1))], BLOCK, RECV)
        is None
    )
    found = decimals or (feed.token0_decimals, feed.token1_decimals)
    assert feed.decode([(True, uint128_data(d)) for d in found], BLOCK, RECV) is None


def make_feed(
    *,
    invert: bool = False,
    decimals0: int = 18,
    decimals1: int = 18,
    min_liquidity: int = 10**15,
    max_spot_gap: float = 0.05,
    pair: str = "ETH/USDC",
) -> UniswapV3Feed:
    """A feed past its set-up reads, ready to price."""
    feed = new_feed(
        invert=invert,
        decimals0=decimals0,
        decimals1=decimals1,
        min_liquidity=min_liquidity,
        max_spot_gap=max_spot_gap,
        pair=pair,
    )
    learn(feed)
    return feed


def new_feed(
    *,
    invert: bool = False,
    decimals0: int = 18,
    decimals1: int = 18,
    min_liquidity: int = 10**15,
    max_spot_gap: float = 0.05,
    pair: str = "ETH/USDC",
) -> UniswapV3Feed:
    return UniswapV3Feed(
        "uniswap-eth",
        pair,
        POOL,
        invert=invert,
        token0_decimals=decimals0,
        token1_decimals=decimals1,
        min_liquidity=min_liquidity,
        twap_window_s=WINDOW,
        max_spot_deviation=max_spot_gap,
    )


def results(
    tick: int, *, spot_tick: int | None = None, liquidity: int = 10**18
) -> list[tuple[bool, bytes]]:
    spot = tick if spot_tick is None else spot_tick
    return [
        (True, observe_data(tick, liquidity=liquidity)),
        (True, slot0_data(sqrt_x96_at_tick(spot), spot)),
        (True, uint128_data(liquidity)),
    ]


# ------------------------------------------------------------------ tick math


def test_tick_zero_one_and_minus_one_are_one_and_one_basis_point() -> None:
    """Tick 0 is price 1 exactly; each tick is a factor of 1.0001 up or down."""
    assert tick_to_price(0, 18, 18) == 1.0
    assert tick_to_price(1, 18, 18) == pytest.approx(1.0001, rel=1e-15)
    assert tick_to_price(-1, 18, 18) == pytest.approx(1 / 1.0001, rel=1e-15)


@pytest.mark.parametrize(
    ("tick", "expected"),
    [
        (6932, 2.0),  # ln 2 / ln 1.0001 = 6931.8
        (23028, 10.0),  # ln 10 / ln 1.0001 = 23027.0...
        (10000, 2.718145927),  # 1.0001**10000 = e**0.99995
        (-23028, 0.1),
    ],
)
def test_hand_computed_ticks(tick: int, expected: float) -> None:
    """Known anchors: the price is within one tick (1 bp) of the hand-computed value."""
    assert tick_to_price(tick, 18, 18) == pytest.approx(expected, rel=1.0e-4)


@pytest.mark.parametrize(
    ("decimals0", "decimals1", "tick", "human"),
    [
        # USDC (6) / WETH (18): WETH per USDC at ETH = 2000 USDC is 1/2000;
        # raw = 5e-4 x 1e12 = 5e8, ln(5e8) / ln(1.0001) = 200311.9
        (6, 18, 200312, 1 / 2000),
        # WETH (18) / USDC (6): USDC per WETH = 2000; raw = 2000 x 1e-12, tick = -200312
        (18, 6, -200312, 2000.0),
        # WBTC (8) / USDC (6): USDC per WBTC = 60000; raw = 600, ln 600 / ln 1.0001 = 63972.5
        (8, 6, 63973, 60000.0),
        # WBTC (8) / WETH (18): WETH per WBTC = 20; raw = 2e11, tick = 260228.4
        (8, 18, 260228, 20.0),
    ],
)
def test_decimals_scale_the_raw_price(
    decimals0: int, decimals1: int, tick: int, human: float
) -> None:
    """The raw price is scaled by 10**(decimals0 - decimals1) into whole tokens; checked
    against hand-computed values (to one tick) and the 60-digit reference (to 1e-12)."""
    price = tick_to_price(tick, decimals0, decimals1)
    assert price == pytest.approx(human, rel=1.0e-4)
    assert price == pytest.approx(ref_price(tick, decimals0, decimals1), rel=1e-12)


@given(st.integers(-887272, 887272), st.sampled_from([0, 6, 8, 18]), st.sampled_from([0, 6, 8, 18]))
def test_tick_price_matches_the_decimal_reference(tick: int, d0: int, d1: int) -> None:
    """Over the whole tick range and every decimals pair, float math stays within 1e-13 (a plain
    1.0001**tick would be off by up to 1e-11 at the ends)."""
    assert tick_to_price(tick, d0, d1) == pytest.approx(ref_price(tick, d0, d1), rel=1e-13)


def test_sqrt_price_x96_is_squared_and_scaled() -> None:
    """slot0's Q64.96 square root: 2**96 is price 1, 2 x 2**96 is price 4; decimals apply."""
    assert sqrt_price_x96_to_price(1 << 96, 18, 18) == 1.0
    assert sqrt_price_x96_to_price(2 << 96, 18, 18) == 4.0
    assert sqrt_price_x96_to_price(2 << 96, 18, 6) == pytest.approx(4e12)
    assert sqrt_price_x96_to_price(sqrt_x96_at_tick(63973), 8, 6) == pytest.approx(
        tick_to_price(63973, 8, 6), rel=1e-12
    )


# ------------------------------------------------------------------ rounding of the mean tick


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        (600, 2),
        (599, 1),  # positive inexact: truncated down
        (-600, -2),  # negative exact: no adjustment
        (-599, -2),  # negative inexact: toward negative infinity, not toward zero
        (-601, -3),
        (-1, -1),
        (0, 0),
    ],
)
def test_mean_tick_rounds_toward_negative_infinity(delta: int, expected: int) -> None:
    """A negative inexact mean tick is rounded down, as OracleLibrary does (-599/300 is -2)."""
    assert mean_tick(1_000, 1_000 + delta, 300) == expected


@given(st.integers(-INT56, INT56 - 1), st.integers(-INT56, INT56 - 1), st.integers(1, 2**32 - 1))
def test_mean_tick_equals_oracle_library(then: int, now: int, window: int) -> None:
    """For any int56 accumulators and uint32 window, the result is OracleLibrary's."""
    assert mean_tick(then, now, window) == solidity_mean_tick(now - then, window)


# ------------------------------------------------------------------ harmonic mean liquidity


def test_harmonic_mean_liquidity_of_a_steady_pool_is_its_liquidity() -> None:
    """A pool at constant liquidity L for the window has a harmonic mean of L (to rounding)."""
    liquidity = 3 * 10**18
    spl_then = 7 * Q128
    spl_now = spl_then + (WINDOW << 128) // liquidity
    assert harmonic_mean_liquidity(spl_then, spl_now, WINDOW) == pytest.approx(liquidity, rel=1e-9)


def test_harmonic_mean_liquidity_survives_the_accumulator_wrapping() -> None:
    """The uint160 accumulator wraps; the difference is taken modulo 2**160."""
    liquidity = 10**12
    step = (WINDOW << 128) // liquidity
    spl_then = (1 << 160) - step // 2
    spl_now = (spl_then + step) % (1 << 160)
    assert spl_now < spl_then
    assert harmonic_mean_liquidity(spl_then, spl_now, WINDOW) == pytest.approx(liquidity, rel=1e-9)


def test_harmonic_mean_is_dominated_by_the_thin_part_of_the_window() -> None:
    """Half the window at 1e12 and half at 1e18 averages to about 2e12, not 5e17: a pool that
    was thin for part of the window is still thin."""
    spl = (150 << 128) // 10**12 + (150 << 128) // 10**18
    assert harmonic_mean_liquidity(0, spl, WINDOW) == pytest.approx(2 * 10**12, rel=1e-5)


# ------------------------------------------------------------------ decoding


@given(
    st.lists(st.integers(-INT56, INT56 - 1), min_size=2, max_size=2),
    st.lists(st.integers(0, (1 << 160) - 1), min_size=2, max_size=2),
)
def test_observe_decoding_matches_eth_abi(ticks: list[int], spls: list[int]) -> None:
    """The fast reader returns what eth_abi's reference decoding of the same answer says."""
    data = encode(["int56[]", "uint160[]"], [ticks, spls])
    assert decode_observe(data) == (ticks[0], ticks[1], spls[0], spls[1])


def test_observe_in_a_non_canonical_layout_is_decoded_by_eth_abi() -> None:
    """Arrays placed in the other order (valid ABI, unusual offsets) still decode correctly."""
    head = (0xA0).to_bytes(32, "big") + (0x40).to_bytes(32, "big")
    spls = (2).to_bytes(32, "big") + (5).to_bytes(32, "big") + (9).to_bytes(32, "big")
    ticks = (
        (2).to_bytes(32, "big") + (-7).to_bytes(32, "big", signed=True) + (11).to_bytes(32, "big")
    )
    assert decode_observe(head + spls + ticks) == (-7, 11, 5, 9)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        observe_data(10)[:-32],  # truncated
        encode(["int56[]", "uint160[]"], [[1, 2, 3], [1, 2, 3]]),  # three points, not two
        # a tick accumulator beyond int56 in the canonical layout: bad sign-extension padding
        observe_data(10)[:96] + (1 << 60).to_bytes(32, "big") + observe_data(10)[128:],
        b"\xff" * 256,
    ],
    ids=["empty", "truncated", "three-points", "int56-overflow", "all-ff"],
)
def test_malformed_observe_answers_raise(data: bytes) -> None:
    """Anything that is not a two-point observe answer raises ValueError, never a number."""
    with pytest.raises(ValueError):
        decode_observe(data)


def test_slot0_and_liquidity_decoding() -> None:
    """slot0's first field and a uint128 come back as encoded; junk raises ValueError."""
    assert decode_slot0_sqrt_price(slot0_data(1 << 96, 0)) == 1 << 96
    assert decode_slot0_sqrt_price(slot0_data((1 << 160) - 1, 887272)) == (1 << 160) - 1
    assert decode_uint128(uint128_data((1 << 128) - 1)) == (1 << 128) - 1
    for junk in (b"", b"\x01" * 31, (1 << 200).to_bytes(32, "big")):
        with pytest.raises(ValueError):
            decode_uint128(junk)
    with pytest.raises(ValueError):
        decode_slot0_sqrt_price(b"\xff" * 224)


def test_revert_reasons_are_readable() -> None:
    """A require() message is shown as text; other revert data as hex; none as '(no data)'."""
    assert revert_reason(error_string("OLD")) == "OLD"
    assert revert_reason(bytes.fromhex("19abf40e")) == "0x19abf40e"
    assert revert_reason(b"") == "(no data)"


# ------------------------------------------------------------------ the feed


def test_set_up_reads_the_pools_tokens_then_their_decimals() -> None:
    """Before pricing, the feed asks the pool for token0/token1, then each token for decimals();
    with the chain agreeing with the config it switches to its pricing calls."""
    feed = new_feed(decimals0=6, decimals1=18)
    selector = function_signature_to_4byte_selector
    assert [(c.target, c.data) for c in feed.calls()] == [
        (POOL, selector("token0()")),
        (POOL, selector("token1()")),
    ]
    tokens = [(True, address_data(TOKEN0)), (True, address_data(TOKEN1))]
    assert feed.decode(tokens, BLOCK, RECV) is None
    assert (feed.token0, feed.token1) == (TOKEN0, TOKEN1)
    assert [(c.target, c.data) for c in feed.calls()] == [
        (TOKEN0, selector("decimals()")),
        (TOKEN1, selector("decimals()")),
    ]
    with capture_logs() as logs:
        assert feed.decode([(True, uint128_data(6)), (True, uint128_data(18))], BLOCK, RECV) is None
    assert logs[0]["event"] == "uniswap_feed" and logs[0]["verified"] is True
    assert len(feed.calls()) == 3


def test_decimals_that_disagree_with_the_chain_stop_the_feed() -> None:
    """A config whose decimals are not the tokens' own (e.g. token0 and token1 swapped) never
    prices: every block is dropped as token_mismatch, with one error line naming both sides."""
    feed = new_feed(decimals0=18, decimals1=6)  # the pool's token0 is USDC (6)
    feed.decode([(True, address_data(TOKEN0)), (True, address_data(TOKEN1))], BLOCK, RECV)
    on_chain = [(True, uint128_data(6)), (True, uint128_data(18))]
    with capture_logs() as logs:
        assert feed.decode(on_chain, BLOCK, RECV) == "token_mismatch"
        assert feed.decode(on_chain, BLOCK, RECV) == "token_mismatch"
    assert [e["event"] for e in logs] == ["uniswap_token_decimals_mismatch"]
    assert logs[0]["configured"] == (18, 6) and logs[0]["on_chain"] == (6, 18)
    assert logs[0]["log_level"] == "error"


def test_a_token_without_decimals_leaves_the_config_unverified_but_used() -> None:
    """A token whose decimals() reverts cannot be checked; the configured value is used and the
    set-up line says it was not verified."""
    feed = new_feed(decimals0=6, decimals1=18)
    feed.decode([(True, address_data(TOKEN0)), (True, address_data(TOKEN1))], BLOCK, RECV)
    with capture_logs() as logs:
        assert feed.decode([(False, b""), (True, uint128_data(18))], BLOCK, RECV) is None
    assert logs[0]["verified"] is False
    assert isinstance(feed.decode(results(0), BLOCK, RECV), Quote)


def test_an_address_that_is_not_a_pool_is_dropped() -> None:
    """token0() reverting (an EOA or another contract at the address): dropped as not_a_pool."""
    feed = new_feed()
    with capture_logs() as logs:
        assert feed.decode([(False, b""), (False, b"")], BLOCK, RECV) == "not_a_pool"
        assert feed.decode([(True, b"\x01" * 32), (True, b"")], BLOCK, RECV) == "not_a_pool"
    assert [e["event"] for e in logs] == ["uniswap_not_a_pool"]


def test_calls_are_observe_slot0_and_liquidity_pre_encoded() -> None:
    """Three calls to the pool, calldata built once from the real selectors."""
    feed = make_feed()
    calls = feed.calls()
    assert [c.target for c in calls] == [POOL] * 3
    assert calls[0].data == function_signature_to_4byte_selector("observe(uint32[])") + encode(
        ["uint32[]"], [[WINDOW, 0]]
    )
    assert calls[1].data == function_signature_to_4byte_selector("slot0()")
    assert calls[2].data == function_signature_to_4byte_selector("liquidity()")
    assert feed.calls() is calls


def test_a_normal_read_is_the_twap_stamped_with_the_block() -> None:
    """The quote is the TWAP in whole tokens, with venue time and block time the block's (ms)."""
    feed = make_feed(decimals0=18, decimals1=6)  # WETH (token0) / USDC (token1)
    quote = feed.decode(results(-200312), BLOCK, RECV)
    assert isinstance(quote, Quote)
    assert quote.price == pytest.approx(2000.0, rel=1e-4)
    assert quote.price == pytest.approx(ref_price(-200312, 18, 6), rel=1e-12)
    assert (quote.source, quote.pair, quote.recv_ts) == ("uniswap-eth", "ETH/USDC", RECV)
    assert quote.venue_ts == quote.block_ts == BLOCK.timestamp * 1000
    assert quote.block == BLOCK.number
    assert quote.flag is None
    assert feed.spot_gaps == 0
    assert feed.last_spot == pytest.approx(quote.price, rel=1e-9)


def test_a_base_that_is_token1_is_inverted() -> None:
    """USDC (token0) / WETH (token1) prices WETH per USDC; the ETH/USDC pair inverts it."""
    feed = make_feed(invert=True, decimals0=6, decimals1=18)
    quote = feed.decode(results(200312), BLOCK, RECV)
    assert isinstance(quote, Quote)
    assert quote.price == pytest.approx(2000.0, rel=1e-4)
    assert quote.price == pytest.approx(1 / ref_price(200312, 6, 18), rel=1e-12)
    assert feed.last_spot == pytest.approx(quote.price, rel=1e-9)


def test_a_negative_inexact_mean_tick_is_floored_in_the_price() -> None:
    """Accumulators 599 ticks apart downwards over 300 s price at tick -2, not -1."""
    feed = make_feed()
    data = encode(["int56[]", "uint160[]"], [[0, -599], [0, (WINDOW << 128) // 10**18]])
    answer = [(True, data), (True, slot0_data(sqrt_x96_at_tick(-2))), (True, uint128_data(10**18))]
    quote = feed.decode(answer, BLOCK, RECV)
    assert isinstance(quote, Quote)
    assert quote.price == tick_to_price(-2, 18, 18)


def test_the_twap_is_emitted_when_spot_is_far_off_and_the_gap_is_counted() -> None:
    """A spot 10 % above the TWAP (one swap moved slot0) is only reported: the quote is the
    TWAP, the gap is counted per read and logged once when it opens and once when it closes."""
    feed = make_feed(max_spot_gap=0.05)
    with capture_logs() as logs:
        first = feed.decode(results(0, spot_tick=953), BLOCK, RECV)  # 1.0001**953 = 1.1
        second = feed.decode(results(0, spot_tick=953), BLOCK, RECV)
        closed = feed.decode(results(0, spot_tick=10), BLOCK, RECV)
    assert isinstance(first, Quote) and isinstance(second, Quote) and isinstance(closed, Quote)
    assert first.price == 1.0 and first.flag is None
    assert feed.spot_gaps == 2
    assert feed.last_spot_gap == pytest.approx(1.0001**10 - 1, rel=1e-6)
    events = [entry["event"] for entry in logs]
    assert events == ["uniswap_spot_gap", "uniswap_spot_gap_closed"]
    assert logs[0]["gap"] == pytest.approx(0.1, rel=1e-3)


@pytest.mark.parametrize(
    ("twap", "spot", "limit"),
    [(100.0, 103.0, 0.03), (100.0, 97.0, 0.03), (2000.0, 2100.0, 0.05), (1.0, 0.95, 0.05)],
)
def test_a_spot_gap_of_exactly_the_limit_is_not_counted(
    twap: float, spot: float, limit: float
) -> None:
    """A spot exactly `max_spot_deviation` away from the TWAP is within it, as every band of
    the project takes its limit (`BAND_SLACK`), and a hair further is a gap. Before, the gap
    was judged as |spot / twap - 1|, which rounds 103 on 100 to 0.030000000000000027: counted
    and logged at 3 %."""
    feed = make_feed(max_spot_gap=limit)
    with capture_logs() as logs:
        feed._cross_check(twap, spot)
        assert feed.spot_gaps == 0 and logs == []
        assert feed.last_spot_gap == pytest.approx(limit, rel=1e-9)
        feed._cross_check(twap, spot + (spot - twap) * 1e-6)
    assert feed.spot_gaps == 1
    assert [e["event"] for e in logs] == ["uniswap_spot_gap"]


def test_a_pool_below_the_liquidity_minimum_is_flagged_not_priced() -> None:
    """In-range liquidity under the minimum: the quote carries flag 'liquidity'."""
    feed = make_feed(min_liquidity=10**18)
    quote = feed.decode(results(100, liquidity=10**18 - 1), BLOCK, RECV)
    assert isinstance(quote, Quote)
    assert quote.flag == "liquidity"
    ok = feed.decode(results(100, liquidity=10**18 + 10**9), BLOCK, RECV)
    assert isinstance(ok, Quote) and ok.flag is None


def test_liquidity_added_just_before_the_read_does_not_clear_the_flag() -> None:
    """Deep liquidity now but thin over the window (harmonic mean below the minimum) is still
    flagged: a manipulator cannot move a thin pool and then add liquidity to pass the check."""
    feed = make_feed(min_liquidity=10**18)
    thin_window = encode(
        ["int56[]", "uint160[]"], [[0, 100 * WINDOW], [0, (WINDOW << 128) // 10**15]]
    )
    answer = [
        (True, thin_window),
        (True, slot0_data(sqrt_x96_at_tick(100))),
        (True, uint128_data(10**21)),
    ]
    quote = feed.decode(answer, BLOCK, RECV)
    assert isinstance(quote, Quote)
    assert quote.flag == "liquidity"


def test_observe_revert_is_a_drop_reason_logged_once_with_its_reason() -> None:
    """observe() reverting with 'OLD' is the drop reason observe_reverted; the log line names the
    revert reason and the fix, once until observe works again."""
    feed = make_feed()
    reverted = [(False, error_string("OLD")), (True, slot0_data(1 << 96)), (True, uint128_data(1))]
    with capture_logs() as logs:
        assert feed.decode(reverted, BLOCK, RECV) == "observe_reverted"
        assert feed.decode(reverted, BLOCK, RECV) == "observe_reverted"
        assert isinstance(feed.decode(results(0), BLOCK, RECV), Quote)
    assert [entry["event"] for entry in logs] == [
        "uniswap_observe_reverted",
        "uniswap_observe_recovered",
    ]
    assert logs[0]["reason"] == "OLD"
    assert "increaseObservationCardinalityNext" in logs[0]["hint"]
    assert logs[0]["log_level"] == "warning"


def test_failed_or_garbled_reads_are_dropped() -> None:
    """A failed slot0/liquidity call, undecodable data or a zero spot root: a drop reason."""
    feed = make_feed()
    good = results(0)
    assert feed.decode([good[0], (False, b""), good[2]], BLOCK, RECV) == "call_failed"
    assert feed.decode([good[0], good[1], (False, b"")], BLOCK, RECV) == "call_failed"
    assert feed.decode([(True, b"\x00" * 64), good[1], good[2]], BLOCK, RECV) == "malformed"
    assert feed.decode([good[0], (True, b"nope"), good[2]], BLOCK, RECV) == "malformed"
    assert feed.decode([good[0], (True, slot0_data(0)), good[2]], BLOCK, RECV) == "malformed"
    beyond = encode(["int56[]", "uint160[]"], [[0, 900_000 * WINDOW], [0, 1 << 100]])
    assert feed.decode([(True, beyond), good[1], good[2]], BLOCK, RECV) == "malformed"


def test_window_must_fit_observe_uint32() -> None:
    """A zero or over-long window is refused at construction, not at the first read."""
    for window in (0, 1 << 32):
        with pytest.raises(ValueError):
            UniswapV3Feed(
                "u", "ETH/USDC", POOL, invert=False, token0_decimals=18, token1_decimals=6,
                min_liquidity=1, twap_window_s=window,
            )  # fmt: skip


def test_a_feed_is_built_from_its_config_spec() -> None:
    """A `uniswap_v3` feed table becomes the feed it describes; the source type resolves to the
    Uniswap source class."""
    spec = FeedSpec(
        address=POOL,
        min_liquidity=10**18,
        token0_decimals=6,
        token1_decimals=18,
        invert=True,
        twap_window_s=600,
        max_spot_deviation=0.02,
    )
    feed = UniswapV3Feed.from_spec("uni", "ETH/USDC", spec)
    assert (feed.pool, feed.invert, feed.token0_decimals, feed.token1_decimals) == (
        POOL, True, 6, 18,
    )  # fmt: skip
    assert (feed.min_liquidity, feed.twap_window_s, feed.max_spot_deviation) == (10**18, 600, 0.02)
    assert UniswapV3Feed.from_spec("uni", "ETH/USDC", FeedSpec(
        address=POOL, min_liquidity=1, token0_decimals=6, token1_decimals=18
    )).max_spot_deviation == 0.05  # fmt: skip
    # A deviation given is kept as it is, a falsy one too: before, `or` took the default for
    # it. (The config refuses 0; a spec built without its validation shows what `or` did.)
    assert UniswapV3Feed.from_spec("uni", "ETH/USDC", FeedSpec.model_construct(
        address=POOL, min_liquidity=1, token0_decimals=6, token1_decimals=18,
        max_spot_deviation=0.0,
    )).max_spot_deviation == 0.0  # fmt: skip
    with pytest.raises(ValueError):
        UniswapV3Feed.from_spec("uni", "ETH/USDC", FeedSpec(address=POOL))
    assert source_class("uniswap_v3") is UniswapV3Source


def test_an_older_block_than_one_priced_is_not_priced_again() -> None:
    """The feed never publishes a block stamped earlier than its last quote's: it is dropped
    `older_block`, a reason the reader takes for a reorg (the block last priced is gone)."""
    feed = make_feed()
    assert isinstance(feed.decode(results(0), BLOCK, RECV), Quote)
    older = Block(BLOCK.number, "0x" + "cd" * 32, BLOCK.timestamp - 12)
    assert feed.decode(results(5), older, RECV) == "older_block"
    assert "older_block" in feed.reorged


def test_prices_are_finite_over_the_tick_range() -> None:
    """The extreme ticks of a real pool give finite, positive prices either way round."""
    for tick in (-887272, 887272):
        for invert in (True, False):
            feed = make_feed(invert=invert, decimals0=0, decimals1=18)
            quote = feed.decode(results(tick), BLOCK, RECV)
            assert isinstance(quote, Quote) and quote.price is not None
            assert math.isfinite(quote.price) and quote.price > 0


def test_a_token_answering_garbage_decimals_is_unverified_not_a_stop() -> None:
    """A token whose decimals() answers bytes that are no uint (a proxy or an odd token) cannot
    be checked: the configured value is used, unverified, rather than the feed failing to set
    up on every block."""
    feed = new_feed(decimals0=6, decimals1=18)
    feed.decode([(True, address_data(TOKEN0)), (True, address_data(TOKEN1))], BLOCK, RECV)
    with capture_logs() as logs:
        assert feed.decode([(True, b"\x01\x02"), (True, uint128_data(18))], BLOCK, RECV) is None
    assert logs[0]["event"] == "uniswap_feed" and logs[0]["verified"] is False
    assert isinstance(feed.decode(results(0), BLOCK, RECV), Quote)


def test_a_broken_require_message_is_shown_as_hex() -> None:
    """Revert data with the Error(string) selector but no valid string after it is shown as its
    hex, never raised while logging the reason."""
    broken = error_string("OLD")[:4] + b"\x00" * 5
    assert revert_reason(broken) == "0x" + broken.hex()


def test_an_unmoved_liquidity_accumulator_reads_as_no_liquidity() -> None:
    """Equal seconds-per-liquidity readings across the window (nothing accrued) give a harmonic
    mean of zero, which is below any minimum, not a division by zero."""
    assert harmonic_mean_liquidity(7, 7, 300) == 0


def test_a_decimals_answer_with_trailing_words_still_verifies_the_config() -> None:
    """A token answering decimals() with more than one word (a proxy returning padded data)
    is still read through the ABI decoder, so the configured decimals are verified against
    it rather than taken on trust."""
    assert decode_uint128(uint128_data(6) + bytes(32)) == 6
    feed = new_feed(decimals0=18, decimals1=18)  # token0 is really 6
    feed.decode([(True, address_data(TOKEN0)), (True, address_data(TOKEN1))], BLOCK, RECV)
    padded = [(True, uint128_data(6) + bytes(32)), (True, uint128_data(18))]
    with capture_logs():
        assert feed.decode(padded, BLOCK, RECV) == "token_mismatch"
