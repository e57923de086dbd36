// SPDX-License-Identifier: Apache-2.0
// Test-only: a contract that answers `VERSION()` with the version it was deployed with, and
// nothing else: an OracledFeed of a version the pusher does not speak, as far as its start sees.
pragma solidity ^0.8.19;

contract TestFeedVersion {
    uint8 public immutable VERSION;

    constructor(uint8 version) {
        VERSION = version;
    }
}
