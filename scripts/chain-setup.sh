#!/usr/bin/env bash
# Install the local chain the on-chain tests run against, idempotently:
#   - anvil, solc-js and the Uniswap v3 / Pyth contract packages, exactly as pinned in
#     package-lock.json, into node_modules/ (npm ci);
#   - Chainlink's MockV3Aggregator sources, unpacked from the pinned npm tarball into build/chain/
#     (`npm pack`, because `npm install` of that package pulls a dependency from outside the
#     registry);
#   - every contract compiled with solc-js into build/chain/artifacts.json, skipped when a hash
#     of all the inputs is unchanged.
# Nothing third-party is committed: both folders are ignored and rebuilt by this script.
set -euo pipefail
cd "$(dirname "$0")/.."

CHAINLINK_VERSION="1.5.0"
out="build/chain"
mkdir -p "$out"

if ! command -v npm >/dev/null 2>&1; then
    echo "chain-setup: npm (Node.js >= 18) is needed for the on-chain tests" >&2
    exit 1
fi

lock_hash="$(sha256sum package-lock.json | cut -c1-16)"
if [ ! -f "node_modules/.oracled-$lock_hash" ]; then
    npm ci --no-audit --no-fund --loglevel=error
    touch "node_modules/.oracled-$lock_hash"
fi

if [ ! -f "$out/chainlink/.version-$CHAINLINK_VERSION" ]; then
    rm -rf "$out/chainlink" "$out/package"
    tarball="$(cd "$out" && npm pack "@chainlink/contracts@$CHAINLINK_VERSION" --silent)"
    tar xzf "$out/$tarball" -C "$out" package/src/v0.8/shared/mocks/MockV3Aggregator.sol \
        package/src/v0.8/shared/interfaces
    mv "$out/package" "$out/chainlink"
    rm -f "$out/$tarball"
    touch "$out/chainlink/.version-$CHAINLINK_VERSION"
fi

inputs_hash="$(
    {
        cat package-lock.json scripts/compile-contracts.mjs
        find contracts "$out/chainlink" -name '*.sol' -type f | LC_ALL=C sort | xargs cat
    } | sha256sum | cut -c1-16
)"
if [ ! -f "$out/artifacts.json" ] || [ "$(cat "$out/artifacts.hash" 2>/dev/null)" != "$inputs_hash" ]; then
    node scripts/compile-contracts.mjs "$out/artifacts.json.tmp"
    mv "$out/artifacts.json.tmp" "$out/artifacts.json"
    echo "$inputs_hash" > "$out/artifacts.hash"
fi
