"""A cross-check counts hosts, not URLs: two keys of one provider (two URLs on one host, here
the loopback proxy in front of anvil under two paths) are one vote, and the check of a read goes
to a URL on another host first."""

from __future__ import annotations

import aiohttp
import pytest
from chain_rig import Anvil, Chain, Deployed
from reading import make_reader, watch_eth
from rpc_proxy import RpcProxy
from structlog.testing import capture_logs

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_two_keys_of_one_lying_provider_do_not_outvote_an_honest_host(
    anvil: Anvil, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """Two URLs of one provider that changes every read, and an honest third on another host.
    Counted per URL, the provider's two reads outvoted the honest one: its value was published
    and the honest URL was left as the liar. Counted per host it is one host against one: the
    block is withheld and counted as a disagreement, and no URL is left."""
    proxy.mode = "tamper"
    urls = [f"{proxy.url}/key-one", anvil.url, f"{proxy.url}/key-two"]
    reader = make_reader(urls, http, cross_check=True)
    got = watch_eth(reader, snapshot.eth_proxy)
    with capture_logs() as logs:
        assert not await reader.poll_once()
    assert got.quotes == []
    assert reader.stats.disagreements == 1
    assert [st.by_kind for st in reader.rpc.stats] == [{}, {}, {}]
    assert [e["event"] for e in logs if e["event"].startswith("endpoint")] == ["endpoints disagree"]
    assert proxy.methods.count("eth_call") == 2  # both keys asked: their host still one vote


async def test_a_read_is_checked_on_another_host_before_another_key_of_its_own(
    anvil: Anvil, chain: Chain, http: aiohttp.ClientSession, snapshot: Deployed, proxy: RpcProxy
) -> None:
    """The first two URLs are two keys of one provider, the third another host. The first
    URL's read is checked on the third, not on the second (another key of the same provider
    checks nothing): the block is published after one read on each host, and the second URL
    gets no request."""
    urls = [f"{proxy.url}/key-one", f"{proxy.url}/key-two", anvil.url]
    reader = make_reader(urls, http, cross_check=True)
    got = watch_eth(reader, snapshot.eth_proxy)
    assert await reader.poll_once()
    assert got.last.price == 3000.0
    await chain.transact(snapshot.eth_aggregator, "updateAnswer(int256)", 3100_00000000)
    before = [st.requests for st in reader.rpc.stats]
    assert await reader.poll_once()
    assert got.last.price == 3100.0
    spent = [st.requests - n for st, n in zip(reader.rpc.stats, before, strict=True)]
    assert spent == [2, 0, 1]  # the head and the read on the first key, the check elsewhere
    assert reader.rpc.stats[1].requests == 0
