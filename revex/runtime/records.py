"""Journal records: the row type, its canonical JSON and hash (the arithmetic of the chain that
:mod:`revex.runtime.journal` writes and :mod:`revex.runtime.integrity` checks), and decoding a
stored row back into a :class:`Record`.

A record's hash is ``sha256(prev_hash || canonical_json(content))`` where the content is every
field of :data:`_HASHED_FIELDS` and canonical JSON is ``json.dumps`` with sorted keys, no spaces
and ``ensure_ascii=False``. Appending encodes each JSON field once and hashes that text; a checked
read hashes the text as stored (:func:`encoded_record_hash`), so both hash the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from enum import StrEnum
from json.encoder import (  # type: ignore[attr-defined]
    c_make_encoder,
    encode_basestring,
)
from pathlib import Path
from typing import Any

from revex.errors import JournalCorrupt

GENESIS = "0" * 64
"""The ``prev_hash`` of the first record."""

class Status(StrEnum):
    INTENT = "INTENT"
    DONE = "DONE"
    FAILED = "FAILED"
    DENIED = "DENIED"
    UNDONE = "UNDONE"
    EVENT = "EVENT"


_HASHED_FIELDS = (
    "seq", "episode_id", "action_seq", "kind", "target", "status", "decision", "rule",
    "params", "undo", "result", "error", "refers_to", "ts",
)


@dataclass(frozen=True)
class Record:
    """One journal row. ``params``, ``undo`` and ``result`` are JSON-decoded dicts."""

    seq: int
    episode_id: str
    action_seq: int
    kind: str
    target: str
    status: Status
    decision: str = ""
    rule: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    undo: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    refers_to: int | None = None
    ts: float = 0.0
    prev_hash: str = GENESIS
    hash: str = ""

    def to_json(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in _HASHED_FIELDS}
        out["status"] = str(self.status)
        out["prev_hash"] = self.prev_hash
        out["hash"] = self.hash
        return out


def _record(*values: Any) -> Record:
    """``Record(*values)`` (every field, in order) without the frozen dataclass's
    ``__init__``, which sets each of the 16 fields through ``object.__setattr__``: three times
    the cost, for every record a rollback reads or writes. The same object: the fields land
    in its ``__dict__``, where that ``__init__`` puts them."""
    rec = object.__new__(Record)
    rec.__dict__.update(zip(_RECORD_FIELDS, values, strict=True))
    return rec


def _not_json(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


# json.dumps with options builds an encoder for every call, which costs more than encoding a
# record's small objects: build the C encoder once (no circular check: a circular object ends
# in RecursionError, which canonical turns into the ValueError json.dumps raises)
_ENCODE = (c_make_encoder(None, _not_json, encode_basestring, None, ":", ",", True, False, True)
           if c_make_encoder is not None else None)


def canonical(obj: Any) -> str:
    """``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``."""
    if _ENCODE is None:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        return "".join(_ENCODE(obj, 0))
    except RecursionError as exc:
        raise ValueError("Circular reference detected") from exc


def record_hash(prev_hash: str, content: dict[str, Any]) -> str:
    return hashlib.sha256((prev_hash + canonical(content)).encode()).hexdigest()


def _scalar(value: Any) -> str:
    if type(value) is str:
        return encode_basestring(value)
    if type(value) is int:
        return int.__repr__(value)
    if type(value) is float and math.isfinite(value):
        return float.__repr__(value)  # what the encoder writes for a finite float
    if value is None:
        return "null"
    return canonical(value)


def encoded_record_hash(prev_hash: str, content: dict[str, Any], params: str, undo: str,
                        result: str) -> str:
    """:func:`record_hash` of a record whose three JSON fields are given as encoded
    (canonical) text: what appending hashes, having encoded each once, and what the checked
    read of an episode hashes, from the text as stored. ``content`` holds the other fields."""
    return hashlib.sha256(
        (prev_hash + _content_json(content, params, undo, result)).encode()).hexdigest()


def _content_json(content: dict[str, Any], params: str, undo: str, result: str) -> str:
    """``canonical`` of a record's hashed content, given its three JSON fields already
    encoded: the same text (a test checks it)."""
    c = content
    return (f'{{"action_seq":{_scalar(c["action_seq"])},"decision":{_scalar(c["decision"])},'
            f'"episode_id":{_scalar(c["episode_id"])},"error":{_scalar(c["error"])},'
            f'"kind":{_scalar(c["kind"])},"params":{params},'
            f'"refers_to":{_scalar(c["refers_to"])},"result":{result},'
            f'"rule":{_scalar(c["rule"])},"seq":{_scalar(c["seq"])},'
            f'"status":{_scalar(c["status"])},"target":{_scalar(c["target"])},'
            f'"ts":{_scalar(c["ts"])},"undo":{undo}}}')


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str = ""


def config_digest(config: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(config).encode()).hexdigest()


def record_from_row(row: tuple[Any, ...], path: Path) -> Record:
    """A Record from a ``SELECT *`` row; JournalCorrupt when the row cannot be decoded."""
    try:
        return _record(row[0], row[1], row[2], row[3], row[4],
                       _STATUS.get(row[5]) or Status(row[5]), row[6], row[7], _obj(row[8]),
                       _obj(row[9]), _obj(row[10]), row[11], row[12], row[13], row[14],
                       row[15])
    except (TypeError, ValueError) as exc:
        raise JournalCorrupt(f"record {row[0]} of the journal at {path} cannot be decoded "
                             f"({exc}); run `revex verify`") from exc


_STATUS = {str(s): s for s in Status}
_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(Record))


def _obj(text: str) -> dict[str, Any]:
    # most records leave two of params/undo/result empty: skip the JSON parser for those
    if text == "{}":
        return {}
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, found {type(value).__name__}")
    return value
