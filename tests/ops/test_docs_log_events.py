"""Log events the docs quote (the runbook's `jq` filters, "the log says `...`") against the code."""

from __future__ import annotations

import ast
import re

from catalogue import ROOT

#: Where the prose names a log event: a `jq` filter on `.event`, or a quoted name next to words
#: that say it is a log line ("logs `x`", "the log line `x`", "warning `x`", "`x` log lines").
_MENTIONS = (
    re.compile(r'\.event\s*==\s*"([^"]+)"'),
    re.compile(r'\.event\s*\|\s*startswith\("([^"]+)"\)'),
    re.compile(
        r"(?:\blogs|\blogged(?: as)?|\blog says|\blog lines?|\blog:|\bwarning|\berror line)"
        r"\s+`([^`]+)`"
    ),
    re.compile(r"`([^`]+)`\s+(?:log lines?\b|lines? in the log|in the logs?\b)"),
)
#: An event name: lower-case words, punctuation inside a message, an elision at the end.
_EVENT = re.compile(r"[a-zA-Z][\w .,;:'()/+-]*")


def _docs() -> dict[str, str]:
    """The operator-facing prose, with line breaks inside a paragraph undone."""
    paths = [ROOT / "README.md", ROOT / "deploy" / "README.md", *sorted(ROOT.glob("docs/*.md"))]
    return {str(p.relative_to(ROOT)): re.sub(r"\s*\n\s*", " ", p.read_text()) for p in paths}


def _mentions() -> set[tuple[str, str]]:
    """(doc, event name) of every log event the docs quote."""
    found = set()
    for name, text in _docs().items():
        for pattern in _MENTIONS:
            for event in pattern.findall(text):
                event = event.removesuffix("...").rstrip()
                if _EVENT.fullmatch(event):
                    found.add((name, event))
    return found


def _built(parts: list[ast.expr]) -> re.Pattern[str] | None:
    """The strings an f-string or a sum makes, each placeholder a group; None unless it opens
    with a few letters (`f"{x}"` would match anything)."""
    head = parts[0] if parts else None
    if not (isinstance(head, ast.Constant) and isinstance(head.value, str) and len(head.value) > 3):
        return None
    return re.compile(
        "".join(
            re.escape(p.value)
            if isinstance(p, ast.Constant) and isinstance(p.value, str)
            else "(.+)"
            for p in parts
        )
    )


def _code_strings() -> tuple[list[str], list[re.Pattern[str]]]:
    """The string literals of the package that are no docstring, and the patterns of the
    strings it builds (`f"nats {kind} refused; retrying"`, `"push " + kind`)."""
    literals: list[str] = []
    patterns: list[re.Pattern[str]] = []
    for path in (ROOT / "oracled").rglob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) not in docstrings:
                    literals.append(node.value)
            elif isinstance(node, ast.JoinedStr):
                patterns.append(_built(node.values))
            elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
                patterns.append(_built([node.left, node.right]))
    return literals, [p for p in patterns if p is not None]


def _logged(event: str, literals: list[str], patterns: list[re.Pattern[str]]) -> bool:
    """`event` begins a literal, or is a built string whose every placeholder holds (the start
    of) a literal: `push sent` is `"push " + kind` with `kind = "sent" if ...`."""
    if any(text.startswith(event) for text in literals):
        return True
    return any(
        (match := p.fullmatch(event)) is not None
        and all(any(text.startswith(part) for text in literals) for part in match.groups())
        for p in patterns
    )


def test_every_log_event_the_docs_quote_is_logged_by_the_code() -> None:
    """An event name the runbook or another page quotes (`jq 'select(.event == "market
    status")'`, "the log says `wall clock went back`") begins a string the package logs with,
    or is one it builds (`f"nats {kind} refused; retrying"`): an event renamed in code and not
    in the docs leaves an operator's filter matching nothing, silently, in an incident.
    Docstrings do not count, so a name kept only in a module's prose fails too. The lines of the
    Python the manifests run (the pods' init container) are looked for in deploy/."""
    literals, patterns = _code_strings()
    deploy = "\n".join(p.read_text() for p in (ROOT / "deploy").rglob("*.yaml"))
    deploy_lines = [  # its f-strings, any text in a placeholder (`oracled-N`, a pod's name)
        re.compile(re.sub(r"\\\{[^}]*\\\}", ".+", re.escape(text)))
        for text in re.findall(r'\bf"([^"]{4,})"', deploy)
    ]
    mentions = _mentions()
    unknown = sorted(
        (doc, event)
        for doc, event in mentions
        if not _logged(event, literals, patterns)
        and not any(p.fullmatch(event) for p in deploy_lines)
    )
    assert len(mentions) > 100, len(mentions)  # the scan finds the docs' log events at all
    assert unknown == []
