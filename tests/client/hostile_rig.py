"""Hostile input for the consumers of signed prices (`OracleClient`, the margin service's
signed mode): real signed frames of a real signer, and hypothesis strategies that mutate them.

The frames are `RoundSigner`'s (the daemon's code) with a throwaway key, over four real rounds
of a real core (ETH/USD a perpetual: its mark and mode signed too); the same rounds signed by a
key not allowed and for another deployment; the key's real stall notices. `scripts()` draws what
a peer sends (a `Script`) and records what the test may know of it: the genuine frames sent
untouched, and the words of the genuine stall notices.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from hypothesis import strategies as st
from publish_rig import Rounds, make_config

from oracled.client import STALLED_REFUSED
from oracled.publish.signer import RoundSigner, SignedRound, SigningKey
from oracled.publish.signstall import stall_notice

KEY = SigningKey.from_hex("0x" + "6b" * 32)  # throwaway: the genuine frames' signer
STRANGER = SigningKey.from_hex("0x" + "7c" * 32)  # valid signatures, not an allowed key
DEPLOYMENT = "test"
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


def flip(text: str, at: int) -> str:
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
            + ["tamper"] * 6  # the attack that matters most: another price
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
                flip(data["proof"][k], at),
                *data["proof"][k + 1 :],
            ]
        elif what != "proof":
            data[what] = flip(data[what], at)
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
    elif way == "tamper":  # a price that reads as one, other than the one signed
        what = draw(st.sampled_from(["price"] * 3 + ["confidence", "mark", "status", "mark_mode"]))
        if what == "status":
            data[what] = draw(st.sampled_from(["active", "degraded", "paused", "unknown"]))
        elif what == "mark_mode":
            data[what] = draw(st.sampled_from(["perps", "fallback", "none"]))
        else:
            delta = draw(st.sampled_from([-(10**6), -1, 1, 10**6]))
            data[what] = str(int(data.get(what) or 0) + delta)
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


def as_json(value: Any) -> str:
    """JSON as the daemon writes it (no spaces): the client reads frames by their first bytes."""
    return json.dumps(value, separators=(",", ":"))


def signed_frame(payload: str) -> str:
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
        script.frames.append(signed_frame(genuine))
        script.genuine.setdefault(MARKETS[i], set()).add(ROUNDS[r].ts)
    elif kind == "mutated":
        changed = draw(mutated(json.loads(genuine)))
        script.frames.append(signed_frame(as_json(changed)))
    elif kind == "stranger":
        script.frames.append(signed_frame(STRANGERS[r].envelope(i).decode()))
    elif kind == "staging":
        script.frames.append(signed_frame(STAGING[r].envelope(i).decode()))
    elif kind == "truncated":
        whole = signed_frame(genuine)
        script.frames.append(whole[: draw(st.integers(0, len(whole) - 1))])
    elif kind == "type":
        name = draw(st.one_of(st.text(max_size=10), NASTY))
        script.frames.append(as_json({"type": name, "data": json.loads(genuine)}))
    elif kind == "report":  # a plain report put on the way
        report = {"market": MARKETS[i], "ts": ROUNDS[r].ts, "status": "active", "price": "1"}
        script.frames.append(as_json({"type": "report", "data": report}))
    elif kind == "error":
        code = draw(st.one_of(st.sampled_from(["unknown_market", "market_removed"]), NASTY))
        markets = draw(st.lists(st.sampled_from([*MARKETS, "NOPE/USD"]), max_size=3))
        error = {"type": "error", "code": code, "message": "x", "markets": markets}
        script.frames.append(as_json(error))
    elif kind == "deep":  # nested past the decoder's depth, in any kind of frame
        head = draw(
            st.sampled_from(['"signed","data"', '"subscribed","markets"', '"error","code"'])
        )
        script.frames.append('{"type":' + head + ":" + "[" * 50_000 + "]" * 50_000 + "}")
    elif kind == "ack":
        markets = draw(st.one_of(st.lists(st.sampled_from(MARKETS)), NASTY))
        script.frames.append(as_json({"type": "subscribed", "markets": markets}))
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
        return as_json(data), None
    if way == "staging":
        return stall_notice(words, ts, round_no, RoundSigner(KEY, "staging")).decode(), None
    data = json.loads(genuine)
    if way == "unsigned":
        data["signature"] = None
        return as_json(data), None
    name = draw(st.sampled_from([*data, "extra"]))
    change = draw(st.sampled_from(["flip", "move", "value", "delete"]))
    if change == "flip" and name == "signature":
        data[name] = flip(data[name], draw(st.integers(0, 200)))
    elif change == "move" and name in ("ts", "round"):
        data[name] = data[name] + draw(st.sampled_from([-1, 1, 250, 10_000]))
    elif change == "delete":
        data.pop(name, None)
    else:
        data[name] = draw(st.one_of(st.text(max_size=12), NASTY))
    original = json.loads(genuine)
    kept = all(data.get(k) == original[k] for k in NOTICE_SIGNED)
    return as_json(data), words if kept else None  # another `type`, a key added: the same notice


@st.composite
def scripts(draw: st.DrawFn, max_messages: int = 24) -> Script:
    script = Script()
    for _ in range(draw(st.integers(1, max_messages))):
        draw(message(script))
    return script


def scripted_stream(
    frames: Sequence[str], fence: str, connections: list[int]
) -> Callable[[web.Request], Awaitable[web.WebSocketResponse]]:
    """A handler serving the daemon's `/v1/stream` as a script: after the peer's subscription
    request, `frames` (on the first connection only), then `fence`, held open until the peer
    goes. Each connection appends to `connections`, so that a test sees a reconnect."""

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        if (await ws.receive()).type is not WSMsgType.TEXT:  # the peer left, asking nothing
            return ws
        connections.append(1)
        if len(connections) == 1:
            for frame in frames:
                await ws.send_str(frame)
        await ws.send_str(fence)
        async for _ in ws:  # until the peer goes
            pass
        return ws

    return stream


def redirecting(status: int, to: str, asked: list[int]) -> web.Application:
    """A daemon's address whose `/v1/stream` answers `status` pointing at `to` (another
    server): what a hijacked name, a captive portal or a proxy in the way does. Each handshake
    appends to `asked`."""

    async def moved(request: web.Request) -> web.Response:
        asked.append(1)
        return web.Response(status=status, headers={"Location": to})

    app = web.Application()
    app.router.add_get("/v1/stream", moved)
    return app
