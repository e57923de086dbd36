"""On-chain feeds: one reader per chain reads every feed of a block in one Multicall3 call."""
