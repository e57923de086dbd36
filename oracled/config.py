"""Where the daemon's TOML file and the environment variables it names are read.

`load_config` parses a TOML file into frozen pydantic models and checks the whole thing at once:
first the shape of every table (types, ranges), then the relations between them (sources that
exist, conversion routes that resolve, no cycles). Every problem is reported with its key path,
e.g. ``markets[3].sources[1].weight: must be > 0``, and raised together as one `ConfigError`.

Secrets (the admin token) are named by environment variable in the file and read from the
environment here; they are held as `SecretStr` so that they never reach a log line. The signing
key is the exception: `publish/signer.py` reads it from its file or variable when the signer is
made, so that the key itself never enters the config.
"""

from __future__ import annotations

import hashlib
import importlib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    SecretStr,
    ValidationError,
    field_validator,
)

from oracled.errors import ConfigError, shown
from oracled.files import read_regular
from oracled.lockfile import beside_target
from oracled.urls import host_port_problem, shown_url

__all__ = [
    "AUDIT_BESIDE",
    "CHAIN_SOURCE_TYPES",
    "MAX_CHAIN_ID",
    "MAX_CONFIG_BYTES",
    "PUSH_PRICE_MAX",
    "RESOLUTION_UNITS",
    "SOURCE_KINDS",
    "WEIGHT_RANGE",
    "ApiConfig",
    "AuditConfig",
    "ChainConfig",
    "Config",
    "FeedSpec",
    "LogConfig",
    "MarkConfig",
    "MarketConfig",
    "MarketSource",
    "NatsConfig",
    "OracleConfig",
    "PushConfig",
    "PushMarketConfig",
    "RouteConfig",
    "SequencerConfig",
    "SigningConfig",
    "SourceConfig",
    "config_document",
    "config_warnings",
    "load_config",
    "log_config_warnings",
    "nats_auth_keys",
    "parse_config",
    "parse_config_text",
    "parse_listen",
    "read_config_text",
    "resolution_floor",
    "slot_max_age_ms",
    "slot_route",
]

# Source type -> "module:Class" of its adapter, imported only when a config uses it.
SOURCE_TYPES: dict[str, str] = {
    "binance": "oracled.sources.binance:BinanceSource",
    "kraken": "oracled.sources.kraken:KrakenSource",
    "bitstamp": "oracled.sources.bitstamp:BitstampSource",
    "okx": "oracled.sources.okx:OkxSource",
    "kucoin": "oracled.sources.kucoin:KucoinSource",
    "coinbase": "oracled.sources.coinbase:CoinbaseSource",
    "gemini": "oracled.sources.gemini:GeminiSource",
    "gemini_ws": "oracled.sources.gemini_ws:GeminiWsSource",
    "binance_usdm": "oracled.sources.binance_usdm:BinanceUsdmSource",
    "bybit_linear": "oracled.sources.bybit:BybitLinearSource",
    "bybit_spot": "oracled.sources.bybit:BybitSpotSource",
    "pyth_hermes": "oracled.sources.pyth_hermes:PythHermesSource",
    "chainlink": "oracled.sources.evm.chainlink:ChainlinkSource",
    "uniswap_v3": "oracled.sources.evm.uniswap_v3:UniswapV3Source",
    "pyth_evm": "oracled.sources.evm.pyth_evm:PythEvmSource",
}
#: Instrument kinds each source type serves: the `kinds` its adapter class declares (a test holds
#: the two equal), here so that checking a config imports no adapter. A market entry of another
#: kind would only be marked failed when the source starts.
SOURCE_KINDS: dict[str, frozenset[Literal["spot", "perp"]]] = {
    **{name: frozenset({"spot"}) for name in SOURCE_TYPES},
    "okx": frozenset({"spot", "perp"}),
    "binance_usdm": frozenset({"perp"}),
    "bybit_linear": frozenset({"perp"}),
}
#: Source types read from a chain through its `[chains.<id>]` reader instead of a venue socket.
CHAIN_SOURCE_TYPES: frozenset[str] = frozenset({"chainlink", "uniswap_v3", "pyth_evm"})
#: Multicall3's address on nearly every EVM chain (the same CREATE2 deployment everywhere).
MULTICALL3_ADDRESS = "0xcA11bde05977b3631167028862bE2a173976CA11"
MAX_SOURCES_PER_MARKET = 64
_PAIR = r"^[A-Z0-9]{1,20}/[A-Z0-9]{1,20}$"
_ID = r"^[a-z0-9][a-z0-9_\-]{0,39}$"


def _check_pair(value: str) -> str:
    base, _, quote = value.partition("/")
    if base == quote:
        raise ValueError("base and quote must differ")
    return value


Pair = Annotated[str, Field(pattern=_PAIR), AfterValidator(_check_pair)]
_ADDRESS = r"^0x[0-9a-fA-F]{40}$"
PosFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
#: The shortest interval or timeout a key takes, 1 ms: no deployment paces a loop or waits on a
#: peer for less (a venue's or a node's round trip alone is longer), and the test rigs' fastest,
#: a REST poll of a loopback simulator, is 1 ms. Before, 1e-300 was taken, and the loop it
#: paced (a poll, a reconnect, a push look) spun a core.
MIN_INTERVAL_S = 0.001


def _interval(most: float) -> Any:
    """The bounds of an interval or timeout key, in seconds: `MIN_INTERVAL_S` to `most`."""
    return Field(ge=MIN_INTERVAL_S, le=most, allow_inf_nan=False)


def _as_tuple(value: Any) -> Any:
    """TOML arrays arrive as lists; hold them as tuples so a frozen config stays frozen."""
    return tuple(value) if isinstance(value, list) else value


#: How far ahead of our receive time a venue time may be (`oracle.max_clock_skew_ms`).
DEFAULT_MAX_CLOCK_SKEW_MS = 2_000

#: The fewest blocks of its chain a Uniswap v3 TWAP window should span: the price one block
#: leaves (set by whoever builds it, with no trade against it inside) weighs 1/N of the TWAP
#: (docs/onchain.md, *The window's floor*). Shorter windows are warned about.
_TWAP_FLOOR_BLOCKS = 10
#: The block time a chain without `block_time_s` is taken to have for that floor: Ethereum's.
_TWAP_FLOOR_BLOCK_TIME_S = 12.0


#: The name of an environment variable (what a shell can export), for the `*_env` keys.
_EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


def _names_a_file(value: str, example: str) -> str:
    """A path the daemon writes a file at (with its lock file beside it): one that ends in "/",
    ".", or ".." names a directory, which no file can be written over."""
    _no_nul(value)
    if value.endswith("/") or Path(value).name in ("", ".", ".."):
        raise ValueError(f"must name a file (e.g. {example}), not a directory")
    return value


def _no_nul(value: str) -> str:
    """No path holds a NUL: the OS calls refuse it with ValueError, not the OSError the loaders
    of key, lease and pauses files turn into a problem, so it stopped `run` and `check-config
    --as-daemon` with a traceback, after `check-config` passed it."""
    if "\x00" in value:
        raise ValueError("must not contain a NUL character (no file path can)")
    return value


#: A file the daemon reads or writes, named in the config.
_FilePath = Annotated[str, Field(min_length=1), AfterValidator(_no_nul)]


class _Frozen(BaseModel):
    # strict: "yes" is not a boolean and "3" is not a number in a risk config.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class OracleConfig(_Frozen):
    """Round timing and the gates that apply to every market."""

    round_interval_ms: Annotated[int, Field(ge=10, le=60_000)] = 250
    max_clock_skew_ms: Annotated[int, Field(ge=0, le=60_000)] = DEFAULT_MAX_CLOCK_SKEW_MS
    resume_rounds: Annotated[int, Field(ge=1, le=10_000)] = 3
    jump_confirm_rounds: Annotated[int, Field(ge=1, le=10_000)] = 4
    min_price: PosFloat = 1e-12
    max_price: PosFloat = 1e12
    #: Where operator pauses are kept across restarts (oracled/manual.py), relative to the
    #: working directory; unset, a restart lifts them.
    manual_pauses_file: _FilePath | None = None

    @field_validator("manual_pauses_file")
    @classmethod
    def _check_pauses_file(cls, value: str | None) -> str | None:
        return None if value is None else _names_a_file(value, "oracled-manual-pauses.json")


class ApiConfig(_Frozen):
    """The HTTP/WebSocket API and its admin guard."""

    listen: str = "127.0.0.1:8480"
    admin_token_env: _EnvName | None = "ORACLED_ADMIN_TOKEN"
    ready_fraction: Annotated[float, Field(ge=0, le=1)] = 0.5
    stream_queue: Annotated[int, Field(ge=1, le=100_000)] = 256
    #: An HTTP answer not written within this is abandoned and its connection closed.
    send_timeout_s: Annotated[float, _interval(600)] = 10.0
    #: Client connections served at once; a request on one more is answered 503 and closed.
    max_connections: Annotated[int, Field(ge=1, le=1_000_000)] = 1024
    #: Of those, connections one client address may hold; a request on one more is answered 429
    #: and closed. A quarter of the cap's default: one client cannot take every place.
    max_connections_per_address: Annotated[int, Field(ge=1, le=1_000_000)] = 256
    #: Failed admin token checks from one address within the window that refuse its admin calls
    #: for `admin_lockout_s` (oracled/api/lockout.py). 0: no lock-out.
    admin_lockout_failures: Annotated[int, Field(ge=0, le=1_000)] = 10
    admin_lockout_window_s: Annotated[float, _interval(86_400)] = 60.0
    admin_lockout_s: Annotated[float, _interval(86_400)] = 300.0
    #: A keep-alive connection idle this long is closed (aiohttp's own default is an hour, which
    #: lets clients that vanished hold places under max_connections).
    idle_timeout_s: Annotated[float, _interval(3_600)] = 75.0
    #: Browser origins allowed to read the API across origins (CORS); "*" for any. Empty: none.
    cors_origins: tuple[str, ...] = ()
    #: Bytes the price bodies kept for one round may hold, gzip forms included (api/read.py): a
    #: client chooses its selections, so this bounds what it can make the daemon keep. 0: none
    #: kept, each body made per request. Up to 1 GiB, far past the whole array of 10,000 markets.
    round_body_bytes: Annotated[int, Field(ge=0, le=2**30)] = 8 * 1024 * 1024
    #: Distinct price bodies kept for one round (the whole array, selections, single markets),
    #: whatever their bytes: each holds its key (up to 256 market names) beside them. 0: none
    #: kept. Up to 65,536: every market of a large config alone, and its selections, and far
    #: past what the bytes bound lets through at its default.
    round_bodies: Annotated[int, Field(ge=0, le=65_536)] = 256
    #: Host names a request's `Host` may name besides the API's own (an IP address, localhost,
    #: the listen host): a page whose name an attacker's DNS points at this address (DNS
    #: rebinding) is refused. ".example.com" for any name under it; "*" for any Host.
    allowed_hosts: tuple[str, ...] = ()

    _cors_tuple = field_validator("cors_origins", mode="before")(_as_tuple)
    _hosts_tuple = field_validator("allowed_hosts", mode="before")(_as_tuple)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            # As a browser serializes it in Origin: scheme://host[:port], nothing after.
            if origin != "*" and not re.fullmatch(r"https?://[^/\s?#]+", origin):
                raise ValueError(f"{shown(origin)} is not * or an origin like https://host[:port]")
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _check_hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for host in value:
            # The name alone, as a Host header names it less its port (any port is allowed).
            name = host[1:] if host.startswith(".") else host
            try:
                if host != "*":
                    _check_host(name)
            except ValueError:
                raise ValueError(
                    f"{shown(host)} is not *, a host name (api.example.com, no scheme or port)"
                    " or .example.com for the names under it"
                ) from None
        return value


class LogConfig(_Frozen):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


#: The problem a signing config without a lease file is refused with, at load and, for a config
#: built without validation, when the service opens the lease.
LEASE_FILE_REQUIRED = (
    "signing.lease_file: required when signing is enabled: a file on storage that outlives the "
    'daemon (e.g. "oracled-signing-lease.json" in its working directory), where the key reserves '
    "each round time before signing it, so that a restart after a crash, with the clock behind, "
    "never signs one twice"
)


class SigningConfig(_Frozen):
    """Signing of every round (docs/publishing.md): the key is named here and read at start-up.

    Exactly one of `key_file` (a file of mode 600 holding the hex key) and `key_env` (an
    environment variable holding it) when enabled; the key itself never enters the config.
    `deployment` names this installation in the signed domain (its EIP-712 `salt`), so that a
    key shared by two deployments cannot make one's prices pass for the other's; it has no
    default, since one default shared by every deployment would undo exactly that. `lease_file`
    is required too: without it a restart after a crash, with the clock behind, could sign a
    round time a second time, which every consumer refuses as equivocation.
    """

    enabled: bool = False
    key_file: _FilePath | None = None
    key_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    deployment: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")] | None = None
    #: The signing lease (oracled/publish/sign_lease.py), relative to the working directory:
    #: the round times the key may sign, reserved on disk first, so that no restart (after a
    #: crash, with the clock behind, without the audit trail) signs one of them again.
    #: Required when enabled (no default: it must be on storage that outlives the process, which
    #: only the operator knows; the working directory of an in-process test is not).
    lease_file: _FilePath | None = None
    #: How far ahead of the rounds the lease reaches: one write per half window; after a crash,
    #: signing waits up to a window for the clock to pass it.
    lease_window_ms: Annotated[int, Field(ge=1_000, le=600_000)] = 10_000

    @field_validator("lease_file")
    @classmethod
    def _check_lease_file(cls, value: str | None) -> str | None:
        return None if value is None else _names_a_file(value, "oracled-signing-lease.json")


class NatsConfig(_Frozen):
    """The NATS sink: one subject per market plus a round subject (docs/publishing.md)."""

    enabled: bool = False
    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    subject_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")] = (
        "oracled"
    )
    #: Capture every subject of the prefix in a JetStream stream, for late consumers.
    jetstream: bool = False
    stream: Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")] = "ORACLED"
    #: At least 0.1 s: nats-server refuses a stream kept less than 100 ms (the sink then logs
    #: `jetstream stream not set up` and captures nothing), and a value under a nanosecond
    #: reaches it as 0, which it reads as no age limit at all.
    max_age_s: Annotated[float, Field(ge=0.1, le=366 * 86400)] = 3600.0
    #: The stream's size limit (the oldest messages go first): an hour of 1,000 markets at the
    #: default interval is about 18 GB, in memory with `storage = "memory"`.
    max_bytes: Annotated[int, Field(ge=1 << 20, le=1 << 50)] = 1 << 30
    storage: Literal["file", "memory"] = "file"
    #: Rounds waiting for the publisher; past it the oldest is dropped and counted.
    queue: Annotated[int, Field(ge=1, le=10_000)] = 16
    # Authentication: at most one way (`_nats_relations`). Secrets come from a file that group
    # and others cannot access or from an environment variable; the file names none of them.
    token_env: _EnvName | None = None
    user: Annotated[str, Field(min_length=1, pattern=r"^\S+$")] | None = None
    password_env: _EnvName | None = None
    creds_file: _FilePath | None = None  # a `.creds` file: the user's JWT and NKey seed
    creds_env: _EnvName | None = None
    nkey_seed_file: _FilePath | None = None
    nkey_seed_env: _EnvName | None = None
    # TLS: a private CA to trust, and a client certificate for mutual TLS.
    tls_ca_file: _FilePath | None = None
    tls_cert_file: _FilePath | None = None
    tls_key_file: _FilePath | None = None
    #: TLS before the server's greeting (nats-server's `handshake_first`); required with TLS,
    #: the only way nats-py never sends credentials or prices in clear (`_nats_relations`).
    tls_handshake_first: bool = False

    _servers_tuple = field_validator("servers", mode="before")(_as_tuple)

    @field_validator("servers")
    @classmethod
    def _check_servers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("list at least one server")
        for url in value:
            quoted = shown(shown_url(url))
            if not re.fullmatch(r"(nats|tls)://[^\s/]+", url):
                raise ValueError(f"{quoted} is not a nats:// or tls:// URL")
            _check_host_port(url, quoted)
        return value


def _check_address(value: str) -> str:
    """0x + 40 hex; a mixed-case address must carry a valid EIP-55 checksum (a typo guard)."""
    body = value[2:]
    if body != body.lower() and body != body.upper():
        from oracled.eth import checksum_address  # imported only for mixed case

        if checksum_address(value) != value:
            raise ValueError("mixed-case address with a wrong EIP-55 checksum")
    return value


Address = Annotated[str, Field(pattern=_ADDRESS), AfterValidator(_check_address)]


class AuditConfig(_Frozen):
    """The audit trail (docs/publishing.md): every round's inputs and outputs in SQLite.

    Retention keeps whichever is smaller: `retention_days` of rounds and `max_bytes` of data
    (0 turns either limit off). Writes happen in a worker thread; `queue` rounds may wait for it,
    past that a round is dropped from the trail and counted, never waited for.
    """

    enabled: bool = False
    path: str = "oracled-audit.sqlite3"
    #: Two days fit in `max_bytes` at the shipped 23 markets (~4 GB a day): the two agree.
    retention_days: Annotated[float, Field(ge=0, le=36_500, allow_inf_nan=False)] = 2.0
    max_bytes: Annotated[int, Field(ge=0)] = 10 * 1024**3
    queue: Annotated[int, Field(ge=1, le=100_000)] = 64
    #: Rounds written per transaction at most (a batch also ends when the queue is empty).
    batch_rounds: Annotated[int, Field(ge=1, le=10_000)] = 32
    #: The disk reserve beside the database (`<path>.reserve`), given back to the filesystem
    #: when the disk fills so that old rounds can be deleted (an eighth of `max_bytes` when
    #: that is less). Below 64 KiB it could not hold one batch's `-wal` frames; above 1 GiB it
    #: is disk kept idle for what ~4 MB of `-wal` needs.
    reserve_bytes: Annotated[int, Field(ge=64 * 1024, le=1024**3)] = 8 * 1024**2

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        """Refused here: "" or "." once stopped the writer thread with a traceback at start-up
        (no file name to put its lock file beside), and a directory is no database."""
        return _names_a_file(value, "oracled-audit.sqlite3")


#: The largest price mantissa the on-chain feed stores (its `int128 price`): a pushed market's
#: price bound times 10 ** its decimals must stay within it.
PUSH_PRICE_MAX = 2**127 - 1


class PushMarketConfig(_Frozen):
    """Per-market overrides of the on-chain push thresholds."""

    deviation: Fraction | None = None
    heartbeat_s: Annotated[float, _interval(30 * 86_400)] | None = None


class PushConfig(_Frozen):
    """The on-chain pusher (docs/publishing.md): Chainlink-style updates of an OracledFeed.

    A market is pushed when its price moved by `deviation` (a fraction) since the last push, or
    when `heartbeat_s` passed; only `active` prices are ever pushed. The key (exactly one of
    `key_file`, mode 600, and `key_env`) is the contract's authorized pusher.
    """

    enabled: bool = False
    chain: Annotated[str, Field(pattern=_ID)] | None = None
    contract: Address | None = None
    key_file: _FilePath | None = None
    key_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    deviation: Fraction = 0.005
    heartbeat_s: Annotated[float, _interval(30 * 86_400)] = 3600.0
    #: The most the pusher will ever offer per gas (maxFeePerGas), in gwei.
    max_gas_price_gwei: Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)] = 100.0
    #: The tip it starts from, in gwei (raised by replacements, never above the cap).
    priority_fee_gwei: Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)] = 1.0
    #: A transaction not mined after this long is replaced (same nonce, fees +12.5 %).
    replace_after_s: Annotated[float, _interval(3600)] = 30.0
    #: Markets per transaction at most (the most deviated and the most overdue go first).
    max_batch: Annotated[int, Field(ge=1, le=1_000)] = 100
    #: How often the pusher looks at the latest round.
    interval_s: Annotated[float, _interval(3600)] = 1.0
    #: The last confirmed push is looked for again once this many blocks are on top of its own,
    #: to notice a reorganisation that took it off: the chain's finality depth in its blocks.
    #: At most 100,000: past Ethereum's finality (64 to 96 blocks) and an L2's (4 blocks a
    #: second reach its L1's 13 minutes in some 3,000), and well inside the transaction index a
    #: geth-family node keeps by default (2,350,000 blocks), past which a push still on chain
    #: has no receipt to find and would be taken for one a reorganisation took off.
    recheck_depth_blocks: Annotated[int, Field(ge=1, le=100_000)] = 12
    #: A `max_batch` the pusher lowered grows back by a quarter after this many confirmed pushes.
    grow_batch_after: Annotated[int, Field(ge=1, le=10_000)] = 10
    #: After a start, a market `unknown` that has not been active since (the gates rebuilding
    #: its quorum) gets no pause entry on chain for this long: every restart would otherwise
    #: pause, then resume, every market with a price on chain. Past it, or once the market was
    #: active in this run, `unknown` is paused on chain as `paused` is.
    start_grace_s: Annotated[float, Field(ge=0, le=3600, allow_inf_nan=False)] = 30.0
    #: The contract's deployment block: from there the pusher scans the contract's
    #: `PriceUpdated` logs for every market it ever priced, and pauses on chain the ones this
    #: config does not push (None: no scan, and a market left out of the config before a
    #: restart keeps its last price live on chain).
    scan_from_block: Annotated[int, Field(ge=0, le=2**63 - 1)] | None = None
    #: Blocks an `eth_getLogs` request of that scan spans at most (public RPCs limit it): halved
    #: while the node refuses a range, grown back by doubling after 8 ranges answered.
    scan_max_blocks: Annotated[int, Field(ge=1, le=1_000_000)] = 2_000
    #: Markets to push (empty: every market).
    markets: tuple[Pair, ...] = ()
    overrides: dict[Pair, PushMarketConfig] = Field(default_factory=dict)

    _markets_tuple = field_validator("markets", mode="before")(_as_tuple)


#: The most in-range liquidity a Uniswap v3 pool holds (a uint128).
MAX_POOL_LIQUIDITY = 2**128 - 1


def _check_liquidity(value: object) -> int | float:
    """A pool's `min_liquidity`: an integer, or a float, since the liquidity of two 18-decimal
    tokens often exceeds TOML's 64-bit integers. One check, not a union of the two types, whose
    problems named pydantic's members (`min_liquidity.constrained-int`), twice for one value.
    At most a uint128: a larger minimum flags every quote of the pool, and an integer past a
    float's range stopped the source at each start (OverflowError in its float())."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    if isinstance(value, float) and not math.isfinite(value):  # (isfinite overflows on ints)
        raise ValueError("must be a finite number")
    if value < 0:
        raise ValueError("must be >= 0")
    if value > MAX_POOL_LIQUIDITY:
        raise ValueError(
            f"must be <= {float(MAX_POOL_LIQUIDITY):g} (2**128 - 1, the most liquidity a pool "
            "holds: a larger minimum flags every quote of the pool)"
        )
    return value


Liquidity = Annotated[int | float, PlainValidator(_check_liquidity)]


class FeedSpec(_Frozen):
    """One on-chain feed of a source; which keys apply depends on the source type.

    chainlink: `address` (the proxy), `heartbeat_s`. pyth_evm: `feed_id`, `max_age_s`.
    uniswap_v3: `address` (the pool), `twap_window_s`, `min_liquidity`, `token0_decimals`,
    `token1_decimals`, `invert` (true when the pair's base is the pool's token1),
    `base_token` (the base's token address: `invert` checked against the pool's tokens),
    `max_spot_deviation` (TWAP vs slot0 cross-check).
    """

    address: Address | None = None
    heartbeat_s: Annotated[int, Field(ge=1, le=7 * 86_400)] | None = None
    feed_id: Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{64}$")] | None = None
    max_age_s: Annotated[int, Field(ge=1, le=7 * 86_400)] | None = None
    twap_window_s: Annotated[int, Field(ge=1, le=7 * 86_400)] = 300
    min_liquidity: Liquidity | None = None
    token0_decimals: Annotated[int, Field(ge=0, le=36)] | None = None
    token1_decimals: Annotated[int, Field(ge=0, le=36)] | None = None
    invert: bool = False
    base_token: Address | None = None
    max_spot_deviation: Fraction | None = None


# Keys of a venue source (a socket and its REST fallback) that an on-chain source has no use for.
_VENUE_KEYS = (
    "ws_url",
    "rest_url",
    "instruments",
    "liveness_timeout_s",
    "rest_poll_interval_s",
    "reconnect_max_s",
    "max_connection_age_s",
)
# Keys each on-chain type needs in every feed spec, and keys it does not understand.
# Keys only a pool (uniswap_v3) reads.
_POOL_KEYS = (
    "twap_window_s", "token0_decimals", "token1_decimals", "invert", "base_token",
    "max_spot_deviation",
)  # fmt: skip
_FEED_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "chainlink": (
        ("address", "heartbeat_s"),
        ("feed_id", "max_age_s", "min_liquidity", *_POOL_KEYS),
    ),
    "pyth_evm": (
        ("feed_id", "max_age_s"),
        ("address", "heartbeat_s", "min_liquidity", *_POOL_KEYS),
    ),
    "uniswap_v3": (
        ("address", "min_liquidity", "token0_decimals", "token1_decimals"),
        ("feed_id", "max_age_s", "heartbeat_s"),
    ),
}


class SequencerConfig(_Frozen):
    """An L2 sequencer uptime feed (Chainlink): answer 0 = up, 1 = down; startedAt = since."""

    address: Address
    grace_period_s: Annotated[int, Field(ge=0, le=86_400)] = 3600


#: The largest chain id: EIP-2294's floor((2**64 - 1) / 2) - 36, so that EIP-155's `v`
#: (2 * id + 36 at most) fits 64 bits. Nodes built on 64-bit chain ids refuse more (anvil
#: refuses 2**64) while eth-account signs any integer (2**256 too): a chain id past them would
#: be found only by a node refusing the pusher's transactions. Every chain in use sits far
#: below the bound.
MAX_CHAIN_ID = (2**64 - 1) // 2 - 36


class ChainConfig(_Frozen):
    """One EVM chain and how to reach it.

    RPC URLs usually carry an API key, so the file names an environment variable holding them
    (comma-separated); `rpc_urls` in the file is meant for loopback test nodes. With neither,
    the chain and every source on it stay off and the daemon says so at start-up. A provider's
    WebSocket URL carries the key too: `ws_url_env` names the variable holding it instead of
    `ws_url` (the reader uses `heads_url`).
    """

    chain_id: Annotated[int, Field(ge=1, le=MAX_CHAIN_ID)]
    rpc_urls_env: Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]*$")] | None = None
    rpc_urls: tuple[str, ...] = ()
    ws_url: str | None = None
    ws_url_env: Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]*$")] | None = None
    poll_interval_s: Annotated[float, _interval(3600)] = 1.0
    timeout_s: Annotated[float, _interval(60)] = 2.0
    cross_check: bool = False
    #: A block older than this by our clock is not published (a node stuck or syncing). Bounded:
    #: inf, or a number that is inf once in milliseconds, turned that check off.
    max_block_age_s: Annotated[float, _interval(86_400)] = 300.0
    #: The chain's usual block interval: newHeads silent for three of them makes the reader
    #: poll (and subscribe again if the poll finds a block); unset, it waits max_block_age_s.
    block_time_s: Annotated[float, _interval(3600)] | None = None
    multicall: Address = MULTICALL3_ADDRESS
    sequencer: SequencerConfig | None = None
    #: Filled by parse_config from `rpc_urls_env` (else `rpc_urls`); empty means disabled.
    resolved_urls: tuple[str, ...] = Field(default=(), exclude=True)
    #: Filled by parse_config from `ws_url_env` when it is set; never written back out.
    resolved_ws_url: str | None = Field(default=None, exclude=True)

    # resolved_urls too, so that a file setting it meets the relation check that names the
    # mistake, not a type error claiming its array is no array.
    _urls_tuple = field_validator("rpc_urls", "resolved_urls", mode="before")(_as_tuple)

    @field_validator("rpc_urls")
    @classmethod
    def _check_urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            _check_http_url(url)
        return value

    @field_validator("ws_url")
    @classmethod
    def _check_ws(cls, value: str | None) -> str | None:
        return None if value is None else _check_ws_url(value)

    @property
    def heads_url(self) -> str | None:
        """Where newHeads is read: the URL of `ws_url_env` when it is set, else `ws_url`."""
        return self.resolved_ws_url or self.ws_url


def _check_ws_url(url: str) -> str:
    if not re.match(r"^wss?://[^\s/]+", url):
        raise ValueError("must be an absolute ws:// or wss:// URL")
    _check_host_port(url, "the URL")  # never the URL itself: it may hold an API key
    return url


def _check_http_url(url: str) -> str:
    if not re.match(r"^https?://[^\s/]+", url):
        raise ValueError("each RPC URL must be an absolute http:// or https:// URL")
    _check_host_port(url, "each RPC URL")  # never the URL itself: it may hold an API key
    return url


def _check_host_port(url: str, what: str) -> None:
    """A URL's host and port as the client that dials it reads them. A port that is none
    (`:99999`, `:9x`, another script's digits), an unclosed `[` or a control character loaded,
    and the source, chain reader or sink then failed every connect (aiohttp's
    InvalidUrlClientError), restarted forever, instead of the config naming the key."""
    if host_port_problem(url) is not None:
        raise ValueError(
            f"{what} must name a host and, if any, a port from 0 to 65535, with no control "
            "character or line break"
        )


def _check_distinct_urls(urls: tuple[str, ...]) -> None:
    """A chain's RPC URLs name distinct endpoints: one listed twice would vote twice in a
    cross-check (two reads of one node outvote an honest third URL, which is then left) and be
    failed over to itself. Compared with the scheme and host in lower case and without a
    trailing slash; the message gives positions, never a URL (it may hold an API key)."""
    seen: dict[str, int] = {}
    for position, url in enumerate(urls, 1):
        scheme, _, rest = url.partition("://")
        host, slash, path = rest.partition("/")
        key = f"{scheme.lower()}://{host.lower()}{slash}{path}".rstrip("/")
        if key in seen:
            raise ValueError(
                f"RPC URL {position} repeats URL {seen[key]}: one endpoint listed twice would "
                "vote twice in a cross-check and be failed over to itself"
            )
        seen[key] = position


def _no_whitespace(value: str) -> str:
    """A venue symbol or feed id with a space in or around it (a copy-paste) is refused: no
    venue lists such a symbol, so the pair could only fail at start-up or never quote."""
    if re.search(r"\s", value):
        raise ValueError(
            f"must not contain whitespace ({shown(value)}): no venue symbol or feed id has any"
        )
    return value


class SourceConfig(_Frozen):
    """One feed instance. Several instances may share a type (e.g. two Binance hosts)."""

    type: str
    enabled: bool = True
    ws_url: str | None = None
    rest_url: str | None = None
    instruments: dict[Pair, Annotated[str, Field(min_length=1), AfterValidator(_no_whitespace)]] = (
        Field(default_factory=dict)
    )
    liveness_timeout_s: Annotated[float, _interval(3600)] = 30.0
    rest_poll_interval_s: Annotated[float, _interval(3600)] = 2.0
    reconnect_max_s: Annotated[float, _interval(3600)] = 30.0
    max_connection_age_s: Annotated[float, _interval(7 * 86_400)] = 23 * 3600.0
    #: On-chain types only: the `[chains.<id>]` to read from, the contract all feeds share
    #: (Pyth), and one feed spec per canonical pair.
    chain: Annotated[str, Field(pattern=_ID)] | None = None
    address: Address | None = None
    feeds: dict[Pair, FeedSpec] = Field(default_factory=dict)
    #: Pyth sources only (pyth_hermes, pyth_evm): a confidence band (conf) wider than this
    #: fraction of the price flags the quote `confidence`; docs/onchain.md says why 0.02.
    max_conf_ratio: Fraction = 0.02

    @field_validator("type")
    @classmethod
    def _check_type(cls, value: str) -> str:
        if value not in SOURCE_TYPES:
            raise ValueError(
                f"unknown source type {shown(value)}; known: {', '.join(SOURCE_TYPES)}"
            )
        return value

    @field_validator("ws_url", "rest_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(wss?|https?)://[^\s/]+", value):
            raise ValueError("must be an absolute ws://, wss://, http:// or https:// URL")
        if value is not None:
            _check_host_port(value, "the URL")
        return value


#: The range of a market source's `weight`. Weights are relative, so a ratio of 1e24 between two
#: says all there is to say; beyond it the weighted median's cumulative weights overflow to inf
#: (three of 1e308) or sink into subnormals (three of 5e-324 no longer split evenly), and the
#: market gets no price, or a wrong one, from sources that agree.
WEIGHT_RANGE = (1e-12, 1e12)


def _check_weight(value: float) -> float:
    low, high = WEIGHT_RANGE
    if not low <= value <= high:
        raise ValueError(
            f"must be from {low:g} to {high:g} (weights are relative: outside this range a "
            "market's sum of weights overflows, or vanishes below float precision, and the "
            "weighted median is wrong)"
        )
    return value


class MarketSource(_Frozen):
    """One source's contribution to a market: which pair it quotes and its weight."""

    source: Annotated[str, Field(pattern=_ID)]
    pair: Pair
    kind: Literal["spot", "perp"] = "spot"
    weight: Annotated[PosFloat, AfterValidator(_check_weight)] = 1.0
    #: Oldest quote this source may give for this market; default: the market's max_age_ms, or,
    #: for on-chain feeds that update on a heartbeat, the feed's own limit (see docs/config.md).
    max_age_ms: Annotated[int, Field(ge=1, le=7 * 86_400_000)] | None = None


class MarkConfig(_Frozen):
    """Mark price and funding parameters of a perpetual market (docs/mark.md).

    Rates are fractions per funding interval (0.0001 is 0.01 %), the Binance-style defaults.
    """

    basis_half_life_s: Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)] = 60.0
    funding_interval_s: Annotated[int, Field(ge=60, le=7 * 86_400)] = 28_800
    interest_rate: Annotated[float, Field(ge=-0.1, le=0.1, allow_inf_nan=False)] = 0.0001
    premium_clamp: Annotated[float, Field(ge=0, le=0.1, allow_inf_nan=False)] = 0.0005
    funding_cap: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.0075
    #: A perpetual mid farther than this fraction from the index is ignored: one venue's broken
    #: perp print cannot drag the mark or the premium.
    max_perp_deviation: Fraction = 0.05
    #: Fewer perpetuals counting than this in a round: the mark falls back as with none, and no
    #: premium is sampled. With one or two, one venue's print inside max_perp_deviation moves
    #: their median; three or more keep it out.
    min_perp_sources: Annotated[int, Field(ge=1, le=64)] = 1


#: A price goes out live only while it spans at least this many units of its market's last digit
#: (10 ** price_exponent); below, the core pauses the market with reason `resolution`. With 100,
#: one unit is at most 1 % of a published price and its rounding error at most 0.5 %, the order of
#: the default outlier band (`max_deviation`, 1 %). Fewer would let 0.014 at two decimals go out
#: as 0.01 (29 % off) or 0.004 as 0.00, a price of zero that liquidates every position valued at it.
RESOLUTION_UNITS = 100


def resolution_floor(price_exponent: int) -> float:
    """The smallest price a market with `price_exponent` publishes live: `RESOLUTION_UNITS` units
    of its last digit, as the nearest float (1.0 at -2, not 100 * 0.01)."""
    return float(Decimal(RESOLUTION_UNITS).scaleb(price_exponent))


class MarketConfig(_Frozen):
    """A published market and the gates that guard it."""

    symbol: Pair
    price_exponent: Annotated[int, Field(ge=-18, le=0)] = -2
    min_sources: Annotated[int, Field(ge=1, le=64)] = 3
    max_age_ms: Annotated[int, Field(ge=1, le=86_400_000)] = 10_000
    #: A fresh quote older than this lags: it is excluded as stale when two or more quotes
    #: younger than this (direct ones for a direct quote, direct or through the same conversion
    #: leg for a routed one) agree on a level more than `max_deviation` away from it
    #: (docs/pricing.md section 2, `Core._lagging`). Venues silent behind open sockets must not
    #: hold a price through a move until their quotes age out. A perpetual quote older than this
    #: counts in the mark only while the index, in the contract's own currency, stays within
    #: `max_deviation` of where it was at the quote's own time (docs/mark.md, Inputs,
    #: `mark.engine._left_behind`).
    lag_ms: Annotated[int, Field(ge=1, le=86_400_000)] = 2_000
    max_deviation: Fraction = 0.01
    circuit_breaker: Fraction = 0.1
    max_confidence_ratio: Fraction | None = None
    min_price: PosFloat | None = None
    max_price: PosFloat | None = None
    sources: tuple[MarketSource, ...]  # 1 to 64 entries, checked with the relations
    #: Perpetual instruments of this market (kind "perp"), collected for the mark price; they
    #: never vote in the index price.
    perp_sources: tuple[MarketSource, ...] = ()
    #: Used only when perp_sources is not empty: without perpetuals there is no mark.
    mark: MarkConfig = Field(default_factory=MarkConfig)

    _sources_tuple = field_validator("sources", mode="before")(_as_tuple)

    @field_validator("perp_sources", mode="before")
    @classmethod
    def _perp_kind(cls, value: Any) -> Any:
        """Entries of perp_sources are perpetuals: their kind defaults to "perp"."""
        if isinstance(value, list | tuple):
            return tuple({"kind": "perp", **v} if isinstance(v, dict) else v for v in value)
        return value

    @property
    def confidence_limit(self) -> float:
        """Relative band width above which the sources are said to disagree."""
        return self.max_confidence_ratio if self.max_confidence_ratio else self.max_deviation


class RouteConfig(_Frozen):
    """Convert prices quoted in `from` into `to` through the live price of market `via`."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    from_: Annotated[str, Field(alias="from", pattern=r"^[A-Z0-9]{1,20}$")]
    to: Annotated[str, Field(pattern=r"^[A-Z0-9]{1,20}$")]
    via: Pair


class Config(_Frozen):
    oracle: OracleConfig = Field(default_factory=OracleConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    signing: SigningConfig = Field(default_factory=SigningConfig)
    nats: NatsConfig = Field(default_factory=NatsConfig)
    push: PushConfig = Field(default_factory=PushConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    sources: dict[Annotated[str, Field(pattern=_ID)], SourceConfig] = Field(default_factory=dict)
    markets: tuple[MarketConfig, ...]  # at least one, checked with the relations
    routes: tuple[RouteConfig, ...] = ()
    chains: dict[Annotated[str, Field(pattern=_ID)], ChainConfig] = Field(default_factory=dict)
    admin_token: SecretStr | None = None

    _lists_as_tuples = field_validator("markets", "routes", mode="before")(_as_tuple)

    def market(self, symbol: str) -> MarketConfig | None:
        return next((m for m in self.markets if m.symbol == symbol), None)


#: Slot age limit of an on-chain feed without a heartbeat of its own (a pool read every block).
CHAIN_DEFAULT_MAX_AGE_MS = 60_000


def slot_max_age_ms(cfg: Config, market: MarketConfig, ms: MarketSource) -> int:
    """How old a quote of `ms` may be in `market`.

    The market's `max_age_ms` suits venues that stream; on-chain feeds update on their own
    schedule, so their slots default to the feed's limit: a Chainlink feed's heartbeat (+10 %,
    the feed flags a late round itself), a Pyth EVM feed's `max_age_s`, else a minute.
    """
    if ms.max_age_ms is not None:
        return ms.max_age_ms
    src = cfg.sources.get(ms.source)
    if src is None or src.chain is None:
        return market.max_age_ms
    spec = src.feeds.get(ms.pair)
    if spec is not None and spec.heartbeat_s is not None:
        return int(spec.heartbeat_s * 1100)
    if spec is not None and spec.max_age_s is not None:
        return spec.max_age_s * 1000
    return max(market.max_age_ms, CHAIN_DEFAULT_MAX_AGE_MS)


def slot_route(cfg: Config, market: MarketConfig, pair: str) -> str | None:
    """The conversion leg market (a `[[routes]]` entry's `via`) that a source quoting `pair`
    prices `market` through, or None for the market's own pair or its inverse."""
    base, quote = market.symbol.split("/")
    p_base, p_quote = pair.split("/")
    if p_quote == quote or (p_base, p_quote) == (quote, base):
        return None
    return next((r.via for r in cfg.routes if (r.from_, r.to) == (p_quote, quote)), None)


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:PORT`` for IPv6); raise ValueError with a clear message."""
    host, sep, port_text = value.rpartition(":")
    # ASCII digits only: str.isdigit() and int() also take "²" and other scripts' digits (int()
    # read "٨٠" as port 80), and int() refuses over 4,300 digits in its own words.
    if not sep or not host or not re.fullmatch(r"[0-9]{1,5}", port_text):
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:8480")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError("port must be between 0 and 65535")
    host = host.strip("[]")
    _check_host(host)
    return host, port


_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"


def _check_host(host: str) -> None:
    """An IP address or a host name: a wrong one is named here rather than by the resolver's bare
    "Name or service not known" when the API binds."""
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", host):  # no host name is all digits (RFC 1123)
        raise ValueError(f"{shown(host)} is not an IPv4 address")
    if len(host) > 253 or not re.fullmatch(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?", host):
        raise ValueError(f"{shown(host)} is not an IP address or a host name")


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if part == "[key]":  # the dict key itself failed, not its value
            out += " (key)"
        elif isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + _key(str(part))
    return out or "(top level)"


def _key(name: str) -> str:
    """A key as it is named in a problem: a quoted TOML key may hold any character, and one
    with a line break, an escape sequence or none at all is shown quoted and escaped, so that
    the problem stays one line and the terminal that shows it does only show it."""
    return name if name and name.isprintable() else json.dumps(name)


_BOUND_ERRORS = frozenset(
    {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"}
)


def _message(error: Mapping[str, Any]) -> str:
    ctx = error.get("ctx") or {}
    kind = error["type"]
    value = error.get("input")
    if isinstance(value, float) and not math.isfinite(value) and kind in _BOUND_ERRORS:
        # nan fails every comparison: "must be <= 3600" of a nan sends the reader looking for
        # a number that is too large. inf is said the same way as where inf is refused outright.
        return "must be a finite number"
    short = {
        "greater_than": "must be > {gt}",
        "greater_than_equal": "must be >= {ge}",
        "less_than": "must be < {lt}",
        "less_than_equal": "must be <= {le}",
        "missing": "is required",
        "extra_forbidden": "is not a known key",
        "string_pattern_mismatch": "has the wrong form (must match {pattern})",
        "literal_error": "must be one of {expected}",
        "finite_number": "must be a finite number",
        "too_short": "must have at least {min_length} item(s)",
        "string_too_short": "must have at least {min_length} character(s)",
        "too_long": "must have at most {max_length} item(s)",
        "int_type": "must be an integer",
        "float_type": "must be a number",
        "bool_type": "must be true or false",
        "string_type": "must be a string",
        "tuple_type": "must be an array",
        "list_type": "must be an array",
        "dict_type": "must be a table",
        "model_type": "must be a table",
    }.get(kind)
    if short:
        shown = {k: (f"{v:g}" if isinstance(v, float) else v) for k, v in ctx.items()}
        return short.format(**shown)
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _relations(cfg: Config) -> list[str]:
    """Checks that need the whole config: references, routes, cycles, quorum feasibility."""
    problems: list[str] = []
    if not cfg.markets:
        problems.append("markets: must have at least 1 item(s)")
    for i, market in enumerate(cfg.markets):
        if not 1 <= len(market.sources) <= MAX_SOURCES_PER_MARKET:
            problems.append(
                f"markets[{i}].sources: must list 1 to {MAX_SOURCES_PER_MARKET} sources"
            )
    if problems:
        return problems
    symbols = [m.symbol for m in cfg.markets]
    for i, sym in enumerate(symbols):
        if sym in symbols[:i]:
            problems.append(f"markets[{i}].symbol: duplicate market {sym}")
    by_symbol = {m.symbol: m for m in cfg.markets}
    routes: dict[tuple[str, str], RouteConfig] = {}
    for i, route in enumerate(cfg.routes):
        leg = (route.from_, route.to)
        if leg in routes:
            problems.append(f"routes[{i}]: duplicate route {route.from_} -> {route.to}")
        routes[leg] = route
        if route.via not in by_symbol:
            problems.append(f"routes[{i}].via: market {route.via} is not configured")
        elif route.via not in (f"{route.from_}/{route.to}", f"{route.to}/{route.from_}"):
            problems.append(
                f"routes[{i}].via: market {route.via} does not convert {route.from_} to {route.to}"
            )

    depends: dict[str, set[str]] = {m.symbol: set() for m in cfg.markets}
    for i, market in enumerate(cfg.markets):
        base, quote = market.symbol.split("/")
        seen: dict[tuple[str, str], int] = {}
        for j, ms in enumerate(market.sources):
            where = f"markets[{i}].sources[{j}]"
            if ms.source not in cfg.sources:
                problems.append(f"{where}.source: source {ms.source!r} is not configured")
            key = (ms.source, ms.kind)
            if key in seen:  # independence: one venue gets one vote per market
                problems.append(
                    f"{where}.source: {ms.source} ({ms.kind}) is already listed as "
                    f"sources[{seen[key]}] of this market; a venue gets one vote"
                )
            seen.setdefault(key, j)
            problems.extend(_unserved_kind(cfg, where, ms))
            p_base, p_quote = ms.pair.split("/")
            if (p_base, p_quote) in ((base, quote), (quote, base)):
                continue
            if p_base != base:
                problems.append(f"{where}.pair: {ms.pair} cannot price {market.symbol}")
                continue
            found = routes.get((p_quote, quote))
            if found is None:
                problems.append(
                    f"{where}.pair: no route converts {p_quote} to {quote} (add a [[routes]] entry)"
                )
            elif found.via == market.symbol:
                problems.append(
                    f"{where}.pair: route via {found.via} would price a market by itself"
                )
            else:
                depends[market.symbol].add(found.via)
        perp_seen: dict[str, int] = {}
        for j, ps in enumerate(market.perp_sources):
            where = f"markets[{i}].perp_sources[{j}]"
            if ps.source not in cfg.sources:
                problems.append(f"{where}.source: source {ps.source!r} is not configured")
            if ps.source in perp_seen:  # the perpetual median counts venues, not listings
                problems.append(
                    f"{where}.source: {ps.source} is already listed as "
                    f"perp_sources[{perp_seen[ps.source]}] of this market; a venue gets one vote"
                )
            perp_seen.setdefault(ps.source, j)
            p_base, p_quote = ps.pair.split("/")
            unused = {"max_age_ms": ps.max_age_ms is not None, "weight": ps.weight != 1.0}
            problems.extend(
                f"{where}.{key}: not used for perpetuals (each counts the same, within the "
                "market's max_age_ms); remove it"
                for key, is_set in unused.items()
                if is_set
            )
            if ps.kind != "perp":  # one problem per entry: the first that makes it unusable
                problems.append(f"{where}.kind: must be perp")
            elif unserved := _unserved_kind(cfg, where, ps):
                problems.extend(unserved)
            elif p_base != base:
                problems.append(f"{where}.pair: {ps.pair} is not a {base} contract")
            elif p_quote != quote and (p_quote, quote) not in routes:
                problems.append(
                    f"{where}.pair: no route converts {p_quote} to {quote} (add a [[routes]] entry)"
                )
        if not market.perp_sources and market.mark != MarkConfig():  # compared: dumps hold it
            problems.append(
                f"markets[{i}].mark: used only with perp_sources (no perpetual, no mark price); "
                "remove it or list the market's perpetuals"
            )
        if market.perp_sources and market.mark.min_perp_sources > len(market.perp_sources):
            problems.append(
                f"markets[{i}].mark.min_perp_sources: {market.mark.min_perp_sources} exceeds the "
                f"{len(market.perp_sources)} perpetual(s) listed (the mark could never use them)"
            )
        if market.min_sources > len(market.sources):
            problems.append(
                f"markets[{i}].min_sources: {market.min_sources} exceeds the "
                f"{len(market.sources)} source(s) listed"
            )
        problems.extend(_confidence_reach(i, market))
        low, high, band = market.min_price, market.max_price, cfg.oracle
        if low and high and low >= high:
            problems.append(f"markets[{i}].min_price: must be below max_price")
        elif low and low >= band.max_price:  # above the global band: dropped as absurd
            problems.append(
                f"markets[{i}].min_price: must be below oracle.max_price ({band.max_price:g}): "
                "no quote could pass both"
            )
        elif high and high <= band.min_price:
            problems.append(
                f"markets[{i}].max_price: must be above oracle.min_price ({band.min_price:g}): "
                "no quote could pass both"
            )
        elif unrepresentable := _below_resolution(i, market, band.max_price):
            problems.append(unrepresentable)
    used_pairs = {(ms.source, ms.pair) for m in cfg.markets for ms in (*m.sources, *m.perp_sources)}
    problems.extend(
        f"sources.{sid}.instruments.{pair}: no market uses this pair"
        for sid, src in cfg.sources.items()
        for pair in src.instruments
        if (sid, pair) not in used_pairs
    )
    problems.extend(_pyth_feed_ids(cfg))
    problems.extend(_shared_venue_symbols(cfg))
    problems.extend(_instruments_in_another_case(cfg))
    problems.extend(_chain_relations(cfg))
    problems.extend(_cycles(depends, symbols))
    if cfg.oracle.min_price >= cfg.oracle.max_price:
        problems.append("oracle.min_price: must be below oracle.max_price")
    signing = cfg.signing
    if signing.enabled and (signing.key_file is None) == (signing.key_env is None):
        problems.append("signing: set exactly one of key_file and key_env")
    if signing.enabled and signing.deployment is None:
        problems.append(
            "signing.deployment: required when signing is enabled: a name for this deployment "
            '(e.g. "production"), which consumers check every signature against'
        )
    if signing.enabled and signing.lease_file is None:
        problems.append(LEASE_FILE_REQUIRED)
    problems.extend(_shared_state_files(cfg))
    problems.extend(_push_relations(cfg, set(symbols)))
    problems.extend(_nats_relations(cfg.nats))
    return problems


#: Files the audit trail keeps beside its database, by the ending of their name, and what each
#: is; every state file's writer keeps its lock file beside it too (`_LOCK_BESIDE`).
AUDIT_BESIDE: dict[str, str] = {
    "-wal": "SQLite's -wal file",
    "-shm": "SQLite's -shm file",
    "-journal": "SQLite's -journal file",
    ".reserve": "the disk reserve",
}
_LOCK_BESIDE: dict[str, str] = {".lock": "the lock file"}


def _shared_state_files(cfg: Config) -> list[str]:
    """The files the daemon writes are distinct, and none is a file another one's writer keeps
    beside it. Two keys naming one file had the second writer refused at start as if another
    daemon held it ("held by another process ... each daemon needs a lease_file of its own"),
    after check-config passed the file, or a JSON file opened as the audit database. A file on
    another's lock file or SQLite file loaded and ran: each rewrite of it renamed a new file over
    that one, under its writer (a lock so lost, pauses no longer saved; the trail's -wal, with its
    last commits, replaced by JSON). Files are compared where their symbolic links lead, as the
    writers open them: a link and its target are one file."""
    signing, audit = cfg.signing, cfg.audit
    written = [
        ("oracle.manual_pauses_file", cfg.oracle.manual_pauses_file, _LOCK_BESIDE),
        ("signing.lease_file", signing.lease_file if signing.enabled else None, _LOCK_BESIDE),
        ("audit.path", audit.path if audit.enabled else None, {**_LOCK_BESIDE, **AUDIT_BESIDE}),
    ]
    # each file taken, by the name links lead to: the key, its path, and what the file is to it
    # (None: its own file)
    taken: dict[str, tuple[str, str, str | None]] = {}
    problems: list[str] = []
    own = (
        "each needs a file of its own (one writer per file: the second would be refused at "
        "start as held by another process)"
    )
    kept = (
        "a file a writer keeps beside its own is that writer's alone (each rewrite of the one "
        "would replace the other under its writer)"
    )
    for key, path, beside in written:
        if path is None:
            continue
        # a file kept beside it is beside the file its links lead to (the lock, SQLite's files,
        # the reserve), spelt as configured when no link is on the way: as the writers name them
        real, spelt = os.path.realpath(path), str(beside_target(Path(path), ""))
        names: dict[str, tuple[str | None, str]] = {real: (None, spelt)}
        names |= {real + end: (what, spelt + end) for end, what in beside.items()}
        for each, (what, name) in names.items():
            if each not in taken:
                continue
            other, other_path, other_what = taken[each]
            if what is None and other_what is None:
                problems.append(f"{key}: names the file of {other} ({path}): {own}")
            elif what is None:
                problems.append(f"{key}: {path} is {other_what} of {other} ({other_path}): {kept}")
            else:  # files kept beside two files meet only where the files do: said first
                problems.append(f"{key}: {what} of {path} ({name}) is the file of {other}: {kept}")
            break
        for each, (what, _) in names.items():
            taken.setdefault(each, (key, path, what))
    return problems


def _confidence_reach(i: int, market: MarketConfig) -> list[str]:
    """A band limit the band can never reach. The survivors lie within d = max_deviation of the
    centre c, the quartiles among them and the candidate between the quartiles, so the band
    (q3 - q1) / 2 is at most d * c and the candidate at least c * (1 - d): confidence over
    candidate never exceeds d / (1 - d), and the dispersion band (a strict >) never fires."""
    ratio, d = market.max_confidence_ratio, market.max_deviation
    reach = d / (1 - d)
    if ratio is None or ratio < reach:
        return []
    return [
        f"markets[{i}].max_confidence_ratio: {ratio:g} can never be reached: the survivors lie "
        f"within max_deviation ({d:g}) of the centre, so the band is at most {reach:g} of the "
        "price (max_deviation / (1 - max_deviation)) and the dispersion band never pauses the "
        "market; set it below that, or leave it out (it is then max_deviation)"
    ]


def _unserved_kind(cfg: Config, where: str, ms: MarketSource) -> list[str]:
    """An entry of a kind its venue does not serve (a spot pair on binance_usdm, a perpetual on
    binance) could never quote: refused here rather than marked failed when the source starts."""
    src = cfg.sources.get(ms.source)
    if src is None or ms.kind in SOURCE_KINDS[src.type]:
        return []
    served = " and ".join(sorted(SOURCE_KINDS[src.type]))
    return [
        f"{where}.kind: source {ms.source!r} ({src.type}) serves no {ms.kind} instruments, "
        f"only {served}"
    ]


def _pyth_feed_ids(cfg: Config) -> list[str]:
    """A Pyth Hermes pair is read by its feed id, which no rule derives from the pair: each pair a
    market asks of the source needs one, well formed and its own (else the pair could only fail
    at start-up)."""
    problems: list[str] = []
    for sid, src in cfg.sources.items():
        if src.type != "pyth_hermes":
            continue
        where = f"sources.{sid}.instruments"
        seen: dict[str, str] = {}
        for pair, raw in src.instruments.items():
            feed = raw.strip().lower().removeprefix("0x")
            if not re.fullmatch(r"[0-9a-f]{64}", feed):
                problems.append(
                    f"{where}.{pair}: {shown(raw)} is not a Pyth feed id "
                    "(32 bytes in hex, 0x optional)"
                )
            elif feed in seen:
                problems.append(f"{where}.{pair}: feed id already used for {seen[feed]}")
            else:
                seen[feed] = pair
        wanted = {
            ms.pair for m in cfg.markets for ms in (*m.sources, *m.perp_sources) if ms.source == sid
        }
        problems.extend(
            f"{where}: no feed id for {pair}, which a market asks of this source"
            for pair in sorted(wanted - set(src.instruments))
        )
    return problems


def _shared_venue_symbols(cfg: Config) -> list[str]:
    """Two pairs that a source subscribes as one venue symbol, by its `instruments` table (an
    entry naming another pair's symbol) or by the adapter's rule alone (Kraken's XBT/USD and
    BTC/USD are both BTC/USD): the source keeps one pair per symbol it subscribes, so the other
    pair was never quoted by it, with no word said (its slot `no_quote` in every round). The
    symbol is the one subscribed, after the adapter's `kind_symbol` (OKX names a perpetual
    BTC-USDT-SWAP whether its entry says BTC-USDT or BTC-USDT-SWAP), and compared whatever the
    kind, as the source keys its instruments. The rule is the adapter's, so the adapters of the
    venue types the config uses are imported: each ~10 ms after the HTTP client, which every
    `oracled` command has loaded already (loading a config in a bare interpreter pays its
    ~0.3 s)."""
    problems: list[str] = []
    for sid, src in cfg.sources.items():
        if src.type in CHAIN_SOURCE_TYPES or src.type == "pyth_hermes":
            continue  # pyth_hermes: one feed id per pair (`_pyth_feed_ids`)
        asked: dict[tuple[str, str], None] = {}
        for market in cfg.markets:
            for ms in (*market.sources, *market.perp_sources):
                if ms.source == sid:
                    asked[(ms.pair, ms.kind)] = None
        if len(asked) < 2:
            continue  # one pair cannot share its symbol: no adapter to import
        module, _, name = SOURCE_TYPES[src.type].partition(":")
        adapter: Any = getattr(importlib.import_module(module), name)
        seen: dict[str, tuple[str, str]] = {}
        for pair, kind in asked:
            if kind not in adapter.kinds:
                continue  # never subscribed (`_unserved_kind` refuses the entry)
            # every adapter's rule is a function of the pair (and kind) alone
            named = src.instruments.get(pair) or adapter.venue_symbol(None, pair)
            symbol = adapter.kind_symbol(named, kind)
            first, first_kind = seen.setdefault(symbol, (pair, kind))
            if (first, first_kind) == (pair, kind):
                continue
            both = (
                f"{pair} and {first} ({kind})"
                if kind == first_kind
                else f"{pair} ({kind}) and {first} ({first_kind})"
            )
            if pair in src.instruments or first in src.instruments:
                key = pair if pair in src.instruments else first
                problems.append(
                    f"sources.{sid}.instruments.{key}: {both} are both {shown(symbol)} on this"
                    " venue; the source quotes one pair per symbol, so one of them would never"
                    " be quoted by it"
                )
            else:
                problems.append(
                    f"sources.{sid}: {both} are both {shown(symbol)} on this venue by the"
                    f" {src.type} adapter's rule; the source quotes one pair per symbol, so one"
                    " of them would never be quoted by it: ask it for one of them"
                )
    return problems


def _instruments_in_another_case(cfg: Config) -> list[str]:
    """An `instruments` entry in another case than the adapter's own rule writes symbols in
    (`btcusdt` on binance): the source finds the pair of a message by the symbol the venue
    sends, in the venue's case, so no message ever matched the entry and the pair was never
    quoted by the source (each dropped as `unknown_symbol`), with no word said. The case is the
    adapter's rule's (upper for most venues, lower for bitstamp and gemini_ws); the adapter is
    imported only for a source with entries."""
    problems: list[str] = []
    for sid, src in cfg.sources.items():
        if not src.instruments or src.type in CHAIN_SOURCE_TYPES or src.type == "pyth_hermes":
            continue  # pyth_hermes: feed ids, read in any case (`_pyth_feed_ids`)
        module, _, name = SOURCE_TYPES[src.type].partition(":")
        adapter: Any = getattr(importlib.import_module(module), name)
        rule = adapter.venue_symbol(None, "BTC/USDT")
        case = str.upper if rule == rule.upper() else str.lower if rule == rule.lower() else None
        if case is None:
            continue  # a rule of mixed case says nothing of the case of a symbol
        problems.extend(
            f"sources.{sid}.instruments.{pair}: {shown(symbol)} is not in the case {src.type} "
            f"writes symbols in ({shown(case(symbol))}, as {shown(rule)} for BTC/USDT): the "
            "source matches the venue's messages by the symbol as the venue writes it, so "
            f"{pair} would never be quoted by it"
            for pair, symbol in src.instruments.items()
            if case(symbol) != symbol
        )
    return problems


def _push_relations(cfg: Config, symbols: set[str]) -> list[str]:
    """The pusher's chain, contract and key are set, and it names only configured markets."""
    push = cfg.push
    problems = [
        f"push.{where}.{sym}: market {sym} is not configured"
        for where, names in (("markets", push.markets), ("overrides", push.overrides))
        for sym in names
        if sym not in symbols
    ]
    problems.extend(
        f"push.overrides.{sym}: market {sym} is not in push.markets, so it is never pushed"
        for sym in push.overrides
        if push.markets and sym in symbols and sym not in push.markets
    )
    if push.priority_fee_gwei >= push.max_gas_price_gwei:  # base + tip > cap: nothing is sent
        problems.append(
            "push.priority_fee_gwei: must be below push.max_gas_price_gwei "
            "(the cap covers the base fee and the tip)"
        )
    if not push.enabled:
        return problems
    if push.chain is None:
        problems.append("push.chain: is required when the pusher is enabled")
    elif push.chain not in cfg.chains:
        problems.append(f"push.chain: chain {push.chain!r} is not configured")
    if push.contract is None:
        problems.append("push.contract: is required when the pusher is enabled")
    if (push.key_file is None) == (push.key_env is None):
        problems.append("push: set exactly one of key_file and key_env")
    problems.extend(_push_price_range(cfg))
    return problems


def _push_price_range(cfg: Config) -> list[str]:
    """A pushed market whose price bound, at its decimals, is past the contract's `int128`: a
    price up there could never be written on chain (the pusher skips it, counted). The bound
    is the core's: the market's `max_price`, else `oracle.max_price` (a converted price is held
    to the market's own alone)."""
    pushed = set(cfg.push.markets)
    problems: list[str] = []
    for i, market in enumerate(cfg.markets):
        if pushed and market.symbol not in pushed:
            continue
        ceiling = market.max_price or cfg.oracle.max_price
        key = f"markets[{i}].max_price" if market.max_price else "oracle.max_price"
        if math.ceil(Decimal(ceiling).scaleb(-market.price_exponent)) > PUSH_PRICE_MAX:
            problems.append(
                f"{key}: {ceiling:g} at {-market.price_exponent} decimals does not fit the "
                f"on-chain feed's int128 price (at most {PUSH_PRICE_MAX:.4g}), and "
                f"{market.symbol} is pushed: lower the bound or the market's decimals "
                "(price_exponent)"
            )
    return problems


def _nats_relations(nats: NatsConfig) -> list[str]:
    """The sink's credentials: one way to authenticate, each complete, each secret from one place.

    Checked whether or not the sink is enabled: enabling it later must not reveal a config that
    was wrong all along.
    """
    problems: list[str] = []
    for a, b in (
        ("creds_file", "creds_env"),
        ("nkey_seed_file", "nkey_seed_env"),
    ):
        if getattr(nats, a) is not None and getattr(nats, b) is not None:
            problems.append(f"nats: set at most one of {a} and {b}")
    if (nats.user is None) != (nats.password_env is None):
        given, missing = ("user", "password_env") if nats.user else ("password_env", "user")
        problems.append(f"nats.{missing}: required with nats.{given}")
    if (nats.tls_cert_file is None) != (nats.tls_key_file is None):
        given, missing = (
            ("tls_cert_file", "tls_key_file")
            if nats.tls_cert_file
            else ("tls_key_file", "tls_cert_file")
        )
        problems.append(f"nats.{missing}: required with nats.{given} (mutual TLS needs both)")
    tls_keys = [key for key in ("tls_ca_file", "tls_cert_file") if getattr(nats, key)]
    tls_keys += ["tls:// servers"] * any(url.startswith("tls://") for url in nats.servers)
    if tls_keys and not nats.tls_handshake_first:
        # nats-py 2.16 upgrades to TLS only if the server's INFO asks, whatever the URL says:
        # a plain server or an interceptor would read the CONNECT (credentials) and the prices.
        problems.append(
            f"nats.tls_handshake_first: required with {' and '.join(tls_keys)}: without it the "
            "sink speaks TLS only if the server's greeting asks for it, so a server or an "
            "interceptor that does not gets credentials and prices in clear; set it to true and "
            "handshake_first: true in the servers' tls block (docs/publishing.md)"
        )
    ways = nats_auth_keys(nats)
    if len(ways) > 1:
        listed = f"{', '.join(ways[:-1])} and {ways[-1]}"
        problems.append(f"nats: {listed} are {len(ways)} ways to authenticate; set one")
    in_urls = [url for url in nats.servers if "@" in url]
    if ways and in_urls:
        problems.append(
            f"nats.servers: credentials in a server URL and nats.{ways[0]} are two ways to "
            "authenticate; remove the user part of the URLs"
        )
    return problems


def nats_auth_keys(nats: NatsConfig) -> list[str]:
    """The keys of `[nats]` that choose a way to authenticate, one per way that is set."""
    ways = [
        ("token_env", nats.token_env),
        ("user", nats.user or nats.password_env),
        ("creds_file", nats.creds_file),
        ("creds_env", nats.creds_env),
        ("nkey_seed_file", nats.nkey_seed_file),
        ("nkey_seed_env", nats.nkey_seed_env),
    ]
    seen = [key for key, value in ways if value is not None]
    # creds_file with creds_env is one way set twice (reported above), not two ways
    for a, b in (("creds_file", "creds_env"), ("nkey_seed_file", "nkey_seed_env")):
        if a in seen and b in seen:
            seen.remove(b)
    return seen


_PYTH_TYPES = ("pyth_hermes", "pyth_evm")
_DEFAULT_CONF_RATIO: float = SourceConfig.model_fields["max_conf_ratio"].get_default()


def _chain_relations(cfg: Config) -> list[str]:
    """On-chain sources: their chain exists, their feeds carry the keys their type needs, and
    every pair a market asks of them has a feed."""
    problems: list[str] = []
    wanted: dict[str, set[str]] = {}
    for m in cfg.markets:
        for ms in (*m.sources, *m.perp_sources):
            wanted.setdefault(ms.source, set()).add(ms.pair)
    for sid, src in cfg.sources.items():
        where = f"sources.{sid}"
        if src.type not in _PYTH_TYPES and src.max_conf_ratio != _DEFAULT_CONF_RATIO:
            problems.append(f"{where}.max_conf_ratio: only Pyth sources take this key")
        if src.type not in CHAIN_SOURCE_TYPES:
            problems.extend(
                f"{where}.{key}: only on-chain sources take this key"
                for key in ("chain", "address")
                if getattr(src, key) is not None
            )
            if src.feeds:
                problems.append(f"{where}.feeds: only on-chain sources take this key")
            continue
        # Venue keys would be ignored: the chain's reader, not a socket of the source, reads it.
        chain_table = f"[chains.{src.chain or '<id>'}]"
        problems.extend(
            f"{where}.{key}: on-chain sources do not take this key (their chain's "
            f"{chain_table} sets how they are read)"
            for key in _VENUE_KEYS
            # by value, not by presence: a config dumped whole (oracled.sim) holds every default
            if getattr(src, key)
            != SourceConfig.model_fields[key].get_default(call_default_factory=True)
        )
        if src.chain is None:
            problems.append(f"{where}.chain: is required for a {src.type} source")
        elif src.chain not in cfg.chains:
            problems.append(f"{where}.chain: chain {src.chain!r} is not configured")
        if src.type == "pyth_evm" and src.address is None:
            problems.append(f"{where}.address: the Pyth contract address is required")
        required, foreign = _FEED_KEYS[src.type]
        for pair, spec in src.feeds.items():
            problems.extend(
                f"{where}.feeds.{pair}.{key}: is required for {src.type}"
                for key in required
                if getattr(spec, key) is None
            )
            problems.extend(
                f"{where}.feeds.{pair}.{key}: is not a {src.type} key"
                for key in foreign
                # by value: a dumped config holds the defaults (twap_window_s, invert) too
                if getattr(spec, key) != FeedSpec.model_fields[key].get_default()
            )
        problems.extend(
            f"{where}.feeds: no feed for {pair}, which a market asks of this source"
            for pair in sorted(wanted.get(sid, set()) - set(src.feeds))
        )
    for cid, chain in cfg.chains.items():
        problems.extend(
            f"chains.{cid}.{key}: is set from the environment, not the file"
            for key in ("resolved_urls", "resolved_ws_url")
            if getattr(chain, key)
        )
        if chain.block_time_s is not None and chain.block_time_s >= chain.max_block_age_s:
            # The reader refuses a head older than max_block_age_s as a stuck node's and leaves
            # its endpoint as behind: with blocks that slow, a healthy chain's head often is.
            problems.append(
                f"chains.{cid}.block_time_s: {chain.block_time_s:g} is not below "
                f"max_block_age_s ({chain.max_block_age_s:g}): the newest block of a healthy "
                "chain would often be older than max_block_age_s, refused as a stuck node's "
                "(not published, its endpoint left as behind); raise max_block_age_s to "
                "several block times"
            )
    return problems


def _resolve_chains(cfg: Config, env: Mapping[str, str]) -> dict[str, ChainConfig]:
    """Each chain's RPC URLs: from its environment variable when set, else from the file."""
    out: dict[str, ChainConfig] = {}
    problems: list[str] = []
    for cid, chain in cfg.chains.items():
        urls = chain.rpc_urls
        if chain.rpc_urls_env and env.get(chain.rpc_urls_env, "").strip():
            urls = tuple(u.strip() for u in env[chain.rpc_urls_env].split(",") if u.strip())
            try:
                for url in urls:
                    _check_http_url(url)
                _check_distinct_urls(urls)
            except ValueError as exc:  # never echo the URL: it may carry an API key
                problems.append(f"chains.{cid}.rpc_urls_env: ${chain.rpc_urls_env}: {exc}")
        else:
            try:
                _check_distinct_urls(urls)
            except ValueError as exc:
                problems.append(f"chains.{cid}.rpc_urls: {exc}")
        ws_url = None
        if chain.ws_url_env and env.get(chain.ws_url_env, "").strip():
            try:
                ws_url = _check_ws_url(env[chain.ws_url_env].strip())
            except ValueError as exc:  # never echo the URL: it may carry an API key
                problems.append(f"chains.{cid}.ws_url_env: ${chain.ws_url_env}: {exc}")
        out[cid] = chain.model_copy(update={"resolved_urls": urls, "resolved_ws_url": ws_url})
    if problems:
        raise ConfigError(problems)
    return out


def _cycles(depends: dict[str, set[str]], order: list[str]) -> list[str]:
    problems: list[str] = []
    state: dict[str, int] = {}

    def visit(sym: str, trail: list[str]) -> None:
        if state.get(sym) == 2:
            return
        if state.get(sym) == 1:
            cycle = [*trail[trail.index(sym) :], sym]
            problems.append(f"routes: conversion cycle {' -> '.join(cycle)}")
            return
        state[sym] = 1
        for dep in sorted(depends.get(sym, ())):
            visit(dep, [*trail, sym])
        state[sym] = 2

    for sym in order:
        visit(sym, [])
    return problems


def parse_config(data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Validate a parsed TOML document; raise ConfigError listing every problem."""
    env = os.environ if env is None else env
    try:
        cfg = Config.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError([f"{_path(e['loc'])}: {_message(e)}" for e in exc.errors()]) from None
    problems = _relations(cfg)
    if problems:
        raise ConfigError(problems)
    token_env = cfg.api.admin_token_env
    token = env.get(token_env) if token_env else None
    if token is not None:  # a file's final newline: no client can send it, headers are trimmed
        token = token.strip() or None  # empty is unset (`NAME=` in an env file): admin is off
    if token is not None and len(token) < 16:
        raise ConfigError([f"api.admin_token_env: ${token_env} must hold at least 16 characters"])
    chains = _resolve_chains(cfg, env)
    return cfg.model_copy(
        update={
            "admin_token": SecretStr(token) if token else None,
            "chains": chains,
            "markets": _without_dark_chains(cfg, chains),
        }
    )


def _without_dark_chains(
    cfg: Config, chains: Mapping[str, ChainConfig]
) -> tuple[MarketConfig, ...]:
    """Markets without the on-chain sources of chains that have no RPC URL (the default config
    lists them for when one is given): a source that cannot run is not a missing vote. A market
    that would fall below its minimum keeps them and shows them as missing instead."""
    lit = {cid for cid, chain in chains.items() if chain.resolved_urls}
    dark = {
        sid
        for sid, src in cfg.sources.items()
        if src.type in CHAIN_SOURCE_TYPES and src.chain not in lit
    }
    if not dark:
        return cfg.markets
    out: list[MarketConfig] = []
    for market in cfg.markets:
        kept = tuple(ms for ms in market.sources if ms.source not in dark)
        if len(kept) == len(market.sources) or len(kept) < market.min_sources:
            out.append(market)
        else:
            out.append(market.model_copy(update={"sources": kept}))
    return tuple(out)


def _below_resolution(i: int, market: MarketConfig, global_max: float) -> str | None:
    """A market whose every price that can pass its band is below its resolution floor: it could
    never be published live (each round paused for `resolution`), so it is refused."""
    ceiling = min(market.max_price or global_max, global_max)  # above global_max: absurd
    floor = resolution_floor(market.price_exponent)
    if ceiling >= floor:
        return None
    key = "oracle.max_price" if ceiling == global_max else "max_price"
    fits = next((e for e in range(0, -19, -1) if resolution_floor(e) <= ceiling), None)
    hint = (
        f"set price_exponent to {fits} or below"
        if fits is not None
        else "no price_exponent down to -18 can"
    )
    return (
        f"markets[{i}].price_exponent: {market.price_exponent} cannot publish any price up to "
        f"{key} ({ceiling:g}): a live price must be at least {floor:g}, {RESOLUTION_UNITS} units "
        f"of its last digit ({hint})"
    )


def _resolution_warnings(cfg: Config) -> list[str]:
    """A market whose own min_price is below its resolution floor: prices in that part of its
    band pass the band but are never published live (paused for `resolution`). Warned, not
    refused: a wide sanity band is a fair choice, and the price may never go there."""
    out: list[str] = []
    for i, market in enumerate(cfg.markets):
        floor = resolution_floor(market.price_exponent)
        if market.min_price is not None and market.min_price < floor:
            out.append(
                f"markets[{i}].min_price: {market.min_price:g} is below {floor:g}, the smallest "
                f"price a price_exponent of {market.price_exponent} publishes live "
                f"({RESOLUTION_UNITS} units of its last digit): from min_price up to it the "
                "market is paused for resolution"
            )
    return out


def log_config_warnings(cfg: Config, log: Any) -> None:
    """Log each of `config_warnings(cfg)` as `config warning` with its key: at start, on reload."""
    for warning in config_warnings(cfg):
        key, _, text = warning.partition(": ")
        log.warning("config warning", key=key, warning=text)


def config_warnings(cfg: Config) -> list[str]:
    """Settings that load but most likely do not do what was meant, each as ``<key>: <text>``.

    Not problems: each one has a use (a reload that disables a venue mid-incident leaves its
    markets short of their quorum), so refusing it would block that. `oracled check-config`
    prints them and `oracled run` logs them at start-up.
    """
    return [
        *_quorum_needs_disabled(cfg),
        *_outliers_beyond_breaker(cfg),
        *_lag_beyond_max_age(cfg),
        *_same_venue_twice(cfg),
        *_short_connection_ages(cfg),
        *_over_connection_limits(cfg),
        *_disabled_with_settings(cfg),
        *_heads_without_block_time(cfg),
        *_polls_past_block_age(cfg),
        *_cross_check_shared_hosts(cfg),
        *_pools_without_base_token(cfg),
        *_short_twap_windows(cfg),
        *_nats_secret_in_url(cfg),
        *_resolution_warnings(cfg),
        *_push_without_rpc_url(cfg),
        *_heads_env_unset(cfg),
    ]


def _heads_env_unset(cfg: Config) -> list[str]:
    """A chain with an RPC URL, read by an enabled source, whose `ws_url_env` is unset or empty
    with no `ws_url` to fall back to: its reader polls instead of following newHeads, and
    `run` says so at start (`chain polling: no WebSocket URL`). Warned, not refused, as an unset
    `rpc_urls_env` is: polling works, and check-config may not share the daemon's environment."""
    read = {
        src.chain for src in cfg.sources.values() if src.enabled and src.type in CHAIN_SOURCE_TYPES
    }
    return [
        f"chains.{cid}.ws_url_env: ${chain.ws_url_env} is unset or empty and chains.{cid}.ws_url"
        f" is not set: the chain's reader polls for blocks every {chain.poll_interval_s:g} s"
        " instead of following newHeads"
        for cid, chain in cfg.chains.items()
        if chain.ws_url_env and chain.heads_url is None and chain.resolved_urls and cid in read
    ]


def _push_without_rpc_url(cfg: Config) -> list[str]:
    """The pusher enabled on a chain with no RPC URL: it does not start (`run` logs `on-chain
    push off`). Warned, not refused, as a chain without one is not: its URLs come from the
    environment, which check-config may not share with the daemon, and the default config lists
    chains for when one is given."""
    push = cfg.push
    chain = cfg.chains.get(push.chain or "")
    if not push.enabled or chain is None or chain.resolved_urls:
        return []
    where = f"chains.{push.chain}.rpc_urls lists none"
    if chain.rpc_urls_env:
        where = f"${chain.rpc_urls_env} is unset or empty and {where}"
    return [
        f"push.chain: chain {push.chain!r} has no RPC URL ({where}): the pusher does not start, "
        "nothing is pushed on chain"
    ]


def _cross_check_shared_hosts(cfg: Config) -> list[str]:
    """A cross-checked chain with URLs on one host (two keys of one provider): the reader counts
    them as one vote (docs/onchain.md), so they add no independent check and cannot settle a
    disagreement with a third host. Not refused: several keys of one provider are a fair way to
    spread its rate limit or fail over between keys, and their votes cannot outvote anyone.
    The endpoint names show scheme, host and port only, never a path (it may hold a key)."""
    from oracled.jsonrpc import redact  # only here: importing the client pulls in aiohttp

    out: list[str] = []
    for cid, chain in cfg.chains.items():
        if not chain.cross_check or len(chain.resolved_urls) < 2:
            continue
        first: dict[str, int] = {}
        for position, url in enumerate(chain.resolved_urls, 1):
            host = redact(url)
            if host in first:
                out.append(
                    f"chains.{cid}.cross_check: RPC URLs {first[host]} and {position} share the "
                    f"host {host}: in a cross-check they are one vote, not two (list URLs of "
                    "other providers for an independent check)"
                )
            else:
                first[host] = position
    return out


def _pools_without_base_token(cfg: Config) -> list[str]:
    """A pool feed without `base_token`: its decimals are checked against the tokens, but not
    which token the pair's base is, so a wrong `invert` publishes the reciprocal (1/3000 for
    ETH/USD). Not refused: configs written before the key keep running, as before."""
    return [
        f"sources.{sid}.feeds.{pair}.base_token: unset: the pool's token order is not checked, "
        "and a wrong `invert` would publish the reciprocal price; set it to the base token's "
        "address"
        for sid, src in cfg.sources.items()
        if src.type == "uniswap_v3"
        for pair, spec in src.feeds.items()
        if spec.base_token is None
    ]


def _short_twap_windows(cfg: Config) -> list[str]:
    """A pool's TWAP window under `_TWAP_FLOOR_BLOCKS` of its chain's blocks: the price a single
    block leaves, which whoever builds the block sets with no trade against it, moves the TWAP
    by more than a tenth of its move (the whole of it at one block: the spot price). Not
    refused: a test chain, or a pool trusted for other reasons, may want a short window."""
    out: list[str] = []
    for sid, src in cfg.sources.items():
        if src.type != "uniswap_v3":
            continue
        chain = cfg.chains.get(src.chain or "")
        block_s = chain.block_time_s if chain is not None else None
        assumed = block_s is None
        block_s = _TWAP_FLOOR_BLOCK_TIME_S if block_s is None else block_s
        floor = _TWAP_FLOOR_BLOCKS * block_s
        for pair, spec in src.feeds.items():
            if spec.twap_window_s >= floor:
                continue
            which = f"Ethereum's {block_s:g} s, block_time_s unset" if assumed else f"{block_s:g} s"
            out.append(
                f"sources.{sid}.feeds.{pair}.twap_window_s: {spec.twap_window_s} s is under "
                f"{_TWAP_FLOOR_BLOCKS} blocks of chain {src.chain} ({floor:g} s at {which}): the "
                f"price one block leaves weighs over 1/{_TWAP_FLOOR_BLOCKS} of the TWAP, and "
                "whoever builds that block sets it with no trade against it; lengthen the window "
                "(300 s by default)"
            )
    return out


def _nats_secret_in_url(cfg: Config) -> list[str]:
    """`nats://user:password@host` or `nats://token@host` puts a secret in the config file.

    Warned, not refused: such configs worked before the sink had other ways to authenticate, and
    refusing them would stop a publishing daemon at its next start over a file it already runs.
    The URL is shown without its user part, which may be the secret itself.
    """
    return [
        f"nats.servers: {shown_url(url)} carries credentials in the config file; move them to "
        "user + password_env, token_env, creds_file or nkey_seed_file (docs/config.md)"
        for url in cfg.nats.servers
        if "@" in url
    ]


def _heads_without_block_time(cfg: Config) -> list[str]:
    """A newHeads subscription can die on the node's side with its socket up; the reader notices
    after three block times, which it knows only from block_time_s (docs/onchain.md asks for it
    on every chain read through ws_url). Not refused: the reader still works, only blind longer."""
    return [
        f"chains.{cid}.block_time_s: unset with a ws_url, so a newHeads subscription that dies "
        f"silently is noticed only after max_block_age_s ({chain.max_block_age_s:g} s); set the "
        "chain's block interval (12 for Ethereum, 2 for Base and Optimism)"
        for cid, chain in cfg.chains.items()
        if (chain.heads_url is not None or chain.ws_url_env is not None)
        and chain.block_time_s is None
    ]


def _polls_past_block_age(cfg: Config) -> list[str]:
    """Polls no more often than max_block_age_s: between two, the last block read grows older
    than the limit, so the chain's head age passes it every cycle (OracledChainNotRead on a
    healthy chain once that lasts a minute) and a poll that finds no new block flags its feeds
    `chain_stale`. Not refused: each poll still reads the newest block, and a chain read
    through `ws_url` polls only while its socket is down."""
    return [
        f"chains.{cid}.poll_interval_s: {chain.poll_interval_s:g} s is not below "
        f"max_block_age_s ({chain.max_block_age_s:g} s): while polled, the last block read is "
        "older than the limit before each poll (oracled_chain_head_age_seconds over it every "
        "cycle, OracledChainNotRead once that lasts a minute, and a poll that finds no new "
        "block flags every feed chain_stale); poll more often"
        for cid, chain in cfg.chains.items()
        if chain.poll_interval_s >= chain.max_block_age_s
    ]


#: Subscriptions the venues' docs allow on one connection, by source type: (most, what they are,
#: venue). Each instrument is one of them. Bybit limits characters instead: `_BYBIT_ARGS_CHARS`.
_CONNECTION_LIMITS: dict[str, tuple[int, str, str]] = {
    "binance": (1024, "streams", "Binance"),
    "binance_usdm": (1024, "streams", "Binance USD-M"),
    "kucoin": (400, "topics", "KuCoin"),
    "bitstamp": (1000, "channels", "Bitstamp"),
}
#: Bybit: the subscription args of one connection, all topics together, in characters.
_BYBIT_ARGS_CHARS = 21_000
_BYBIT_TOPICS = {"bybit_spot": "orderbook.1.", "bybit_linear": "tickers."}


def _bybit_symbol(src: SourceConfig, pair: str) -> str:
    """The venue symbol the adapter subscribes for `pair` (its rule, or the instruments table)."""
    base, _, quote = pair.partition("/")
    if src.type == "bybit_linear" and quote == "USDC":
        quote = "PERP"
    return src.instruments.get(pair) or f"{base}{quote}"


def _over_connection_limits(cfg: Config) -> list[str]:
    """A source serves all its instruments on one connection; past the venue's documented limit
    the venue refuses subscriptions (each then a failed instrument, priced by no one here) and
    the source is only partly served. Not refused: the instruments within the limit still work,
    and a reload must not be blocked by it mid-incident."""
    out: list[str] = []
    for sid, src in cfg.sources.items():
        kinds = SOURCE_KINDS.get(src.type, frozenset())
        pairs = {
            ms.pair
            for market in cfg.markets
            for ms in (*market.sources, *market.perp_sources)
            if ms.source == sid and ms.kind in kinds
        }
        advice = (
            f"split its pairs over several sources of type {src.type} (the same settings under "
            "other ids, each with a connection of its own and its pairs' instruments entries) "
            "and list in each market the one that has its pair (docs/sources.md)"
        )
        if src.type in _CONNECTION_LIMITS:
            most, what, venue = _CONNECTION_LIMITS[src.type]
            if len(pairs) > most:
                out.append(
                    f"sources.{sid}: {len(pairs)} instruments on one connection, over {venue}'s "
                    f"limit of {most} {what} a connection: the venue refuses the rest, which "
                    f"this source never prices; {advice}"
                )
        elif src.type in _BYBIT_TOPICS:
            prefix = _BYBIT_TOPICS[src.type]
            chars = sum(len(prefix) + len(_bybit_symbol(src, pair)) for pair in pairs)
            if chars > _BYBIT_ARGS_CHARS:
                out.append(
                    f"sources.{sid}: the subscription args of {len(pairs)} instruments come to "
                    f"{chars} characters on one connection, over Bybit's limit of "
                    f"{_BYBIT_ARGS_CHARS}: the venue refuses the rest, which this source never "
                    f"prices; {advice}"
                )
    return out


#: Below this `max_connection_age_s` is warned about: venues keep a connection about a day.
MIN_SANE_CONNECTION_AGE_S = 60.0


def _short_connection_ages(cfg: Config) -> list[str]:
    """A connection replaced every few seconds costs a reconnect and resubscribe each time and
    counts against the venue's connection limits. Not refused: tests rotate sub-second against
    loopback simulators."""
    return [
        f"sources.{sid}.max_connection_age_s: {src.max_connection_age_s:g} s replaces the "
        "connection that often (each a reconnect and resubscribe, and counted by the venue's "
        "connection limits); venues keep one for about a day, so use hours (default 82800)"
        for sid, src in cfg.sources.items()
        if src.max_connection_age_s < MIN_SANE_CONNECTION_AGE_S
    ]


def _outliers_beyond_breaker(cfg: Config) -> list[str]:
    """max_deviation compares venues with each other within a round, circuit_breaker the price
    with its last good value across rounds: no contradiction, so not refused. But at or above the
    breaker, a venue further from the others than a move the breaker holds still votes, which is
    most likely two values swapped."""
    return [
        f"markets[{i}].max_deviation: {m.max_deviation:g} is not below circuit_breaker "
        f"({m.circuit_breaker:g}): a venue further from the others than a move the breaker "
        "holds still votes (are the two swapped?)"
        for i, m in enumerate(cfg.markets)
        if m.max_deviation >= m.circuit_breaker
    ]


def _lag_beyond_max_age(cfg: Config) -> list[str]:
    """A `lag_ms` set at or above the age limit of every venue slot of its market: a venue
    quote is stale before it is old enough to lag, so the lag rule never acts on a venue of the
    market, which is most likely not what setting it meant (swapped with max_age_ms, or seconds
    for milliseconds). Not refused: the age limit then excludes old quotes sooner, as strictly.
    The default `lag_ms` is not warned about: a market's short `max_age_ms` makes it moot."""
    out: list[str] = []
    for i, m in enumerate(cfg.markets):
        if "lag_ms" not in m.model_fields_set:
            continue
        limits = [
            slot_max_age_ms(cfg, m, ms)
            for ms in m.sources
            if ms.source in cfg.sources and cfg.sources[ms.source].type not in CHAIN_SOURCE_TYPES
        ]
        if limits and m.lag_ms >= max(limits):
            out.append(
                f"markets[{i}].lag_ms: {m.lag_ms} is not below the age limit of any of the "
                f"market's venue slots (max_age_ms {max(limits)}): their quotes are stale before "
                "they can lag, and no venue is outvoted by younger quotes (are lag_ms and "
                "max_age_ms swapped?)"
            )
    return out


def _venue_urls(src: SourceConfig) -> tuple[str, ...]:
    """The stream and REST URLs a venue source reads, defaults resolved as its adapter does."""
    module, _, name = SOURCE_TYPES[src.type].partition(":")
    adapter = getattr(importlib.import_module(module), name)  # only for a type listed twice
    urls = (src.ws_url or adapter.default_ws_url, src.rest_url or adapter.default_rest_url)
    return tuple(url.rstrip("/") for url in urls if url)


def _feed_read(src: SourceConfig, pair: str) -> str | None:
    """The on-chain feed an on-chain source reads for `pair`: its chain table and contract (the
    Pyth contract and the feed id for pyth_evm), or None without one."""
    spec = src.feeds.get(pair)
    if spec is None:
        return None
    if src.type == "pyth_evm":
        where = f"{(src.address or '').lower()}, feed {(spec.feed_id or '').lower()}"
    else:
        where = (spec.address or "").lower()
    return f"chain {src.chain} at {where}"


def _same_venue_twice(cfg: Config) -> list[str]:
    """Two ids of one type reading the same stream or REST URL in one market's list: the same
    venue voting twice (for one kind); for on-chain types, the same feed of the same chain table.
    Not refused: a config for `oracled replay` dials nothing and tells venues apart by the ids on
    the tape, so one type with its default URLs (or a copied feed) is a placeholder there."""
    out: list[str] = []
    for i, market in enumerate(cfg.markets):
        for field, listed in (("sources", market.sources), ("perp_sources", market.perp_sources)):
            types = [cfg.sources[ms.source].type for ms in listed]
            seen: dict[tuple[str, str, str], tuple[int, str]] = {}
            for j, ms in enumerate(listed):
                src = cfg.sources[ms.source]
                if types.count(src.type) < 2:
                    continue
                on_chain = src.type in CHAIN_SOURCE_TYPES
                if on_chain:
                    feed = _feed_read(src, ms.pair)
                    reads: tuple[str, ...] = () if feed is None else (feed,)
                else:
                    reads = _venue_urls(src)
                for read in reads:
                    first = seen.setdefault((src.type, ms.kind, read), (j, ms.source))
                    if first[1] == ms.source:
                        continue
                    other = f"{first[1]} ({field}[{first[0]}]): {src.type}"
                    if on_chain:
                        what = f"reads the same feed as {other} on {read}; two votes for one feed"
                        advice = "list one"
                    else:
                        what = f"is the same venue as {other} at {read}; two votes for one venue"
                        advice = "point one at another host, or list one"
                    out.append(f"markets[{i}].{field}[{j}].source: {ms.source} {what} ({advice})")
                    break
    return out


def _quorum_needs_disabled(cfg: Config) -> list[str]:
    """A market whose quorum (or mark minimum) counts on a source that is `enabled = false`:
    it cannot go live. Not refused: a reload that disables a bad venue mid-incident must apply."""
    out: list[str] = []

    def short(listed: tuple[MarketSource, ...], need: int) -> tuple[int, list[str]] | None:
        on = sum(1 for ms in listed if cfg.sources[ms.source].enabled)
        off = sorted({ms.source for ms in listed if not cfg.sources[ms.source].enabled})
        return (on, off) if on < need else None

    for i, market in enumerate(cfg.markets):
        n = len(market.sources)
        if found := short(market.sources, market.min_sources):
            on, off = found
            out.append(
                f"markets[{i}].min_sources: {market.min_sources} cannot be met: {on} of the "
                f"{n} sources listed {'is' if on == 1 else 'are'} enabled (disabled: "
                f"{', '.join(off)}); {market.symbol} stays unknown or paused until enough are "
                "enabled or min_sources is lowered"
            )
        perps, need = market.perp_sources, market.mark.min_perp_sources
        if perps and (found := short(perps, need)):
            on, off = found
            out.append(
                f"markets[{i}].mark.min_perp_sources: {need} cannot be met: {on} of the "
                f"{len(perps)} perpetuals listed {'is' if on == 1 else 'are'} enabled (disabled: "
                f"{', '.join(off)}); the mark falls back as with none until enough are enabled"
            )
    return out


def _disabled_with_settings(cfg: Config) -> list[str]:
    """A publishing table given settings but left `enabled = false` (its default): easy to miss,
    and then nothing is signed, sent or kept, silently."""
    out: list[str] = []
    tables: tuple[tuple[str, BaseModel], ...] = (
        ("signing", cfg.signing),
        ("nats", cfg.nats),
        ("push", cfg.push),
        ("audit", cfg.audit),
    )
    for name, table in tables:
        if getattr(table, "enabled", True):
            continue
        # by value, not by presence: a config dumped whole (oracled.sim) holds every default
        given = [
            key
            for key, field in type(table).model_fields.items()
            if key != "enabled"
            and getattr(table, key) != field.get_default(call_default_factory=True)
        ]
        if given:
            out.append(
                f"{name}.enabled: false, yet {', '.join(given)} set: [{name}] stays off "
                "(set enabled = true to use it, or remove its settings)"
            )
    return out


#: The largest config file read (the shipped one is about 30 KiB): a larger file is refused
#: after this many bytes, so that the audit database copied over the config is not read whole
#: into memory, by a reload of a running daemon least of all (a device such as /dev/zero, or a
#: FIFO, is refused before any read: `oracled.files`).
MAX_CONFIG_BYTES = 16 * 2**20


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a TOML config file."""
    return read_config(path, env)[0]


def read_config(path: str | Path, env: Mapping[str, str] | None = None) -> tuple[Config, str]:
    """`load_config`, and the sha256 of the bytes it parsed (the audit trail's record of the
    config in force): the file is read once, so the digest is of what was applied."""
    cfg, raw = read_config_text(path, env)
    return cfg, hashlib.sha256(raw).hexdigest()


def read_config_text(
    path: str | Path, env: Mapping[str, str] | None = None
) -> tuple[Config, bytes]:
    """`load_config`, and the bytes it parsed: the audit trail keeps them (schema version 7),
    so that a replay needs no copy of the file."""
    path = Path(path)
    try:  # a FIFO, /dev/zero, a directory: refused, never waited on (oracled.files)
        raw = read_regular(path, MAX_CONFIG_BYTES + 1)[0]
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror or exc})"]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        limit = f"{MAX_CONFIG_BYTES // 2**20} MiB"
        raise ConfigError([f"{path}: larger than {limit}: no config is this large"])
    return parse_config_text(raw, str(path), env), raw


def config_document(raw: bytes, where: str) -> dict[str, Any]:
    """A config file's bytes as its TOML document, read as `read_config` reads them; the
    problems name `where` (the file, or the audit trail's stored text)."""
    try:
        text = raw.decode("utf-8-sig")  # -sig: a byte order mark is no content
    except UnicodeDecodeError:
        raise ConfigError([f"{where}: not UTF-8 text"]) from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # the newlines read_text gave
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{where}: not valid TOML ({exc})"]) from None
    except RecursionError:  # the parser recurses per level of arrays and inline tables
        raise ConfigError([f"{where}: not valid TOML (nested too deeply)"]) from None


def parse_config_text(raw: bytes, where: str, env: Mapping[str, str] | None = None) -> Config:
    """A config file's bytes validated, as `read_config` validates the file's (`oracled audit
    --replay` parses the trail's stored text with it)."""
    data = config_document(raw, where)
    if "admin_token" in data:
        raise ConfigError(["admin_token: put the token in the environment, not the file"])
    return parse_config(data, env)
