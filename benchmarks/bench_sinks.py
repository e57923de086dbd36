"""The latency the audit trail and the on-chain pusher add, at 1,000 markets.

Builds the world of `bench_round.py` (markets x sources, live prices) and measures:

- audit `submit`: what the round loop pays per round (a queue put and a list swap);
- audit write: one round (every market's report built and encoded, its quotes, one transaction)
  in the writer thread, and the database bytes a round takes;
- audit stall: the longest and the 99th-percentile delay of a 1 ms event-loop ticker while the
  writer thread works through rounds submitted every `--interval-ms` (the GIL it holds);
- push decide: the pusher's `_due` over 1,000 markets (on the event loop, once per interval);
- push round trip: from `submit` to the batch confirmed on a real anvil (automine), per batch
  of `--batch` markets, including the gas estimate, local signing and the receipt polls;
- push pause and resume: the gas of a batch of `--batch` pause entries (markets paused, the
  contract's flag set in their slots), and of the batch of their prices that resumes them;
- push read: the pusher's read of what the contract stores for every market (`latestMany`,
  at start and after a reorganisation), and the decode of that answer alone on the event loop,
  the pusher's (numpy) and eth-abi's, on the same bytes;
- push scan: the start-up scan (`push.scan_from_block`) of the `PriceUpdated` logs every push
  above left, from the contract's first block in one `eth_getLogs` range: the look that asks
  for them (the request, anvil's answer, its decode and check on the loop), and the check of
  the decoded logs alone (`_logged_markets`, on the loop); then the whole scan of 10,000
  blocks without a log (one request per 2,000 blocks, 8 a look), as after a long deployment.

    python benchmarks/bench_sinks.py --markets 1000 --rounds 40

See benchmarks/README.md for what the figures mean.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from bench_round import build_config, build_quotes

from oracled.clock import SystemClock
from oracled.config import AuditConfig, ChainConfig, Config, PushConfig
from oracled.core import Core, RoundResult
from oracled.eth import keccak
from oracled.model import Quote, Status
from oracled.publish.audit import AuditTrail, _Item
from oracled.publish.chain_push import ChainPusher, _Scan, market_id
from oracled.publish.feed_abi import decode_latest_many, encode_latest_many
from oracled.publish.signer import SigningKey

ROOT = Path(__file__).resolve().parents[1]
_QUIET_BLOCKS = 10_000
_PRICE_TOPIC = "0x" + keccak(b"PriceUpdated(bytes32,int128,int8,uint64,uint48)").hex()
T0 = 1_700_000_000_000


def world(
    markets: int, sources: int, n: int
) -> tuple[Config, list[tuple[list[Quote], RoundResult]]]:
    """`n` rounds, each with the quotes that went into it."""
    cfg = build_config(markets, sources)
    core = Core(cfg)
    out = []
    for k in range(n):
        now = T0 + k * cfg.oracle.round_interval_ms
        quotes = build_quotes(cfg, now - 5, seed=k)
        for q in quotes:
            core.ingest(q)
        out.append((quotes, core.run_round(now)))
    return cfg, out


def ms(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "p50_ms": round(statistics.median(s) * 1e3, 3),
        "p99_ms": round(s[min(len(s) - 1, int(len(s) * 0.99))] * 1e3, 3),
        "max_ms": round(s[-1] * 1e3, 3),
    }


async def bench_audit(
    rounds: list[tuple[list[Quote], RoundResult]], interval_ms: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "audit.sqlite3"
        audit = AuditTrail(AuditConfig(enabled=True, path=str(db), queue=10_000))
        audit.start()
        submit: list[float] = []
        lags: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                started = time.perf_counter()
                await asyncio.sleep(0.001)
                lags.append(time.perf_counter() - started - 0.001)

        probe = asyncio.create_task(ticker())
        for quotes, result in rounds:
            for q in quotes:
                audit.add_quote(q)
            started = time.perf_counter()
            audit.submit(result)
            submit.append(time.perf_counter() - started)
            await asyncio.sleep(interval_ms / 1000)
        written = time.perf_counter()
        audit.close(60.0)
        drain = time.perf_counter() - written
        stop.set()
        await probe
        # A round's write, alone: the worker's cost without the pacing of the loop above.
        single = AuditTrail(AuditConfig(enabled=True, path=str(Path(tmp) / "one.sqlite3")))
        single._open()
        writes = []
        for quotes, result in rounds:
            started = time.perf_counter()
            single._write([_Item(result, quotes)])
            writes.append(time.perf_counter() - started)
        assert single._db is not None
        size = single._used_bytes(single._db)
        single._db.close()
    return {
        "submit_us_p50": round(statistics.median(submit) * 1e6, 2),
        "write_round": ms(writes),
        "loop_delay_while_writing": ms(lags),
        "drain_after_last_round_ms": round(drain * 1e3, 1),
        "bytes_per_round": size // len(rounds),
        "rounds_written": audit.stats.rounds,
    }


async def bench_push(rounds: list[tuple[list[Quote], RoundResult]], batch: int) -> dict[str, Any]:
    sys.path[:0] = [str(ROOT / "tests" / "chain"), str(ROOT / "tests")]  # chain_rig, children
    from chain_rig import Chain, start_anvil
    from eth_abi.abi import decode as abi_decode

    with tempfile.TemporaryDirectory() as tmp:
        node = start_anvil(Path(tmp) / "anvil.log")
        try:
            async with aiohttp.ClientSession() as http:
                chain = Chain(node.url, http)
                await chain.start()
                key = SigningKey.generate()
                await chain.rpc("anvil_setBalance", [key.address, hex(10**22)])
                feed = await chain.deploy("OracledFeed", ["address"], [key.address])
                cfg = PushConfig(
                    enabled=True, chain="local", contract=feed, key_env="UNUSED",
                    max_batch=batch, heartbeat_s=0.25, interval_s=0.01,
                )  # fmt: skip
                chain_cfg = ChainConfig(chain_id=31337, rpc_urls=(node.url,)).model_copy(
                    update={"resolved_urls": (node.url,)}
                )
                pusher = ChainPusher(cfg, chain_cfg, key, http, SystemClock())
                pusher.submit(rounds[0][1])
                await pusher.start()
                decide = []
                for _, result in rounds:
                    started = time.perf_counter()
                    pusher._due(result)
                    decide.append(time.perf_counter() - started)
                trips = []
                for _, result in rounds[1:]:
                    started = time.perf_counter()
                    pusher.submit(result)
                    await pusher.step()
                    while pusher.stats.pending:
                        await pusher.step()
                    trips.append(time.perf_counter() - started)
                gas = [int((await chain.block())["gasUsed"], 16)]
                pause_gas, resume_gas = await pause_and_resume(pusher, chain, rounds[-1][1], batch)
                reads, numpy_decode, eth_abi_decode = [], [], []
                ids = encode_latest_many([market_id(m) for m in rounds[0][1].layout.markets])
                answer = bytes.fromhex(
                    (await chain.rpc("eth_call", [{"to": feed, "data": "0x" + ids.hex()}]))[2:]
                )
                for _ in rounds:
                    pusher._forget_read()  # else a layout already read is not read again
                    started = time.perf_counter()
                    await pusher._read_stored()
                    reads.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    decode_latest_many(answer)
                    numpy_decode.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    abi_decode(["(int128,int8,uint48,uint64,bool)[]"], answer)
                    eth_abi_decode.append(time.perf_counter() - started)
                scans, checks, logs = await bench_scan(pusher, chain, feed, len(rounds))
        finally:
            node.stop()
    return {
        "decide_1000_markets": ms(decide),
        f"round_trip_batch_{batch}": ms(trips),
        "confirmed": pusher.stats.transactions["confirmed"],
        "gas_of_last_batch": gas[-1],
        f"gas_of_pause_batch_{batch}": pause_gas,
        f"gas_of_resume_batch_{batch}": resume_gas,
        "read_stored_1000_markets": ms(reads),
        "decode_stored_numpy": ms(numpy_decode),
        "decode_stored_eth_abi": ms(eth_abi_decode),
        "scan_logs": logs,
        "scan_look": ms(scans),
        "scan_check_logs": ms(checks),
    }


async def bench_scan(
    pusher: ChainPusher, chain: Any, feed: str, repeats: int
) -> tuple[list[float], list[float], dict[str, int]]:
    """The start-up scan's look over every block so far (one range: `scan_max_blocks` is the
    default 2,000, and the pushes above take a block each), and the check of its logs alone."""
    head = int(await pusher.rpc.call("eth_blockNumber", []), 16)
    query = {"address": feed, "fromBlock": "0x0", "toBlock": hex(head)}
    raw = await pusher.rpc.call("eth_getLogs", [{**query, "topics": [_PRICE_TOPIC]}])
    looks, checks = [], []
    for _ in range(repeats):
        scan = _Scan(0, pusher.cfg.scan_max_blocks)
        started = time.perf_counter()
        await pusher._scan_look(scan)
        looks.append(time.perf_counter() - started)
        assert scan.next_block > head and len(scan.found) > 0
        started = time.perf_counter()
        pusher._logged_markets(raw)
        checks.append(time.perf_counter() - started)
    # Quiet blocks after them: the requests a scan of a long-deployed contract makes.
    await chain.mine(_QUIET_BLOCKS)
    empty = _Scan(head + 1, pusher.cfg.scan_max_blocks)
    started = time.perf_counter()
    while empty.end is None or empty.next_block <= empty.end:
        await pusher._scan_look(empty)
    quiet = time.perf_counter() - started
    sizes = {"count": len(raw), "answer_bytes": len(json.dumps(raw))}
    return (
        looks,
        checks,
        {**sizes, "quiet_requests": empty.requests, "quiet_ms": round(quiet * 1e3)},
    )


async def pause_and_resume(
    pusher: ChainPusher, chain: Any, last: RoundResult, batch: int
) -> tuple[int, int]:
    """Gas of the block that pauses the first `batch` markets (a round after `last` with them
    paused: pause entries go first, so the batch is all pauses), then of the one that resumes
    them (the round after, all active: the resumed prices are the most due)."""
    status = last.status.copy()
    status[:batch] = int(Status.PAUSED)
    used = []
    for n, stat in enumerate((status, last.status), start=1):
        result = dataclasses.replace(last, ts=last.ts + n * 250, round=last.round + n, status=stat)
        pusher.submit(result)
        await pusher.step()
        while pusher.stats.pending:
            await pusher.step()
        used.append(int((await chain.block())["gasUsed"], 16))
    return used[0], used[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markets", type=int, default=1000)
    parser.add_argument("--sources", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--interval-ms", type=int, default=250)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    _, rounds = world(args.markets, args.sources, args.rounds)
    out = {
        "markets": args.markets,
        "sources": args.sources,
        "audit": asyncio.run(bench_audit(rounds, args.interval_ms)),
        "push": asyncio.run(bench_push(rounds, args.batch)),
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
