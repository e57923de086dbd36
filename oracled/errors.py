"""The exception tree of oracled.

    OracledError
    ├── ConfigError        an invalid config file; carries every problem with its key path
    ├── TapeError          an unreadable quote tape (bad header; bad lines are skipped instead)
    ├── ServiceStopping    a reload asked for once the daemon is stopping: refused, nothing changes
    └── SourceError        a feed misbehaved at the protocol level (bad ack, error frame)
        └── SubscribeError the venue refused a subscription

Low-level errors (OSError, aiohttp, msgspec) are translated at the boundary that saw them.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "OracledError",
    "ServiceStopping",
    "SourceError",
    "SubscribeError",
    "TapeError",
]


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
