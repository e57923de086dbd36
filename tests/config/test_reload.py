"""What a reload reports and puts in force: restart-only settings keep their running values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from oracled.config import parse_config
from oracled.reload import RESTART_ONLY, config_changes, running_config


def _data(**sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "sources": {"a": {"type": "binance"}},
        "markets": [
            {
                "symbol": "BTC/USDT",
                "min_sources": 1,
                "sources": [{"source": "a", "pair": "BTC/USDT"}],
            }
        ],
    }
    data.update(sections)
    return data


CHANGES: dict[str, dict[str, Any]] = {
    "oracle.round_interval_ms": {"oracle": {"round_interval_ms": 1000}},
    "oracle.manual_pauses_file": {"oracle": {"manual_pauses_file": "pauses.json"}},
    "api.listen": {"api": {"listen": "127.0.0.1:9999"}},
    "api.admin_token_env": {"api": {"admin_token_env": "OTHER_TOKEN"}},
    "api.stream_queue": {"api": {"stream_queue": 7}},
    "api.idle_timeout_s": {"api": {"idle_timeout_s": 5.0}},
    "log": {"log": {"level": "error"}},
    "signing": {
        "signing": {
            "enabled": True,
            "key_env": "SIGNING_KEY",
            "deployment": "prod",
            "lease_file": "oracled-signing-lease.json",  # never opened: a reload only names it
        }
    },
    "nats": {"nats": {"enabled": True}},
    "push": {"push": {"enabled": False, "interval_s": 30}},
    "audit": {"audit": {"enabled": True}},
}


def test_every_restart_only_setting_has_a_case() -> None:
    """The cases below cover the whole list, so a new entry cannot go untested."""
    assert set(CHANGES) == set(RESTART_ONLY)


def test_the_config_reference_names_every_restart_only_setting() -> None:
    """docs/config.md lists what a reload cannot change; oracle.manual_pauses_file was missing
    from that list although a reload reports it in needs_restart."""
    doc = (Path(__file__).parents[2] / "docs" / "config.md").read_text(encoding="utf-8")
    listed = doc.split("## Reloading without a restart", 1)[1].split("\n## ", 1)[0]
    for path in RESTART_ONLY:
        assert (f"`{path}`" if "." in path else f"`[{path}]`") in listed, path


@pytest.mark.parametrize("path", RESTART_ONLY)
def test_a_restart_only_change_is_reported_and_the_running_value_kept(path: str) -> None:
    """The change is in `needs_restart`; the config put in force has the old value at `path` and
    the new file's values everywhere else (a market threshold changed in the same file)."""
    old = parse_config(_data(), env={})
    data = _data(**CHANGES[path])
    data["markets"][0]["max_deviation"] = 0.2
    new = parse_config(data, env={"SIGNING_KEY": "0x" + "11" * 32})
    assert config_changes(old, new).needs_restart == [path]
    running = running_config(old, new)
    section, _, key = path.partition(".")
    kept = getattr(running, section)
    assert (getattr(kept, key) if key else kept) == (
        getattr(getattr(old, section), key) if key else getattr(old, section)
    )
    assert running.markets[0].max_deviation == 0.2
    assert running_config(old, running) == running  # nothing left to keep
    assert config_changes(old, running).needs_restart == []


def test_a_new_chain_is_reported_but_taken_so_that_its_sources_stay_valid() -> None:
    """[chains] is reported as restart-only but not kept: sources of the new file may name it."""
    old = parse_config(_data(), env={})
    new = parse_config(
        _data(chains={"local": {"chain_id": 31337, "rpc_urls": ["http://127.0.0.1:8545"]}}), env={}
    )
    assert config_changes(old, new).needs_restart == ["chains"]
    assert running_config(old, new).chains == new.chains


def test_a_new_clock_skew_bound_restarts_every_source() -> None:
    """Each source refuses quotes from further ahead than `oracle.max_clock_skew_ms` itself, with
    the value it was built with: a reload that changes it restarts every source (a change of
    anything else leaves the sources running)."""
    two = {"a": {"type": "binance"}, "b": {"type": "kraken"}}
    market = {
        "symbol": "BTC/USDT",
        "min_sources": 1,
        "sources": [{"source": "a", "pair": "BTC/USDT"}, {"source": "b", "pair": "BTC/USDT"}],
    }
    old = parse_config(_data(sources=two, markets=[market]), env={})
    new = parse_config(
        _data(sources=two, markets=[market], oracle={"max_clock_skew_ms": 5_000}), env={}
    )
    changes = config_changes(old, new)
    assert changes.sources_restarted == ["a", "b"]
    assert changes.needs_restart == [] and changes.markets_changed == []
    assert running_config(old, new).oracle.max_clock_skew_ms == 5_000  # applied, not kept
    other = parse_config(
        _data(sources=two, markets=[market], oracle={"jump_confirm_rounds": 9}), env={}
    )
    assert config_changes(old, other).sources_restarted == []


def test_a_market_whose_conversion_leg_changed_is_reported_as_changed() -> None:
    """A reload that only points the USDT route at the inverted leg market (USD/USDT instead of
    USDT/USD) changes how BTC/USD is priced: BTC/USD is in `markets_changed`. Markets that only
    use the direct or the inverse pair of a leg are not (found by reloading a routed config by
    hand: the reload said nothing had changed)."""
    sources = {"a": {"type": "binance"}, "b": {"type": "kraken"}}

    def markets(via: str) -> dict[str, Any]:
        one = {"min_sources": 1}
        return _data(
            sources=sources,
            markets=[
                {**one, "symbol": "USDT/USD", "sources": [{"source": "b", "pair": "USD/USDT"}]},
                {**one, "symbol": "USD/USDT", "sources": [{"source": "b", "pair": "USD/USDT"}]},
                {**one, "symbol": "BTC/USD", "sources": [{"source": "a", "pair": "BTC/USDT"}]},
                {**one, "symbol": "ETH/USD", "sources": [{"source": "a", "pair": "ETH/USD"}]},
            ],
            routes=[{"from": "USDT", "to": "USD", "via": via}],
        )

    old = parse_config(markets("USDT/USD"), env={})
    new = parse_config(markets("USD/USDT"), env={})
    changes = config_changes(old, new)
    assert changes.markets_changed == ["BTC/USD"]
    assert changes.markets_added == changes.markets_removed == changes.sources_restarted == []
    assert config_changes(old, old).empty


def test_a_source_disabled_before_and_after_is_not_reported_restarted() -> None:
    """A reload lists in `sources_restarted` only sources it starts, stops or restarts: one that
    is `enabled = false` in both files runs in neither, whatever else changed about it. Found
    by reloading the daemon to remove a market while a venue stayed disabled: the answer listed
    that venue as restarted (and the log said 'source disabled' once more)."""
    sources = {"a": {"type": "binance"}, "off": {"type": "kraken", "enabled": False}}
    market = {
        "symbol": "BTC/USDT",
        "min_sources": 1,
        "sources": [{"source": "a", "pair": "BTC/USDT"}, {"source": "off", "pair": "BTC/USDT"}],
    }
    eth = {**market, "symbol": "ETH/USDT"}
    eth["sources"] = [{"source": s, "pair": "ETH/USDT"} for s in ("a", "off")]
    old = parse_config(_data(sources=sources, markets=[market, eth]), env={})
    new = parse_config(_data(sources=sources, markets=[market]), env={})
    assert config_changes(old, new).sources_restarted == ["a"]
    enabled = {**sources, "off": {"type": "kraken"}}
    new = parse_config(_data(sources=enabled, markets=[market]), env={})
    assert config_changes(old, new).sources_restarted == ["a", "off"]
    assert config_changes(new, old).sources_restarted == ["a", "off"]


def _perp_data() -> dict[str, Any]:
    data = _data(sources={"a": {"type": "binance"}, "p": {"type": "binance_usdm"}})
    data["markets"][0]["perp_sources"] = [{"source": "p", "pair": "BTC/USDT", "kind": "perp"}]
    return data


def _edit(path: str, value: Any) -> dict[str, Any]:
    """`_perp_data()` with the value at a dotted path (list items by index) set."""
    data = _perp_data()
    *heads, last = path.split(".")
    node: Any = data
    for name in heads:
        node = node[int(name)] if name.isdigit() else node.setdefault(name, {})
    node[last] = value
    return data


APPLIED: dict[str, tuple[str, Any, list[str]]] = {
    # case: (dotted path into the file, new value, settings_changed)
    "resume_rounds": ("oracle.resume_rounds", 9, ["oracle.resume_rounds"]),
    "jump_confirm_rounds": ("oracle.jump_confirm_rounds", 9, ["oracle.jump_confirm_rounds"]),
    "min_price": ("oracle.min_price", 0.5, ["oracle.min_price"]),
    "max_price": ("oracle.max_price", 1e9, ["oracle.max_price"]),
    "clock_skew": ("oracle.max_clock_skew_ms", 900, ["oracle.max_clock_skew_ms"]),
    "cors": ("api.cors_origins", ["*"], ["api.cors_origins"]),
    "max_connections": ("api.max_connections", 10, ["api.max_connections"]),
    "send_timeout": ("api.send_timeout_s", 3.0, ["api.send_timeout_s"]),
    "market_gate": ("markets.0.max_deviation", 0.2, ["markets.BTC/USDT.max_deviation"]),
    "market_bound": ("markets.0.min_price", 10.0, ["markets.BTC/USDT.min_price"]),
    "mark": ("markets.0.mark.funding_cap", 0.01, ["markets.BTC/USDT.mark.funding_cap"]),
    "slot_weight": ("markets.0.sources.0.weight", 2.0, ["markets.BTC/USDT.sources"]),
    "source": ("sources.a.liveness_timeout_s", 5.0, ["sources.a.liveness_timeout_s"]),
}


@pytest.mark.parametrize("case", APPLIED)
def test_every_applied_change_is_named_in_settings_changed(case: str) -> None:
    """A reload of a threshold used to answer with every list empty ("nothing changed") though
    it applied it: found reloading `oracle.resume_rounds` on a running daemon. Each applied
    setting is now named by its dotted path (markets by symbol), and nothing else is."""
    path, value, expected = APPLIED[case]
    old = parse_config(_perp_data(), env={})
    new = parse_config(_edit(path, value), env={})
    changes = config_changes(old, new)
    assert changes.settings_changed == expected
    assert changes.needs_restart == [] and not config_changes(old, old).settings_changed
    per_market = path.startswith("markets.")
    assert changes.markets_changed == (["BTC/USDT"] if per_market else [])


def test_restart_only_settings_and_added_tables_are_named_once() -> None:
    """A restart-only setting is in `needs_restart` only (the reload does not apply it); a market
    or source added or removed is named as a whole, not key by key."""
    old = parse_config(_data(), env={})
    data = _data(log={"level": "error"}, oracle={"round_interval_ms": 1000, "resume_rounds": 5})
    data["sources"]["b"] = {"type": "kraken"}
    eth = {"symbol": "ETH/USDT", "min_sources": 1, "sources": [{"source": "b", "pair": "ETH/USDT"}]}
    data["markets"].append(eth)
    changes = config_changes(old, parse_config(data, env={}))
    assert changes.needs_restart == ["oracle.round_interval_ms", "log"]
    assert changes.settings_changed == ["oracle.resume_rounds", "sources.b", "markets.ETH/USDT"]
    back = config_changes(parse_config(data, env={}), old)
    assert back.settings_changed == ["oracle.resume_rounds", "sources.b", "markets.ETH/USDT"]


def test_the_pushers_recheck_depth_and_batch_regrowth_are_applied_by_a_reload() -> None:
    """`[push]` is read at start-up but for `recheck_depth_blocks` and `grow_batch_after`, which
    the running pusher reads at each use: changed alone they need no restart, are named in
    `settings_changed` and are in force after the reload; changed beside another push key (the
    interval), that key alone is kept at its running value and reported."""
    push = {"enabled": False, "interval_s": 1.0}
    old = parse_config(_data(push=push), env={})
    knobs = {"recheck_depth_blocks": 2, "grow_batch_after": 3}
    new = parse_config(_data(push={**push, **knobs}), env={})
    changes = config_changes(old, new)
    assert changes.needs_restart == []
    assert changes.settings_changed == ["push.recheck_depth_blocks", "push.grow_batch_after"]
    running = running_config(old, new)
    assert running == new
    assert (running.push.recheck_depth_blocks, running.push.grow_batch_after) == (2, 3)

    both = parse_config(_data(push={**push, **knobs, "interval_s": 30.0}), env={})
    changes = config_changes(old, both)
    assert changes.needs_restart == ["push"]
    assert changes.settings_changed == ["push.recheck_depth_blocks", "push.grow_batch_after"]
    running = running_config(old, both)
    assert running.push.interval_s == 1.0  # kept until a restart
    assert (running.push.recheck_depth_blocks, running.push.grow_batch_after) == (2, 3)
    assert running_config(old, running) == running
    assert config_changes(old, running).needs_restart == []


def test_the_apis_round_body_bound_is_applied_by_a_reload() -> None:
    """`api.round_body_bytes` is read at each body the API keeps: a reload applies it."""
    old = parse_config(_data(), env={})
    new = parse_config(_data(api={"round_body_bytes": 1024}), env={})
    changes = config_changes(old, new)
    assert changes.needs_restart == [] and changes.settings_changed == ["api.round_body_bytes"]
    assert running_config(old, new).api.round_body_bytes == 1024
