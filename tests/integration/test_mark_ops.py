"""The mark price as an operator sees it: /metrics and the log, on a real daemon.

BTC/USD with three spot venues and two perpetual venues (binance_usdm, bybit_linear), each on
its loopback simulator. Both perpetual venues go silent for a few seconds: the mark falls back
to the index (docs/mark.md), and that must show in /metrics and in one log line, not only in
the report's `mark` object.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from daemon import ADMIN_TOKEN, Daemon
from prometheus_client.parser import text_string_to_metric_families

from oracled.config import parse_config
from oracled.sim.venues import simulate

pytestmark = pytest.mark.integration
PERPS = ("binance_usdm", "bybit_linear")
SPOT = {"binance": "BTC/USDT", "coinbase": "BTC/USD", "kraken": "BTC/USD"}
LIVENESS = {"liveness_timeout_s": 5.0, "rest_poll_interval_s": 0.5, "reconnect_max_s": 1.0}


def _config() -> dict[str, Any]:
    return {
        "oracle": {"round_interval_ms": 100, "resume_rounds": 2, "jump_confirm_rounds": 2},
        "api": {"admin_token_env": "ORACLED_TEST_ADMIN_TOKEN"},
        "log": {"format": "json"},
        "sources": {sid: {"type": sid} for sid in (*SPOT, *PERPS)},
        "routes": [{"from": "USDT", "to": "USD", "via": "USDT/USD"}],
        "markets": [
            {
                "symbol": "USDT/USD",
                "price_exponent": -6,
                "min_sources": 2,
                "max_age_ms": 1500,
                "sources": [{"source": s, "pair": "USDT/USD"} for s in ("coinbase", "kraken")],
            },
            {
                "symbol": "BTC/USD",
                "min_sources": 2,
                "max_age_ms": 1500,
                "sources": [{"source": s, "pair": p} for s, p in SPOT.items()],
                "perp_sources": [{"source": s, "pair": "BTC/USDT"} for s in PERPS],
            },
        ],
    }


def _mark_samples(text: str) -> dict[tuple[str, ...], float]:
    """The oracled_mark_* samples of BTC/USD, keyed by name (and mode)."""
    out: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("oracled_mark_") and s.labels.get("market") == "BTC/USD":
                out[(s.name, *(v for k, v in s.labels.items() if k == "mode"))] = s.value
    return out


async def test_a_mark_in_fallback_shows_in_metrics_and_is_logged_once_per_change(
    tmp_path: Path,
) -> None:
    """With both perpetual venues silent, oracled_mark_mode says fallback and perps_used 0 while
    the mark price stays published, and /v1/markets/BTC-USD/sources lists both perp_sources as
    not used, stale; `mark fallback` is logged once (not per round) and `mark from perpetuals`
    once the venues are back, when the metrics say perps again."""
    cfg, venues = await simulate(parse_config(_config(), env={}), rate_hz=10.0, liveness=LIVENESS)
    daemon = Daemon(
        tomli_w.dumps(cfg.model_dump(by_alias=True, exclude={"admin_token"}, exclude_none=True)),
        tmp_path,
    )
    try:
        await daemon.start()

        async def mode(wanted: str) -> dict[tuple[str, ...], float] | None:
            _, text = await daemon.get("/metrics")
            found = _mark_samples(text)
            return found if found.get(("oracled_mark_mode", wanted)) == 1.0 else None

        before = await daemon.wait_for(lambda: mode("perps"), 20.0, "mark from perps")
        assert before[("oracled_mark_perps_used",)] == 2.0
        _, listed = await daemon.get("/v1/markets/BTC-USD/sources")
        perps = {row["source"]: row for row in listed["perp_sources"]}
        assert set(perps) == set(PERPS) and {p["kind"] for p in perps.values()} == {"perp"}
        assert all(p["used"] is True and p["reason"] is None for p in perps.values()), perps
        assert all(p["value"] is not None and p["via"] == "USDT/USD" for p in perps.values())
        assert before[("oracled_mark_mode", "fallback")] == 0.0
        for venue in venues:
            if venue.source in PERPS:
                venue.sim.silence(4.0)
        during = await daemon.wait_for(lambda: mode("fallback"), 10.0, "mark fallback")
        assert during[("oracled_mark_perps_used",)] == 0.0
        assert during[("oracled_mark_mode", "perps")] == 0.0
        report = await daemon.report("BTC/USD")
        assert report["mark"]["estimators"]["fallback"] is not None
        assert during[("oracled_mark_price",)] > 0.0
        _, listed = await daemon.get("/v1/markets/BTC-USD/sources")
        assert [(p["used"], p["reason"]) for p in listed["perp_sources"]] == [(False, "stale")] * 2
        _, usdt = await daemon.get("/v1/markets/USDT-USD/sources")
        assert usdt["perp_sources"] == []
        await asyncio.sleep(1.0)  # more rounds in fallback: still one line
        assert len(daemon.events("mark fallback")) == 1
        (entered,) = daemon.events("mark fallback")
        assert entered["market"] == "BTC/USD" and entered["perps_used"] == 0
        await daemon.wait_for(lambda: mode("perps"), 15.0, "mark from perps again")
        await daemon.wait_for(
            lambda: daemon.events("mark from perpetuals"), 5.0, "the leaving line"
        )
        assert len(daemon.events("mark fallback")) == 1
        (left,) = daemon.events("mark from perpetuals")
        assert left["market"] == "BTC/USD" and left["perps_used"] >= 1
    finally:
        await daemon.close()
        for venue in venues:
            await venue.sim.stop()


async def test_a_mark_still_in_fallback_after_its_perps_were_removed_and_listed_again_is_logged(
    tmp_path: Path,
) -> None:
    """Each perpetual's mid is beyond a tiny max_perp_deviation, so the mark stays in fallback.
    A reload drops BTC/USD's perp_sources and a second lists them again: the market's mark is a
    new one, in fallback, and `mark fallback` is logged again (2 lines), not taken for the one
    before the first reload."""
    data = _config()
    data["markets"][1]["mark"] = {"max_perp_deviation": 1e-9}
    cfg, venues = await simulate(parse_config(data, env={}), rate_hz=10.0, liveness=LIVENESS)
    dump = cfg.model_dump(by_alias=True, exclude={"admin_token"}, exclude_none=True)
    daemon = Daemon(tomli_w.dumps(dump), tmp_path)
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    try:
        await daemon.start()
        await daemon.wait_for(lambda: daemon.events("mark fallback"), 20.0, "mark fallback")
        perps = dump["markets"][1].pop("perp_sources")
        mark = dump["markets"][1].pop("mark")
        daemon.config.write_text(tomli_w.dumps(dump))
        status, body = await daemon.post("/v1/admin/reload", headers=auth)
        assert status == 200, body
        await asyncio.sleep(0.5)  # rounds without a perpetual market
        dump["markets"][1].update(perp_sources=perps, mark=mark)
        daemon.config.write_text(tomli_w.dumps(dump))
        status, body = await daemon.post("/v1/admin/reload", headers=auth)
        assert status == 200, body
        await daemon.wait_for(
            lambda: len(daemon.events("mark fallback")) == 2, 10.0, "a second mark fallback"
        )
        assert daemon.events("mark from perpetuals") == []
    finally:
        await daemon.close()
        for venue in venues:
            await venue.sim.stop()
