"""Synthetic quote tapes for the stress simulator, each with the config and accounts it runs on.

Every scenario shares one market set (USDT/USD; BTC/USD from three USD venues, one USDT venue,
one thin venue and an on-chain feed) and one set of accounts, and differs only in what happens to
the quotes from the event time on (docs/stress.md lists each and what it must show). Tapes are
deterministic: the same name and seed give the same bytes.

Perpetuals are opt-in per scenario: only a scenario whose world has `perps` set adds three
USDT-margined perpetual venues to BTC/USD (`scenario_config(name)`) and quotes them, so BTC/USD
gets a mark price; every other scenario's tape and config stay what they were without them.

The tape header carries what the simulator needs to judge the run: `scenario`, `single_venue`
(the venue the naive single-venue policy reads), and for a real move `move_market`,
`move_start_ms` and `move_end_ms`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from oracled.tape import TAPE_FORMAT, TAPE_VERSION

__all__ = [
    "PERP_VENUES",
    "SCENARIOS",
    "Scenario",
    "build",
    "has_perps",
    "scenario_accounts",
    "scenario_config",
]

T0 = 1_700_000_000_000
DURATION_S = 360
EVENT_S = 60
BTC0 = 50_000.0
FLOOR = 45_000.0  # the on-chain aggregator's minimum answer in the floor scenario
PERP_VENUES = ("p1", "p2", "p3")
PERP_PREMIUM = 0.0001  # perpetuals trade 0.01 % over spot: a small, steady basis
PERP_HALF_SPREAD = 0.00005
WICK = 0.88  # the perp wick's low: -12 %, past the 10x long's liquidation (-8.3 %)

SCENARIO_CONFIG = """\
# Markets of the synthetic stress scenarios (oracled scenario / oracled stress --scenario).
[oracle]
round_interval_ms = 1000
resume_rounds = 3
jump_confirm_rounds = 5

[sources.v1]
type = "binance"
[sources.v2]
type = "kraken"
[sources.v3]
type = "coinbase"
[sources.v4]
type = "okx"
[sources.thin]
type = "gemini"
[sources.chain]
type = "pyth_hermes"
instruments = { "BTC/USD" = "0xe62df6c8b4a85fe1a67db44dc12de5db330f7ac66b72dc658afedf0f4a415b43" }

[[routes]]
from = "USDT"
to = "USD"
via = "USDT/USD"

[[markets]]
symbol = "USDT/USD"
price_exponent = -5
min_sources = 3
max_age_ms = 5000
max_deviation = 0.01
circuit_breaker = 0.05
sources = [
  { source = "v1", pair = "USDT/USD" },
  { source = "v2", pair = "USDT/USD" },
  { source = "v3", pair = "USDT/USD" },
  { source = "v4", pair = "USDT/USD" },
]

[[markets]]
symbol = "BTC/USD"
price_exponent = -2
min_sources = 3
max_age_ms = 5000
max_deviation = 0.01
circuit_breaker = 0.05
sources = [
  { source = "v1", pair = "BTC/USD" },
  { source = "v2", pair = "BTC/USD" },
  { source = "v3", pair = "BTC/USD" },
  { source = "v4", pair = "BTC/USDT" },
  { source = "thin", pair = "BTC/USD", weight = 0.3 },
  { source = "chain", pair = "BTC/USD" },
]
"""

_TIERS = [
    {"up_to": 100_000, "initial": 0.02, "maintenance": 0.01},
    {"up_to": 500_000, "initial": 0.05, "maintenance": 0.025},
    {"initial": 0.1, "maintenance": 0.05},
]


def scenario_accounts() -> dict[str, Any]:
    """The accounts every scenario runs: leveraged longs and shorts, a hedged book, a whale."""

    def perp(qty: float, **extra: Any) -> dict[str, Any]:
        return {"instrument": "BTC-PERP", "qty": qty, "entry": BTC0, **extra}

    return {
        "policy": {
            "max_report_age_ms": 5_000,
            "pause_grace_ms": 300_000,
            "after_grace": "last_good",
            "pause_buffer": 0.5,
            "liquidation_fee": 0.005,
            "insurance_fund": 20_000.0,
        },
        "assets": {
            "USD": {},
            "USDT": {"market": "USDT/USD", "haircut": 0.02},
            "BTC": {"market": "BTC/USD", "haircut": 0.1},
        },
        "instruments": {"BTC-PERP": {"market": "BTC/USD", "tiers": _TIERS}},
        "accounts": [
            # liquidated near -18.6 %
            {"id": "long_5x", "collateral": {"USD": 50_000.0}, "positions": [perp(5)]},
            # liquidated near -8.3 %
            {"id": "long_10x", "collateral": {"USD": 25_000.0}, "positions": [perp(5)]},
            # liquidated near +8.2 %
            {"id": "short_10x", "collateral": {"USD": 25_000.0}, "positions": [perp(-5)]},
            {
                "id": "hedged",
                "collateral": {"USDT": 30_000.0, "BTC": 0.5},
                "strategies": {"trend": {"balance": 20_000.0}, "carry": {"balance": 15_000.0}},
                "positions": [perp(3, strategy="trend"), perp(-2, strategy="carry")],
            },
            {
                "id": "isolated",
                "collateral": {"USD": 100_000.0},
                "positions": [perp(2, isolated_margin=10_000.0)],
            },
            {"id": "whale", "collateral": {"USD": 2_000_000.0}, "positions": [perp(-20)]},
        ],
    }


# Added only for a scenario with perpetuals: the sources before the routes, and BTC/USD's
# perp_sources after its spot sources (the last keys of the last market table).
_PERP_SOURCES = """\
# Perpetuals (this scenario only): inputs of BTC/USD's mark price, never of its index.
[sources.p1]
type = "binance_usdm"
[sources.p2]
type = "bybit_linear"
[sources.p3]
type = "okx"

"""
_PERP_MARKET = """\
perp_sources = [
  { source = "p1", pair = "BTC/USDT" },
  { source = "p2", pair = "BTC/USDT" },
  { source = "p3", pair = "BTC/USDT" },
]
"""


def has_perps(name: str) -> bool:
    """Whether the scenario quotes perpetuals (and its config lists them)."""
    return SCENARIOS[name][1]().perps


def scenario_config(name: str | None = None) -> str:
    """The scenarios' config (TOML); with the name of a perpetual scenario, with its perps."""
    if name is None or not has_perps(name):
        return SCENARIO_CONFIG
    routes = SCENARIO_CONFIG.index("[[routes]]")
    head, tail = SCENARIO_CONFIG[:routes], SCENARIO_CONFIG[routes:]
    return head + _PERP_SOURCES + tail + _PERP_MARKET


@dataclass
class _World:
    """The true prices at time t, and how each venue departs from them."""

    btc: Callable[[float], float] = lambda t: BTC0
    usdt: Callable[[float], float] = lambda t: 1.0
    # (venue, t) -> replacement BTC/USD value, or None to quote the truth; NaN: stay silent
    btc_override: Callable[[str, float], float | None] = lambda v, t: None
    chain_flag: Callable[[float], str | None] = lambda t: None
    header: dict[str, Any] = field(default_factory=dict)
    # Perpetuals, opt-in: when set, PERP_VENUES quote the spot truth at PERP_PREMIUM, except
    # where `perp_override` replaces a venue's value (NaN: silent).
    perps: bool = False
    perp_override: Callable[[str, float], float | None] = lambda v, t: None


def _ramp(t: float, start: float, end: float, a: float, b: float) -> float:
    if t <= start:
        return a
    if t >= end:
        return b
    return a + (b - a) * (t - start) / (end - start)


def _flash_crash() -> _World:
    def override(venue: str, t: float) -> float | None:
        return BTC0 * 0.7 if venue == "v1" and EVENT_S <= t < EVENT_S + 20 else None

    return _World(btc_override=override, header={"single_venue": "v1"})


def _stale_venue() -> _World:
    def btc(t: float) -> float:
        return _ramp(t, EVENT_S + 30, EVENT_S + 210, BTC0, BTC0 * 0.88)

    def override(venue: str, t: float) -> float | None:
        return float("nan") if venue == "v1" and t >= EVENT_S else None

    return _World(btc=btc, btc_override=override, header={"single_venue": "v1"})


def _thin_manipulation() -> _World:
    def override(venue: str, t: float) -> float | None:
        if venue != "thin" or t < EVENT_S:
            return None
        push = _ramp(t, EVENT_S, EVENT_S + 60, 1.0, 1.3)
        return BTC0 * (push if t < EVENT_S + 150 else 1.0)

    return _World(btc_override=override, header={"single_venue": "thin"})


def _stablecoin_depeg() -> _World:
    def usdt(t: float) -> float:
        return _ramp(t, EVENT_S, EVENT_S + 10, 1.0, 0.9)

    return _World(usdt=usdt, header={"single_venue": "v4"})


def _moving(single_venue: str, start: float, end: float) -> dict[str, Any]:
    """The header of a scenario where BTC/USD really moves from `start` to `end` (seconds): the
    simulator judges the time each policy takes to follow it."""
    return {
        "single_venue": single_venue,
        "move_market": "BTC/USD",
        "move_start_ms": T0 + start * 1000,
        "move_end_ms": T0 + end * 1000,
    }


def _market_crash() -> _World:
    start, end = EVENT_S, EVENT_S + 5

    def btc(t: float) -> float:
        return _ramp(t, start, end, BTC0, BTC0 * 0.75)

    header = _moving("v1", start, end)
    return _World(btc=btc, header=header)


def _chain_floor() -> _World:
    start, end = EVENT_S, EVENT_S + 240

    def btc(t: float) -> float:
        return _ramp(t, start, end, BTC0, BTC0 * 0.76)

    def override(venue: str, t: float) -> float | None:
        return FLOOR if venue == "chain" and btc(t) < FLOOR else None

    def flag(t: float) -> str | None:
        return "at_bound" if btc(t) < FLOOR else None

    header = _moving("chain", start, end)
    return _World(btc=btc, btc_override=override, chain_flag=flag, header=header)


def _perp_wick() -> _World:
    """One perpetual venue's book is swept: -12 % in 3 s, held 10 s, back in 2 s; spot is calm."""
    start = EVENT_S

    def override(venue: str, t: float) -> float | None:
        if venue != "p2" or not start <= t < start + 15:
            return None
        if t < start + 3:
            depth = _ramp(t, start, start + 3, 1.0, WICK)
        elif t < start + 13:
            depth = WICK
        else:
            depth = _ramp(t, start + 13, start + 15, WICK, 1.0)
        return BTC0 * depth

    return _World(perps=True, perp_override=override, header={"single_venue": "p2"})


def _perp_market_crash() -> _World:
    """market_crash with perpetuals: spot and contracts fall together, at the same basis."""
    world = _market_crash()
    world.perps = True
    world.header["single_venue"] = "p1"
    return world


def _perp_silent() -> _World:
    """p2 and p3 send nothing for a minute from the event on (sockets open, no frames) while
    spot and p1 fall 8 % in 10 s: their last quotes are fresh for max_age_ms, and the mark must
    not stay with them (the perpetuals' lag rule, docs/mark.md, Inputs)."""
    start, end = EVENT_S, EVENT_S + 10

    def btc(t: float) -> float:
        return _ramp(t, start, end, BTC0, BTC0 * 0.92)

    def override(venue: str, t: float) -> float | None:
        return float("nan") if venue in ("p2", "p3") and start <= t < start + 60 else None

    header = _moving("p2", start, end)
    return _World(btc=btc, perps=True, perp_override=override, header=header)


SCENARIOS: dict[str, tuple[str, Callable[[], _World]]] = {
    "flash_crash": ("one venue prints -30 % for 20 s and recovers", _flash_crash),
    "stale_venue": ("one venue freezes while the market falls 12 %", _stale_venue),
    "thin_manipulation": ("a thin venue is pushed up 30 % by a manipulator", _thin_manipulation),
    "stablecoin_depeg": ("USDT falls to 0.90 USD; BTC/USD itself is flat", _stablecoin_depeg),
    "market_crash": ("every venue falls 25 % in 5 s and stays there", _market_crash),
    "chain_floor": ("the market falls 24 %; the on-chain feed sticks at its floor", _chain_floor),
    "perp_wick": ("one perpetual venue wicks -12 % for 15 s; spot is flat", _perp_wick),
    "perp_market_crash": (
        "spot and perpetuals fall 25 % in 5 s together and stay there",
        _perp_market_crash,
    ),
    "perp_silent": (
        "two of three perpetual venues fall silent as the market falls 8 %",
        _perp_silent,
    ),
}

_USD_VENUES = ("v1", "v2", "v3", "thin", "chain")


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    header: dict[str, Any]
    lines: list[bytes]  # the tape, header first

    def tape(self) -> bytes:
        return b"".join(self.lines)


def build(name: str, seed: int = 0) -> Scenario:
    """Generate a scenario's tape: every venue quotes once a second with a little noise."""
    if name not in SCENARIOS:
        raise KeyError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    description, make = SCENARIOS[name]
    world = make()
    rng = random.Random(f"{name}:{seed}")
    header = {
        "format": TAPE_FORMAT,
        "version": TAPE_VERSION,
        "scenario": name,
        "description": description,
        "seed": seed,
        **world.header,
    }
    enc = msgspec.json.encode
    lines = [enc(header) + b"\n"]
    # The perps draw from their own generator, so the spot quotes do not depend on them.
    perp_rng = random.Random(f"{name}:{seed}:perps")
    for second in range(DURATION_S):
        walk = 1.0 + 0.0004 * rng.uniform(-1, 1)  # a shared wiggle so rounds differ
        for k, venue in enumerate((*_USD_VENUES[:3], "v4", *_USD_VENUES[3:])):
            t = second + 0.05 * (k + 1)
            ts = T0 + int(t * 1000)
            noise = 1.0 + 0.0003 * rng.uniform(-1, 1)
            true_btc = world.btc(t) * walk
            usdt = world.usdt(t)
            if venue in ("v1", "v2", "v3", "v4"):
                u = usdt * (1.0 + 0.0001 * rng.uniform(-1, 1))
                leg = {"ts": ts, "source": venue, "pair": "USDT/USD", "price": f"{u:.6f}"}
                lines.append(enc(leg) + b"\n")
            value = world.btc_override(venue, t)
            if value is not None and value != value:  # NaN: the venue is silent
                continue
            if venue == "v4":
                quote = (true_btc if value is None else value) / usdt * noise
                line: dict[str, Any] = {"pair": "BTC/USDT", "price": f"{quote:.2f}"}
            else:
                quote = true_btc * noise if value is None else value
                line = {"pair": "BTC/USD", "price": f"{quote:.2f}"}
            if venue == "chain":
                flag = world.chain_flag(t)
                if flag is not None:
                    line["flag"] = flag
            lines.append(enc({"ts": ts, "source": venue, **line}) + b"\n")
        if world.perps:
            lines.extend(_perp_lines(world, second, walk, perp_rng))
    return Scenario(name, description, header, lines)


def _perp_lines(world: _World, second: int, walk: float, rng: random.Random) -> list[bytes]:
    """One book-ticker quote a second from each perp venue, after the spot quotes of that second."""
    out: list[bytes] = []
    for k, venue in enumerate(PERP_VENUES):
        t = second + 0.35 + 0.05 * k
        noise = 1.0 + 0.0003 * rng.uniform(-1, 1)
        value = world.perp_override(venue, t)
        if value is not None and value != value:  # NaN: the venue is silent
            continue
        usd = world.btc(t) * walk * (1.0 + PERP_PREMIUM) * noise if value is None else value
        mid = usd / world.usdt(t)  # USDT-margined contracts
        quote = {
            "ts": T0 + int(t * 1000),
            "source": venue,
            "pair": "BTC/USDT",
            "kind": "perp",
            "bid": f"{mid * (1 - PERP_HALF_SPREAD):.2f}",
            "ask": f"{mid * (1 + PERP_HALF_SPREAD):.2f}",
        }
        out.append(msgspec.json.encode(quote) + b"\n")
    return out
