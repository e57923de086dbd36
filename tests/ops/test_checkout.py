"""`make run` starts the daemon in the checkout (README, *Set up*): what it leaves there."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from catalogue import ROOT
from daemon import ADMIN_TOKEN, Daemon, sim_config

from oracled.sim import BinanceSim

pytestmark = pytest.mark.integration


def _names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def _ignored(name: str) -> bool:
    """Whether git ignores a file of this name at the top of the checkout."""
    git = shutil.which("git")
    assert git
    done = subprocess.run(
        [git, "check-ignore", "--no-index", "-q", name], cwd=ROOT, timeout=60, check=False
    )
    assert done.returncode in (0, 1), done
    return done.returncode == 0


async def test_what_the_shipped_config_writes_in_the_checkout_is_ignored_by_git(
    venues: list[BinanceSim], tmp_path: Path
) -> None:
    """`make run` runs the daemon in the checkout, where the shipped config's relative paths
    land: the audit trail and the operator pauses file, and each one's lock file beside it.
    git ignored `oracled-audit.sqlite3*` but only `oracled-manual-pauses.json` itself, so after
    the first run `git status` showed `oracled-manual-pauses.json.lock` (left there, as lock
    files are) and `git add -A` took it in. Here a daemon with the shipped config's paths
    pauses a market (which writes the pauses file) and stops; git ignores every file it left."""
    shipped = tomllib.loads((ROOT / "config" / "default.toml").read_text())
    pauses, trail = shipped["oracle"]["manual_pauses_file"], shipped["audit"]["path"]
    assert shipped["audit"]["enabled"] and not Path(trail).is_absolute()
    assert not Path(pauses).is_absolute()
    config = sim_config([(s.ws_url, s.rest_url) for s in venues]).replace(
        "[oracle]\n", f'[oracle]\nmanual_pauses_file = "{pauses}"\n', 1
    )
    config += f'\n[audit]\nenabled = true\npath = "{trail}"\n'
    daemon = Daemon(config, tmp_path)
    try:
        await daemon.start()
        await daemon.wait_status("BTC/USD", {"active", "degraded"}, limit_s=20)
        status, body = await daemon.post(
            "/v1/admin/markets/ETH-USD/pause", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert status == 200, body
        await daemon.wait_for(lambda: (tmp_path / pauses).exists(), 10, "the pauses file")
        assert daemon.terminate() == 0
    finally:
        await daemon.close()
    left = _names(tmp_path) - {daemon.config.name, daemon.log_path.name}
    assert {pauses, f"{pauses}.lock", trail, f"{trail}.lock"} <= left, left
    assert sorted(name for name in left if not _ignored(name)) == []
