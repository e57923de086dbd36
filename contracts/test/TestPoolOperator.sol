// SPDX-License-Identifier: Apache-2.0
// Test-only: adds, removes and swaps liquidity in a Uniswap v3 pool. The pool pulls its tokens
// through callbacks (it ships no router), so this contract holds the tokens it pays with, owns
// the positions it mints, and pays the pool it is currently operating on, and no other caller.
pragma solidity ^0.8.20;

interface IPoolForTests {
    function token0() external view returns (address);
    function token1() external view returns (address);
    function mint(address recipient, int24 tickLower, int24 tickUpper, uint128 amount, bytes calldata data)
        external
        returns (uint256 amount0, uint256 amount1);
    function burn(int24 tickLower, int24 tickUpper, uint128 amount)
        external
        returns (uint256 amount0, uint256 amount1);
    function swap(
        address recipient,
        bool zeroForOne,
        int256 amountSpecified,
        uint160 sqrtPriceLimitX96,
        bytes calldata data
    ) external returns (int256 amount0, int256 amount1);
}

interface ITokenForTests {
    function transfer(address to, uint256 amount) external returns (bool);
}

contract TestPoolOperator {
    // TickMath's price limits, one step inside so that a swap may run to the end of the range.
    uint160 private constant MIN_SQRT_LIMIT = 4295128739 + 1;
    uint160 private constant MAX_SQRT_LIMIT = 1461446703485210103287273052203988822378723970342 - 1;

    address private _active; // the pool allowed to call back, only during an operation

    function mint(address pool, int24 tickLower, int24 tickUpper, uint128 amount) external {
        _active = pool;
        IPoolForTests(pool).mint(address(this), tickLower, tickUpper, amount, "");
        _active = address(0);
    }

    function burn(address pool, int24 tickLower, int24 tickUpper, uint128 amount) external {
        IPoolForTests(pool).burn(tickLower, tickUpper, amount);
    }

    /// Sells `amountIn` of token0 (zeroForOne) or token1 into the pool, with no price limit.
    function swapExactIn(address pool, bool zeroForOne, uint256 amountIn) external {
        _active = pool;
        IPoolForTests(pool).swap(
            address(this),
            zeroForOne,
            int256(amountIn),
            zeroForOne ? MIN_SQRT_LIMIT : MAX_SQRT_LIMIT,
            ""
        );
        _active = address(0);
    }

    function uniswapV3MintCallback(uint256 amount0Owed, uint256 amount1Owed, bytes calldata) external {
        _pay(amount0Owed, amount1Owed);
    }

    function uniswapV3SwapCallback(int256 amount0Delta, int256 amount1Delta, bytes calldata) external {
        _pay(amount0Delta > 0 ? uint256(amount0Delta) : 0, amount1Delta > 0 ? uint256(amount1Delta) : 0);
    }

    function _pay(uint256 amount0, uint256 amount1) private {
        require(msg.sender == _active && _active != address(0), "not the pool being operated");
        IPoolForTests pool = IPoolForTests(msg.sender);
        if (amount0 > 0) require(ITokenForTests(pool.token0()).transfer(msg.sender, amount0), "pay0");
        if (amount1 > 0) require(ITokenForTests(pool.token1()).transfer(msg.sender, amount1), "pay1");
    }
}
