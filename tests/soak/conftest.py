"""The soak tests drive `benchmarks/soak.py` and reuse the integration tests' daemon runner."""

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[1]
for _path in (str(_TESTS.parent / "benchmarks"), str(_TESTS / "integration")):
    if _path not in sys.path:
        sys.path.insert(0, _path)
