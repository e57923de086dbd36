"""Config loading: every bad file gives its exact messages; good files load frozen, secrets hidden.

Each file under bad/ states what it must produce in its header comments:
``# expect: <key path>: <message>`` (one line per problem, in order), ``# expect-start: <prefix>``
where the tail of the message comes from a library (``{path}`` is the file's path), and
``# env: NAME=value`` for the environment the file is loaded with.
"""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from oracled.cli import main
from oracled.config import (
    CHAIN_SOURCE_TYPES,
    MAX_CONFIG_BYTES,
    MIN_INTERVAL_S,
    SOURCE_KINDS,
    SOURCE_TYPES,
    Config,
    config_warnings,
    load_config,
    parse_config,
    parse_listen,
)
from oracled.errors import ConfigError

HERE = Path(__file__).parent
BAD = sorted((HERE / "bad").glob("*.toml"))
GOOD = sorted((HERE / "good").glob("*.toml"))
WARN = sorted((HERE / "warn").glob("*.toml"))
TOKEN = "s3cret-admin-token-0123456789"


def _header(path: Path) -> tuple[list[str], list[str], dict[str, str]]:
    expect, starts, env = [], [], {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# expect: "):
            expect.append(line.removeprefix("# expect: "))
        elif line.startswith("# expect-start: "):
            starts.append(line.removeprefix("# expect-start: ").replace("{path}", str(path)))
        elif line.startswith("# env: "):
            name, _, value = line.removeprefix("# env: ").partition("=")
            env[name] = value
    return expect, starts, env


def test_there_are_enough_distinct_bad_files_and_each_states_its_expectation() -> None:
    """At least twelve bad configs, each declaring the problems it must produce."""
    assert len(BAD) >= 12
    for path in BAD:
        expect, starts, _ = _header(path)
        assert expect or starts, path.name


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_a_bad_config_reports_exactly_its_problems(path: Path) -> None:
    """Loading fails with a ConfigError whose problems are exactly the declared ones, in order,
    each naming its key path; the exception text lists them all."""
    expect, starts, env = _header(path)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env)
    problems = caught.value.problems
    if starts:
        assert len(problems) == len(starts)
        for problem, start in zip(problems, starts, strict=True):
            assert problem.startswith(start), problem
    else:
        assert problems == expect
    for problem in problems:
        assert f"  {problem}" in str(caught.value)


#: Keys in seconds or milliseconds that may go below 1 ms, and why: none paces a loop or waits.
_NO_INTERVAL_FLOOR = {
    "start_grace_s": "0 is no grace after a start",
    "grace_period_s": "0 is no grace after the sequencer is back",
    "max_clock_skew_ms": "0 refuses every quote stamped ahead of our clock",
    "basis_half_life_s": "a weight of the basis average, read per round",
}


def test_every_interval_and_timeout_key_takes_a_millisecond_at_least() -> None:
    """Every key of the config in seconds (`_s`) or milliseconds (`_ms`) is bounded below by
    MIN_INTERVAL_S (1 ms), but for the few where 0 or less means something: before, the
    intervals and timeouts took anything above 0, and 1e-300 made the loop each paces spin a
    core (bad/intervals_below_a_millisecond.toml). A key added without the floor fails here."""
    schema = Config.model_json_schema()
    models = [schema, *schema["$defs"].values()]
    checked = set()
    for model in models:
        for key, prop in model.get("properties", {}).items():
            scale = 1.0 if key.endswith("_s") else 1000.0 if key.endswith("_ms") else None
            if scale is None or key in _NO_INTERVAL_FLOOR:
                continue
            numbers = [
                o for o in prop.get("anyOf", [prop]) if o.get("type") in ("number", "integer")
            ]
            assert numbers, key
            for number in numbers:
                assert number.get("minimum", 0) >= MIN_INTERVAL_S * scale, (key, number)
            checked.add(key)
    assert {"rest_poll_interval_s", "poll_interval_s", "interval_s", "timeout_s"} <= checked


def test_intervals_of_a_millisecond_load() -> None:
    """The floor itself is taken, by every key that has it (the test rigs poll a loopback
    simulator every 1 ms)."""
    tick = MIN_INTERVAL_S
    cfg = parse_config(
        {
            "api": {"send_timeout_s": tick, "idle_timeout_s": tick},
            "chains": {"eth": {
                "chain_id": 1, "rpc_urls": ["http://127.0.0.1:9"], "poll_interval_s": tick,
                "timeout_s": tick, "max_block_age_s": 1.0, "block_time_s": tick,
            }},
            "sources": {"binance": {
                "type": "binance", "liveness_timeout_s": tick, "rest_poll_interval_s": tick,
                "reconnect_max_s": tick, "max_connection_age_s": tick,
            }},
            "push": {
                "heartbeat_s": tick, "replace_after_s": tick, "interval_s": tick,
                "overrides": {"BTC/USDT": {"heartbeat_s": tick}},
            },
            "markets": [
                {"symbol": "BTC/USDT", "min_sources": 1,
                 "sources": [{"source": "binance", "pair": "BTC/USDT"}]},
            ],
        },
        env={},
    )  # fmt: skip
    assert cfg.sources["binance"].rest_poll_interval_s == tick
    assert cfg.chains["eth"].poll_interval_s == tick


def test_several_problems_are_reported_at_once() -> None:
    """The files built to hold several problems yield several, not just the first one."""
    for name in ("several_shape_problems", "several_relation_problems", "wrong_type"):
        with pytest.raises(ConfigError) as caught:
            load_config(HERE / "bad" / f"{name}.toml", env={})
        assert len(caught.value.problems) >= 2, name


def test_a_missing_or_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    """I/O and decoding problems are reported as ConfigError naming the file, never raw OSError."""
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing, env={})
    assert caught.value.problems == [f"{missing}: cannot read (No such file or directory)"]
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_config(latin, env={})
    assert caught.value.problems == [f"{latin}: not UTF-8 text"]


def test_a_file_too_large_for_a_config_is_refused_unread(tmp_path: Path) -> None:
    """A file larger than any config (the audit database copied over it, a log) is refused
    after its first MAX_CONFIG_BYTES + 1 bytes: it was read whole into memory, by a reload too,
    where a file of gigabytes could take the running daemon down with it. A file of exactly the
    limit is read (and judged by its content). /dev/zero, read up to the limit before, is now
    refused unread as what it is: no device is a config."""
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * MAX_CONFIG_BYTES + b"\n")
    with pytest.raises(ConfigError) as caught:
        load_config(big, env={})
    limit = f"{MAX_CONFIG_BYTES // 2**20} MiB"
    assert caught.value.problems == [f"{big}: larger than {limit}: no config is this large"]
    endless = Path("/dev/zero")
    with pytest.raises(ConfigError) as caught:
        load_config(endless, env={})
    assert caught.value.problems == [
        f"{endless}: cannot read (a character device, not a regular file)"
    ]
    fits = tmp_path / "fits.toml"
    fits.write_bytes(b"#" * (MAX_CONFIG_BYTES - 1) + b"\n")
    with pytest.raises(ConfigError) as caught:
        load_config(fits, env={})
    assert caught.value.problems == ["markets: is required"]


@pytest.mark.parametrize("path", GOOD, ids=[p.stem for p in GOOD])
def test_a_good_config_loads(path: Path) -> None:
    """The good files load without complaint, with and without a token in the environment."""
    assert isinstance(load_config(path, env={}), Config)
    assert isinstance(load_config(path, env={"ORACLED_ADMIN_TOKEN": TOKEN}), Config)


def test_the_full_config_is_read_as_written() -> None:
    """Values, defaults, aliases (routes' `from`) and per-market overrides come through."""
    cfg = load_config(HERE / "good" / "full.toml", env={})
    assert cfg.oracle.resume_rounds == 3
    assert cfg.oracle.min_price == 1e-12  # a default
    assert cfg.api.listen == "127.0.0.1:8480"
    assert cfg.log.format == "json"
    assert sorted(cfg.sources) == ["backup", "binance", "binance-us"]
    assert cfg.sources["backup"].enabled is False
    assert cfg.sources["binance"].instruments == {"BTC/USDT": "BTCUSDT", "USDT/USD": "USDTUSD"}
    btc = cfg.market("BTC/USD")
    assert btc is not None
    assert (btc.max_deviation, btc.circuit_breaker, btc.confidence_limit) == (0.02, 0.15, 0.02)
    assert [(s.source, s.pair, s.kind, s.weight) for s in btc.sources] == [
        ("binance", "BTC/USDT", "spot", 2.0),
        ("binance-us", "BTC/USD", "spot", 1.0),
        ("backup", "BTC/USD", "perp", 0.5),
    ]
    assert (cfg.routes[0].from_, cfg.routes[0].to, cfg.routes[0].via) == ("USDT", "USD", "USDT/USD")
    assert cfg.market("DOGE/USD") is None
    assert cfg.admin_token is None


def test_every_model_is_frozen() -> None:
    """Assigning to any field of any part of a loaded config raises."""
    cfg = load_config(HERE / "good" / "full.toml", env={})
    targets = [
        (cfg, "markets", []),
        (cfg.oracle, "resume_rounds", 1),
        (cfg.api, "listen", "0.0.0.0:1"),
        (cfg.log, "level", "debug"),
        (cfg.sources["binance"], "enabled", False),
        (cfg.markets[0], "min_sources", 1),
        (cfg.markets[0].sources[0], "weight", 9.0),
        (cfg.routes[0], "via", "BTC/USD"),
    ]
    for model, field, value in targets:
        before = getattr(model, field)
        with pytest.raises(pydantic.ValidationError, match="frozen"):
            setattr(model, field, value)
        assert getattr(model, field) == before


def test_the_admin_token_comes_from_the_environment_and_never_shows() -> None:
    """The token named by api.admin_token_env is read from the environment into a SecretStr; its
    value is absent from repr, str and the JSON dump of the config."""
    cfg = load_config(HERE / "good" / "full.toml", env={"ORACLED_ADMIN_TOKEN": TOKEN})
    assert cfg.admin_token is not None
    assert cfg.admin_token.get_secret_value() == TOKEN
    for text in (repr(cfg), str(cfg), repr(cfg.admin_token), cfg.model_dump_json()):
        assert TOKEN not in text
    assert "**********" in repr(cfg)


def test_the_token_variable_name_is_configurable() -> None:
    """A custom admin_token_env is honoured; the default variable is then ignored."""
    data = {
        "api": {"admin_token_env": "MY_TOKEN"},
        "sources": {"b": {"type": "binance"}},
        "markets": [
            {"symbol": "BTC/USD", "min_sources": 1, "sources": [{"source": "b", "pair": "BTC/USD"}]}
        ],
    }
    cfg = parse_config(data, env={"ORACLED_ADMIN_TOKEN": "x" * 8, "MY_TOKEN": TOKEN})
    assert cfg.admin_token is not None
    assert cfg.admin_token.get_secret_value() == TOKEN
    with pytest.raises(ConfigError) as caught:
        parse_config(data, env={"MY_TOKEN": "x" * 15})
    assert caught.value.problems == [
        "api.admin_token_env: $MY_TOKEN must hold at least 16 characters"
    ]


def test_lists_in_a_loaded_config_are_tuples_and_cannot_grow() -> None:
    """markets, market sources and routes are tuples: a frozen config is frozen all the way down."""
    cfg = load_config(HERE / "good" / "full.toml")
    assert isinstance(cfg.markets, tuple)
    assert isinstance(cfg.routes, tuple)
    assert all(isinstance(m.sources, tuple) for m in cfg.markets)


def test_a_config_dumped_whole_parses_again_to_the_same_config() -> None:
    """The shipped config, dumped with every default written out (as the simulators re-point it
    for `oracled demo`), is accepted again unchanged: the checks that refuse keys an on-chain
    source has no use for look at values that differ from the defaults, not at mere presence."""
    root = HERE.parent.parent
    for env in ({}, {"ORACLED_ETH_RPC_URLS": "http://127.0.0.1:8545"}):
        cfg = load_config(root / "config" / "default.toml", env=env)
        again = parse_config(cfg.model_dump(by_alias=True, exclude={"admin_token"}), env=env)
        assert again == cfg


def test_no_shipped_mark_follows_one_venue_where_more_are_listed() -> None:
    """A market of the shipped config that lists several perpetuals needs two of them counting
    for its mark and funding samples (docs/mark.md: with one, that venue's print alone moves
    the mark); a market with a single perpetual can need only that one."""
    cfg = load_config(HERE.parent.parent / "config" / "default.toml", env={})
    perpetual = [m for m in cfg.markets if m.perp_sources]
    assert len(perpetual) >= 20
    for market in perpetual:
        need = min(2, len(market.perp_sources))
        assert market.mark.min_perp_sources >= need, market.symbol


def test_listen_takes_ip_addresses_and_host_names() -> None:
    """api.listen (and --listen) accept IPv4, bracketed IPv6 and host names; a host that is
    neither is refused before the daemon tries to bind it."""
    assert parse_listen("0.0.0.0:8480") == ("0.0.0.0", 8480)
    assert parse_listen("[::1]:8480") == ("::1", 8480)
    assert parse_listen("localhost:0") == ("localhost", 0)
    assert parse_listen("oracled-0.oracled.svc.cluster.local:8480")[0].endswith(".local")
    for bad in ("1.2.3:8480", "-host:8480", "host_name:8480", "a..b:8480", "*:8480"):
        with pytest.raises(ValueError, match="is not an"):
            parse_listen(bad)


@pytest.mark.parametrize("port", ["٨٠", "²", "8480\u200b", "9" * 5000, ""])
def test_a_listen_port_is_ascii_digits(port: str) -> None:
    """A port of other digits than 0-9 is refused as not HOST:PORT. int() read the
    Arabic-Indic "٨٠" as port 80, so the config loaded and the daemon bound a port the file
    does not show; "²" (a digit to str.isdigit, not to int()) and 5,000 digits (past int()'s
    limit) were refused in Python's words ("invalid literal for int()", "Exceeds the limit")."""
    with pytest.raises(ValueError) as caught:
        parse_listen(f"127.0.0.1:{port}")
    assert str(caught.value) == "must be HOST:PORT, e.g. 127.0.0.1:8480"


def test_the_admin_token_loses_the_whitespace_around_it() -> None:
    """A token read from a file or a Secret often ends in a newline, which no HTTP client can
    send (header values are trimmed): kept, it made every admin request 401. It is stripped, as
    the signing key is, and its length is checked without it."""
    data = {
        "sources": {"b": {"type": "binance"}},
        "markets": [
            {"symbol": "BTC/USD", "min_sources": 1, "sources": [{"source": "b", "pair": "BTC/USD"}]}
        ],
    }
    cfg = parse_config(data, env={"ORACLED_ADMIN_TOKEN": f" {TOKEN}\n"})
    assert cfg.admin_token is not None
    assert cfg.admin_token.get_secret_value() == TOKEN
    with pytest.raises(ConfigError) as caught:
        parse_config(data, env={"ORACLED_ADMIN_TOKEN": "x" * 15 + "\n"})
    assert caught.value.problems == [
        "api.admin_token_env: $ORACLED_ADMIN_TOKEN must hold at least 16 characters"
    ]


def test_an_empty_token_variable_is_no_token_as_the_shipped_env_file_says() -> None:
    """deploy/systemd/oracled.env.example ships `ORACLED_ADMIN_TOKEN=` and says that unset, the
    admin endpoints are off; systemd (and compose's env_file) set it empty, and the daemon
    refused to start ('must hold at least 16 characters'). Empty, or only blanks, is unset."""
    example = HERE.parent.parent / "deploy" / "systemd" / "oracled.env.example"
    env = dict(
        line.split("=", 1)
        for line in example.read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    )
    assert env["ORACLED_ADMIN_TOKEN"] == ""
    for value in ("", " \n"):
        cfg = load_config(HERE / "good" / "minimal.toml", env={**env, "ORACLED_ADMIN_TOKEN": value})
        assert cfg.admin_token is None


def test_a_byte_order_mark_is_no_toml_error(tmp_path: Path) -> None:
    """An editor that saves UTF-8 with a byte order mark: the file loads as without it, where it
    was refused with 'Invalid statement (at line 1, column 1)', pointing at nothing visible."""
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + (HERE / "good" / "minimal.toml").read_bytes())
    assert load_config(path, env={}) == load_config(HERE / "good" / "minimal.toml", env={})


def test_the_kinds_each_source_type_serves_are_those_its_adapter_declares() -> None:
    """config.SOURCE_KINDS, which the config checks market entries against without importing
    any adapter, says for every source type exactly what its adapter's `kinds` says: a venue
    that gains or loses a kind cannot leave the check behind."""
    from oracled.sources import source_class

    assert set(SOURCE_KINDS) == set(SOURCE_TYPES)
    for name in SOURCE_TYPES:
        assert SOURCE_KINDS[name] == source_class(name).kinds, name


def test_every_venue_adapters_symbol_rule_reads_the_pair_alone() -> None:
    """The check of an `instruments` table (two pairs one symbol) applies each adapter's rule
    without making a source: a rule that came to read the instance would break config loading
    rather than the check. The kind's part of it (`kind_symbol`) too, for each kind served."""
    from oracled.sources import source_class

    for name in sorted(set(SOURCE_TYPES) - CHAIN_SOURCE_TYPES - {"pyth_hermes"}):
        adapter = source_class(name)
        symbol = adapter.venue_symbol(None, "BTC/USDT")  # type: ignore[arg-type]
        assert isinstance(symbol, str) and symbol, name
        for kind in sorted(adapter.kinds):
            assert adapter.kind_symbol(symbol, kind).startswith(symbol), (name, kind)


def test_every_venue_adapters_rule_writes_symbols_in_one_case() -> None:
    """An `instruments` entry is checked against the case of its adapter's rule (btcusdt on
    binance is refused): a rule of mixed case would leave that venue's entries unchecked."""
    from oracled.sources import source_class

    for name in sorted(set(SOURCE_TYPES) - CHAIN_SOURCE_TYPES - {"pyth_hermes"}):
        symbol = source_class(name).venue_symbol(None, "BTC/USDT")  # type: ignore[arg-type]
        assert symbol in (symbol.upper(), symbol.lower()), name


@pytest.mark.parametrize("path", WARN, ids=[p.stem for p in WARN])
def test_a_config_that_loads_gives_exactly_its_warnings(path: Path) -> None:
    """Each file under warn/ loads (its settings have a use, so they are not refused) and gives
    exactly the warnings its ``# warn: <key>: <text>`` header lines state, in order; a file
    stating none gives none."""
    expected = [
        line.removeprefix("# warn: ")
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.startswith("# warn: ")
    ]
    assert config_warnings(load_config(path, env={})) == expected


@pytest.mark.parametrize(
    "path", [*GOOD, HERE.parents[1] / "config" / "default.toml"], ids=lambda p: p.stem
)
def test_the_good_configs_and_the_shipped_one_give_no_warning(path: Path) -> None:
    """What is shipped and what is meant as a good example must not teach operators to ignore
    warnings: none of them gives one."""
    assert config_warnings(load_config(path, env={})) == []


def _band_round(ratio: float) -> tuple[str, list[str]]:
    """One round of a market (max_deviation 1 %) whose survivors sit at both edges of the 1 %
    band around the centre 100 while the candidate sits at the lower edge: the widest band
    relative to the candidate that survivors can make, 0.9999 / 99.0001 = 1.0100 %."""
    from oracled.core import Core
    from oracled.model import Quote

    prices = {"a": (99.0001, 2.01), "b": (100.0, 0.02), "c": (100.9999, 1.98), "x": (200.0, 0.03)}
    cfg = parse_config(
        {
            "oracle": {"resume_rounds": 1},
            "sources": {s: {"type": "coinbase"} for s in prices},
            "markets": [
                {
                    "symbol": "BTC/USD",
                    "min_sources": 2,
                    "max_confidence_ratio": ratio,
                    "sources": [
                        {"source": s, "pair": "BTC/USD", "weight": weight}
                        for s, (_, weight) in prices.items()
                    ],
                }
            ],
        },
        env={},
    )
    core, now = Core(cfg), 1_700_000_000_000
    for source, (price, _) in prices.items():
        assert core.ingest(Quote(source=source, pair="BTC/USD", recv_ts=now, price=price)) is None
    (report,) = core.run_round(now + 1).reports()
    return report.status, report.reasons


def test_the_band_can_pass_max_deviation_so_only_a_ratio_beyond_its_reach_is_refused() -> None:
    """The refusal bound of max_confidence_ratio is max_deviation / (1 - max_deviation), not
    max_deviation: survivors at both edges of the band around the centre with the candidate at
    the lower edge make a band of 1.0100 % of the price under max_deviation 1 %, so a ratio of
    1.009 % (above max_deviation, below the bound) still pauses the market as dispersion, and
    refusing it would have been wrong; 1.0101 % and above could never, and is refused."""
    assert _band_round(0.01009) == ("unknown", ["dispersion"])
    assert _band_round(0.0101) == ("degraded", ["outlier"])  # live: the band is 1.0100 %
    with pytest.raises(ConfigError) as caught:
        _band_round(0.0101011)
    assert caught.value.problems[0].startswith("markets[0].max_confidence_ratio: 0.0101011 can")


def _one_venue(type_: str, count: int, **source: object) -> Config:
    """`count` spot markets C0000/USDT, C0001/USDT... all quoted by one source `v` of `type_`."""
    pairs = [f"C{i:04d}/USDT" for i in range(count)]
    return parse_config(
        {
            "sources": {"v": {"type": type_, **source}},
            "markets": [
                {"symbol": p, "min_sources": 1, "sources": [{"source": "v", "pair": p}]}
                for p in pairs
            ],
        },
        env={},
    )


@pytest.mark.parametrize(
    ("type_", "most", "text"),
    [
        ("kucoin", 400, "over KuCoin's limit of 400 topics a connection"),
        ("binance", 1024, "over Binance's limit of 1024 streams a connection"),
        ("bitstamp", 1000, "over Bitstamp's limit of 1000 channels a connection"),
    ],
)
def test_more_instruments_than_the_venue_serves_on_a_connection_are_warned_about(
    type_: str, most: int, text: str
) -> None:
    """A source with more instruments than its venue allows on one connection is only partly
    served (the venue refuses the rest): the config warns, naming the venue's limit; at the
    limit it does not."""
    assert [w for w in config_warnings(_one_venue(type_, most)) if "a connection" in w] == []
    warnings = config_warnings(_one_venue(type_, most + 1))
    assert warnings == [
        f"sources.v: {most + 1} instruments on one connection, {text}: the venue refuses the "
        f"rest, which this source never prices; split its pairs over several sources of type "
        f"{type_} (the same settings under other ids, each with a connection of its own and its "
        "pairs' instruments entries) and list in each market the one that has its pair "
        "(docs/sources.md)"
    ]


def test_the_split_the_warning_names_loads_without_a_warning() -> None:
    """1025 Binance pairs on one source are over its 1024 streams; the same pairs split over two
    sources of type binance (one market each, listing the source that has its pair) give no
    warning at all: neither source is over the limit, and no market lists the venue twice."""
    pairs = [f"C{i:04d}/USDT" for i in range(1025)]
    cfg = parse_config(
        {
            "sources": {"v": {"type": "binance"}, "v_2": {"type": "binance"}},
            "markets": [
                {
                    "symbol": p,
                    "min_sources": 1,
                    "sources": [{"source": "v" if i < 513 else "v_2", "pair": p}],
                }
                for i, p in enumerate(pairs)
            ],
        },
        env={},
    )
    assert config_warnings(cfg) == []
    assert [w.split(":")[0] for w in config_warnings(_one_venue("binance", 1025))] == ["sources.v"]


def test_bybit_subscription_args_over_21000_characters_are_warned_about() -> None:
    """Bybit limits a connection's subscription args to 21,000 characters: 1000 level-1 topics
    of 21 characters (orderbook.1.C0000USDT) fit, 1001 do not; a long symbol from the
    instruments table counts at its length."""
    assert config_warnings(_one_venue("bybit_spot", 1000)) == []
    assert config_warnings(_one_venue("bybit_spot", 1001)) == [
        "sources.v: the subscription args of 1001 instruments come to 21021 characters on one "
        "connection, over Bybit's limit of 21000: the venue refuses the rest, which this source "
        "never prices; split its pairs over several sources of type bybit_spot (the same "
        "settings under other ids, each with a connection of its own and its pairs' instruments "
        "entries) and list in each market the one that has its pair (docs/sources.md)"
    ]
    longer = _one_venue("bybit_spot", 1000, instruments={"C0000/USDT": "C0000USDTX"})
    assert [w.split(":")[0] for w in config_warnings(longer)] == ["sources.v"]


_STATE_FILES = """
[oracle]
manual_pauses_file = "{pauses}"

[signing]
enabled = true
key_env = "ORACLED_SIGNING_KEY"
deployment = "test"
lease_file = "{lease}"

[audit]
enabled = true
path = "{audit}"

[sources.v]
type = "binance"

[[markets]]
symbol = "BTC/USDT"
min_sources = 1
sources = [{{ source = "v", pair = "BTC/USDT" }}]
"""


def test_check_config_compares_the_files_the_daemon_writes_where_their_links_lead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found reviewing the shared-file check: it compared the names as written, so a link and
    the file it leads to passed check-config, and `run` then refused the second writer as held
    by another process (the lock follows links). It now compares where links lead: a file
    named by a link, and a file on what a writer keeps beside the file a link leads to (a
    directory link here, SQLite's -wal being beside the real database), are refused."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    Path("lease.json").symlink_to("state.json")
    Path("data-link").symlink_to("data")
    Path("pauses.json").symlink_to("data/trail.db-wal")
    own = (
        "each needs a file of its own (one writer per file: the second would be refused at "
        "start as held by another process)"
    )
    kept = (
        "a file a writer keeps beside its own is that writer's alone (each rewrite of the one "
        "would replace the other under its writer)"
    )
    wal = tmp_path.resolve() / "data" / "trail.db-wal"
    for files, problem in (
        (
            {"pauses": "state.json", "lease": "lease.json", "audit": "trail.db"},
            f"signing.lease_file: names the file of oracle.manual_pauses_file (lease.json): {own}",
        ),
        (
            {"pauses": "pauses.json", "lease": "lease.sig", "audit": "data-link/trail.db"},
            f"audit.path: SQLite's -wal file of data-link/trail.db ({wal}) is the file of "
            f"oracle.manual_pauses_file: {kept}",
        ),
    ):
        config = tmp_path / "oracled.toml"
        config.write_text(_STATE_FILES.format(**files))
        assert main(["check-config", str(config)]) == 2, files
        assert capsys.readouterr().err.splitlines() == [f"{config}: 1 problem(s)", f"  {problem}"]
    config.write_text(_STATE_FILES.format(pauses="state.json", lease="lease.sig", audit="trail.db"))
    assert main(["check-config", str(config)]) == 0
