"""The stress results as a readable table, as JSON, and as a plot (matplotlib, optional)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from oracled.stress.runner import ORACLE, StressResult

__all__ = ["plot", "table"]

_COLUMNS = (
    ("policy", 24),
    ("liquidations", 12),
    ("wrongful", 8),
    ("missed", 6),
    ("paused s", 8),
    ("max err %", 9),
    ("follow s", 8),
    ("shortfall", 11),
)


def table(summary: dict[str, Any]) -> str:
    """One row per policy, the primary market's pause and error; lines for a terminal."""
    primary = summary["primary_market"]
    head = "  ".join(
        f"{name:>{w}}" if i else f"{name:<{w}}" for i, (name, w) in enumerate(_COLUMNS)
    )
    lines = [
        f"scenario: {summary['scenario'] or '(tape)'}   market: {primary}   "
        f"rounds: {summary['rounds']} x {summary['round_interval_ms']} ms",
        head,
        "-" * len(head),
    ]
    for name, p in summary["policies"].items():
        follow = "-" if p["follow_s"] is None else f"{p['follow_s']:g}"
        cells = (
            name,
            str(p["liquidations"]),
            str(p["wrongful_liquidations"]),
            str(p["missed_liquidations"]),
            f"{p['paused_s'].get(primary, 0):g}",
            f"{p['max_error_pct'].get(primary, 0):.3f}",
            follow,
            f"{p['shortfall']:.2f}",
        )
        lines.append(
            "  ".join(
                f"{c:>{w}}" if i else f"{c:<{w}}"
                for i, (c, (_, w)) in enumerate(zip(cells, _COLUMNS, strict=True))
            )
        )
    lines.append(
        "wrongful: liquidations the clean reference would not have made at that moment; "
        "missed: accounts it liquidated and this policy never did"
    )
    mark = summary.get("mark")
    if mark is not None:  # only a market with perpetuals has one; other tables stay as they were
        used = summary["policies"][ORACLE]["price_used"]
        lines.append(
            f"mark: live {mark['rounds']} rounds, max err {mark['max_error_pct']:.3f} % "
            f"(basis over index at most {mark['max_basis_pct']:.3f} %); oracled valued positions "
            f"at the mark {used['mark']} rounds, the index {used['index']}, "
            f"nothing {used['none']}"
        )
    return "\n".join(lines)


def _series(values: list[float | None]) -> npt.NDArray[np.float64]:
    """None (no price) becomes NaN, which matplotlib draws as a gap."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def plot(result: StressResult, path: Path) -> None:
    """Price paths of the primary market: venues, reference, each policy; pauses shaded."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # an optional extra
        raise RuntimeError("--plot needs matplotlib: pip install 'oracled[stress]'") from exc

    t0 = result.ts[0] if result.ts else 0
    xs = [(t - t0) / 1000 for t in result.ts]
    fig, ax = plt.subplots(figsize=(12, 6.5), dpi=100)
    for name, values in result.venues.items():
        ax.plot(xs, _series(values), color="0.75", linewidth=0.8, label=f"venue {name}")
    if result.has_mark:
        ax.plot(
            xs,
            _series(result.marks),
            color="tab:cyan",
            linewidth=1.2,
            linestyle="--",
            label="oracled mark",
        )
    ax.plot(
        xs,
        _series(result.reference),
        color="black",
        linewidth=1.4,
        linestyle=":",
        label="clean reference",
    )
    colours = {ORACLE: "tab:blue"}
    palette = iter(("tab:orange", "tab:green", "tab:purple"))
    for name, run in result.policies.items():
        if name == "clean_reference":
            continue
        colour = colours.get(name) or next(palette)
        ax.plot(
            xs,
            _series(run.prices),
            color=colour,
            linewidth=1.6 if name == ORACLE else 1.0,
            label=name,
        )
        for e in run.liquidations:
            ax.scatter(
                (e.ts - t0) / 1000,
                e.price,
                marker="x" if e.wrongful else "o",
                s=70,
                color="red" if e.wrongful else colour,
                zorder=5,
            )
    start = None
    for x, status in zip([*xs, None], [*result.oracle_status, "active"], strict=True):
        paused = status not in ("active", "degraded")
        if paused and start is None:
            start = x
        elif not paused and start is not None:
            ax.axvspan(start, x if x is not None else xs[-1], color="tab:blue", alpha=0.12)
            start = None
    ax.scatter([], [], marker="o", color="0.3", label="liquidation")
    ax.scatter([], [], marker="x", color="red", label="wrongful liquidation")
    ax.fill_between([], [], color="tab:blue", alpha=0.12, label="oracled not live")
    title = result.header.get("scenario") or "tape"
    ax.set_title(f"{title}: {result.primary}")
    ax.set_xlabel("seconds from the first round")
    ax.set_ylabel(result.primary)
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        fig.savefig(path, format="png")  # whatever the name: matplotlib would guess from it
    finally:
        plt.close(fig)
