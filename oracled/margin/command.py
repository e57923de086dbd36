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

from oracled.errors import ConfigError

if TYPE_CHECKING:  # the service loads only when the command runs
    from oracled.margin.service import MarginService

__all__ = ["add_parser", "cmd_margin"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    margin = sub.add_parser(
        "margin", help="run the margin engine on a daemon's WebSocket stream; decisions as JSON"
    )
    margin.add_argument("--accounts", type=Path, required=True, help="accounts file (TOML/JSON)")
    margin.add_argument("--url", required=True, help="ws://HOST:PORT/v1/stream")
    margin.add_argument("--step-ms", type=int, default=1000, help="decision tick (default 1000)")
    margin.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")


async def _serve(service: MarginService) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # not on every platform
            loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await service.run()


def cmd_margin(
    args: argparse.Namespace, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None
) -> int:
    from oracled.logs import setup_logging
    from oracled.margin.config import load_accounts
    from oracled.margin.engine import MarginEngine
    from oracled.margin.service import MarginService

    try:
        spec = load_accounts(args.accounts)
    except ConfigError as exc:
        print(f"{args.accounts}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    if not args.url.startswith(("ws://", "wss://")) or args.step_ms <= 0:
        print("oracled margin: --url must be ws:// or wss://, --step-ms > 0", file=sys.stderr)
        return 2
    setup_logging("info", args.log_format)
    service = MarginService(MarginEngine(spec), args.url, sys.stdout.buffer, step_ms=args.step_ms)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(service))
    return 0
