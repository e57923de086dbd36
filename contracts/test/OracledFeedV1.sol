// SPDX-License-Identifier: Apache-2.0
// Test-only: OracledFeed as version 1 shipped it (commit cc547df), under its own name, so that
// the tests can deploy an old contract beside the current one. It has no `VERSION`, no pause,
// no `pushBatch`, and its `latestMany` answers four fields a market: the pusher must refuse it
// at start, not read its answers as bad ones for ever.
pragma solidity ^0.8.19;

contract OracledFeedV1 {
    struct Feed {
        int128 price;
        int8 expo;
        uint48 ts;
        uint64 round;
    }

    address public owner;
    address public pusher;
    mapping(bytes32 => Feed) private feeds;

    event PriceUpdated(bytes32 indexed market, int128 price, int8 expo, uint64 round, uint48 ts);

    error NotPusher();
    error LengthMismatch();

    constructor(address initialPusher) {
        owner = msg.sender;
        pusher = initialPusher;
    }

    modifier onlyPusher() {
        if (msg.sender != pusher) revert NotPusher();
        _;
    }

    function updateBatch(
        uint64 round,
        uint48 ts,
        bytes32[] calldata markets,
        int128[] calldata prices,
        int8[] calldata expos
    ) external onlyPusher returns (uint256 stored) {
        uint256 n = markets.length;
        if (prices.length != n || expos.length != n) revert LengthMismatch();
        for (uint256 i = 0; i < n; ++i) {
            Feed storage f = feeds[markets[i]];
            if (ts <= f.ts) {
                continue;
            }
            (f.price, f.expo, f.ts, f.round) = (prices[i], expos[i], ts, round);
            emit PriceUpdated(markets[i], prices[i], expos[i], round, ts);
            ++stored;
        }
    }

    function latest(bytes32 market)
        external
        view
        returns (int128 price, int8 expo, uint64 round, uint48 ts)
    {
        Feed memory f = feeds[market];
        return (f.price, f.expo, f.round, f.ts);
    }

    function latestMany(bytes32[] calldata markets) external view returns (Feed[] memory out) {
        out = new Feed[](markets.length);
        for (uint256 i = 0; i < markets.length; ++i) {
            out[i] = feeds[markets[i]];
        }
    }
}
