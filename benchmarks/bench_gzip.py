"""What gzip costs and saves on `GET /v1/prices`, per round body (compressed once per round).

Builds the core of `bench_round.py` (markets x sources), runs rounds past the resume streak,
joins the `/v1/prices` body as the API does, and times `gzip_bytes` (the API's level 1) and,
for comparison, level 6, best of `--repeat`:

    python benchmarks/bench_gzip.py --markets 1000 --sources 5

See benchmarks/README.md for what the figures mean.
"""

from __future__ import annotations

import argparse
import json
import time
import zlib

from bench_round import warm_hub

from oracled.api.encoding import GZIP_LEVEL, OFF_LOOP, gzip_bytes


def prices_body(markets: int, sources: int) -> bytes:
    _, _, hub = warm_hub(markets, sources)
    return b"[" + b",".join(hub.encoded_many(hub.markets)) + b"]"


def best_us(fn: object, repeat: int) -> float:
    assert callable(fn)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return round(best * 1e6, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markets", type=int, default=1000)
    parser.add_argument("--sources", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    plain = prices_body(args.markets, args.sources)
    packed = gzip_bytes(plain)
    level6 = zlib.compressobj(6, zlib.DEFLATED, 31)
    out = {
        "markets": args.markets,
        "plain_bytes": len(plain),
        "gzip_bytes": len(packed),
        "ratio": round(len(plain) / len(packed), 1),
        f"gzip_level{GZIP_LEVEL}_us": best_us(lambda: gzip_bytes(plain), args.repeat),
        "off_loop": len(plain) >= OFF_LOOP,
        "gzip_level6_bytes": len(level6.compress(plain) + level6.flush()),
        "gzip_level6_us": best_us(
            lambda: (lambda c: c.compress(plain) + c.flush())(
                zlib.compressobj(6, zlib.DEFLATED, 31)
            ),
            args.repeat,
        ),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
