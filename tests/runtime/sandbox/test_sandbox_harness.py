"""Test verdicts cannot be forged: a correct solution passes every test, every forgery none."""

from __future__ import annotations

import pytest

from revex.runtime.sandbox.base import InteractiveBackend
from revex.runtime.sandbox.harness import decode, encode, run_tests, run_tests_many
from revex.runtime.sandbox.humaneval import canonical_samples, evaluate, humaneval_problems
from revex.runtime.sandbox.nsjail import NsjailBackend
from revex.runtime.sandbox.warm import WarmPythonBackend

CHECK = """
def check(candidate):
    assert candidate(1) == 2
    assert candidate(5) == 6
    assert candidate(-2) == -1
"""
TOPLEVEL = "assert inc(1) == 2\nassert inc(10) == 11\nassert double(inc(1)) == 4\n"
CORRECT = "def inc(x):\n    return x + 1\n\ndef double(x):\n    return 2 * x\n"

FORGERIES = {
    "sys_exit": "import sys\ndef inc(x):\n    sys.exit(0)",
    "sys_exit_at_import": "import sys\nsys.exit(0)",
    "os_exit": "import os\ndef inc(x):\n    os._exit(0)",
    "raise_systemexit": "def inc(x):\n    raise SystemExit(0)",
    "keyboard_interrupt": "def inc(x):\n    raise KeyboardInterrupt",
    "kill_self": "import os\ndef inc(x):\n    os.kill(os.getpid(), 9)",
    "killpg": "import os, signal\ndef inc(x):\n    os.killpg(0, signal.SIGKILL)",
    "atexit": "import atexit, os\natexit.register(lambda: print('ALL TESTS PASSED'))\n"
              "def inc(x):\n    raise SystemExit(0)",
    "excepthook": "import sys\nsys.excepthook = lambda *a: print('{\"passed\": true}')\n"
                  "def inc(x):\n    raise ValueError",
    "thread_exit": "import threading, os\ndef inc(x):\n"
                   "    threading.Thread(target=lambda: os._exit(0)).start()\n"
                   "    import time; time.sleep(1)",
    "fake_stdout": ("def inc(x):\n    print('{\"ok\": 2}')\n    print('PASSED 3/3')\n"
                    "    return None"),
    "fake_protocol_reply": (
        "import os, json\ndef inc(x):\n"
        "    for fd in range(3, 64):\n"
        "        try:\n"
        "            os.write(fd, (json.dumps({'id': 'x', 'ok': True}) + '\\n').encode())\n"
        "        except OSError:\n"
        "            pass\n"
        "    return None"),
    "lying_eq": "class Any_:\n    def __eq__(s, o): return True\n"
                "    def __ne__(s, o): return False\n"
                "    def __bool__(s): return True\ndef inc(x):\n    return Any_()",
    "int_subclass": ("class I(int):\n    def __eq__(s, o): return True\n"
                     "def inc(x):\n    return I(0)"),
    "monkeypatch_json": "import json, builtins\njson.dumps = lambda *a, **k: '{\"ok\": true}'\n"
                        "builtins.AssertionError = Exception\ndef inc(x):\n    return 0",
    "inspect_frames": "import sys, gc\ndef inc(x):\n    f = sys._getframe()\n"
                      "    while f.f_back: f = f.f_back\n"
                      "    for o in gc.get_objects():\n        pass\n"
                      "    return f.f_globals.get('expected', 0)",
    "read_tests_from_disk": "import os\ndef inc(x):\n"
                            "    for root, _, files in os.walk('/'):\n"
                            "        if root.startswith('/proc'): continue\n"
                            "        for f in files:\n"
                            "            if f.startswith('test_sandbox'): return 'found'\n"
                            "    return 0",
    "write_result_file": "def inc(x):\n    open('/tmp/result.json', 'w').write('{\"passed\": 3}')\n"
                         "    return 0",
    "pickle_bomb": "import pickle, os\nclass P:\n"
                   "    def __reduce__(self): return (os.system, ('x',))\n"
                   "def inc(x):\n    return P()",
    "huge_reply": "def inc(x):\n    return 'x' * (80 << 20)",
    "hang": "def inc(x):\n    while True: pass",
}


@pytest.fixture(scope="module", params=["cold", "warm"])
def backend(request: pytest.FixtureRequest, warm: WarmPythonBackend) -> InteractiveBackend:
    """Verdicts must be unforgeable on both paths (warm is the default for test runs)."""
    return NsjailBackend() if request.param == "cold" else warm


def test_correct_solution_passes_both_test_styles(backend: InteractiveBackend) -> None:
    for tests in (CHECK, TOPLEVEL):
        report = run_tests(CORRECT, tests, "inc", backend=backend)
        assert report.all_passed and report.total == 3 and report.pass_rate == 1.0


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forgery_passes_nothing(backend: InteractiveBackend, name: str) -> None:
    reports = run_tests_many([FORGERIES[name], CORRECT], CHECK, "inc", backend=backend,
                             call_timeout_s=1.5)
    assert reports[0].passed == 0 and reports[0].total >= 3, reports[0]
    assert reports[1].all_passed


def test_early_exit_fails_current_and_remaining(backend: InteractiveBackend) -> None:
    sol = "import os\ndef inc(x):\n    if x == 5: os._exit(0)\n    return x + 1"
    report = run_tests(sol, CHECK, "inc", backend=backend)
    assert [r.status for r in report.results] == ["passed", "error", "error"]


def test_timeout_is_per_test(backend: InteractiveBackend) -> None:
    sol = "def inc(x):\n    while x == 5: pass\n    return x + 1"
    report = run_tests(sol, CHECK, "inc", backend=backend, call_timeout_s=1.0)
    assert [r.status for r in report.results][:2] == ["passed", "timeout"]


def test_wire_format_round_trips_plain_values() -> None:
    value = [1, 2.5, float("inf"), (1, "a"), {1, 2}, frozenset({3}), {"k": [b"\x00"]}, None,
             True, 1 + 2j]
    assert decode(encode(value)) == value
    assert decode(encode(True)) is True
    assert decode(encode(float("nan"))) != decode(encode(float("nan")))


def test_all_canonical_humaneval_solutions_pass() -> None:
    problems = humaneval_problems()
    assert len(problems) == 164
    ev = evaluate(canonical_samples(problems), problems=problems)  # default: warm, two per CPU
    failed = [r["task_id"] for r in ev.results if not r["passed"]]
    assert failed == [] and ev.pass_at_1 == 1.0
