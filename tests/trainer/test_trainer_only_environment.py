"""The runtime is the only environment: rewards and env tools never run model text themselves.

A probe process installs an audit hook (``sys.addaudithook`` cannot be removed, hence the
subprocess), then scores completions with every reward and drives every env tool. Each
completion carries a unique marker string constant. The hook records:

- every process start (``subprocess.Popen``, ``os.exec``, ``os.posix_spawn``, ``os.spawn``,
  ``os.system``, ``os.fork``): the only executables allowed are the nsjail binary (the sandbox:
  cold runs, which may carry the code to run inside the jail, and the warm zygotes), util-linux
  ``setpriv`` exec'ing nsjail with a death signal, and ruff, a static analyser that reads files
  (its argv must not contain the marker);
- every ``compile`` whose source contains the marker: allowed only when the caller is
  ``ast.parse`` (a syntax tree, never code; the event's arguments do not carry the flags, so
  the caller's frame tells them apart);
- every ``exec`` of a code object that holds the marker anywhere in its constants: never
  allowed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = r'''
import ast, json, os, sys, tempfile, types

MARKER = "revex_marker_" + os.urandom(6).hex()
PROCESS_EVENTS = ("subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
                  "os.fork", "os.forkpty")
AST_FILE = ast.__file__
spawned, violations, ast_only = [], [], [0]
active = [False]


def holds_marker(code, depth=0):
    if depth > 50:
        return False
    for const in code.co_consts:
        if isinstance(const, str) and MARKER in const:
            return True
        if isinstance(const, types.CodeType) and holds_marker(const, depth + 1):
            return True
    return False


def hook(event, args):
    if not active[0]:
        return
    if event in PROCESS_EVENTS:
        exe = args[0] if args else None
        argv = args[1] if len(args) > 1 else None
        spawned.append({"event": event, "exe": str(exe),
                        "argv": [str(a) for a in argv] if isinstance(argv, (list, tuple))
                        else str(argv)})
    elif event == "compile":
        source = args[0]
        if isinstance(source, bytes):
            source = source.decode("utf-8", "replace")
        if isinstance(source, ast.AST):
            source = ast.unparse(source)
        if isinstance(source, str) and MARKER in source:
            caller = sys._getframe(1).f_code
            if caller.co_filename == AST_FILE and caller.co_name == "parse":
                ast_only[0] += 1
            else:
                violations.append(f"compile from {caller.co_filename}:{caller.co_name}")
    elif event == "exec":
        code = args[0]
        if isinstance(code, types.CodeType) and holds_marker(code):
            violations.append(f"exec of {code.co_filename}")


from revex import Limits, Runtime
import shutil
from revex.runtime.sandbox.nsjail import nsjail_binary
from revex.trainer.env import RevexEnv
from revex.trainer.rewards import (CodeQualityReward, EfficiencyReward, ExecutionCache,
                                   ExecutionFeedbackReward, TestPassReward, _ruff_binary)

allowed = {os.path.realpath(nsjail_binary()), os.path.realpath(_ruff_binary())}
if shutil.which("setpriv"):  # starts nsjail with a death signal tied to this process
    allowed.add(os.path.realpath(shutil.which("setpriv")))
limits = Limits(wall_s=5, cpu_s=5, memory_mb=256)
prompt = "def inc(x):\n"
tag = f"    _tag = {MARKER!r}\n"
completions = [tag + "    return x + 1\n", tag + "    return x\n", tag + "    return x +\n",
               tag + "    import os\n    os._exit(0)\n",
               tag + "    import subprocess\n    return subprocess.call('ls', shell=True)\n"]
n = len(completions)
columns = {"tests": ["assert inc(1) == 2\nassert inc(2) == 3\n"] * n,
           "entry_point": ["inc"] * n, "reference": ["    return x + 1\n"] * n}
sys.addaudithook(hook)

with tempfile.TemporaryDirectory() as state:
    rt = Runtime(state_dir=state, policy="training", audit=None)
    cache = ExecutionCache()
    rewards = [TestPassReward(rt, limits=limits, cache=cache),
               ExecutionFeedbackReward(rt, limits=limits, cache=cache),
               CodeQualityReward(),
               EfficiencyReward(rt, limits=limits, cache=cache, repeat=2)]
    rewards_out = {}
    active[0] = True
    for reward in rewards:
        rewards_out[reward.__name__] = reward([prompt] * n, completions, **columns)
    with RevexEnv.bind(rt)() as env:
        env.reset(tests=columns["tests"][0], entry_point="inc")
        solution = prompt + completions[0]
        tool_out = [env.write_file("solution.py", solution), env.read_file("solution.py"),
                    env.run_python(solution + "print(inc(1))\n"), env.run_tests(solution),
                    env.sql(f"SELECT '{MARKER}'"),
                    env.http_request("POST", "http://127.0.0.1:9/x", MARKER)]
        env_reward = env.get_reward()
    active[0] = False
    rt.close()

print(json.dumps({"spawned": spawned, "violations": violations, "ast_only": ast_only[0],
                  "allowed": sorted(allowed), "marker": MARKER, "rewards": rewards_out,
                  "tools": tool_out, "env_reward": env_reward}))
'''


@pytest.fixture(scope="module")
def probe() -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=240, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_probe_scored_and_used_every_tool(probe: dict[str, object]) -> None:
    rewards = probe["rewards"]
    assert isinstance(rewards, dict)
    assert rewards["test_pass"] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert rewards["exec_feedback"][2] == -1.0  # the syntax error was found by parsing
    assert rewards["code_quality"][4] < 0
    assert probe["env_reward"] == 1.0
    assert probe["ast_only"], "the hook must have seen completions being parsed"


def test_only_the_sandbox_and_a_static_analyser_are_spawned(probe: dict[str, object]) -> None:
    spawned = probe["spawned"]
    allowed = probe["allowed"]
    assert isinstance(spawned, list) and isinstance(allowed, list)
    assert spawned, "the sandbox must have been started under the hook"
    for item in spawned:
        assert item["event"] != "os.fork" and item["event"] != "os.system", item
        exe = os.path.realpath(item["exe"])
        assert exe in allowed, item
        # the sandbox may carry code to run inside the jail (setpriv only to exec nsjail with a
        # death signal); no other process may
        starts_nsjail = "nsjail" in exe or (
            "setpriv" in exe and any("nsjail" in str(a) for a in item["argv"]))
        if not starts_nsjail:
            assert str(probe["marker"]) not in json.dumps(item["argv"]), item
    exes = {os.path.realpath(item["exe"]) for item in spawned}
    assert any("nsjail" in exe for exe in exes)


def test_no_model_text_is_compiled_or_executed_in_the_trainer(
        probe: dict[str, object]) -> None:
    assert probe["violations"] == []
