"""Publishing: the in-process hub that fans each round's reports out to readers."""

from oracled.publish.hub import (
    DROP_SHUTDOWN,
    DROP_SLOW,
    MARKET_REMOVED,
    Hub,
    Subscription,
    SubscriptionClosed,
)

__all__ = [
    "DROP_SHUTDOWN",
    "DROP_SLOW",
    "MARKET_REMOVED",
    "Hub",
    "Subscription",
    "SubscriptionClosed",
]
