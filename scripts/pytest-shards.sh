#!/usr/bin/env bash
# Run the test suite as two pytest processes side by side, then report both.
#
# Most of the suite waits (daemons starting, loopback sockets, simulated venues), so one pytest
# process uses about half a CPU: two shards of whole directories finish in a little over the
# time of the larger one. The split is by directory, fixed, so that a test always runs beside
# the same neighbours; each shard has its own temporary root (pytest prunes old ones, which
# would remove a running shard's). Exit status: non-zero if either shard failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTEST=${PYTEST:-.venv/bin/pytest}
# In-process suites (loopback venues, the core, the API, clients): no daemon subprocesses.
FAST=(tests/sources tests/sim tests/api tests/core tests/mark tests/client tests/margin)
REST=()
for path in tests/*; do
    case " ${FAST[*]} " in *" $path "*) continue ;; esac
    [[ -d $path && $path != tests/fixtures && $path != tests/__pycache__ ]] || [[ $path == tests/test_*.py ]] || continue
    REST+=("$path")
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTEST" -q -p no:cacheprovider --basetemp="$work/fast" "${FAST[@]}" "$@" >"$work/fast.log" 2>&1 &
fast=$!
"$PYTEST" -q -p no:cacheprovider --basetemp="$work/rest" "${REST[@]}" "$@" >"$work/rest.log" 2>&1 &
rest=$!
wait "$fast"; fast_rc=$?
wait "$rest"; rest_rc=$?
echo "== shard 1 of 2: ${FAST[*]}"
cat "$work/fast.log"
echo "== shard 2 of 2: ${REST[*]}"
cat "$work/rest.log"
if ((fast_rc != 0 || rest_rc != 0)); then
    echo "pytest shards failed: exit $fast_rc (shard 1), $rest_rc (shard 2)" >&2
    exit 1
fi
