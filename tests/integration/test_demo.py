"""`oracled demo`: the shipped config against a simulator per venue, and its scripted spike."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from children import stop
from daemon import ADMIN_TOKEN, Daemon, free_port, sim_config
from structlog.testing import capture_logs

from oracled.config import parse_config
from oracled.demo import DEMO_NO_RELOAD, run_demo
from oracled.publish.signer import SigningKey
from oracled.service import Service

ROOT = Path(__file__).resolve().parents[2]
SPIKE_EVENT = "demo: one venue prints 8% too high"


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[Daemon]:
    d = Daemon((ROOT / "config" / "default.toml").read_text(), tmp_path)
    d.argv = [sys.executable, "demo"]
    # The script spikes a venue 15 s in; the test gives the exclusion 10 s, the demo ends then.
    await d.start("--duration", "25")
    yield d
    await d.close()


def _events(daemon: Daemon) -> list[dict[str, Any]]:
    return [json.loads(line) for line in daemon.logs().splitlines() if line.startswith("{")]


async def test_the_demo_prices_every_market_excludes_its_spike_and_stops_cleanly(
    demo: Daemon,
) -> None:
    """Every market of the shipped config goes live on loopback venues; the venue the script
    spikes 8 % high is excluded as an outlier while BTC/USD's price stays put; the demo froze its
    start-up objects like `oracled run`, and it exits 0 when --duration ends."""

    async def all_live() -> list[dict[str, Any]] | None:
        status, prices = await demo.get("/v1/prices")
        live = status == 200 and all(p["status"] in ("active", "degraded") for p in prices)
        return prices if live else None

    prices = await demo.wait_for(all_live, 30, "every market active or degraded")
    assert len(prices) == 23
    before = await demo.report("BTC/USD")

    _, text = await demo.get("/metrics")
    frozen = next(line for line in text.splitlines() if line.startswith("oracled_gc_frozen"))
    assert float(frozen.split()[1]) > 10_000

    spike = await demo.wait_for(
        lambda: next((e for e in _events(demo) if e["event"].startswith(SPIKE_EVENT)), None),
        30,
        "the scripted spike",
    )
    assert spike["market"] == "BTC/USD"

    async def excluded() -> dict[str, Any] | None:
        report = await demo.report("BTC/USD")
        slot = next(s for s in report["sources"] if s["id"] == spike["venue"])
        return report if slot["reason"] == "outlier" else None

    report = await demo.wait_for(excluded, 10, f"{spike['venue']} excluded as an outlier")
    assert report["status"] in ("active", "degraded") and "outlier" in report["reasons"]
    assert abs(float(report["price"]) / float(before["price"]) - 1) < 0.01

    assert demo.proc is not None
    assert await asyncio.to_thread(demo.proc.wait, 30) == 0, demo.logs()[-2000:]
    assert any(e["event"] == "stopped" for e in _events(demo))


DEMO_SINKS_CONFIG = """
[oracle]
round_interval_ms = 100

[log]
format = "json"

[signing]
enabled = true
deployment = "production"
key_file = "signing.key"
lease_file = "signing-lease.json"

[nats]
enabled = true
servers = ["nats://127.0.0.1:{nats_port}"]

[chains.eth]
chain_id = 1
rpc_urls = ["http://127.0.0.1:{rpc_port}"]

[push]
enabled = true
chain = "eth"
contract = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
key_file = "push.key"

[sources.binance]
type = "binance"

[sources.coinbase]
type = "coinbase"

[[markets]]
symbol = "BTC/USD"
min_sources = 1
sources = [{{ source = "binance", pair = "BTC/USD" }}, {{ source = "coinbase", pair = "BTC/USD" }}]
"""


async def test_the_demo_never_signs_publishes_or_pushes_with_the_configured_keys(
    tmp_path: Path,
) -> None:
    """Run on a production config (signing key, NATS servers, an on-chain pusher), the demo's
    simulated prices, spiked and paused on purpose, are signed by a throwaway key instead of
    the configured one (so no consumer that trusts that key accepts them) for the deployment
    "demo" (never the configured one), and neither the NATS
    sink nor the pusher runs. Found by running the demo on a signing config: /v1/info served
    the configured signer, and the pusher and NATS sink started with the configured keys."""
    configured = SigningKey.generate()
    for name in ("signing.key", "push.key"):
        (tmp_path / name).write_text(configured.hex())
        (tmp_path / name).chmod(0o600)
    text = DEMO_SINKS_CONFIG.format(nats_port=free_port(), rpc_port=free_port())
    d = Daemon(text, tmp_path)
    d.argv = [sys.executable, "demo"]
    try:
        await d.start("--duration", "30")
        status, info = await d.get("/v1/info")
        assert status == 200
        assert info["signer"] not in (None, configured.address), info
        throwaway = d.events("demo: rounds signed by a throwaway key, not the configured one")
        assert [e["signer"] for e in throwaway] == [info["signer"]]
        assert [e["deployment"] for e in throwaway] == ["demo"]  # not the config's "production"
        _, text = await d.get("/metrics")
        assert "oracled_push_up" not in text
        assert not d.events("nats sink") and not d.events("on-chain push")
        assert {e["sink"] for e in d.events("demo: sink off")} == {"nats", "push"}
        signed = "oracled_signed_rounds_total"
        await d.wait_for(lambda: _counter(d, signed), 10, "a signed round")
        assert d.terminate() == 0
    finally:
        await d.close()
    # The throwaway key signed under a lease of its own, in a directory gone with the demo; the
    # configured lease file (required with signing) was neither read nor written.
    (first,) = d.events("no signing lease file yet: a first start")
    lease = Path(first["path"])
    assert first["signer"] == info["signer"] and not lease.parent.exists()
    assert not (tmp_path / "signing-lease.json").exists()


async def _counter(d: Daemon, name: str) -> float | None:
    """The value of the counter `name` on /metrics if above zero, else None."""
    _, text = await d.get("/metrics")
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            value = float(line.split()[1])
            return value if value > 0 else None
    return None


async def test_without_listen_the_demo_serves_where_its_config_says(tmp_path: Path) -> None:
    """`oracled demo --config FILE` serves the API on the file's `api.listen`, as `oracled run`
    does; `--listen` only overrides it. Found following docs/config.md: the demo's own default
    (127.0.0.1:8480) won, so a config's address was ignored without a word."""
    port = free_port()
    urls = [(f"ws://127.0.0.1:9/{i}", f"http://127.0.0.1:9/{i}") for i in range(3)]
    text = sim_config(urls).replace("[api]\n", f'[api]\nlisten = "127.0.0.1:{port}"\n', 1)
    config = tmp_path / "demo.toml"
    config.write_text(text)
    log = (tmp_path / "demo.log").open("wb")
    proc = subprocess.Popen(  # noqa: ASYNC220 - starting, not waiting
        [sys.executable, "-m", "oracled.cli", "demo", "--config", str(config), "--duration", "60"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        async with aiohttp.ClientSession() as session:
            async with asyncio.timeout(30):  # a hang guard: the loop ends when it answers
                while True:
                    assert proc.poll() is None, (tmp_path / "demo.log").read_text()[-2000:]
                    try:
                        async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        pass
                    await asyncio.sleep(0.1)
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        stop(proc)
        log.close()


DEMO_STATE_CONFIG = """
[oracle]
round_interval_ms = 100
manual_pauses_file = "pauses.json"

[api]
admin_token_env = "ORACLED_TEST_ADMIN_TOKEN"

[audit]
enabled = true
path = "audit.sqlite3"

[log]
format = "json"

[sources.binance]
type = "binance"

[[markets]]
symbol = "BTC/USD"
min_sources = 1
sources = [{ source = "binance", pair = "BTC/USD" }]
"""


async def test_the_demo_leaves_the_configured_audit_trail_and_pauses_file_alone(
    tmp_path: Path,
) -> None:
    """Run on a production config (its audit trail and its operator pauses file), the demo
    writes no simulated round into the trail and neither reads nor rewrites the pauses: a
    resume in the demo does not lift the operator's real pause. It used to do both (found by
    running the demo in a directory holding a daemon's state: `oracled-audit.sqlite3` filled
    with the script's spikes and pauses, and a demo resume emptied the pauses file)."""
    pauses = tmp_path / "pauses.json"
    pauses.write_text(
        '{"format":"oracled-manual-pauses","version":1,'
        '"paused":{"BTC/USD":{"actor":"ops","ts":1700000000000}}}\n'
    )
    kept = pauses.read_bytes()
    d = Daemon(DEMO_STATE_CONFIG, tmp_path)
    d.argv = [sys.executable, "demo"]
    try:
        await d.start("--duration", "30")
        await d.wait_status("BTC/USD", {"active", "degraded"})  # not paused: no real pause read
        status, body = await d.post(
            "/v1/admin/markets/BTC-USD/resume",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert status == 200, body
        assert d.terminate() == 0
    finally:
        await d.close()
    assert pauses.read_bytes() == kept
    assert not (tmp_path / "audit.sqlite3").exists()
    assert {e["state"] for e in d.events("demo: state off")} == {"audit", "manual_pauses_file"}


async def test_the_demo_says_it_does_not_reload_on_sighup_and_on_the_endpoint(
    tmp_path: Path,
) -> None:
    """`oracled demo --config FILE` answered SIGHUP and POST /v1/admin/reload with 'not started
    from a (config) file', which is false (found running the demo with a file): both now say
    that the demo does not reload, and it runs on."""
    d = Daemon(DEMO_STATE_CONFIG, tmp_path)
    d.argv = [sys.executable, "demo"]
    try:
        await d.start("--duration", "30")
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        ignored = await d.wait_for(
            lambda: next((e for e in _events(d) if e["event"].startswith("SIGHUP ignored")), None),
            10,
            "the SIGHUP's log line",
        )
        assert ignored["event"] == f"SIGHUP ignored: {DEMO_NO_RELOAD}"
        status, body = await d.post(
            "/v1/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert status == 409, body
        assert body["error"] == {"code": "reload_unavailable", "message": DEMO_NO_RELOAD}
        assert "does not reload" in d.events("oracled started")[0]["reload"]
        assert d.terminate() == 0
    finally:
        await d.close()


def test_a_demo_task_that_ignores_cancellation_does_not_hold_the_demo_at_its_end() -> None:
    """`oracled demo` closes its loop as `oracled run` does: a task that swallows every cancel
    (here one the test starts beside the service) is logged by name and left once the stop's
    budget is spent. The demo used `asyncio.Runner`, whose close waited for it forever."""
    cfg = parse_config(
        {
            "api": {"listen": "127.0.0.1:0", "admin_token_env": None},
            "sources": {"v": {"type": "binance"}},
            "markets": [
                {
                    "symbol": "BTC/USDT",
                    "min_sources": 1,
                    "sources": [{"source": "v", "pair": "BTC/USDT"}],
                }
            ],
        },
        env={},
    )

    async def deaf() -> None:
        while True:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    def prepare(service: Service) -> None:
        service.shutdown_budget_s = 1.5
        asyncio.get_running_loop().create_task(deaf(), name="deaf")

    try:
        with capture_logs() as logs:
            demo = threading.Thread(
                target=run_demo,
                args=(cfg, f"127.0.0.1:{free_port()}", 0.5, None, None, prepare),
                daemon=True,
            )
            demo.start()
            demo.join(15)  # the bound only turns a hang into a failure
            assert not demo.is_alive(), "the demo's end waited on the deaf task"
    finally:
        # The demo froze this process's objects out of the collector, as `oracled demo` does
        # its own: give them back, or later tests (tests/runtime/test_gcpause.py) find them.
        gc.unfreeze()
    abandoned = [e for e in logs if e["event"] == "task ignored its cancellation; abandoned"]
    assert [e["task"] for e in abandoned] == ["deaf"]


def test_the_demo_exits_as_record_does_when_its_tape_fails(tmp_path: Path) -> None:
    """`demo --record` on a full disk logged the failed tape and still exited 0, where `record`
    exits 1 for the same incomplete tape; it now exits 1 too. A tape that exists is refused
    (exit 2) and kept, as by `record`, naming the demo's option (`--record`), not record's
    `--append` and `--out`, which `oracled demo` does not take."""
    config = tmp_path / "oracled.toml"
    config.write_text((ROOT / "config" / "default.toml").read_text())

    def demo(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *(sys.executable, "-m", "oracled.cli", "demo", "--config", str(config)),
                *("--listen", f"127.0.0.1:{free_port()}", "--duration", "2", *args),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    full = demo("--record", "/dev/full")
    assert full.returncode == 1, full.stderr[-3000:]
    assert "No space left on device" in full.stderr
    tape = tmp_path / "t.jsonl"
    tape.write_text('{"format": "oracled-tape", "version": 1}\n')
    kept = demo("--record", str(tape))
    assert kept.returncode == 2, kept.stderr[-3000:]
    assert "already holds a tape" in kept.stderr
    # Told the way on in the demo's own options: it takes no --append and has no --out.
    assert "give another --record" in kept.stderr and "--append" not in kept.stderr
    assert tape.read_text() == '{"format": "oracled-tape", "version": 1}\n'
