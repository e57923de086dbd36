"""A URL as a log line or a message may show it: without its user part, which may be a secret.

A NATS server's `nats://user:password@host` or `nats://token@host`, a daemon behind a proxy
that asks for `https://user:password@host`: the part before the `@` is a credential, and the
rest (scheme, host, port, path) is what a reader needs to tell the peers apart.
"""

from __future__ import annotations

__all__ = ["shown_url"]


def shown_url(url: str) -> str:
    """`url` with what precedes its last `@` replaced by `***` (`nats://***@host:4222`), also
    when it has no `scheme://` to tell where that part starts; unchanged without an `@`. The
    last `@`, not the authority's: a password with an `@` or a `/` that was not percent-encoded
    is still left out whole."""
    if "@" not in url:
        return url
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}"
