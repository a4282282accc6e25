"""The Ray pool against the local pool, on a real local Ray (two CPUs) and real nsjail runs:
same results for the same specs, workspace runs kept local, a killed actor's run retried once
(or reported as sandbox_error), and nothing but checked plain data crossing back."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from revex import Runtime
from revex.errors import ConfigError
from revex.runtime.pool import LocalPool
from revex.runtime.sandbox import run_many
from revex.runtime.sandbox.base import ExecResult, ExecSpec, ExecStatus, Limits, make_spec
from revex.runtime.sandbox.nsjail import NsjailBackend

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'revex[ray]'")
from revex.runtime.ray_pool import RayPool  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning",
                                        "ignore::ResourceWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _facts(r: ExecResult) -> tuple[Any, ...]:
    # Everything but timings, which differ between any two runs.
    return (r.status, r.exit_code, r.signal, r.stdout, r.stderr, r.stdout_truncated,
            r.stderr_truncated, r.backend, r.weak_isolation, r.changes)


def _specs() -> list[Any]:
    return [
        make_spec("print(sum(range(10)))"),
        make_spec("import sys; print(sys.stdin.read().upper())", stdin="hello"),
        make_spec("import sys; sys.stderr.write('bad'); sys.exit(3)"),
        make_spec("import os; print(os.environ['K'], open('/input/d.txt').read())",
                  env={"K": "v"}, files={"d.txt": "data"}),
        # never ends by itself, so revex always stops it at the limit: whether a short burst
        # exits before the kill is a race, which made exit code and signal differ
        make_spec("while True: print('x' * 100, flush=True)", limits=Limits(output_bytes=100)),
        make_spec("while True: pass", limits=Limits(wall_s=1, cpu_s=1)),
        make_spec("echo $((6*7))", language="bash"),
    ]


def test_ray_pool_gives_the_local_pools_results(ray_session: None) -> None:
    ws = tempfile.mkdtemp(prefix="revex-test-")
    os.chmod(ws, 0o755)
    try:
        with Runtime(state_dir=tempfile.mkdtemp(prefix="revex-state-"), sandbox="nsjail",
                     executor="ray", audit=None) as rt:
            pool = rt.pool
            assert isinstance(pool, RayPool)
            specs = [*_specs(), make_spec("open('/workspace/made.txt', 'w').write('x')",
                                          workspace=ws)]
            remote = run_many(specs, pool=pool)
            local = run_many(specs, pool=LocalPool(NsjailBackend()))
            assert [_facts(r) for r in remote] == [_facts(r) for r in local]
            assert [r.status for r in remote][:7] == [
                ExecStatus.OK, ExecStatus.OK, ExecStatus.FAILED, ExecStatus.OK,
                ExecStatus.OUTPUT_LIMIT, ExecStatus.TIMEOUT, ExecStatus.OK]
            # The workspace run stayed here: its change set is on this host, ready to apply.
            assert [c.path for c in remote[-1].changes] == ["made.txt"]
            assert os.path.isfile(remote[-1].change_path(remote[-1].changes[0]))
            for r in remote + local:
                r.discard()
            # Seven stateless specs went to the actors; the workspace one did not.
            assert pool.stats.submitted == 7
            # A spec the worker's backend refuses raises the same error class as locally,
            # rebuilt from a message (no pickled exception), after the other spec finished.
            # (a spec built by hand with both code and argv passes ExecSpec's own checks)
            bad = [make_spec("print(1)"), ExecSpec(code="print(2)", argv=("python3",))]
            with pytest.raises(ConfigError, match="exactly one of code and argv"):
                run_many(bad, pool=LocalPool(NsjailBackend()))
            with pytest.raises(ConfigError, match="pool worker: ExecSpec needs exactly one"):
                run_many(bad, pool=pool)
    finally:
        shutil.rmtree(ws, ignore_errors=True)


def _descendants(pid: int) -> list[int]:
    """Processes below ``pid`` (ours: the actor's sandboxes)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        frontier += kids
    return found


SLEEP_S = 12


def _start_s(pid: int) -> float:
    """When ``pid`` started, in seconds since boot (0.0 if it is gone: then it lived
    longest by this measure, which can only make the check below stricter)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0.0
    return ticks / os.sysconf("SC_CLK_TCK")


def _uptime_s() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.parametrize("retries", [1, 0])
def test_killed_actor_run_is_retried_once_or_reported(ray_session: None, retries: int) -> None:
    token = f"tok{os.getpid()}r{retries}"
    pool = RayPool(backend="nsjail", actors=2, per_actor=1, retries=retries)
    try:
        victim = pool.actors[0]
        victim_pid = ray.get(victim.pid.remote())
        victim_dir = ray.get(victim.where.remote())
        assert os.path.isdir(victim_dir)
        specs = [make_spec(f"import time\n# {token}\ntime.sleep({SLEEP_S})\nprint({i})",
                           limits=Limits(wall_s=30, cpu_s=30)) for i in range(2)]
        lived: list[float] = []

        def kill_when_running() -> None:
            # Wait until the victim's sandboxed python (with our token) runs, then kill the
            # actor: the run is certainly in progress. Then time how long its processes live.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                jailed = [p for p in _descendants(victim_pid) if token in _cmdline(p)]
                if jailed:
                    started = [_start_s(p) for p in jailed]
                    ray.kill(victim, no_restart=True)
                    while any(token in _cmdline(p) for p in jailed):
                        time.sleep(0.05)
                    lived.append(_uptime_s() - max(started))
                    return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_when_running)
        killer.start()
        results = run_many(specs, pool=pool)
        killer.join()
        assert lived, "the victim actor never started its run"
        # The killed run did not go on beside its retry: its jailed processes died with the
        # actor. Each started before the code's sleep began, so had they ended on their own
        # they would have lived at least SLEEP_S seconds.
        assert lived[0] < SLEEP_S, lived
        facts = ([(r.status, r.stdout, r.message) for r in results], pool.stats)
        assert len(results) == 2, facts  # exactly one result per spec, in order
        if retries:
            assert [(r.status, r.stdout) for r in results] == [(ExecStatus.OK, "0\n"),
                                                               (ExecStatus.OK, "1\n")], facts
            assert pool.stats.retried == 1 and pool.stats.lost_actor == 0, facts
        else:
            lost = [i for i, r in enumerate(results) if r.status is ExecStatus.SANDBOX_ERROR]
            assert len(lost) == 1 and "died" in results[lost[0]].message, facts
            other = 1 - lost[0]
            assert (results[other].status, results[other].stdout) == (
                ExecStatus.OK, f"{other}\n"), facts
            assert pool.stats.retried == 0 and pool.stats.lost_actor == 1, facts
        assert len(pool.stats.replaced_actors) == 1, facts
    finally:
        pool.close()
    # The killed actor could not remove its run directory; the survivors did on close.
    assert not os.path.exists(victim_dir)


def test_a_hung_actor_is_killed_and_its_run_retried(ray_session: None) -> None:
    pool = RayPool(backend="nsjail", actors=2, per_actor=1, grace_s=3)
    victim_pid = ray.get(pool.actors[0].pid.remote())
    ray.get(pool._ready)  # both actors started: the stop below hits a running actor
    try:
        # A stopped actor answers nothing, like a deadlocked one or a partitioned node.
        os.kill(victim_pid, signal.SIGSTOP)
        specs = [make_spec(f"print({i})", limits=Limits(wall_s=2)) for i in range(2)]
        start = time.monotonic()
        results = run_many(specs, pool=pool)
        assert [(r.status, r.stdout) for r in results] == [(ExecStatus.OK, "0\n"),
                                                           (ExecStatus.OK, "1\n")]
        assert pool.stats.hung_actors == 1 and pool.stats.retried == 1
        assert time.monotonic() - start >= 2 + 3  # not before wall_s + grace_s
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim_pid, signal.SIGCONT)
        pool.close()
