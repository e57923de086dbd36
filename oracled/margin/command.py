"""`oracled margin --accounts FILE --url ws://HOST:PORT/v1/stream`: the service mode's entry."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from oracled.errors import ConfigError, shown
from oracled.runloop import run_to_end
from oracled.urls import host_port_problem, shown_url

if TYPE_CHECKING:  # the service loads only when the command runs
    from oracled.margin.service import MarginService

__all__ = ["add_parser", "cmd_margin"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    margin = sub.add_parser(
        "margin", help="run the margin engine on a daemon's WebSocket stream; decisions as JSON"
    )
    margin.add_argument("--accounts", type=Path, required=True, help="accounts file (TOML/JSON)")
    margin.add_argument(
        "--url",
        required=True,
        action="append",
        help=(
            "ws://HOST:PORT/v1/stream; signed mode ([signed] in the accounts) may give several, "
            "one per daemon"
        ),
    )
    margin.add_argument("--step-ms", type=int, default=1000, help="decision tick (default 1000)")
    margin.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        default="auto",
        help="log lines on stderr (default: auto, console on a terminal, else JSON)",
    )


async def _serve(service: MarginService, early_stop: Callable[[], signal.Signals | None]) -> None:
    """Run until SIGTERM or SIGINT, or not at all if one came while the command started
    (`early_stop`, the command line's latch): either way logged, and the exit is 0."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    log = structlog.get_logger(component="margin")

    def on_signal(sig: signal.Signals) -> None:
        log.info("signal received", signal=sig.name)
        task.cancel()

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        with contextlib.suppress(NotImplementedError):  # not on every platform
            loop.add_signal_handler(sig, on_signal, sig)
    try:
        early = early_stop()
        if early is not None:  # asked to stop while the command was starting: start nothing
            log.info("signal received", signal=early.name)
        else:
            with contextlib.suppress(asyncio.CancelledError):
                await service.run()
    finally:
        # The handlers they had (the command line's latch): the loop's removal would leave the
        # defaults, and a SIGTERM while the process exits would end it with 143.
        for sig, handler in previous.items():
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(sig)
            if handler is not None:
                signal.signal(sig, handler)
        log.info("stopped")


def _url_problem(urls: list[str], quorum: int | None) -> str | None:
    """What is wrong with the --url list for the mode (`quorum`: None unsigned), if anything."""
    if not all(url.startswith(("ws://", "wss://")) for url in urls):
        return "--url must be ws:// or wss://"
    # Else retried for ever, each failure logged as the URL alone. Named without its user part,
    # as everywhere the margin service names a URL: it may be a proxy's user and password.
    for url in urls:
        if (problem := host_port_problem(url)) is not None:
            return f"--url {shown(shown_url(url))}: {problem}"
    # Compared as typed (the command normalises no URL: each is connected to as given). Merged
    # silently, a repeat left signed mode counting one --url fewer than the user typed.
    repeated = next((url for i, url in enumerate(urls) if url in urls[:i]), None)
    if repeated is not None:
        times = urls.count(repeated)
        said = "twice" if times == 2 else f"{times} times"
        return f"--url {shown_url(repeated)} given {said}: give each daemon once"
    if quorum is None and len(urls) > 1:
        return (
            "several --url need signed mode ([signed] in the accounts file): unsigned "
            "reports of several daemons cannot be told apart"
        )
    if quorum is not None and len(urls) < quorum:
        return (
            f"[signed] quorum = {quorum} needs a daemon (--url) per identity: "
            f"{len(urls)} given, each daemon's stream carries its own signatures only"
        )
    return None


def cmd_margin(
    args: argparse.Namespace,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None,
    early_stop: Callable[[], signal.Signals | None] = lambda: None,
) -> int:
    """Run the margin service; `early_stop` gives the SIGTERM or SIGINT the command line caught
    before the event loop took the signals, if any (it then stops before connecting)."""
    from oracled.logs import setup_logging
    from oracled.margin.config import load_accounts
    from oracled.margin.engine import MarginEngine
    from oracled.margin.service import MarginService
    from oracled.margin.signed import SignedMarginService

    try:
        spec = load_accounts(args.accounts)
    except ConfigError as exc:
        print(f"{args.accounts}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    urls: list[str] = args.url
    url_problem = _url_problem(urls, spec.signed.quorum if spec.signed is not None else None)
    if url_problem is not None or args.step_ms <= 0:
        print(f"oracled margin: {url_problem or '--step-ms must be > 0'}", file=sys.stderr)
        return 2
    setup_logging("info", args.log_format)
    engine = MarginEngine(spec)
    service: MarginService
    if spec.signed is None:
        service = MarginService(engine, urls[0], sys.stdout.buffer, step_ms=args.step_ms)
    else:
        service = SignedMarginService(
            engine, urls, sys.stdout.buffer, spec.signed, step_ms=args.step_ms
        )
    # Not asyncio.Runner: its close waits with no limit for a task that ignores its cancel.
    run_to_end(_serve(service, early_stop), loop_factory)
    return 0
