"""web3's HTTP provider for `RpcClient.chain_id`: on the client's session, under its answer cap.

web3's own `AsyncHTTPProvider` reads a whole answer into memory (`ClientResponse.read()`),
however long it runs: an endpoint that is broken or hostile could stream an endless body at the
start-up's chain id check, bounded only by the request's timeout, where every other RPC answer
is cut at 16 MiB (`oracled.jsonrpc.read_answer`). This provider keeps web3's request building,
request cache and answer handling and replaces only the POST: sent on the session it is given
(so web3 opens no session or connection pool of its own) and read through `read_answer`, which
raises `AnswerTooLarge` past the cap, as for every other answer.

Imported only by `RpcClient._web3_for`, on a chain's first chain id check: importing web3 costs
about a second of CPU that a daemon without chains never pays (`oracled/eth.py`).
"""

from __future__ import annotations

from typing import Any

import aiohttp

from oracled.eth import recursion_limit_kept
from oracled.jsonrpc import read_answer

with recursion_limit_kept():  # py_ecc, imported through web3, raises it
    from web3 import AsyncHTTPProvider
    from web3.types import RPCEndpoint

__all__ = ["CappedHTTPProvider"]


class CappedHTTPProvider(AsyncHTTPProvider):
    """`AsyncHTTPProvider` for one-off reads (web3's cache on, no retries of its own: fail-over
    and its counting are the client's) whose answers are read no further than the cap."""

    def __init__(self, url: str, session: aiohttp.ClientSession, *, timeout_s: float) -> None:
        super().__init__(
            url,
            # Only the configured host answers: a redirect (a 307 keeps the POST) is a failure.
            request_kwargs={
                "timeout": aiohttp.ClientTimeout(total=timeout_s),
                "allow_redirects": False,
            },
            exception_retry_configuration=None,
            cache_allowed_requests=True,
            # No threshold: web3 would otherwise send a second eth_chainId, uncached, to pick
            # one for block-based cache entries, which this provider never makes.
            request_cache_validation_threshold=None,
        )
        self._session = session

    async def _make_request(self, method: RPCEndpoint, request_data: bytes) -> bytes:
        """One POST with web3's headers (its User-Agent); an error status raised as web3's own
        session raises it (`aiohttp.ClientResponseError`, headers kept for a `Retry-After`)."""
        kwargs: dict[str, Any] = dict(self.get_request_kwargs())
        async with self._session.post(str(self.endpoint_uri), data=request_data, **kwargs) as resp:
            resp.raise_for_status()
            if 300 <= resp.status < 400:  # not followed (`allow_redirects`): failed as a status
                raise aiohttp.ClientResponseError(
                    resp.request_info,
                    resp.history,
                    status=resp.status,
                    message="a redirect, not followed",
                    headers=resp.headers,
                )
            return await read_answer(resp)
