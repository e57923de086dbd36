"""The registry of REST hosts resting for a limit on our IP, which the sources of a runtime
share (oracled/sources/hostrests.py)."""

from __future__ import annotations

import math

from oracled.clock import ManualClock
from oracled.sources._base import RestPacer
from oracled.sources.hostrests import HostRests, rest_host


def test_a_host_is_keyed_by_name_and_port_whatever_the_spelling_of_its_url() -> None:
    """Two sources configured with one host written two ways share its rests; another port is
    another host (two loopback simulators); no URL has no host."""
    assert rest_host("https://api.bybit.com") == "api.bybit.com:443"
    assert rest_host("https://API.Bybit.com:443/") == "api.bybit.com:443"
    assert rest_host("http://127.0.0.1:8080") != rest_host("http://127.0.0.1:8081")
    assert rest_host(None) is None and rest_host("") is None


def test_a_shorter_rest_never_cuts_a_longer_one_short() -> None:
    """A 5 s IP-limit rest learnt during a 600 s ban leaves the ban's end, and who learnt it, as
    they were; a later end replaces them. A host that never rested has no end."""
    rests = HostRests()
    assert rests.until("api.bybit.com:443") == (-math.inf, "", "")
    rests.rest("api.bybit.com:443", 700.0, "bybit_linear", "HTTP 403: access too frequent")
    rests.rest("api.bybit.com:443", 105.0, "bybit_spot", "10018: Too many requests")
    assert rests.until("api.bybit.com:443") == (
        700.0,
        "bybit_linear",
        "HTTP 403: access too frequent",
    )
    rests.rest("api.bybit.com:443", 1300.0, "bybit_spot", "HTTP 403: access too frequent")
    assert rests.until("api.bybit.com:443")[:2] == (1300.0, "bybit_spot")
    assert rests.until("api.bytick.com:443") == (-math.inf, "", "")
    assert rests.until(None) == (-math.inf, "", "")


def test_a_host_keeps_the_first_pacer_offered() -> None:
    """The sources of a host whose REST rate is per IP take their turns from one pacer: the
    first offered, which a source built later (a restart, a reload) finds in place of its own;
    another host keeps its own."""
    rests, clock = HostRests(), ManualClock(0)
    first, second, other = (RestPacer(2.0, 2.0, clock) for _ in range(3))
    assert rests.pacer("hermes.pyth.network:443", first) is first
    assert rests.pacer("hermes.pyth.network:443", second) is first
    assert rests.pacer("127.0.0.1:8080", other) is other
