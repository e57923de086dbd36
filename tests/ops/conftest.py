"""The operations tests reuse the integration tests' daemon runner (tests/integration/daemon.py)."""

import sys
from pathlib import Path

_INTEGRATION = str(Path(__file__).resolve().parents[1] / "integration")
if _INTEGRATION not in sys.path:
    sys.path.insert(0, _INTEGRATION)
