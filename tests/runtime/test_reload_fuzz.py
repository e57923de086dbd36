"""Hot reloads under load, fuzzed: a random sequence of reloads (POST /v1/admin/reload or SIGHUP)
on a daemon serving two stream subscribers (one of every market, one of a named market), each
checked through the public outputs alone (the admin answer, /v1/prices, the streams, /metrics,
/v1/info), as docs/config.md (*Reloading without a restart*) and docs/contracts.md promise.

The single reloads are tested one kind at a time in tests/config/test_reload.py and beside
this file; here they follow one another on the same daemon, in any order, or are asked for
two at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from one_venue import reading, serving_api

from oracled.config import load_config
from oracled.service import Service
from oracled.sim import BinanceSim

TOKEN_ENV = "ORACLED_RELOAD_FUZZ_TOKEN"
TOKEN = "reload-fuzz-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SOURCES = ("s0", "s1", "s2")
MARKETS = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT")
NAMED = "ETH/USDT"  # the market the second subscriber names
PRICES = {"BTCUSDT": 50_000.0, "ETHUSDT": 3_000.0, "SOLUSDT": 150.0, "XRPUSDT": 2.5}
#: Mistakes a reloaded file may hold, each refused whole (`Shape.toml` writes them in).
MISTAKES = ("quorum above the sources", "unknown key", "not TOML")


@dataclass
class Shape:
    """What the file says: its sources, and each market's quorum and deviation limit (every
    market lists every source)."""

    sources: list[str] = field(default_factory=lambda: ["s0", "s1"])
    markets: dict[str, tuple[int, float]] = field(
        default_factory=lambda: {"BTC/USDT": (2, 0.02), NAMED: (1, 0.02)}
    )

    def toml(
        self, urls: dict[str, tuple[str, str]], mistake: str | None = None, interval_ms: int = 50
    ) -> str:
        oracle = f"resume_rounds = 1\nround_interval_ms = {interval_ms}"
        if mistake == "unknown key":
            oracle += "\nresume_round = 1"
        out = [
            f"[oracle]\n{oracle}\n\n[api]\n"
            f'listen = "127.0.0.1:0"\nadmin_token_env = "{TOKEN_ENV}"\n'
        ]
        for sid in self.sources:
            ws, rest = urls[sid]
            out.append(f'[sources.{sid}]\ntype = "binance"\nws_url = "{ws}"\nrest_url = "{rest}"\n')
        for i, (symbol, (quorum, deviation)) in enumerate(self.markets.items()):
            if mistake == "quorum above the sources" and i == 0:
                quorum = len(self.sources) + 1
            entries = ", ".join(f'{{ source = "{s}", pair = "{symbol}" }}' for s in self.sources)
            out.append(
                f'[[markets]]\nsymbol = "{symbol}"\nmin_sources = {quorum}\n'
                f"max_deviation = {deviation}\nsources = [{entries}]\n"
            )
        text = "\n".join(out)
        return text.replace("[oracle]", "[oracle", 1) if mistake == "not TOML" else text


@dataclass(frozen=True)
class Step:
    kind: str  # add_market, remove_market, change_market, add_source, remove_source, mistake
    name: str  # the market, the source or the mistake
    hup: bool  # asked by SIGHUP, not by the admin endpoint
    quorum: int = 1
    deviation: float = 0.02


_HUP = st.booleans()
_STEPS = st.one_of(
    st.builds(Step, st.just("add_market"), st.sampled_from(MARKETS), _HUP),
    st.builds(Step, st.just("remove_market"), st.sampled_from([*MARKETS, NAMED, NAMED]), _HUP),
    st.builds(
        Step,
        st.just("change_market"),
        st.sampled_from(MARKETS),
        _HUP,
        st.integers(1, len(SOURCES)),
        st.sampled_from([0.01, 0.02, 0.05]),
    ),
    st.builds(Step, st.just("add_source"), st.sampled_from(SOURCES), _HUP),
    st.builds(Step, st.just("remove_source"), st.sampled_from(SOURCES), _HUP),
    st.builds(Step, st.just("mistake"), st.sampled_from(MISTAKES), _HUP),
)
APPLIED = 'oracled_config_reloads_total{result="applied"}'
REFUSED = 'oracled_config_reloads_total{result="refused"}'


def _applied(shape: Shape, step: Step) -> Shape | None:
    """The shape after `step`, or None where it would change nothing or leave no market or
    no source (a mistake keeps the shape)."""
    sources, markets = list(shape.sources), dict(shape.markets)
    if step.kind == "add_market" and step.name not in markets:
        markets[step.name] = (1, 0.02)
    elif step.kind == "remove_market" and step.name in markets and len(markets) > 1:
        del markets[step.name]
    elif step.kind == "change_market" and step.name in markets:
        markets[step.name] = (min(step.quorum, len(sources)), step.deviation)
    elif step.kind == "add_source" and step.name not in sources:
        sources = sorted([*sources, step.name])
    elif step.kind == "remove_source" and step.name in sources and len(sources) > 1:
        sources.remove(step.name)
        markets = {m: (min(q, len(sources)), d) for m, (q, d) in markets.items()}
    elif step.kind == "mistake":
        return shape
    else:
        return None
    new = Shape(sources, markets)
    return None if new == shape else new


def _metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, flags=re.M)
    return float(found.group(1)) if found else 0.0


class Daemon:
    """The served daemon of one example, its HTTP session and its file."""

    def __init__(self, http: aiohttp.ClientSession, base: str, path: Path) -> None:
        self.http, self.base, self.path = http, base, path

    async def get(self, route: str) -> Any:
        async with self.http.get(self.base + route) as resp:
            assert resp.status == 200, (route, resp.status)
            return await resp.json()

    async def metrics(self) -> str:
        async with self.http.get(self.base + "/metrics") as resp:
            assert resp.status == 200
            return await resp.text()

    async def counts(self) -> tuple[float, float]:
        """The reloads /metrics counts: (applied, refused)."""
        metrics = await self.metrics()
        return _metric(metrics, APPLIED), _metric(metrics, REFUSED)

    async def reload(self, text: str, hup: bool = False) -> tuple[int, dict[str, Any]]:
        """`text` written and reloaded: the admin endpoint's answer; for a SIGHUP, once /metrics
        counts it, 200 or 422 by the counter that rose, and no body."""
        self.path.write_text(text)
        if not hup:
            async with self.http.post(self.base + "/v1/admin/reload", headers=AUTH) as resp:
                return resp.status, await resp.json()
        applied, refused = await self.counts()
        os.kill(os.getpid(), signal.SIGHUP)
        async with asyncio.timeout(10):
            while True:
                now = await self.counts()
                if now != (applied, refused):
                    return (200 if now[0] > applied else 422), {}
                await asyncio.sleep(0.02)

    async def first_round(self) -> None:
        """Until /v1/info names a round (the price endpoints answer 503 before it)."""
        async with asyncio.timeout(10):
            while (await self.get("/v1/info"))["round"] is None:  # noqa: ASYNC110 - polled
                await asyncio.sleep(0.02)

    async def round_after(self, rounds: int) -> int:
        """Until /v1/info names a round `rounds` past the one it names now: its number."""
        start = (await self.get("/v1/info"))["round"] or 0
        async with asyncio.timeout(10):
            while True:
                now = (await self.get("/v1/info"))["round"] or 0
                if now >= start + rounds:
                    return int(now)
                await asyncio.sleep(0.02)

    async def all_live(self, shape: Shape) -> None:
        """Until /v1/prices lists the shape's markets, in its order, each with a price (`active`,
        or `degraded` as `thin` where exactly its quorum of sources counts)."""
        async with asyncio.timeout(10):
            while True:
                prices = await self.get("/v1/prices")
                if [p["market"] for p in prices] == list(shape.markets) and all(
                    p["price"] is not None for p in prices
                ):
                    return
                await asyncio.sleep(0.02)


def _sockets() -> int:
    """The sockets this process holds (the daemon's, its simulators' and the test's: the same
    set with the same file), as benchmarks/soak.py counts a daemon's."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own, closed by now
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


def _reports(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f["data"] for f in frames if f.get("type") == "report"]


def _removals(frames: list[dict[str, Any]]) -> list[list[str]]:
    return [f["markets"] for f in frames if f.get("code") == "market_removed"]


def _fresh_when_live(report: dict[str, Any], quorum: int, since_ms: int) -> None:
    """A report of a market added at `since_ms` that carries a price: at least its quorum of
    sources used, each with a quote received after the reload was asked for."""
    if report["status"] not in ("active", "degraded"):
        return
    used = [s for s in report["sources"] if s["used"]]
    assert len(used) >= quorum, report
    for s in used:
        assert report["ts"] - s["age_ms"] >= since_ms - 1, (report, since_ms)


@settings(
    max_examples=12,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(_STEPS, min_size=3, max_size=7))
async def test_any_sequence_of_reloads_keeps_the_daemon_and_its_streams_true(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, steps: list[Step]
) -> None:
    """After each reload of a random sequence (a market added, removed, its quorum or deviation
    limit changed, a source added or removed, a file with a mistake): the daemon answers and
    its rounds go on; the admin answer names the markets added and removed; /v1/prices lists
    the file's markets; a removed market's subscribers got `market_removed` naming it and no
    report of it after (the named market's subscriber never gets another market); an added
    market carries a price only once its quorum holds quotes received after the reload; a
    source added counts only quotes received after it; a refused file is a 422
    `invalid_config`, counted, and changes nothing. Some reloads are asked by SIGHUP, told apart
    by /metrics' counters. Every market is priced again after each applied reload, and once the
    first file is back the daemon runs no more tasks, and the process holds no more sockets,
    than with it at the start."""
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    sims = {sid: BinanceSim(PRICES, rate_hz=20.0, volatility=0.0) for sid in SOURCES}
    for sim in sims.values():
        await sim.start()
    try:
        urls = {sid: (sim.ws_url, sim.rest_url) for sid, sim in sims.items()}
        shape = Shape()
        path = tmp_path / f"oracled-{time.monotonic_ns()}.toml"
        path.write_text(shape.toml(urls))
        service = Service(load_config(path), config_path=path)
        async with (
            serving_api(service, safety_s=50) as (http, base),
            reading(http, base, {"op": "subscribe"}) as every,
            reading(http, base, {"op": "subscribe", "markets": [NAMED]}) as named,
        ):
            daemon = Daemon(http, base, path)
            await daemon.first_round()
            await daemon.all_live(shape)
            await daemon.round_after(2)
            tasks = _metric(await daemon.metrics(), "oracled_asyncio_tasks")
            sockets = _sockets()
            named_on = True
            for step in steps:
                new = _applied(shape, step)
                if new is None:
                    continue
                mistake = step.name if step.kind == "mistake" else None
                counts = await daemon.counts()
                seen_every, seen_named = len(every), len(named)
                since_ms = time.time_ns() // 1_000_000
                status, answer = await daemon.reload(new.toml(urls, mistake), step.hup)
                await daemon.round_after(2)
                after_every, after_named = every[seen_every:], named[seen_named:]
                prices = [p["market"] for p in await daemon.get("/v1/prices")]
                info = await daemon.get("/v1/info")
                where = (step, status, answer)
                if mistake is not None:
                    assert status == 422, where
                    if not step.hup:
                        assert answer["error"]["code"] == "invalid_config", where
                    assert await daemon.counts() == (counts[0], counts[1] + 1), where
                    assert prices == list(shape.markets) and info["markets"] == len(prices)
                    assert not _removals(after_every) and not _removals(after_named), where
                    continue
                assert status == 200, where
                assert await daemon.counts() == (counts[0] + 1, counts[1]), where
                added = [m for m in new.markets if m not in shape.markets]
                removed = [m for m in shape.markets if m not in new.markets]
                if not step.hup:
                    assert (answer["markets_added"], answer["markets_removed"]) == (added, removed)
                assert prices == list(new.markets) and info["markets"] == len(prices), where
                assert _removals(after_every) == ([removed] if removed else []), where
                if NAMED in removed and named_on:
                    assert _removals(after_named) == [[NAMED]], where
                    named_on = False
                else:
                    assert not _removals(after_named), where
                for frames in (after_every, after_named):
                    told = next(
                        (i for i, f in enumerate(frames) if f.get("code") == "market_removed"),
                        len(frames),
                    )
                    late = [r for r in _reports(frames[told:]) if r["market"] in removed]
                    assert not late, (where, late[:1])
                old, shape = shape, new
                await daemon.all_live(shape)
                await daemon.round_after(1)
                got = {r["market"] for r in _reports(every[seen_every:])}
                assert set(added) <= got, (where, got)  # "every market" takes the new ones
                joined = set(new.sources) - set(old.sources)
                for report in _reports(every[seen_every:]):
                    if report["market"] in added:
                        _fresh_when_live(report, shape.markets[report["market"]][0], since_ms)
                    for entry in report["sources"]:
                        if entry["id"] in joined and entry["used"]:  # counts fresh quotes only
                            assert report["ts"] - entry["age_ms"] >= since_ms - 1, (where, report)
            assert {r["market"] for r in _reports(named)} == {NAMED}  # never another market
            first = Shape()
            status, answer = await daemon.reload(first.toml(urls))
            assert status == 200, answer
            await daemon.all_live(first)
            await daemon.round_after(2)
            end = _metric(await daemon.metrics(), "oracled_asyncio_tasks")
            assert end <= tasks + 2, (tasks, end)
            assert _sockets() <= sockets + 4, (sockets, _sockets())
    finally:
        for sim in sims.values():
            await sim.stop()


async def test_a_market_removed_and_added_back_between_two_rounds_is_told_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two reloads between two rounds (rounds a second apart): the first removes the named
    market, the second adds it back, a new market (`unknown`, no last good price). Both
    subscribers were receiving the old one and get `market_removed` naming it before the first
    round after the reloads (docs/contracts.md); the named market's subscriber gets no report
    of the new one. The streams compared the markets of one round with the last round's, so a
    market gone and back between two rounds was never told and the old subscription went on
    with the new market."""
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    async with BinanceSim(PRICES, rate_hz=20.0, volatility=0.0) as sim:
        urls = {"s0": (sim.ws_url, sim.rest_url)}
        with_it = Shape(["s0"], {"BTC/USDT": (1, 0.02), NAMED: (1, 0.02)})
        without = Shape(["s0"], {"BTC/USDT": (1, 0.02)})
        path = tmp_path / "oracled.toml"
        path.write_text(with_it.toml(urls, interval_ms=1_000))
        service = Service(load_config(path), config_path=path)
        async with (
            serving_api(service, safety_s=30) as (http, base),
            reading(http, base, {"op": "subscribe"}) as every,
            reading(http, base, {"op": "subscribe", "markets": [NAMED]}) as named,
        ):
            daemon = Daemon(http, base, path)
            await daemon.first_round()
            await daemon.all_live(with_it)
            seen_every, seen_named = len(every), len(named)
            for shape in (without, with_it):
                status, answer = await daemon.reload(shape.toml(urls, interval_ms=1_000))
                assert status == 200, answer
            await daemon.round_after(2)
            assert _removals(every[seen_every:]) == [[NAMED]]
            assert _removals(named[seen_named:]) == [[NAMED]]
            assert [r["market"] for r in _reports(named[seen_named:])] == []


def _used(frames: list[dict[str, Any]]) -> set[str]:
    """The sources the reports among `frames` used."""
    return {s["id"] for r in _reports(frames) for s in r["sources"] if s["used"]}


def _told(old: Shape, new: Shape) -> tuple[list[str], list[str]]:
    """The markets a reload from `old` to `new` answers added and removed."""
    return [m for m in new.markets if m not in old.markets], [
        m for m in old.markets if m not in new.markets
    ]


async def test_two_reloads_at_once_run_one_after_the_other_and_end_in_the_last_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two reloads asked together, the file rewritten between them: a POST and a SIGHUP, or two
    POSTs, the second asked at once or once the first, past reading its file, stops the
    sources (then each reads another file). Reloads run one at a time and each reads the file
    once, so: the first's answer is the change to the file it read, the second's the change
    from that file to the last; both are counted; and the daemon ends in the last file whole,
    as /v1/prices, /v1/info, /v1/markets (each market's thresholds and sources), the stream,
    the sources running (`oracled_source_info`, each of the file's used in a round) and the
    task count say. Run at once, both reloads would compare their file with the config they
    started from: a source started twice, or another's left stopped."""
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    sims = {sid: BinanceSim(PRICES, rate_hz=20.0, volatility=0.0) for sid in SOURCES}
    for sim in sims.values():
        await sim.start()
    try:
        urls = {sid: (sim.ws_url, sim.rest_url) for sid, sim in sims.items()}
        first = Shape()
        one = Shape(["s0"], {"BTC/USDT": (1, 0.05), "SOL/USDT": (1, 0.02)})
        other = Shape(["s1", "s2"], {NAMED: (2, 0.01), "XRP/USDT": (1, 0.05)})
        path = tmp_path / "oracled.toml"
        path.write_text(first.toml(urls))
        service = Service(load_config(path), config_path=path)
        async with (
            serving_api(service, safety_s=14) as (http, base),
            reading(http, base, {"op": "subscribe"}) as every,
        ):
            daemon = Daemon(http, base, path)
            await daemon.first_round()
            await daemon.all_live(first)
            await daemon.round_after(1)
            tasks = _metric(await daemon.metrics(), "oracled_asyncio_tasks")

            async def post() -> dict[str, Any]:
                async with http.post(base + "/v1/admin/reload", headers=AUTH) as resp:
                    assert resp.status == 200, await resp.text()
                    return dict(await resp.json())

            async def second(last: Shape, hup: bool, stopping: str | None) -> dict[str, Any]:
                """`last` written and reloaded: at once, or once the venue `stopping` lost the
                daemon's connection (the first reload read its file and stops the sources)."""
                if stopping is not None:
                    async with asyncio.timeout(5):
                        while sims[stopping].stats.active:  # noqa: ASYNC110 - polled
                            await asyncio.sleep(0)  # each turn of the loop: the stop is short
                path.write_text(last.toml(urls))
                if not hup:
                    return await post()
                os.kill(os.getpid(), signal.SIGHUP)
                return {}

            shape = first
            for last, hup, wait in (
                (other, True, False),
                (first, False, False),
                (other, True, True),
                (first, False, True),
            ):
                counts = await daemon.counts()
                path.write_text(one.toml(urls))
                gone = min(set(shape.sources) - set(one.sources))  # stopped, not restarted
                answers = await asyncio.gather(post(), second(last, hup, gone if wait else None))
                async with asyncio.timeout(5):  # the SIGHUP's reload is told by /metrics alone
                    while sum(await daemon.counts()) < sum(counts) + 2:  # noqa: ASYNC110 - polled
                        await asyncio.sleep(0.02)
                where = (last, hup, wait, answers)
                assert await daemon.counts() == (counts[0] + 2, counts[1]), where
                told = [(a["markets_added"], a["markets_removed"]) for a in answers if a]
                # Whichever took its turn first read `one` (or, not waited for, maybe `last`):
                # the other's answer is the change from that file to `last`.
                turns = [
                    [_told(shape, r), _told(r, last)] for r in ((one,) if wait else (one, last))
                ]
                if hup:  # the SIGHUP has no answer; first, it leaves the POST nothing to change
                    allowed = [t[:1] for t in turns] + ([] if wait else [[_told(last, last)]])
                else:  # not waited for, the second POST may be let in first
                    allowed = turns + ([] if wait else [t[::-1] for t in turns])
                assert told in allowed, where
                shape = last
                await daemon.all_live(last)
                seen = len(every)
                await daemon.round_after(2)
                prices = await daemon.get("/v1/prices")
                assert [p["market"] for p in prices] == list(last.markets), where
                assert (await daemon.get("/v1/info"))["markets"] == len(last.markets), where
                listed = {
                    m["symbol"]: (m["min_sources"], m["max_deviation"], m["sources"])
                    for m in (await daemon.get("/v1/markets"))["markets"]
                }
                assert {
                    m: (q, d, [s["source"] for s in sources])
                    for m, (q, d, sources) in listed.items()
                } == {m: (q, d, last.sources) for m, (q, d) in last.markets.items()}, where
                assert {r["market"] for r in _reports(every[seen:])} == set(last.markets), where
                metrics = await daemon.metrics()
                running = re.findall(r'^oracled_source_info\{source="(\w+)"', metrics, re.M)
                assert sorted(running) == last.sources, where
                async with asyncio.timeout(5):  # each source of the file quotes again
                    while _used(every[seen:]) != set(last.sources):  # noqa: ASYNC110 - polled
                        await asyncio.sleep(0.05)
                # As many sources as at the start: no more tasks (none running twice).
                now = _metric(await daemon.metrics(), "oracled_asyncio_tasks")
                assert now <= tasks + 2, (where, tasks, now)
    finally:
        for sim in sims.values():
            await sim.stop()
