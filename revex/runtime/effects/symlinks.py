"""Symlink targets, checked by resolution beneath the workspace (not by string normalisation).

``l1 -> .``, ``up -> l1/..``, ``leak -> up/x``: each looks harmless lexically, together they
lead out. :func:`symlink_problem` refuses what could: a target must be relative, its ``..``
components may only come first and may not climb above the link's own directory, and following
it through the workspace as it is now, symlink by symlink, must never step above the root.
"""

from __future__ import annotations

import os
import stat

from revex.runtime.effects.workspace import Manifest, PathEscape, Workspace

MAX_LINK_HOPS = 40  # the kernel's own limit (ELOOP)


def symlink_problem(ws: Workspace, rel: str, target: str) -> str | None:
    """Why a symlink ``rel -> target`` could lead outside the workspace, or None.

    Checked by resolution, not by string normalisation: the target must be relative, its
    ``..`` components may only come first and may not climb above the link's directory
    (so no later rename of a name inside it can make it climb), and following it through
    the workspace as it is now, symlink by symlink, must never step above the root. A
    target that does not exist yet is fine: by the rules above, whatever is created there
    later is checked the same way when it is created.
    """
    if not target or "\x00" in target:
        return f"symlink target {target!r} is not a usable path"
    if target.startswith("/"):
        return (f"symlink {rel!r} -> {target!r}: absolute targets would point outside the "
                "workspace; use a relative target")
    parts = [p for p in target.split("/") if p not in ("", ".")]
    lead = 0
    while lead < len(parts) and parts[lead] == "..":
        lead += 1
    if ".." in parts[lead:]:
        return (f"symlink {rel!r} -> {target!r}: a '..' after a name climbs out of whatever "
                "that name resolves to (through another symlink it can leave the "
                "workspace); write the target without it")
    stack = rel.split("/")[:-1]
    if lead > len(stack):
        return f"symlink {rel!r} -> {target!r} would point outside the workspace"
    stack = stack[:len(stack) - lead]
    return _resolve_beneath(ws, rel, target, stack, parts[lead:])

def _resolve_beneath(ws: Workspace, rel: str, target: str, stack: list[str],
                     queue: list[str]) -> str | None:
    hops = 0
    while queue:
        name = queue.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            if not stack:
                return (f"symlink {rel!r} -> {target!r} resolves (through the symlinks on "
                        "its way) to a place outside the workspace")
            stack.pop()
            continue
        try:
            st = ws.lstat("/".join([*stack, name]))
        except PathEscape:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > MAX_LINK_HOPS:
                return f"symlink {rel!r} -> {target!r} resolves through a symlink loop"
            with ws.parent("/".join([*stack, name])) as (fd, last):
                link = os.readlink(last, dir_fd=fd)
            if link.startswith("/"):
                return (f"symlink {rel!r} -> {target!r} resolves through "
                        f"{'/'.join([*stack, name])!r}, an absolute symlink")
            queue[:0] = link.split("/")
            continue
        if st is not None and stat.S_ISDIR(st.st_mode):
            stack.append(name)
            continue
        # missing (or not a directory): nothing more resolves now; what follows must not
        # depend on what is created there later
        if ".." in queue:
            return (f"symlink {rel!r} -> {target!r} resolves through "
                    f"{'/'.join([*stack, name])!r}, which does not exist, and then '..': "
                    "what it means depends on what is created there later")
        return None
    return None


def check_moved_links(rdst: str, want: Manifest) -> None:
    """Refuse a rename that would move a symlink (or a tree holding one) to a place where the
    leading ``..`` of its target climbs above the workspace. Raises PathEscape."""
    stack = [(rdst, want)]
    while stack:
        rel, manifest = stack.pop()
        if manifest["type"] == "symlink":
            parts = [p for p in manifest["target"].split("/") if p not in ("", ".")]
            lead = 0
            while lead < len(parts) and parts[lead] == "..":
                lead += 1
            if lead > rel.count("/"):
                raise PathEscape(f"renaming would move the symlink -> {manifest['target']!r} to "
                                 f"{rel!r}, from where it points outside the workspace",
                                 target=rel)
        for name, child in (manifest.get("children") or {}).items():
            stack.append((name if rel == "." else f"{rel}/{name}", child))
