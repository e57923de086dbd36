"""A URL as a log line or a message may show it: without its user part, which may be a secret.

A NATS server's `nats://user:password@host` or `nats://token@host`, a daemon behind a proxy
that asks for `https://user:password@host`: the part before the `@` is a credential, and the
rest (scheme, host, port, path) is what a reader needs to tell the peers apart.

And whether a URL names a host and port a client can dial (`host_port_problem`), one test for
the config's URLs and `oracled margin --url`.
"""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["host_port_problem", "shown_url"]


def host_port_problem(url: str) -> str | None:
    """What keeps a client from dialling `url`, read as it reads a host and a port, or None: a
    port that is none (`:99999`, `:9x`), an unclosed `[`, no host, a control character or a
    line break (`urlsplit` drops some of those unsaid; the client fails on them). Such a URL
    was accepted, and every connect to it failed, retried for ever. The words never quote the
    URL: the caller names it as it may be shown."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # ValueError past 65535 or for anything but ASCII digits
    except ValueError as exc:
        return f"not a URL ({exc})"
    if not parts.hostname:
        return "no host"
    if not url.isprintable():
        return "a control character or line break in it"
    return None


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
