// SPDX-License-Identifier: Apache-2.0
// oracled's own minimal contract with the `aggregate3` interface of Multicall3, which lives at
// 0xcA11bde05977b3631167028862bE2a173976CA11 on most EVM chains. Tests install this bytecode at
// that address on the local node (anvil_setCode), so the daemon reads a local chain exactly as
// it reads mainnet. Only what oracled uses is here: aggregate3, the block getters and the chain id.
pragma solidity ^0.8.20;

contract Multicall3 {
    struct Call3 {
        address target;
        bool allowFailure;
        bytes callData;
    }

    struct Result {
        bool success;
        bytes returnData;
    }

    function aggregate3(Call3[] calldata calls) external payable returns (Result[] memory results) {
        uint256 length = calls.length;
        results = new Result[](length);
        for (uint256 i = 0; i < length; ++i) {
            Call3 calldata item = calls[i];
            (bool ok, bytes memory data) = item.target.call(item.callData);
            require(ok || item.allowFailure, "Multicall3: call failed");
            results[i] = Result(ok, data);
        }
    }

    function getBlockNumber() external view returns (uint256) {
        return block.number;
    }

    function getCurrentBlockTimestamp() external view returns (uint256) {
        return block.timestamp;
    }

    function getChainId() external view returns (uint256) {
        return block.chainid;
    }
}
