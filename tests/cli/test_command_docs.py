"""The command lines the docs show against the `oracled` parser: every option both ways."""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path

from oracled.cli import _parser, _start_problems

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "deploy" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _options() -> dict[str, set[str]]:
    """Subcommand -> its long options (--help aside)."""
    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {
        name: {o for act in sub._actions for o in act.option_strings if o.startswith("--")}
        - {"--help"}
        for name, sub in commands.choices.items()
    }


def _shown() -> dict[str, set[str]]:
    """Subcommand -> the options the docs write after `oracled <subcommand>` on one line."""
    names = "|".join(re.escape(name) for name in _options())
    shown: dict[str, set[str]] = {}
    for path in DOCS:
        for match in re.finditer(rf"oracled ({names})\b([^\n`|]*)", path.read_text()):
            shown.setdefault(match.group(1), set()).update(
                re.findall(r"--[a-z][a-z-]*", match.group(2))
            )
    return shown


def test_every_option_the_docs_show_exists() -> None:
    """An option a doc shows that the command does not take is a usage error for its reader."""
    options, shown = _options(), _shown()
    assert {
        name: flags - options[name] for name, flags in shown.items() if flags - options[name]
    } == {}


def test_every_option_of_every_command_is_shown_in_the_docs() -> None:
    """An option nobody wrote down is one nobody uses (`record --listen`, `margin --log-format`
    were such until this test)."""
    options, shown = _options(), _shown()
    hidden = {name: flags - shown.get(name, set()) for name, flags in options.items()}
    assert {name: flags for name, flags in hidden.items() if flags} == {}


def test_a_readme_command_row_that_shows_options_shows_them_all() -> None:
    """README's command table is where a reader learns a command's usage: a row that writes a
    command's options out (the margin, stress and scenario row only points below) must not
    leave one out. `oracled audit`'s row lacked `--deployment`, without which `--verify`
    checks no signed round (exit 4), since 2f3191c made it the domain's salt."""
    options = _options()
    rows = re.findall(r"^\| `oracled (\S+)([^`]*)`", (ROOT / "README.md").read_text(), re.M)
    missing = {}
    for name, usage in rows:
        shown = set(re.findall(r"--[a-z][a-z-]*", usage))
        if shown and options[name] - shown:
            missing[name] = sorted(options[name] - shown)
    assert [name for name, usage in rows if re.search(r"--[a-z]", usage)], "no row parsed"
    assert missing == {}


def test_every_audit_command_that_checks_signatures_names_their_deployment() -> None:
    """`oracled audit --verify` and `--at` check signatures in the domain of `--deployment`, or
    of `--config`'s `signing.deployment`; a command line the docs show with neither checks
    nothing (exit 4, or `not checked`). The runbook's `--at` examples and publishing.md's had
    neither."""
    shown = [
        (path.name, command)
        for path in DOCS
        for command in re.findall(r"oracled audit --db[^`|\n]*", path.read_text())
        if re.search(r"--(?:verify|at)\b", command)
    ]
    assert len(shown) >= 8, shown
    assert [
        (name, command)
        for name, command in shown
        if "--deployment" not in command and "--config" not in command
    ] == []


def test_every_make_target_the_docs_show_is_one_of_the_makefile() -> None:
    """A `make X` a reader copies from the docs runs a target the Makefile has; and the targets
    it describes (`## ...`) are all in the README, where a reader from a fresh clone looks:
    `make demo`, the one that works without the internet, was in neither."""
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    described = set(re.findall(r"^([a-z][a-z-]*):.*##", makefile, re.M))
    docs = [*DOCS, ROOT / "benchmarks" / "README.md"]
    shown = set()
    for path in docs:
        text = path.read_text()
        blocks = "\n".join(re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S))
        for target in re.findall(r"`make ([a-z][a-z-]*)", text) + re.findall(
            r"^make ([a-z][a-z-]*)", blocks, re.M
        ):
            shown.add((path.name, target))
    assert {target for _, target in shown} >= {"run", "demo", "test", "bench", "soak"}, shown
    assert sorted(shown_ for shown_ in shown if shown_[1] not in targets) == []
    readme = {target for name, target in shown if name == "README.md"}
    assert sorted(described - readme) == []


def test_the_readme_demo_row_names_the_deployment_the_demo_signs_for() -> None:
    """A consumer pointed at `oracled demo` verifies its signed frames only in the demo's own
    deployment, never the config's: the README's row said the key was a throwaway one and not
    which deployment it signs for, so `OracleClient(..., deployment="production")` refused
    every frame as `wrong_deployment`."""
    from oracled.demo import DEPLOYMENT

    readme = (ROOT / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `oracled demo "))
    assert f"deployment `{DEPLOYMENT}`" in row


def test_every_argument_of_every_command_says_what_it_is_in_the_help() -> None:
    """`oracled COMMAND --help` is where a person at a terminal looks first: `check-config`'s
    file, `scenario`'s name and --seed, and `margin --log-format` were listed with nothing
    beside them (what --log-format's `auto` picks was nowhere but the code)."""
    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    bare = [
        f"{name} {' '.join(action.option_strings) or action.dest}"
        for name, sub in commands.choices.items()
        for action in sub._actions
        if not isinstance(action, argparse._HelpAction) and not action.help
    ]
    assert bare == []


def test_what_check_config_as_daemon_reads_is_named_in_its_help_and_the_readme() -> None:
    """`--as-daemon` reads, besides the file, what each table the start checks names (the
    tables `_start_problems` looks at): its help and README's row list them. Both had lost the
    audit path, refused since the check reads it, so a reader of either did not know that an
    `audit.path` naming a directory stops compose and the pods there."""
    words = {
        "signing": "signing",
        "push": "push",
        "nats": "NATS",
        "oracle": "pauses",
        "audit": "audit",
    }
    tables = set(re.findall(r"cfg\.(\w+)\.\w+", inspect.getsource(_start_problems)))
    assert tables == set(words), tables  # a new table read at start: name it, and add it here
    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    (flag,) = [
        a for a in commands.choices["check-config"]._actions if "--as-daemon" in a.option_strings
    ]
    row = next(
        line
        for line in (ROOT / "README.md").read_text().splitlines()
        if line.startswith("| `oracled check-config")
    )
    assert [w for w in words.values() if w not in (flag.help or "")] == []
    assert [w for w in words.values() if w not in row] == []
