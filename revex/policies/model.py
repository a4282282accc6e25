"""The policy model: TOML files validated with pydantic, errors that name file, line and field.

A policy file::

    [policy]
    name = "default"
    default = "deny"            # decision when no rule matches: allow | deny | approve

    [quotas]                    # per episode; omitted means unlimited
    actions = 10000
    bytes_written = 1_000_000_000

    [[rules]]                   # first match wins
    name = "workspace-files"
    kind = "fs.*"               # globs over the action kind
    path = "**"                 # globs over the workspace-relative path
    decision = "allow"

Conditions a rule can state (an action that lacks the attribute does not match the rule):
glob lists ``kind``, ``path``, ``statement``, ``tables``, ``method``, ``host``, ``scheme``,
``url_path``, ``language``; ``port`` (ints); booleans ``network``, ``irreversible``, ``where``;
ceilings ``max_*`` (the action's value must be at most the ceiling).
"""

from __future__ import annotations

import re
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from revex.errors import PolicyError

PRESETS_DIR = Path(__file__).parent / "presets"


class Decision(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    APPROVE = "approve"


Globs = list[str]


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    decision: Decision
    reason: str = ""
    kind: Globs | None = None
    path: Globs | None = None
    statement: Globs | None = None
    tables: Globs | None = None
    method: Globs | None = None
    host: Globs | None = None
    scheme: Globs | None = None
    url_path: Globs | None = None
    language: Globs | None = None
    port: list[int] | None = None
    network: bool | None = None
    irreversible: bool | None = None
    where: bool | None = None
    max_wall_s: float | None = None
    max_cpu_s: float | None = None
    max_memory_mb: float | None = None
    max_pids: int | None = None
    max_body_bytes: int | None = None
    max_bytes: int | None = None

    @field_validator(
        "kind", "path", "statement", "tables", "method", "host", "scheme", "url_path",
        "language", mode="before",
    )
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("port", mode="before")
    @classmethod
    def _one_or_many_ports(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) else value


class Quotas(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    actions: int | None = Field(default=None, ge=0)
    bytes_written: int | None = Field(default=None, ge=0)
    rows_changed: int | None = Field(default=None, ge=0)
    http_calls: int | None = Field(default=None, ge=0)
    cpu_seconds: float | None = Field(default=None, ge=0)
    exec_runs: int | None = Field(default=None, ge=0)
    #: code runs (exec.run, exec.tests) per rolling 60 seconds, per episode
    runs_per_minute: int | None = Field(default=None, ge=0)


class PolicyHeader(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    default: Decision = Decision.DENY
    description: str = ""


class Policy(BaseModel):
    """A validated policy. Build with :meth:`load`, :meth:`from_toml` or directly."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: PolicyHeader
    quotas: Quotas = Quotas()
    rules: list[Rule] = []
    http: dict[str, Any] = {}
    sql: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return self.policy.name

    @classmethod
    def from_toml(cls, text: str, source: str = "<string>") -> Policy:
        """Parse and validate TOML text. Raises PolicyError naming source, line and field."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"{source}: not valid TOML: {exc}") from exc
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            lines = []
            for err in exc.errors():
                loc = err["loc"]
                field = ".".join(str(p) for p in loc)
                line = _locate(text, loc)
                where = f"{source}:{line}" if line else source
                lines.append(f"{where}: field '{field}': {err['msg']}")
            raise PolicyError("invalid policy\n  " + "\n  ".join(lines)) from exc

    @classmethod
    def load(cls, spec: str | Path | Policy) -> Policy:
        """A Policy from a preset name, a TOML file path, or a Policy (returned as is)."""
        if isinstance(spec, Policy):
            return spec
        path = Path(spec)
        if isinstance(spec, str) and not spec.endswith(".toml") and "/" not in spec:
            preset = PRESETS_DIR / f"{spec}.toml"
            if not preset.exists():
                raise PolicyError(
                    f"unknown policy preset {spec!r}; presets are {', '.join(preset_names())}, "
                    "or give the path of a .toml file"
                )
            path = preset
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError(f"cannot read policy file {path}: {exc}") from exc
        return cls.from_toml(text, str(path))


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def _locate(text: str, loc: tuple[Any, ...]) -> int | None:
    """Best-effort line number (1-based) of the TOML key that a pydantic error points at."""
    lines = text.splitlines()
    start = 0
    if len(loc) >= 2 and isinstance(loc[1], int):
        header = re.compile(rf"^\s*\[\[\s*{re.escape(str(loc[0]))}\s*\]\]")
        seen = -1
        for i, line in enumerate(lines):
            if header.match(line):
                seen += 1
                if seen == loc[1]:
                    start = i
                    break
        else:
            return None
        key = str(loc[2]) if len(loc) > 2 else None
    else:
        table = re.compile(rf"^\s*\[\s*{re.escape(str(loc[0]))}\s*\]")
        for i, line in enumerate(lines):
            if table.match(line):
                start = i
                break
        key = str(loc[1]) if len(loc) > 1 else str(loc[0])
    if key is None:
        return start + 1
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
    for i in range(start, len(lines)):
        if pattern.match(lines[i]):
            return i + 1
    return start + 1
