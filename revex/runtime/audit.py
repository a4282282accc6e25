"""Audit events: one structlog JSON line per journal record.

The sink is chosen per Runtime (``audit=``): ``"file"`` (``<state_dir>/audit.jsonl``, the
default), ``"stderr"``, a path, an open text stream, or ``None`` (or ``"none"``, never a file of
that name) for no events. No global structlog configuration is touched.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import IO, Any

import structlog

from revex.runtime.journal import Record

AuditSink = str | Path | IO[str] | None


class AuditLog:
    """Writes one JSON event per journal record to its sink."""

    def __init__(self, sink: AuditSink, state_dir: Path) -> None:
        self._file: IO[str] | None = None
        self._lock = threading.Lock()
        stream: IO[str] | None
        if sink is None or sink == "none":  # "none": what a CLI flag or a config file can spell
            stream = None
        elif sink == "stderr":
            stream = sys.stderr
        elif sink == "file":
            stream = self._file = open(state_dir / "audit.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        elif isinstance(sink, str | Path):
            stream = self._file = open(sink, "a", encoding="utf-8")  # noqa: SIM115
        else:
            stream = sink
        self._logger: Any = None
        if stream is not None:
            self._logger = structlog.wrap_logger(
                structlog.PrintLogger(stream),  # type: ignore[arg-type]
                processors=[
                    structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.JSONRenderer(sort_keys=True),
                ],
            )

    def __call__(self, rec: Record) -> None:
        if self._logger is None:
            return
        with self._lock:
            self._logger.info(
                "journal.record",
                seq=rec.seq,
                episode=rec.episode_id,
                action=rec.action_seq,
                kind=rec.kind,
                target=rec.target,
                status=str(rec.status),
                decision=rec.decision,
                rule=rec.rule,
                params=rec.params,
                error=rec.error,
                refers_to=rec.refers_to,
                hash=rec.hash,
            )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
