"""A loopback port for a server the test starts later (a daemon, nats-server, Prometheus), held
back from every other program meanwhile.

A port found by binding to port 0 and closing again is free only at that instant: until the
server binds it, any program on the machine that binds to port 0 may be handed the same port,
and the suite runs on several workers at once, each starting servers. So the port is left in
TIME_WAIT: a connection to it is accepted and the accepting side closes first. For the 60 s
that lasts, the kernel hands the port to no bind to port 0 and to no outgoing connection, while
a server that binds it by number with SO_REUSEADDR (asyncio and aiohttp servers, Go's listeners:
nats-server, Prometheus) still can.
"""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port() -> int:
    """A free 127.0.0.1 port, kept from port-0 binds elsewhere for about a minute."""
    with socket.socket() as listener:
        # The connection's TIME_WAIT inherits this flag: without it, SO_REUSEADDR binds fail too.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        address = listener.getsockname()
        with socket.create_connection(address):
            accepted, _ = listener.accept()
            accepted.close()  # the server side closes first: its end, on this port, waits
        return int(address[1])
