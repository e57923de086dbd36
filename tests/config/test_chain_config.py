"""The [chains] table and the on-chain source types in the config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from oracled.config import MAX_CHAIN_ID, load_config, parse_config
from oracled.errors import ConfigError

ETH_PROXY = "0x5f4eC3Df9cbd43714FE2740f5E3616155c5b8419"
PYTH = "0x4305FB66699C3B2702D4d05CF36551390A4c69C6"
ETH_ID = "0xff61491a931112ddf1bd8147cd1b641375f79f5825126d665480874634fd0ace"


def _doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "chains": {"eth": {"chain_id": 1, "rpc_urls_env": "TEST_ETH_RPC"}},
        "sources": {
            "a": {"type": "binance"},
            "b": {"type": "kraken"},
            "cl": {
                "type": "chainlink",
                "chain": "eth",
                "feeds": {"ETH/USD": {"address": ETH_PROXY, "heartbeat_s": 3600}},
            },
            "py": {
                "type": "pyth_evm",
                "chain": "eth",
                "address": PYTH,
                "feeds": {"ETH/USD": {"feed_id": ETH_ID, "max_age_s": 60}},
            },
        },
        "markets": [
            {
                "symbol": "ETH/USD",
                "min_sources": 2,
                "sources": [
                    {"source": "a", "pair": "ETH/USD"},
                    {"source": "b", "pair": "ETH/USD"},
                    {"source": "cl", "pair": "ETH/USD"},
                    {"source": "py", "pair": "ETH/USD"},
                ],
            }
        ],
    }
    doc.update(overrides)
    return doc


def _problems(doc: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, env or {})
    return info.value.problems


def test_chain_without_urls_drops_its_sources_from_markets() -> None:
    """With the RPC variable unset the chain has no URLs and its sources are no missing votes."""
    cfg = parse_config(_doc(), {})
    assert cfg.chains["eth"].resolved_urls == ()
    assert [s.source for s in cfg.markets[0].sources] == ["a", "b"]


def test_urls_come_from_the_environment_and_enable_the_chain() -> None:
    """Comma-separated URLs in the named variable are used in order; the sources stay."""
    cfg = parse_config(_doc(), {"TEST_ETH_RPC": "https://one.example/k1, https://two.example/k2"})
    assert cfg.chains["eth"].resolved_urls == ("https://one.example/k1", "https://two.example/k2")
    assert [s.source for s in cfg.markets[0].sources] == ["a", "b", "cl", "py"]
    assert "resolved_urls" not in cfg.model_dump()["chains"]["eth"]  # never written back out


def test_a_bad_url_in_the_environment_is_reported_without_echoing_it() -> None:
    """A malformed URL (which may hold an API key) is named by its variable, never printed."""
    problems = _problems(_doc(), {"TEST_ETH_RPC": "one.example/secret-key"})
    assert problems[0].startswith("chains.eth.rpc_urls_env: $TEST_ETH_RPC:")
    assert "secret-key" not in problems[0]


def test_the_websocket_url_may_come_from_the_environment_and_is_never_echoed() -> None:
    """`ws_url_env` names the variable holding a chain's WebSocket URL (a provider's carries
    its key): set, it is the URL newHeads is read from, over a `ws_url` in the file, and it is
    never written back out; unset or empty, the file's `ws_url` (or none) is used. A malformed
    one is named by its variable, never printed."""
    doc = _doc()
    doc["chains"]["eth"]["ws_url_env"] = "TEST_ETH_WS"
    env = {"TEST_ETH_RPC": "https://one.example/k1"}
    cfg = parse_config(doc, {**env, "TEST_ETH_WS": " wss://ws.example/v2/secret-key "})
    chain = cfg.chains["eth"]
    assert chain.heads_url == "wss://ws.example/v2/secret-key" and chain.ws_url is None
    assert "secret-key" not in repr(cfg.model_dump())
    doc["chains"]["eth"]["ws_url"] = "wss://file.example/ws"
    cfg = parse_config(doc, {**env, "TEST_ETH_WS": "wss://ws.example/v2/secret-key"})
    assert cfg.chains["eth"].heads_url == "wss://ws.example/v2/secret-key"  # the variable wins
    for unset in ({}, {"TEST_ETH_WS": "  "}):
        assert parse_config(doc, {**env, **unset}).chains["eth"].heads_url == (
            "wss://file.example/ws"
        )
    problems = _problems(doc, {**env, "TEST_ETH_WS": "https://ws.example/v2/secret-key"})
    assert problems == [
        "chains.eth.ws_url_env: $TEST_ETH_WS: must be an absolute ws:// or wss:// URL"
    ]
    problems = _problems(doc, {**env, "TEST_ETH_WS": "wss://ws.example:99999/secret-key"})
    assert len(problems) == 1 and problems[0].startswith("chains.eth.ws_url_env: $TEST_ETH_WS:")
    assert "secret-key" not in problems[0]
    doc["chains"]["eth"]["resolved_ws_url"] = "wss://ws.example/x"
    assert "chains.eth.resolved_ws_url: is set from the environment, not the file" in _problems(
        doc, env
    )


def test_mixed_case_address_with_a_wrong_checksum_is_refused() -> None:
    """A one-letter typo in a checksummed address is caught with its key path."""
    doc = _doc()
    doc["sources"]["cl"]["feeds"]["ETH/USD"]["address"] = ETH_PROXY.replace("eC3", "Ec3")
    problems = _problems(doc)
    assert any(
        p.startswith("sources.cl.feeds.ETH/USD.address") and "checksum" in p for p in problems
    )


def test_lower_case_address_is_accepted() -> None:
    """An all-lower-case address carries no checksum and is accepted as is."""
    doc = _doc()
    doc["sources"]["cl"]["feeds"]["ETH/USD"]["address"] = ETH_PROXY.lower()
    assert parse_config(doc, {}).sources["cl"].feeds["ETH/USD"].address == ETH_PROXY.lower()


def test_feed_keys_are_checked_per_type() -> None:
    """A Chainlink feed needs its heartbeat and may not carry Pyth keys; Pyth needs its
    contract address; an on-chain source needs a configured chain; venues take no feeds."""
    doc = _doc()
    doc["sources"]["cl"]["feeds"]["ETH/USD"] = {"address": ETH_PROXY, "feed_id": ETH_ID}
    del doc["sources"]["py"]["address"]
    doc["sources"]["a"]["chain"] = "eth"
    doc["chains"] = {"other": {"chain_id": 10}}
    problems = _problems(doc)
    assert "sources.cl.feeds.ETH/USD.heartbeat_s: is required for chainlink" in problems
    assert "sources.cl.feeds.ETH/USD.feed_id: is not a chainlink key" in problems
    assert "sources.py.address: the Pyth contract address is required" in problems
    assert "sources.cl.chain: chain 'eth' is not configured" in problems
    assert "sources.a.chain: only on-chain sources take this key" in problems


def test_a_pair_asked_of_an_on_chain_source_needs_a_feed() -> None:
    """A market that asks an on-chain source for a pair without a feed spec is refused."""
    doc = _doc()
    doc["sources"]["cl"]["feeds"] = {}
    problems = _problems(doc)
    assert "sources.cl.feeds: no feed for ETH/USD, which a market asks of this source" in problems


def test_an_rpc_url_listed_twice_is_refused_without_echoing_it() -> None:
    """One endpoint listed twice among a chain's URLs (the same text, or differing only in the
    case of the host or a trailing slash) is refused, by position, never printed: with
    cross_check its two reads would form a majority that outvotes an honest third URL and leaves
    it, and failing over would go to the same node. Distinct URLs of one host stay accepted."""
    dup = "https://one.example/k1, https://two.example/k2, https://ONE.example/k1/"
    problems = _problems(_doc(), {"TEST_ETH_RPC": dup})
    assert problems == [
        "chains.eth.rpc_urls_env: $TEST_ETH_RPC: RPC URL 3 repeats URL 1: one endpoint listed "
        "twice would vote twice in a cross-check and be failed over to itself"
    ]
    chain = {"chain_id": 1, "rpc_urls": ["http://127.0.0.1:8545", "http://127.0.0.1:8545"]}
    problems = _problems(_doc(chains={"eth": chain}))
    assert len(problems) == 1 and problems[0].startswith("chains.eth.rpc_urls")
    assert "RPC URL 2 repeats URL 1" in problems[0]
    distinct = "https://one.example/k1, https://one.example/k2, http://one.example/k1"
    cfg = parse_config(_doc(), {"TEST_ETH_RPC": distinct})
    assert len(cfg.chains["eth"].resolved_urls) == 3


def test_a_chain_id_past_eip_2294_s_bound_is_refused_naming_the_key() -> None:
    """chain_id had no upper bound: 2**64 or 2**256 was taken, and only a node refusing the
    pusher's transactions would have said so (eth-account signs any integer; nodes hold a chain
    id in 64 bits). EIP-2294's floor((2**64 - 1) / 2) - 36 is accepted, one more is refused."""
    assert MAX_CHAIN_ID == 9_223_372_036_854_775_771
    doc = _doc()
    doc["chains"]["eth"]["chain_id"] = MAX_CHAIN_ID
    assert parse_config(doc, {}).chains["eth"].chain_id == MAX_CHAIN_ID
    for too_large in (MAX_CHAIN_ID + 1, 2**64, 2**256):
        doc["chains"]["eth"]["chain_id"] = too_large
        assert _problems(doc) == [f"chains.eth.chain_id: must be <= {MAX_CHAIN_ID}"]


def test_a_chain_id_too_large_for_toml_s_integers_is_the_key_s_problem(tmp_path: Path) -> None:
    """TOML's integers are 64-bit, yet the reader takes a larger one: it is refused by the key,
    not taken, and not a parse error that would hide which key was wrong."""
    path = tmp_path / "oracled.toml"
    text = Path(__file__).parent.joinpath("good", "minimal.toml").read_text()
    path.write_text(f"{text}\n[chains.eth]\nchain_id = {2**64}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.problems == [f"chains.eth.chain_id: must be <= {MAX_CHAIN_ID}"]
