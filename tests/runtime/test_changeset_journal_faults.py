"""A change set applied in a journaled group whose outcomes cannot be written (a full disk at
that moment) must not let its effects escape: the group is undone before the error is raised,
and closing the episode leaves the workspace exactly as it was.

The fault is injected with a hook around the journal's group append (the second of the two
group writes: the outcomes), standing in for ENOSPC at that instant; the real-tmpfs version of
the same fault for single actions is in test_disk_full.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from revex import Runtime
from revex.errors import JournalError
from revex.runtime.journal import Status


def test_a_group_whose_outcomes_cannot_be_journaled_is_undone(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "keep.txt").write_text("keep")
    with Runtime(state_dir=tmp_path / "state", audit=None) as rt:
        real = rt.journal.append_many
        calls = {"n": 0}

        def failing(rows: list, **options: Any) -> list:  # type: ignore[type-arg]
            if len(rows) > 1 and all(r.get("status") in (Status.DONE, Status.FAILED)
                                     and str(r.get("kind", "")).startswith("fs.") for r in rows):
                calls["n"] += 1
                raise JournalError("database or disk is full (SQLITE_FULL); the disk holding "
                                   "the state dir is full: free space and retry")
            return real(rows, **options)

        with rt.episode(ws) as ep:
            rt.journal.append_many = failing  # type: ignore[method-assign]
            try:
                with pytest.raises(JournalError, match="were undone because the journal"):
                    ep.run("import os\nfor i in range(5): open(f'f{i}.txt', 'w').write(str(i))")
            finally:
                rt.journal.append_many = real  # type: ignore[method-assign]
            assert calls["n"] == 1
            assert sorted(p.name for p in ws.iterdir()) == ["keep.txt"]
        [info] = rt.episodes()
        assert info.status == "rolled_back"
    assert sorted(p.name for p in ws.iterdir()) == ["keep.txt"]
