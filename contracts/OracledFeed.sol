// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.19;

/// @title OracledFeed: the latest oracled price of each market, written by one authorized pusher.
/// @notice A market is keyed by keccak256 of its symbol (keccak256("BTC/USD")), the same hash the
/// daemon's signed rounds use. A stored price means `price * 10**expo`; `ts` is the oracled round
/// time in milliseconds since the Unix epoch and `round` the daemon's round number.
/// A market oracled stopped pricing (its status paused or unknown) is marked `paused` at the
/// round that said so: the last good price stays stored, `round` and `ts` become the pause's, and
/// `latest` reverts for it (`FeedPaused`), so that a consumer that reads no flag never takes a
/// frozen price for a live one. `latestFeed` hands it over with the flag, for a consumer that
/// wants the last good price knowingly. The next price stored clears the flag.
/// @dev An entry (a price or a pause) that is not newer than the stored one is skipped (not
/// reverted): a batch that lands late, or a replaced transaction racing its replacement, never
/// moves a market back in time, nor lets a price from before a pause clear it; one old market
/// does not cost the rest of its batch. One storage slot per market (16+1+6+8+1 bytes).
contract OracledFeed {
    /// @notice 2: the `paused` field, `pushBatch`, `latestFeed`, and `latest` reverting for a
    /// paused market (version 1 had none of them, and its `latestMany` answered four fields).
    uint8 public constant VERSION = 2;

    struct Feed {
        int128 price;
        int8 expo;
        uint48 ts;
        uint64 round;
        bool paused;
    }

    address public owner;
    address public pusher;
    mapping(bytes32 => Feed) private feeds;

    event PriceUpdated(bytes32 indexed market, int128 price, int8 expo, uint64 round, uint48 ts);
    event MarketPaused(bytes32 indexed market, uint64 round, uint48 ts);
    event PusherChanged(address indexed previous, address indexed next);
    event OwnerChanged(address indexed previous, address indexed next);

    error NotOwner();
    error NotPusher();
    error LengthMismatch();
    /// @notice `latest` of a market oracled paused at `ts` (ms): its last price is not live.
    error FeedPaused(bytes32 market, uint48 ts);

    constructor(address initialPusher) {
        owner = msg.sender;
        pusher = initialPusher;
        emit OwnerChanged(address(0), msg.sender);
        emit PusherChanged(address(0), initialPusher);
    }

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner();
        _;
    }

    modifier onlyPusher() {
        if (msg.sender != pusher) revert NotPusher();
        _;
    }

    /// @notice Rotate the pusher key (the old key can write nothing from this block on).
    function setPusher(address next) external onlyOwner {
        emit PusherChanged(pusher, next);
        pusher = next;
    }

    function transferOwnership(address next) external onlyOwner {
        emit OwnerChanged(owner, next);
        owner = next;
    }

    /// @notice One market's price; returns false when it was not newer than the stored one.
    function update(bytes32 market, int128 price, int8 expo, uint64 round, uint48 ts)
        external
        onlyPusher
        returns (bool)
    {
        return _store(market, price, expo, round, ts);
    }

    /// @notice Several markets of one round; returns how many were stored (newer than before).
    function updateBatch(
        uint64 round,
        uint48 ts,
        bytes32[] calldata markets,
        int128[] calldata prices,
        int8[] calldata expos
    ) external onlyPusher returns (uint256 stored) {
        return _storeAll(round, ts, markets, prices, expos);
    }

    /// @notice One round's prices and pauses in one call (the pusher's one transaction in
    /// flight): `markets[i]` at `prices[i] * 10**expos[i]`, then each of `paused` marked paused
    /// at this round. Returns how many entries were stored (newer than before).
    /// @dev A market listed both in `markets` and in `paused` keeps the price: the price is
    /// stored first, at this `ts`, and the pause at the same `ts` is not newer, so it is skipped
    /// (not counted, no `MarketPaused`). The daemon never sends such a call.
    function pushBatch(
        uint64 round,
        uint48 ts,
        bytes32[] calldata markets,
        int128[] calldata prices,
        int8[] calldata expos,
        bytes32[] calldata paused
    ) external onlyPusher returns (uint256 stored) {
        stored = _storeAll(round, ts, markets, prices, expos);
        for (uint256 i = 0; i < paused.length; ++i) {
            if (_pause(paused[i], round, ts)) {
                ++stored;
            }
        }
    }

    /// @notice The stored price of a market; all zero if it was never written. Reverts with
    /// `FeedPaused` while oracled holds the market paused: its last price is not live.
    function latest(bytes32 market)
        external
        view
        returns (int128 price, int8 expo, uint64 round, uint48 ts)
    {
        Feed memory f = feeds[market];
        if (f.paused) revert FeedPaused(market, f.ts);
        return (f.price, f.expo, f.round, f.ts);
    }

    /// @notice Everything stored for a market, paused or not: while `paused`, `price` and `expo`
    /// are the last good price and `round` and `ts` the pause's (the price's own are in its
    /// `PriceUpdated` event).
    function latestFeed(bytes32 market)
        external
        view
        returns (int128 price, int8 expo, uint64 round, uint48 ts, bool paused)
    {
        Feed memory f = feeds[market];
        return (f.price, f.expo, f.round, f.ts, f.paused);
    }

    /// @notice Several markets at once, flag included (the pusher reads its starting point with
    /// one call).
    function latestMany(bytes32[] calldata markets) external view returns (Feed[] memory out) {
        out = new Feed[](markets.length);
        for (uint256 i = 0; i < markets.length; ++i) {
            out[i] = feeds[markets[i]];
        }
    }

    function _storeAll(
        uint64 round,
        uint48 ts,
        bytes32[] calldata markets,
        int128[] calldata prices,
        int8[] calldata expos
    ) private returns (uint256 stored) {
        uint256 n = markets.length;
        if (prices.length != n || expos.length != n) revert LengthMismatch();
        for (uint256 i = 0; i < n; ++i) {
            if (_store(markets[i], prices[i], expos[i], round, ts)) {
                ++stored;
            }
        }
    }

    function _store(bytes32 market, int128 price, int8 expo, uint64 round, uint48 ts)
        private
        returns (bool)
    {
        Feed storage f = feeds[market];
        if (ts <= f.ts) {
            return false;
        }
        f.price = price;
        f.expo = expo;
        f.ts = ts;
        f.round = round;
        f.paused = false;
        emit PriceUpdated(market, price, expo, round, ts);
        return true;
    }

    function _pause(bytes32 market, uint64 round, uint48 ts) private returns (bool) {
        Feed storage f = feeds[market];
        if (ts <= f.ts) {
            return false;
        }
        f.ts = ts;
        f.round = round;
        f.paused = true;
        emit MarketPaused(market, round, ts);
        return true;
    }
}
