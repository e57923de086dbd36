"""On-chain feeds update on their own schedule, so their slots take their age limit from the
feed, not from the market: a Chainlink feed's heartbeat plus 10 %, a Pyth EVM feed's max_age_s,
a Uniswap pool (read every block) a minute at least. Driven through the real core."""

from __future__ import annotations

from typing import Any

from core_helpers import T0

from oracled.config import parse_config
from oracled.core import Core
from oracled.model import Quote

PROXY = "0x5f4eC3Df9cbd43714FE2740f5E3616155c5b8419"
PYTH = "0x4305FB66699C3B2702D4d05CF36551390A4c69C6"
POOL = "0x88e6A0c2dDD26FEEb64F039a2c41296FcB3f5640"
FEED_ID = "0xff61491a931112ddf1bd8147cd1b641375f79f5825126d665480874634fd0ace"
IDS = ("venue", "cl", "py", "uni")


def _doc() -> dict[str, Any]:
    return {
        "chains": {"eth": {"chain_id": 1, "rpc_urls_env": "TEST_ETH_RPC"}},
        "sources": {
            "venue": {"type": "binance"},
            "cl": {
                "type": "chainlink",
                "chain": "eth",
                "feeds": {"ETH/USD": {"address": PROXY, "heartbeat_s": 3600}},
            },
            "py": {
                "type": "pyth_evm",
                "chain": "eth",
                "address": PYTH,
                "feeds": {"ETH/USD": {"feed_id": FEED_ID, "max_age_s": 120}},
            },
            "uni": {
                "type": "uniswap_v3",
                "chain": "eth",
                "feeds": {
                    "ETH/USD": {
                        "address": POOL,
                        "min_liquidity": 1,
                        "token0_decimals": 6,
                        "token1_decimals": 18,
                        "invert": True,
                    }
                },
            },
        },
        "markets": [
            {
                "symbol": "ETH/USD",
                "min_sources": 1,
                "max_age_ms": 5_000,
                "sources": [{"source": s, "pair": "ETH/USD"} for s in IDS],
            }
        ],
    }


def test_on_chain_slots_take_the_age_limit_of_their_feed() -> None:
    """All four quoted at T0: the venue's slot is stale after the market's 5 s, the pool's after
    a minute (never the market's shorter limit), the Pyth feed's after its 120 s, and the
    Chainlink feed's only after its 3600 s heartbeat plus 10 % (3960 s), not at 3600 s."""
    cfg = parse_config(_doc(), {"TEST_ETH_RPC": "http://127.0.0.1:8545"})
    core = Core(cfg)
    for sid in IDS:
        assert core.ingest(Quote(sid, "ETH/USD", T0, price=3000.0)) is None

    def stale_at(age_ms: int) -> set[str]:
        report = core.run_round(T0 + age_ms).report(0)
        assert [s.id for s in report.sources] == list(IDS)
        return {s.id for s in report.sources if s.reason == "stale"}

    assert stale_at(4_000) == set()
    assert stale_at(6_000) == {"venue"}
    assert stale_at(59_000) == {"venue"}
    assert stale_at(61_000) == {"venue", "uni"}
    assert stale_at(119_000) == {"venue", "uni"}
    assert stale_at(121_000) == {"venue", "uni", "py"}
    assert stale_at(3_700_000) == {"venue", "uni", "py"}
    assert stale_at(3_959_000) == {"venue", "uni", "py"}
    assert stale_at(3_961_000) == set(IDS)
