"""Forks of a database: a full copy an episode can act on and that is dropped afterwards.

- SQLite: the backup API (``sqlite3.Connection.backup``), a consistent online copy to a new
  file next to the original.
- PostgreSQL: ``CREATE DATABASE fork TEMPLATE original``, a file-level copy made by the server.
  It needs no other session connected to the original while it runs.
- MariaDB/MySQL: there is no server-side database copy, and ``mysqldump`` may not be installed,
  so the fork is built over the same connection: ``CREATE DATABASE``, then for every table its
  own ``SHOW CREATE TABLE`` (keeps indexes, FKs, AUTO_INCREMENT, charset; ``CREATE TABLE LIKE``
  would lose the FKs), ``INSERT … SELECT`` inside one consistent-snapshot transaction, then the
  triggers (``SHOW CREATE TRIGGER``). Views and routines are not copied.
"""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.pool import NullPool

from revex.errors import ConfigError


def _dq(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def _bq(ident: str) -> str:
    return "`" + ident.replace("`", "``") + "`"


def fork_database(url: str) -> str:
    """Copy the database at ``url``; returns the URL of the copy.

    Raises ConfigError when the URL is bad, the server cannot be reached or refuses the copy.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"{url!r} is not a SQLAlchemy URL") from exc
    backend = parsed.get_backend_name()
    suffix = secrets.token_hex(4)
    try:
        if backend == "sqlite":
            return _fork_sqlite(parsed.database or "", suffix, url)
        if backend == "postgresql":
            return _fork_postgres(url, suffix)
        if backend in ("mysql", "mariadb"):
            return _fork_mysql(url, suffix)
    except DBAPIError as exc:
        raise ConfigError(f"cannot fork {parsed.render_as_string(hide_password=True)}: "
                          f"{exc.orig}") from exc
    raise ConfigError(f"cannot fork a {backend!r} database; revex forks sqlite, postgresql "
                      "and mysql/mariadb")


def drop_fork(url: str) -> None:
    """Drop a database made by :func:`fork_database` (missing is fine)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        for extra in ("", "-wal", "-shm", "-journal"):
            Path(f"{parsed.database}{extra}").unlink(missing_ok=True)
        return
    name = parsed.database or ""
    if "_fork_" not in name:
        raise ConfigError(f"refusing to drop {name!r}: not a revex fork")
    admin_db = "postgres" if backend == "postgresql" else "information_schema"
    engine = create_engine(parsed.set(database=admin_db), poolclass=NullPool,
                           isolation_level="AUTOCOMMIT")
    try:
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            if backend == "postgresql":
                cur.execute(f"DROP DATABASE IF EXISTS {_dq(name)} WITH (FORCE)")
            else:
                cur.execute(f"DROP DATABASE IF EXISTS {_bq(name)}")
        finally:
            raw.close()
    finally:
        engine.dispose()


def _fork_sqlite(path: str, suffix: str, url: str) -> str:
    if not path or path == ":memory:":
        raise ConfigError("an in-memory SQLite database cannot be forked; use a file")
    src_path = Path(path)
    if not src_path.exists():
        raise ConfigError(f"cannot fork {url}: {src_path} does not exist")
    dst_path = src_path.with_name(f"{src_path.stem}_fork_{suffix}{src_path.suffix}")
    src = sqlite3.connect(src_path)
    dst = sqlite3.connect(dst_path)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    return str(make_url(url).set(database=str(dst_path)).render_as_string(hide_password=False))


def _fork_postgres(url: str, suffix: str) -> str:
    parsed = make_url(url)
    name = f"{parsed.database}_fork_{suffix}"[:63]
    engine = create_engine(parsed.set(database="postgres"), poolclass=NullPool,
                           isolation_level="AUTOCOMMIT")
    try:
        raw = engine.raw_connection()
        try:
            raw.cursor().execute(f"CREATE DATABASE {_dq(name)} TEMPLATE "
                                 f"{_dq(parsed.database or '')}")
        finally:
            raw.close()
    finally:
        engine.dispose()
    return parsed.set(database=name).render_as_string(hide_password=False)


def _fork_mysql(url: str, suffix: str) -> str:
    parsed = make_url(url)
    src = parsed.database or ""
    name = f"{src}_fork_{suffix}"[:64]
    engine = create_engine(url, poolclass=NullPool)
    try:
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = "
                        "DATABASE() AND table_type = 'BASE TABLE' ORDER BY 1")
            tables = [r[0] for r in cur.fetchall()]
            cur.execute(f"CREATE DATABASE {_bq(name)}")
            cur.execute("SET FOREIGN_KEY_CHECKS = 0")
            creates, triggers = [], []
            for table in tables:
                cur.execute(f"SHOW CREATE TABLE {_bq(src)}.{_bq(table)}")
                creates.append(_one(cur)[1])
                cur.execute("SELECT trigger_name FROM information_schema.triggers WHERE "
                            "trigger_schema = DATABASE() AND event_object_table = %s "
                            "ORDER BY action_order", (table,))
                for (trigger,) in cur.fetchall():
                    cur.execute(f"SHOW CREATE TRIGGER {_bq(src)}.{_bq(trigger)}")
                    triggers.append(_one(cur)[2])
            cur.execute(f"USE {_bq(name)}")
            for create in creates:
                cur.execute(create)
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            for table in tables:
                cur.execute(f"INSERT INTO {_bq(name)}.{_bq(table)} SELECT * FROM "
                            f"{_bq(src)}.{_bq(table)}")
            raw.commit()
            for trigger in triggers:
                cur.execute(trigger)
        finally:
            raw.close()
    finally:
        engine.dispose()
    return parsed.set(database=name).render_as_string(hide_password=False)


def _one(cur: Any) -> Any:
    row = cur.fetchone()
    if row is None:
        raise ConfigError("the server returned no row for SHOW CREATE while forking")
    return row
