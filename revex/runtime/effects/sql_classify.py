"""Statement classification with sqlglot: what a statement does and which tables it touches.

Multi-statement text is split by the parser (never by ``;``). Each statement gets a class the
policy can match (``statement``), the tables it names (``tables``) and, for UPDATE/DELETE,
whether it has a WHERE (``where``). Anything the parser cannot make sense of is ``unknown``,
which the default policy denies.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass, field, replace
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

READ, INSERT, UPDATE, DELETE, UPSERT = "read", "insert", "update", "delete", "upsert"
CREATE, ALTER, DROP, TRUNCATE, OTHER, UNKNOWN = (
    "create", "alter", "drop", "truncate", "other", "unknown")
DDL = frozenset({CREATE, ALTER, DROP, TRUNCATE})
WRITES = frozenset({INSERT, UPDATE, DELETE, UPSERT}) | DDL

# functions that never write; a SELECT calling anything else is journaled as a possible write
_PURE = frozenset({
    "count", "sum", "min", "max", "avg", "abs", "lower", "upper", "length", "coalesce",
    "round", "substr", "substring", "concat", "cast", "trim", "json_extract", "typeof",
    "now", "current_timestamp", "date", "hex", "ifnull", "nullif", "greatest", "least",
})

_DIALECTS = {"sqlite": "sqlite", "postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}


@dataclass(frozen=True)
class Statement:
    """One classified statement.

    ``kind`` is the policy class; ``detail`` refines it (``drop database``, ``drop index``,
    ``attach``, ``copy program``…); ``side_effects`` marks a read that calls functions.
    """

    sql: str
    kind: str
    tables: tuple[str, ...] = ()
    where: bool | None = None
    detail: str = ""
    side_effects: bool = False
    names: tuple[str, ...] = field(default=(), compare=False)
    written: str = field(default="", compare=False)
    """The statement as the caller wrote it, when ``sql`` is the driver's escaped text
    (``%%`` for ``%``); empty when the two are the same."""

    @property
    def writes(self) -> bool:
        return self.kind in WRITES or self.kind in (OTHER, UNKNOWN) or self.side_effects

    @property
    def shown(self) -> str:
        """The text to show and journal: the statement as written."""
        return self.written or self.sql


def sqlglot_dialect(backend: str) -> str:
    return _DIALECTS.get(backend, backend)


_PYFORMAT = re.compile(r"%%|%(\(\w+\))?s")


def _for_parser(sql: str, escaped: bool = False) -> str:
    """``sql`` with driver placeholders (``%s``, ``%(x)s``) as ``?``, offsets unchanged.

    ``escaped``: the driver will turn ``%%`` into ``%`` (format/pyformat paramstyle with
    parameters given), so the parser must see the operator, not the escape. The text is
    scanned left to right, so ``%%s`` is an escaped ``%`` followed by ``s``.
    """
    def one(m: re.Match[str]) -> str:
        if m.group(0) == "%%":
            return "% " if escaped else "%%"
        return "?" + " " * (len(m.group(0)) - 1)
    return _PYFORMAT.sub(one, sql)


def unescape(sql: str) -> str:
    """What a format/pyformat driver makes of ``%%`` (``%``); placeholders stay."""
    return _PYFORMAT.sub(lambda m: "%" if m.group(0) == "%%" else m.group(0), sql)


def _pieces(text: str, dialect: str) -> list[tuple[int, int]]:
    """(start, end) of each statement, cut at the tokenizer's top-level semicolons."""
    cuts = [tok.start for tok in sqlglot.tokenize(text, read=dialect)
            if tok.token_type == TokenType.SEMICOLON]
    spans, start = [], 0
    for cut in [*cuts, len(text)]:
        if text[start:cut].strip():
            spans.append((start, cut))
        start = cut + 1
    return spans


def split(sql: str, backend: str, *, escaped: bool = False) -> list[Statement]:
    """Classify each statement in ``sql``; a text the parser rejects is one ``unknown``.

    ``escaped``: ``sql`` is the driver text of a format/pyformat driver that will be given
    parameters, so ``%%`` stands for ``%``. Each statement is classified as written; its
    ``sql`` stays the driver text (that is what runs), ``written`` holds the unescaped text.

    Classification is a pure function of the text, so a short text (a statement run again
    with new parameters) is parsed once: sqlglot was most of a 1-row statement's own cost.
    """
    if len(sql) <= _CACHED_TEXT:
        return list(_split_cached(sql, backend, escaped))
    return _split(sql, backend, escaped)


_CACHED_TEXT = 4096


@functools.lru_cache(maxsize=512)
def _split_cached(sql: str, backend: str, escaped: bool) -> tuple[Statement, ...]:
    return tuple(_split(sql, backend, escaped))


def _split(sql: str, backend: str, escaped: bool) -> list[Statement]:
    dialect = sqlglot_dialect(backend)
    logger = logging.getLogger("sqlglot")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # "falling back to Command" is not news to the caller
    try:
        text = _for_parser(sql, escaped)
        try:
            spans = _pieces(text, dialect)
        except (ParseError, TokenError) as exc:
            return [_as_written(Statement(sql=sql.strip(), kind=UNKNOWN,
                                          detail=f"parse error: {exc}"), escaped)]
        out = []
        for start, end in spans:
            original = sql[start:end].strip()
            try:
                trees = [t for t in sqlglot.parse(text[start:end], read=dialect) if t]
            except (ParseError, TokenError) as exc:
                out.append(_as_written(Statement(original, UNKNOWN,
                                                 detail=f"parse error: {exc}"), escaped))
                continue
            if len(trees) != 1:
                out.append(_as_written(Statement(original, UNKNOWN,
                                                 detail="not one statement"), escaped))
                continue
            out.append(_as_written(classify(trees[0], original, dialect, escaped), escaped))
        return out
    finally:
        logger.setLevel(level)


def _as_written(stmt: Statement, escaped: bool) -> Statement:
    if not escaped or "%%" not in stmt.sql:
        return stmt
    return replace(stmt, written=unescape(stmt.sql))


def _tables(tree: Any) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    ctes = {c.alias_or_name for c in tree.find_all(exp.CTE)}
    for table in tree.find_all(exp.Table):
        if table.name and table.name not in ctes:
            seen[table.name] = None
    return tuple(seen)


def classify(tree: Any, sql: str, dialect: str, escaped: bool = False) -> Statement:
    """The :class:`Statement` for one parsed tree (``sql`` is its text as given; ``escaped``
    as for :func:`split`)."""
    tables = _tables(tree)
    if isinstance(tree, exp.Update):
        return Statement(sql, UPDATE, tables, where=tree.args.get("where") is not None)
    if isinstance(tree, exp.Delete):
        return Statement(sql, DELETE, tables, where=tree.args.get("where") is not None)
    if isinstance(tree, exp.Insert):
        alternative = str(tree.args.get("alternative") or "").upper()
        upsert = tree.args.get("conflict") is not None or alternative == "REPLACE"
        return Statement(sql, UPSERT if upsert else INSERT, tables)
    if isinstance(tree, exp.Merge):
        return Statement(sql, UPSERT, tables)
    if isinstance(tree, exp.Query):
        calls = {f.sql_name().lower() if not isinstance(f, exp.Anonymous) else
                 str(f.this).lower() for f in tree.find_all(exp.Func)}
        return Statement(sql, READ, tables, side_effects=bool(calls - _PURE),
                         names=tuple(sorted(calls)))
    if isinstance(tree, exp.TruncateTable):
        return Statement(sql, TRUNCATE, tables)
    if isinstance(tree, exp.Create):
        what = str(tree.args.get("kind") or "").lower()
        return Statement(sql, CREATE, tables, detail=f"create {what}".strip())
    if isinstance(tree, exp.Drop):
        what = str(tree.args.get("kind") or "").lower()
        names = tables if what in ("table", "view", "index") else ()
        return Statement(sql, DROP, names, detail=f"drop {what}".strip(),
                         names=tuple(t.name for t in tree.find_all(exp.Table)))
    if isinstance(tree, exp.Alter):
        return Statement(sql, ALTER, tables, detail="alter " + str(
            tree.args.get("kind") or "table").lower())
    if isinstance(tree, exp.Copy):
        program = bool(re.search(r"\bPROGRAM\b", sql, re.IGNORECASE))
        return Statement(sql, OTHER, tables, detail="copy program" if program else "copy")
    if isinstance(tree, exp.Command):
        return _command(tree, sql, dialect, escaped)
    if isinstance(tree, exp.Attach | exp.Detach):
        return Statement(sql, OTHER, (), detail=type(tree).__name__.lower())
    if isinstance(tree, exp.Grant | exp.Revoke) or type(tree).__name__ in ("Grant", "Revoke"):
        return Statement(sql, OTHER, tables, detail=type(tree).__name__.lower())
    if isinstance(tree, exp.Pragma | exp.Set | exp.Use | exp.Transaction | exp.Commit
                  | exp.Rollback):
        return Statement(sql, OTHER, (), detail=type(tree).__name__.lower())
    return Statement(sql, UNKNOWN, tables, detail=f"unrecognised ({type(tree).__name__})")


def _command(tree: exp.Command, sql: str, dialect: str, escaped: bool) -> Statement:
    """Statements sqlglot keeps as raw commands: REPLACE INTO, GRANT, REVOKE, COPY…"""
    word = str(tree.this).upper()
    if word == "REPLACE":
        rewritten = re.sub(r"^\s*REPLACE\b", "INSERT", sql, count=1, flags=re.IGNORECASE)
        try:
            inner = sqlglot.parse_one(_for_parser(rewritten, escaped), read=dialect)
        except (ParseError, TokenError):
            return Statement(sql, UNKNOWN, (), detail="unparsable REPLACE")
        return Statement(sql, UPSERT, _tables(inner), detail="replace")
    if word in ("GRANT", "REVOKE"):
        return Statement(sql, OTHER, (), detail=word.lower())
    if word == "COPY":
        program = bool(re.search(r"\bPROGRAM\b", sql, re.IGNORECASE))
        return Statement(sql, OTHER, (), detail="copy program" if program else "copy")
    if word in ("SET", "SHOW", "EXPLAIN", "ANALYZE", "VACUUM", "BEGIN", "COMMIT", "ROLLBACK",
                "SAVEPOINT", "RELEASE", "LOCK", "CALL", "DO"):
        return Statement(sql, OTHER, (), detail=word.lower())
    return Statement(sql, UNKNOWN, (), detail=f"unrecognised command {word}")


def policy_attrs(stmt: Statement) -> dict[str, object]:
    """The attributes a policy rule sees for ``stmt``."""
    attrs: dict[str, object] = {"statement": stmt.detail if stmt.kind in (OTHER, DROP)
                                and stmt.detail else stmt.kind,
                                "statement_class": stmt.kind,
                                "tables": list(stmt.tables)}
    if stmt.where is not None:
        attrs["where"] = stmt.where
    return attrs
