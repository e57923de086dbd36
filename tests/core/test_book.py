"""Book.ingest: what is refused at the door (and counted), and where an accepted quote lands."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from core_helpers import T0, USDT_ROUTE, config, market, standard_config
from hypothesis import given, settings
from hypothesis import strategies as st

from oracled.aggregate.book import (
    FLAG_BASE,
    MAX_FLAGS,
    NAMED_OTHER_SOURCES,
    OTHER_SOURCES,
    Book,
    DropReason,
    Layout,
)
from oracled.config import Config
from oracled.core import Core
from oracled.model import Kind, Quote


def _book(cfg: Config | None = None) -> Book:
    cfg = cfg or standard_config(max_clock_skew_ms=2_000)
    return Book(Layout.from_config(cfg), cfg)


def _slot(book: Book, symbol: str, source: str) -> tuple[int, int]:
    lay = book.layout
    i = lay.markets.index(symbol)
    return i, lay.slot_ids[i].index(source)


BAD_QUOTES = [
    (Quote("zz", "BTC/USD", T0, price=1.0), DropReason.UNKNOWN_SYMBOL),
    (Quote("a", "DOGE/USD", T0, price=1.0), DropReason.UNKNOWN_SYMBOL),
    (Quote("a", "BTC/USD", T0, price=1.0, kind="perp"), DropReason.UNKNOWN_SYMBOL),
    (Quote("e", "ETH/USDT", T0, price=1.0), DropReason.UNKNOWN_SYMBOL),
    (Quote("a", "BTC/USD", T0), DropReason.NO_PRICE),
    (Quote("a", "BTC/USD", T0, bid=1.0), DropReason.NO_PRICE),
    (Quote("a", "BTC/USD", T0, ask=1.0), DropReason.NO_PRICE),
    (Quote("a", "BTC/USD", T0, price=math.nan), DropReason.NOT_FINITE),
    (Quote("a", "BTC/USD", T0, bid=math.nan, ask=2.0), DropReason.NOT_FINITE),
    (Quote("a", "BTC/USD", T0, price=math.inf), DropReason.NOT_FINITE),
    (Quote("a", "BTC/USD", T0, bid=1.0, ask=math.inf), DropReason.NOT_FINITE),
    (Quote("a", "BTC/USD", T0, price=0.0), DropReason.NON_POSITIVE),
    (Quote("a", "BTC/USD", T0, price=-5.0), DropReason.NON_POSITIVE),
    (Quote("a", "BTC/USD", T0, bid=-1.0, ask=2.0), DropReason.NON_POSITIVE),
    (Quote("a", "BTC/USD", T0, bid=0.0, ask=2.0), DropReason.NON_POSITIVE),
    (Quote("a", "BTC/USD", T0, price=2e12), DropReason.ABSURD),
    (Quote("a", "BTC/USD", T0, price=1e-13), DropReason.ABSURD),
    (Quote("a", "BTC/USD", T0, bid=101.0, ask=100.0), DropReason.CROSSED),
    (Quote("a", "BTC/USD", T0, price=1.0, venue_ts=T0 + 2_001), DropReason.FUTURE),
    # The usual quote (both sides, no flag) takes ingest's short cut: the same checks apply.
    (Quote("a", "BTC/USD", T0, bid=1.0, ask=1.0, venue_ts=T0 + 2_001), DropReason.FUTURE),
]


@pytest.mark.parametrize(("bad", "reason"), BAD_QUOTES)
def test_invalid_quotes_are_dropped_counted_and_leave_the_book_alone(
    bad: Quote, reason: DropReason
) -> None:
    """Each kind of bad quote returns its reason, is counted once per (source, reason) and writes
    nothing: every slot keeps its NaN price."""
    book = _book()
    assert book.ingest(bad) is reason
    assert book.drops == {(bad.source, reason): 1}
    assert book.ingest(bad) is reason
    assert book.drops[(bad.source, reason)] == 2
    assert np.isnan(book.mid).all()
    assert book.latest == {}


def test_venue_time_up_to_the_skew_bound_is_accepted() -> None:
    """A venue clock ahead of ours by exactly max_clock_skew_ms is tolerated, one more ms is not."""
    book = _book()
    assert book.ingest(Quote("a", "BTC/USD", T0, price=1.0, venue_ts=T0 + 2_000)) is None
    assert book.ingest(Quote("b", "BTC/USD", T0, price=1.0, venue_ts=T0 + 2_001)) is (
        DropReason.FUTURE
    )


def test_an_older_quote_is_out_of_order_and_keeps_the_newer_one() -> None:
    """A quote older than the stored one (by venue time where sent) is refused; equal time is
    accepted as a correction; the stored price is the newest."""
    book = _book()
    i, j = _slot(book, "BTC/USD", "a")
    assert book.ingest(Quote("a", "BTC/USD", T0, price=100.0, venue_ts=T0 - 10)) is None
    assert book.ingest(Quote("a", "BTC/USD", T0 + 5, price=99.0, venue_ts=T0 - 11)) is (
        DropReason.OUT_OF_ORDER
    )
    assert book.drops == {("a", DropReason.OUT_OF_ORDER): 1}
    assert book.mid[i, j] == 100.0
    assert book.ingest(Quote("a", "BTC/USD", T0 + 6, price=101.0, venue_ts=T0 - 10)) is None
    assert book.mid[i, j] == 101.0
    assert book.stamp[i, j] == T0 - 10
    assert book.latest[("a", "BTC/USD", "spot")].recv_ts == T0 + 6
    # Without a venue time, the receive time is the stamp, and it is compared the same way.
    assert book.ingest(Quote("a", "BTC/USD", T0 - 20, price=1.0)) is DropReason.OUT_OF_ORDER


def test_an_older_two_sided_quote_is_out_of_order_on_the_short_cut_too() -> None:
    """The usual quote (bid and ask, no flag) takes ingest's short cut; one older than the
    stored quote, by venue time or else by receive time, is refused there as well and the newer
    price stays."""
    book = _book()
    i, j = _slot(book, "BTC/USD", "b")
    assert book.ingest(Quote("b", "BTC/USD", T0, bid=99.0, ask=101.0, venue_ts=T0 - 10)) is None
    late = Quote("b", "BTC/USD", T0 + 5, bid=49.0, ask=51.0, venue_ts=T0 - 11)
    assert book.ingest(late) is DropReason.OUT_OF_ORDER
    assert book.ingest(Quote("b", "BTC/USD", T0 - 20, bid=49.0, ask=51.0)) is (
        DropReason.OUT_OF_ORDER
    )
    assert book.drops == {("b", DropReason.OUT_OF_ORDER): 2}
    assert book.mid[i, j] == 100.0 and book.stamp[i, j] == T0 - 10


def test_a_source_inventing_flags_cannot_grow_the_flag_table_without_bound() -> None:
    """Each new flag name takes a code; past MAX_FLAGS names every new one is recorded as
    "flagged", so a misbehaving source cannot grow the table (or overflow the small codes the
    book stores) however many names it makes up; every quote still lands, flagged."""
    book = _book()
    i, j = _slot(book, "BTC/USD", "a")
    for n in range(MAX_FLAGS + 30):
        flag = f"made-up-{n}"
        assert book.ingest(Quote("a", "BTC/USD", T0 + n, price=100.0, flag=flag)) is None
        name = book.flag_names[book.flag[i, j] - FLAG_BASE]
        assert name == (flag if n < MAX_FLAGS else "flagged")
    assert len(book.flag_names) == MAX_FLAGS + 1
    assert book.flag_names[-1] == "flagged"


def test_quotes_of_ever_new_unknown_sources_cannot_grow_the_drop_counts_without_bound() -> None:
    """Quotes each naming a source the config does not define (a tape of garbage, replayed):
    every one is dropped and counted as before, the first NAMED_OTHER_SOURCES such sources by
    name, every later one under OTHER_SOURCES; a configured source keeps its name whenever it
    comes. Before, each new name took a key of `drops` for the book's life."""
    book = _book()
    for n in range(2_000):
        assert book.ingest(Quote(f"v{n}", "BTC/USD", T0, price=1.0)) is DropReason.UNKNOWN_SYMBOL
    assert book.ingest(Quote("a", "DOGE/USD", T0, price=1.0)) is DropReason.UNKNOWN_SYMBOL
    unknown = DropReason.UNKNOWN_SYMBOL
    assert book.drops == {
        **{(f"v{n}", unknown): 1 for n in range(NAMED_OTHER_SOURCES)},
        (OTHER_SOURCES, unknown): 2_000 - NAMED_OTHER_SOURCES,
        ("a", unknown): 1,
    }


def test_bid_and_ask_give_the_mid_and_take_precedence_over_price() -> None:
    """With both sides present the stored value is their mid, whatever `price` says."""
    book = _book()
    i, j = _slot(book, "BTC/USD", "b")
    assert book.ingest(Quote("b", "BTC/USD", T0, price=1.0, bid=99.0, ask=101.0)) is None
    assert book.mid[i, j] == 100.0


def test_an_inverted_pair_feeds_the_reciprocal() -> None:
    """USD/JPY at 150 feeds the JPY/USD market with 1/150."""
    book = _book()
    i, j = _slot(book, "JPY/USD", "a")
    assert book.ingest(Quote("a", "USD/JPY", T0, price=150.0)) is None
    assert book.mid[i, j] == 1.0 / 150.0
    assert book.latest[("a", "USD/JPY", "spot")].price == 150.0


def test_one_quote_feeds_every_market_that_lists_it() -> None:
    """A BTC/USDT quote lands in the BTC/USDT market as is and in BTC/USD (before conversion),
    and a USDT/BTC market gets its reciprocal; all slots share the stamp."""
    cfg = config(
        [
            market("USDT/USD", "abc"),
            market("BTC/USDT", "abc"),
            market("BTC/USD", "abc", "BTC/USDT"),
            market("USDT/BTC", "abc", "BTC/USDT", price_exponent=-10),
        ],
        [USDT_ROUTE],
    )
    book = _book(cfg)
    assert book.ingest(Quote("b", "BTC/USDT", T0, price=50_000.0, venue_ts=T0 - 3)) is None
    got = {sym: book.mid[_slot(book, sym, "b")] for sym in ("BTC/USDT", "BTC/USD", "USDT/BTC")}
    assert got == {"BTC/USDT": 50_000.0, "BTC/USD": 50_000.0, "USDT/BTC": 1 / 50_000.0}
    stamps = {int(book.stamp[_slot(book, sym, "b")]) for sym in got}
    assert stamps == {T0 - 3}
    # Nothing else was written.
    assert int(np.isfinite(book.mid).sum()) == 3


def test_perpetual_quotes_are_kept_for_the_mark_price_and_never_vote() -> None:
    """A perp_sources quote is kept in book.perps after the sanity checks; the index ignores it."""
    cfg = config(
        [
            market(
                "BTC/USD",
                ["a", "b"],
                min_sources=2,
                perp_sources=[{"source": "a", "pair": "BTC/USD"}],
            )
        ],
        resume_rounds=1,
    )
    core = Core(cfg)
    assert core.ingest(Quote("a", "BTC/USD", T0, bid=100.0, ask=100.2, kind="perp")) is None
    assert core.ingest(Quote("a", "BTC/USD", T0, bid=float("nan"), ask=1.0, kind="perp")) == (
        DropReason.NOT_FINITE
    )
    assert core.ingest(Quote("a", "BTC/USD", T0, bid=5.0, ask=4.0, kind="perp")) == (
        DropReason.CROSSED
    )
    assert core.book.perps[("a", "BTC/USD", "perp")].bid == 100.0
    core.ingest(Quote("a", "BTC/USD", T0, price=50.0))
    core.ingest(Quote("b", "BTC/USD", T0, price=50.0))
    report = core.run_round(T0).report(0)
    assert report.price == "50.00"
    assert [s.id for s in report.sources] == ["a", "b"]


def test_an_older_perpetual_quote_is_dropped_as_out_of_order_and_counted() -> None:
    """A perpetual quote older than the one held (a venue resending an old frame, a REST answer
    behind the stream) is dropped and counted as out_of_order, like a spot quote, whichever path
    of ingest takes it: the mark never goes back to an older price."""
    cfg = config(
        [
            market(
                "BTC/USD",
                ["a", "b"],
                min_sources=2,
                perp_sources=[{"source": "a", "pair": "BTC/USD"}],
            )
        ],
    )
    core = Core(cfg)
    key = ("a", "BTC/USD", "perp")
    newer = Quote("a", "BTC/USD", T0, bid=90.0, ask=90.2, kind="perp", venue_ts=T0 - 10)
    assert core.ingest(newer) is None
    older = (
        Quote("a", "BTC/USD", T0 + 5, bid=100.0, ask=100.2, kind="perp", venue_ts=T0 - 500),
        Quote("a", "BTC/USD", T0 + 6, price=100.1, kind="perp", venue_ts=T0 - 400),
    )
    for quote in older:
        assert core.ingest(quote) == DropReason.OUT_OF_ORDER
    assert core.book.drops[("a", DropReason.OUT_OF_ORDER)] == 2
    assert core.book.perps[key] is newer
    same_time = Quote("a", "BTC/USD", T0 + 7, price=90.3, kind="perp", venue_ts=T0 - 10)
    assert core.ingest(same_time) is None
    assert core.book.perps[key] is same_time


_PRICES = st.one_of(
    st.none(),
    st.sampled_from([0.0, -1.0, math.nan, math.inf, -math.inf, 1e-12, 1e13, 1e20]),
    st.floats(min_value=0.5, max_value=200.0),
    st.floats(min_value=0.5, max_value=200.0),
)
_QUOTE_FIELDS = st.fixed_dictionaries(
    {
        "source": st.sampled_from(["a", "a", "b", "e", "zz"]),
        "pair": st.sampled_from(["BTC/USD", "BTC/USD", "ETH/USDT", "USD/JPY", "DOGE/USD"]),
        "price": _PRICES,
        "bid": _PRICES,
        "ask": _PRICES,
        "kind": st.sampled_from(["spot", "spot", "spot", "perp"]),
        "venue_lag": st.one_of(st.none(), st.integers(-3_000, 100)),
        "float_time": st.booleans(),
        "flag": st.sampled_from([None, None, "liquidity"]),
    }
)


# The standard markets, BTC/USD also priced for its mark from the perpetuals of sources a and e
# (the strategy draws kind "perp" for every source and pair, so unknown perpetuals come up too).
_WITH_PERPS = config(
    [
        market("USDT/USD", "abcd", price_exponent=-6),
        market(
            "BTC/USD",
            "abcde",
            perp_sources=[{"source": "a", "pair": "BTC/USD"}, {"source": "e", "pair": "BTC/USD"}],
        ),
        market("ETH/USD", "abcd", "ETH/USDT"),
        market("JPY/USD", "abcd", "USD/JPY", price_exponent=-8),
    ],
    [USDT_ROUTE],
    max_clock_skew_ms=2_000,
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_QUOTE_FIELDS, max_size=40))
def test_the_fast_path_agrees_with_the_fully_checked_path(fields: list[dict[str, Any]]) -> None:
    """Book.ingest takes a short cut for the usual quote; any sequence of quotes, good and bad
    (bounds, NaN, crossed, flags, float times, unknown keys, perps, times in and out of order),
    gives the same drop reasons, drop counts and book contents as the path that checks everything
    in order."""
    fast, full = _book(_WITH_PERPS), _book(_WITH_PERPS)
    for n, f in enumerate(fields):
        recv_ts = T0 + 10 * n
        lag = f["venue_lag"]
        q = Quote(
            f["source"],
            f["pair"],
            float(recv_ts) if f["float_time"] else recv_ts,
            f["price"],
            f["bid"],
            f["ask"],
            f["kind"],
            None if lag is None else recv_ts - lag,
            flag=f["flag"],
        )
        key = (q.source, q.pair, q.kind)
        expected = full._ingest_checked(key, full._feeds.get(key), q)
        assert fast.ingest(q) == expected, q
    assert fast.drops == full.drops
    np.testing.assert_array_equal(fast.mid, full.mid)
    np.testing.assert_array_equal(fast.stamp, full.stamp)
    np.testing.assert_array_equal(fast.flag, full.flag)
    assert fast.latest == full.latest
    assert fast.perps == full.perps


def test_a_flag_lasts_until_the_next_unflagged_quote() -> None:
    """A flagged quote marks its slot; the next plain quote of the same feed clears the mark
    (whichever path of ingest takes it)."""
    book = _book()
    i, j = _slot(book, "BTC/USD", "a")
    assert book.ingest(Quote("a", "BTC/USD", T0, bid=99.0, ask=101.0, flag="liquidity")) is None
    assert book.flag[i, j] != 0
    assert book.flag_names[book.flag[i, j] - FLAG_BASE] == "liquidity"
    assert book.ingest(Quote("a", "BTC/USD", T0 + 1, bid=99.0, ask=101.0)) is None
    assert book.flag[i, j] == 0
    assert book.ingest(Quote("a", "BTC/USD", T0 + 2, price=100.0, flag="liquidity")) is None
    assert book.ingest(Quote("a", "BTC/USD", T0 + 3, price=100.0)) is None
    assert book.flag[i, j] == 0


def _perp_book(votes: bool) -> Book:
    """BTC/USD with perpetual p for its mark; with `votes`, p is one of its voting sources too."""
    btc = market("BTC/USD", "abc", perp_sources=[{"source": "p", "pair": "BTC/USD"}])
    if votes:
        btc["sources"].append({"source": "p", "pair": "BTC/USD", "kind": "perp"})
    return _book(config([btc], max_clock_skew_ms=2_000))


_GOOD_PERP = Quote("p", "BTC/USD", T0, price=100.5, bid=100.0, ask=101.0, kind="perp")
# A last price that no one reads (both sides are there) and that no venue could mean.
_BAD_LAST_PRICE = [
    (math.nan, DropReason.NOT_FINITE),
    (math.inf, DropReason.NOT_FINITE),
    (-math.inf, DropReason.NOT_FINITE),
    (0.0, DropReason.NON_POSITIVE),
    (-0.0, DropReason.NON_POSITIVE),
    (-100.5, DropReason.NON_POSITIVE),
]


@pytest.mark.parametrize("votes", [False, True], ids=["mark_only", "also_votes"])
@pytest.mark.parametrize(("price", "reason"), _BAD_LAST_PRICE)
def test_a_perpetual_with_a_broken_last_price_is_dropped_whether_it_votes_or_not(
    votes: bool, price: float, reason: DropReason
) -> None:
    """A perpetual quote with a good book and a NaN, infinite, zero or negative last price is
    dropped and counted with that reason, and the quote held before stays, whether the
    perpetual only feeds the mark or also votes in the index (docs/pricing.md section 1).
    Before, the voting configuration kept it (bid and ask present, the price never looked at)
    while the other dropped it."""
    book = _perp_book(votes)
    assert book.ingest(_GOOD_PERP) is None
    bad = Quote("p", "BTC/USD", T0 + 1, price=price, bid=100.2, ask=100.8, kind="perp")
    assert book.ingest(bad) == reason
    assert book.drops == {("p", reason): 1}
    assert book.perps[("p", "BTC/USD", "perp")] is _GOOD_PERP
    if votes:
        assert book.latest[("p", "BTC/USD", "perp")] is _GOOD_PERP
        assert book.mid[_slot(book, "BTC/USD", "p")] == 100.5


_PERP_VALUES = st.one_of(
    st.none(),
    st.sampled_from([0.0, -0.0, -1.0, math.nan, math.inf, -math.inf, 5e-324, 1e-12, 1e13]),
    st.floats(min_value=90.0, max_value=110.0),
    st.floats(min_value=90.0, max_value=110.0),
)


@pytest.mark.parametrize("votes", [False, True], ids=["mark_only", "also_votes"])
@pytest.mark.parametrize(
    ("bid", "ask"),
    [(100.2, None), (None, 100.8), (math.nan, None), (None, -1.0), (None, math.inf)],
)
def test_a_perpetual_lone_bid_or_ask_is_no_price_whether_it_votes_or_not(
    votes: bool, bid: float | None, ask: float | None
) -> None:
    """A perpetual quote with one side of its book empty and no last price is no price: dropped
    and counted as `no_price`, whatever its one value, and the two-sided quote held before stays
    for the mark (and the vote), whether the perpetual only feeds the mark or also votes
    (docs/pricing.md section 1). Before, the mark-only configuration kept the lone side, which
    displaced the held quote and left the mark without that venue (`one_sided`), or named a
    broken lone value `not_finite` or `non_positive`, while the voting one dropped it."""
    book = _perp_book(votes)
    assert book.ingest(_GOOD_PERP) is None
    lone = Quote("p", "BTC/USD", T0 + 1, bid=bid, ask=ask, kind="perp")
    assert book.ingest(lone) == DropReason.NO_PRICE
    assert book.drops == {("p", DropReason.NO_PRICE): 1}
    assert book.perps[("p", "BTC/USD", "perp")] is _GOOD_PERP
    if votes:
        assert book.latest[("p", "BTC/USD", "perp")] is _GOOD_PERP


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(_PERP_VALUES, _PERP_VALUES, _PERP_VALUES, st.integers(-3_000, 100)),
        max_size=30,
    )
)
def test_a_perpetual_quote_is_judged_alike_whether_it_votes_or_not(
    quotes: list[tuple[float | None, float | None, float | None, int]],
) -> None:
    """Any sequence of perpetual quotes, good and bad (NaN, infinities, zero, negatives, out of
    the band, crossed, from the future, out of order), gets the same decision and drop counts,
    and leaves the same quote held for the mark, whether the perpetual also votes or not."""
    alone, voting = _perp_book(False), _perp_book(True)
    for n, (price, bid, ask, lag) in enumerate(quotes):
        recv_ts = T0 + 10 * n
        q = Quote("p", "BTC/USD", recv_ts, price, bid, ask, "perp", recv_ts - lag)
        assert voting.ingest(q) == alone.ingest(q), q
    assert voting.drops == alone.drops
    assert voting.perps == alone.perps


_EDGE = st.sampled_from((5e-324, 1e-308, 1e-300, 1e300, 1e308, 1.7e308, math.inf, math.nan, -1.0))
_ANY_VALUE = st.one_of(st.none(), _EDGE, st.floats())
_WIDE_FEEDS: tuple[tuple[str, Kind], ...] = (
    ("BTC/USD", "spot"),
    ("USD/JPY", "spot"),
    ("BTC/USD", "perp"),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from("abcd"),
            st.sampled_from(_WIDE_FEEDS),
            _ANY_VALUE,
            _ANY_VALUE,
            _ANY_VALUE,
        )
    )
)
def test_under_a_band_reaching_the_float_limits_every_value_held_is_finite(
    quotes: list[tuple[str, tuple[str, Kind], float | None, float | None, float | None]],
) -> None:
    """oracle.min_price 5e-324 and max_price 1.7e308: a book of 1e308 / 1.7e308, each side in
    the band, has an infinite mid, and 5e-324 an infinite reciprocal on an inverted pair. Each
    such quote is dropped as absurd, counted; every quote held has a finite value: its mid
    (spot and perpetual, whose mid the mark reads) and its reciprocal. Before, both straight
    lines held the infinite mid, uncounted, over the venue's last good quote."""
    cfg = config(
        [
            market(
                "BTC/USD",
                "abcd",
                min_sources=1,
                perp_sources=[{"source": s, "pair": "BTC/USD"} for s in "abcd"],
            ),
            market("JPY/USD", "abcd", "USD/JPY", min_sources=1, price_exponent=-18),
        ],
        min_price=5e-324,
        max_price=1.7e308,
    )
    book = _book(cfg)
    for t, (source, (pair, kind), price, bid, ask) in enumerate(quotes):
        quote = Quote(source, pair, T0 + t, price=price, bid=bid, ask=ask, kind=kind)
        if book.ingest(quote) is not None:
            continue
        if kind == "perp":
            held = book.perps[(source, pair, kind)]
            if held.bid is not None and held.ask is not None:
                mid = (held.bid + held.ask) * 0.5
            else:
                assert held.price is not None
                mid = held.price
            assert math.isfinite(mid), quote
        else:
            i, j = _slot(book, "JPY/USD" if pair == "USD/JPY" else "BTC/USD", source)
            assert math.isfinite(book.mid[i, j]), quote
