"""oracled.runloop: a command's loop closes within its stop budget, whatever its tasks do."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

from structlog.testing import capture_logs

from oracled.runloop import MIN_WAIT_S, run_to_end


async def _leaves_a_deaf_task() -> None:
    async def deaf() -> None:
        while True:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    asyncio.get_running_loop().create_task(deaf(), name="deaf")
    await asyncio.sleep(0)


def test_a_task_left_that_ignores_its_cancellation_is_logged_and_left_behind() -> None:
    """A main coroutine that returns leaving a task that swallows every cancel (as `oracled
    margin`'s could, under asyncio.Runner, whose close waits for it forever): run_to_end
    returns after MIN_WAIT_S with no stop deadline, and logs the task by name."""
    with capture_logs() as logs:
        runner = threading.Thread(
            target=run_to_end, args=(_leaves_a_deaf_task(), None), daemon=True
        )
        started = time.monotonic()
        runner.start()
        runner.join(MIN_WAIT_S + 5.0)  # the bound only turns a hang into a failure
        assert not runner.is_alive(), "the close waited on the deaf task"
    assert time.monotonic() - started >= MIN_WAIT_S
    abandoned = [e for e in logs if e["event"] == "task ignored its cancellation; abandoned"]
    assert [(e["log_level"], e["task"]) for e in abandoned] == [("warning", "deaf")]


def test_a_task_left_that_failed_is_logged_with_its_error() -> None:
    """A task that raises when cancelled is reported as failed at the stop, not lost."""

    async def main() -> None:
        async def fails() -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                raise RuntimeError("broke while stopping") from None

        asyncio.get_running_loop().create_task(fails(), name="fails")
        await asyncio.sleep(0)

    with capture_logs() as logs:
        run_to_end(main(), None)
    failed = [e for e in logs if e["event"] == "task failed at the stop"]
    assert [e["task"] for e in failed] == ["fails"]
    assert "broke while stopping" in str(failed[0]["exc_info"])
