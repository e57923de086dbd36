"""The config text the audit trail keeps (schema version 7), and its check by a replay.

The trail keeps the bytes of each config the daemon loaded, once per sha256, so that
`oracled audit --replay` needs no copy of the file. A config names its secrets by environment
variable or file (the signing and push keys, NATS credentials, the admin token: `config.py`
refuses the token in the file); the one place a secret can sit in the text is a URL: a user
and password or a token before a host (`nats://user:pass@host`), an API key in an RPC URL's
path or query. So every URL of the text, in a value or in a comment, keeps its scheme, host and
port, and the rest becomes a placeholder: its user part `redacted-N`, its path, query and
fragment `/redacted-N` (N numbers the distinct URLs in order, so URLs that were distinct stay
so). No price depends on a URL; the text is kept only when it parses to the same document with
only those strings changed and prices as the loaded config did (`tape.pricing_digest`, kept
beside it, which the replay checks again). A text without a URL is kept as it is, byte for byte.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from oracled.config import config_document, parse_config
from oracled.errors import ConfigError
from oracled.publish.audit import ConfigText
from oracled.tape import pricing_digest

if TYPE_CHECKING:
    from oracled.config import Config

__all__ = ["kept_text", "redact_urls", "text_problem"]

#: A URL as it sits in TOML text: up to a quote, a backslash (an escape: not followed, the
#: document check below then refuses the text) or whitespace.
_URL: Final = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<rest>[^\s\"'\\]+)")
#: A URL in a string value: up to whitespace only. A quote or a backslash in a value is part of
#: the URL (a password `it's`), where the text's URL ends at it and would keep the rest.
_VALUE_URL: Final = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<rest>\S+)")


def _clean(match: re.Match[str], numbers: dict[str, int]) -> str:
    url, rest = match.group(0), match.group("rest")
    cut = re.search(r"[/?#]", rest)
    authority, tail = (rest, "") if cut is None else (rest[: cut.start()], rest[cut.start() :])
    _, at, host = authority.rpartition("@")
    if not at and tail in ("", "/"):
        return url  # scheme, host and port alone: nothing to hide
    n = numbers.setdefault(url, len(numbers) + 1)
    user = f"redacted-{n}@" if at else ""
    path = "" if tail in ("", "/") else f"/redacted-{n}"
    return f"{match.group('scheme')}://{user}{host}{path}"


def redact_urls(text: str, numbers: dict[str, int], url: re.Pattern[str] = _URL) -> str:
    """`text` with each URL's user part, path, query and fragment replaced; `numbers` maps each
    URL replaced to its N (shared by the calls of one config)."""
    return url.sub(lambda m: _clean(m, numbers), text)


def _redacted_values(value: Any, numbers: dict[str, int], url: re.Pattern[str] = _URL) -> Any:
    """A TOML document with the same replacement made in each string value."""
    if isinstance(value, str):
        return redact_urls(value, numbers, url)
    if isinstance(value, dict):
        return {k: _redacted_values(v, numbers, url) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted_values(v, numbers, url) for v in value]
    return value


def kept_text(raw: bytes, loaded: Config, env: Mapping[str, str]) -> ConfigText | str:
    """What the trail keeps of the config file `raw` that parsed to `loaded` (under `env`), or
    why nothing is kept: a URL written so that its text is not its value (an escape), or a
    redacted text that would price otherwise."""
    pricing = pricing_digest(loaded)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return "not UTF-8 text"
    numbers: dict[str, int] = {}
    redacted = redact_urls(text, numbers)
    try:
        # Read back even with nothing redacted: a URL written with an escape is no URL in the
        # text, and only its value shows the secret left in it.
        document = config_document(raw, "the config")
        after = config_document(redacted.encode(), "the redacted config") if numbers else document
        if after != _redacted_values(document, dict(numbers)):
            return "a URL in it is written with escapes: its redacted text is not its value"
        if after != _redacted_values(document, dict(numbers), _VALUE_URL):
            # the text's URL ended at a quote or a backslash that its value holds
            return (
                "a URL in it holds a quote or a backslash: its redacted text would keep the"
                " part after it"
            )
        if numbers and pricing_digest(parse_config(after, env)) != pricing:
            return "its redacted text prices otherwise than the loaded config"
    except ConfigError as exc:
        return f"its redacted text does not load ({'; '.join(exc.problems)})"
    except (ValueError, RecursionError) as exc:  # never the writer thread's end
        return f"its redacted text does not load ({exc})"
    if not numbers:
        return ConfigText(raw, 0, pricing)
    return ConfigText(redacted.encode(), len(numbers), pricing)


def text_problem(kept: ConfigText, sha256: str) -> str | None:
    """Why a stored text cannot be the one the daemon loaded, before it is parsed: an exact
    text (nothing redacted) whose sha256 is not the load's."""
    if kept.redacted:
        return None
    actual = hashlib.sha256(kept.text).hexdigest()
    return None if actual == sha256 else f"its bytes hash to sha256 {actual[:12]}"
