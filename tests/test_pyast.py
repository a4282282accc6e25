"""revex._pyast: parses on many threads do not corrupt CPython's AST recursion counter.

The stress below is the one that makes plain ``ast.parse`` raise ``SystemError: AST
constructor recursion depth mismatch`` on CPython 3.11 (a finalizer that releases the GIL in
the middle of a conversion lets another thread's conversion run); the harness parses
solutions on a thread pool, and a CI run failed on exactly this.
"""

from __future__ import annotations

import threading
import time

from revex import _pyast

SOURCE = "def f(x):\n" + "".join(f"    y{i} = [x + {i} for _ in range(2)]\n"
                                 for i in range(200))


class _ReleasesGil:
    def __del__(self) -> None:
        time.sleep(0)  # gives up the GIL from inside whatever allocation collected us


def _stress(parse, threads: int = 4, rounds: int = 300) -> list[str]:
    errors: list[str] = []

    def work() -> None:
        for _ in range(rounds):
            try:
                tree = parse(SOURCE)
                _pyast.compile_tree(tree, "<stress>")
            except SystemError as exc:
                errors.append(str(exc))
                return
            cycle = [_ReleasesGil() for _ in range(5)]
            cycle.append(cycle)  # only the cycle collector frees it, mid-allocation elsewhere
            del cycle

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return errors


def test_parses_on_many_threads_never_raise_the_recursion_mismatch() -> None:
    assert _stress(_pyast.parse) == []

