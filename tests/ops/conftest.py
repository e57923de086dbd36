"""The operations tests reuse the integration tests' daemon runner (tests/integration/daemon.py)
and the on-chain tests' local node (tests/chain/chain_rig.py)."""

import sys
from pathlib import Path

for _folder in ("integration", "chain"):
    _path = str(Path(__file__).resolve().parents[1] / _folder)
    if _path not in sys.path:
        sys.path.insert(0, _path)
