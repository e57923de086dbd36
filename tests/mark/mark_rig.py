"""A small perpetual market driven round by round at times the test chooses.

BTC/USD has three direct spot venues (a, b, c) and two perpetuals: `p` quotes BTC/USD and `q`
quotes BTC/USDT, converted through the USDT/USD market (spot venues a, b, c too); `more_perps`
adds perpetuals quoting BTC/USD directly (`r`, say).
"""

from __future__ import annotations

from typing import Any

from oracled.config import Config, parse_config
from oracled.core import Core, RoundResult
from oracled.model import Mark, Quote, Report

# A multiple of 60 s, so that one-minute funding intervals start on it.
B = 1_700_000_040_000
SPOT = "abc"


def make_config(
    *,
    mark: dict[str, Any] | None = None,
    perps: bool = True,
    more_perps: str = "",
    oracle: dict[str, Any] | None = None,
    **market: Any,
) -> Config:
    """USDT/USD and BTC/USD; BTC/USD lists perps p and q (then `more_perps`, each on BTC/USD)
    unless `perps` is False; `oracle` overrides keys of the [oracle] table."""
    btc: dict[str, Any] = {
        "symbol": "BTC/USD",
        "min_sources": 2,
        "max_age_ms": 5_000,
        "sources": [{"source": s, "pair": "BTC/USD"} for s in SPOT],
        **market,
    }
    if perps:
        btc["perp_sources"] = [
            {"source": "p", "pair": "BTC/USD"},
            {"source": "q", "pair": "BTC/USDT"},
            *({"source": s, "pair": "BTC/USD"} for s in more_perps),
        ]
        btc["mark"] = mark or {}
    return parse_config(
        {
            "oracle": {"round_interval_ms": 1_000, "resume_rounds": 1, **(oracle or {})},
            "sources": {
                s: {"type": "binance" if s in SPOT else "okx"} for s in SPOT + "pq" + more_perps
            },
            "markets": [
                {
                    "symbol": "USDT/USD",
                    "price_exponent": -4,
                    "min_sources": 2,
                    "max_age_ms": 5_000,
                    "sources": [{"source": s, "pair": "USDT/USD"} for s in SPOT],
                },
                btc,
            ],
            "routes": [{"from": "USDT", "to": "USD", "via": "USDT/USD"}],
        },
        env={},
    )


class Rig:
    """Feeds spot and perp quotes received at the round's time, then runs the round."""

    def __init__(self, cfg: Config | None = None) -> None:
        self.core = Core(cfg or make_config())
        self.last: RoundResult | None = None

    def round(
        self,
        now: int,
        *,
        index: float | None = 100.0,
        usdt: float | None = 1.0,
        p: float | tuple[float, float] | None = None,
        q: float | tuple[float, float] | None = None,
    ) -> Report:
        """Quote spot BTC at `index` and USDT at `usdt` (None: no quote), perps as given
        (a price, or a (bid, ask) pair); run the round at `now`; return BTC/USD's report."""
        for source in SPOT:
            if usdt is not None:
                self._ingest(Quote(source, "USDT/USD", now, price=usdt))
            if index is not None:
                self._ingest(Quote(source, "BTC/USD", now, price=index))
        for source, pair, value in (("p", "BTC/USD", p), ("q", "BTC/USDT", q)):
            if isinstance(value, tuple):
                self._ingest(Quote(source, pair, now, bid=value[0], ask=value[1], kind="perp"))
            elif value is not None:
                self._ingest(Quote(source, pair, now, price=value, kind="perp"))
        self.last = self.core.run_round(now)
        return self.last.report(self.core.index["BTC/USD"])

    def mark(self, now: int, **kw: Any) -> Mark:
        report = self.round(now, **kw)
        assert report.mark is not None
        return report.mark

    def _ingest(self, quote: Quote) -> None:
        dropped = self.core.ingest(quote)
        assert dropped is None, (quote, dropped)
