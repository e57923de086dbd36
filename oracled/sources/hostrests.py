"""Until when each REST host is rested for a limit on our IP, and the pacer its requests share.

A venue that documents a REST limit (or ban) as one per IP, whatever the endpoint, counts every
request our IP sends to its host: a Bybit spot and a Bybit linear source polling the same host
would each pay one refused request to learn a ban the other already knows, and a second request
into an IP ban may prolong it. The source that meets such a limit writes here until when the
host rests; every source polling that host reads it before each poll round
(`Source._host_resting`) and sends nothing until then. A venue whose published REST rate is
one per IP (`Source.rest_rate_per_ip`: Pyth Hermes, Gemini, Kraken) has its sources take their
turns from one pacer per host (`HostRests.pacer`), not one each: two sources paced each under
the limit would pass it together.

The service owns one `HostRests` and hands it to every source it builds; a source built alone
(a test, a tool) has one of its own, which is the behaviour of a single source. Times are the
injected clock's `monotonic()` seconds, one clock for every source of a runtime.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from oracled.sources._base import RestPacer

__all__ = ["HostRests", "rest_host"]

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def rest_host(url: str | None) -> str | None:
    """The key of a REST base URL's host: `host:port` (the scheme's port when none is named),
    so that `https://api.bybit.com` and `https://api.bybit.com:443/` are one host; None for no
    URL."""
    if not url:
        return None
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower(), 0)
    except ValueError:  # a port out of range: the URL as written stands for its host
        return url
    return f"{host}:{port}"


class HostRests:
    """Host key -> until when it rests, which source learnt it and from what answer; and the
    host's shared pacer."""

    __slots__ = ("_pacers", "_until")

    def __init__(self) -> None:
        self._until: dict[str, tuple[float, str, str]] = {}
        self._pacers: dict[str, RestPacer] = {}

    def pacer(self, host: str, mine: RestPacer) -> RestPacer:
        """The pacer every source of `host` takes its REST turns from: the first one offered is
        kept, so that a source rebuilt (a restart, a reload) finds the turns its predecessor and
        the host's other sources took, not a full burst of its own."""
        return self._pacers.setdefault(host, mine)

    def rest(self, host: str, until: float, by: str, why: str) -> None:
        """Rest `host` until `until` (monotonic seconds); an earlier instant than one already
        held is ignored, so that a short limit never cuts a ban short."""
        held = self._until.get(host)
        if held is None or until > held[0]:
            self._until[host] = (until, by, why)

    def until(self, host: str | None) -> tuple[float, str, str]:
        """(until, source that learnt it, the answer's words) of `host`'s newest rest;
        -inf and empty names if it never rested."""
        held = self._until.get(host) if host is not None else None
        return held if held is not None else (-math.inf, "", "")
