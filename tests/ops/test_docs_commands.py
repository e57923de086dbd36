"""The `oracled ...` commands the docs show against the real argument parser."""

from __future__ import annotations

import argparse
import re
import shlex

import pytest
from catalogue import ROOT

from oracled.cli import _parser

DOCS = [ROOT / "README.md", ROOT / "deploy" / "README.md", *sorted(ROOT.glob("docs/*.md"))]
#: A command in a code block (a list item's, indented, too): at the start of a line (after a
#: `$ ` prompt) or piped into.
_BLOCK_COMMAND = re.compile(r"(?:^\s*(?:\$\s+)?|\|\s*)(oracled [^#]*?)(?:\s+\|\s.*)?(?:#.*)?$")
#: A placeholder a reader fills in: `FILE`, `HOST:PORT`, `OUT.png`, `<the daemon's config>`,
#: `...`, an elided address `0x71C7…`.
_PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*(?::[A-Z]+|\.\w+)?|<[^>]*>|\.\.\.|.*…")
#: What fills a placeholder, by option: a value its type takes.
_SAMPLES = {
    "--listen": "127.0.0.1:8480",
    "--from": "2026-11-26T12:00",
    "--to": "2026-11-26T12:10",
    "--at": "2026-11-26T12:03",
    "--market": "BTC/USD",
    "--signer": "0x71C7656EC7ab88b098defB751B7401B5f6d8976F",
    "--duration": "60",
    "--max-gap": "600",
    "--seed": "1",
    "--step-ms": "1000",
    "--url": "ws://127.0.0.1:8480/v1/stream",
}
#: Spans that name the program without being a command: a log event of the daemon.
_NOT_COMMANDS = {"oracled started"}


def _flat(text: str) -> str:
    """Line breaks inside a paragraph undone, so a mention split over two lines reads whole."""
    return re.sub(r"\s*\n\s*", " ", text)


def _commands() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(where, command) of the commands in code blocks, which a reader runs as shown, and of
    the inline mentions in the prose (`oracled audit --tape`), which may leave out what the
    command requires. A mention followed by a colon (`oracled audit: FILE: ...`) quotes an
    error message, not a command."""
    blocks, mentions = [], []
    for path in DOCS:
        text = path.read_text()
        name = str(path.relative_to(ROOT))
        for block in re.finditer(r"^[ \t]*```\w*\n(.*?)^[ \t]*```", text, re.S | re.M):
            first = text.count("\n", 0, block.start()) + 2
            for number, line in enumerate(block[1].splitlines(), first):
                found = _BLOCK_COMMAND.search(line)
                if found:
                    blocks.append((f"{name}:{number}", found[1].strip()))
        prose = re.sub(r"^[ \t]*```.*?^[ \t]*```", "", text, flags=re.S | re.M)
        mentions += [
            (name, span)
            for span in re.findall(r"`(oracled [^`]+)`", _flat(prose))
            if span not in _NOT_COMMANDS and not re.match(r"oracled [\w-]+:", span)
        ]
    return blocks, mentions


def _words(command: str) -> list[str]:
    """The command's words with the optional parts kept: `[--seed N]` is `--seed N`."""
    command = re.sub(r"<[^>]*>", "<x>", command)  # `<the daemon's config>`: one word
    return shlex.split(command.replace("[", " ").replace("]", " "))[1:]


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser | None:
    """The parser of subcommand `name`; None if there is no such subcommand."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices.get(name)


def _filled(sub: argparse.ArgumentParser, words: list[str]) -> list[str]:
    """`words` with each placeholder replaced by a value its option or argument takes, a
    choice list (`auto|json|console`) by its first choice and a repetition (`--config F ...`)
    left out."""
    options = sub._option_string_actions
    positionals = [a for a in sub._actions if not a.option_strings]
    out: list[str] = []
    taking: argparse.Action | None = None
    for word in words:
        if taking is not None:
            flag = taking.option_strings[-1]
            if taking.choices is not None and "|" in word:
                word = word.split("|")[0]
            elif _PLACEHOLDER.fullmatch(word):
                choices = taking.choices
                word = str(next(iter(choices))) if choices else _SAMPLES.get(flag, "x")
            out.append(word)
            taking = None
        elif word.startswith("--"):
            out.append(word)
            action = options.get(word)
            if action is not None and action.nargs != 0:
                taking = action
        elif word == "...":
            continue
        else:
            positional = positionals.pop(0) if positionals else None
            if positional is not None and _PLACEHOLDER.fullmatch(word):
                word = str(next(iter(positional.choices))) if positional.choices else "x"
            out.append(word)
    return out


def test_every_command_the_docs_show_parses(capsys: pytest.CaptureFixture[str]) -> None:
    """A command a reader copies from a code block (`oracled audit --db audit.sqlite3 --market
    BTC/USD --at ...`, the synopses with their `[--optional FLAG]` parts) is one the CLI takes,
    its placeholders filled in; a subcommand or a flag renamed in code and not in the docs has
    the operator's paste refused with a usage error. The shorter mentions in the prose
    (`oracled audit --tape`, `oracled check-config --as-daemon`) name a subcommand and flags
    that exist, without what the command also requires."""
    parser = _parser()
    blocks, mentions = _commands()
    assert len(blocks) > 15 and len(mentions) > 100, (len(blocks), len(mentions))
    wrong = []
    for where, command in blocks + mentions:
        words = _words(command)
        sub = _subparser(parser, words[0]) if words else None
        if sub is None:
            wrong.append(f"{where}: {command}: no such subcommand")
            continue
        flags = [w.split("=")[0] for w in words[1:] if w.startswith("--")]
        unknown = [f for f in flags if f not in sub._option_string_actions]
        if unknown:
            wrong.append(f"{where}: {command}: no {', '.join(unknown)}")
            continue
        if (where, command) not in blocks:
            continue
        argv = [words[0], *_filled(sub, words[1:])]
        try:
            parser.parse_args(argv)
        except SystemExit:
            error = capsys.readouterr().err.strip().splitlines()[-1:]
            wrong.append(f"{where}: {command}: {argv} refused: {error}")
    assert wrong == []
