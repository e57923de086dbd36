"""docs/onchain.md's *Counters and metrics* against what a chain reader counts."""

from __future__ import annotations

import dataclasses
import re

from catalogue import ROOT

from oracled.jsonrpc import EndpointStats
from oracled.sources.evm.chain import ChainStats


def test_the_counters_paragraph_names_every_field_of_the_chain_stats() -> None:
    """The section lists what `ChainStats` and `EndpointStats` hold, the counters behind the
    `oracled_chain_*` families: it lacked the reader's `restarts` and the pools' `spot_gaps`
    (and the `mode` and `max_block_age_s` it holds), which were exported all the same. The
    chain's name and an endpoint's are the labels, and `endpoints` and `by_kind` are the
    per-endpoint list and its errors by kind, named in words."""
    text = (ROOT / "docs" / "onchain.md").read_text()
    section = text.split("\n## Counters and metrics\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(\w+)`", section))
    fields = {f.name for cls in (ChainStats, EndpointStats) for f in dataclasses.fields(cls)}
    assert sorted(fields - named - {"chain", "name", "endpoints", "by_kind"}) == []
