"""A source's weight is written in one form by every endpoint that carries it.

A consumer comparing `/v1/markets` with a report, byte for byte or with a strict JSON reader
that keeps integers and floats apart, must find the same literal for the same weight: the float
form the report encoder writes (`1.0`, `2.0`, `0.5`), even for a weight the config gives as an
integer.
"""

from __future__ import annotations

import copy
import re

from api_rig import CONFIG, TOKEN, ClientFactory, Rig

from oracled.config import parse_config

_WEIGHT = re.compile(rb'"weight":([^,}\]]*)')


def _weights_config() -> Rig:
    """The rig's markets with weights given as integers (2, 1) and a fraction (0.5), and a
    perpetual whose weight is given as the integer 1."""
    data = copy.deepcopy(CONFIG)
    btc, eth, _ = data["markets"]
    btc["sources"][2]["weight"] = 2  # an integer, as TOML reads `weight = 2`
    btc["sources"][0]["weight"] = 1
    eth["sources"][1]["weight"] = 0.5
    data["sources"]["delta"] = {"type": "binance_usdm"}
    btc["perp_sources"] = [{"source": "delta", "pair": "BTC/USD", "weight": 1}]
    return Rig(parse_config(data, env={"ORACLED_ADMIN_TOKEN": TOKEN}))


async def test_every_endpoint_writes_weights_as_the_report_does(
    make_client: ClientFactory,
) -> None:
    """/v1/prices, /v1/prices/{market}, /v1/markets (sources and perp_sources) and
    /v1/markets/{market}/sources write each weight as the same float literal, an integer weight
    of the config included: `2.0`, `1.0` and `0.5`, never `2` or `1`."""
    rig = _weights_config()
    client = await make_client(rig)
    rig.step()
    expected = {
        "/v1/prices": [b"1.0", b"1.0", b"2.0", b"1.0", b"0.5", b"1.0"],
        "/v1/prices/BTC-USD": [b"1.0", b"1.0", b"2.0"],
        "/v1/prices/ETH-USD": [b"1.0", b"0.5"],
        # BTC/USD's three sources and its perpetual, ETH/USD's two, SOL/USD's one.
        "/v1/markets": [b"1.0", b"1.0", b"2.0", b"1.0", b"1.0", b"0.5", b"1.0"],
        "/v1/markets/BTC-USD/sources": [b"1.0", b"1.0", b"2.0"],
        "/v1/markets/ETH-USD/sources": [b"1.0", b"0.5"],
    }
    for path, weights in expected.items():
        resp = await client.get(path)
        body = await resp.read()
        assert resp.status == 200, body
        assert _WEIGHT.findall(body) == weights, path
