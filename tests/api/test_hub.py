"""The Hub: lazy, once-per-round reports; shared encoded bytes; bounded, droppable subscribers."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Sequence

import msgspec
import pytest
from api_rig import Rig, frames, make_config

from oracled.core import RoundResult
from oracled.model import Report
from oracled.publish import DROP_SHUTDOWN, DROP_SLOW, Hub, SubscriptionClosed
from oracled.publish.encode import ReportEncoder


class CountingResult(RoundResult):
    """A RoundResult that records which reports were materialized (round, market index)."""

    calls: list[tuple[int, int]] = []  # noqa: RUF012 - shared on purpose, reset per test

    def report(self, i: int) -> Report:
        CountingResult.calls.append((self.round, i))
        return super().report(i)


class CountingEncoder(ReportEncoder):
    """An encoder that records which reports it encoded (round, market index)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, int]] = []

    def encode(self, result: RoundResult, indices: Sequence[int]) -> list[bytes]:
        self.calls.extend((result.round, i) for i in indices)
        return super().encode(result, indices)


def counting(result: RoundResult) -> CountingResult:
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    return CountingResult(**fields)


@pytest.fixture
def rig() -> Rig:
    CountingResult.calls = []
    return Rig(make_config())


def run(rig: Rig, hub: Hub) -> CountingResult:
    """One round of the rig published into `hub` through the counting result."""
    result = counting(rig.step())
    hub.publish(result)
    return result


def markets_of(batch: list[bytes]) -> list[str]:
    return [msgspec.json.decode(f)["data"]["market"] for f in batch]


def test_reports_materialize_lazily_once_per_round() -> None:
    """Publishing builds no report; a request builds one, once per round, and encodes it once."""
    rig = Rig(make_config())
    CountingResult.calls = []
    hub = Hub()
    assert hub.report("BTC/USD") is None and hub.latest_result is None
    first = run(rig, hub)
    assert CountingResult.calls == []
    report = hub.report("BTC/USD")
    assert report is not None and report is hub.report("BTC/USD")
    data = hub.encoded("BTC/USD")
    assert data is hub.encoded("BTC/USD")
    assert msgspec.json.decode(data, type=Report) == report
    assert CountingResult.calls == [(first.round, 0)]
    run(rig, hub)
    assert hub.encoded("BTC/USD") is not data
    assert CountingResult.calls == [(1, 0), (2, 0)]
    assert hub.report("DOGE/USD") is None
    with pytest.raises(LookupError):
        hub.encoded("DOGE/USD")


async def test_fan_out_runs_after_publish_and_only_for_subscribed_markets(rig: Rig) -> None:
    """publish() returns before delivering; the fan-out then encodes only the markets asked for."""
    encoder = CountingEncoder()
    hub = Hub(encoder=encoder)
    sub = hub.subscribe(frozenset({"ETH/USD"}))
    run(rig, hub)
    assert sub.pending == 0  # nothing delivered inside publish()
    await asyncio.sleep(0)
    (frame,) = frames(sub)
    assert frame == b'{"type":"report","data":' + hub.encoded("ETH/USD") + b"}"
    assert encoder.calls == [(1, 1)]
    assert CountingResult.calls == []  # straight from the arrays: no Report object


class FailingOnceEncoder(ReportEncoder):
    """An encoder whose first call raises, as a bug in encoding one odd round would."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def encode(self, result: RoundResult, indices: Sequence[int]) -> list[bytes]:
        if not self.failed:
            self.failed = True
            raise RuntimeError("one bad round")
        return super().encode(result, indices)


async def test_a_fan_out_that_raised_does_not_stop_the_next_rounds(rig: Rig) -> None:
    """A fan-out whose encoding raised (reported by the event loop) left the hub believing a
    fan-out was still pending, so no later round was ever fanned out: every subscriber froze
    on its last frame, with nothing said. The next round goes out."""
    hub = Hub(encoder=FailingOnceEncoder())
    sub = hub.subscribe(frozenset({"ETH/USD"}))
    caught: list[object] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, ctx: caught.append(ctx))
    run(rig, hub)
    await asyncio.sleep(0)
    assert frames(sub) == [] and len(caught) == 1
    second = run(rig, hub)
    await asyncio.sleep(0)
    (frame,) = frames(sub)
    assert msgspec.json.decode(frame)["data"]["ts"] == second.ts


async def test_subscribers_of_a_market_share_one_bytes_object(rig: Rig) -> None:
    """Every subscriber receives the very same encoded frame: encoded once, not per client."""
    encoder = CountingEncoder()
    hub = Hub(encoder=encoder)
    subs = [hub.subscribe(frozenset({"BTC/USD"})) for _ in range(3)]
    everything = hub.subscribe(None)
    run(rig, hub)
    await asyncio.sleep(0)
    got = [frames(s) for s in subs]
    all_frames = frames(everything)
    assert markets_of(all_frames) == ["BTC/USD", "ETH/USD", "SOL/USD"]
    assert all(batch[0] is all_frames[0] for batch in got)
    assert encoder.calls == [(1, 0), (1, 1), (1, 2)]


async def test_new_subscription_starts_with_latest_reports(rig: Rig) -> None:
    """Subscribing (or adding markets) delivers the latest report of each added market at once."""
    hub = Hub()
    run(rig, hub)
    sub = hub.subscribe(frozenset({"ETH/USD"}))
    assert markets_of(frames(sub)) == ["ETH/USD"]
    hub.change(sub, frozenset({"ETH/USD", "SOL/USD", "BTC/USD"}))
    assert markets_of(frames(sub)) == ["BTC/USD", "SOL/USD"]  # only the added ones
    hub.change(sub, frozenset({"SOL/USD"}))
    assert frames(sub) == []
    run(rig, hub)
    await asyncio.sleep(0)
    assert markets_of(frames(sub)) == ["SOL/USD"]


async def test_slow_subscriber_is_dropped_others_keep_receiving(rig: Rig) -> None:
    """A subscriber that does not read is dropped when full; memory stays bounded; others go on."""
    hub = Hub(queue_size=4)
    slow = hub.subscribe(None)  # three markets a round: the second round does not fit
    fast = hub.subscribe(frozenset({"BTC/USD"}))
    received: list[int] = []
    for _ in range(10):
        run(rig, hub)
        await asyncio.sleep(0)
        assert slow.pending <= 4 and hub.pending_frames <= 4 + 4
        received += [msgspec.json.decode(f)["data"]["round"] for f in frames(fast)]
    assert received == list(range(1, 11))
    assert slow.closed_reason == DROP_SLOW
    assert slow.pending == 0  # its backlog is freed at once
    assert hub.dropped_subscribers == Counter({DROP_SLOW: 1, DROP_SHUTDOWN: 0})
    assert hub.subscribers == 1
    with pytest.raises(SubscriptionClosed) as caught:
        await slow.get()
    assert caught.value.reason == DROP_SLOW


async def test_queue_smaller_than_a_round_still_fits_one_round(rig: Rig) -> None:
    """The bound is at least one round's frames, so a reader that keeps up is never dropped."""
    hub = Hub(queue_size=1)
    sub = hub.subscribe(None)
    for _ in range(3):
        run(rig, hub)
        await asyncio.sleep(0)
        assert len(frames(sub)) == 3
    assert sub.closed_reason is None


async def test_waiting_reader_wakes_on_report_and_on_close(rig: Rig) -> None:
    """get() waits for the next frame; closing the hub wakes it with SubscriptionClosed."""
    hub = Hub()
    sub = hub.subscribe(None)
    waiter = asyncio.create_task(sub.get())
    closed = asyncio.create_task(sub.wait_closed())
    await asyncio.sleep(0)
    run(rig, hub)
    assert markets_of([await waiter]) == ["BTC/USD"]
    assert markets_of(frames(sub)) == ["ETH/USD", "SOL/USD"]
    pending_get = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    await hub.close()
    with pytest.raises(SubscriptionClosed):
        await pending_get
    assert await closed == DROP_SHUTDOWN
    assert hub.dropped_subscribers == Counter({DROP_SLOW: 0, DROP_SHUTDOWN: 1})


async def test_a_notice_reaches_a_subscriber_whose_round_fills_its_buffer_past_the_bound(
    rig: Rig,
) -> None:
    """A round always fits an empty buffer, even past the bound; a notice (`Hub.tell`, the
    stall watch's `stalled`) weighs nothing and goes in behind it, where it was silently lost
    (no frame, no drop) until the client had read the round."""
    hub = Hub(queue_size=2)
    sub = hub.subscribe(None)  # three markets a round: past the bound of two
    run(rig, hub)
    await asyncio.sleep(0)
    hub.tell(b"notice")
    got = frames(sub)
    assert markets_of(got[:3]) == ["BTC/USD", "ETH/USD", "SOL/USD"] and got[3:] == [b"notice"]
    assert sub.closed_reason is None


def test_markets_added_that_do_not_fit_drop_the_subscriber_as_slow(rig: Rig) -> None:
    """Adding markets to a subscriber that has not read its backlog: when their snapshot does
    not fit, it is dropped as slow (counted) rather than buffering past its bound."""
    hub = Hub(queue_size=2)
    run(rig, hub)
    sub = hub.subscribe(frozenset({"BTC/USD"}))  # one frame buffered, never read
    hub.change(sub, None)  # two more markets: three frames > a bound of two
    assert sub.closed_reason == DROP_SLOW and sub.pending == 0
    assert hub.dropped_subscribers[DROP_SLOW] == 1 and hub.subscribers == 0


def test_a_dropped_subscription_ignores_late_changes(rig: Rig) -> None:
    """A client request read after its subscription was dropped (the drop and the request
    race on the loop) changes nothing: no snapshot is buffered for the dead subscriber and it
    is not brought back."""
    hub = Hub(queue_size=4)
    run(rig, hub)
    sub = hub.subscribe(frozenset({"BTC/USD"}))
    frames(sub)
    hub.unsubscribe(sub)
    hub.change(sub, frozenset({"BTC/USD", "ETH/USD", "SOL/USD"}))
    hub.configure(sub, batch=True, deviation=0.5)
    assert sub.pending == 0 and hub.subscribers == 0
    assert (sub.batch, sub.deviation) == (False, None)


def test_signed_frames_need_a_signer() -> None:
    """Asking the hub for signed frames when the daemon does not sign is a ValueError, and the
    subscription keeps its report frames."""
    hub = Hub()
    sub = hub.subscribe(None)
    with pytest.raises(ValueError, match="does not sign"):
        hub.configure(sub, signed=True)
    assert not sub.signed


def test_unsubscribe_is_not_a_drop_and_is_idempotent() -> None:
    """An owner leaving is not counted as a drop; unsubscribing twice is harmless."""
    hub = Hub()
    sub = hub.subscribe(frozenset({"BTC/USD"}))
    assert hub.subscribers == 1
    hub.unsubscribe(sub)
    hub.unsubscribe(sub)
    assert hub.subscribers == 0
    assert sub.closed_reason == "unsubscribed"
    assert sum(hub.dropped_subscribers.values()) == 0


def test_publish_without_a_running_loop_delivers_at_once() -> None:
    """A synchronous caller (no event loop) gets the fan-out inline, so nothing is lost."""
    rig = Rig(make_config())
    hub = Hub()
    sub = hub.subscribe(frozenset({"SOL/USD"}))
    hub.publish(rig.step())
    assert markets_of(frames(sub)) == ["SOL/USD"]


def test_queue_size_must_be_positive() -> None:
    """A zero-size queue would drop every subscriber; it is refused at construction."""
    with pytest.raises(ValueError, match="queue_size"):
        Hub(queue_size=0)
