"""The contract of a capture backend, and the row-image arithmetic they share.

A row image is the engine's own JSON text of a row (SQLite ``json_object`` of typed values,
PostgreSQL ``to_jsonb``, MariaDB ``JSON_OBJECT``); images of the same row compare equal as text,
so compare-and-set can be done by the engine. An action's change to one table is kept as its
net effect: ``removed`` (pre-images to put back) and ``added`` (post-images to take away).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Protocol

Cursor = Any
"""A DBAPI cursor (sqlite3, psycopg, PyMySQL)."""

LOG = "_revex_log"
ACTIONS = "_revex_actions"
PREFIX = "_revex"
NOT_OURS = PREFIX.replace("_", "\\_") + "%"
"""A LIKE pattern for revex's own objects (``NOT LIKE NOT_OURS``: the user's)."""

AFTER_UNDO = {
    "deleted": "missing after undo (its pre-image was not restored)",
    "changed": "differs from its pre-image after undo",
    "re-created by someone else": "still present after undo (the episode created it)",
}
"""How :meth:`Backend.drift` words a row that an undo did not put back (``undone=True``)."""


class Event(NamedTuple):
    """One row change the capture triggers saw: op I/U/D, old and new images (JSON text)."""

    table: str
    op: str
    old: str | None
    new: str | None


Log = dict[str, tuple[list[str], list[str]]]
"""What the capture triggers logged for one statement, per table: (old images, new images) as
multisets (the order of events does not matter for the net effect, see :func:`net_effect`)."""


def log_of(events: Iterable[Event]) -> Log:
    """The :data:`Log` of row events."""
    log: Log = {}
    for table, _, old, new in events:
        olds, news = log.get(table) or log.setdefault(table, ([], []))
        if old is not None:
            olds.append(old)
        if new is not None:
            news.append(new)
    return log


def net_effect(events: Iterable[Event]) -> dict[str, dict[str, list[str]]]:
    """Per table ``{"removed": [...], "added": [...]}``: the action's net change as multisets.

    A row added and removed again within the action cancels out, as does a row changed and
    changed back. Applying the events one by one (an old image cancels a pending new one, else
    it is removed; a new image cancels a pending removal, else it is added) never leaves an
    image both removed and added, so the result is the multiset difference of all old images
    and all new images (:func:`net_change`).
    """
    return net_change(log_of(events))


def net_change(log: Log) -> dict[str, dict[str, list[str]]]:
    """:func:`net_effect` of a :data:`Log`: per table the multiset difference, computed in C;
    tables whose images cancel out are left out."""
    out: dict[str, dict[str, list[str]]] = {}
    for table, (olds, news) in log.items():
        change = multiset_diff(olds, news)
        if change["removed"] or change["added"]:
            out[table] = change
    return out


def multiset_diff(before: Sequence[str], after: Sequence[str]) -> dict[str, list[str]]:
    """Net change between two full snapshots of a table (images as text)."""
    b, a = set(before), set(after)
    if len(b) == len(before) and len(a) == len(after):  # no copies: set difference, in C
        if b.isdisjoint(a):  # every image changed (a bulk UPDATE): nothing cancels
            return {"removed": list(before), "added": list(after)}
        same = b & a
        return {"removed": [i for i in before if i not in same],
                "added": [i for i in after if i not in same]}
    cb, ca = Counter(before), Counter(after)
    return {"removed": list((cb - ca).elements()), "added": list((ca - cb).elements())}


def chunks(items: Sequence[Any], size: int = 500) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def missing_copies(cur: Any, source: str, expr: str, mark: str,
                   images: Sequence[str]) -> list[str]:
    """The images of the multiset ``images`` that ``source`` (a table with its alias) holds
    fewer copies of than listed, counted by the engine: one query per 300 distinct images,
    for tables without a primary key."""
    need = Counter(images)
    have: Counter[str] = Counter()
    for part in chunks(list(need), 300):
        cur.execute(f"SELECT {expr}, count(*) FROM {source} WHERE {expr} IN "
                    f"({', '.join(mark for _ in part)}) GROUP BY 1", list(part))
        have.update({image: int(n) for image, n in cur.fetchall()})
    return [image for image, n in need.items() if have[image] < n]


def key_in(pk: Sequence[str], quote: Any, count: int, mark: str) -> str:
    """``(pk1, pk2) IN ((?, ?), …)`` for ``count`` keys."""
    one = "(" + ", ".join(mark for _ in pk) + ")"
    return f"({', '.join(quote(c) for c in pk)}) IN ({', '.join(one for _ in range(count))})"


class Backend(Protocol):
    """What the SQL effect needs from one database engine. All methods take a DBAPI cursor on
    a connection revex owns, inside the transaction the caller manages."""

    name: str
    param: str
    """The driver's placeholder (``?`` or ``%s``)."""
    transactional_ddl: bool
    truncate_by_trigger: bool
    """TRUNCATE fires a capture trigger (PostgreSQL) instead of going through DDL capture."""
    sequence_is_ddl: bool
    """Setting a counter commits implicitly (MariaDB's ALTER TABLE ... AUTO_INCREMENT): never
    inside a transaction that still holds work."""
    keeps_session: bool
    """The checks and undos of a database share one connection, kept until it closes: a
    server's (PostgreSQL's drift checks leave parsed images in temporary tables for the undo;
    a new PyMySQL connection alone costs 20-25 ms, most of it building a default TLS context).
    SQLite opens the file anew each time, so a replaced file is what is checked."""

    def quote(self, ident: str) -> str: ...

    def connect_setup(self, dbapi_conn: Any) -> None:
        """Per-connection settings (SQLite: no implicit transactions, foreign keys on)."""
        ...

    def begin(self, cur: Cursor, dbapi_conn: Any) -> None:
        """Make sure a transaction is open."""
        ...

    def install(self, cur: Cursor) -> None:
        """Create the undo log and marker tables and capture triggers on every user table."""
        ...

    def sync(self, cur: Cursor, tables: Iterable[str] | None = None) -> None:
        """(Re)install capture triggers on ``tables`` (all user tables when None)."""
        ...

    def drop_capture(self, cur: Cursor, tables: Iterable[str]) -> None:
        """Remove the capture triggers of ``tables`` (before DDL rewrites them)."""
        ...

    def uninstall(self, cur: Cursor) -> None:
        """Remove the capture triggers (the log and marker tables stay for undo)."""
        ...

    def set_tag(self, cur: Cursor, tag: str | None) -> None:
        """Start (tag) or stop (None) capturing this session's changes under ``tag``."""
        ...

    def open_capture(self, cur: Cursor, tag: str) -> dict[str, list[Any]]:
        """Before a DML statement: :meth:`sequences`, then :meth:`set_tag` ``tag``; the
        sequences (see :class:`StepwiseCapture`; PostgreSQL and MariaDB do both in one round
        trip)."""
        ...

    def close_capture(self, cur: Cursor, tag: str, episode: str, seq: int
                      ) -> tuple[Log, dict[str, list[Any]]]:
        """After it: :meth:`read_log`, the tag cleared, :meth:`sequences` and the action's
        marker row (:func:`mark`); the log and the sequences."""
        ...

    def read_log(self, cur: Cursor, tag: str) -> Log:
        """The images logged under ``tag`` (see :func:`log_of`), and delete them."""
        ...

    def tables(self, cur: Cursor) -> list[str]:
        """User tables (not revex's own)."""
        ...

    def snapshot_rows(self, cur: Cursor, table: str) -> list[str]:
        """Every row of ``table`` as images."""
        ...

    def drift(self, cur: Cursor, table: str, change: dict[str, list[str]], *,
              undone: bool = False) -> list[str]:
        """Lines describing rows of ``table`` not in the state ``change`` left them in.
        ``undone``: ``change`` is an inverse checked after an undo (worded as such)."""
        ...

    def restore(self, cur: Cursor, table: str, change: dict[str, list[str]], *,
                force: bool) -> None:
        """Take the ``added`` rows away and put the ``removed`` rows back."""
        ...

    def undo_checked(self, cur: Cursor, table: str, change: dict[str, list[str]]) -> bool:
        """Undo ``change`` on ``table`` with its compare-and-set and its verification at once,
        set-based; True when done and verified (the pre-state is back), False when it changed
        nothing and the caller must take the general path (:meth:`drift`, :meth:`restore`,
        :meth:`drift` of the inverse)."""
        ...

    def undo_begin(self, cur: Cursor, dbapi_conn: Any) -> None:
        """Open the undo transaction with FK actions and user triggers off."""
        ...

    def undo_end(self, cur: Cursor, dbapi_conn: Any) -> None:
        """Before COMMIT of an undo: turn back on what undo_begin turned off."""
        ...

    def ddl_before(self, cur: Cursor, stmt: Any, tag: str) -> dict[str, Any]:
        """What DDL ``stmt`` will destroy (schema and rows), before it runs."""
        ...

    def ddl_after(self, cur: Cursor, stmt: Any, before: dict[str, Any]) -> dict[str, Any]:
        """The schema DDL left (for compare-and-set at undo)."""
        ...

    def ddl_drift(self, cur: Cursor, info: dict[str, Any]) -> list[str]: ...

    def shape_drift(self, cur: Cursor, info: dict[str, Any]) -> list[str]:
        """After :meth:`ddl_undo`: lines naming each table not back in its pre-DDL shape
        (and rows, where the snapshot has them); [] when all are."""
        ...

    def ddl_undo(self, cur: Cursor, info: dict[str, Any]) -> None: ...

    def cascade_before(self, cur: Cursor, stmt: Any) -> Any:
        """Snapshot what FK cascades may change that triggers will not see (MariaDB)."""
        ...

    def cascade_after(self, cur: Cursor, before: Any) -> dict[str, dict[str, list[str]]]:
        """Net changes of the tables :meth:`cascade_before` snapshotted."""
        ...

    def sequences(self, cur: Cursor) -> dict[str, list[Any]]:
        """Counter name -> value: PostgreSQL sequences ([last_value, is_called]), SQLite's
        ``sqlite_sequence`` ([seq]), MariaDB's AUTO_INCREMENT per table ([next value])."""
        ...

    def set_sequence(self, cur: Cursor, name: str, value: list[Any] | None) -> None:
        """Put a sequence back (None: it did not exist before the action)."""
        ...


def mark(cur: Cursor, param: str, episode: str, seq: int) -> None:
    """The marker row of action ``seq``: written in the action's own transaction, so it exists
    exactly when the action's change was committed."""
    cur.execute(f"INSERT INTO {ACTIONS} (episode, seq) VALUES ({param}, {param})",
                (episode, seq))


class StepwiseCapture:
    """:meth:`Backend.open_capture` and :meth:`Backend.close_capture` as the separate calls
    they stand for (SQLite: in-process, no round trips to save)."""

    param: str

    def open_capture(self: Any, cur: Cursor, tag: str) -> dict[str, list[Any]]:
        seqs: dict[str, list[Any]] = self.sequences(cur)
        self.set_tag(cur, tag)
        return seqs

    def close_capture(self: Any, cur: Cursor, tag: str, episode: str, seq: int
                      ) -> tuple[Log, dict[str, list[Any]]]:
        log: Log = self.read_log(cur, tag)
        self.set_tag(cur, None)
        after: dict[str, list[Any]] = self.sequences(cur)
        mark(cur, self.param, episode, seq)
        return log, after
