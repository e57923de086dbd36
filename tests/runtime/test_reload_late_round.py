"""A reload applied while the round loop is late is in the trail before the round it priced.

Found running the audit replay test under a heavy load (tests/publish/test_audit_faults.py): a
reload of BTC/USD's price exponent was applied after a round's tick had passed but before the
loop, late, ran that round; the round was computed under the new config, yet the trail stamped
the reload with the time it was applied, after the round. The replay with the starting config
then differed at a round the trail put before the reload, and `oracled audit --at` of that
round named the old config.
"""

from __future__ import annotations

from pathlib import Path

from inert_source import idle_source, published_round
from one_venue import service_running

from oracled.clock import ManualClock
from oracled.config import load_config
from oracled.model import Quote
from oracled.publish.audit import AuditReader
from oracled.service import Service

#: A long interval: the loop sleeps this long (real time) towards its tick, which the test's
#: reload, a few milliseconds of work, falls well within.
INTERVAL = 3_000
T0 = 1_800_000_000_000  # a multiple of INTERVAL: the first round's tick


def _toml(audit: Path, exponent: int) -> str:
    return f"""
[oracle]
round_interval_ms = {INTERVAL}
resume_rounds = 1

[api]
listen = "127.0.0.1:0"

[sources.good]
type = "binance"
ws_url = "ws://127.0.0.1:9"
rest_url = "http://127.0.0.1:9"

[[markets]]
symbol = "BTC/USDT"
min_sources = 1
max_age_ms = 10_000
price_exponent = {exponent}
sources = [{{ source = "good", pair = "BTC/USDT" }}]

[audit]
enabled = true
path = "{audit}"
reserve_bytes = 65_536
"""


async def test_a_reload_while_the_round_loop_is_late_is_stamped_before_the_round_it_priced(
    tmp_path: Path,
) -> None:
    """The wall clock passes the next tick while the loop sleeps towards it, and a reload of
    the price exponent is applied before the loop wakes: that round (published late, at its
    tick) has the new exponent, and the trail's reload is stamped before the round's time, so
    `config_at` of the round names the reload, and every round stamped before it the start."""
    trail = tmp_path / "audit.sqlite3"
    path = tmp_path / "oracled.toml"
    path.write_text(_toml(trail, -2))
    clock = ManualClock(T0)
    service = Service(load_config(path), clock=clock, source_factory=idle_source, config_path=path)
    async with service_running(service):
        await service.started.wait()
        service.on_quote(Quote("good", "BTC/USDT", T0, price=64_000.123))
        clock.advance(1)  # past the first tick: round 1 runs, the loop then sleeps to the next
        await published_round(service, 1, 10 + INTERVAL / 1000)
        clock.advance(INTERVAL + 500)  # the next tick passed; the loop sleeps on
        path.write_text(_toml(trail, -1))
        changes = await service.reload("test")
        assert changes["markets_changed"] == ["BTC/USDT"], changes
        await published_round(service, 2, 10 + INTERVAL / 1000)
    reader = AuditReader(trail)
    try:
        stored = {s.report.round: s.report for s in reader.reports("BTC/USDT", 0, 1 << 62)}
        loads = reader.configs(0, 1 << 62)
        late = reader.config_at(T0 + INTERVAL)
    finally:
        reader.close()
    assert [(r.ts, r.price) for r in (stored[1], stored[2])] == [
        (T0, "64000.12"),
        (T0 + INTERVAL, "64000.1"),  # computed after the reload
    ]
    assert [c.event for c in loads] == ["start", "reload"]
    assert T0 < loads[1].ts < T0 + INTERVAL  # after round 1, before round 2
    assert late is not None and late.event == "reload"
