"""OracleClient under a hostile peer: real signed frames, mutated, through real transports.

The frames are a real signer's (`RoundSigner`, the daemon's code, with a throwaway key) over
real rounds of a real core; hypothesis mutates them (every field: types swapped, numbers to
their extremes, hex flipped, proofs reordered, dropped or padded, rounds and times moved,
markets renamed, another deployment, another key, cut short, made huge, nested past the
decoder's depth, unknown frame types, error frames of any code, stall notices forged or
replayed, and the genuine frames again in any order) and sends them to `watch_ws` from a
loopback WebSocket server speaking the daemon's stream protocol, or to `watch_nats` through a
real nats-server. Whatever comes, the client may refuse but must hold, as its public API shows:

1. the watch task runs on, and every message is read (the peer's fence arrives);
2. every report a view holds is a genuine leaf of the allowed key in the client's deployment,
   and no refused stall notice hides the key;
3. no view goes back to an older round: a market's view is at least as new as the newest
   genuine frame of it that was sent, and its signer never counts as equivocating (no
   forgery makes the client withdraw it);
4. what the peer can make the client keep is bounded (`stream_errors` by code, the markets
   listed unavailable, the refusals kept).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from publish_rig import NatsServer, Rounds, make_config

from oracled.client import REASONS, STALLED_REFUSED, OracleClient
from oracled.publish.nats import price_subject, stalled_subject
from oracled.publish.signer import RoundSigner, SignedRound, SigningKey
from oracled.publish.signstall import stall_notice

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
from api_rig import DaemonServer  # the API tests' loopback server, as the daemon serves

KEY = SigningKey.from_hex("0x" + "6b" * 32)  # throwaway: the genuine frames' signer
STRANGER = SigningKey.from_hex("0x" + "7c" * 32)  # valid signatures, not an allowed key
DEPLOYMENT = "test"
SAFETY_S = 5.0  # guards against hangs only (short: hypothesis retries a failure many times)
FENCE = "signing_disabled"  # the WebSocket script's last frame: an error frame, counted
MAX_AGE_MS = 60_000  # every round stays fresh: order alone decides what is newer
NOTICE_AGE_MS = 4_000  # the client's clock past the newest round: a genuine notice is plausible

_rounds = Rounds(make_config(perps=["ETH/USD"]))  # ETH/USD signs a mark and its mode too
_signer = RoundSigner(KEY, DEPLOYMENT)
ROUNDS: list[SignedRound] = [_signer.sign(_rounds.step(BTC_USD=1.001)) for _ in range(4)]
_results = [r.result for r in ROUNDS]
STRANGERS = [RoundSigner(STRANGER, DEPLOYMENT).sign(r) for r in _results if r is not None]
STAGING = [RoundSigner(KEY, "staging").sign(r) for r in _results if r is not None]
MARKETS = [leaf.market for leaf in ROUNDS[0].leaves]
#: What `stream_errors` may count: the contract's error codes, the client's own, `unknown`.
CODES = {"bad_request", "bad_query", "unknown_market", "signing_disabled", "market_removed"}
CODES |= {"stalled", STALLED_REFUSED, "malformed", "unknown"}
NOW = ROUNDS[-1].ts + NOTICE_AGE_MS
#: (market, ts) -> what the genuine leaf says: round, status, price, confidence, expo, mark,
#: mark mode.
GENUINE = {
    (leaf.market, r.ts): (
        r.round,
        r.signed_price(i).status,
        r.signed_price(i).price,
        r.signed_price(i).confidence,
        leaf.expo,
        r.signed_price(i).mark,
        r.signed_price(i).mark_mode,
    )
    for r in ROUNDS
    for i, leaf in enumerate(r.leaves)
}


@dataclass
class Script:
    """What the peer sends, and what the test knows of it."""

    frames: list[str] = field(default_factory=list)  # stream frames (the NATS payload inside)
    notices: list[str] = field(default_factory=list)  # stall notices (NATS `.stalled`)
    #: Per market, the round times of the genuine frames sent, untouched.
    genuine: dict[str, set[int]] = field(default_factory=dict)
    #: Messages of the genuine stall notices sent: the only words a stall may carry.
    told: set[str] = field(default_factory=set)


# -- mutations --------------------------------------------------------------------------------

NASTY: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, -1, 1, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, 2**256]),
    st.sampled_from(["NaN", "nan", "Infinity", "-Infinity", "1e999", "-0", "+5", " 5", "0x0"]),
    st.sampled_from(["", "0x", "0X" + "ab" * 32, "\u0660", "BTC/USD", "1_000", "null"]),
    st.text(max_size=12),
    st.lists(st.integers(-5, 5), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.floats(allow_nan=False),
)
FIELDS = [
    "market",
    "ts",
    "round",
    "status",
    "price",
    "confidence",
    "expo",
    "count",
    "index",
    "root",
    "proof",
    "signature",
    "signer",
    "deployment",
    "mark",
    "mark_mode",
]


def _flip(text: str, at: int) -> str:
    """`text` (0x and hex) with one hex digit after `0x` changed."""
    if len(text) <= 2:
        return text + "0"
    i = 2 + at % (len(text) - 2)
    digit = (
        "0123456789abcdef"[(int(text[i], 16) + 1) % 16]
        if text[i] in "0123456789abcdefABCDEF"
        else "0"
    )
    return text[:i] + digit + text[i + 1 :]


@st.composite
def mutated(draw: st.DrawFn, envelope: dict[str, Any]) -> dict[str, Any]:
    """One signed price changed in one of the ways a peer can change it."""
    data = dict(envelope)
    way = draw(
        st.sampled_from(
            ["value", "delete", "move", "flip", "proof", "rename", "signer", "case", "extra"]
        )
    )
    name = draw(st.sampled_from(FIELDS))
    if way == "value":
        data[name] = draw(NASTY)
    elif way == "delete":
        data.pop(name, None)
    elif way == "move":
        number = draw(st.sampled_from(["ts", "round", "count", "index", "expo"]))
        delta = draw(st.sampled_from([-(2**64), -1000, -250, -1, 1, 250, 1000, 2**64]))
        data[number] = data[number] + delta
    elif way == "flip":
        what = draw(st.sampled_from(["signature", "root", "proof"]))
        at = draw(st.integers(0, 200))
        if what == "proof" and data["proof"]:
            k = at % len(data["proof"])
            data["proof"] = [
                *data["proof"][:k],
                _flip(data["proof"][k], at),
                *data["proof"][k + 1 :],
            ]
        elif what != "proof":
            data[what] = _flip(data[what], at)
    elif way == "proof":
        proof = list(data["proof"])
        edit = draw(st.sampled_from(["shuffle", "drop", "duplicate", "pad", "huge"]))
        if edit == "shuffle":
            proof = draw(st.permutations(proof))
        elif edit == "drop" and proof:
            proof.pop(draw(st.integers(0, len(proof) - 1)))
        elif edit == "duplicate" and proof:
            proof.insert(0, proof[-1])
        elif edit == "pad":
            proof.append("0x" + "11" * 32)
        elif edit == "huge":
            proof = proof * 2_000  # about 400 kB
        data["proof"] = proof
    elif way == "rename":
        data["market"] = draw(st.sampled_from([*MARKETS, "btc-usd", "BTC/USDT", "X" * 10_000]))
    elif way == "signer":
        data["signer"] = draw(st.sampled_from([STRANGER.address, "0x" + "00" * 20, "", "0xabc"]))
    elif way == "case":  # the same signed content written otherwise
        for key in ("root", "signature", "signer"):
            data[key] = "0x" + data[key][2:].upper()
    else:
        data[draw(st.text(min_size=1, max_size=8))] = draw(NASTY)
    return data


def _json(value: Any) -> str:
    """JSON as the daemon writes it (no spaces): the client reads frames by their first bytes."""
    return json.dumps(value, separators=(",", ":"))


def _frame(payload: str) -> str:
    return '{"type":"signed","data":' + payload + "}"


@st.composite
def message(draw: st.DrawFn, script: Script) -> None:
    """Add one message to `script`."""
    r = draw(st.integers(0, len(ROUNDS) - 1))
    i = draw(st.integers(0, len(MARKETS) - 1))
    genuine = ROUNDS[r].envelope(i).decode()
    kind = draw(
        st.sampled_from(
            [
                "genuine",
                "mutated",
                "mutated",
                "mutated",
                "stranger",
                "staging",
                "truncated",
                "type",
                "report",
                "error",
                "ack",
                "notice",
                "notice",
                "deep",
            ]
        )
    )
    if kind == "genuine":  # in any order: a replay of an old round, a duplicate
        script.frames.append(_frame(genuine))
        script.genuine.setdefault(MARKETS[i], set()).add(ROUNDS[r].ts)
    elif kind == "mutated":
        changed = draw(mutated(json.loads(genuine)))
        script.frames.append(_frame(_json(changed)))
    elif kind == "stranger":
        script.frames.append(_frame(STRANGERS[r].envelope(i).decode()))
    elif kind == "staging":
        script.frames.append(_frame(STAGING[r].envelope(i).decode()))
    elif kind == "truncated":
        whole = _frame(genuine)
        script.frames.append(whole[: draw(st.integers(0, len(whole) - 1))])
    elif kind == "type":
        name = draw(st.one_of(st.text(max_size=10), NASTY))
        script.frames.append(_json({"type": name, "data": json.loads(genuine)}))
    elif kind == "report":  # a plain report put on the way
        report = {"market": MARKETS[i], "ts": ROUNDS[r].ts, "status": "active", "price": "1"}
        script.frames.append(_json({"type": "report", "data": report}))
    elif kind == "error":
        code = draw(st.one_of(st.sampled_from(["unknown_market", "market_removed"]), NASTY))
        markets = draw(st.lists(st.sampled_from([*MARKETS, "NOPE/USD"]), max_size=3))
        error = {"type": "error", "code": code, "message": "x", "markets": markets}
        script.frames.append(_json(error))
    elif kind == "deep":  # nested past the decoder's depth, in any kind of frame
        head = draw(
            st.sampled_from(['"signed","data"', '"subscribed","markets"', '"error","code"'])
        )
        script.frames.append('{"type":' + head + ":" + "[" * 50_000 + "]" * 50_000 + "}")
    elif kind == "ack":
        markets = draw(st.one_of(st.lists(st.sampled_from(MARKETS)), NASTY))
        script.frames.append(_json({"type": "subscribed", "markets": markets}))
    else:
        notice = draw(notices(r))
        script.frames.append(notice[0])
        script.notices.append(notice[0])
        if notice[1] is not None:
            script.told.add(notice[1])


#: What makes a stall notice the key's word: its signature's fields, and the key and domain
#: it names (the frame's `type`, or a key added, change nothing the client reads).
NOTICE_SIGNED = ("code", "ts", "round", "message", "signer", "deployment", "signature")


@st.composite
def notices(draw: st.DrawFn, r: int) -> tuple[str, str | None]:
    """A stall notice of round `r` and, for a genuine one, its words."""
    words = draw(st.sampled_from(["stalled for 9 s", "no round signed", "x" * 300]))
    ts, round_no = ROUNDS[r].ts, ROUNDS[r].round
    genuine = stall_notice(words, ts, round_no, _signer).decode()
    way = draw(st.sampled_from(["genuine", "field", "stranger", "staging", "unsigned"]))
    if way == "genuine":  # true, and replayed after newer rounds: the client judges
        return genuine, words
    if way == "stranger":
        forged = stall_notice(words, ts, round_no, RoundSigner(STRANGER, DEPLOYMENT))
        data = json.loads(forged)
        data["signer"] = KEY.address  # names the allowed key; another key signed it
        return _json(data), None
    if way == "staging":
        return stall_notice(words, ts, round_no, RoundSigner(KEY, "staging")).decode(), None
    data = json.loads(genuine)
    if way == "unsigned":
        data["signature"] = None
        return _json(data), None
    name = draw(st.sampled_from([*data, "extra"]))
    change = draw(st.sampled_from(["flip", "move", "value", "delete"]))
    if change == "flip" and name == "signature":
        data[name] = _flip(data[name], draw(st.integers(0, 200)))
    elif change == "move" and name in ("ts", "round"):
        data[name] = data[name] + draw(st.sampled_from([-1, 1, 250, 10_000]))
    elif change == "delete":
        data.pop(name, None)
    else:
        data[name] = draw(st.one_of(st.text(max_size=12), NASTY))
    original = json.loads(genuine)
    kept = all(data.get(k) == original[k] for k in NOTICE_SIGNED)
    return _json(data), words if kept else None  # another `type`, a key added: the same notice


@st.composite
def scripts(draw: st.DrawFn, max_messages: int = 24) -> Script:
    script = Script()
    for _ in range(draw(st.integers(1, max_messages))):
        draw(message(script))
    return script


# -- the invariants ---------------------------------------------------------------------------


def check(client: OracleClient, script: Script) -> None:
    """What a hostile peer must never achieve, read through the client's public API."""
    assert not client.equivocations and not client.equivocated  # no forgery withdraws the key
    assert set(client.markets) <= set(MARKETS)
    for stall in client.stalled.values():  # hidden only by the key's own word
        assert stall.message in script.told and stall.signer == KEY.address
    for market in client.markets:
        view = client.price(market)
        for report in view.reports:
            assert report.signer == KEY.address and report.identity == KEY.address
            genuine = GENUINE[(market, report.ts)]
            round_no, status, price, confidence, expo, mark, mode = genuine
            assert (report.round, report.status, report.mark_mode) == (round_no, status, mode)
            live = status in ("active", "degraded")
            assert report.price == (Decimal(price).scaleb(expo) if live else None)
            assert report.confidence == (Decimal(confidence).scaleb(expo) if live else None)
            marked = live and mark is not None and mode != "none"
            assert report.mark == (Decimal(mark).scaleb(expo) if marked else None)
        if view.price is not None:
            assert view.ts is not None
            assert view.price == Decimal(GENUINE[(market, view.ts)][2]).scaleb(
                GENUINE[(market, view.ts)][4]
            )
        sent = script.genuine.get(market)
        if sent and not view.stalled:  # never older than the newest genuine frame sent
            assert view.ts is not None and view.ts >= max(sent)
    for market in script.genuine:
        assert market in client.markets, f"{market}: genuine frames sent, none taken"
    # bounded, whatever was sent: the codes counted are the contract's and the client's own,
    # the markets unavailable are the daemon's
    assert set(client.stream_errors) <= CODES
    assert all(set(markets) <= set(MARKETS) for markets in client.unavailable.values())
    assert len(client.rejections) <= 256
    assert set(client.rejected) == set(REASONS)


def _client() -> OracleClient:
    return OracleClient(
        {KEY.address}, deployment=DEPLOYMENT, max_age_ms=MAX_AGE_MS, now_ms=lambda: NOW
    )


# -- through a WebSocket ----------------------------------------------------------------------


async def _over_ws(script: Script) -> OracleClient:
    """Serve the script as the daemon's `/v1/stream` on loopback to `watch_ws`; returns the
    client once it has read the fence after it (its task still running)."""
    client = _client()
    connections: list[int] = []

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        await ws.receive_json()
        connections.append(1)
        if len(connections) == 1:
            for frame in script.frames:
                await ws.send_str(frame)
        await ws.send_str(_json({"type": "error", "code": FENCE, "message": "fence"}))
        async for _ in ws:  # until the client goes
            pass
        return ws

    app = web.Application()
    app.router.add_get("/v1/stream", stream)
    async with DaemonServer(app, host="127.0.0.1") as server:
        watcher = asyncio.create_task(client.watch_ws(str(server.make_url("/")), reconnect_s=0))
        try:
            async with asyncio.timeout(SAFETY_S):
                while not client.stream_errors[FENCE]:
                    assert not watcher.done(), watcher
                    await asyncio.sleep(0.005)
            assert not watcher.done()  # refusing never ends the watch
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
    assert connections == [1]  # nothing in the script ended the connection
    return client


@settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scripts())
def test_a_hostile_stream_never_moves_a_view_off_the_signed_rounds(script: Script) -> None:
    """Genuine signed frames of four rounds, mutated in every field, replayed out of order,
    mixed with frames of another key and another deployment, unknown types, cut-short frames,
    error frames of any code and forged stall notices, sent to `watch_ws` on one connection:
    the watch reads them all and runs on, and every view holds only genuine leaves of the
    allowed key, as new as the newest genuine frame sent, with no equivocation charged."""
    check(asyncio.run(_over_ws(script)), script)


# -- through NATS -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = NatsServer(Path(tmp_path_factory.mktemp("nats")), jetstream=False)
    asyncio.run(server.start())
    yield server.url
    server.stop()


async def _over_nats(url: str, script: Script) -> OracleClient:
    """Publish the script's signed payloads on `<prefix>.prices.<market>` and its notices on
    `<prefix>.stalled` to `watch_nats`; returns the client once it has read every one."""
    client = _client()
    prefix = "fuzz"
    payloads = [f for f in script.frames if f.startswith('{"type":"signed","data":')]
    payloads = [f[len('{"type":"signed","data":') : -1] for f in payloads]
    watcher = asyncio.create_task(client.watch_nats(url, prefix=prefix))
    publisher = await nats.connect(url, allow_reconnect=False)
    try:
        async with asyncio.timeout(SAFETY_S):
            probe = '{"code":"stalled"}'  # counted as refused: the subscriptions are in
            while not client.stream_errors[STALLED_REFUSED]:
                await publisher.publish(stalled_subject(prefix), probe.encode())
                await asyncio.sleep(0.02)
            notices_before = client.stream_errors[STALLED_REFUSED]
            for payload in payloads:
                subject = price_subject(prefix, MARKETS[0])  # any market's subject reads alike
                await publisher.publish(subject, payload.encode())
            for notice in script.notices:
                await publisher.publish(stalled_subject(prefix), notice.encode())
            await publisher.flush()

            def read() -> bool:
                prices = client.accepted + client.duplicates + client.rejected.total()
                told = client.stream_errors["stalled"] + client.stream_errors[STALLED_REFUSED]
                return prices >= len(payloads) and told >= notices_before + len(script.notices)

            while not read():
                assert not watcher.done(), watcher
                await asyncio.sleep(0.005)
        assert not watcher.done()
    finally:
        await publisher.close()
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    return client


@settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scripts())
def test_a_hostile_bus_publisher_never_moves_a_view_off_the_signed_rounds(
    nats_url: str, script: Script
) -> None:
    """The same messages published on a real nats-server by anyone who may publish there: the
    signed payloads on the price subjects, the stall notices on `.stalled`. `watch_nats` reads
    every one and runs on, and the views keep to the genuine leaves of the allowed key."""
    check(asyncio.run(_over_nats(nats_url, script)), script)
