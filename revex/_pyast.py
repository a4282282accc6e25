"""``ast.parse`` and ``compile`` of a tree, one thread at a time.

CPython 3.11 keeps the counter its AST converter uses to bound recursion in interpreter-wide
state, not on the stack of the call. When a garbage collection inside one thread's conversion
runs a finalizer that releases the GIL, a second thread's conversion moves the same counter,
and the first raises ``SystemError: AST constructor recursion depth mismatch`` (cpython#106905
and the reports linked from it). The test harness parses solutions on a pool of threads, so
every parse and tree compile in revex goes through this lock. It is re-entrant: a
finalizer that parses on the thread already holding it then fails as CPython itself would,
instead of deadlocking.
"""

from __future__ import annotations

import ast
import threading
from types import CodeType

_LOCK = threading.RLock()


def parse(source: str, filename: str = "<unknown>") -> ast.Module:
    """:func:`ast.parse` of a module, serialized with every other parse and tree compile."""
    with _LOCK:
        return ast.parse(source, filename, "exec")


def compile_tree(tree: ast.Module, filename: str) -> CodeType:
    """:func:`compile` of a module's AST, serialized like :func:`parse`."""
    with _LOCK:
        return compile(tree, filename, "exec")
