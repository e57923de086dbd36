"""The on-chain section of the shipped config/default.toml.

Addresses there are copied by hand from public lists; these tests catch the copying mistakes a
reader cannot see (a wrong checksum, the same proxy under two pairs, a feed no market reads, a
Pyth id that differs from the Hermes one) and hold the rule that the chain stays off, and out of
every market, until an RPC URL is given.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from eth_utils.address import to_checksum_address

from oracled.config import CHAIN_SOURCE_TYPES, Config, load_config

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "config" / "default.toml"
LIT = {"ORACLED_ETH_RPC_URLS": "http://127.0.0.1:8545"}


@pytest.fixture(scope="module")
def dark() -> Config:
    """The shipped config as the daemon reads it with no RPC URL in the environment."""
    return load_config(DEFAULT, env={})


@pytest.fixture(scope="module")
def lit() -> Config:
    """The shipped config with an RPC URL for Ethereum."""
    return load_config(DEFAULT, env=LIT)


def _addresses(cfg: Config) -> list[str]:
    out: list[str] = []
    for src in cfg.sources.values():
        if src.type not in CHAIN_SOURCE_TYPES:
            continue
        if src.address is not None:
            out.append(src.address)
        out.extend(spec.address for spec in src.feeds.values() if spec.address is not None)
    return out


def test_every_on_chain_address_is_checksummed_and_used_once(dark: Config) -> None:
    """Each contract address is written in EIP-55 form (so the loader's typo guard applies to
    it) and no two feeds, nor a feed and a contract, share an address."""
    addresses = _addresses(dark)
    assert len(addresses) >= 11  # the Pyth contract and at least ten Chainlink proxies
    for address in addresses:
        assert address != address.lower(), f"{address} carries no checksum"
        assert to_checksum_address(address) == address
    assert len({a.lower() for a in addresses}) == len(addresses)


def test_every_chainlink_feed_is_an_x_usd_proxy_with_its_own_heartbeat(dark: Config) -> None:
    """A Chainlink feed names a USD pair of a shipped market, a proxy and a heartbeat no longer
    than the day Chainlink's crypto feeds are refreshed within."""
    feeds = dark.sources["chainlink"].feeds
    markets = {m.symbol for m in dark.markets}
    assert len(feeds) >= 10
    for pair, spec in feeds.items():
        assert pair in markets and pair.endswith("/USD")
        assert spec.address is not None
        assert spec.heartbeat_s is not None and 0 < spec.heartbeat_s <= 86_400


def test_pyth_evm_reads_the_hermes_ids_for_every_market(dark: Config) -> None:
    """Pyth's contract is asked, for every market, for the same 32-byte id the Hermes source
    streams, with the one staleness limit of the section."""
    hermes = dark.sources["pyth"].instruments
    feeds = dark.sources["pyth_eth"].feeds
    assert set(feeds) == {m.symbol for m in dark.markets}
    for pair, spec in feeds.items():
        assert spec.feed_id is not None
        assert re.fullmatch(r"0x[0-9a-f]{64}", spec.feed_id)
        assert spec.feed_id == hermes[pair]
        assert spec.max_age_s == 60


def test_with_an_rpc_url_every_feed_votes_in_its_market(lit: Config) -> None:
    """With the chain lit, the markets that list a Chainlink proxy are exactly the ones it
    quotes (at full weight) and every market lists Pyth's contract at half weight."""
    assert lit.chains["ethereum"].resolved_urls == (LIT["ORACLED_ETH_RPC_URLS"],)
    with_chainlink: set[str] = set()
    for market in lit.markets:
        weights = {s.source: s.weight for s in market.sources}
        pairs = {s.source: s.pair for s in market.sources}
        assert weights.get("pyth_eth") == 0.5 and pairs["pyth_eth"] == market.symbol
        if "chainlink" in weights:
            assert weights["chainlink"] == 1.0 and pairs["chainlink"] == market.symbol
            with_chainlink.add(market.symbol)
    assert with_chainlink == set(lit.sources["chainlink"].feeds)


def test_without_an_rpc_url_the_markets_run_on_their_off_chain_sources(
    dark: Config, lit: Config
) -> None:
    """No URL: the chain has none, every on-chain source leaves every market, and what is left
    is the same off-chain list as with the chain lit, still at least min_sources long."""
    assert dark.chains["ethereum"].resolved_urls == ()
    on_chain = {sid for sid, s in dark.sources.items() if s.type in CHAIN_SOURCE_TYPES}
    assert on_chain == {"chainlink", "pyth_eth"}
    for off, on in zip(dark.markets, lit.markets, strict=True):
        kept = [(s.source, s.pair) for s in off.sources]
        assert kept == [(s.source, s.pair) for s in on.sources if s.source not in on_chain]
        assert len(kept) >= off.min_sources, off.symbol


def test_the_docs_table_lists_every_shipped_proxy_with_its_heartbeat(dark: Config) -> None:
    """docs/onchain.md has one table row per shipped proxy, naming its pair and heartbeat, so
    the documented list cannot drift from the config."""
    rows = [
        line for line in (ROOT / "docs" / "onchain.md").read_text().splitlines()
        if line.startswith("|")
    ]  # fmt: skip
    for pair, spec in dark.sources["chainlink"].feeds.items():
        assert spec.address is not None
        matches = [row for row in rows if f"`{spec.address}`" in row]
        assert len(matches) == 1, f"{pair}: {len(matches)} rows"
        cells = [c.strip() for c in matches[0].strip("|").split("|")]
        assert cells[0] == pair
        assert cells[2] == f"{spec.heartbeat_s} s"


def test_the_shipped_chain_knows_its_block_time(lit: Config) -> None:
    """Ethereum's slot is 12 s: set in the shipped chain, an operator who adds a ws_url gets a
    silent newHeads subscription noticed after three blocks, not after max_block_age_s (300 s);
    polling, the key changes nothing."""
    chain = lit.chains["ethereum"]
    assert chain.block_time_s == 12
    assert 3 * chain.block_time_s < chain.max_block_age_s
