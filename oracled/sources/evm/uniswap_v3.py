"""Uniswap v3 pool feed: a time-weighted price from `observe()`, never the spot price.

Each block the pool is asked three things, all pre-encoded once:

- ``observe([window, 0])``: the tick accumulators `window` seconds ago and now. Their difference
  over the window is the arithmetic mean tick, floored as Uniswap's own OracleLibrary does
  (`consult`), and the price is ``1.0001 ** tick`` in raw units, scaled by the tokens' decimals
  and inverted when the market's base is token1. The seconds-per-liquidity accumulators of the
  same call give the harmonic mean in-range liquidity over the window.
- ``slot0()``: the spot price. It moves with one swap and can be pushed anywhere within a block,
  so it is only a cross-check: a TWAP/spot gap above ``max_spot_deviation`` is counted and
  logged, and the TWAP is what is emitted.
- ``liquidity()``: the in-range liquidity now. If it, or the harmonic mean over the window, is
  below ``min_liquidity``, the pool is thin: cheap to move, its price is flagged ``liquidity``
  (excluded, never voting) instead of being trusted.

Before the first read the feed checks its configuration against the chain: it asks the pool for
``token0()``/``token1()`` and those tokens for ``decimals()``; decimals other than configured (a
swapped or mistyped pair, which would misprice by powers of ten) are logged as an error and the
feed drops every block as ``token_mismatch`` until the config is fixed. So does a configured
``base_token`` that is not the token ``invert`` names (token1 when set, else token0), or not in
the pool at all: decimals alone cannot tell which token is the base, and a wrong ``invert``
publishes the reciprocal. The reader re-reads the
same block after each of these two steps, so the first block is still priced.

A revert of ``observe`` (the window reaches back before the oldest stored observation: ``OLD``,
the pool's observation cardinality is too small for the window) is the drop reason
``observe_reverted``. The venue time is the block's timestamp; a block stamped earlier than the
last one priced (a reorg replaced the blocks the last price came from) is ``older_block``, and
the reader withdraws that price (flagged ``reorged``) until a later block prices the pool again.

Pool interface: https://docs.uniswap.org/contracts/v3/reference/core/interfaces/pool/IUniswapV3PoolDerivedState
Rounding and the harmonic mean liquidity: ``OracleLibrary.consult`` in Uniswap/v3-periphery
(contracts/libraries/OracleLibrary.sol).

Return data is read straight from the canonical ABI layout where it has it (a few microseconds a
feed) and through eth_abi otherwise, so a read of a hundred pools stays far inside a block's
CPU budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

import structlog
from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_abi.exceptions import DecodingError

from oracled.bands import BAND_SLACK
from oracled.config import FeedSpec
from oracled.model import Quote
from oracled.sources.evm.feed import Block, Call, Feed, FeedResult
from oracled.sources.evm.source import ChainSource

__all__ = [
    "DEFAULT_MAX_SPOT_DEVIATION",
    "DEFAULT_TWAP_WINDOW_S",
    "UniswapV3Feed",
    "UniswapV3Source",
    "decode_address",
    "decode_observe",
    "decode_slot0_sqrt_price",
    "decode_uint128",
    "harmonic_mean_liquidity",
    "mean_tick",
    "revert_reason",
    "sqrt_price_x96_to_price",
    "tick_to_price",
]

DEFAULT_TWAP_WINDOW_S: Final = 300
#: Relative TWAP/spot gap above which the cross-check reports the pool (5 %).
DEFAULT_MAX_SPOT_DEVIATION: Final = 0.05

# 4-byte selectors: keccak256 of the signature (checked in the tests against eth_utils).
_OBSERVE: Final = bytes.fromhex("883bdbfd")  # observe(uint32[])
_SLOT0: Final = bytes.fromhex("3850c7bd")  # slot0()
_LIQUIDITY: Final = bytes.fromhex("1a686502")  # liquidity()
_TOKEN0: Final = bytes.fromhex("0dfe1681")  # token0()
_TOKEN1: Final = bytes.fromhex("d21220a7")  # token1()
_DECIMALS: Final = bytes.fromhex("313ce567")  # decimals()
_ERROR_STRING: Final = bytes.fromhex("08c379a0")  # Error(string), what require() reverts with

_OBSERVE_TYPES: Final = ("int56[]", "uint160[]")
_SLOT0_TYPES: Final = ("uint160", "int24", "uint16", "uint16", "uint16", "uint8", "bool")
_UINT160_MAX: Final = (1 << 160) - 1
_Q96: Final = float(1 << 96)
_INT56: Final = 1 << 55
# The canonical head of observe's two dynamic arrays of two: offsets 0x40 and 0xa0, length 2.
_WORD_TWO: Final = (2).to_bytes(32, "big")
_OBSERVE_HEAD: Final = (0x40).to_bytes(32, "big") + (0xA0).to_bytes(32, "big") + _WORD_TWO
# Set-up steps of a feed, then steady reading.
_TOKENS: Final = 0
_TOKEN_DECIMALS: Final = 1
_READING: Final = 2
_MAX_TICK: Final = 887272  # TickMath.MAX_TICK; a mean tick beyond it is not from a real pool
_LN_TICK_BASE: Final = math.log1p(1e-4)  # ln 1.0001, correctly rounded


def mean_tick(tick_cumulative_then: int, tick_cumulative_now: int, window_s: int) -> int:
    """The arithmetic mean tick over `window_s`, rounded toward negative infinity.

    OracleLibrary divides with Solidity's truncation and then subtracts one for a negative,
    inexact quotient; that is exactly Python's floor division.
    """
    return (tick_cumulative_now - tick_cumulative_then) // window_s


def tick_to_price(tick: int, token0_decimals: int, token1_decimals: int) -> float:
    """Whole token1 per whole token0 at `tick` (raw price 1.0001**tick, scaled by decimals).

    As exp(tick x ln 1.0001): the float 1.0001 is off by about 1e-17, and `pow` would multiply
    that error by the tick (2e-12 at tick 200,000); the correctly rounded logarithm keeps the
    result within about 1e-14 over the whole tick range.
    """
    return math.exp(tick * _LN_TICK_BASE) * 10.0 ** (token0_decimals - token1_decimals)


def sqrt_price_x96_to_price(
    sqrt_price_x96: int, token0_decimals: int, token1_decimals: int
) -> float:
    """Whole token1 per whole token0 from slot0's Q64.96 square root of the raw price."""
    root = sqrt_price_x96 / _Q96
    return root * root * 10.0 ** (token0_decimals - token1_decimals)


def harmonic_mean_liquidity(spl_then: int, spl_now: int, window_s: int) -> int:
    """In-range liquidity over the window from the seconds-per-liquidity accumulators (X128).

    Integer arithmetic as in OracleLibrary.consult; the accumulator is a uint160 that wraps, so
    the difference is taken modulo 2**160.
    """
    delta = (spl_now - spl_then) & _UINT160_MAX
    if delta == 0:
        return 0
    return (window_s * _UINT160_MAX) // (delta << 32)


def decode_observe(data: bytes) -> tuple[int, int, int, int]:
    """(tickCumulative then, now, secondsPerLiquidityX128 then, now) from observe's return data.

    The canonical layout of a two-element answer is read straight from its eight words (a few
    microseconds, where eth_abi takes about forty); anything else goes through eth_abi, which
    either decodes it or raises. Raises ValueError when the data is not such an answer.
    """
    if len(data) == 256 and data[:96] == _OBSERVE_HEAD and data[160:192] == _WORD_TWO:
        tc0 = int.from_bytes(data[96:128], "big", signed=True)
        tc1 = int.from_bytes(data[128:160], "big", signed=True)
        spl0 = int.from_bytes(data[192:224], "big")
        spl1 = int.from_bytes(data[224:256], "big")
        if -_INT56 <= tc0 < _INT56 and -_INT56 <= tc1 < _INT56 and (spl0 | spl1) <= _UINT160_MAX:
            return tc0, tc1, spl0, spl1
    try:
        ticks, spls = abi_decode(_OBSERVE_TYPES, data)
    except (DecodingError, ValueError, OverflowError) as exc:
        raise ValueError(f"not an observe() answer: {exc}") from exc
    if len(ticks) != 2 or len(spls) != 2:
        raise ValueError(f"observe() answered {len(ticks)} ticks for 2 seconds-ago values")
    return ticks[0], ticks[1], spls[0], spls[1]


def decode_slot0_sqrt_price(data: bytes) -> int:
    """slot0's sqrtPriceX96 (the only field the cross-check needs); ValueError if unreadable."""
    if len(data) == 224:
        value = int.from_bytes(data[:32], "big")
        if value <= _UINT160_MAX:
            return value
    try:
        return int(abi_decode(_SLOT0_TYPES, data)[0])
    except (DecodingError, ValueError, OverflowError) as exc:
        raise ValueError(f"not a slot0() answer: {exc}") from exc


def decode_uint128(data: bytes) -> int:
    """A single uint128 (liquidity()); ValueError if unreadable."""
    if len(data) == 32:
        value = int.from_bytes(data, "big")
        if value < 1 << 128:
            return value
    try:
        (value,) = abi_decode(("uint128",), data)
    except (DecodingError, ValueError, OverflowError) as exc:
        raise ValueError(f"not a uint128: {exc}") from exc
    return int(value)


def decode_address(data: bytes) -> str | None:
    """A returned `address` as lower-case 0x hex, or None when the word is not one."""
    if len(data) != 32 or any(data[:12]):
        return None
    return "0x" + data[12:].hex()


def revert_reason(data: bytes) -> str:
    """A readable reason from revert data: the `require` message, else the raw bytes in hex."""
    if data[:4] == _ERROR_STRING:
        try:
            (text,) = abi_decode(("string",), data[4:])
        except (DecodingError, ValueError, OverflowError):
            pass
        else:
            return str(text)
    return "0x" + data.hex() if data else "(no data)"


class UniswapV3Feed(Feed):
    """One pool read as the TWAP of one canonical pair (`BASE/QUOTE`).

    The pool prices token0 in token1, so a pair whose base is the pool's token1 sets `invert`.
    Decimals are the tokens' own `decimals()`.
    """

    reorged = frozenset({"older_block"})

    __slots__ = (
        "_calls",
        "_failing",
        "_last_ts",
        "_log",
        "_mismatch_logged",
        "_observe_failing",
        "_phase",
        "_read_calls",
        "_spot_off",
        "base_token",
        "invert",
        "last_spot",
        "last_spot_gap",
        "max_spot_deviation",
        "min_liquidity",
        "pool",
        "spot_gaps",
        "token0",
        "token0_decimals",
        "token1",
        "token1_decimals",
        "twap_window_s",
    )

    def __init__(
        self,
        source_id: str,
        pair: str,
        pool: str,
        *,
        invert: bool,
        token0_decimals: int,
        token1_decimals: int,
        min_liquidity: float,
        twap_window_s: int = DEFAULT_TWAP_WINDOW_S,
        max_spot_deviation: float = DEFAULT_MAX_SPOT_DEVIATION,
        base_token: str | None = None,
    ) -> None:
        super().__init__(source_id, pair)
        if not 0 < twap_window_s < 1 << 32:
            raise ValueError("twap_window_s must be a positive uint32")
        self.pool = pool
        self.invert = invert
        #: The pair's base token (lower-case hex), checked against the pool's order; None: not.
        self.base_token = base_token.lower() if base_token is not None else None
        self.token0_decimals = token0_decimals
        self.token1_decimals = token1_decimals
        self.min_liquidity = min_liquidity
        self.twap_window_s = twap_window_s
        self.max_spot_deviation = max_spot_deviation
        observe = _OBSERVE + abi_encode(("uint32[]",), ([twap_window_s, 0],))
        self._read_calls = (Call(pool, observe), Call(pool, _SLOT0), Call(pool, _LIQUIDITY))
        # Learnt from the chain before the first read (see the module docstring).
        self.token0: str | None = None
        self.token1: str | None = None
        self._phase = _TOKENS
        self._calls: tuple[Call, ...] = (Call(pool, _TOKEN0), Call(pool, _TOKEN1))
        self._mismatch_logged = False
        self._last_ts = 0
        #: Reads whose spot price was more than max_spot_deviation away from the TWAP.
        self.spot_gaps = 0
        self.last_spot: float | None = None  # in pair terms, like the emitted price
        self.last_spot_gap: float | None = None
        self._spot_off = False
        self._observe_failing = False
        self._failing: str | None = None  # the drop reason last logged, until a quote
        self._log = structlog.get_logger().bind(source=source_id, pair=pair, pool=pool)

    @classmethod
    def from_spec(cls, source_id: str, pair: str, spec: FeedSpec) -> UniswapV3Feed:
        """The feed a `uniswap_v3` source's `feeds.<pair>` table describes."""
        if (
            spec.address is None
            or spec.min_liquidity is None
            or spec.token0_decimals is None
            or spec.token1_decimals is None
        ):
            raise ValueError(
                "a Uniswap v3 feed needs address, min_liquidity, token0_decimals, token1_decimals"
            )
        # None only: the config refuses a deviation of 0 (`Fraction`), and one that reached here
        # would mean a band of 0, not the default, as `or` made it.
        deviation = spec.max_spot_deviation
        return cls(
            source_id,
            pair,
            spec.address,
            invert=spec.invert,
            token0_decimals=spec.token0_decimals,
            token1_decimals=spec.token1_decimals,
            min_liquidity=float(spec.min_liquidity),
            twap_window_s=spec.twap_window_s,
            max_spot_deviation=DEFAULT_MAX_SPOT_DEVIATION if deviation is None else deviation,
            base_token=spec.base_token,
        )

    def spot_gap_count(self) -> int | None:
        return self.spot_gaps

    def calls(self) -> Sequence[Call]:
        return self._calls

    def decode(
        self, results: Sequence[tuple[bool, bytes]], block: Block, recv_ts: int
    ) -> FeedResult:
        if self._phase != _READING:
            return self._learn(results)
        (obs_ok, obs_data), (slot_ok, slot_data), (liq_ok, liq_data) = results
        ts = block.timestamp * 1000
        if ts < self._last_ts:  # the chain no longer holds the block last priced (a reorg)
            return self._dropped("older_block", block, last_priced_ms=self._last_ts)
        if not obs_ok:
            if not self._observe_failing:
                self._observe_failing = True
                self._log.warning(
                    "uniswap_observe_reverted",
                    reason=revert_reason(obs_data),
                    twap_window_s=self.twap_window_s,
                    hint="the window reaches past the oldest observation: raise the pool's "
                    "observation cardinality (increaseObservationCardinalityNext) or shorten "
                    "twap_window_s",
                )
            return "observe_reverted"
        if not (slot_ok and liq_ok):
            failed = "slot0()" if not slot_ok else "liquidity()"
            data = slot_data if not slot_ok else liq_data
            return self._dropped("call_failed", block, call=failed, revert=revert_reason(data))
        try:
            tc0, tc1, spl0, spl1 = decode_observe(obs_data)
            sqrt_price_x96 = decode_slot0_sqrt_price(slot_data)
            liquidity = decode_uint128(liq_data)
        except ValueError as exc:
            return self._dropped("malformed", block, error=str(exc)[:200])
        if sqrt_price_x96 == 0:
            return self._dropped("malformed", block, error="slot0() sqrtPriceX96 is 0")
        if self._observe_failing:
            self._observe_failing = False
            self._log.info("uniswap_observe_recovered")
        window = self.twap_window_s
        tick = mean_tick(tc0, tc1, window)
        if not -_MAX_TICK <= tick <= _MAX_TICK:
            return self._dropped("malformed", block, error=f"mean tick {tick} out of range")
        twap = tick_to_price(tick, self.token0_decimals, self.token1_decimals)
        spot = sqrt_price_x96_to_price(sqrt_price_x96, self.token0_decimals, self.token1_decimals)
        if self.invert:
            twap, spot = 1.0 / twap, 1.0 / spot
        self._cross_check(twap, spot)
        thin = (
            liquidity < self.min_liquidity
            or harmonic_mean_liquidity(spl0, spl1, window) < self.min_liquidity
        )
        self._last_ts = ts
        self._failing = None
        return Quote(
            self.source_id,
            self.pair,
            recv_ts,
            price=twap,
            venue_ts=ts,
            flag="liquidity" if thin else None,
            block=block.number,
            block_ts=ts,
        )

    def _dropped(self, reason: str, block: Block, **detail: object) -> str:
        """A block dropped as `reason` (counted by the reader): logged when the reason changes,
        not on every block it lasts (before, these drops were counted but never logged)."""
        if reason != self._failing:
            self._failing = reason
            self._log.warning("uniswap_read_dropped", reason=reason, block=block.number, **detail)
        return reason

    def _learn(self, results: Sequence[tuple[bool, bytes]]) -> FeedResult:
        """The two set-up steps: the pool's tokens (and which is the base, when `base_token`
        says), then their decimals against the config."""
        if self._phase == _TOKENS:
            (ok0, data0), (ok1, data1) = results
            token0 = decode_address(data0) if ok0 else None
            token1 = decode_address(data1) if ok1 else None
            if token0 is None or token1 is None:
                if not self._mismatch_logged:
                    self._mismatch_logged = True
                    self._log.error("uniswap_not_a_pool", hint="check the feed's address")
                return "not_a_pool"
            self.token0, self.token1 = token0, token1
            base = self.base_token
            if base is not None and base != (token1 if self.invert else token0):
                if not self._mismatch_logged:
                    self._mismatch_logged = True
                    self._log.error(
                        "uniswap_token_order_mismatch",
                        token0=token0,
                        token1=token1,
                        base_token=base,
                        invert=self.invert,
                        hint="base_token is not in the pool: check it and the pool address"
                        if base not in (token0, token1)
                        else f"the base is the pool's token{int(base == token1)}: set invert = "
                        f"{str(base == token1).lower()}",
                    )
                return "token_mismatch"
            self._phase = _TOKEN_DECIMALS
            self._calls = (Call(token0, _DECIMALS), Call(token1, _DECIMALS))
            return None
        configured = (self.token0_decimals, self.token1_decimals)
        found: list[int | None] = []
        for ok, data in results:
            try:
                found.append(decode_uint128(data) if ok else None)
            except ValueError:
                found.append(None)
        if any(f is not None and f != c for f, c in zip(found, configured, strict=True)):
            if not self._mismatch_logged:
                self._mismatch_logged = True
                self._log.error(
                    "uniswap_token_decimals_mismatch",
                    token0=self.token0,
                    token1=self.token1,
                    configured=configured,
                    on_chain=tuple(found),
                    hint="token0 is the pool's lower token address; set token0_decimals, "
                    "token1_decimals and invert to match",
                )
            return "token_mismatch"
        self._log.info(
            "uniswap_feed",
            token0=self.token0,
            token1=self.token1,
            decimals=configured,
            verified=None not in found,
            invert=self.invert,
            order_verified=self.base_token is not None,
            twap_window_s=self.twap_window_s,
            min_liquidity=self.min_liquidity,
        )
        self._phase = _READING
        self._calls = self._read_calls
        return None

    def _cross_check(self, twap: float, spot: float) -> None:
        """Count a TWAP/spot gap; log only when the pool enters or leaves that state. A gap of
        exactly `max_spot_deviation` is not one (`BAND_SLACK`, as the other bands of the project):
        judged as |spot - twap| against the band, since |spot / twap - 1| rounds 103 on 100 above
        3 %. The reported gap stays the ratio."""
        gap = abs(spot / twap - 1.0)
        self.last_spot, self.last_spot_gap = spot, gap
        off = abs(spot - twap) > self.max_spot_deviation * BAND_SLACK * twap
        if off:
            self.spot_gaps += 1
        if off != self._spot_off:
            self._spot_off = off
            self._log.warning(
                "uniswap_spot_gap" if off else "uniswap_spot_gap_closed",
                twap=twap,
                spot=spot,
                gap=round(gap, 6),
                max_spot_deviation=self.max_spot_deviation,
            )


class UniswapV3Source(ChainSource):
    """Source type `uniswap_v3`: one pool per pair (`feeds.<pair>.address`, `min_liquidity`,
    `token0_decimals`, `token1_decimals`, `invert`, `twap_window_s`, `max_spot_deviation`)."""

    def build_feed(self, pair: str, spec: FeedSpec) -> Feed:
        return UniswapV3Feed.from_spec(self.source_id, pair, spec)
