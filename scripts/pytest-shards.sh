#!/usr/bin/env bash
# Run the test suite as two pytest processes side by side, then report both.
#
# Most of the suite waits (daemons starting, loopback sockets, simulated venues), so one pytest
# process uses about half a CPU: two shards of whole directories finish in a little over the
# time of the larger one. The split is by directory, fixed, so that a test always runs beside
# the same neighbours; each shard has its own temporary root (pytest prunes old ones, which
# would remove a running shard's). Exit status: non-zero if either shard failed.
#
# `scripts/pytest-shards.sh --list` prints each shard's paths ("1 tests/core", ...) and runs
# nothing; tests/test_shards.py checks from it that every test file runs in exactly one shard.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTEST=${PYTEST:-.venv/bin/pytest}
# Shard 1 is the directories named here: the in-process suites (loopback venues, the core, the
# API, clients) and two suites of daemon and command runs (integration, replay), so that each
# shard holds both kinds. Shard 2 is everything else: a new directory or top-level test file runs
# there without an edit here. Each directory run alone (wall seconds, 2 vCPUs beside other work):
# sources 277, integration 278, publish 275, ops 243, cli 171, soak 169, test_imports.py 114,
# chain 103, stress 101, margin 66, client 56, api 51, replay 46, runtime 37, core 36, sim 22,
# config 21, mark 4, the other top-level files 85. On a quiet clean-clone CI run with soak in
# shard 1, shard 1 took 11:20 (2,212 tests, the sources' parse cases having grown by 400) and
# shard 2 7:36 (1,210): soak is in shard 2 since. When one shard outgrows the other by more than
# a minute or two, move a directory across.
FAST=(
    tests/sources tests/sim tests/api tests/core tests/mark tests/client tests/margin
    tests/integration tests/replay
)
REST=()
for path in tests/*; do
    case " ${FAST[*]} " in *" $path "*) continue ;; esac
    [[ -d $path && $path != tests/fixtures && $path != tests/__pycache__ ]] ||
        [[ $path == tests/test_*.py || $path == tests/*_test.py ]] || continue
    REST+=("$path")
done
if [[ ${1:-} == --list ]]; then
    printf '1 %s\n' "${FAST[@]}"
    printf '2 %s\n' "${REST[@]}"
    exit 0
fi
# The suite starts the daemon and the command line in fresh interpreters hundreds of times. In a
# shell with PYTHONDONTWRITEBYTECODE set, each of them compiles the package's sources again unless
# they were compiled before (scripts/bootstrap.sh does it after an install; a new clone has none):
# a third of tests/cli's time. Compile what changed, as the bootstrap does.
"$(dirname "$PYTEST")/python" -m compileall -q oracled
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
