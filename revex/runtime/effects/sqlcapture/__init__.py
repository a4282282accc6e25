"""In-engine change capture, one module per database: SQLite, PostgreSQL, MariaDB/MySQL.

Every backend implements :class:`~revex.runtime.effects.sqlcapture.base.Backend`: install
capture triggers that write old/new row images into an undo log in the same transaction, read
and clear that log after each statement, snapshot what triggers cannot see (DDL, MariaDB FK
cascades, counters: sequences and AUTO_INCREMENT), and put rows, schema and counters back with
compare-and-set, verifying the pre-state before an undo commits (``checks``).
"""

from __future__ import annotations

from revex.runtime.effects.sqlcapture.base import Backend


def backend_for(dialect_name: str) -> Backend:
    """The capture backend for a SQLAlchemy dialect name; ConfigError if unsupported."""
    from revex.errors import ConfigError

    if dialect_name == "sqlite":
        from revex.runtime.effects.sqlcapture.sqlite import SQLiteBackend
        return SQLiteBackend()
    if dialect_name == "postgresql":
        from revex.runtime.effects.sqlcapture.postgres import PostgresBackend
        return PostgresBackend()
    if dialect_name in ("mysql", "mariadb"):
        from revex.runtime.effects.sqlcapture.mysql import MySQLBackend
        return MySQLBackend()
    raise ConfigError(f"revex cannot capture changes on {dialect_name!r} databases; "
                      "use sqlite, postgresql or mysql/mariadb")


__all__ = ["Backend", "backend_for"]
