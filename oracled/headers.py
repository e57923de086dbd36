"""What the daemon reads of an HTTP answer by one rule for every peer: header values that name a
wait (`Retry-After`, a venue's rate-limit reset) for the venues' REST fallbacks and the chains'
JSON-RPC endpoints, and whether a WebSocket handshake was redirected (`redirected_to`).

float() and int() read far more than RFC 9110 allows: "inf" (a wait of forever, capped to the
longest ban), "nan", "1e9", "+5", "1_000", " 12 ", non-ASCII digits ("١٢٣" is 123). A header
any peer (or a proxy in front of it) garbles must not set how long the daemon stops asking.
"""

from __future__ import annotations

from typing import Final

import aiohttp

__all__ = ["delay_seconds", "redirected_to"]

# A count of more digits than this (epoch ms has 13) is read as `_HEADER_HUGE`.
_HEADER_DIGITS: Final = 18
# What a count too long to convert reads as: beyond every cap the callers apply.
_HEADER_HUGE: Final = 10**18


def delay_seconds(text: str) -> int | None:
    """A wait header's count by RFC 9110's delay-seconds rule (1*DIGIT, ASCII digits alone), or
    None for any other text (an HTTP date included: obeying one depends on two clocks agreeing).
    Past `_HEADER_DIGITS` digits the number is beyond every cap (read as such) rather than
    converted (int() refuses more than 4300 digits)."""
    if not (text.isascii() and text.isdigit()):
        return None
    return int(text) if len(text) <= _HEADER_DIGITS else _HEADER_HUGE


def redirected_to(ws: aiohttp.ClientWebSocketResponse) -> str | None:
    """Where a WebSocket handshake was redirected to, or None if it was not. aiohttp follows a
    handshake's redirects and has no switch to stop it (its plain requests take
    `allow_redirects=False`): every caller hangs up on such a socket before using it, so that
    only the host configured is read. The one place that reads aiohttp's private response."""
    response = ws._response
    return str(response.url) if response.history else None
