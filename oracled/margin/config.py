"""The accounts file: risk policy, collateral assets, instruments with their tiers, accounts.

Read from TOML or JSON (by suffix) into frozen pydantic models and checked as a whole, like the
daemon's config: every problem is reported with its key path and raised together as one
`ConfigError`. The models are the starting state; the engine keeps its own mutable copy.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from oracled.errors import ConfigError, shown
from oracled.files import read_regular

__all__ = [
    "AccountConfig",
    "AccountsFile",
    "AssetConfig",
    "InstrumentConfig",
    "PositionConfig",
    "RiskPolicy",
    "SignedFeed",
    "StrategyConfig",
    "Tier",
    "load_accounts",
    "parse_accounts",
]

_PAIR = r"^[A-Z0-9]{1,20}/[A-Z0-9]{1,20}$"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_\-.]{0,63}$"
Pair = Annotated[str, Field(pattern=_PAIR)]
Name = Annotated[str, Field(pattern=_NAME)]
Rate = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
Share = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]
# Amounts and quantities are at most this in size: no real book comes near it, and it keeps every
# product and sum the engine forms finite (1e308 x a price is inf, and inf - inf a NaN decision).
_MAX_AMOUNT = 1e18
Money = Annotated[float, Field(ge=-_MAX_AMOUNT, le=_MAX_AMOUNT, allow_inf_nan=False)]
PosMoney = Annotated[float, Field(gt=0, le=_MAX_AMOUNT, allow_inf_nan=False)]
Multiple = Annotated[float, Field(ge=1, le=100, allow_inf_nan=False)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class Tier(_Frozen):
    """One notional bracket: the rates apply to the part of the notional inside the bracket.

    `warning` and `reduce_only` are multiples of this bracket's maintenance margin: an account
    whose equity falls below the sum of them is called (docs/margin.md, states). Like the
    rates, they must not fall from one tier to the next (`InstrumentConfig`).
    """

    up_to: PosMoney | None = None  # upper bound of the bracket in the numeraire; None: no bound
    initial: Rate
    maintenance: Rate
    warning: Multiple = 1.5
    reduce_only: Multiple = 1.2

    @model_validator(mode="after")
    def _ordered(self) -> Tier:
        if self.maintenance > self.initial:
            raise ValueError("maintenance must not exceed initial")
        if self.reduce_only > self.warning:
            raise ValueError("reduce_only must not exceed warning")
        return self


def _falls(i: int, below: Tier, tier: Tier, key: str) -> str | None:
    """The problem of `tiers[i]` if its `key` is below that of the tier before it, else None.

    Rates that fall with size would make a larger position cheaper at the margin: no venue's
    table has that shape (each tier's rate is at least the one below it). The warning and
    reduce-only levels weigh each bracket's maintenance by its multiple, so a multiple that
    falls gives a larger position a thinner cushion over maintenance, relative to its
    requirement, where the rates say it is riskier: most likely one set on the first tier
    alone, the next ones keeping the default.
    """
    value, before = getattr(tier, key), getattr(below, key)
    if value >= before:
        return None
    where = f"tiers[{i}]: {key} {value}"
    if key in ("initial", "maintenance"):
        why = "rates must not fall as the notional grows"
    else:
        where += "" if key in tier.model_fields_set else " (the default)"
        why = "multiples must not fall as the notional grows: set them on every tier"
    return f"{where} is below tiers[{i - 1}]'s {before} ({why})"


class InstrumentConfig(_Frozen):
    """A perpetual contract on one oracle market, settled in the numeraire."""

    market: Pair
    tiers: tuple[Tier, ...] = Field(min_length=1)
    #: Concentration limit: an account holding more notional than this is reduce-only.
    max_notional: PosMoney | None = None

    @model_validator(mode="before")
    @classmethod
    def _tuples(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("tiers"), list):
            return {**data, "tiers": tuple(data["tiers"])}
        return data

    @model_validator(mode="after")
    def _brackets(self) -> InstrumentConfig:
        bounds = [t.up_to for t in self.tiers]
        if bounds[-1] is not None:
            raise ValueError("tiers: the last tier must have no up_to (it takes the rest)")
        inner = [b for b in bounds[:-1] if b is not None]
        if len(inner) != len(bounds) - 1 or inner != sorted(set(inner)):
            raise ValueError("tiers: up_to must be set and increasing on every tier but the last")
        falling = [
            problem
            for i, (below, tier) in enumerate(pairwise(self.tiers), 1)
            for key in ("initial", "maintenance", "warning", "reduce_only")
            if (problem := _falls(i, below, tier, key)) is not None
        ]
        if falling:
            raise ValueError("; ".join(falling))
        return self


class AssetConfig(_Frozen):
    """A collateral asset. The numeraire has no market; every other asset is priced by one."""

    market: Pair | None = None
    haircut: Share = 0.0


class StrategyConfig(_Frozen):
    """A per-strategy sub-account: its own virtual balance and limits inside one account."""

    balance: Money
    max_notional: PosMoney | None = None


class PositionConfig(_Frozen):
    instrument: Name
    qty: Money  # signed, in base units: positive long, negative short
    entry: PosMoney
    strategy: Name | None = None
    #: Set for an isolated position: the margin set aside for it, outside the cross pool.
    isolated_margin: PosMoney | None = None


class AccountConfig(_Frozen):
    id: Name
    collateral: dict[Name, Money] = Field(default_factory=dict)
    positions: tuple[PositionConfig, ...] = ()
    strategies: dict[Name, StrategyConfig] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _tuples(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("positions"), list):
            return {**data, "positions": tuple(data["positions"])}
        return data


class RiskPolicy(_Frozen):
    """How prices are trusted and what a liquidation costs (docs/margin.md, prices)."""

    allow_degraded: bool = True
    #: A report older than this (decision time minus report time) is not fresh.
    max_report_age_ms: Annotated[int, Field(ge=1, le=86_400_000)] = 5_000
    #: A report stamped further ahead of the decision time than this (clock skew, a clock
    #: stepped) is not fresh either: its age says nothing until the decision time reaches it.
    max_report_future_ms: Annotated[int, Field(ge=0, le=86_400_000)] = 2_000
    #: Use the mark price of a report when it carries a live one, else the index price.
    use_mark: bool = True
    #: A mark not made from the perpetuals (`fallback`: the index plus the last basis, decayed;
    #: or none beside a live index, out of its band): `use` it (the index when there is none),
    #: value positions at the `index` instead, or `freeze` the market.
    mark_fallback: Literal["use", "index", "freeze"] = "use"
    #: How long a paused or unknown market freezes liquidations before `after_grace` applies.
    pause_grace_ms: Annotated[int, Field(ge=0, le=30 * 86_400_000)] = 300_000
    #: `freeze` (the default): nothing is ever decided on a last good price. `last_good`: after
    #: the grace period, act on it with maintenance x (1 + pause_buffer); that liquidates
    #: through a whole daemon outage on a price nobody has seen since (docs/margin.md).
    after_grace: Literal["freeze", "last_good"] = "freeze"
    #: After the grace period, maintenance on a last good price is multiplied by 1 + buffer.
    pause_buffer: Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)] = 0.5
    #: A margin call is cleared (warning to healthy, reduce-only to warning) only once equity
    #: is above the better state's level by this fraction of it: no call and clear at every
    #: tick for an account on the bar. Worse states and liquidation take the bare levels.
    call_hysteresis: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.05
    #: Fraction of closed notional taken from the remaining equity into the insurance fund.
    liquidation_fee: Share = 0.005
    #: A liquidation closes at the price moved against the position by this fraction.
    liquidation_slippage: Share = 0.0
    insurance_fund: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0


_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


class SignedFeed(_Frozen):
    """Signed mode (docs/margin.md, signed mode): the service acts only on prices a quorum of
    these signers signed for this deployment; an unsigned frame can be changed on the way."""

    #: The deployment the daemons sign for (their `signing.deployment`, in /v1/info).
    deployment: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    #: Identity (one per daemon) -> the address, or addresses during a key rotation, it signs
    #: with: the quorum counts identities, so one daemon's two keys are one signer.
    signers: dict[Name, str | list[str]] = Field(min_length=1)
    quorum: Annotated[int, Field(ge=1)] = 1

    @model_validator(mode="after")
    def _signers(self) -> SignedFeed:
        owner: dict[str, str] = {}
        problems: list[str] = []
        for identity, listed in self.signers.items():
            addresses = [listed] if isinstance(listed, str) else listed
            if not addresses:
                problems.append(f"signers.{identity}: give it at least one address")
            for address in addresses:
                if not _ADDRESS.fullmatch(address):
                    problems.append(f"signers.{identity}: {shown(address)} is no 0x address")
                elif (first := owner.setdefault(address.lower(), identity)) != identity:
                    problems.append(f"signers.{identity}: {address} is also listed for {first!r}")
        if self.quorum > len(self.signers):
            problems.append(
                f"quorum: {self.quorum} is more than the {len(self.signers)} identities in signers"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def allowed(self) -> dict[str, list[str]]:
        """The signers as `OracleClient` takes them: identity -> addresses."""
        return {k: [v] if isinstance(v, str) else list(v) for k, v in self.signers.items()}


class AccountsFile(_Frozen):
    policy: RiskPolicy = Field(default_factory=RiskPolicy)
    #: Set: the service reads signed frames and acts only on verified prices.
    signed: SignedFeed | None = None
    assets: dict[Name, AssetConfig]
    instruments: dict[Name, InstrumentConfig]
    accounts: tuple[AccountConfig, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _tuples(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("accounts"), list):
            return {**data, "accounts": tuple(data["accounts"])}
        return data

    @property
    def numeraire(self) -> str:
        return next(name for name, asset in self.assets.items() if asset.market is None)

    def markets(self) -> tuple[str, ...]:
        """Every oracle market the file needs, instruments first, in file order."""
        seen = [i.market for i in self.instruments.values()]
        seen += [a.market for a in self.assets.values() if a.market is not None]
        return tuple(dict.fromkeys(seen))


def _relations(f: AccountsFile) -> list[str]:
    problems: list[str] = []
    numeraires = [n for n, a in f.assets.items() if a.market is None]
    if len(numeraires) != 1:
        problems.append(f"assets: exactly one asset must have no market (found {numeraires})")
    ids: set[str] = set()
    for i, acct in enumerate(f.accounts):
        where = f"accounts[{i}]"
        if acct.id in ids:
            problems.append(f"{where}.id: duplicate account id {acct.id!r}")
        ids.add(acct.id)
        problems.extend(
            f"{where}.collateral.{asset}: unknown asset"
            for asset in acct.collateral
            if asset not in f.assets
        )
        for j, pos in enumerate(acct.positions):
            if pos.instrument not in f.instruments:
                problems.append(f"{where}.positions[{j}].instrument: unknown {pos.instrument!r}")
            if pos.strategy is not None and pos.strategy not in acct.strategies:
                problems.append(f"{where}.positions[{j}].strategy: unknown {pos.strategy!r}")
            if pos.qty == 0 or not math.isfinite(pos.qty):
                problems.append(f"{where}.positions[{j}].qty: must be a non-zero number")
    return problems


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out or "(top level)"


def parse_accounts(data: Any) -> AccountsFile:
    """Validate already-parsed data; raise ConfigError listing every problem."""
    try:
        parsed = AccountsFile.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # A list whose items failed is also "too short" (the failed items do not count): said
        # already by the items' own problems, so not said again.
        inner = {e["loc"][:n] for e in errors for n in range(len(e["loc"]))}
        raise ConfigError(
            [
                f"{_loc(e['loc'])}: {str(e['msg']).removeprefix('Value error, ')}"
                for e in errors
                if not (e["type"] == "too_short" and e["loc"] in inner)
            ]
        ) from None
    problems = _relations(parsed)
    if problems:
        raise ConfigError(problems)
    return parsed


def load_accounts(path: str | Path) -> AccountsFile:
    """Read an accounts file: `.json` as JSON, anything else as TOML."""
    path = Path(path)
    try:
        raw = read_regular(path)[0]  # a FIFO or a device is refused, not waited on
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror or exc})"]) from None
    try:
        data = json.loads(raw) if path.suffix == ".json" else tomllib.loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: {exc}"]) from None
    except RecursionError:  # both parsers recurse per level of nesting
        raise ConfigError([f"{path}: nested too deeply"]) from None
    return parse_accounts(data)
