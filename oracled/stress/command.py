"""`oracled stress` and `oracled scenario`: argument handling and output, kept out of cli.py."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import stat
import sys
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from oracled.errors import ConfigError, TapeError, described
from oracled.stress.scenarios import SCENARIOS, build, scenario_accounts, scenario_config
from oracled.tape import DEFAULT_MAX_GAP_MS, TapeGapError, max_gap_ms, tape_lines

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
    scenario.add_argument("name", choices=tuple(SCENARIOS), help="the scenario to write")
    scenario.add_argument("--out", type=Path, required=True, help="tape file to write")
    scenario.add_argument("--seed", type=int, default=0, help="scenario seed (default: 0)")
    scenario.add_argument("--config-out", type=Path, help="also write the scenario's config")
    scenario.add_argument("--accounts-out", type=Path, help="also write its accounts (JSON)")


def _inputs(
    args: argparse.Namespace, files: contextlib.ExitStack
) -> tuple[Config, AccountsFile, Iterable[bytes]]:
    """The config, the accounts and the tape's lines: a file is read as the replay goes (a
    day's tape is gigabytes; a FIFO `oracled record` writes is read while it is written), and
    opened last, once the rest is known to be good; `files` closes it."""
    from oracled.config import load_config, parse_config
    from oracled.margin import load_accounts, parse_accounts

    if args.scenario is None and (args.tape is None or args.config is None):
        raise ValueError("give --tape and --config, or --scenario NAME")
    if args.scenario is not None and args.tape is not None:
        raise ValueError("give --tape or --scenario, not both")
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
    if args.scenario is not None:
        return cfg, accounts, build(args.scenario, args.seed).lines
    try:
        f = files.enter_context(args.tape.open("rb"))
    except OSError as exc:  # missing or unreadable: a bad argument, as `oracled replay` says
        raise ValueError(f"{args.tape}: cannot read ({exc.strerror})") from exc
    return cfg, accounts, tape_lines(f)


def cmd_stress(args: argparse.Namespace) -> int:
    from oracled.stress.output import plot, table
    from oracled.stress.runner import run_stress

    tape = args.tape if args.tape is not None else f"scenario {args.scenario}"
    try:
        with contextlib.ExitStack() as files:
            cfg, accounts, lines = _inputs(args, files)
            result = run_stress(
                cfg, lines, accounts, single_venue=args.venue, max_gap_ms=args.max_gap
            )
    except ConfigError as exc:
        print(f"oracled stress: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        print(f"oracled stress: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"oracled stress: {described(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    except TapeGapError as exc:  # no results: they would be of the tape before the gap only
        print(f"oracled stress: {tape}: {exc.where}; no results written", file=sys.stderr)
        for line in gap_advice(exc, cfg.oracle.round_interval_ms, args):
            print(f"  {line}", file=sys.stderr)
        return EXIT_TAPE_GAP
    except TapeError as exc:  # named by the tape's path, as `oracled replay` does
        print(f"oracled stress: {tape}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    summary = result.summary()
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
        print(
            f"oracled stress: {described(exc) if isinstance(exc, OSError) else exc}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_TAPE_ERRORS if malformed else EXIT_OK  # results written, but of a partial tape


def gap_advice(exc: TapeGapError, interval_ms: int, args: argparse.Namespace) -> list[str]:
    """What to run instead, as lines (`oracled replay` gives its own: TapeGapError.advice). A
    daemon that ran through the gap published a round every interval, which the engines meet
    only by running them all; one stopped in it started afresh, which only the part after the
    gap, stressed by itself, shows. Each run starts from the accounts file: no engine state
    crosses from one part to the other."""
    rounds, lift = exc.gap_ms // interval_ms, -(-exc.gap_ms // 1000)
    if args.tape is None:  # a scenario's tape has no daemon behind it, nor a file to split
        return [f"--max-gap {lift} (or 0: no limit) runs the scenario through it"]
    through = (
        f"if the daemon ran through the gap (a round every {interval_ms} ms without quotes):"
        f" --max-gap {lift} runs the margin engines through it as the daemon"
        f" published it, {rounds:,} rounds in the gap"
    )
    path, line = shlex.quote(str(args.tape)), exc.line
    rest = " ".join(
        shlex.quote(a) for a in ("--config", str(args.config), "--accounts", str(args.accounts))
    )
    return [
        through,
        "if it was stopped in the gap (its rounds after a restart start afresh, which no run of"
        f" the whole tape gives): stress each part by itself, each from the accounts file:"
        f" head -n {line - 1} {path} > before.jsonl; (head -n 1 {path}; tail -n +{line} {path})"
        f" > after.jsonl; oracled stress {rest} --tape after.jsonl (and before.jsonl alike)",
    ]


def cmd_scenario(args: argparse.Namespace) -> int:
    scenario = build(args.name, args.seed)
    outputs = [(args.out, scenario.tape())]
    if args.config_out is not None:
        outputs.append((args.config_out, scenario_config(scenario.name).encode()))
    if args.accounts_out is not None:
        outputs.append(
            (args.accounts_out, (json.dumps(scenario_accounts(), indent=2) + "\n").encode())
        )
    try:
        _write_all(outputs)
    except OSError as exc:
        print(f"oracled scenario: {described(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{args.out}: {scenario.name}: {scenario.description} ({len(scenario.lines) - 1} quotes)")
    return EXIT_OK


def _write_all(outputs: Sequence[tuple[Path, bytes]]) -> None:
    """Write each file, once every one of them is open for writing: a file that cannot be
    (a missing directory, a directory's name) leaves the others as they were, none made and
    none emptied; before, the tape was written and left behind when the config could not be.
    Opened without truncating, so a file that already exists is emptied only once all are
    open; one that is not a regular file (`/dev/null`, a FIFO) is written as it is."""
    opened: list[tuple[int, Path, bool]] = []
    try:
        for path, _ in outputs:
            made = not path.exists()
            opened.append(
                (os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666), path, made)
            )
    except OSError:
        for fd, path, made in opened:
            os.close(fd)
            if made:
                Path(os.path.realpath(path)).unlink(missing_ok=True)
        raise
    with contextlib.ExitStack() as files:
        for fd, _path, _ in opened:
            files.callback(os.close, fd)
        for (fd, path, _), (_, body) in zip(opened, outputs, strict=True):
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    os.ftruncate(fd, 0)
                view = memoryview(body)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, str(path)) from exc
