"""A routed slot names its conversion leg (`via`) wherever the API describes a slot: in the
reports of /v1/prices and the streams, in /v1/markets and in /v1/markets/{market}/sources.
Other slots carry no `via` key; every answer is checked against the OpenAPI document."""

from __future__ import annotations

from typing import Any

from api_rig import ClientFactory, ContractRecorder, Rig
from stream_wire import next_event

from oracled.config import Config, parse_config


def _config() -> Config:
    """BTC/USD from a USD venue and two USDT venues (routed through USDT/USD), JPY/USD from an
    inverse pair (no leg)."""
    venues = ("alpha", "beta", "gamma")
    return parse_config(
        {
            "oracle": {"round_interval_ms": 250, "resume_rounds": 1},
            "sources": {v: {"type": "binance"} for v in venues},
            "routes": [{"from": "USDT", "to": "USD", "via": "USDT/USD"}],
            "markets": [
                {
                    "symbol": "USDT/USD",
                    "price_exponent": -4,
                    "min_sources": 2,
                    "sources": [{"source": v, "pair": "USDT/USD"} for v in venues],
                },
                {
                    "symbol": "BTC/USD",
                    "min_sources": 2,
                    "sources": [
                        {"source": "alpha", "pair": "BTC/USD"},
                        {"source": "beta", "pair": "BTC/USDT"},
                        {"source": "gamma", "pair": "BTC/USDT"},
                    ],
                },
                {
                    "symbol": "JPY/USD",
                    "price_exponent": -8,
                    "min_sources": 1,
                    "sources": [{"source": "alpha", "pair": "USD/JPY"}],
                },
            ],
        },
        env={},
    )


def _vias(slots: list[dict[str, Any]], key: str) -> list[tuple[str, str | None]]:
    return [(s[key], s.get("via", "-")) for s in slots]


BTC_VIAS = [("alpha", "-"), ("beta", "USDT/USD"), ("gamma", "USDT/USD")]


async def test_routed_slots_name_their_leg_everywhere_a_slot_is_described(
    make_client: ClientFactory, contract: ContractRecorder
) -> None:
    """BTC/USD's USDT slots say `"via": "USDT/USD"` in the report (array and single market, and
    the event stream's frame), in /v1/markets and in its sources view; the USD slot, the leg's
    own slots and the inverse JPY slot have no `via` key."""
    rig = Rig(_config())
    client = await make_client(rig)
    rig.step({"USDT/USD": 0.999, "BTC/USD": 64_000.0, "JPY/USD": 150.0})
    reports = {r["market"]: r for r in await (await client.get("/v1/prices")).json()}
    assert _vias(reports["BTC/USD"]["sources"], "id") == BTC_VIAS
    assert reports["BTC/USD"]["status"] == "active"
    assert all("via" not in s for m in ("USDT/USD", "JPY/USD") for s in reports[m]["sources"])
    single = await (await client.get("/v1/prices/BTC-USD")).json()
    assert single == reports["BTC/USD"]

    markets = {m["symbol"]: m for m in (await (await client.get("/v1/markets")).json())["markets"]}
    assert _vias(markets["BTC/USD"]["sources"], "source") == BTC_VIAS
    assert all("via" not in s for m in ("USDT/USD", "JPY/USD") for s in markets[m]["sources"])

    detail = await (await client.get("/v1/markets/BTC-USD/sources")).json()
    assert _vias(detail["sources"], "source") == BTC_VIAS
    jpy = await (await client.get("/v1/markets/JPY-USD/sources")).json()
    assert "via" not in jpy["sources"][0]

    events = await client.get("/v1/events?markets=BTC-USD")
    _, frame = await next_event(events)
    events.close()
    assert frame["type"] == "report"
    assert _vias(frame["data"]["sources"], "id") == BTC_VIAS
    contract.validator("/components/schemas/StreamMessage").validate(frame)


async def test_a_slot_blocked_by_its_leg_says_route_and_names_the_leg(
    make_client: ClientFactory,
) -> None:
    """With the leg market without quotes (unknown), the USDT slots are excluded as `route` and
    say which leg blocked them: the operator need not read the config to find it."""
    rig = Rig(_config())
    client = await make_client(rig)
    rig.step({"BTC/USD": 64_000.0})
    report = await (await client.get("/v1/prices/BTC-USD")).json()
    assert report["reasons"] == ["quorum", "route"]
    assert [(s["reason"], s.get("via")) for s in report["sources"]] == [
        (None, None),
        ("route", "USDT/USD"),
        ("route", "USDT/USD"),
    ]
