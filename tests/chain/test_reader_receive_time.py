"""The receive time of an on-chain quote is taken when its answer arrived, as a venue frame's
is: the quote tape is in `ts` order only if no source stamps a quote before an await."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from chain_rig import Chain, Deployed
from reading import make_reader, watch_eth
from rpc_proxy import RpcProxy

from oracled.clock import ManualClock

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_quote_from_a_reread_is_stamped_when_the_reread_answered(
    http: aiohttp.ClientSession, chain: Chain, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """A new Chainlink feed learns its aggregator from a block and the block is read again.
    While that re-read is on the wire, other sources hand over quotes stamped with the later
    time; the feed's quote was stamped with the block's first read, so `oracled record` wrote
    it after lines with a later `ts`, and `oracled replay` skipped it as out of order, while
    the live core had used it. It now carries the time its answer came."""
    t0 = await chain.timestamp() * 1000  # the node's blocks are current by the reader's clock
    clock = ManualClock(t0)
    reader = make_reader([proxy.url], http, clock=clock)
    got = watch_eth(reader, snapshot.eth_proxy)
    proxy.script = ["pass", "hold"]  # the block's read answers; the re-read waits
    poll = asyncio.create_task(reader.poll_once())
    await asyncio.wait_for(proxy.arrived.wait(), 5)
    assert got.quotes == []
    clock.advance(700)  # a venue quote received now would be stamped t0 + 700
    proxy.release.set()
    assert await asyncio.wait_for(poll, 5)
    assert [(q.price, q.recv_ts) for q in got.quotes] == [(3000.0, t0 + 700)]
