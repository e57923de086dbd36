"""Running a command's main coroutine on a fresh event loop, with a bounded close.

`asyncio.Runner` (and `asyncio.run`) close by cancelling the tasks left and waiting for them
with no limit: one task that ignores its cancellation keeps the process alive forever, past any
stop timeout a supervisor gives. `run_to_end` waits for them until the stop's deadline, then logs
each by name and leaves it. Shared by the daemon, the demo and the margin service.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

__all__ = ["run_to_end"]

#: The least the tasks left are waited for, when no stop deadline was set.
MIN_WAIT_S = 0.1
#: What closing the async generators and the default executor may take, each.
CLOSE_S = 0.5


def run_to_end(
    main: Coroutine[Any, Any, None],
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None,
    deadline: Callable[[], float | None] = lambda: None,
    log: Callable[[], Any] = lambda: structlog.get_logger("oracled"),
) -> None:
    """Run `main` on a fresh event loop, then close the loop by `deadline()` (the loop's time the
    stop must end by; None: `MIN_WAIT_S` from then), logging the tasks left behind with `log()`."""
    loop = loop_factory() if loop_factory is not None else asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(main)
    finally:
        try:
            loop.run_until_complete(_abandon_stragglers(deadline(), log()))
            for closing in (loop.shutdown_asyncgens(), loop.shutdown_default_executor()):
                loop.run_until_complete(_within(closing, CLOSE_S))
        finally:
            asyncio.set_event_loop(None)
            loop.close()


async def _within(closing: Coroutine[Any, Any, None], timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await closing


async def _abandon_stragglers(deadline: float | None, log: Any) -> None:
    """Cancel the tasks `main` left (a request handler, a task that outlived its cancel) and
    wait for them until `deadline` (`MIN_WAIT_S` at least); log and leave the others."""
    loop = asyncio.get_running_loop()
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    timeout = max(MIN_WAIT_S, (deadline or loop.time()) - loop.time())
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in tasks:
        if task in pending:
            log.warning("task ignored its cancellation; abandoned", task=task.get_name())
        elif not task.cancelled() and task.exception() is not None:
            log.error("task failed at the stop", task=task.get_name(), exc_info=task.exception())
