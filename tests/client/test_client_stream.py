"""Subscriptions: the subscribe requests of one consumer of `WS /v1/stream`, without a socket.

Each test plays the daemon's answers (one per request, in order) and checks what the component
says to send and what it says changed.
"""

from __future__ import annotations

import pytest

from oracled.client_stream import MAX_REQUEST, Refusal, Subscriptions


def test_none_asks_for_every_market_and_an_empty_list_for_none() -> None:
    """None is one request without names (every market); an empty list sends no request."""
    assert Subscriptions(None).start() == [None]
    assert Subscriptions([]).start() == []


def test_names_are_sent_canonical_once_each_in_their_order() -> None:
    """`sol-usd` is asked for as SOL/USD, as the daemon's answers name it; a repeat is dropped
    and a name that cannot be a market is sent as given (for the daemon to refuse)."""
    subs = Subscriptions(["sol-usd", "BTC/USD", "SOL/USD", "nope"])
    assert subs.start() == [("SOL/USD", "BTC/USD", "nope")]


def test_requests_hold_at_most_the_daemons_limit_of_markets() -> None:
    """600 markets go out as requests of 256, 256 and 88, in order."""
    markets = [f"M{i}/USD" for i in range(600)]
    requests = Subscriptions(markets).start()
    assert [len(r or ()) for r in requests] == [MAX_REQUEST, MAX_REQUEST, 88]
    assert [m for r in requests for m in r or ()] == markets


def test_a_request_of_several_refused_for_a_market_is_asked_again_market_by_market() -> None:
    """`unknown_market` answering a request of three: each market is asked for alone, none is
    unavailable yet; then the answers to those three requests are read in order, so only the
    market refused alone becomes unavailable, with the daemon's code."""
    subs = Subscriptions(["BTC/USD", "NOPE/USD", "ETH/USD"])
    subs.start()
    split = subs.refused("unknown_market")
    assert split == Refusal(
        "unknown_market",
        "split",
        ("BTC/USD", "NOPE/USD", "ETH/USD"),
        (("BTC/USD",), ("NOPE/USD",), ("ETH/USD",)),
    )
    assert subs.unavailable == {}
    assert subs.acked(["BTC/USD"]) == []
    alone = subs.refused("unknown_market")
    assert alone == Refusal("unknown_market", "unavailable", ("NOPE/USD",))
    assert subs.acked(["BTC/USD", "ETH/USD"]) == []
    assert subs.unavailable == {"NOPE/USD": "unknown_market"}


def test_a_name_that_is_no_market_splits_a_request_too() -> None:
    """`bad_query` (a name the daemon cannot read) concerns one market as well: split, then the
    market refused alone is unavailable with `bad_query`."""
    subs = Subscriptions(["BTC/USD", "nope"])
    subs.start()
    assert subs.refused("bad_query").kind == "split"
    subs.acked(["BTC/USD"])
    assert subs.refused("bad_query").markets == ("nope",)
    assert subs.unavailable == {"nope": "bad_query"}


@pytest.mark.parametrize("markets", [["BTC/USD", "ETH/USD"], ["BTC/USD"], None])
def test_a_refusal_of_the_whole_request_is_an_error_not_a_split(
    markets: list[str] | None,
) -> None:
    """`signing_disabled` would refuse each market alone just the same: it is an error to log,
    nothing is asked again and no market is called unavailable."""
    subs = Subscriptions(markets)
    subs.start()
    assert subs.refused("signing_disabled") == Refusal("signing_disabled", "error")
    assert subs.unavailable == {}
    assert subs.retry() == []


def test_an_error_answering_no_request_is_an_error() -> None:
    """An error frame with no request waiting (a confused daemon) is an error, and changes
    nothing."""
    subs = Subscriptions(["BTC/USD"])
    assert subs.refused("unknown_market") == Refusal("unknown_market", "error")
    assert subs.unavailable == {}


def test_market_removed_answers_no_request() -> None:
    """`market_removed` names its markets and answers no request: they are unavailable with
    that code, and the next answer still pairs with the oldest request."""
    subs = Subscriptions(["BTC/USD", "SOL/USD", "NOPE/USD"])
    subs.start()  # one request of three, not answered yet
    removed = subs.refused("market_removed", ["SOL/USD"])
    assert removed == Refusal("market_removed", "unavailable", ("SOL/USD",))
    assert subs.refused("unknown_market").kind == "split"  # it answers the request of three
    assert subs.unavailable == {"SOL/USD": "market_removed"}


def test_stalled_answers_no_request() -> None:
    """`stalled` (sent after an ack, in place of the snapshot, while the daemon's rounds have
    stalled) is an error to log that concerns no market, and the next answer still pairs with
    the oldest request: a request of several refused later is still split."""
    subs = Subscriptions(["BTC/USD", "NOPE/USD"])
    subs.start()  # one request of two, not answered yet
    assert subs.refused("stalled") == Refusal("stalled", "error")
    assert subs.refused("unknown_market").kind == "split"  # it answers the request of two
    assert subs.unavailable == {}


def test_market_removed_naming_no_market_is_an_error() -> None:
    """A `market_removed` frame without markets is logged as an error, not silently dropped."""
    subs = Subscriptions(["BTC/USD"])
    assert subs.refused("market_removed", []).kind == "error"


def test_market_removed_counts_only_markets_the_connection_gets() -> None:
    """A `market_removed` frame names markets the connection was receiving. One naming others
    (a peer on the way: 2,000 made-up names) had each kept as unavailable, asked for again at
    every retry and logged by name, frame after frame without bound. Only the markets asked for
    by name count now, or, with every market asked for, those reported or in the last ack's
    set; a frame naming none of them is an error to count, as one naming no market."""
    made_up = [f"X{n}/USD" for n in range(2_000)]
    named = Subscriptions(["BTC/USD", "SOL/USD"])
    assert named.refused("market_removed", made_up).kind == "error"
    removed = named.refused("market_removed", [*made_up, "SOL/USD"])
    assert removed == Refusal("market_removed", "unavailable", ("SOL/USD",))
    assert named.unavailable == {"SOL/USD": "market_removed"}
    assert named.retry() == [("SOL/USD",)]
    every = Subscriptions(None)
    every.start()
    every.acked(["BTC/USD"])
    every.reported("ETH/USD")
    removed = every.refused("market_removed", [*made_up, "BTC/USD", "ETH/USD"])
    assert removed.markets == ("BTC/USD", "ETH/USD")
    assert every.unavailable == {"BTC/USD": "market_removed", "ETH/USD": "market_removed"}


def test_unavailable_markets_are_retried_one_by_one_and_a_refused_retry_says_nothing() -> None:
    """`retry` asks for each unavailable market alone; refused again, it is `repeated` (not to
    be logged or counted again) and keeps its first code; a market whose retry is unanswered is
    not asked twice, and is once answered."""
    subs = Subscriptions(["BTC/USD", "SOL/USD", "ETH/USD"])
    subs.start()
    subs.acked(["BTC/USD", "SOL/USD", "ETH/USD"])
    subs.refused("market_removed", ["SOL/USD", "ETH/USD"])
    assert subs.retry() == [("SOL/USD",), ("ETH/USD",)]
    assert subs.retry() == []  # both still unanswered
    assert subs.refused("unknown_market") == Refusal("unknown_market", "repeated")
    assert subs.retry() == [("SOL/USD",)]  # ETH/USD's retry is still out
    assert subs.refused("unknown_market").kind == "repeated"  # ETH/USD's
    assert subs.refused("unknown_market").kind == "repeated"  # SOL/USD's second
    assert subs.unavailable == {"SOL/USD": "market_removed", "ETH/USD": "market_removed"}


def test_a_retry_refused_for_another_reason_says_nothing_either() -> None:
    """A retry refused with a code about the request (`bad_request`) while its market is still
    unavailable is `repeated` too: a retry every `retry_s` must not log a line each time."""
    subs = Subscriptions(["SOL/USD"])
    subs.start()
    subs.refused("unknown_market")
    subs.retry()
    assert subs.refused("bad_request").kind == "repeated"
    assert subs.unavailable == {"SOL/USD": "unknown_market"}


def test_an_ack_listing_a_market_makes_it_available_again() -> None:
    """An ack lists the connection's whole set: an unavailable market in it is served again
    (returned once), one not in it stays unavailable and is still retried."""
    subs = Subscriptions(["BTC/USD", "SOL/USD", "ETH/USD"])
    subs.start()
    subs.acked(["BTC/USD", "SOL/USD", "ETH/USD"])
    subs.refused("market_removed", ["SOL/USD", "ETH/USD"])
    subs.retry()
    assert subs.acked(["BTC/USD", "SOL/USD"]) == ["SOL/USD"]  # SOL/USD's retry
    assert subs.refused("unknown_market").kind == "repeated"  # ETH/USD's retry
    assert subs.unavailable == {"ETH/USD": "market_removed"}
    assert subs.retry() == [("ETH/USD",)]


def test_a_report_of_a_market_makes_it_available_again() -> None:
    """A report of an unavailable market says the daemon has it: True the first time only."""
    subs = Subscriptions(["SOL/USD"])
    subs.refused("market_removed", ["SOL/USD"])
    assert subs.reported("SOL/USD") is True
    assert subs.reported("SOL/USD") is False
    assert subs.unavailable == {}


def test_a_new_connection_forgets_unanswered_requests_but_not_unavailable_markets() -> None:
    """`start` drops the requests the old connection never answered (their answers will not
    come) and leaves unavailable markets out of its first request (they would refuse it and
    have it split again on every reconnect); it asks for each alone right after, and refused
    again they are `repeated`, not a new unavailability to log."""
    subs = Subscriptions(["BTC/USD", "NOPE/USD"])
    subs.start()
    subs.refused("unknown_market")
    subs.acked(["BTC/USD"])
    subs.refused("unknown_market")
    subs.retry()  # lost with the connection: it does not hold the next connection's back
    assert subs.start() == [("BTC/USD",), ("NOPE/USD",)]
    assert subs.retry() == []  # asked already, not answered yet
    assert subs.acked(["BTC/USD"]) == []  # answers the first request: nothing split
    assert subs.refused("unknown_market") == Refusal("unknown_market", "repeated")
    assert subs.unavailable == {"NOPE/USD": "unknown_market"}


def test_a_market_added_back_while_away_is_served_on_the_new_connection_at_once() -> None:
    """A daemon restarted with a market it used to refuse: the new connection's requests ask for
    it alone at once, and the ack makes it available, without waiting for `retry_s`."""
    subs = Subscriptions(["BTC/USD", "SOL/USD"])
    subs.start()
    subs.refused("unknown_market")
    subs.acked(["BTC/USD"])
    subs.refused("unknown_market")
    assert subs.unavailable == {"SOL/USD": "unknown_market"}
    assert subs.start() == [("BTC/USD",), ("SOL/USD",)]
    assert subs.acked(["BTC/USD"]) == []
    assert subs.acked(["BTC/USD", "SOL/USD"]) == ["SOL/USD"]
    assert subs.unavailable == {}


def test_a_new_connection_with_every_named_market_unavailable_asks_for_each_alone() -> None:
    """With every named market refused before, a new connection sends no request of them
    together (an empty list would mean every market), only each alone."""
    subs = Subscriptions(["NOPE/USD", "GONE/USD"])
    subs.start()
    subs.refused("unknown_market")
    subs.refused("unknown_market")
    subs.refused("unknown_market")
    assert subs.unavailable == {"NOPE/USD": "unknown_market", "GONE/USD": "unknown_market"}
    assert subs.start() == [("NOPE/USD",), ("GONE/USD",)]


def test_every_market_subscribed_comes_back_by_the_ack_of_a_retry() -> None:
    """Subscribed to every market, a removed market is unavailable; its retry's ack (the
    connection's whole set, every market) lists it once a reload adds it back."""
    subs = Subscriptions(None)
    subs.start()
    subs.acked(["BTC/USD", "SOL/USD"])
    subs.refused("market_removed", ["SOL/USD"])
    assert subs.retry() == [("SOL/USD",)]
    assert subs.acked(["BTC/USD", "SOL/USD"]) == ["SOL/USD"]


def test_the_unavailable_view_cannot_be_changed_by_a_caller() -> None:
    """`unavailable` is a read-only view: only the daemon's answers change it."""
    subs = Subscriptions(["SOL/USD"])
    with pytest.raises(TypeError):
        subs.unavailable["SOL/USD"] = "x"  # type: ignore[index]
