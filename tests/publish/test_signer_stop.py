"""The stop waits (briefly) for the round being signed, so that its signature is in the trail."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from publish_rig import one_venue_config

from oracled.core import RoundResult
from oracled.publish.audit import AuditReader
from oracled.publish.signer import RoundSigner, SignedRound, SigningKey
from oracled.service import Service
from oracled.sim import BinanceSim


class _SlowSigner(RoundSigner):
    """The real signer, 0.2 s slower a round (a loaded CPU, many markets); it says which round
    it began last and when it began it."""

    __slots__ = ("began", "last")

    def __init__(self, key: SigningKey) -> None:
        super().__init__(key, "test")
        self.began = threading.Event()
        self.last = -1

    def sign(self, result: RoundResult) -> SignedRound:
        self.last = result.round
        self.began.set()
        time.sleep(0.2)
        return super().sign(result)


async def test_the_round_being_signed_at_the_stop_is_stored_signed(tmp_path: Path) -> None:
    """A stop while a round is being signed waits for it (up to 0.5 s) before the audit trail
    closes, so that round is stored with its signature; stopped at once, the signature came
    after the trail had closed and the last round of every run read as unsigned in `oracled
    audit --verify` (reported by the helper who wrote it)."""
    key = SigningKey.generate()
    key_file = tmp_path / "signing.key"
    key_file.write_text(key.hex() + "\n")
    key_file.chmod(0o600)
    async with BinanceSim({"BTCUSDT": 50_000.0}, rate_hz=50.0) as sim:
        cfg = one_venue_config(
            sim.ws_url,
            sim.rest_url,
            tmp_path / "audit.sqlite3",
            signing={
                "enabled": True,
                "key_file": str(key_file),
                "deployment": "test",
                "lease_file": str(tmp_path / "signing-lease.json"),
            },
        )
        service = Service(cfg)
        assert service._signer_worker is not None
        slow = service._signer_worker.signer = _SlowSigner(key)
        task = asyncio.create_task(service.run())
        try:
            async with asyncio.timeout(20):
                while service.audit is None or service.audit.stats.rounds < 10:  # noqa: ASYNC110 - a counter of the writer thread
                    await asyncio.sleep(0.05)
                slow.began.clear()
                while not slow.began.is_set():  # noqa: ASYNC110 - set by the signer thread
                    await asyncio.sleep(0.005)
        finally:
            service.stop()  # the round `slow.last` is being signed now
            await task
    reader = AuditReader(cfg.audit.path)
    stored = {r.round: r for r in reader.rounds(0, 1 << 62)}
    reader.close()
    last = stored[slow.last]
    assert last.signature is not None and last.signer == key.address
