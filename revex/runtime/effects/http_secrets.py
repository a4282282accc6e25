"""Secrets for HTTP calls: resolved by name at the call boundary, redacted everywhere else.

An agent never holds a credential; it writes a placeholder::

    ep.http.get(url, headers={"Authorization": "Bearer {secret:github}"})

and the runtime substitutes the value just before the request leaves (headers and the URL). The
value comes from, in order: the ``credentials`` given to the Runtime (a mapping, or the path of a
TOML file with a ``[secrets]`` table or top-level string keys), then the environment variable
``REVEX_SECRET_<NAME>`` (upper-cased, ``-`` and ``.`` as ``_``).

What is journaled, audited, recorded in cassettes and put in error messages goes through
:meth:`Secrets.redact`: placeholders stay (they are not secret), every known secret value becomes
``***``, and credential-bearing headers (``Authorization``, ``Cookie``, …) written literally are
replaced whole.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from revex.errors import ConfigError

# also in percent-encoded form: httpx encodes braces in a URL's query
PLACEHOLDER = re.compile(r"(?:\{|%7B)secret:([A-Za-z0-9_.\-]+)(?:\}|%7D)", re.IGNORECASE)
REDACTED = "***"
SENSITIVE_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key",
    "x-auth-token", "x-amz-security-token",
})
ENV_PREFIX = "REVEX_SECRET_"

Credentials = Mapping[str, str] | str | Path | None


def env_name(name: str) -> str:
    return ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


class Secrets:
    """Resolves ``{secret:name}`` placeholders and redacts secret values.

    Raises ConfigError (naming the file, never a value) when a credentials file cannot be read.
    """

    def __init__(self, credentials: Credentials = None) -> None:
        self._values: dict[str, str] = {}
        self._seen: set[str] = set()
        if isinstance(credentials, str | Path):
            self._values.update(_load_file(Path(credentials)))
        elif credentials is not None:
            self._values.update({str(k): str(v) for k, v in credentials.items()})
        self._seen.update(v for v in self._values.values() if v)

    def add_file(self, path: str | Path) -> None:
        """Add the secrets of a TOML credentials file. Raises ConfigError."""
        values = _load_file(Path(path))
        self._values.update(values)
        self._seen.update(v for v in values.values() if v)

    def value(self, name: str) -> str:
        """The value of secret ``name``. Raises ConfigError when it is not configured."""
        if name in self._values:
            return self._values[name]
        env = os.environ.get(env_name(name))
        if env is None:
            raise ConfigError(
                f"secret {name!r} is not configured: give it in the Runtime's credentials "
                f"(mapping or TOML file) or set the environment variable {env_name(name)}")
        self._seen.add(env)
        return env

    def resolve(self, text: str) -> str:
        """``text`` with every placeholder replaced by its value. Raises ConfigError."""
        if "secret:" not in text:
            return text
        return PLACEHOLDER.sub(lambda m: self.value(m.group(1)), text)

    def redact(self, text: str) -> str:
        """``text`` with every secret value this resolver knows replaced by ``***``."""
        for value in sorted(self._seen, key=len, reverse=True):
            if len(value) >= 4 and value in text:
                text = text.replace(value, REDACTED)
        return text

    def redact_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """Headers safe to journal: placeholders kept, literal credentials replaced whole."""
        out: dict[str, str] = {}
        for name, value in headers.items():
            lower = name.lower()
            if PLACEHOLDER.search(value):
                out[lower] = self.redact(value)
            elif lower in SENSITIVE_HEADERS:
                out[lower] = REDACTED
            else:
                out[lower] = self.redact(value)
        return out

    def redact_obj(self, obj: Any) -> Any:
        """A JSON-like value with every string redacted."""
        if isinstance(obj, str):
            return self.redact(obj)
        if isinstance(obj, dict):
            return {k: self.redact_obj(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.redact_obj(v) for v in obj]
        return obj


def _load_file(path: Path) -> dict[str, str]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the credentials file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        # the decoder's message can quote the offending line, which may hold a secret
        raise ConfigError(f"credentials file {path} is not valid TOML (line {_line(exc)})"
                          ) from None
    table = data.get("secrets", data)
    if not isinstance(table, dict):
        raise ConfigError(f"credentials file {path}: [secrets] must be a table")
    out = {}
    for key, value in table.items():
        if not isinstance(value, str):
            raise ConfigError(f"credentials file {path}: secret {key!r} must be a string")
        out[key] = value
    return out


def _line(exc: tomllib.TOMLDecodeError) -> str:
    match = re.search(r"line (\d+)", str(exc))
    return match.group(1) if match else "?"
