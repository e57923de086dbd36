"""Fixtures every test folder may ask for by name, and the check that no test leaves a child
process running (`children.py`)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Generator, Iterable, Iterator
from typing import Any

import pytest
from children import Child, ChildWatch, become_subreaper, end_children, still_running
from venue_sims import BinanceVenues

from oracled.service import RECURSION_LIMIT


@pytest.fixture
def daemon_recursion_limit() -> Iterator[None]:
    """The running daemon's recursion limit, put back afterwards. oracled.service lowers the
    100,000 that py_ecc sets at import, under which an untyped JSON decode of a deeply nested
    answer overflows the C stack instead of raising RecursionError; a test sending such answers
    must run at the daemon's limit, not at the one its imports left behind."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(RECURSION_LIMIT)
    try:
        yield
    finally:
        sys.setrecursionlimit(before)


@pytest.fixture
async def binance_venues() -> AsyncIterator[BinanceVenues]:
    """Simulated Binance venues started on demand, every one stopped after the test."""
    venues = BinanceVenues()
    yield venues
    await venues.stop()


# A child process a test started is stopped by the time the test's teardown is over. Those that
# fixtures wider than a test start (anvil, a shared nats-server) outlive tests by design, and
# are stopped by the time the session is over. A child still running then is ended here and
# fails the test (or the session) that left it, so that a rig which stops its processes only on
# success cannot come back unseen: under load such leftovers kept later tests short of CPU.
LEAVE_S = 5.0  # a child signalled a moment ago, not yet gone, is given this to leave


def pytest_configure(config: pytest.Config) -> None:
    # A plugin, not hooks of this file: a conftest's hooks are not called for nodes above its
    # folder, and a session-scoped fixture's setup is the session node's.
    config.pluginmanager.register(ChildrenLeftCheck(), "children-left-check")


class ChildrenLeftCheck:
    """The hooks of the check; it sees a child's orphans too (a shell's, once it was killed)."""

    def __init__(self) -> None:
        become_subreaper()
        self.watch = ChildWatch()
        self.lasting: set[int] = set()  # children that fixtures wider than one test started
        self.left: list[str] = []  # "<test>: <child>" for each child ended here

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef: pytest.FixtureDef[Any]) -> Generator[None, Any, Any]:
        """Children that a fixture of class, module or session scope starts are its own."""
        if fixturedef.scope == "function":
            return (yield)
        before = self.watch.current()
        try:
            return (yield)
        finally:
            self.lasting.update(self.watch.current() - before)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        item.stash[_BEFORE] = self.watch.current()
        return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        """After the test's teardown: a child the test started and left running is ended, and
        fails the teardown (unless that failed already: the child is listed at the end)."""
        failed = True
        try:
            yield
            failed = False
        finally:
            now = self.watch.current()
            self.lasting.intersection_update(now)
            known = item.stash.get(_BEFORE, frozenset()) | self.lasting
            left = still_running(known, LEAVE_S) if now - known else {}
            if left:
                end_children(set(left))
                self.left.extend(f"{item.nodeid}: {c}" for c in left.values())
                if not failed:
                    pytest.fail(_left_message(f"{item.nodeid} left", left.values()), False)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """After every fixture's teardown (the runner's sessionfinish): nothing left at all."""
        if session.config.pluginmanager.hasplugin("dsession"):
            return  # pytest-xdist's controller: its children are the workers, checked there
        left = still_running(set(), LEAVE_S)
        if left:
            end_children(set(left))
            self.left.extend(f"session end: {c}" for c in left.values())
        if self.left:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.left:
            terminalreporter.section("child processes left running, ended by tests/conftest.py")
            for line in self.left:
                terminalreporter.write_line(line)


_BEFORE = pytest.StashKey[frozenset[int]]()


def _left_message(what: str, left: Iterable[Child]) -> str:
    lines = [str(c) for c in left]
    return "\n".join([f"{what} {len(lines)} child process(es) running:", *lines])
