"""The exception tree of oracled.

    OracledError
    ├── ConfigError        an invalid config file; carries every problem with its key path
    ├── TapeError          an unreadable quote tape (bad header; bad lines are skipped instead)
    ├── ServiceStopping    a reload asked for once the daemon is stopping: refused, nothing changes
    └── SourceError        a feed misbehaved at the protocol level (bad ack, error frame)
        └── SubscribeError the venue refused a subscription

Low-level errors (OSError, aiohttp, msgspec) are translated at the boundary that saw them;
`described` and `shown` put an error and a value given from outside into an operator's words.
"""

from __future__ import annotations

import os

__all__ = [
    "SHOWN_CHARS",
    "ConfigError",
    "OracledError",
    "ServiceStopping",
    "SourceError",
    "SubscribeError",
    "TapeError",
    "described",
    "shown",
]

#: The most characters of a value a message quotes.
SHOWN_CHARS = 60


class OracledError(Exception):
    """Base of every error oracled raises on purpose."""


class ConfigError(OracledError):
    """A config that cannot run: `problems` lists each one as `key.path: message`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid config:\n" + "\n".join(f"  {p}" for p in problems))


class TapeError(OracledError):
    """A quote tape that cannot be replayed at all."""


class ServiceStopping(OracledError):
    """The daemon is stopping: a reload now would start sources that outlive it."""


class SourceError(OracledError):
    """A feed broke its protocol; the source supervisor reconnects."""


class SubscribeError(SourceError):
    """The venue refused a subscription (unknown or delisted symbol)."""


def shown(value: object) -> str:
    """A value from outside (a config's, a command line's, a node's answer) as a message quotes
    it: its repr, so that a control character or a stray quote cannot pass for the message's own
    text, cut after SHOWN_CHARS characters. A value pasted whole (a file's contents, a key's) made
    a problem line as long as itself. A value that is no string (a JSON null, number, list or
    object) is its repr cut the same way, the length said being the repr's."""
    if not isinstance(value, str):
        text = repr(value)
        if len(text) <= SHOWN_CHARS:
            return text
        return f"{text[:SHOWN_CHARS]}... ({len(text)} characters)"
    if len(value) <= SHOWN_CHARS:
        return repr(value)
    return f"{value[:SHOWN_CHARS]!r}... ({len(value)} characters)"


def described(exc: BaseException) -> str:
    """An exception in an operator's words: an OSError as the file it names and the system's
    reason (`x.tape: No such file or directory`, where Python prints `[Errno 2] No such file or
    directory: 'x.tape'`); one of ours, or an OSError with a message of its own, as that
    message; any other as its type and message (`DatabaseError: file is not a database`, where
    its repr reads `DatabaseError('file is not a database')`)."""
    if isinstance(exc, OSError) and exc.strerror and str(exc).startswith(f"[Errno {exc.errno}]"):
        names = [_file_name(n) for n in (exc.filename, exc.filename2) if n is not None]
        return ": ".join([" -> ".join(names), exc.strerror] if names else [exc.strerror])
    if isinstance(exc, (OracledError, OSError)):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}".removesuffix(": ")


def _file_name(name: object) -> str:
    """An OSError's file as its path reads (a str, bytes, or a descriptor's number)."""
    return os.fsdecode(name) if isinstance(name, (str, bytes)) else str(name)
