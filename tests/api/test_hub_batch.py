"""The Hub's batches (one frame per round), and its fan-outs (reports, signed, filtered or not)
and snapshots in slices of markets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec
import pytest
from api_rig import Rig, frames, make_config

from oracled.config import parse_config
from oracled.core import Core, RoundResult
from oracled.model import Quote
from oracled.publish import DROP_SLOW, Hub
from oracled.publish.encode import ReportEncoder
from oracled.publish.hub import SLICE, WARM_SLICE, Subscription
from oracled.publish.signer import RoundSigner, SignedRound, SigningKey

SIGNER = RoundSigner(SigningKey.from_hex("0x" + "44" * 32), "test")
T0 = 1_700_000_000_250


def decode(frame: bytes) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.json.decode(frame)
    return data


@pytest.mark.parametrize(
    ("markets", "order"),
    [
        ({"SOL/USD", "BTC/USD"}, ["BTC/USD", "SOL/USD"]),
        ({"SOL/USD", "BTC/USD", "ETH/USD"}, ["BTC/USD", "ETH/USD", "SOL/USD"]),
        ({"ETH/USD"}, ["ETH/USD"]),  # head and tail around the one report
    ],
)
async def test_a_batch_is_one_frame_of_the_same_report_bytes_in_market_order(
    markets: set[str], order: list[str]
) -> None:
    """A batch subscription gets one frame a round: `reports` with the round and its time, and
    the very bytes a per-report subscriber gets as its frames' data, in layout order, whether
    the batch holds one report, two or every market."""
    rig = Rig(make_config())
    hub = rig.hub
    single = hub.subscribe(frozenset(markets))
    batch = hub.subscribe(frozenset(markets), batch=True)
    result = rig.step()
    await asyncio.sleep(0)
    (frame,) = frames(batch)
    head = b'{"type":"reports","round":%d,"round_ts":%d,"data":[' % (result.round, result.ts)
    parts = [f[len(b'{"type":"report","data":') : -1] for f in frames(single)]
    assert len(parts) == len(order)
    assert frame == head + b",".join(parts) + b"]}"
    assert [r["market"] for r in decode(frame)["data"]] == order


async def test_equal_batch_subscriptions_share_one_frame_and_a_snapshot_is_a_batch() -> None:
    """Batch subscribers of one market set get the same bytes object; subscribing after a round
    delivers the latest reports of the set as one batch frame at once."""
    rig = Rig(make_config())
    hub = rig.hub
    rig.step()
    late = hub.subscribe(None, batch=True)
    (snapshot,) = frames(late)
    assert [r["market"] for r in decode(snapshot)["data"]] == ["BTC/USD", "ETH/USD", "SOL/USD"]
    other = hub.subscribe(None, batch=True)
    frames(other)
    rig.step()
    await asyncio.sleep(0)
    (a,), (b,) = frames(late), frames(other)
    assert a is b and decode(a)["round"] == 2


async def test_a_batch_weighs_its_reports_in_the_queue_bound() -> None:
    """The bound counts reports: with a queue of 4, one round of 3 reports fits, two do not,
    and the subscription is dropped as a slow consumer (memory stays bounded by reports)."""
    cfg = make_config()  # stream_queue = 4
    rig = Rig(cfg)
    sub = rig.hub.subscribe(None, batch=True)
    rig.step()
    await asyncio.sleep(0)
    assert sub.pending == 1 and sub.closed_reason is None
    rig.step()
    await asyncio.sleep(0)
    assert sub.closed_reason == DROP_SLOW
    assert rig.hub.dropped_subscribers[DROP_SLOW] == 1


async def test_reading_a_batch_frees_its_weight() -> None:
    """A reader that takes each round's batch is never dropped, round after round."""
    rig = Rig(make_config())
    sub = rig.hub.subscribe(None, batch=True)
    for _ in range(10):
        rig.step()
        await asyncio.sleep(0)
        assert len(decode(await sub.get())["data"]) == 3
    assert sub.closed_reason is None and sub.pending == 0


async def test_switching_batch_on_and_off_keeps_the_bound_right() -> None:
    """Single frames buffered before a switch to batches are released one report each."""
    rig = Rig(make_config(stream_queue=8))
    hub = rig.hub
    sub = hub.subscribe(None)
    rig.step()
    await asyncio.sleep(0)
    hub.configure(sub, batch=True)
    rig.step()
    await asyncio.sleep(0)
    assert sub.pending == 4  # three single frames, then one batch of three
    taken = [decode(f)["type"] for f in frames(sub)]
    assert taken == ["report", "report", "report", "reports"]
    hub.configure(sub, batch=False)
    for _ in range(2):  # 2 x 3 reports fit in 8 only if everything taken was released
        rig.step()
        await asyncio.sleep(0)
    assert sub.closed_reason is None and sub.pending == 6


async def test_filtered_batch_carries_only_the_markets_that_pass() -> None:
    """With a deviation filter, a batch holds just the markets that moved (a live move inside
    the circuit breaker) or changed status (a pause, price null); none: no frame."""
    rig = Rig(make_config())
    hub = rig.hub
    rig.step()
    sub = hub.subscribe(frozenset(), batch=True)
    hub.configure(sub, deviation=0.01)
    hub.change(sub, None)
    (first,) = frames(sub)
    assert len(decode(first)["data"]) == 3
    rig.step()
    await asyncio.sleep(0)
    assert frames(sub) == []  # nothing moved
    # ETH +5 % (past the filter's 1 %, inside the 10 % breaker: still live), BTC +0.1 %.
    prices = {"BTC/USD": 64_064.0, "ETH/USD": 3_255.0, "SOL/USD": 150.0}
    rig.step(prices)
    await asyncio.sleep(0)
    (moved,) = frames(sub)
    ((eth,),) = [decode(moved)["data"]]
    assert (eth["market"], eth["status"]) == ("ETH/USD", "degraded")
    assert abs(float(eth["price"]) - 3_255.0) < 1
    rig.on_manual("SOL/USD", True, "test")  # a status change without any move
    rig.step(prices)
    await asyncio.sleep(0)
    (paused,) = frames(sub)
    ((sol,),) = [decode(paused)["data"]]
    assert (sol["market"], sol["status"], sol["price"]) == ("SOL/USD", "paused", None)


def test_batches_of_signed_frames_are_refused() -> None:
    """Batches carry reports: a subscription cannot be both signed and batched."""
    hub = Hub()
    hub.signer = "0x" + "ab" * 20
    sub = hub.subscribe(frozenset(), batch=True)
    with pytest.raises(ValueError, match="batches"):
        hub.configure(sub, signed=True)
    assert not sub.signed
    hub.configure(sub, batch=False)
    hub.configure(sub, signed=True)
    with pytest.raises(ValueError, match="batches"):
        hub.configure(sub, batch=True)


def many_markets(n: int) -> Core:
    cfg = parse_config(
        {
            "oracle": {"round_interval_ms": 250, "resume_rounds": 1},
            "sources": {"alpha": {"type": "binance"}, "beta": {"type": "binance"}},
            "markets": [
                {
                    "symbol": f"C{i:04d}/USD",
                    "min_sources": 1,
                    "sources": [{"source": s, "pair": f"C{i:04d}/USD"} for s in ("alpha", "beta")],
                }
                for i in range(n)
            ],
        },
        env={},
    )
    return Core(cfg)


def quoted_round(core: Core, now: int) -> Any:
    for i, market in enumerate(core.markets):
        for source in ("alpha", "beta"):
            core.ingest(Quote(source, market, now, price=10.0 + i))
    return core.run_round(now)


async def test_a_large_fan_out_is_encoded_in_slices_and_delivers_whole_rounds() -> None:
    """More markets than a slice: the loop turns between slices (other callbacks run in
    between), and the subscriber then gets the whole round at once, every market once."""
    n = 2 * SLICE + 50
    core = many_markets(n)
    hub = Hub(queue_size=8)
    sub = hub.subscribe(None)
    batch = hub.subscribe(None, batch=True)
    hub.publish(quoted_round(core, 1_700_000_000_250))
    turns = 0
    while sub.pending == 0:
        turns += 1
        await asyncio.sleep(0)
    assert turns == 3  # three slices, one turn each
    got = frames(sub)
    assert len(got) == n
    assert [decode(f)["data"]["market"] for f in got] == list(core.markets)
    (whole,) = frames(batch)
    assert len(decode(whole)["data"]) == n


async def test_a_round_published_during_a_sliced_fan_out_replaces_it() -> None:
    """If the next round arrives while the previous one is still being encoded, subscribers get
    the newer round only, whole, and nothing of the older one."""
    core = many_markets(SLICE + 10)
    hub = Hub(queue_size=8)
    sub = hub.subscribe(None)
    hub.publish(quoted_round(core, 1_700_000_000_250))
    await asyncio.sleep(0)  # the first slice of round 1
    assert sub.pending == 0
    hub.publish(quoted_round(core, 1_700_000_000_500))
    for _ in range(4):
        await asyncio.sleep(0)
    rounds = {decode(f)["data"]["round"] for f in frames(sub)}
    assert rounds == {2}
    assert sub.pending == 0


def signed_hub(queue_size: int = 8) -> Hub:
    hub = Hub(queue_size=queue_size)
    hub.signer = SIGNER.key.address
    return hub


def signed_sub(hub: Hub, *, snapshot: bool = True, **filters: Any) -> Subscription:
    """A signed subscription of every market, as a client sets one up: nothing, then signed
    frames (and filters), then the markets (a snapshot of the latest signed round, if any)."""
    sub = hub.subscribe(frozenset())
    hub.configure(sub, signed=True, **filters)
    hub.change(sub, None, snapshot=snapshot)
    return sub


def signed_round(hub: Hub, core: Core, now: int) -> SignedRound:
    """The round at `now` published, then its signature (as the signer thread hands it over)."""
    result = quoted_round(core, now)
    hub.publish(result)
    signed = SIGNER.sign(result)
    hub.publish_signed(signed)
    return signed


def expected(signed: SignedRound) -> list[bytes]:
    """Every market's signed frame, built as the hub built them before it sliced the fan-out."""
    return [b'{"type":"signed","data":' + signed.envelope(i) + b"}" for i in range(signed.count)]


async def turns_until(sub: Subscription) -> int:
    """Turns of the loop until `sub` has frames (a fan-out that never delivers fails)."""
    turns = 0
    while sub.pending == 0:
        turns += 1
        assert turns < 100, "no frame after 100 turns of the loop"
        await asyncio.sleep(0)
    return turns


@pytest.mark.parametrize("filters", [{}, {"heartbeat_ms": 1}, {"deviation": 0.01}])
async def test_a_large_signed_fan_out_is_encoded_in_slices_and_delivers_whole_rounds(
    filters: dict[str, Any],
) -> None:
    """More markets than a slice: the signed fan-out turns the loop between slices as the
    report fan-out does, for an unfiltered subscriber and for a filtered one (on a first round
    every market passes), then the subscriber gets the whole round at once, the very bytes that
    encoding the round in one turn made."""
    n = 2 * SLICE + 50
    core = many_markets(n)
    hub = signed_hub()
    sub = signed_sub(hub, **filters)
    signed = signed_round(hub, core, T0)
    assert await turns_until(sub) == 3  # three slices, one turn each
    assert frames(sub) == expected(signed)


async def test_a_signed_round_arriving_mid_fan_out_replaces_it_and_leaves_filters_alone() -> None:
    """A subscriber that holds round 1 unread, then round 2 superseded by round 3 after its
    first slice: it reads round 1 whole, then round 3 whole, nothing of round 2. A deviation
    filter was asked about round 2 but not told it was sent: round 3, at the same prices,
    still reaches it (had round 2 been recorded, nothing would have moved since)."""
    core = many_markets(SLICE + 10)
    hub = signed_hub(queue_size=4 * (SLICE + 10))
    sub = signed_sub(hub)
    signed_round(hub, core, T0)
    await turns_until(sub)
    deviating = signed_sub(hub, snapshot=False, deviation=0.01)  # joins at round 2
    signed_round(hub, core, T0 + 250)
    await asyncio.sleep(0)  # the first slice of round 2
    assert deviating.pending == 0
    signed_round(hub, core, T0 + 500)
    await turns_until(deviating)
    rounds = [decode(f)["data"]["round"] for f in frames(sub)]
    assert rounds == [1] * (SLICE + 10) + [3] * (SLICE + 10)
    assert [decode(f)["data"]["round"] for f in frames(deviating)] == [3] * (SLICE + 10)


async def test_a_signed_subscriber_leaving_mid_fan_out_gets_nothing_and_one_joining_gets_it() -> (
    None
):
    """Mid-fan-out, one signed subscriber leaves and one joins: the one that left gets no
    frame and the hub goes on; the others, the newcomer included, get the round whole."""
    n = SLICE + 10
    core = many_markets(n)
    hub = signed_hub()
    stays, leaves = signed_sub(hub), signed_sub(hub)
    signed = signed_round(hub, core, T0)
    await asyncio.sleep(0)
    hub.unsubscribe(leaves)
    joins = signed_sub(hub)  # a fan-out is under way: it sends no snapshot of its own
    await turns_until(stays)
    want = expected(signed)
    assert frames(stays) == want and frames(joins) == want
    assert leaves.pending == 0 and leaves.closed_reason is not None
    assert hub.subscribers == 2


async def test_a_slow_signed_subscriber_is_dropped_after_a_sliced_fan_out() -> None:
    """The bound holds for sliced rounds: a subscriber that does not read is dropped as slow
    when the next round's frames do not fit; one that reads gets both rounds."""
    n = SLICE + 10
    core = many_markets(n)
    hub = signed_hub(queue_size=n)
    slow, fast = signed_sub(hub), signed_sub(hub)
    for k in range(2):
        signed_round(hub, core, T0 + 250 * k)
        await turns_until(fast)
        assert [decode(f)["data"]["round"] for f in frames(fast)] == [k + 1] * n
    assert slow.closed_reason == DROP_SLOW and hub.dropped_subscribers[DROP_SLOW] == 1


def encoded_at_once(result: RoundResult, batch: bool) -> list[bytes]:
    """Every market's report frames of `result` as one encoding of the whole round makes them
    (a fresh encoder: the bytes do not depend on the encoder's history)."""
    reports = ReportEncoder().encode(result, range(len(result.layout.markets)))
    if batch:
        head = b'{"type":"reports","round":%d,"round_ts":%d,"data":[' % (result.round, result.ts)
        return [head + b",".join(reports) + b"]}"]
    return [b'{"type":"report","data":' + r + b"}" for r in reports]


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("filters", [{"heartbeat_ms": 1}, {"deviation": 0.01}])
async def test_a_large_filtered_report_fan_out_is_encoded_in_slices(
    filters: dict[str, Any], batch: bool
) -> None:
    """A subscriber with a filter, alone: its markets are encoded in slices too, a turn of the
    loop between two (it was one turn, the filter asked at delivery), then it gets the whole
    round (on a first round every market passes), the bytes one encoding of the round makes."""
    n = 2 * SLICE + 50
    core = many_markets(n)
    hub = Hub(queue_size=8)
    sub = hub.subscribe(frozenset(), batch=batch)
    hub.configure(sub, **filters)
    hub.change(sub, None)
    result = quoted_round(core, T0)
    hub.publish(result)
    assert await turns_until(sub) == 3  # three slices, one turn each
    assert frames(sub) == encoded_at_once(result, batch)


async def test_a_report_round_arriving_mid_fan_out_leaves_a_filter_alone() -> None:
    """A deviation filter is asked which markets it will let through before the slices, without
    recording: round 1, superseded after its first slice by round 2 at the same prices, never
    counts as sent, so round 2 still reaches the filtered subscriber whole (had round 1 been
    recorded, nothing would have moved since); round 3, the same prices again, passes nothing."""
    n = SLICE + 10
    core = many_markets(n)
    hub = Hub(queue_size=4 * n)
    deviating = hub.subscribe(frozenset())
    hub.configure(deviating, deviation=0.01)
    hub.change(deviating, None)
    hub.publish(quoted_round(core, T0))
    await asyncio.sleep(0)  # the first slice of round 1
    assert deviating.pending == 0
    second = quoted_round(core, T0 + 250)
    hub.publish(second)
    await turns_until(deviating)
    assert frames(deviating) == encoded_at_once(second, batch=False)
    hub.publish(quoted_round(core, T0 + 500))
    for _ in range(4):
        await asyncio.sleep(0)
    assert deviating.pending == 0


class TurnCounter:
    """A task that counts the turns of the event loop, as a venue's reader would get them."""

    def __init__(self) -> None:
        self.turns = 0
        self.task = asyncio.create_task(self._count(), name="turn-counter")

    async def _count(self) -> None:
        while True:
            self.turns += 1
            await asyncio.sleep(0)


class SliceEncoder(ReportEncoder):
    """Records, per call, the counter's turn it was made in and how many markets it encoded."""

    def __init__(self, counter: TurnCounter) -> None:
        super().__init__()
        self.counter = counter
        self.calls: list[tuple[int, int]] = []

    def encode(self, result: RoundResult, indices: Sequence[int]) -> list[bytes]:
        self.calls.append((self.counter.turns, len(indices)))
        return super().encode(result, indices)

    def assert_sliced(self, markets: int) -> None:
        """Every market encoded once, at most SLICE a call, and the counter task ran between
        two calls (one encoding of them all, in one turn, fails this)."""
        assert sum(n for _, n in self.calls) == markets
        assert all(n <= SLICE for _, n in self.calls), self.calls
        turns = [t for t, _ in self.calls]
        assert turns == sorted(set(turns)), self.calls


@pytest.fixture
async def counter() -> AsyncIterator[TurnCounter]:
    counter = TurnCounter()
    yield counter
    counter.task.cancel()


async def unsubscribed_round(hub: Hub, core: Core, now: int) -> RoundResult:
    """A round published while nobody subscribed a market: nothing of it is encoded."""
    result = quoted_round(core, now)
    hub.publish(result)
    for _ in range(3):
        await asyncio.sleep(0)
    return result


@pytest.mark.parametrize("batch", [False, True])
async def test_a_large_snapshot_is_encoded_in_slices(counter: TurnCounter, batch: bool) -> None:
    """Subscribing to more markets than a slice after a round: the snapshot is encoded in
    slices, the first one in the subscribing turn and each next in a turn of its own, other
    tasks running between them (it was all in the subscribing turn), and buffered once whole,
    the bytes one encoding of the round makes."""
    n = 2 * SLICE + 50
    core = many_markets(n)
    encoder = SliceEncoder(counter)
    hub = Hub(queue_size=8, encoder=encoder)
    sub = hub.subscribe(frozenset(), batch=batch)
    result = await unsubscribed_round(hub, core, T0)
    hub.change(sub, None)
    assert sub.pending == 0  # only the first slice is encoded yet
    assert await turns_until(sub) == 2
    assert frames(sub) == encoded_at_once(result, batch)
    encoder.assert_sliced(n)


async def test_a_large_signed_snapshot_is_encoded_in_slices() -> None:
    """Markets added to a signed subscription after a signed round, and a switch to signed
    frames: the snapshot's envelopes are encoded in slices too, then buffered whole."""
    n = 2 * SLICE + 50
    core = many_markets(n)
    hub = signed_hub(queue_size=4 * n)
    sub = hub.subscribe(frozenset())
    hub.configure(sub, signed=True)
    signed = signed_round(hub, core, T0)  # no market subscribed: no envelope encoded
    for _ in range(3):
        await asyncio.sleep(0)
    hub.change(sub, None)
    assert sub.pending == 0  # only the first slice is encoded yet
    assert await turns_until(sub) == 2
    assert frames(sub) == expected(signed)
    hub.configure(sub, signed=False)  # the report snapshot
    await turns_until(sub)
    assert [decode(f)["type"] for f in frames(sub)] == ["report"] * n
    signed = signed_round(hub, core, T0 + 250)  # no signed subscriber: no envelope encoded
    await turns_until(sub)
    assert [decode(f)["type"] for f in frames(sub)] == ["report"] * n
    hub.configure(sub, signed=True)
    assert sub.pending == 0
    assert await turns_until(sub) == 2
    assert frames(sub) == expected(signed)


@pytest.mark.parametrize("filters", [{}, {"deviation": 0.01}])
async def test_a_round_published_mid_snapshot_replaces_it(filters: dict[str, Any]) -> None:
    """The next round arrives while a snapshot is being encoded: the snapshot is dropped and the
    round's fan-out sends the subscription's markets, whole, nothing of the older round; a
    filter was not told the dropped snapshot was sent (the round at the same prices passes)."""
    n = SLICE + 10
    core = many_markets(n)
    hub = Hub(queue_size=8)
    sub = hub.subscribe(frozenset())
    hub.configure(sub, **filters)
    await unsubscribed_round(hub, core, T0)
    hub.change(sub, None)
    second = quoted_round(core, T0 + 250)
    hub.publish(second)
    await turns_until(sub)
    assert frames(sub) == encoded_at_once(second, batch=False)
    for _ in range(4):
        await asyncio.sleep(0)
    assert sub.pending == 0


async def test_snapshots_notices_and_answers_keep_their_order(counter: TurnCounter) -> None:
    """Two snapshots asked back to back, a notice and an answer: the client reads the first
    snapshot whole, then the second, then the notice, then the answer, as when snapshots were
    buffered at once, though each is encoded in slices."""
    n = 2 * SLICE + 50
    core = many_markets(n)
    encoder = SliceEncoder(counter)
    hub = Hub(queue_size=4 * n, encoder=encoder)
    sub = hub.subscribe(frozenset())
    result = await unsubscribed_round(hub, core, T0)
    first = frozenset(core.markets[: SLICE + 20])
    hub.change(sub, first)
    hub.change(sub, None)  # the other markets, after the first snapshot
    hub.tell(b"notice")
    answered = asyncio.create_task(hub.reply(sub, b"answer"))
    got = [await sub.get() for _ in range(n + 2)]
    await answered
    want = encoded_at_once(result, batch=False)
    assert got == [*want[: SLICE + 20], *want[SLICE + 20 :], b"notice", b"answer"]
    encoder.assert_sliced(n)


async def test_a_subscriber_leaving_mid_snapshot_gets_nothing_more() -> None:
    """A subscription closed while its snapshot is being encoded: nothing is buffered for it,
    and an answer to it returns at once."""
    core = many_markets(SLICE + 10)
    hub = Hub(queue_size=8)
    sub = hub.subscribe(frozenset())
    await unsubscribed_round(hub, core, T0)
    hub.change(sub, None)
    hub.unsubscribe(sub)
    await hub.reply(sub, b"answer")
    for _ in range(4):
        await asyncio.sleep(0)
    assert sub.pending == 0 and hub.subscribers == 0


@pytest.mark.parametrize(("warm_slice", "later"), [(WARM_SLICE, [450]), (300, [300, 150])])
async def test_a_layouts_later_rounds_go_in_warm_slices(
    counter: TurnCounter, warm_slice: int, later: list[int]
) -> None:
    """The first round of a layout makes every market's templates, in slices of `SLICE`; the
    next rounds, whose markets all have templates, in slices of `warm_slice` (one turn for the
    450 markets here by default), and both are delivered whole."""
    n = 2 * SLICE + 50
    core = many_markets(n)
    encoder = SliceEncoder(counter)
    hub = Hub(queue_size=4 * n, encoder=encoder, warm_slice=warm_slice)
    sub = hub.subscribe(None, batch=True)
    first = quoted_round(core, T0)
    hub.publish(first)
    assert await turns_until(sub) == 3  # three slices, one turn each
    assert frames(sub) == encoded_at_once(first, batch=True)
    encoder.assert_sliced(n)
    encoder.calls.clear()
    second = quoted_round(core, T0 + 250)
    hub.publish(second)
    assert await turns_until(sub) == len(later)
    assert frames(sub) == encoded_at_once(second, batch=True)
    assert [size for _, size in encoder.calls] == later
    turns = [t for t, _ in encoder.calls]
    assert turns == sorted(set(turns)), encoder.calls  # a turn of the loop between two


async def test_a_market_without_templates_keeps_a_later_round_in_small_slices(
    counter: TurnCounter,
) -> None:
    """A later round whose markets include some never encoded (the first round had
    subscribers of only some of them) goes in slices of `SLICE`, as a first round does."""
    n = 2 * SLICE + 50
    core = many_markets(n)
    encoder = SliceEncoder(counter)
    hub = Hub(queue_size=4 * n, encoder=encoder)
    few = hub.subscribe(frozenset(core.markets[:SLICE]))
    hub.publish(quoted_round(core, T0))
    await turns_until(few)
    encoder.calls.clear()
    second = quoted_round(core, T0 + 250)
    hub.publish(second)
    every = hub.subscribe(None)  # no snapshot: the pending fan-out delivers round 2 to it
    await turns_until(every)
    assert frames(every) == encoded_at_once(second, batch=False)
    assert [size for _, size in encoder.calls] == [SLICE, SLICE, 50]


def test_a_warm_slice_smaller_than_a_slice_is_refused() -> None:
    with pytest.raises(ValueError, match="warm_slice"):
        Hub(warm_slice=SLICE - 1)


async def test_a_subscriber_joining_mid_fan_out_is_encoded_in_slices_too(
    counter: TurnCounter,
) -> None:
    """A subscription of every market comes after the first slice of a fan-out of fewer: it
    sends no snapshot (the fan-out will deliver the round), and the markets it adds are
    encoded in slices after the others, not all in the delivering turn; both get the round
    whole."""
    n = 2 * SLICE + 50
    core = many_markets(n)
    encoder = SliceEncoder(counter)
    hub = Hub(queue_size=4 * n, encoder=encoder)
    few = hub.subscribe(frozenset(core.markets[: SLICE + 10]))
    result = quoted_round(core, T0)
    hub.publish(result)
    await asyncio.sleep(0)  # the first slice
    every = hub.subscribe(None)
    await turns_until(every)
    want = encoded_at_once(result, batch=False)
    assert frames(few) == want[: SLICE + 10] and frames(every) == want
    encoder.assert_sliced(n)


async def test_a_signed_subscriber_joining_mid_fan_out_is_encoded_in_slices_too() -> None:
    """The same for signed frames: the envelopes of the markets a signed subscription adds
    mid-fan-out are encoded in slices of their own before the round is delivered."""
    n = 2 * SLICE + 50
    core = many_markets(n)
    hub = signed_hub(queue_size=4 * n)
    few = hub.subscribe(frozenset(core.markets[: SLICE + 10]))
    hub.configure(few, signed=True)
    signed = signed_round(hub, core, T0)
    await asyncio.sleep(0)  # the first slice
    every = signed_sub(hub)
    assert await turns_until(every) == 3  # the second slice, then the other markets in two
    assert frames(few) == expected(signed)[: SLICE + 10] and frames(every) == expected(signed)
