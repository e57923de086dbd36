"""Dashboards and alert rules against a real Prometheus scraping a real daemon.

The daemon runs as `oracled run` on the shipped config's venues (BTC/USD and its stablecoin
legs), each source on its own loopback simulator, with its Ethereum chain on a local node
(tests/ops/chain_stack.py: a Chainlink feed, a Uniswap v3 pool with TWAP history, a sequencer
feed, the on-chain pusher); a Prometheus from the distribution's package scrapes it every second
with the alert rules loaded. Then every variable query and every panel query of every dashboard
is evaluated through Prometheus's HTTP API, as Grafana would send it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import tomli_w
from catalogue import ROOT, catalogue
from chain_stack import BTC_POOL_PRICE, LocalChain, start_local_chain
from daemon import ADMIN_TOKEN, Daemon
from dashboards import label_uses, load, regex_alternation, substitute, targets, variables
from promserver import Prometheus
from scrape_proxy import ScrapeProxy

from oracled.config import Config, load_config
from oracled.sim.venues import SimulatedVenue, simulate

pytestmark = pytest.mark.integration
KEEP = {"USDT/USD", "USDC/USD", "BTC/USD"}
# What Grafana puts for its built-in intervals; the scrape here is every second.
BUILTINS = {"__rate_interval": "15s", "__interval": "5s", "__range": "1m"}


def _config(chain: LocalChain) -> Config:
    cfg = load_config(ROOT / "config" / "default.toml", env={})
    data = cfg.model_dump(by_alias=True, exclude={"admin_token"})
    data["markets"] = [m for m in data["markets"] if m["symbol"] in KEEP]
    chain.configure(data)
    for market in data["markets"]:
        market["max_age_ms"] = 1500
    used = {(s["source"], s["pair"]) for m in data["markets"] for s in m["sources"]}
    used |= {(s["source"], s["pair"]) for m in data["markets"] for s in m["perp_sources"]}
    for sid, source in data["sources"].items():
        source["instruments"] = {
            pair: name for pair, name in source["instruments"].items() if (sid, pair) in used
        }
    data["oracle"].update(round_interval_ms=100, resume_rounds=3, jump_confirm_rounds=3)
    data["api"]["admin_token_env"] = "ORACLED_TEST_ADMIN_TOKEN"
    data["audit"]["enabled"] = False  # the shipped config writes a trail in the working directory
    return Config.model_validate(data)


Stack = tuple[Daemon, list[SimulatedVenue], Prometheus, ScrapeProxy, LocalChain]


@contextlib.asynccontextmanager
async def _running_stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """The daemon, its venues, and a Prometheus scraping it through a `ScrapeProxy`."""
    # 3 s: well above the 10 Hz venues' frame gaps, so no source is cut as silent on a busy machine.
    liveness = {"liveness_timeout_s": 3.0, "rest_poll_interval_s": 0.5, "reconnect_max_s": 1.0}
    chain = await start_local_chain(tmp_path)
    venues: list[SimulatedVenue] = []
    try:
        cfg, venues = await simulate(_config(chain), rate_hz=10.0, liveness=liveness)
        text = tomli_w.dumps(
            cfg.model_dump(by_alias=True, exclude={"admin_token"}, exclude_none=True)
        )
        daemon = Daemon(text, tmp_path)
        proxy = ScrapeProxy(daemon.base)
        prom = Prometheus(tmp_path, proxy.target, [ROOT / "deploy" / "prometheus" / "alerts.yml"])
        try:
            await daemon.start()
            await proxy.start()
            await prom.start()
            yield daemon, venues, prom, proxy, chain
        finally:
            await prom.close()
            await proxy.close()
            await daemon.close()
    finally:
        for venue in venues:
            await venue.sim.stop()
        chain.node.stop()


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """A stack of the test's own, for a test that changes what the daemon reports (a pause)."""
    async with _running_stack(tmp_path) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One stack for the tests that only read what it reports (the alert test adds dropped
    quotes, which the others take as they come): a stack each spent most of their time
    starting the stack and waiting for it to go live and be scraped."""
    async with _running_stack(tmp_path_factory.mktemp("stack")) as running:
        yield running


async def _resolve(prom: Prometheus, dash_name: str, dash: dict[str, Any]) -> dict[str, str]:
    """Each variable's value as Grafana would set it: the first value, or all of a multi-value."""
    values = dict(BUILTINS)
    problems = []
    for var in variables(dash_name, dash):
        if var.kind == "datasource":
            continue
        assert var.kind == "query", f"{dash_name}: ${var.name} is a {var.kind} variable"
        selector, label = var.label_values()
        selector = substitute(selector, values)
        body = await prom.api(
            f"/api/v1/label/{label}/values", **{"match[]": selector, "start": str(time.time() - 60)}
        )
        found = sorted(body.get("data") or [])
        if body.get("status") != "success" or not found:
            problems.append(f"{dash_name}: ${var.name} = {var.query} -> {body}")
            continue
        values[var.name] = regex_alternation(found) if var.multi else found[0]
    assert problems == [], "\n".join(problems)
    return values


class StoredLabels:
    """The label names each metric's stored series carry, asked of Prometheus once a metric."""

    def __init__(self, prom: Prometheus) -> None:
        self.prom = prom
        self.known: dict[str, set[str]] = {}

    async def of(self, metric: str) -> set[str]:
        if metric not in self.known:
            body = await self.prom.api(
                "/api/v1/series", **{"match[]": metric, "start": str(time.time() - 300)}
            )
            self.known[metric] = {k for series in body["data"] for k in series} - {"__name__"}
        return self.known[metric]

    async def problems(self, where: str, expr: str) -> list[str]:
        """Metrics the expression names that have no series, labels it matches a metric on that
        the metric's series lack, labels it groups or joins by that none of its metrics has.
        Such a query is often not empty (`!=`, `or`, a join on what is there), only wrong."""
        matched, grouped, metrics = label_uses(expr)
        out = [f"{where}: no series of {m}" for m in sorted(metrics) if not await self.of(m)]
        for metric, labels in sorted(matched.items()):
            if missing := labels - await self.of(metric):
                out.append(f"{where}: {metric} has no {sorted(missing)}")
        present = set().union(*[await self.of(m) for m in metrics]) if metrics else set()
        if missing := grouped - present:
            out.append(f"{where}: by/on {sorted(missing)}, which none of {sorted(metrics)} has")
        return out


async def test_every_dashboard_variable_and_panel_query_returns_series(stack: Stack) -> None:
    """Grafana's queries, sent to a Prometheus that scraped the daemon, are valid and not empty;
    every metric and label they name is on the stored series, and the series they return carry
    every label their legends name."""
    daemon, venues, prom, _, chain = stack
    await prom.wait_for('oracled_market_status{job="oracled", status="active"} == 1', 30)
    dashes = load()
    values = {name: await _resolve(prom, name, dash) for name, dash in dashes.items()}

    # What the panels watch has to happen at least once: a manual pause (on the market the
    # drill-down opens first, which stays paused), duplicate and malformed frames from the venues,
    # a Chainlink round the feed must refuse (answer 0: dropped as non_positive).
    market = values["oracled-market.json"]["market"]
    status, body = await daemon.post(
        f"/v1/admin/markets/{market.replace('/', '-')}/pause",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert status == 200, body
    for venue in venues:
        venue.sim.replay_stale(20)
        venue.sim.garbage(2)
    await prom.wait_for('oracled_market_status{status="paused"} == 1', 15)
    # A counter that first appears now is on its panels as a rate or an increase over
    # `__rate_interval`, which needs two of its samples in the window: wait for the second scrape.
    window = BUILTINS["__rate_interval"]
    await prom.wait_for(f"increase(oracled_admin_actions_total[{window}])", 15)
    # The pool quotes its TWAP (its price, not `no_quote`): it has a window of history. Too far
    # from the venues to vote, it is left out as an `outlier`, or as `stale` while the block it
    # was read at is older than the market's `lag_ms` (2 s, docs/pricing.md section 2): blocks a
    # second apart stamped in whole seconds make it 1 to 2 s old, past 2 s when the next block
    # is late, and a scrape a second in step with the blocks could see only `stale` for as long
    # as the test waited. Never a flag (`liquidity`) or `no_quote`.
    pool, price = 'market="BTC/USD",source="uniswap"', float(BTC_POOL_PRICE)
    await prom.wait_for(
        f"abs(oracled_market_source_value{{{pool}}} - {price}) < {price / 1000}"
        ' and on (source) oracled_source_excluded_slots{reason=~"outlier|stale"} == 1',
        15,
    )
    await chain.publish_btc(0)
    await prom.wait_for(f"rate(oracled_quotes_dropped_total[{window}])", 15)
    await prom.wait_for(f'rate(oracled_quotes_dropped_total{{source="chainlink"}}[{window}])', 15)
    await prom.wait_for("count_over_time(oracled_rounds_total[15s]) >= 10", 20)
    # The on-chain pusher's RPC client, in the chain panels beside the reader's (the service
    # hands its endpoints to the metrics through PushStats).
    await prom.wait_for('oracled_chain_rpc_requests_total{client="pusher"} > 0', 15)
    await prom.wait_for('oracled_chain_rpc_requests_total{client="reader"} > 0', 15)

    problems = []
    checked = 0
    stored = StoredLabels(prom)
    for name, dash in dashes.items():
        for target in targets(name, dash):
            problems += await stored.problems(f"{name} / {target.panel}", target.expr)
            expr = substitute(target.expr, values[name])
            body = await prom.query(expr)
            checked += 1
            if body.get("status") != "success":
                problems.append(f"{name} / {target.panel}: invalid: {expr}\n  {body}")
            elif not body["data"]["result"]:
                problems.append(f"{name} / {target.panel}: no series: {expr}")
            else:
                # A legend naming a label the series lack shows an empty name in its place.
                named = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.legend))
                for series in body["data"]["result"]:
                    if named - set(series["metric"]):
                        problems.append(
                            f"{name} / {target.panel}: legend {target.legend!r}, series "
                            f"{series['metric']} lack {sorted(named - set(series['metric']))}"
                        )
                        break
    assert problems == [], "\n".join(problems)
    assert checked >= 40


@pytest.mark.asyncio(loop_scope="module")
async def test_alert_rules_evaluate_cleanly_and_the_stored_metrics_are_catalogued(
    shared_stack: Stack,
) -> None:
    """Every rule evaluates without error on real series, and names only metrics and labels the
    stored series have; every stored oracled_ name is known."""
    _, venues, prom, _, _ = shared_stack
    for venue in venues:  # quotes dropped: a family whose series come with the first drop
        venue.sim.replay_stale(20)
    await prom.wait_for("count_over_time(oracled_rounds_total[1m]) >= 5", 30)
    await prom.wait_for("oracled_quotes_dropped_total", 15)
    deadline = time.monotonic() + 15
    while True:
        groups = (await prom.api("/api/v1/rules"))["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        if all(not rule["lastEvaluation"].startswith("0001") for rule in rules):
            break
        assert time.monotonic() < deadline, "rules never evaluated"
        await asyncio.sleep(0.25)
    assert len(rules) >= 12
    assert {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"} == {}
    stored = StoredLabels(prom)
    problems = [p for rule in rules for p in await stored.problems(rule["name"], rule["query"])]
    assert problems == [], "\n".join(problems)

    listed, _ = catalogue()
    names = (await prom.api("/api/v1/label/__name__/values"))["data"]
    unknown = []
    for name in names:
        if not name.startswith("oracled_") or name.endswith("_created"):
            continue
        base = name
        for suffix in ("_bucket", "_count", "_sum"):
            stem = name.removesuffix(suffix)
            if name.endswith(suffix) and listed.get(stem, ("",))[0] == "histogram":
                base = stem
        if base not in listed:
            unknown.append(name)
    assert unknown == []


@pytest.mark.asyncio(loop_scope="module")
async def test_prometheus_asks_for_gzip_and_gets_it_and_reads_every_series(
    shared_stack: Stack,
) -> None:
    """A real Prometheus sends `Accept-Encoding: gzip`; the daemon answers gzipped (the
    exposition is mostly repeated label text, several times smaller packed) and Prometheus
    reads it all: the target is up and every sample of a plain scrape is stored."""
    daemon, _, prom, proxy, _ = shared_stack
    await prom.wait_for('oracled_market_status{job="oracled", status="active"} == 1', 30)
    await prom.wait_for('up{job="oracled"} == 1', 10)
    scrapes = list(proxy.scrapes)
    assert scrapes and {s.accept_encoding for s in scrapes} == {"gzip"}, scrapes
    assert {(s.status, s.content_encoding) for s in scrapes} == {(200, "gzip")}, scrapes
    status, text = await daemon.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert status == 200 and text.startswith("# HELP")
    assert scrapes[-1].size * 4 < len(text.encode())
    samples = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    (stored,) = await prom.wait_for('scrape_samples_scraped{job="oracled"}', 10)
    assert abs(float(stored["value"][1]) - samples) <= samples // 20  # sources come and go


def _promtool_lint(exposition: str) -> tuple[int, str]:
    exe = shutil.which("promtool")
    assert exe, "promtool is missing: run scripts/ops-setup.sh (make install-test does)"
    done = subprocess.run(
        [exe, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


@pytest.mark.asyncio(loop_scope="module")
async def test_promtool_finds_nothing_to_lint_in_the_daemons_metrics(shared_stack: Stack) -> None:
    """`promtool check metrics`, Prometheus's own linter, passes the daemon's whole exposition
    (every family of the stack: markets, sources, chain, push, audit, process): each has its
    HELP and TYPE, counters end in `_total`, units are base units in the name. A family that
    breaks a convention (a counter without `_total`, a `_milliseconds` gauge) fails here."""
    daemon, _, prom, _, _ = shared_stack
    await prom.wait_for('oracled_market_status{job="oracled", status="active"} == 1', 30)
    status, text = await daemon.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert status == 200
    assert _promtool_lint(text) == (0, "")
    bad = "# HELP oracled_x_seconds_count x\n# TYPE oracled_x_seconds_count counter\n"
    code, said = _promtool_lint(text + bad + "oracled_x_seconds_count 1\n")
    assert code != 0 and '"_total" suffix' in said  # the lint is on: a bad family is caught
