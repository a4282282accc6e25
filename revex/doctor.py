"""``revex doctor``: which features work on this machine, and why not."""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path

from revex.errors import RevexError

Check = tuple[str, bool, str]


def _state_dir(state_dir: Path | None) -> Check:
    from revex.runtime.runtime import Runtime, default_state_dir

    path = state_dir or default_state_dir()
    if not (path / "journal.db").exists():  # a diagnostic creates no state: say what would be
        return _absent_state_dir(path)
    try:
        with Runtime(state_dir=state_dir, audit=None, recover=False) as rt:
            report = rt.verify()
            return ("state dir + journal", report.ok,
                    f"{rt.state_dir}: {report.checked} records"
                    + ("" if report.ok else f", BROKEN at {report.first_bad_seq}: {report.reason}"))
    except RevexError as exc:
        return ("state dir + journal", False, str(exc))


def _absent_state_dir(path: Path) -> Check:
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if path.exists() and not path.is_dir():
        return ("state dir + journal", False, f"{path} exists and is not a directory")
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        return ("state dir + journal", False,
                f"{path} does not exist and cannot be created: {ancestor} is not a writable "
                "directory; choose another with --state-dir or REVEX_STATE_DIR")
    return ("state dir + journal", True,
            f"{path}: no journal yet (the first episode creates it)")


def _sqlite() -> Check:
    return ("sqlite (journal)", True, f"SQLite {sqlite3.sqlite_version}, WAL, synchronous=FULL")


def _fsync() -> Check:
    with tempfile.NamedTemporaryFile() as f:
        f.write(b"x")
        f.flush()
        os.fsync(f.fileno())
    return ("fsync", True, "durable writes available")


def checks(state_dir: Path | None = None) -> list[Check]:
    """All doctor checks, each (feature, ok, why)."""
    out: list[Check] = []
    probes: list[Callable[[], Check | list[Check]]] = [
        lambda: _state_dir(state_dir), _sqlite, _fsync, _sandbox_checks,
    ]
    for probe in probes:
        result = probe()
        out.extend(result if isinstance(result, list) else [result])
    return out


def _sandbox_checks() -> list[Check]:
    import revex.runtime.sandbox as sandbox

    probe = getattr(sandbox, "doctor", None)
    if probe is None:
        return [("sandbox", False, "no sandbox backends are installed in this build")]
    rows = list(probe())
    from revex.errors import SandboxError

    try:
        backend = sandbox.select_backend("warm")
        chosen = ("backend in use", True, f"{backend.name}: warm zygotes for plain Python runs, "
                  "cold nsjail for workspace, argv and bash runs")
        close = getattr(backend, "close", None)
        if close is not None:
            close()
    except SandboxError as exc:
        fallback = sandbox.select_backend(None)
        chosen = ("backend in use", fallback.name != "process",
                  f"{fallback.name} (warm path unavailable: {exc})"
                  + (": WEAK isolation, no namespaces" if fallback.name == "process" else ""))
    return [*rows, chosen, *_language_checks()]


def _language_checks() -> list[Check]:
    """Each language with its toolchain and version (or why it is missing), probed by a
    hello-world compiled and run in the nsjail sandbox."""
    from revex.errors import SandboxError
    from revex.runtime.sandbox.languages import doctor_rows

    try:
        from revex.runtime.sandbox.nsjail import NsjailBackend

        return doctor_rows(NsjailBackend().run)
    except (SandboxError, ImportError) as exc:
        return [*doctor_rows(None), ("language sandbox probe", False, str(exc))]
