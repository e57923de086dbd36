"""The NATS sink's bounded label values, in a module that imports no NATS client.

`NatsStats` counts under these and `oracled.metrics` exposes them; the metrics module reads
them from here because `publish/nats.py` loads nats-py, which the daemon does not import when
no sink is configured (`tests/test_imports.py`).
"""

from __future__ import annotations

__all__ = ["CONNECT_FAILURE_REASONS", "DENIED_SUBJECTS", "UNPUBLISHED_REASONS"]

#: Why a message was not published: no server, the sink's queue overflowed, a client error, or
#: a round the signer left unsigned (signing on: only signed rounds go out).
UNPUBLISHED_REASONS = ("disconnected", "queue_full", "error", "unsigned")
#: Why an attempt to connect failed: the server refused the credentials, TLS failed (either
#: side refused the other's certificate, or the server does not speak TLS), no server answered,
#: or one answered and ended the connection with another error (at its connection limit).
CONNECT_FAILURE_REASONS = ("credentials", "tls", "unreachable", "server_error")
#: Which of the sink's subjects the server's permissions refused it: a price, a round or a stall
#: notice, the JetStream API (creating the stream), the reply inbox of that request (a
#: subscription), or any other (a subject this list does not know yet: a bug to report).
DENIED_SUBJECTS = ("prices", "rounds", "stalled", "jetstream_api", "inbox", "other")
