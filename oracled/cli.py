"""The `oracled` command: run, check-config, replay, record, demo, audit, margin, stress, scenario.

Exit codes: 0 success, 1 runtime failure (the shipped deployments restart it), 2 invalid config
or usage (they do not: deploy/README.md), 3 replay (or stress) finished but the tape had
malformed lines (reported on stderr), 4 replay (or stress) stopped at a gap between quotes
longer than --max-gap, 130 replay interrupted (SIGINT): its output is incomplete. Config
warnings (`config.config_warnings`) are no failure: check-config prints them on stderr and exits
0, run logs them at start-up.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import math
import os
import signal
import stat
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING

from oracled import __version__
from oracled.errors import ConfigError, TapeError, described, shown
from oracled.tape import DEFAULT_MAX_GAP_MS, max_gap_ms

# The rest is imported where it is used: `main` catches signals first (see `_Stops`), and
# pydantic, structlog and asyncio take a fifth of a second to import.
if TYPE_CHECKING:
    import asyncio

    from _typeshed import SupportsWrite

    from oracled.config import Config
    from oracled.service import Service

__all__ = ["main"]

DEFAULT_CONFIG = Path("config/default.toml")
# The same file as shipped: inside the package in a wheel (pyproject's force-include), beside the
# package in a source checkout or an editable install.
_SHIPPED_CONFIGS = (
    Path(__file__).resolve().parent / "default.toml",
    Path(__file__).resolve().parent.parent / DEFAULT_CONFIG,
)
_DEFAULT_CONFIG_COMMANDS = frozenset({"run", "replay", "record", "demo"})
#: Commands that run the daemon: they keep the early signal latches and hand them to it.
_DAEMON_COMMANDS = frozenset({"run", "record", "demo"})
#: Long-running commands that keep the stop latch (not SIGHUP's: they do not reload).
_STOPPED_COMMANDS = _DAEMON_COMMANDS | {"margin"}
EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_TAPE_ERRORS, EXIT_TAPE_GAP = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command that SIGINT ended


def default_config() -> Path:
    """The config a command reads without `--config`: `config/default.toml` of the working
    directory, else the shipped one, so that `oracled demo` works from any directory and from a
    wheel. If neither exists, the relative path, which `load_config` reports as unreadable."""
    if DEFAULT_CONFIG.is_file():
        return DEFAULT_CONFIG
    return next((path for path in _SHIPPED_CONFIGS if path.is_file()), DEFAULT_CONFIG)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _listen(value: str) -> str:
    from oracled.config import parse_listen

    try:
        parse_listen(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{shown(value)}: {exc}") from None
    return value


def _duration(value: str) -> float:
    """`demo --duration SECONDS` (an argparse type): a finite number above 0. NaN ended the
    demo in a traceback, and 0 or less stopped it as soon as it had started, exit 0."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"{shown(value)}: not a number of seconds > 0")
    return seconds


class _Parser(argparse.ArgumentParser):
    """argparse, with its help and version failing as the commands' output does when stdout
    cannot take them: one line on stderr, exit 1 (a reader gone away is no error).

    argparse drops a write error of what it prints, so `oracled --help > /dev/full` (any
    command's --help, --version) lost the text and exited 0. It prints before `main` handles
    errors, hence here. Its messages to stderr (a usage error) keep argparse's way: with stderr
    failing there is nowhere to say more, and the exit stays 2."""

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        if not message or file is None or file is not sys.stdout:
            super()._print_message(message, file)
            return
        try:
            _write_out(message)
        except BrokenPipeError:  # the reader went away (`oracled --help | head -1`)
            _let_stdout_go()
        except OSError as exc:
            _let_stdout_go()
            with contextlib.suppress(OSError):
                print(f"{self.prog}: {described(exc)}", file=sys.stderr)
            self.exit(EXIT_FAILURE)


def _write_out(text: str) -> None:
    """`text` on stdout, now: a failure is raised here, not at some later flush."""
    sys.stdout.write(text)
    sys.stdout.flush()


def _parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = _Parser(prog="oracled", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"oracled {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config",
            type=Path,
            help=f"TOML config file (default: {DEFAULT_CONFIG}, else the one shipped with oracled)",
        )

    run = sub.add_parser("run", help="run the daemon")
    with_config(run)
    run.add_argument("--listen", type=_listen, help="HOST:PORT for the API (overrides the config)")

    check = sub.add_parser("check-config", help="validate a config file and report every problem")
    check.add_argument("file", type=Path, help="the TOML config file to check")
    check.add_argument(
        "--as-daemon",
        action="store_true",
        help="also read what `run` reads at start besides the file (the signing and push "
        "keys, the signing lease, the NATS credentials and client library, the manual pauses "
        "file, the audit path; read only): run it with the daemon's environment, files and "
        "working directory",
    )

    replay = sub.add_parser("replay", help="run a quote tape through the core")
    with_config(replay)
    replay.add_argument("tape", type=Path, help="the tape ('-': stdin)")
    replay.add_argument("--out", type=Path, help="JSON Lines output (default: stdout)")
    replay.add_argument(
        "--max-gap",
        type=max_gap_ms,
        default=DEFAULT_MAX_GAP_MS,
        metavar="SECONDS",
        help="stop (exit 4) at a gap between quotes longer than this (default: 86400; 0: none)",
    )

    record = sub.add_parser("record", help="run the daemon and write every quote to a tape")
    with_config(record)
    record.add_argument("--out", type=Path, required=True, help="tape file to write")
    record.add_argument(
        "--append",
        action="store_true",
        help="continue a tape that exists (recorded with the same config) instead of refusing",
    )
    record.add_argument(
        "--listen", type=_listen, help="HOST:PORT for the API (overrides the config)"
    )

    demo = sub.add_parser("demo", help="simulated venues on loopback, spikes, silences, pauses")
    demo.add_argument(
        "--config",
        type=Path,
        help="config whose sources are each served by a simulator "
        f"(default: {DEFAULT_CONFIG}, else the one shipped with oracled)",
    )
    demo.add_argument("--listen", type=_listen, help="HOST:PORT for the API (overrides the config)")
    demo.add_argument("--duration", type=_duration, help="stop after this many seconds")
    demo.add_argument("--record", type=Path, help="also write the quotes to a tape")

    from oracled.margin.command import add_parser as add_margin
    from oracled.stress.command import add_parsers as add_stress

    add_margin(sub)
    add_stress(sub)
    from oracled.publish.audit_cli import add_parser as add_audit

    add_audit(sub)
    return parser


def _load(path: Path) -> tuple[Config, bytes]:
    """The config and its file's bytes (kept in the audit trail, with their sha256)."""
    import structlog

    from oracled.config import log_config_warnings, read_config_text
    from oracled.logs import setup_logging

    cfg, text = read_config_text(path)
    setup_logging(cfg.log.level, cfg.log.format)
    log_config_warnings(cfg, structlog.get_logger("oracled"))  # the lines check-config prints
    return cfg, text


def _start_problems(cfg: Config) -> list[str]:
    """What `Service` refuses at start (exit 2) beyond the file: the secrets the config names,
    the signing lease, the manual pauses file and an audit path no trail can be kept in, read
    by the daemon's own loaders (read only: no lock taken, nothing written; the daemon may still
    run beside it). Deployments run this check before the daemon (compose's config-check, the
    pods' init container), where the daemon's own refusal would be restarted forever. Each
    loader is imported only when its table is on: the NATS client and the key libraries take
    most of a second."""
    problems: list[str] = []

    def read(load: Callable[[], object]) -> None:
        try:
            load()
        except ConfigError as exc:
            problems.extend(exc.problems)

    if cfg.signing.enabled:
        from oracled.publish.sign_lease import check_sign_lease
        from oracled.publish.signer import load_signing_key

        try:
            address = load_signing_key(cfg.signing.key_file, cfg.signing.key_env).address
        except ConfigError as exc:
            problems.extend(exc.problems)
        else:  # the lease file is the key's: read only (no lock, no write)
            read(lambda: check_sign_lease(cfg.signing.lease_file, address))
    if cfg.push.enabled:
        from oracled.publish.chain_push import load_push_key

        read(lambda: load_push_key(cfg.push))
    if cfg.nats.enabled:
        from oracled.publish.nats_auth import load_nats_auth
        from oracled.publish.nats_conn import require_supported_client

        read(require_supported_client)
        read(lambda: load_nats_auth(cfg.nats))
    if cfg.oracle.manual_pauses_file is not None:
        from oracled.manual import ManualPauses

        pauses = ManualPauses(Path(cfg.oracle.manual_pauses_file))  # read, never claimed
        try:
            read(pauses.load)
        finally:
            pauses.close()
    if cfg.audit.enabled:
        from oracled.publish.audit import check_audit_path

        read(lambda: check_audit_path(Path(cfg.audit.path)))
    return problems


def _cmd_check(args: argparse.Namespace) -> int:
    from oracled.config import config_warnings, load_config

    try:
        cfg = load_config(args.file)
        if args.as_daemon and (problems := _start_problems(cfg)):
            raise ConfigError(problems)
    except ConfigError as exc:
        print(f"{args.file}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    sources = sum(1 for s in cfg.sources.values() if s.enabled)
    print(f"{args.file}: ok ({len(cfg.markets)} markets, {sources} enabled sources)")
    for warning in config_warnings(cfg):  # not problems: the file is valid, exit 0
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


class _EarlySignals:
    """Handlers of `signals` from the first line of `main`, before the daemon's event loop
    takes over (importing the runtime takes about a second); `_restore` gives the previous
    handlers back, for commands that are no daemon."""

    def __init__(
        self, signals: tuple[signal.Signals, ...], handler: Callable[[int, FrameType | None], None]
    ) -> None:
        self._previous: dict[signal.Signals, Callable[[int, FrameType | None], object] | int] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                previous = signal.signal(sig, handler)
                self._previous[sig] = signal.SIG_DFL if previous is None else previous

    def _restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}


class _Stops(_EarlySignals):
    """SIGTERMs and SIGINTs that come before the daemon's event loop handles them: Python's
    default would end the process at once, with no line and exit 143, and as PID 1 of a
    container (no handler: the kernel drops the signal) it would run on until SIGKILL. The
    first is kept and the daemon stops as soon as its loop runs, before starting anything
    (`Service.early_stop`); other commands get the previous handlers back (`release`), and
    the signal again if one came meanwhile."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        super().__init__((signal.SIGTERM, signal.SIGINT), self._on_stop)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal = signal.Signals(signum)

    def release(self) -> signal.Signals | None:
        """Give SIGTERM and SIGINT their previous handlers back; return the one that came."""
        self._restore()
        return self.signal


class _Hangups(_EarlySignals):
    """SIGHUPs that come before the daemon's event loop handles them: Python's default would
    end the process without a word, as a `systemctl reload` just after `start` did. They are
    counted, and the daemon reloads once it runs; other commands get SIGHUP's previous meaning
    back (`release`), and any SIGHUP that came meanwhile."""

    def __init__(self) -> None:
        self.count = 0
        super().__init__((signal.SIGHUP,), self._on_hangup)

    def _on_hangup(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1

    def release(self) -> int:
        """Give SIGHUP its previous handler back; return how many came meanwhile."""
        self._restore()
        return self.count


def _latched(hangups: _Hangups, stops: _Stops) -> Callable[[Service], None]:
    """Hand a daemon's service the signals the command line caught before its loop ran."""

    def hand_over(service: Service) -> None:
        service.early_hangups = lambda: hangups.count
        service.early_stop = lambda: stops.signal

    return hand_over


def _cmd_run(
    args: argparse.Namespace, hangups: _Hangups, stops: _Stops, record: Path | None = None
) -> int:
    cfg, text = _load(args.config)  # before importing the runtime: a bad config fails fast
    from oracled.service import Service, run_service

    try:
        service = Service(
            cfg,
            listen=args.listen,
            record=record,
            record_append=record is not None and args.append,
            config_path=args.config,
            config_text=text,
            freeze_gc=True,
        )
    except TapeError as exc:  # the tape exists, or another recorder writes it: left untouched
        print(f"oracled record: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    _latched(hangups, stops)(service)
    run_service(service, _loop_factory())
    failed = service.failed or service.tape_error is not None  # logged where it happened
    return EXIT_FAILURE if failed else EXIT_OK


def _cmd_replay(args: argparse.Namespace) -> int:
    from oracled.config import load_config
    from oracled.replay import chain_env_hint, replay, revision_warning
    from oracled.tape import TapeGapError, TapeHeader, TapeLineError, pricing_digest, tape_lines

    stdin = str(args.tape) == "-"
    name = "<stdin>" if stdin else str(args.tape)

    def skipped(error: TapeLineError) -> None:  # as met: a long bad tape is not held to the end
        print(f"{name}:{error.line}: skipped: {error.message}", file=sys.stderr)

    cfg = load_config(args.config)
    audit_tape = False  # `oracled audit --tape` wrote it: a gap's advice names that command
    header_read: TapeHeader | None = None  # for the advice: how to split the tape

    def check_config(header: TapeHeader) -> None:  # another config or revision: said, once
        nonlocal audit_tape, header_read
        # Both number the rounds; `record` names its config, `oracled audit --tape` never does.
        audit_tape = header.first_round is not None and header.config_sha256 is None
        header_read = header
        digest = pricing_digest(cfg)
        if header.config_sha256 is not None and header.config_sha256 != digest:
            print(
                f"{name}: warning: recorded with another pricing config (sha256"
                f" {header.config_sha256[:12]}, {args.config} is {digest[:12]}): the reports"
                " may differ from the live ones"
                + chain_env_hint(args.config, cfg, header.config_sha256),
                file=sys.stderr,
            )
        warning = revision_warning(header)
        if warning is not None:
            print(f"{name}: warning: {warning}", file=sys.stderr)

    if args.out is None and sys.stdout is None:  # `>&-`: Python has no stdout at all
        print("oracled replay: stdout is closed: give --out FILE", file=sys.stderr)
        return EXIT_FAILURE
    if stdin and sys.stdin is None:
        print("oracled replay: stdin is closed: give the tape's path", file=sys.stderr)
        return EXIT_FAILURE
    options = {"on_error": skipped, "on_header": check_config, "max_gap_ms": args.max_gap}
    try:
        tape = sys.stdin.buffer if stdin else args.tape.open("rb")
    except OSError as exc:  # missing, a directory, unreadable: a bad argument, like a config
        print(f"oracled replay: {args.tape}: cannot read ({exc.strerror})", file=sys.stderr)
        return EXIT_CONFIG
    try:
        # Opening --out for writing empties it: were it the tape, the recording would be lost.
        if args.out is not None and _reads_from(tape, args.out):
            print(f"oracled replay: --out is the tape itself ({args.out})", file=sys.stderr)
            tape.close()
            return EXIT_CONFIG
        with contextlib.nullcontext(tape) if stdin else tape:
            if args.out:
                with args.out.open("wb") as out:
                    stats = replay(cfg, tape_lines(tape), out, **options)
            else:
                stats = replay(cfg, tape_lines(tape), sys.stdout.buffer, **options)
    except BrokenPipeError:  # the reader went away (e.g. piped into head): not an error
        return EXIT_OK
    except KeyboardInterrupt:  # Ctrl-C, `timeout -s INT`: what was written is not the whole tape
        print("oracled replay: interrupted: the output is incomplete", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        print(f"oracled replay: {described(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    except TapeGapError as exc:  # the output ends with the last round before the gap
        print(f"{name}: {exc}", file=sys.stderr)
        interval, markets = cfg.oracle.round_interval_ms, len(cfg.markets)
        advice = exc.advice(
            interval, markets, name, str(args.config), audit=audit_tape, header=header_read
        )
        for line in advice:
            print(f"  {line}", file=sys.stderr)
        return EXIT_TAPE_GAP
    except TapeError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    # a tape without commands (every version 1 tape) is summed up as before them
    commands = f"; {stats.commands} manual command(s) applied" if stats.commands else ""
    print(
        f"replayed {stats.quotes} quotes ({stats.dropped} dropped by the core) in {stats.rounds} "
        f"rounds: {stats.reports} reports{commands}; {stats.malformed} malformed line(s) skipped",
        file=sys.stderr,
    )
    if stats.drops:  # which venue and why, as the live daemon counts them
        counts = ", ".join(f"{s} {r} {n}" for (s, r), n in sorted(stats.drops.items()))
        print(f"dropped by the core: {counts}", file=sys.stderr)
    return EXIT_TAPE_ERRORS if stats.malformed else EXIT_OK


def _reads_from(tape: IO[bytes], out: Path) -> bool:
    """Whether the open `tape` is the regular file `out` names (which opening `out` empties):
    under a second name, or as the stdin a shell redirected from it (`replay - < t.jsonl --out
    t.jsonl`), which a comparison of the paths does not see. A terminal read and written at
    once is no such file."""
    try:
        held = os.fstat(tape.fileno())
        return stat.S_ISREG(held.st_mode) and os.path.samestat(held, out.stat())
    except (OSError, ValueError):  # `out` not there yet; a stdin without a descriptor
        return False


def _cmd_demo(args: argparse.Namespace, hangups: _Hangups, stops: _Stops) -> int:
    cfg, _ = _load(args.config)
    from oracled.demo import run_demo

    try:
        ok = run_demo(
            cfg,
            args.listen or cfg.api.listen,
            args.duration,
            args.record,
            _loop_factory(),
            _latched(hangups, stops),
        )
    except TapeError as exc:  # the tape exists, or a recorder writes it: left untouched
        print(f"oracled demo: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK if ok else EXIT_FAILURE  # a failure is logged where it happened


def _cmd_margin_tools(args: argparse.Namespace, stops: _Stops) -> int:
    """The margin service and the stress simulator (docs/margin.md, docs/stress.md)."""
    if args.command == "margin":  # a stop while it starts is a stop, as for the daemon
        from oracled.margin.command import cmd_margin

        return cmd_margin(args, _loop_factory(), lambda: stops.signal)
    from oracled.stress.command import cmd_scenario, cmd_stress

    return cmd_stress(args) if args.command == "stress" else cmd_scenario(args)


#: What OpenBLAS reads for the size of its thread pool, in its order of precedence.
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")


def _one_blas_thread() -> None:
    """Run numpy's OpenBLAS on one thread unless the environment says otherwise.

    OpenBLAS starts a thread per CPU but one when numpy is first imported, for matrix products
    the daemon never computes. The deployments set `OPENBLAS_NUM_THREADS=1`; this gives it to
    an `oracled` started any other way (`make run`, a `pip install`), and leaves a value the
    operator set, in any of the variables OpenBLAS reads, as it is. Too late once numpy is in.
    """
    if "numpy" not in sys.modules and not any(v in os.environ for v in BLAS_THREAD_VARIABLES):
        os.environ["OPENBLAS_NUM_THREADS"] = "1"


def main(argv: Sequence[str] | None = None) -> int:
    # First of all: the imports below take a fifth of a second, the runtime's another second.
    stops, hangups = _Stops(), _Hangups()  # in this order: a caught SIGHUP means both are
    _one_blas_thread()
    parsed: argparse.Namespace | None = None
    try:
        parsed = args = _parser().parse_args(argv)
    finally:
        command = None if parsed is None else parsed.command
        if (
            command in _DAEMON_COMMANDS
        ):  # SIGQUIT: where every thread is, even with the loop blocked
            faulthandler.register(signal.SIGQUIT, all_threads=True)
        else:  # not a daemon: a signal means what it did (but a stop of `margin` is kept)
            stop = None if command in _STOPPED_COMMANDS else stops.release()
            if hangups.release():
                signal.raise_signal(signal.SIGHUP)
            if stop is not None:
                signal.raise_signal(stop)
    if args.command in _DEFAULT_CONFIG_COMMANDS and args.config is None:
        args.config = default_config()
    try:
        if args.command == "check-config":
            return _cmd_check(args)
        if args.command == "run":
            return _cmd_run(args, hangups, stops)
        if args.command == "record":
            return _cmd_run(args, hangups, stops, record=args.out)
        if args.command == "replay":
            return _cmd_replay(args)
        if args.command in ("stress", "scenario", "margin"):
            return _cmd_margin_tools(args, stops)
        if args.command == "audit":
            from oracled.publish.audit_cli import cmd_audit

            return cmd_audit(args)
        return _cmd_demo(args, hangups, stops)
    except ConfigError as exc:
        print(f"oracled: refusing to start: {len(exc.problems)} config problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # the reader went away (`oracled audit ... | head`): not an error
        # What is still buffered for stdout would fail again at exit: send it nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:
        if args.command in _STOPPED_COMMANDS:  # their logging is set up, on stderr
            import structlog

            structlog.get_logger("oracled").error("fatal", error=described(exc))
        else:  # the others set up none, and structlog's default writes to stdout: which failed?
            with contextlib.suppress(OSError):
                print(f"oracled {args.command}: {described(exc)}", file=sys.stderr)
        _let_stdout_go()
        return EXIT_FAILURE


def _let_stdout_go() -> None:
    """Write out what stdout holds, or, if it cannot take it (a full disk, a closed terminal),
    send it nowhere: the interpreter's own flush at the exit would fail again, loudly."""
    try:
        sys.stdout.flush()
    except OSError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
