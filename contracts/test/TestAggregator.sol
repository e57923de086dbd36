// SPDX-License-Identifier: Apache-2.0
// Test-only: a Chainlink-style aggregator whose every round field can be set, including an
// `answeredInRound` behind its `roundId` and the `minAnswer`/`maxAnswer` bounds that the real
// OCR aggregators clamp their answers to (the LUNA floor case).
pragma solidity ^0.8.20;

contract TestAggregator {
    uint8 public decimals;
    string public description;
    int192 public minAnswer;
    int192 public maxAnswer;
    uint256 public version = 4;

    uint80 private _roundId;
    int256 private _answer;
    uint256 private _startedAt;
    uint256 private _updatedAt;
    uint80 private _answeredInRound;

    constructor(uint8 decimals_, string memory description_, int192 min_, int192 max_) {
        decimals = decimals_;
        description = description_;
        minAnswer = min_;
        maxAnswer = max_;
    }

    /// A normal new round: answer clamped to the bounds, stamped with this block's time.
    function updateAnswer(int256 answer) external {
        int256 clamped = answer < minAnswer ? int256(minAnswer) : answer;
        clamped = clamped > maxAnswer ? int256(maxAnswer) : clamped;
        _roundId += 1;
        _answer = clamped;
        _startedAt = block.timestamp;
        _updatedAt = block.timestamp;
        _answeredInRound = _roundId;
    }

    /// Any round at all, for the faults a reader must refuse.
    function setRound(
        uint80 roundId,
        int256 answer,
        uint256 startedAt,
        uint256 updatedAt,
        uint80 answeredInRound
    ) external {
        _roundId = roundId;
        _answer = answer;
        _startedAt = startedAt;
        _updatedAt = updatedAt;
        _answeredInRound = answeredInRound;
    }

    function latestRoundData() external view returns (uint80, int256, uint256, uint256, uint80) {
        return (_roundId, _answer, _startedAt, _updatedAt, _answeredInRound);
    }
}
