"""The NATS sink's credentials and TLS settings, read once at start-up into `nats.connect` options.

Secrets follow the rest of the config: the file names an environment variable or a file that
group and others cannot access (mode 600 or 400, like `[signing]` key_file), never the secret.
Everything is read and checked here, before the first connection, so that a missing variable, a
readable key file or a file that holds no seed stops the daemon at start with a `ConfigError`
naming the key, while a credential the server refuses is a runtime failure the sink survives and
counts (`nats.py`). No secret ever reaches an error message or a log line: `describe` names the
way and the files only.
"""

from __future__ import annotations

import os
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import RawCredentials

from oracled.config import NatsConfig, nats_auth_keys
from oracled.errors import ConfigError
from oracled.files import NotRegularFileError, read_regular, require_regular

__all__ = ["NatsAuth", "load_nats_auth"]

_JWT_BEGIN = "-----BEGIN NATS USER JWT-----"
_SEED_BEGIN = "-----BEGIN USER NKEY SEED-----"


@dataclass(frozen=True, slots=True)
class NatsAuth:
    """`options` go to `nats.connect` as keyword arguments; `way` and `tls` are safe to log."""

    way: str | None = None  # token, user, creds, nkey; None: none (or in the server URLs)
    tls: dict[str, str] | None = None  # the TLS files in use, for the start-up line
    options: dict[str, Any] = field(default_factory=dict, repr=False)


def load_nats_auth(cfg: NatsConfig, env: Mapping[str, str] | None = None) -> NatsAuth:
    """Read the secrets `cfg` names and build the TLS context; ConfigError (listing every problem,
    never a secret) if any cannot be used."""
    env = os.environ if env is None else env
    problems: list[str] = []
    options: dict[str, Any] = {}
    way: str | None = None
    keys = nats_auth_keys(cfg)
    if keys:
        key = keys[0]
        if key == "token_env":
            way, options["token"] = "token", _from_env(env, "token_env", cfg.token_env, problems)
        elif key == "user":
            way = "user"
            options["user"] = cfg.user
            options["password"] = _from_env(env, "password_env", cfg.password_env, problems)
        elif key in ("creds_file", "creds_env"):
            way = "creds"
            text = _secret(cfg, env, "creds_file", "creds_env", problems)
            if text is not None:
                if _JWT_BEGIN in text and _SEED_BEGIN in text:
                    options["user_credentials"] = RawCredentials(text)
                else:
                    problems.append(
                        f"nats.{key}: does not hold a NATS user JWT and NKey seed (a .creds file)"
                    )
        else:
            way = "nkey"
            text = _secret(cfg, env, "nkey_seed_file", "nkey_seed_env", problems)
            if text is not None:
                seed = text.strip()
                if _is_user_seed(seed):
                    options["nkeys_seed_str"] = seed
                else:
                    problems.append(f"nats.{key}: does not hold a user NKey seed (SU...)")
    tls, files = _tls_context(cfg, problems)
    if tls is not None:
        options["tls"] = tls
    if problems:
        raise ConfigError(problems)
    return NatsAuth(way=way, tls=files, options=options)


def _is_user_seed(seed: str) -> bool:
    """A user seed the nkeys package accepts (it signs the server's nonce at each connect)."""
    import nkeys  # type: ignore[import-untyped]  # nats-py's own NKey dependency

    if not seed.startswith("SU"):
        return False
    try:
        nkeys.from_seed(bytearray(seed.encode()))
    except Exception:  # the package raises its own errors and binascii's for a bad seed
        return False
    return True


def _from_env(env: Mapping[str, str], key: str, name: str | None, problems: list[str]) -> str:
    value = env.get(name or "", "").strip()  # a final newline from a file or an env file
    if not value:
        problems.append(f"nats.{key}: ${name} is not set")
    return value


def _secret(
    cfg: NatsConfig, env: Mapping[str, str], file_key: str, env_key: str, problems: list[str]
) -> str | None:
    path = getattr(cfg, file_key)
    if path is not None:
        return _read_secret_file(f"nats.{file_key}", path, problems)
    value = _from_env(env, env_key, getattr(cfg, env_key), problems)
    return value or None


def _read_secret_file(key: str, name: str, problems: list[str]) -> str | None:
    """A secret file's text, or None with a problem: not a file, readable by group or others
    (refused, as ssh refuses such keys), unreadable, or not text."""
    path = Path(name)
    try:  # the mode checked is the one of the file read (its fstat)
        raw, found = read_regular(path)
        mode = found.st_mode
        if stat.S_IMODE(mode) & 0o077:
            problems.append(
                f"{key}: {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(mode):o}); chmod 600 it"
            )
            return None
        return raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # as read_text
    except NotRegularFileError as exc:
        problems.append(f"{key}: {path} is {exc.kind}, not a file")
    except OSError as exc:
        hint = "" if path.is_absolute() else "; relative to the working directory"
        problems.append(f"{key}: cannot read {path.absolute()} ({exc.strerror or exc}{hint})")
    except UnicodeDecodeError:
        problems.append(f"{key}: {path} is not text")
    return None


def _tls_context(
    cfg: NatsConfig, problems: list[str]
) -> tuple[ssl.SSLContext | None, dict[str, str] | None]:
    """A context trusting `tls_ca_file` (else the system's CAs) and presenting the client
    certificate, if either is set; None leaves TLS to nats-py (its default for `tls://` URLs)."""
    if cfg.tls_ca_file is None and cfg.tls_cert_file is None:
        return None, None
    files: dict[str, str] = {}
    try:
        if cfg.tls_ca_file is not None:  # OpenSSL opens it: only this look first is ours
            require_regular(cfg.tls_ca_file)
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.tls_ca_file)
        if cfg.tls_ca_file is not None:
            files["ca"] = cfg.tls_ca_file
    except (OSError, ssl.SSLError) as exc:
        problems.append(f"nats.tls_ca_file: cannot load {cfg.tls_ca_file} ({_reason(exc)})")
        return None, None
    if cfg.tls_cert_file is not None and cfg.tls_key_file is not None:
        # Checked first, as a key file: load_cert_chain reads it whatever its mode.
        if _read_secret_file("nats.tls_key_file", cfg.tls_key_file, problems) is None:
            return None, None
        try:
            require_regular(cfg.tls_cert_file)  # a FIFO would hold OpenSSL's read for ever
            ctx.load_cert_chain(cfg.tls_cert_file, cfg.tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            problems.append(
                f"nats.tls_cert_file: cannot load {cfg.tls_cert_file} with "
                f"{cfg.tls_key_file} ({_reason(exc)})"
            )
            return None, None
        files["cert"] = cfg.tls_cert_file
    return ctx, files


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__
