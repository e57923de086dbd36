"""Conversion routes driven round after round with hostile inputs (docs/pricing.md section 3).

The world: USD/USDT is a leg listed the other way round (one venue quotes it inverted, as
USDT/USD); EUR/USD is quoted partly in USDT, so it is a leg that is itself routed; BTC/USD mixes
a direct venue, a venue in USDT and two in EUR (a leg of a leg), with perpetuals in USDT and
EUR; SOL/USD is quoted only in EUR, ETH/USD only in USDT, and ETH/USDT is the same venues' ETH
quotes unconverted, ETH/USD's shadow. Along a tape every currency may move (a depeg, a crash,
a jump beyond the breaker), a venue may print an absurd value (1e-300, 1e300, a subnormal),
fall silent or lag past `max_age_ms`, and the operator may pause or release any market. Every
round is checked against the rules of section 3, the tape is replayed with the markets and
routes listed in another order, and generated route graphs either are refused with their key
named or price every market at its true cross rate.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence

import msgspec
from core_helpers import ROUND_MS, T0, Round, config, play, went_live_legitimately
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oracled.config import Config
from oracled.core import Core, RoundResult
from oracled.errors import ConfigError
from oracled.model import Kind, Quote, Report, Status

LIVE = ("active", "degraded")
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
MAX_AGE = 500
#: What one unit of each currency is worth in USD before the tape moves it.
USD_VALUE = {"USD": 1.0, "USDT": 0.998, "EUR": 1.1, "BTC": 50_000.0, "ETH": 2_000.0, "SOL": 150.0}
#: Each venue's own small, steady offset from the true rate: venues never agree exactly.
NOISE = {"a": 0.0, "b": 0.001, "c": -0.0007, "d": 0.0003, "p": 0.0002, "q": -0.0004}
#: Every (source, pair, kind) the world's markets read, spot first.
FEEDS: tuple[tuple[str, str, Kind], ...] = (
    ("a", "USD/USDT", "spot"),
    ("b", "USD/USDT", "spot"),
    ("c", "USD/USDT", "spot"),
    ("d", "USDT/USD", "spot"),
    ("a", "EUR/USDT", "spot"),
    ("b", "EUR/USDT", "spot"),
    ("c", "EUR/USD", "spot"),
    ("a", "BTC/EUR", "spot"),
    ("b", "BTC/EUR", "spot"),
    ("c", "BTC/USDT", "spot"),
    ("d", "BTC/USD", "spot"),
    ("a", "SOL/EUR", "spot"),
    ("b", "SOL/EUR", "spot"),
    ("a", "ETH/USDT", "spot"),
    ("b", "ETH/USDT", "spot"),
    ("c", "ETH/USDT", "spot"),
    ("p", "BTC/USDT", "perp"),
    ("q", "BTC/EUR", "perp"),
)
#: Markets whose every source converts through one leg: (market, leg).
ROUTED_ONLY = (("ETH/USD", "USD/USDT"), ("SOL/USD", "EUR/USD"))
ROUTES = [
    {"from": "USDT", "to": "USD", "via": "USD/USDT"},
    {"from": "EUR", "to": "USD", "via": "EUR/USD"},
]
ABSURD = (1e-300, 1e300, 5e-324, 1e-12, 1e12)


def _sources(spec: str) -> list[dict[str, str]]:
    """Source tables from "source:pair" items: "a:BTC/EUR b:BTC/EUR"."""
    return [dict(zip(("source", "pair"), item.split(":"), strict=True)) for item in spec.split()]


def _markets(btc_min_sources: int) -> list[dict[str, object]]:
    common = {"max_age_ms": MAX_AGE}
    return [
        {
            "symbol": "USD/USDT",
            "price_exponent": -6,
            "min_sources": 2,
            "sources": _sources("a:USD/USDT b:USD/USDT c:USD/USDT d:USDT/USD"),
            **common,
        },
        {
            "symbol": "EUR/USD",
            "price_exponent": -6,
            "min_sources": 2,
            "sources": _sources("a:EUR/USDT b:EUR/USDT c:EUR/USD"),
            **common,
        },
        {
            "symbol": "BTC/USD",
            "min_sources": btc_min_sources,
            "sources": _sources("a:BTC/EUR b:BTC/EUR c:BTC/USDT d:BTC/USD"),
            "perp_sources": _sources("p:BTC/USDT q:BTC/EUR"),
            **common,
        },
        {
            "symbol": "SOL/USD",
            "min_sources": 2,
            "sources": _sources("a:SOL/EUR b:SOL/EUR"),
            **common,
        },
        {
            "symbol": "ETH/USD",
            "min_sources": 2,
            "sources": _sources("a:ETH/USDT b:ETH/USDT c:ETH/USDT"),
            **common,
        },
        {
            "symbol": "ETH/USDT",
            "min_sources": 2,
            "sources": _sources("a:ETH/USDT b:ETH/USDT c:ETH/USDT"),
            **common,
        },
    ]


def _world(
    order: Sequence[int], btc_min_sources: int, resume: int, confirm: int, wide: bool
) -> Config:
    """The world with its markets in `order` (the routes reversed unless `order` is sorted);
    `wide`: a global band that lets 1e-300, 1e300 and subnormals through the door."""
    markets = _markets(btc_min_sources)
    band = {"min_price": 5e-324, "max_price": 1e300} if wide else {}
    routes = ROUTES if list(order) == sorted(order) else ROUTES[::-1]
    return config(
        [markets[k] for k in order],
        routes,
        resume_rounds=resume,
        jump_confirm_rounds=confirm,
        **band,
    )


# A run of rounds alike: each currency's move (a factor on its value), the venues silent, the
# venues lagging past max_age_ms, a feed printing an absurd value, an operator toggle at the
# run's start, the run's length.
moves = st.sampled_from((1.0, 1.0, 1.0, 1.003, 0.97, 0.8, 1.3))
runs = st.lists(
    st.tuples(
        st.fixed_dictionaries(dict.fromkeys(("USDT", "EUR", "BTC", "ETH", "SOL"), moves)),
        st.sets(st.sampled_from("abcdpq"), max_size=2),
        st.sets(st.sampled_from("abcdpq"), max_size=2),
        st.one_of(st.none(), st.tuples(st.integers(0, len(FEEDS) - 1), st.sampled_from(ABSURD))),
        st.one_of(
            st.none(),
            st.none(),
            st.sampled_from(("USD/USDT", "EUR/USD", "BTC/USD", "ETH/USD")),
        ),
        st.integers(1, 6),
    ),
    min_size=2,
    max_size=8,
)
Run = tuple[dict[str, float], set[str], set[str], tuple[int, float] | None, str | None, int]


def _quotes(
    r: int,
    value: dict[str, float],
    silent: Collection[str] = (),
    lagging: Collection[str] = (),
    absurd: tuple[int, float] | None = None,
) -> list[Quote]:
    """Round r's quote of every feed at the currencies' `value`, but for the silent venues;
    a lagging venue's time is past max_age_ms; `absurd` replaces one feed's price."""
    now = T0 + r * ROUND_MS
    quotes = []
    for n, (source, pair, kind) in enumerate(FEEDS):
        if source in silent:
            continue
        base, quote_ccy = pair.split("/")
        price = value[base] / value[quote_ccy] * (1.0 + NOISE[source])
        if absurd is not None and absurd[0] == n:
            price = absurd[1]
        lag = MAX_AGE + 200 if source in lagging else 0
        quotes.append(Quote(source, pair, now, price=price, venue_ts=now - lag, kind=kind))
    return quotes


def _tape(tape_runs: list[Run]) -> list[Round]:
    """Quotes at each run's levels (moves compound from run to run), with its faults."""
    value = dict(USD_VALUE)
    paused: set[str] = set()
    tape: list[Round] = []
    for factors, silent, lagging, absurd, toggle, length in tape_runs:
        for cur, f in factors.items():
            value[cur] *= f
        for k in range(length):
            manual = {}
            if toggle is not None and k == 0:
                paused ^= {toggle}
                manual[toggle] = toggle in paused
            tape.append(Round(_quotes(len(tape), value, silent, lagging, absurd), manual))
    return tape


def _check_round(core: Core, res: RoundResult) -> None:
    """Section 3 in one round: a routed slot is used only through a leg live this round, its
    value its quote times (or divided by) that round's leg price; a fresh one behind a leg that
    is not live is excluded as `route`, and a market that lost its quorum to it is `unknown`
    for `route`; a live market is priced inside the span of its used values and in its band,
    from fresh quotes."""
    lay = res.layout
    index = {sym: i for i, sym in enumerate(lay.markets)}
    skew = core.config.oracle.max_clock_skew_ms
    reports = res.reports()
    for i, rep in enumerate(reports):
        live = rep.status in LIVE
        used_values = []
        for k, src in enumerate(rep.sources):
            if src.used:
                assert src.age_ms is not None and -skew <= src.age_ms <= lay.max_age_ms[i, k]
                used_values.append(float(res.value[i, k]))
            via = lay.slot_via[i][k]
            if via is None:
                continue
            j = index[via]
            assert src.via == via
            leg_live = int(res.status[j]) <= Status.DEGRADED
            if not leg_live:
                assert not src.used and src.value is None, (rep, reports[j])
                fresh = src.age_ms is not None and -skew <= src.age_ms <= lay.max_age_ms[i, k]
                held = src.age_ms is not None
                assert src.reason == ("route" if fresh else "stale" if held else "no_quote")
                continue
            raw, leg = float(core.book.mid[i, k]), float(res.price[j])
            converted = raw / leg if lay.route_invert[i, k] else raw * leg
            assert src.reason == "no_quote" or res.value[i, k] == converted, (rep, leg)
        if live:
            price = float(res.price[i])
            assert len(used_values) >= core.config.markets[i].min_sources, rep
            assert min(used_values) <= price <= max(used_values), (rep, used_values)
            assert lay.resolution_floor[i] <= price <= lay.price_ceiling[i], rep
        else:
            assert rep.price is None and rep.confidence is None, rep
            if "quorum" in rep.reasons and any(s.reason == "route" for s in rep.sources):
                assert rep.status == "unknown" and "route" in rep.reasons, rep
    _check_shadow(res, index)
    _check_perps(core, res, index)


def _check_shadow(res: RoundResult, index: dict[str, int]) -> None:
    """ETH/USD's values are ETH/USDT's times one leg factor: while the two keep the same
    sources, ETH/USD's price and confidence are ETH/USDT's times that factor (the spread of the
    converted values, the leg's own band not added, docs/pricing.md section 3)."""
    e, s, leg = index["ETH/USD"], index["ETH/USDT"], index["USD/USDT"]
    if int(res.status[leg]) > Status.DEGRADED:
        return
    if res.slot_reason[e].tolist() != res.slot_reason[s].tolist():
        return
    factor = 1.0 / float(res.price[leg])
    conf_e, conf_s = float(res.confidence[e]), float(res.confidence[s])
    if math.isfinite(conf_s):
        assert math.isclose(conf_e, conf_s * factor, rel_tol=1e-9, abs_tol=1e-9), (conf_e, conf_s)
    if math.isfinite(res.price[e]) and math.isfinite(res.price[s]):
        assert math.isclose(float(res.price[e]), float(res.price[s]) * factor, rel_tol=1e-9)


def _check_perps(core: Core, res: RoundResult, index: dict[str, int]) -> None:
    """A perpetual quoted in USDT or EUR counts towards BTC/USD's mark only while its leg is
    live (while it is not, a fresh one is excluded as `route`, never converted at 1.0), each
    counted one at its quote converted through the leg's price of the round; the mark is
    inside the market's band, or null."""
    assert res.mark is not None
    btc = index["BTC/USD"]
    values = res.mark.values[btc]
    perps = zip(
        values.perp_reasons,
        values.perp_mids,
        (("p", "BTC/USDT", "perp"), ("q", "BTC/EUR", "perp")),
        ("USD/USDT", "EUR/USD"),
        strict=True,
    )
    for reason, mid, key, leg in perps:
        leg_price = float(res.price[index[leg]])
        if not math.isfinite(leg_price) and reason != "index":
            assert reason in ("route", "stale", "no_quote"), values
            assert math.isnan(mid), values
        elif reason in (None, "deviation"):
            raw = core.book.perps[key].price
            assert raw is not None
            assert mid == (raw / leg_price if leg == "USD/USDT" else raw * leg_price), values
    if math.isfinite(values.price):
        assert res.layout.price_floor[btc] <= values.price <= res.layout.price_ceiling[btc]


def _check_streaks(seen: list[list[Report]], markets: tuple[str, ...], resume: int) -> None:
    """A market comes back only through its healthy streak (or a jump held since it was live),
    and a market quoted only through a leg counts a round towards it only while its leg is live:
    it resumes resume_rounds - 1 rounds after the leg at the earliest, a leg of a leg adding as
    many again (docs/pricing.md section 3)."""
    index = {sym: i for i, sym in enumerate(markets)}
    for i, sym in enumerate(markets):
        reps = [reports[i] for reports in seen]
        for r, rep in enumerate(reps):
            if rep.status in LIVE and r > 0 and reps[r - 1].status not in LIVE:
                assert went_live_legitimately(reps, r, resume), (sym, r, reps[: r + 1])
    for sym, leg in (*ROUTED_ONLY, ("EUR/USD", "USD/USDT")):
        i, j = index[sym], index[leg]
        for r, reports in enumerate(seen):
            counted = reports[i].status in LIVE or set(reports[i].reasons) <= {"resuming", "jump"}
            if counted:
                assert reports[j].status in LIVE, (sym, r, reports[i], reports[j])


@SETTINGS
@given(
    runs,
    st.permutations(range(6)),
    st.integers(1, 4),
    st.integers(1, 3),
    st.integers(1, 3),
    st.booleans(),
)
def test_routed_markets_follow_section_3_round_after_round_in_any_market_order(
    tape_runs: list[Run],
    order: list[int],
    btc_min_sources: int,
    resume: int,
    confirm: int,
    wide: bool,
) -> None:
    """Every round of a hostile tape keeps the rules of routes (`_check_round`), every market
    resumes only through its streak and its legs' (`_check_streaks`), and the same tape with
    the markets and routes listed in another order gives every market the same report bytes,
    mark included: the layers, not the listing, decide when a leg is computed."""
    tape = _tape(tape_runs)
    cfg = _world(range(6), btc_min_sources, resume, confirm, wide)
    seen: list[list[Report]] = []

    def check(core: Core, res: RoundResult) -> None:
        _check_round(core, res)
        seen.append(res.reports())

    results = play(cfg, tape, check)
    markets = tuple(m.symbol for m in cfg.markets)
    _check_streaks(seen, markets, resume)
    shuffled = play(_world(order, btc_min_sources, resume, confirm, wide), tape)
    enc = msgspec.json.Encoder()
    for a, b in zip(results, shuffled, strict=True):
        by_symbol = {r.market: enc.encode(r) for r in b.reports()}
        assert [enc.encode(r) for r in a.reports()] == [by_symbol[m] for m in markets]


def test_a_leg_lost_mid_tape_never_lets_its_old_price_through() -> None:
    """Every venue quotes rounds 0 to 4; then only the ETH/USDT venues, until round 10, from
    which all quote again (resume_rounds 2). USD/USDT's last quotes pass max_age_ms (500 ms) in
    round 7: from then the leg is paused (`quorum`, `stale`) and ETH/USD, whose venues are
    fresh, is `unknown` for `route`, each slot excluded as `route`, never priced through the
    leg's last price. The leg is live again in round 11, after its streak, and ETH/USD, which
    counts its own streak only from there, in round 12."""
    cfg = _world(range(6), 2, resume=2, confirm=2, wide=False)
    tape = []
    for r in range(14):
        quotes = _quotes(r, USD_VALUE)
        if 5 <= r < 10:
            quotes = [q for q in quotes if q.pair == "ETH/USDT"]
        tape.append(Round(quotes, {}))
    seen: list[dict[str, Report]] = []

    def check(core: Core, res: RoundResult) -> None:
        _check_round(core, res)
        seen.append({rep.market: rep for rep in res.reports()})

    play(cfg, tape, check)
    assert all(seen[r]["USD/USDT"].status in LIVE for r in range(1, 7))
    assert all(seen[r]["ETH/USD"].status in LIVE for r in range(2, 7))  # a streak after its leg
    for r in range(7, 11):
        leg = seen[r]["USD/USDT"]
        assert leg.status == "paused", (r, leg)
        assert leg.reasons == (["quorum", "stale"] if r < 10 else ["resuming"]), (r, leg)
        eth_rep = seen[r]["ETH/USD"]
        assert (eth_rep.status, eth_rep.reasons) == ("unknown", ["quorum", "route"]), (r, eth_rep)
        assert [s.reason for s in eth_rep.sources] == ["route"] * 3, (r, eth_rep)
    assert [seen[r]["USD/USDT"].status in LIVE for r in range(10, 14)] == [False, True, True, True]
    assert [seen[r]["ETH/USD"].status in LIVE for r in range(10, 14)] == [False, False, True, True]
    assert seen[11]["ETH/USD"].reasons == ["resuming"]


# Generated route graphs --------------------------------------------------------------------

CURRENCIES = ("BTC", "ETH", "EUR", "USD", "USDT", "JPY")
TRUE = {"BTC": 50_000.0, "ETH": 2_000.0, "EUR": 1.1, "USD": 1.0, "USDT": 0.998, "JPY": 0.0067}
PROBLEM = re.compile(r"^(markets\[\d+\]|routes)\S*: \S")
pairs = st.tuples(st.sampled_from(CURRENCIES), st.sampled_from(CURRENCIES)).filter(
    lambda p: p[0] != p[1]
)


@st.composite
def graphs(draw: st.DrawFn) -> tuple[list[dict[str, object]], list[dict[str, str]]]:
    """Markets over six currencies whose sources quote the market's pair, its inverse or the
    base in another currency, with perpetuals in another currency; each currency a source
    needs converted gets a route through a market that converts it, listed either way round
    and added (with sources of its own, possibly routed again) when missing. Then a few
    mistakes: a route dropped, pointed at another market or added between any currencies, a
    source quoting any pair at all."""
    symbols: list[tuple[str, str]] = draw(st.lists(pairs, min_size=1, max_size=3, unique=True))
    markets: dict[str, dict[str, object]] = {}
    routes: dict[tuple[str, str], str] = {}
    work = list(symbols)
    while work:
        base, quote_ccy = work.pop(0)
        symbol = f"{base}/{quote_ccy}"
        if symbol in markets:
            continue
        other = st.sampled_from([c for c in CURRENCIES if c not in (base, quote_ccy)])
        deep = len(markets) < 6  # bounded: a leg may need a leg, not forever
        kinds = ("own", "inverse", "routed") if deep else ("own", "inverse")
        sources = []
        for s in draw(st.lists(st.sampled_from("abc"), min_size=1, max_size=3, unique=True)):
            kind = draw(st.sampled_from(kinds))
            pair = {"own": symbol, "inverse": f"{quote_ccy}/{base}"}.get(kind)
            if pair is None:
                via_ccy = draw(other)
                pair = f"{base}/{via_ccy}"
                if (via_ccy, quote_ccy) not in routes:
                    leg = draw(st.sampled_from(((via_ccy, quote_ccy), (quote_ccy, via_ccy))))
                    routes[(via_ccy, quote_ccy)] = "/".join(leg)
                    work.append(leg)
            sources.append({"source": s, "pair": pair})
        table: dict[str, object] = {
            "symbol": symbol,
            "price_exponent": -10,
            "min_sources": 1,
            "sources": sources,
        }
        if deep and draw(st.booleans()):
            perp_ccy = draw(other)
            table["perp_sources"] = [{"source": "p", "pair": f"{base}/{perp_ccy}"}]
            if (perp_ccy, quote_ccy) not in routes:
                routes[(perp_ccy, quote_ccy)] = f"{perp_ccy}/{quote_ccy}"
                work.append((perp_ccy, quote_ccy))
        markets[symbol] = table
    listed = list(markets)
    route_list = [{"from": f, "to": t, "via": via} for (f, t), via in routes.items()]
    for _ in range(draw(st.integers(0, 2))):
        mistake = draw(st.sampled_from(("drop", "repoint", "add", "pair")))
        if mistake == "drop" and route_list:
            route_list.pop(draw(st.integers(0, len(route_list) - 1)))
        elif mistake == "repoint" and route_list:
            route = route_list[draw(st.integers(0, len(route_list) - 1))]
            route["via"] = draw(st.sampled_from(listed))
        elif mistake == "add":
            src, dst = draw(pairs)
            via = draw(st.sampled_from((f"{src}/{dst}", f"{dst}/{src}", *listed)))
            route_list.append({"from": src, "to": dst, "via": via})
        elif mistake == "pair":
            table = markets[draw(st.sampled_from(listed))]
            entries = table["sources"]
            assert isinstance(entries, list)
            entries[draw(st.integers(0, len(entries) - 1))]["pair"] = "/".join(draw(pairs))
    return list(markets.values()), route_list


@settings(max_examples=150, deadline=None, derandomize=True)
@given(graphs())
def test_a_route_graph_is_refused_with_its_key_named_or_prices_every_market_at_its_rate(
    graph: tuple[list[dict[str, object]], list[dict[str, str]]],
) -> None:
    """Whatever routes and pairs a config names (cycles, a leg of a leg, a route through a
    missing market or one of other currencies, a perpetual in a currency no route converts),
    either it is refused with each problem naming its key (`markets[i]...` or `routes...`), or
    every market, its legs computed first, is live in the first round with every venue quoting
    the true cross rate, at that rate, every used slot at that rate, and its mark at the index:
    a config that loads never misprices through its routes."""
    markets, routes = graph
    try:
        cfg = config(markets, routes, resume_rounds=1)
    except ConfigError as exc:
        assert exc.problems and all(PROBLEM.match(p) for p in exc.problems), exc.problems
        return
    core = Core(cfg)
    lay = core.layout
    layer_of = {int(i): n for n, layer in enumerate(lay.layers) for i in layer}
    for i in range(len(lay.markets)):
        for via in lay.route_via[i][lay.route_via[i] >= 0]:
            assert layer_of[int(via)] < layer_of[i], (lay.markets[i], lay.markets[int(via)])
    for m in cfg.markets:
        for ms in (*m.sources, *m.perp_sources):
            base, quote_ccy = ms.pair.split("/")
            rate = TRUE[base] / TRUE[quote_ccy]
            core.ingest(Quote(ms.source, ms.pair, T0, price=rate, kind=ms.kind))
    res = core.run_round(T0)
    for i, rep in enumerate(res.reports()):
        base, quote_ccy = rep.market.split("/")
        rate = TRUE[base] / TRUE[quote_ccy]
        assert rep.status in LIVE, rep
        assert math.isclose(float(res.price[i]), rate, rel_tol=1e-12), (rep, rate)
        for k, src in enumerate(rep.sources):
            assert src.used and math.isclose(float(res.value[i, k]), rate, rel_tol=1e-12), rep
        if res.mark is not None and i in res.mark.values:
            assert math.isclose(res.mark.values[i].price, rate, rel_tol=1e-12), rep
