"""The short soak: the daemon on every simulated venue of the shipped config for four fault cycles.

`benchmarks/soak.py` runs the daemon as a subprocess with the audit trail on, checks every report
it publishes on the stream, and injects each fault of its script once a cycle: REST failures,
a dropped connection with handshakes refused, a stall, a quorum loss, a spike, a burst of replayed
frames and garbage. The first cycle is the warm-up; resources are compared after it. No timing is
asserted: recovery only has to happen within the harness's generous limit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from soak import FAULTS, SoakOptions, judge, run_soak

pytestmark = pytest.mark.integration


async def test_faults_recover_no_bad_price_and_no_leak(tmp_path: Path) -> None:
    """Every fault is recovered from, no published price leaves the true band or outlives a
    pause, and memory, tasks, descriptors and sockets do not grow after the warm-up cycle."""
    opts = SoakOptions(
        cycles=4,
        window_s=3.0,
        quorum_window_s=6.0,
        settle_s=3.0,
        recovery_limit_s=45.0,
        rss_growth_limit=0.05,
        keep_logs=tmp_path / "daemon.log",
    )
    result = await run_soak(opts, tmp_path, log=lambda _: None)
    assert result.problems == [], result.table()
    assert len(result.faults) == 4 * len(FAULTS)
    assert all(f.recovered_s is not None and f.effect_seen for f in result.faults)
    checked = result.reports
    assert checked.bad == 0, checked.examples
    assert checked.live > 1_000 and checked.unbanded < checked.live // 100
    assert checked.by_status.get("paused", 0) > 0  # the null-price rule was exercised
    base, end = result.samples[0], result.samples[-1]
    assert base.tasks > len(result.faults) // len(FAULTS)  # the gauge counts the daemon's tasks
    assert end.tasks <= base.tasks + 2 and end.fds <= base.fds + 4
    assert end.rss_kb <= base.rss_kb * 1.05
    assert result.source_restarts == 0 and result.daemon_exit == 0


def test_the_subscriber_flags_every_kind_of_bad_report() -> None:
    """The check the soak relies on: a live price outside the band, a live report without a
    price and a paused report with one are each reported; good reports are not."""

    def report(status: str, price: str | None) -> dict[str, object]:
        return {"market": "BTC/USD", "status": status, "price": price, "ts": 1}

    band = (100.0, 101.0)
    assert judge(report("active", "100.5"), band, 0.005) is None
    assert judge(report("degraded", "101.4"), band, 0.005) is None  # inside the tolerance
    assert judge(report("paused", None), band, 0.005) is None
    assert judge(report("unknown", None), None, 0.005) is None
    assert "outside" in str(judge(report("active", "108.0"), band, 0.005))
    assert "outside" in str(judge(report("degraded", "99.0"), band, 0.005))
    assert "without a price" in str(judge(report("active", None), band, 0.005))
    assert "with price" in str(judge(report("paused", "100.5"), band, 0.005))
