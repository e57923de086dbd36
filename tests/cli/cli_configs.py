"""A config both command-line test files run: valid, with one setting that most likely does not
do what was meant (the nats table with servers and no `enabled`: a config warning, which the
command line logs before it imports the runtime), and one source on a loopback port."""

from __future__ import annotations


def warned_config(port: int = 9) -> str:
    """The config, its source pointed at 127.0.0.1:`port` (9: closed, nothing is dialled)."""
    return f"""
[log]
format = "json"

[nats]
servers = ["nats://127.0.0.1:4333"]

[sources.binance]
type = "binance"
ws_url = "ws://127.0.0.1:{port}/ws"
rest_url = "http://127.0.0.1:{port}"

[[markets]]
symbol = "BTC/USDT"
min_sources = 1
sources = [{{ source = "binance", pair = "BTC/USDT" }}]
"""
