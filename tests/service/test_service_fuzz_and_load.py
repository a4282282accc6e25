"""`revex serve` under generated and heavy input: schemathesis fuzzes every endpoint of the
published OpenAPI schema (no 5xx, responses match the schema), and a bounded load test on
loopback sends 2,000 mixed requests at concurrency 32. Afterwards nothing is left behind: no
child processes, no extra open fds, no run directories, no mounts of this process's sandboxes."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from revex import Runtime
from revex.runtime.sandbox import _common
from revex.service import ServiceConfig, create_app
from revex.testing.rest_app import serve

schemathesis = pytest.importorskip("schemathesis")


def _children() -> set[int]:
    me = str(os.getpid())
    out = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            out.add(int(pid))
    return out


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _run_dirs() -> set[str]:
    root = _common.runs_root()
    return set(os.listdir(root)) if os.path.isdir(root) else set()


@pytest.fixture(autouse=True)
def private_run_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run directories of this test's sandboxes go under a temp dir of its own, so counting
    them is not disturbed by other revex processes on the machine."""
    import shutil
    import tempfile

    private = tempfile.mkdtemp(prefix="revex-serve-test-")
    os.chmod(private, 0o755)  # the sandbox user must traverse it
    monkeypatch.setattr(tempfile, "tempdir", private)
    yield
    shutil.rmtree(private, ignore_errors=True)


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    with Runtime(state_dir=tmp_path / "state", policy="training", audit=None) as rt:
        rt.backend  # noqa: B018  (start the warm pool before counting processes)
        yield rt


def test_schemathesis_finds_no_server_error_on_any_endpoint(runtime: Runtime,
                                                            tmp_path: Path) -> None:
    from hypothesis import HealthCheck, given, settings

    app = create_app(runtime, ServiceConfig(workspace_root=str(tmp_path / "eps"),
                                            max_episodes=8), log_stream=io.StringIO())
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    before = (_children(), _run_dirs())
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=12, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def fuzz(case: object) -> None:
            response = case.call()  # type: ignore[attr-defined]
            assert response.status_code < 500, (case, response.text)  # type: ignore[attr-defined]

        fuzz()
        checked.append(operation.label)
    app.state.episodes.close_all()
    assert {"POST /run_code", "POST /get_reward", "POST /v1/run_tests", "POST /v1/episodes",
            "POST /v1/episodes/{episode_id}/fs"} <= set(checked)
    assert _children() <= before[0]
    assert _run_dirs() <= before[1]


def test_2000_mixed_requests_at_concurrency_32_without_errors_or_leaks(tmp_path: Path) -> None:
    children_before, runs_before, fds_before = _children(), _run_dirs(), _fds()
    runtime = Runtime(state_dir=tmp_path / "state", policy="training", audit=None)
    app = create_app(runtime, ServiceConfig(workspace_root=str(tmp_path / "eps"),
                                            max_concurrency=8), log_stream=io.StringIO())
    tests = "def check(candidate):\n    assert candidate(3) == 6\n"
    bodies = [
        ("/run_code", {"code": "print(int(input()) * 2)", "language": "python", "stdin": "21"},
         lambda r: r["status"] == "Success" and r["run_result"]["stdout"] == "42\n"),
        ("/run_code", {"code": "raise SystemExit(2)", "language": "python"},
         lambda r: r["status"] == "Failed" and r["run_result"]["return_code"] == 2),
        ("/v1/run_tests", {"solution": "def dbl(x):\n    return 2 * x\n", "tests": tests,
                           "entry_point": "dbl"},
         lambda r: r["passed"] == 1 and r["total"] == 1),
        ("/get_reward", {"query": ["```python\ndef dbl(x):\n    return x + x\n```"],
                         "labels": [{"tests": tests, "entry_point": "dbl"}]},
         lambda r: r["rewards"] == [1.0]),
    ]
    n, concurrency = 2000, 32
    with serve(app) as base:
        httpx.post(f"{base}/run_code", json=bodies[0][1], timeout=60)  # warm up

        async def main() -> list[str]:
            errors: list[str] = []
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(n):
                queue.put_nowait(i)
            limits = httpx.Limits(max_connections=concurrency)
            async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
                async def worker() -> None:
                    while not queue.empty():
                        i = queue.get_nowait()
                        path, body, ok = bodies[i % len(bodies)]
                        resp = await client.post(path, json=body)
                        if resp.status_code != 200 or not ok(resp.json()):
                            errors.append(f"{i} {path}: {resp.status_code} {resp.text[:200]}")
                await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))),
                                       timeout=540)
            return errors

        errors = asyncio.run(main())
        metrics = httpx.get(f"{base}/metrics").text
        in_flight_runs = _run_dirs() - runs_before
    runtime.close()  # stops the warm pool: its sandboxes are the service's only children
    # Counted after close, against before the runtime existed: the warm pool grows under load
    # and each zygote keeps its run cgroups' files open while it lives; all must be released.
    fds_after = _fds()
    assert errors == []
    assert f'revex_request_seconds_count{{route="/run_code"}} {n // 2 + 1}' in metrics
    assert in_flight_runs == set()
    assert _children() <= children_before
    assert fds_after <= fds_before + 2  # the closed server's listening socket may linger
