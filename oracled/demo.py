"""`oracled demo`: the whole daemon against simulated venues on loopback, with a fault script.

Every source of the config (by default the shipped `config/default.toml`: ten venues and feeds)
gets a simulator that speaks that venue's real wire protocol on 127.0.0.1, so the daemon runs
exactly as in production, only pointed at loopback. The script cycles through: normal prices; one
venue printing a spike (excluded as an outlier, price unmoved); one venue going silent with its
socket open (detected, its quotes age out); a majority of venues silent (quorum lost: markets pause
with `price: null`); recovery (markets resume after the hysteresis window).

Its prices are simulated and faulted on purpose, so nothing of them leaves loopback under the
operator's name, whatever the config says: rounds are signed by a throwaway key (the signed
stream still shows, but no consumer that trusts the configured key accepts them), and the NATS
sink and the on-chain pusher are off.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import structlog

from oracled.config import Config
from oracled.publish.signer import SigningKey
from oracled.runloop import run_to_end
from oracled.service import Service
from oracled.sim.venues import SimulatedVenue, simulate

__all__ = ["DEMO_NO_RELOAD", "run_demo"]

#: A reload would re-read the file's real venue URLs into a daemon whose sources were pointed at
#: simulators (and turn its sinks back on): the demo never reloads, and says so.
DEMO_NO_RELOAD = (
    "oracled demo does not reload its config (its sources point at simulators): "
    "stop it and start it again"
)

Logger = structlog.typing.FilteringBoundLogger

#: The deployment the demo signs for (docs/publishing.md, *Deployment*), never the config's.
DEPLOYMENT = "demo"
# The variable the throwaway signing key is handed to the service in (the demo's own process).
_THROWAWAY_KEY_ENV = "ORACLED_DEMO_THROWAWAY_SIGNING_KEY"

# Short liveness settings so that the faults show within seconds.
_LIVENESS = {"liveness_timeout_s": 3.0, "rest_poll_interval_s": 1.0, "reconnect_max_s": 5.0}


def _spike_target(venues: list[SimulatedVenue], market: str) -> tuple[SimulatedVenue, str] | None:
    """A venue quoting `market`'s base on the spot book, and its simulator key."""
    base = market.split("/")[0]
    for venue in reversed(venues):
        for (pair, kind), key in venue.keys.items():
            if kind == "spot" and pair.split("/")[0] == base:
                return venue, key
    return None


async def _script(venues: list[SimulatedVenue], market: str, log: Logger) -> None:
    """The fault script, repeated until the demo stops."""
    quoting = [v for v in venues if any(k == "spot" for _, k in v.keys)]
    target = _spike_target(quoting, market)
    while True:
        log.info("demo: all venues healthy", next_in_s=15)
        await asyncio.sleep(15)
        if target is not None:
            venue, key = target
            log.warning(
                "demo: one venue prints 8% too high for 15 s: expect it excluded",
                venue=venue.source,
                market=market,
            )
            venue.sim.spike(key, 1.08, 15.0)
        await asyncio.sleep(18)
        first = quoting[0]
        log.warning(
            "demo: one venue goes silent with its socket open and REST off", venue=first.source
        )
        first.sim.rest_enabled = False
        first.sim.silence(None)
        await asyncio.sleep(15)
        silent = quoting[: len(quoting) // 2 + 2]
        log.warning(
            "demo: most venues go silent: expect markets paused (quorum, stale)",
            venues=[v.source for v in silent],
        )
        for venue in silent:
            venue.sim.rest_enabled = False
            venue.sim.silence(None)
        await asyncio.sleep(20)
        log.info("demo: every venue recovers: expect markets to resume after the hysteresis")
        for venue in venues:
            venue.sim.reset()
        await asyncio.sleep(15)


def _loopback_only(cfg: Config, log: Logger, state: Path) -> Config:
    """`cfg` with a throwaway signing key, without the sinks that reach other systems (NATS,
    the on-chain pusher) and without the daemon's state (the audit trail, the operator pauses
    file): simulated prices must never pass for the operator's, nor a demo resume lift a pause.
    The throwaway key's signing lease goes to `state`, a directory of the demo's own."""
    update: dict[str, object] = {}
    if cfg.signing.enabled:
        key = SigningKey.generate()
        os.environ[_THROWAWAY_KEY_ENV] = key.hex()
        # Its own deployment too: the demo's rounds are signed in the domain "demo", never in
        # the operator's, whatever key a consumer might have been told to trust.
        update["signing"] = cfg.signing.model_copy(
            update={
                "key_file": None,
                "key_env": _THROWAWAY_KEY_ENV,
                "deployment": DEPLOYMENT,
                # The operator's lease is its key's (and its lock would stop a running daemon's
                # demo): a key made for this run alone keeps its own, gone with the run.
                "lease_file": str(state / "signing-lease.json"),
            }
        )
        log.warning(
            "demo: rounds signed by a throwaway key, not the configured one",
            signer=key.address,
            deployment=DEPLOYMENT,
        )
    for sink in ("nats", "push"):
        table = getattr(cfg, sink)
        if table.enabled:
            update[sink] = table.model_copy(update={"enabled": False})
            log.warning("demo: sink off", sink=sink, why="simulated prices stay on loopback")
    if cfg.audit.enabled:
        update["audit"] = cfg.audit.model_copy(update={"enabled": False})
        log.warning("demo: state off", state="audit", why="the trail records real rounds only")
    if cfg.oracle.manual_pauses_file is not None:
        update["oracle"] = cfg.oracle.model_copy(update={"manual_pauses_file": None})
        log.warning(
            "demo: state off", state="manual_pauses_file", why="operator pauses are not the demo's"
        )
    return cfg.model_copy(update=update)


async def _main(
    cfg: Config,
    listen: str,
    duration: float | None,
    record: Path | None,
    prepare: Callable[[Service], None],
) -> None:
    log: Logger = structlog.get_logger("oracled").bind(component="demo")
    simulated, venues = await simulate(cfg, liveness=_LIVENESS)
    # The throwaway key's signing lease lives here, and goes with the run.
    with tempfile.TemporaryDirectory(prefix="oracled-demo-") as state:
        try:
            simulated = _loopback_only(simulated, log, Path(state))
            service = Service(
                simulated, listen=listen, record=record, record_flag="--record", freeze_gc=True
            )
            service.no_reload = DEMO_NO_RELOAD
            prepare(service)  # the command line's early signals: a stop while starting is a stop
            url = f"http://{listen}"
            market = next(
                (m.symbol for m in cfg.markets if m.symbol.startswith("BTC/")),
                cfg.markets[-1].symbol,
            )
            log.info(
                "demo: venues on loopback",
                venues=len(venues),
                prices=f"{url}/v1/prices",
                sources=f"{url}/v1/markets/{market.replace('/', '-')}/sources",
                metrics=f"{url}/metrics",
            )
            script = asyncio.create_task(_script(venues, market, log), name="demo-script")
            runner = asyncio.create_task(service.run(), name="service")
            if duration is not None:
                asyncio.get_running_loop().call_later(duration, service.stop)
            await runner
            script.cancel()
        finally:
            for venue in venues:
                await venue.sim.stop()


def run_demo(
    cfg: Config,
    listen: str,
    duration: float | None,
    record: Path | None,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None,
    prepare: Callable[[Service], None] = lambda service: None,
) -> bool:
    """Run the demo to its end (`duration`, or a stop); `prepare` sees the service first.
    The loop closes within the service's stop budget, as `oracled run`'s does. False if the
    daemon failed or the tape (`record`) stopped short: `oracled record` exits 1 for those."""
    services: list[Service] = []

    def prepared(service: Service) -> None:
        services.append(service)
        prepare(service)

    main = _main(cfg, listen, duration, record, prepared)
    run_to_end(
        main,
        loop_factory,
        lambda: services[0].stop_deadline if services else None,
        lambda: services[0].log if services else structlog.get_logger("oracled"),
    )
    service = services[0]  # prepared before anything ran, or `main` raised
    return not (service.failed or service.tape_error is not None)
