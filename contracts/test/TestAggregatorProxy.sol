// SPDX-License-Identifier: Apache-2.0
// Test-only: the part of a Chainlink proxy that a reader sees. It forwards the AggregatorV3
// reads to the current aggregator and names it through `aggregator()`, which is how a reader
// reaches the aggregator's minAnswer/maxAnswer. The aggregator can be swapped, as on mainnet.
pragma solidity ^0.8.20;

interface IAggregatorV3 {
    function decimals() external view returns (uint8);
    function description() external view returns (string memory);
    function latestRoundData() external view returns (uint80, int256, uint256, uint256, uint80);
}

contract TestAggregatorProxy {
    address public aggregator;

    constructor(address aggregator_) {
        aggregator = aggregator_;
    }

    function setAggregator(address aggregator_) external {
        aggregator = aggregator_;
    }

    function decimals() external view returns (uint8) {
        return IAggregatorV3(aggregator).decimals();
    }

    function description() external view returns (string memory) {
        return IAggregatorV3(aggregator).description();
    }

    function latestRoundData() external view returns (uint80, int256, uint256, uint256, uint80) {
        return IAggregatorV3(aggregator).latestRoundData();
    }
}
