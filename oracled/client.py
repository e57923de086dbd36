"""`oracled.client`: a consumer that trusts only what it can verify.

`OracleClient` takes signed prices (the stream's `signed` frames, or the NATS price subjects),
checks each against the round signature and the configured allowed signers, and keeps per market
the latest verified price of every signer. A market's price is the median of the live, fresh
reports of at least `quorum` distinct signers; below that the market is `unknown` (or `paused`
when enough signers agree there is no price). Nothing it cannot verify ever moves a price: every
refused message is counted and kept with its reason.

    client = OracleClient({"0xAbc...", "0xDef..."}, deployment="production", quorum=2)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(client.watch_ws("http://10.0.0.1:8480"))
        tg.create_task(client.watch_ws("http://10.0.0.2:8480"))
    ...
    view = client.price("BTC/USD")  # MarketView(status="active", price=Decimal("64000.12"), ...)

The quorum counts signers by key, unless the allowed signers are given as a mapping of
identities to their addresses (`{"daemon-a": {old, new}, "daemon-b": {...}}`): then it counts
identities, each by its newest fresh report, so that one daemon's old and new key during a key
rotation are one signer, not two.

A perpetual market's signed prices carry its mark and mark mode in their leaf (`PerpPrice`):
each signer's report keeps them, and `MarketView.mark` is the median mark of the signers that
made the price.

Reasons a message is refused (`Rejection.reason`):

    malformed       not JSON of a known shape, or signed values spelled otherwise than the
                    daemon writes them (`+5`, ` 5`, `05`, a hash without `0x`)
    truncated       cut off: incomplete JSON, or a proof shorter than the round's tree
    unsigned        a plain report, without a signature
    bad_proof       the proof does not fit the round (index outside it, a hash too many)
    bad_signature   the signature is not a valid secp256k1 signature
    forged          the fields, proof and signature do not match (a changed price, a wrong root,
                    or a signature by someone other than the named signer)
    unknown_signer  a valid signature by a key that is not allowed
    wrong_deployment  signed for another deployment than the client's (or a message of the
                    old format, which names none): a staging price at a production consumer
    stale           older than `max_age_ms`
    future          ahead of the local clock by more than `max_future_ms`
    replayed        a report for a market and round already accepted from this signer, with
                    the same signed content written otherwise (the very same report again is
                    no rejection: it is counted in `duplicates`)
    reordered       older than a report already accepted from this signer for this market
    equivocation    the signer signed two different rounds for one round time (another root,
                    round number or count, or another leaf of the market): its key signs for
                    daemons whose rounds
                    differ (replicas sharing one key) or is in other hands. Every report of that
                    signer for that time is refused, the one accepted first is withdrawn, and
                    the two messages are kept as evidence in `equivocations` (the first one
                    whole while it is the newest of its market: `Equivocation`)

Refusals are also logged (`client rejected`, a warning with the reason and, for a wrong signer,
the signer and the allowed ones), at most one line per reason every `log_every_ms`; the next
line says how many it held back (`suppressed`), so a flood cannot fill the disk.

A daemon whose round loop has stalled says so on its stream (a `stalled` error frame): its
latest round is no current price, however young. `watch_ws` then takes every report held from
that daemon (its identity: the signer the frame names) as not current until a report of a newer
round arrives from it; views leave them out and name the `Stall` in `MarketView.stalled`, so a
`max_age_ms` longer than the daemon's stall limit does not keep a stalled round's price as
current. A daemon whose rounds run but go unsigned for longer than that limit sends its signed
subscribers the same frame (naming its last signed round), taken the same way. `watch_nats`
does the same with the notice a daemon publishes on `<prefix>.stalled`. Both are the daemon's
StallNotice, which names its signer and is signed by it (`OracleStall`), the same bytes on the
bus and on the signed streams: anyone who can publish on the bus, or who stands between a
client and its daemon (a relay, a proxy), could otherwise send one after every round and hide
the daemon. A notice or frame is taken only with a signature by the signer it names, in the
client's deployment, and only when it is plausible by the client's own clock too: the signer's
newest round is older than `stall_notice_min_age_ms` and than twice the gap between its last
two rounds, as it is when a daemon sends one (past its stall limit: 3 round intervals, 5 s at
least). Notices taken count in `stream_errors["stalled"]`, the others (the unsigned frame of a
report stream among them) in `stream_errors["stalled_refused"]`, logged at most once per
`log_every_ms` per kind (`client stream ...` and `client nats ...`). A stream that cannot
connect (`client stream failed`) is said at most once per `log_every_ms` per daemon too, and so
is a NATS server that cannot be reached (`client nats error`, per list of servers). What waits
to be verified on NATS is bounded (`NATS_PENDING_MSGS`, `NATS_PENDING_BYTES`): past it a
flood's messages are dropped, counted in `nats_dropped`, and the markets' views name the
subscription in `MarketView.lagging` until it has caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import aiohttp
import msgspec
import structlog
from eth_utils.address import to_checksum_address

from oracled.client_seen import LeafValues, Seen, leaf_values
from oracled.client_stream import ERROR_CODES, STALLED, Request, Subscriptions
from oracled.eth import keccak
from oracled.headers import redirected_to
from oracled.publish.signer import (
    SignatureError,
    SignedPrice,
    leaf_hash,
    recover_signer,
    root_from_proof,
    round_digest,
    stall_digest,
)
from oracled.urls import shown_url

__all__ = [
    "NATS_PENDING_BYTES",
    "NATS_PENDING_MSGS",
    "REASONS",
    "STALLED_REFUSED",
    "STALL_NOTICE_MIN_AGE_MS",
    "Equivocation",
    "MarketView",
    "OracleClient",
    "Rejection",
    "SignerReport",
    "Stall",
    "verify",
    "verify_signed",
]

REASONS = (
    "malformed",
    "truncated",
    "unsigned",
    "bad_proof",
    "bad_signature",
    "forged",
    "unknown_signer",
    "wrong_deployment",
    "stale",
    "future",
    "replayed",
    "reordered",
    "equivocation",
)
_LIVE = frozenset({"active", "degraded"})
_RECOVERED_MAX = 4096  # cached signature recoveries (a few rounds of every signer)
#: Round times remembered per signer with the round it signed for each (to catch a second one),
#: more than `SEEN_PER_KEY`: a message of any time still fresh must find its round here.
_ROUNDS_PER_SIGNER = 256
#: A stall notice is taken only when the signer's newest round is at least this old: a
#: daemon sends one past its stall limit (5 s at least), less the clock skew `max_future_ms`
#: allows by default.
STALL_NOTICE_MIN_AGE_MS = 3_000
#: `stream_errors` label of the stall notices refused (taken ones count as `stalled`).
STALLED_REFUSED = "stalled_refused"
#: What `watch_nats` lets wait per subscription before the NATS library drops (its own
#: defaults, 512k messages and 128 MB, let anyone who may publish on the bus fill memory while
#: verification lags). Sized for the `>` subscription: a signed report is 1,150 B at 1,000
#: markets (a proof of 10 hashes), and this holds 4 rounds of 1,000 markets from 4 daemons.
NATS_PENDING_MSGS = 16_384
NATS_PENDING_BYTES = 20 * 1024 * 1024
#: Limits of the stall notices' subscription (one a stalled round per daemon, about 400 B),
#: and the least share of a named market's subscription (unless the limits given are lower).
NATS_PENDING_MIN_MSGS = 1_024
NATS_PENDING_MIN_BYTES = 1024 * 1024

_log = structlog.get_logger("oracled.client")


class Rejection(Exception):
    """A message the client refused; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str = "", signer: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.signer = signer  # who actually signed, when that is why (unknown_signer, equivocation)
        super().__init__(f"{reason}: {detail}" if detail else reason)


class _Frame(msgspec.Struct):
    """A stream frame (`{"type": ..., "data": ...}`) or a bare payload (NATS)."""

    type: str | None = None
    data: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)  # empty when absent
    signature: str | None = None
    market: str | None = None


class _ErrorFrame(msgspec.Struct):
    """`{"type": "error", "code": ..., "message": ...}`: the daemon refused a request."""

    code: str = "unknown"
    message: str = ""
    markets: list[str] = msgspec.field(default_factory=list)  # market_removed names them


class _StallNotice(msgspec.Struct):
    """A daemon's stall notice (`<prefix>.stalled`, a signed stream's `stalled` frame): the
    stream's `stalled` frame plus the round it names, its signer and the signer's signature over
    them (absent from a daemon that does not sign, and from a report stream's frame)."""

    code: str
    ts: int | None = None  # none in a report stream's frame, which names no round either
    message: str = ""
    signer: str | None = None
    deployment: str | None = None
    round: int | None = None
    signature: str | None = None


class _AckFrame(msgspec.Struct):
    """`{"type": "subscribed", "markets": [...]}`: the connection's whole set now."""

    markets: list[str] = msgspec.field(default_factory=list)


class _SignedFrame(msgspec.Struct):
    """A `signed` stream frame decoded in one pass (`_Frame`'s fields, `data` typed): the usual
    message; anything it does not decode goes the two-step way, which says what is wrong."""

    type: str | None = None
    data: SignedPrice | None = None
    signature: str | None = None
    market: str | None = None


_FRAME = msgspec.json.Decoder(_Frame)
#: What decoding a peer's JSON raises for what it cannot read: msgspec raises RecursionError,
#: not DecodeError, for JSON nested past the interpreter's recursion limit (`[[[[...`), which
#: ended `watch_ws` (and `feed` raised it instead of a Rejection).
_UNREADABLE = (msgspec.DecodeError, RecursionError)
_SIGNED = msgspec.json.Decoder(SignedPrice)
_SIGNED_FRAME = msgspec.json.Decoder(_SignedFrame)
_MEMO_MAX = 16_384  # entries per `_Memo` table: a few rounds of every signer at 1,000 markets


class _Memo:
    """What verifying the markets of a round repeats, kept across messages by `OracleClient`.

    Each table caches a pure function of its key, so a hit is what computing gives: Merkle
    nodes (keccak of a pair; a round's proofs share their upper levels, two sibling leaves
    their first pair), round digests (one per signed round, the same for its every market) and
    the keccak of market names. Each is emptied when full, so a flood of made-up rounds costs
    memory no more than a few real ones.
    """

    __slots__ = ("digests", "markets", "nodes")

    def __init__(self) -> None:
        self.nodes: dict[bytes, bytes] = {}
        self.digests: dict[tuple[int, int, int, bytes, str], bytes] = {}
        self.markets: dict[str, bytes] = {}

    def market_hash(self, market: str) -> bytes:
        found = self.markets.get(market)
        if found is None:
            if len(self.markets) >= _MEMO_MAX:
                self.markets.clear()
            found = self.markets[market] = keccak(market.encode())
        return found

    def digest(self, ts: int, round_no: int, count: int, root: bytes, deployment: str) -> bytes:
        key = (ts, round_no, count, root, deployment)
        found = self.digests.get(key)
        if found is None:
            if len(self.digests) >= _MEMO_MAX:
                self.digests.clear()
            found = self.digests[key] = round_digest(ts, round_no, count, root, deployment)
        return found

    def tree(self) -> dict[bytes, bytes]:
        """The Merkle node table, emptied first when full (a proof adds a few dozen at most)."""
        if len(self.nodes) >= _MEMO_MAX:
            self.nodes.clear()
        return self.nodes


_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def _hex(text: str, size: int | None, what: str) -> bytes:
    """`0x` and hex digits, nothing else (bytes.fromhex alone would skip spaces)."""
    if size is not None and len(text) == 2 + 2 * size and text.startswith("0x"):
        # The usual case at a third of the cost: `size` bytes out of 2 x `size` characters
        # means fromhex skipped none, so every one was a hex digit.
        try:
            raw = bytes.fromhex(text[2:])
        except ValueError:
            pass
        else:
            if len(raw) == size:
                return raw
    body = text[2:]
    if not text.startswith("0x") or not _HEX_DIGITS.issuperset(body):
        raise Rejection("malformed", f"{what} is not 0x and hex digits")
    try:
        raw = bytes.fromhex(body)
    except ValueError:  # an odd number of digits
        raise Rejection("malformed", f"{what} is not hex") from None
    if size is not None and len(raw) != size:
        raise Rejection("truncated" if len(raw) < size else "malformed", f"{what} size")
    return raw


_KINDS = {f'{{"type":"{kind}"': kind for kind in ("signed", "subscribed", "error")}


def _kind(data: str) -> str | None:
    """A stream frame's `type`: told by its first bytes as the daemon writes it, else read
    (a relay or proxy that writes JSON its own way, with spaces or keys in another order, is
    no reason to drop a frame unread, and uncounted: its prices went unknown without a word)."""
    kind = _KINDS.get(data[: data.find('"', 9) + 1])
    if kind is not None:
        return kind
    try:
        return _FRAME.decode(data).type
    except _UNREADABLE:
        return None


def _decode(data: bytes | str) -> SignedPrice:
    """The SignedPrice in a stream frame or NATS payload; Rejection for anything else."""
    try:
        quick = _SIGNED_FRAME.decode(data)
    except _UNREADABLE:
        pass  # read again below, for the reason
    else:
        if quick.type == "signed" and quick.data is not None:
            return quick.data
    try:
        frame = _FRAME.decode(data)
    except _UNREADABLE as exc:
        reason = "truncated" if "truncated" in str(exc) else "malformed"
        raise Rejection(reason, str(exc)) from None
    if frame.type is not None:  # a stream frame
        if frame.type == "report":
            raise Rejection("unsigned", "a report frame carries no signature")
        if frame.type != "signed" or not len(frame.data):
            raise Rejection("malformed", f"frame type {frame.type!r}")
        payload: bytes | str = frame.data
    else:
        if frame.signature is None and frame.market is not None:
            raise Rejection("unsigned", "a report without a signature")
        payload = data
    try:
        return _SIGNED.decode(payload)
    except msgspec.ValidationError as exc:
        raise Rejection("malformed", str(exc)) from None
    except _UNREADABLE as exc:
        reason = "truncated" if "truncated" in str(exc) else "malformed"
        raise Rejection(reason, str(exc)) from None


def verify(
    data: bytes | str,
    allowed: Collection[str],
    *,
    deployment: str,
    recovered: dict[tuple[bytes, bytes], str] | None = None,
) -> SignedPrice:
    """`verify_signed` without the signer (see there)."""
    return verify_signed(data, allowed, deployment=deployment, recovered=recovered)[0]


def verify_signed(
    data: bytes | str,
    allowed: Collection[str],
    *,
    deployment: str,
    recovered: dict[tuple[bytes, bytes], str] | None = None,
    memo: _Memo | None = None,
) -> tuple[SignedPrice, str]:
    """Check one signed price against its round signature and the allowed signers.

    Returns the SignedPrice and its signer's EIP-55 address when the proof leads to the signed
    root and the signature is by an allowed signer in the domain of `deployment` (the one this
    consumer expects: the message's own `deployment` only names the one it claims, so a claim
    of another one is refused early with a clear reason, and the signature is always checked
    against `deployment`); raises Rejection otherwise. Freshness and order are the client's
    business.
    `recovered` caches (digest, signature) -> signer: every market of a round shares one
    signature, so a client that keeps it recovers one public key per round, not per market.
    `memo` (`OracleClient`'s) caches the hashing a round's markets share.
    """
    if not deployment:
        raise ValueError("deployment: name the deployment whose signatures to accept")
    sp = _decode(data)
    if sp.deployment != deployment:
        claimed = (
            "none (the format before deployments)"
            if sp.deployment is None
            else (repr(sp.deployment[:64]))
        )
        raise Rejection(
            "wrong_deployment", f"signed for deployment {claimed}, expected {deployment!r}"
        )
    try:
        leaf = sp.leaf()
        hashed = leaf_hash(leaf, None if memo is None else memo.market_hash(sp.market))
    except ValueError as exc:
        raise Rejection("malformed", str(exc)) from None
    proof = [_hex(h, 32, "proof") for h in sp.proof]
    signature = _hex(sp.signature, 65, "signature")
    claimed_root = _hex(sp.root, 32, "root")
    if not 0 < sp.count < 1 << 32 or not 0 <= sp.round < 1 << 64:
        raise Rejection("malformed", "count or round out of range")
    try:
        nodes = None if memo is None else memo.tree()
        root = root_from_proof(hashed, sp.index, sp.count, proof, nodes)
    except SignatureError as exc:
        raise Rejection(exc.reason, str(exc)) from None
    if root != claimed_root:
        raise Rejection("forged", "the leaf and proof do not lead to the signed root")
    if memo is None:
        digest = round_digest(sp.ts, sp.round, sp.count, root, deployment)
    else:
        digest = memo.digest(sp.ts, sp.round, sp.count, root, deployment)
    signer = recovered.get((digest, signature)) if recovered is not None else None
    if signer is None:
        try:
            signer = recover_signer(digest, signature)
        except SignatureError as exc:
            raise Rejection(exc.reason, str(exc)) from None
        if recovered is not None:
            if len(recovered) >= _RECOVERED_MAX:
                recovered.clear()
            recovered[(digest, signature)] = signer
    if signer != sp.signer and signer.lower() != sp.signer.lower():
        raise Rejection("forged", f"signed by {signer}, not by the named {sp.signer[:42]}")
    # `allowed` as the caller wrote it (OracleClient passes EIP-55): any case counts, checked
    # only on the way to a refusal.
    if signer not in allowed and signer.lower() not in {a.lower() for a in allowed}:
        raise Rejection("unknown_signer", signer, signer=signer)
    return sp, signer


@dataclass(frozen=True, slots=True)
class SignerReport:
    """One signer's latest verified report of a market."""

    signer: str
    ts: int
    round: int
    status: str
    price: Decimal | None  # None unless live
    confidence: Decimal | None
    mark: Decimal | None = None  # a perpetual's signed mark; None for spot or without one
    mark_mode: str | None = None  # perps / fallback / none; None for a spot market
    #: Whose key `signer` is: the identity it is allowed under, or the address itself when the
    #: allowed signers are a plain collection (the client always sets it).
    identity: str = ""


@dataclass(frozen=True, slots=True)
class Equivocation:
    """Two messages one key signed for the same round time that cannot both be true.

    Either the key signs for several daemons whose rounds differ (replicas given one key) or
    someone else holds it. Both messages verify: they are the evidence to show its operator.
    `first` is None in one case only: another leaf of a market under the same root at a time
    older than the signer's newest report of that market, whose whole message the client no
    longer keeps (`oracled.client_seen`: of each signer and market only the newest is kept
    whole, the earlier ones without their proofs); `second` then proves the leaf it signed.
    """

    signer: str
    ts: int
    #: Accepted first: the key's report of `ts` the client held (the round's first message for
    #: another round; the market's, while it is the newest, for another leaf of it).
    first: SignedPrice | None
    second: SignedPrice  # the conflicting one: another round, or another leaf of the market


@dataclass(frozen=True, slots=True)
class Stall:
    """A daemon said its rounds have stalled: its reports up to `ts` are not current.

    The daemon's notice (a signed stream's `stalled` frame, or one on the bus) names the key
    that signed it. It stands for the whole identity (a daemon with all its keys) until a report
    of a round after `ts` arrives from it.
    """

    signer: str  # the key that said it (`note_stalled`'s)
    identity: str  # whose reports are left out (the address itself without identities)
    ts: int  # the newest round time held from the identity when told: reports up to it
    message: str  # the daemon's words (the round's age and its limit)
    source: str  # where it was said: the `watch_ws` base URL, or the NATS subject
    at_ms: int  # when the client was told, by its clock


@dataclass(frozen=True, slots=True)
class MarketView:
    """What the client believes about a market now.

    `status` is `active` or `degraded` with a `price` (the median of `signers`' live prices), or
    `paused` (at least a quorum of fresh signers, but fewer than a quorum with a price), or
    `unknown` (fewer than a quorum of fresh verified reports).
    """

    market: str
    status: str
    price: Decimal | None
    ts: int | None  # the newest round time among the reports used
    signers: tuple[str, ...]  # whose reports made the price (or the status)
    reports: tuple[SignerReport, ...]  # every fresh verified report, one per signer (not stalled)
    #: A perpetual's mark: the median of the signed marks of `signers`, when every one of them
    #: has one (a signer without a mark would otherwise leave fewer than a quorum behind it).
    mark: Decimal | None = None
    #: The identities of `signers`, sorted: what the quorum counted (each signer's address
    #: when the allowed signers are a plain collection).
    identities: tuple[str, ...] = ()
    #: Why fresh reports of the market were left out: the stalls of the identities whose
    #: reports were, by identity (their reports are not in `reports`).
    stalled: tuple[Stall, ...] = ()
    #: The NATS subscriptions carrying the market (`watch_nats`) that dropped messages and have
    #: not caught up since: newer reports than those held may have been lost (sorted).
    lagging: tuple[str, ...] = ()


@dataclass(slots=True)
class _Lag:
    """A NATS subscription's slow-consumer episode: from its first drop until it has caught
    up (its queue empty after a new report it accepted)."""

    subject: str
    market: str | None  # None: every market (`<prefix>.prices.>`)
    since_ms: int
    dropped: int = 0


def _median(values: list[Decimal]) -> Decimal:
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2


def _identities(allowed: Iterable[str] | Mapping[str, str | Iterable[str]]) -> dict[str, str]:
    """EIP-55 address -> identity: the mapping's keys, else each address its own identity."""
    if not isinstance(allowed, Mapping):
        return {address: address for address in map(to_checksum_address, allowed)}
    out: dict[str, str] = {}
    for identity, addresses in allowed.items():
        listed = [addresses] if isinstance(addresses, str) else list(addresses)
        if not listed:
            raise ValueError(f"allowed signer {identity!r}: give it at least one address")
        for address in map(to_checksum_address, listed):
            if out.setdefault(address, identity) != identity:
                raise ValueError(f"{address} is allowed for both {out[address]!r} and {identity!r}")
    return out


def _newest_per_identity(reports: Iterable[SignerReport]) -> list[SignerReport]:
    """Each identity's newest report (the later address on a tie): what it says now."""
    newest: dict[str, SignerReport] = {}
    for r in reports:
        kept = newest.get(r.identity)
        if kept is None or (r.ts, r.signer) > (kept.ts, kept.signer):
            newest[r.identity] = r
    return list(newest.values())


class OracleClient:
    """Verifies signed prices from any number of daemons and keeps the quorum view per market."""

    def __init__(
        self,
        allowed_signers: Iterable[str] | Mapping[str, str | Iterable[str]],
        *,
        deployment: str,
        quorum: int = 1,
        max_age_ms: int = 5_000,
        max_future_ms: int = 2_000,
        now_ms: Callable[[], int] | None = None,
        keep_rejections: int = 256,
        log_every_ms: int = 10_000,
        stall_notice_min_age_ms: int = STALL_NOTICE_MIN_AGE_MS,
    ) -> None:
        #: Allowed address (EIP-55) -> the identity the quorum counts it as.
        self.identity_of: Mapping[str, str] = _identities(allowed_signers)
        allowed = frozenset(self.identity_of)
        if not allowed:
            raise ValueError("allow at least one signer")
        identities = len(set(self.identity_of.values()))
        if not 1 <= quorum <= identities:
            raise ValueError(f"quorum must be between 1 and the {identities} allowed signers")
        if not deployment:
            raise ValueError("deployment: name the deployment whose signatures to accept")
        self.allowed = allowed
        self.deployment = deployment
        self.quorum = quorum
        self.max_age_ms = max_age_ms
        self.max_future_ms = max_future_ms
        #: How old the signer's newest round must be for a stall notice to be taken.
        self.stall_notice_min_age_ms = stall_notice_min_age_ms
        self._now_ms = now_ms or (lambda: time.time_ns() // 1_000_000)
        self._latest: dict[str, dict[str, SignerReport]] = {}
        # Per (signer, market), the last `SEEN_PER_KEY` reports accepted (duplicates, replays,
        # another leaf at one of those times, views up to an earlier round).
        self._seen: dict[tuple[str, str], Seen] = {}
        self._recovered: dict[tuple[bytes, bytes], str] = {}
        self._memo = _Memo()
        # Per signer, round time -> the first report accepted at it (whose round every other
        # report of that time must share), or None once the signer equivocated at that time.
        self._rounds: dict[str, dict[int, SignedPrice | None]] = {}
        #: Per signer, the round times at which it signed two different rounds (alert on it).
        self.equivocated: Counter[str] = Counter()
        #: The latest such conflicts, each with both messages (the evidence).
        self.equivocations: deque[Equivocation] = deque(maxlen=keep_rejections)
        self.accepted = 0
        # Reports accepted before that came again (a reconnect's snapshot, a second transport):
        # harmless, so not rejections; they change nothing.
        self.duplicates = 0
        self.rejected: Counter[str] = Counter(dict.fromkeys(REASONS, 0))
        self.rejections: deque[Rejection] = deque(maxlen=keep_rejections)
        self.log_every_ms = log_every_ms
        # Per reason: when its last log line was written, and refusals since then not logged.
        self._logged_at: dict[str, int] = {}
        self._unlogged: Counter[str] = Counter()
        self.updated = asyncio.Event()  # set on every accepted report (for waiters)
        # Error frames a daemon sent on `watch_ws` (a refused subscription), by code.
        self.stream_errors: Counter[str] = Counter()
        # Servers a NATS server announced that `watch_nats` did not keep (`AnnouncedClient`).
        self.announced_refused = 0
        #: Messages the NATS library dropped for `watch_nats`, by subscription subject (its
        #: pending limits reached: the client could not keep up with what was published).
        self.nats_dropped: Counter[str] = Counter()
        # Per (watch, subscription subject), its slow-consumer episode while it lasts.
        self._lagging: dict[tuple[object, str], _Lag] = {}
        # Per daemon URL, the markets `watch_ws` asked for that it refused or removed, by code.
        self.unavailable: dict[str, Mapping[str, str]] = {}
        # Per identity, the newest round time accepted from any of its keys, and how far it
        # was from the one before (a stall notice is plausible only well past it).
        self._newest: dict[str, int] = {}
        self._gap: dict[str, int] = {}
        self._stalled: dict[str, Stall] = {}
        #: Per identity, the daemon's stall while it lasts (read-only view).
        self.stalled: Mapping[str, Stall] = MappingProxyType(self._stalled)

    # -- verification ---------------------------------------------------------------------

    def feed(self, data: bytes | str) -> SignedPrice:
        """Verify one message and, if it passes, make it its signer's latest for the market.

        Raises Rejection (counted, and kept in `rejections`) for anything refused.
        """
        return self._feed(data)[0]

    def _feed(self, data: bytes | str) -> tuple[SignedPrice, str]:
        """`feed`, with the signer (EIP-55) of what it verified (a duplicate's too)."""
        try:
            sp, signer = verify_signed(
                data,
                self.allowed,
                deployment=self.deployment,
                recovered=self._recovered,
                memo=self._memo,
            )
            self._check_conflict(sp, signer)
            seen = self._seen.get((signer, sp.market))
            if seen is not None and seen.is_duplicate(sp):
                self.duplicates += 1
                return sp, signer
            self._check_time(sp, signer)
        except Rejection as exc:
            self.rejected[exc.reason] += 1
            self.rejections.append(exc)
            self._log_rejection(exc)
            raise
        self._accept(sp, signer)
        return sp, signer

    def _log_rejection(self, exc: Rejection) -> None:
        """One warning per reason per `log_every_ms` at most: an attack is seen, not a flood."""
        fields: dict[str, Any] = {"reason": exc.reason, "detail": exc.detail[:200]}
        if exc.signer is not None:
            fields["signer"] = exc.signer
            fields["allowed"] = sorted(self.allowed)
        self._warn_every(exc.reason, _log, "client rejected", **fields)

    def _warn_every(self, key: str, log: Any, event: str, **fields: Any) -> None:
        """`event` at most once per `key` per `log_every_ms`, with the number held back since
        (`suppressed`): what anyone can send many of is seen, and fills no disk."""
        now = self._now_ms()
        last = self._logged_at.get(key)
        if last is not None and 0 <= now - last < self.log_every_ms:
            self._unlogged[key] += 1
            return
        self._logged_at[key] = now
        log.warning(event, suppressed=self._unlogged.pop(key, 0), **fields)

    def offer(self, data: bytes | str) -> bool:
        """`feed` that returns False instead of raising (for subscription loops)."""
        try:
            self.feed(data)
        except Rejection:
            return False
        return True

    def _check_conflict(self, sp: SignedPrice, signer: str) -> None:
        """Rejection `equivocation` if `signer` signed another round for `sp.ts` (another root,
        round number or count; or another leaf of the market in it) than a report already
        accepted, or did so before. Checked whatever the message's age: two valid signatures
        are proof however old."""
        rounds = self._rounds.get(signer)
        if rounds is None or sp.ts not in rounds:
            return
        first = rounds[sp.ts]
        if first is None:
            raise Rejection(
                "equivocation",
                f"{signer} signed more than one round at ts {sp.ts}: none of them counts",
                signer=signer,
            )
        if (first.round, first.count, first.root.lower()) != (sp.round, sp.count, sp.root.lower()):
            detail = (
                f"round {sp.round} of {sp.count} markets, root {sp.root[:66]}, after round "
                f"{first.round} of {first.count}, root {first.root}"
            )
        else:
            seen = self._seen.get((signer, sp.market))
            if seen is None or not seen.other_leaf(sp):
                return
            first, detail = seen.message(sp.ts), f"another leaf of {sp.market} in the same root"
        rounds[sp.ts] = None
        self.equivocated[signer] += 1
        self.equivocations.append(Equivocation(signer, sp.ts, first, sp))
        withdrawn = False
        for reports in self._latest.values():
            held = reports.get(signer)
            if held is not None and held.ts == sp.ts:
                del reports[signer]
                withdrawn = True
        if withdrawn:
            self.updated.set()
        raise Rejection(
            "equivocation", f"{signer} signed two rounds at ts {sp.ts}: {detail}", signer=signer
        )

    def _check_time(self, sp: SignedPrice, signer: str) -> None:
        now = self._now_ms()
        if now - sp.ts > self.max_age_ms:
            raise Rejection("stale", f"{sp.market} round {sp.ts} is {now - sp.ts} ms old")
        if sp.ts - now > self.max_future_ms:
            raise Rejection("future", f"{sp.market} round {sp.ts} is ahead of the local clock")
        seen = self._seen.get((signer, sp.market))
        if seen is not None:
            if seen.holds(sp.ts):
                raise Rejection("replayed", f"{sp.market} round {sp.ts} from {signer}")
            if sp.ts < seen.latest:
                raise Rejection("reordered", f"{sp.market} round {sp.ts} < {seen.latest}")

    def _accept(self, sp: SignedPrice, signer: str) -> None:
        seen = self._seen.get(key := (signer, sp.market))
        if seen is None:
            self._seen[key] = Seen(sp)
        else:
            seen.add(sp)
        rounds = self._rounds.setdefault(signer, {})
        if sp.ts not in rounds:
            if len(rounds) >= _ROUNDS_PER_SIGNER:
                del rounds[next(iter(rounds))]
            rounds[sp.ts] = sp
        self._latest.setdefault(sp.market, {})[signer] = self._report(sp, signer)
        identity = self.identity_of[signer]
        newest = self._newest.get(identity)
        if newest is None or sp.ts > newest:
            # The gap that ends a stall told is the stall, not the daemon's pace: taken as the
            # gap, it held off the notice of a second stall (sent once) until twice the first.
            if newest is not None and identity not in self._stalled:
                self._gap[identity] = sp.ts - newest
            self._newest[identity] = sp.ts
        stall = self._stalled.get(identity)
        if stall is not None and sp.ts > stall.ts:  # a round after the stall: current again
            del self._stalled[identity]
            _log.info("client signer current", signer=signer, identity=identity, ts=sp.ts)
        self.accepted += 1
        self.updated.set()

    def _report(self, sp: SignedPrice, signer: str) -> SignerReport:
        """What views read of the latest accepted message."""
        return self._report_of(signer, sp.ts, sp.round, leaf_values(sp))

    def _report_of(self, signer: str, ts: int, round_no: int, values: LeafValues) -> SignerReport:
        """A report from a message's values: the latest, or an earlier one kept (`upto`)."""
        status, price, confidence, expo, mark, mark_mode = values
        live = status in _LIVE
        marked = live and mark_mode not in (None, "none")
        return SignerReport(
            signer=signer,
            ts=ts,
            round=round_no,
            status=status,
            price=Decimal(price).scaleb(expo) if live else None,
            confidence=Decimal(confidence).scaleb(expo) if live else None,
            mark=Decimal(mark).scaleb(expo) if marked and mark is not None else None,
            mark_mode=mark_mode,
            identity=self.identity_of[signer],
        )

    def note_stalled(self, signer: str, message: str, source: str = "") -> Stall | None:
        """`signer`'s daemon says its rounds have stalled (`message`, its words): every report
        held from its identity is not current until one of a newer round arrives.

        `watch_ws` and `watch_nats` call it on a notice they verified; a consumer reading a
        stream itself hands its `stalled` frames to `take_stall`, which verifies them first.
        Returns the stall, or None when nothing is held from that identity (nothing to leave
        out). Logged once per stall (`client signer stalled`), however often it is said.
        """
        address = to_checksum_address(signer)
        identity = self.identity_of.get(address)
        if identity is None:
            raise ValueError(f"{signer} is not an allowed signer")
        newest = self._newest.get(identity)
        if newest is None:
            return None
        stall = self._stalled.get(identity)
        if stall is not None:  # told already: its newest is still the stall's
            return stall
        stall = Stall(address, identity, newest, message, source, self._now_ms())
        self._stalled[identity] = stall
        _log.warning(
            "client signer stalled",
            signer=address,
            identity=identity,
            ts=newest,
            source=source,
            message=message[:200],
        )
        self.updated.set()  # views changed: waiters read them again
        return stall

    # -- the quorum view ------------------------------------------------------------------

    @property
    def markets(self) -> list[str]:
        return sorted(self._latest)

    def price(self, market: str, *, upto: Mapping[str, int] | None = None) -> MarketView:
        """The market's verified price and status now (freshness is judged at call time).

        `upto`: per identity, the newest round time whose reports count (each signer's newest
        report at or before it; an identity not in it counts with none). A consumer that
        takes a daemon's rounds whole gives each identity's last complete round, so that no
        market is priced from a round whose other markets are still to come."""
        now = self._now_ms()
        latest = self._latest.get(market, {})
        fresh = tuple(
            r
            for r in (latest.values() if upto is None else self._held_upto(market, latest, upto))
            if now - r.ts <= self.max_age_ms and r.ts - now <= self.max_future_ms
        )
        stalls: tuple[Stall, ...] = ()
        if self._stalled:
            held = {
                s.identity: s
                for r in fresh
                if (s := self._stalled.get(r.identity)) is not None and r.ts <= s.ts
            }
            if held:
                stalls = tuple(held[i] for i in sorted(held))
                fresh = tuple(
                    r for r in fresh if r.identity not in held or r.ts > held[r.identity].ts
                )
        lagging: tuple[str, ...] = ()
        if self._lagging:
            lagging = tuple(
                sorted({g.subject for g in self._lagging.values() if g.market in (None, market)})
            )
        newest = _newest_per_identity(fresh)  # the quorum counts identities, not keys
        live = [r for r in newest if r.status in _LIVE and r.price is not None]
        if len(live) >= self.quorum:
            status = "active" if all(r.status == "active" for r in live) else "degraded"
            marks = [r.mark for r in live if r.mark is not None]
            return MarketView(
                market=market,
                status=status,
                price=_median([r.price for r in live if r.price is not None]),
                ts=max(r.ts for r in live),
                signers=tuple(sorted(r.signer for r in live)),
                reports=fresh,
                mark=_median(marks) if len(marks) == len(live) else None,
                identities=tuple(sorted(r.identity for r in live)),
                stalled=stalls,
                lagging=lagging,
            )
        if len(newest) >= self.quorum:
            return MarketView(
                market,
                "paused",
                None,
                max(r.ts for r in newest),
                tuple(sorted(r.signer for r in newest)),
                fresh,
                identities=tuple(sorted(r.identity for r in newest)),
                stalled=stalls,
                lagging=lagging,
            )
        return MarketView(market, "unknown", None, None, (), fresh, stalled=stalls, lagging=lagging)

    def _held_upto(
        self, market: str, held: Mapping[str, SignerReport], upto: Mapping[str, int]
    ) -> list[SignerReport]:
        """Per signer of `market`, its newest report at or before its identity's time in
        `upto`: the latest one, or an earlier one it accepted (the last `SEEN_PER_KEY`)."""
        out: list[SignerReport] = []
        for signer, report in held.items():
            limit = upto.get(report.identity)
            if limit is None:
                continue
            if report.ts <= limit:
                out.append(report)
                continue
            seen = self._seen.get((signer, market))
            found = None if seen is None else seen.upto(limit)
            if found is None:
                continue
            ts, kept = found
            # None in `_rounds`: the signer equivocated at that time, which withdrew it.
            if self._rounds.get(signer, {}).get(ts, kept) is not None:
                out.append(self._report_of(signer, ts, kept.round, kept.leaf_values()))
        return out

    def prices(self) -> Mapping[str, MarketView]:
        return {m: self.price(m) for m in self.markets}

    # -- subscriptions --------------------------------------------------------------------

    async def watch_ws(
        self,
        base_url: str,
        markets: Iterable[str] | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        reconnect_s: float = 1.0,
        filters: Mapping[str, Any] | None = None,
        heartbeat_s: float = 20.0,
        retry_s: float = 10.0,
    ) -> None:
        """Subscribe to a daemon's `WS /v1/stream` for signed frames; reconnect forever.

        `filters` passes the stream's per-subscriber options (`deviation`, `heartbeat_ms`).
        A handshake redirected elsewhere is refused before subscribing (`client stream failed`,
        `handshake redirected to <url>`) and tried again: only `base_url` is read.
        The client pings every `heartbeat_s`: a connection whose daemon stopped answering (a
        host gone, a network cut that sent no close) is dropped and made again, not waited on.
        A refused request (an error frame: `signing_disabled`, `unknown_market`...) is logged
        (at most once per code every `log_every_ms`) and counted in `stream_errors` by its code
        (`unknown` for a code docs/contracts.md does not list: anyone on the way could make up
        one per frame). The daemon refuses a whole request for one
        market it does not have (`unknown_market`, `bad_query`): the client then asks for each
        market alone, so that the others still come; a market refused alone, or removed by a
        reload (`market_removed`: of the markets it names, only those the connection gets, by
        name or, with every market, reported or in the last ack), is logged by name and counted
        once, listed in
        `unavailable[base_url]` and asked for again every `retry_s` (a reload may add it back)
        until an ack lists it or a verified price of it arrives; a new connection's first request
        leaves it out (no split on every reconnect) and asks for it alone right after. The
        bookkeeping is `oracled.client_stream.Subscriptions`. A `stalled` error frame (the
        daemon's rounds have stalled) is `note_stalled` for the signer it names, when it is
        that signer's StallNotice as `watch_nats` takes one (signed by it, plausible by the
        client's clock); any other is refused and counted (`stalled_refused`). Runs until
        cancelled.
        """
        own = session is None
        http = session or aiohttp.ClientSession()
        request: dict[str, Any] = {"op": "subscribe", "signed": True, **(filters or {})}
        # None, or an empty list: every market, as the stream's contract says.
        subs = Subscriptions((None if markets is None else list(markets)) or None)
        self.unavailable[base_url] = subs.unavailable
        shown = shown_url(base_url)  # a proxy's user and password stay out of the log
        log = _log.bind(url=shown)
        try:
            while True:
                try:
                    url = base_url.rstrip("/") + "/v1/stream"
                    async with http.ws_connect(url, heartbeat=heartbeat_s) as ws:
                        # Only the daemon named is read, never wherever it (or a proxy) points.
                        if (moved := redirected_to(ws)) is not None:
                            raise aiohttp.ClientError(f"handshake redirected to {moved[:200]}")
                        await self._stream(ws, shown, request, subs, retry_s, log)
                        if ws.close_code is not None:  # the daemon closed it (1008: too slow)
                            log.warning("client stream closed", code=ws.close_code)
                except (aiohttp.ClientError, OSError) as exc:
                    # A daemon down for an hour would be a line every `reconnect_s`.
                    failed = f"stream failed {base_url}"
                    self._warn_every(failed, log, "client stream failed", error=str(exc))
                await asyncio.sleep(reconnect_s)
        finally:
            if own:
                await http.close()

    async def _stream(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        url: str,
        request: dict[str, Any],
        subs: Subscriptions,
        retry_s: float,
        log: Any,
    ) -> None:
        """One connection: subscribe, read until it ends, re-ask for the unavailable markets."""

        async def send(requests: Iterable[Request]) -> None:
            for wanted in requests:
                await ws.send_json(request if wanted is None else {**request, "markets": wanted})

        async def retry_unavailable() -> None:
            while True:
                await asyncio.sleep(retry_s)
                again = subs.retry()
                for wanted in again:
                    log.debug("client subscribe retry", market=wanted[0])
                await send(again)

        await send(subs.start())
        log.info("client subscribed")
        retrying = asyncio.create_task(retry_unavailable(), name="client-retry")
        try:
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                data: str = msg.data
                kind = _kind(data)
                if kind == "subscribed":
                    self._acked(data, subs, log)
                elif kind == "error":
                    await send(self._refused(data, url, subs, log))
                else:  # a price, or no frame the daemon sends: refused, counted by its reason
                    try:
                        sp = self._feed(data)[0]
                    except Rejection:
                        continue
                    if subs.reported(market := sp.market):
                        log.info("client market available", market=market)
        finally:
            retrying.cancel()
            await asyncio.gather(retrying, return_exceptions=True)

    def _acked(self, data: str, subs: Subscriptions, log: Any) -> None:
        """A subscription answered: the markets in its set are served (again)."""
        try:
            listed = msgspec.json.decode(data, type=_AckFrame).markets
        except _UNREADABLE:
            listed = []
        for market in subs.acked(listed):
            log.info("client market available", market=market)

    def _refused(self, data: str, url: str, subs: Subscriptions, log: Any) -> tuple[Request, ...]:
        """An error frame; returns the requests to send (a market each)."""
        try:
            frame = msgspec.json.decode(data, type=_ErrorFrame)
        except _UNREADABLE:
            frame = _ErrorFrame(code="malformed", message=data[:200])
        if frame.code == STALLED:  # answers no request; concerns the daemon, every market
            self._stall_said(data, url, "stream", log)
            return ()
        # `unknown`: a code the contract does not list (`ERROR_CODES`), each a counter kept
        code = frame.code if frame.code in ERROR_CODES else "unknown"
        refusal = subs.refused(code, frame.markets)
        if refusal.kind == "split":
            log.info("client subscription refused", code=code, retry=len(refusal.markets))
            return refusal.send
        if refusal.kind == "repeated":
            return ()  # said already
        self.stream_errors[code] += 1
        message = frame.message[:200]
        for market in refusal.markets:
            log.warning("client market unavailable", market=market, code=code, message=message)
        if refusal.kind == "error":  # one line per code per `log_every_ms`: anyone can send many
            self._warn_every(
                f"stream error {code}",
                log,
                "client stream error",
                code=frame.code[:64],
                message=message,
            )
        return ()

    def take_stall(self, data: bytes | str, source: str = "") -> Stall | None:
        """A `stalled` frame of a signed stream a consumer reads itself (`data`, as sent; from
        `source`, its URL), taken as `watch_ws` takes one: only as the StallNotice of the signer
        it names (signed by it, plausible by the client's clock), counted in `stream_errors`
        as `stalled` or `stalled_refused`, refusals logged (`client stream ...`). Returns the
        stall taken, or None. Its words alone are nobody's: hand the frame here, not to
        `note_stalled`."""
        return self._stall_said(data, source, "stream", _log)

    def _stall_said(self, data: bytes | str, source: str, via: str, log: Any) -> Stall | None:
        """A daemon's stall notice (a `stalled` frame on a stream, or one on the bus):
        `note_stalled` for the signer it names, counted in `stream_errors` as `stalled` when
        taken, `stalled_refused` otherwise."""
        stall = self._stall_notice(data, source, via, log)
        self.stream_errors[STALLED_REFUSED if stall is None else STALLED] += 1
        return stall

    def _stall_notice(self, data: bytes | str, source: str, via: str, log: Any) -> Stall | None:
        """Take a stall notice (the Stall) or refuse it (None). Anyone on the bus, or on the way
        of a stream (a relay, a proxy), can send one, so it is taken only for a signer the client
        holds reports of, with that signer's signature over it in the client's deployment, not
        after a newer round came from that signer (a notice replayed from JetStream, or late),
        and only while its newest round is as old as a daemon's notice can be (older than
        `stall_notice_min_age_ms` and than twice its last gap between rounds, by the client's
        clock): a notice copied and sent again after each round hides nothing. The signature is
        checked last, after the cheap checks, since a flood costs a recovery per notice that
        reaches it. A notice naming no allowed signer of this deployment (signing off, another
        daemon on the bus, the unsigned frame of a stream) is logged only. Each kind of notice
        refused is logged at most once per `log_every_ms` (anyone can send many), as
        `client <via> ...` (`via`: `nats` or `stream`; `source`: the subject or the URL)."""
        try:
            notice = msgspec.json.decode(data, type=_StallNotice)
        except _UNREADABLE:  # ValidationError included
            self._warn_every(
                f"{via} malformed", log, f"client {via} notice malformed", source=source
            )
            return None
        if notice.code != STALLED:
            return None
        address = None
        with contextlib.suppress(ValueError, TypeError):
            address = to_checksum_address(notice.signer or "")
        identity = None if address is None else self.identity_of.get(address)
        if address is None or identity is None or notice.deployment != self.deployment:
            self._warn_every(
                f"{via} unattributed",
                log,
                f"client {via} stalled",
                signer=notice.signer,
                source=source,
                message=notice.message[:200],
            )
            return None
        newest = self._newest.get(identity)
        if newest is None:  # nothing held from it: nothing to leave out
            self._warn_every(
                f"{via} unheard",
                log,
                f"client {via} stalled",
                signer=address,
                source=source,
                message=notice.message[:200],
            )
            return None
        if notice.ts is not None and notice.ts < newest:
            return None  # a newer round came from it since: the stall is over
        age = self._now_ms() - newest
        least = max(self.stall_notice_min_age_ms, 2 * self._gap.get(identity, 0))
        if age < least:  # no daemon says so this soon after a round: forged, or clocks apart
            self._warn_every(
                f"{via} early",
                log,
                f"client {via} notice refused",
                signer=address,
                source=source,
                age_ms=age,
                least_ms=least,
                message=notice.message[:200],
            )
            return None
        problem = self._notice_unverified(notice, address)
        if problem is not None:
            self._warn_every(
                f"{via} {problem}",
                log,
                f"client {via} notice not verified",
                reason=problem,
                signer=address,
                source=source,
                message=notice.message[:200],
            )
            return None
        return self.note_stalled(address, notice.message, source)

    def _notice_unverified(self, notice: _StallNotice, address: str) -> str | None:
        """Why a notice naming `address` is not its signer's word, or None: `unsigned` (no
        signature or round: a daemon that does not sign, or anyone), `bad_signature` (not one),
        `forged` (made by another key, over other words, or for another deployment)."""
        if notice.signature is None or notice.round is None or notice.ts is None:
            return "unsigned"
        try:
            signature = _hex(notice.signature, 65, "signature")
            digest = stall_digest(notice.ts, notice.round, notice.message, self.deployment)
            signer = recover_signer(digest, signature)
        except (Rejection, SignatureError, ValueError, OverflowError):
            return "bad_signature"
        return None if signer == address else "forged"

    async def watch_nats(
        self,
        servers: str | list[str],
        markets: Iterable[str] | None = None,
        *,
        prefix: str = "oracled",
        ping_interval_s: float = 1.0,
        max_outstanding_pings: int = 2,
        reconnect_s: float = 1.0,
        pending_msgs: int = NATS_PENDING_MSGS,
        pending_bytes: int = NATS_PENDING_BYTES,
    ) -> None:
        """Subscribe to `<prefix>.prices.<market>` subjects (all with `>`) and to the daemons'
        stall notices (`<prefix>.stalled`: `note_stalled` for the signer each names and signed,
        as `watch_ws` does on a `stalled` frame); run until cancelled. One cancellation ends
        it, and the NATS library's reconnection with it, also while a connection is being made
        (`CancellableClient`): before, one that arrived as a step of it completed was dropped
        (Python 3.11's `asyncio.wait_for`), and the watch went on connecting for good.

        A server that ends the connection with an error (`-ERR`: credentials revoked by its
        reload, an expired user, any protocol error) makes the NATS library close its client
        for good, where it reconnects after an outage: the client then connects anew after
        `reconnect_s` (`client nats closed by the server; connecting again`). Before, the
        watch went on waiting on a closed connection, and its prices only aged out.

        Connection trouble (a server down, at start too) is a warning line (`client nats
        error`) at most once per `log_every_ms` for these servers, with the number held back;
        the NATS library retries by itself, twice a second (a line per attempt, before: two a
        second for as long as a server was down). A server that hangs with the connection open
        (a frozen process, a stalled path) is noticed by pings every `ping_interval_s`: once
        more than `max_outstanding_pings` go unanswered (about 3 s by default) the connection
        is dropped and made again, to another of `servers` if one answers. The library's own
        default, a ping every 2 minutes, left a consumer on a hung server for minutes with
        prices that only went stale.

        The servers a cluster announces are kept for the reconnections, those of its latest
        announcement only and at most `MAX_ANNOUNCED_SERVERS` (`AnnouncedClient`): the others
        are counted in `announced_refused` and said (`client nats announced servers refused`)
        at most once per `log_every_ms`, so a server naming new ones with every INFO grows
        nothing.

        What waits to be verified is bounded per subscription: `pending_msgs` messages and
        `pending_bytes` bytes for `>`, each named market's subscription its share of them (at
        least `NATS_PENDING_MIN_MSGS` and `NATS_PENDING_MIN_BYTES`, the stall notices' limits,
        unless the limits given are lower).
        Past them the NATS library drops what arrives (a flood on the bus, verification
        lagging): each drop is counted in `nats_dropped` by subscription, and the episode is
        said once (`client nats slow consumer`, at most once per `log_every_ms` per
        subscription) and, until a new report accepted on that subscription finds its queue
        empty (`client nats caught up`, with the number dropped), the views of the markets it
        carries name it in `MarketView.lagging`: a newer report than the one held may be lost.
        """
        import nats

        from oracled.publish.nats import price_subject, stalled_subject
        from oracled.publish.nats_conn import AnnouncedClient

        listed = servers if isinstance(servers, list) else [servers]
        # A server's user and password, or token, stay out of the log.
        log = _log.bind(servers=[shown_url(server) for server in listed])

        watch = object()  # this watch's slow-consumer episodes (several may share a subject)
        named = None if markets is None else list(markets)
        share = 1 if named is None else max(len(named), 1)
        # Per price subscription, then for the notices: (messages, bytes) left waiting at most.
        limits = (
            max(min(NATS_PENDING_MIN_MSGS, pending_msgs), pending_msgs // share),
            max(min(NATS_PENDING_MIN_BYTES, pending_bytes), pending_bytes // share),
        )
        notice_limits = (NATS_PENDING_MIN_MSGS, NATS_PENDING_MIN_BYTES)
        # Subscription subject -> the market it carries (None: all of them).
        carries: dict[str, str | None] = (
            {f"{prefix}.prices.>": None}
            if named is None
            else {price_subject(prefix, m): m for m in named}
        )
        subs: dict[str, Any] = {}  # subject -> its subscription on the current connection

        def dropped(subject: str) -> None:
            self.nats_dropped[subject] += 1
            key = (watch, subject)
            lag = self._lagging.get(key)
            if lag is None:
                lag = _Lag(subject, carries.get(subject), self._now_ms())
                if subject in carries:  # a price subscription (not the notices): views say it
                    self._lagging[key] = lag
                    self.updated.set()
                self._warn_every(
                    f"nats slow {subject} {listed}",
                    log,
                    "client nats slow consumer",
                    subject=subject,
                    pending_limits=limits if subject in carries else notice_limits,
                )
            lag.dropped += 1

        def caught_up(subject: str) -> None:
            """A report verified on `subject`: the episode ends if nothing waits behind it."""
            sub = subs.get(subject)
            if sub is None or sub.pending_msgs > 0:
                return
            lag = self._lagging.pop((watch, subject))
            log.info(
                "client nats caught up",
                subject=subject,
                dropped=lag.dropped,
                lagged_ms=self._now_ms() - lag.since_ms,
            )
            self.updated.set()

        async def on_error(exc: Exception) -> None:
            if isinstance(exc, nats.errors.SlowConsumerError):
                dropped(exc.sub.subject)  # called once per message dropped
                return
            error = str(exc) or type(exc).__name__
            self._warn_every(f"nats error {listed}", log, "client nats error", error=error)

        def on_refused(servers: int) -> None:
            self.announced_refused += servers
            self._warn_every(
                f"nats announced {listed}",
                log,
                "client nats announced servers refused",
                refused=servers,
            )

        async def on_disconnected() -> None:
            log.warning("client nats disconnected")

        async def on_reconnected() -> None:
            log.info("client nats reconnected")

        closed = asyncio.Event()

        async def on_closed() -> None:
            closed.set()

        def handler(subject: str) -> Callable[[Any], Awaitable[None]]:
            key = (watch, subject)

            async def handle(msg: Any) -> None:
                accepted = self.accepted
                self.offer(msg.data)
                # Only a new report ends an episode: a copy of one held (anyone can replay
                # them) says nothing of what was lost.
                if self.accepted > accepted and key in self._lagging:
                    caught_up(subject)

            return handle

        async def stalled(msg: Any) -> None:
            self._stall_said(msg.data, msg.subject, "nats", log)

        try:
            while True:
                closed.clear()
                nc = AnnouncedClient(on_refused)
                await nc.connect(
                    servers=listed,
                    max_reconnect_attempts=-1,
                    # nats-py annotates these seconds as int; it takes (and sleeps) floats
                    reconnect_time_wait=0.5,  # type: ignore[arg-type]
                    ping_interval=ping_interval_s,  # type: ignore[arg-type]
                    max_outstanding_pings=max_outstanding_pings,
                    error_cb=on_error,
                    disconnected_cb=on_disconnected,
                    reconnected_cb=on_reconnected,
                    closed_cb=on_closed,
                )
                try:
                    for subject in carries:
                        subs[subject] = await nc.subscribe(
                            subject,
                            cb=handler(subject),
                            pending_msgs_limit=limits[0],
                            pending_bytes_limit=limits[1],
                        )
                    await nc.subscribe(
                        stalled_subject(prefix),
                        cb=stalled,
                        pending_msgs_limit=notice_limits[0],
                        pending_bytes_limit=notice_limits[1],
                    )
                    await closed.wait()
                except nats.errors.ConnectionClosedError:
                    pass  # closed between the connection and a subscription: as when after
                finally:
                    with contextlib.suppress(Exception):
                        await nc.close()
                log.warning(
                    "client nats closed by the server; connecting again",
                    error=str(nc.last_error),
                )
                await asyncio.sleep(reconnect_s)
        finally:  # nothing would end this watch's episodes any more
            for key in [k for k in self._lagging if k[0] == watch]:
                del self._lagging[key]
