"""`oracled stress` and `oracled scenario`: argument handling and output, kept out of cli.py."""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

from oracled.errors import ConfigError, TapeError
from oracled.stress.scenarios import SCENARIOS, build, scenario_accounts, scenario_config
from oracled.tape import DEFAULT_MAX_GAP_MS, TapeGapError, max_gap_ms

if TYPE_CHECKING:  # the heavy parts load only when a command runs, not for `oracled run`
    from oracled.config import Config
    from oracled.margin import AccountsFile

__all__ = ["add_parsers", "cmd_scenario", "cmd_stress"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_TAPE_ERRORS, EXIT_TAPE_GAP = 0, 1, 2, 3, 4


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    names = ", ".join(SCENARIOS)
    stress = sub.add_parser(
        "stress", help="replay a tape through the oracle and naive price policies into margin"
    )
    stress.add_argument(
        "--config", type=Path, help="TOML config (default with --scenario: its own)"
    )
    stress.add_argument("--tape", type=Path, help="quote tape to replay")
    stress.add_argument("--scenario", choices=tuple(SCENARIOS), help=f"a synthetic tape: {names}")
    stress.add_argument("--seed", type=int, default=0, help="scenario seed (default: 0)")
    stress.add_argument("--accounts", type=Path, help="accounts file (default with --scenario)")
    stress.add_argument("--venue", help="the venue of the single-venue policy")
    stress.add_argument(
        "--max-gap",
        type=max_gap_ms,
        default=DEFAULT_MAX_GAP_MS,
        metavar="SECONDS",
        help="stop (exit 4) at a gap between quotes longer than this (default: 86400; 0: none)",
    )
    stress.add_argument("--json", type=Path, help="write the results as JSON here ('-': stdout)")
    stress.add_argument("--plot", type=Path, help="write a PNG of price paths here")

    scenario = sub.add_parser("scenario", help=f"write a synthetic quote tape: {names}")
    scenario.add_argument("name", choices=tuple(SCENARIOS))
    scenario.add_argument("--out", type=Path, required=True, help="tape file to write")
    scenario.add_argument("--seed", type=int, default=0)
    scenario.add_argument("--config-out", type=Path, help="also write the scenario's config")
    scenario.add_argument("--accounts-out", type=Path, help="also write its accounts (JSON)")


def _inputs(args: argparse.Namespace) -> tuple[Config, AccountsFile, list[bytes]]:
    from oracled.config import load_config, parse_config
    from oracled.margin import load_accounts, parse_accounts

    if args.scenario is None and (args.tape is None or args.config is None):
        raise ValueError("give --tape and --config, or --scenario NAME")
    if args.scenario is not None and args.tape is not None:
        raise ValueError("give --tape or --scenario, not both")
    if args.scenario is not None:
        lines = build(args.scenario, args.seed).lines
    else:
        try:
            f = args.tape.open("rb")
        except OSError as exc:  # missing or unreadable: a bad argument, as `oracled replay` says
            raise ValueError(f"{args.tape}: cannot read ({exc.strerror})") from exc
        with f:
            lines = f.readlines()
    if args.config is not None:
        cfg = load_config(args.config)
    else:
        cfg = parse_config(tomllib.loads(scenario_config(args.scenario)))
    if args.accounts is not None:
        accounts = load_accounts(args.accounts)
    elif args.scenario is not None:
        accounts = parse_accounts(scenario_accounts())
    else:
        raise ValueError("--accounts is required with --tape")
    return cfg, accounts, lines


def cmd_stress(args: argparse.Namespace) -> int:
    from oracled.stress.output import plot, table
    from oracled.stress.runner import run_stress

    try:
        cfg, accounts, lines = _inputs(args)
        result = run_stress(cfg, lines, accounts, single_venue=args.venue, max_gap_ms=args.max_gap)
    except ConfigError as exc:
        print(f"oracled stress: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        print(f"oracled stress: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"oracled stress: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except TapeGapError as exc:  # no results: they would be of the tape before the gap only
        print(f"oracled stress: {args.tape}: {exc} (--max-gap 0 replays any gap)", file=sys.stderr)
        return EXIT_TAPE_GAP
    except TapeError as exc:  # named by the tape's path, as `oracled replay` does
        print(f"oracled stress: {args.tape}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    summary = result.summary()
    tape = args.tape if args.tape is not None else f"scenario {args.scenario}"
    malformed = 0 if result.stats is None else result.stats.malformed
    if result.stats is not None:
        for error in result.stats.errors:  # as `oracled replay` names them
            print(f"{tape}:{error.line}: skipped: {error.message}", file=sys.stderr)
    for warning in result.warnings:
        print(f"oracled stress: warning: {warning}", file=sys.stderr)
    text = json.dumps(summary, indent=2) + "\n"
    if args.json is not None and str(args.json) == "-":
        sys.stdout.write(text)
        print(table(summary), file=sys.stderr)
    else:
        print(table(summary))
    try:
        if args.json is not None and str(args.json) != "-":
            args.json.write_text(text)
        if args.plot is not None:
            plot(result, args.plot)
    except (OSError, RuntimeError) as exc:  # a file not written, or no matplotlib
        print(f"oracled stress: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_TAPE_ERRORS if malformed else EXIT_OK  # results written, but of a partial tape


def cmd_scenario(args: argparse.Namespace) -> int:
    scenario = build(args.name, args.seed)
    try:
        args.out.write_bytes(scenario.tape())
        if args.config_out is not None:
            args.config_out.write_text(scenario_config(scenario.name))
        if args.accounts_out is not None:
            args.accounts_out.write_text(json.dumps(scenario_accounts(), indent=2) + "\n")
    except OSError as exc:
        print(f"oracled scenario: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{args.out}: {scenario.name}: {scenario.description} ({len(scenario.lines) - 1} quotes)")
    return EXIT_OK
