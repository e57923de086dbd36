"""The reasons of `oracled_api_connections_closed_total`: in code, in the hub, in the docs.

The hub's counter started with four of the six reasons: the other two were added on their first
close, while the metrics thread may be iterating the counter (which is safe only as long as no
key is ever added), and their series were missing from the exposition until then.
"""

from __future__ import annotations

import re
from pathlib import Path

from oracled.api.badrequests import BAD_REQUEST_REASONS
from oracled.api.limits import CLOSED_REASONS
from oracled.publish import Hub

METRICS_MD = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def _documented() -> tuple[list[str], int, int]:
    """The reasons of the label table's row, its bound, and the metric row's series count."""
    text = METRICS_MD.read_text()
    row = re.search(r"^\| `reason` \(API connections\) \| (.*) \| (\d+) \|$", text, re.M)
    assert row is not None, "no `reason` (API connections) row in docs/metrics.md"
    metric = re.search(
        r"^\| `oracled_api_connections_closed_total` \|[^|]*\|[^|]*\|[^|]*\| (\d+) \|", text, re.M
    )
    assert metric is not None, "no oracled_api_connections_closed_total row"
    return re.findall(r"`(\w+)`", row.group(1)), int(row.group(2)), int(metric.group(1))


def test_every_reason_is_counted_from_the_start_and_documented() -> None:
    """A new hub counts every reason the API closes connections for, each at 0, no other; the
    metrics catalogue lists the same reasons, its bound and the metric's series count agree."""
    reasons = {*CLOSED_REASONS, *BAD_REQUEST_REASONS}
    assert dict(Hub(4).api_closed) == dict.fromkeys(reasons, 0)
    documented, bound, series = _documented()
    assert sorted(documented) == sorted(reasons)
    assert bound == series == len(reasons) == 10
