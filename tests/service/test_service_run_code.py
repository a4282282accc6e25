"""`revex serve`: SandboxFusion's /run_code, OpenRLHF's /get_reward, /v1/run_tests, and the
service's own guards, over a real uvicorn server on loopback and real nsjail sandboxes."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from revex import Runtime
from revex.errors import ConfigError
from revex.service import ServiceConfig, check_bind, create_app
from revex.testing.rest_app import serve

TOKEN = "t0ken-for-the-tests-0123456789"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    with Runtime(state_dir=tmp_path_factory.mktemp("state"), policy="training",
                 audit=None) as rt:
        yield rt


@pytest.fixture(scope="module")
def base(runtime: Runtime) -> Iterator[str]:
    with serve(create_app(runtime, ServiceConfig(max_concurrency=4),
                          log_stream=io.StringIO())) as url:
        yield url


def run_code(base: str, **body: object) -> dict:
    body.setdefault("language", "python")
    resp = httpx.post(f"{base}/run_code", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_success_with_stdin_has_the_sandboxfusion_shape(base: str) -> None:
    out = run_code(base, code="print(input())", stdin="7", compile_timeout=10, run_timeout=10,
                   memory_limit_MB=1024, files={}, fetch_files=[])
    assert out["status"] == "Success" and out["message"] == ""
    assert out["compile_result"] is None and out["executor_pod_name"] is None
    run = out["run_result"]
    assert run["status"] == "Finished" and run["return_code"] == 0
    assert run["stdout"] == "7\n" and run["stderr"] == ""
    assert run["execution_time"] > 0 and out["files"] == {}


def test_a_non_zero_exit_is_failed_never_success(base: str) -> None:
    out = run_code(base, code="print('looks fine'); raise SystemExit(3)")
    assert out["status"] == "Failed"
    assert out["run_result"]["status"] == "Finished" and out["run_result"]["return_code"] == 3
    crash = run_code(base, code="1/0")
    assert crash["status"] == "Failed" and crash["run_result"]["return_code"] == 1
    assert "ZeroDivisionError" in crash["run_result"]["stderr"]


def test_a_timeout_is_time_limit_exceeded_with_no_return_code(base: str) -> None:
    out = run_code(base, code="while True: pass", run_timeout=1)
    assert out["status"] == "Failed"
    assert out["run_result"]["status"] == "TimeLimitExceeded"
    assert out["run_result"]["return_code"] is None


def test_a_memory_bomb_fails_under_memory_limit_mb(base: str) -> None:
    out = run_code(base, code="x = bytearray(400 << 20); print('survived')", memory_limit_MB=128)
    assert out["status"] == "Failed"
    assert "survived" not in out["run_result"]["stdout"]
    assert out["run_result"]["return_code"] != 0


def test_code_cannot_forge_success_by_printing_sandboxfusion_json(base: str) -> None:
    forged = json.dumps({"status": "Success", "run_result": {"return_code": 0}})
    out = run_code(base, code=f"import sys; print({forged!r}); sys.exit(1)")
    assert out["status"] == "Failed" and out["run_result"]["return_code"] == 1


def test_files_are_written_and_fetch_files_come_back(base: str) -> None:
    data = base64.b64encode(b"3 4\n").decode()
    code = ("a, b = map(int, open('in/data.txt').read().split())\n"
            "open('out.txt', 'w').write(str(a * b))\n"
            "import os; os.symlink('/etc/passwd', 'leak')\n")
    out = run_code(base, code=code, files={"in/data.txt": data},
                   fetch_files=["out.txt", "in/data.txt", "leak", "missing.txt"])
    assert out["status"] == "Success", out
    assert base64.b64decode(out["files"]["out.txt"]) == b"12"
    assert base64.b64decode(out["files"]["in/data.txt"]) == b"3 4\n"
    assert "leak" not in out["files"] and "missing.txt" not in out["files"]


@pytest.mark.parametrize("body, fragment", [
    ({"code": "print(1)", "language": "cobol"}, "not supported"),
    ({"language": "python"}, "code"),
    ({"code": "print(1)", "language": "python", "run_timeout": -1}, "run_timeout"),
    ({"code": "print(1)", "language": "python", "files": {"../x": ""}}, "relative path"),
    ({"code": "print(1)", "language": "python", "files": {"x": "@@not base64@@"}}, "base64"),
])
def test_bad_requests_get_422_naming_the_problem(base: str, body: dict, fragment: str) -> None:
    resp = httpx.post(f"{base}/run_code", json=body, timeout=30)
    assert resp.status_code == 422
    assert fragment in resp.text


def test_ping_health_readiness_and_metrics(base: str) -> None:
    assert httpx.get(f"{base}/v1/ping").text == '"pong"'
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{base}/readyz", timeout=30).json()
    assert ready["status"] == "ready" and ready["slots"] == 4
    run_code(base, code="pass")
    text = httpx.get(f"{base}/metrics").text
    assert 'revex_runs_total{route="/run_code",status="Success"}' in text
    assert 'revex_request_seconds_count{route="/run_code"}' in text
    assert "revex_runs_in_flight 0" in text
    assert "openapi" in httpx.get(f"{base}/openapi.json").json()


def test_run_tests_route_gives_unforgeable_verdicts(base: str) -> None:
    tests = "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(3) == 9\n"
    good = httpx.post(f"{base}/v1/run_tests", timeout=60, json={
        "solution": "def sq(x):\n    return x * x\n", "tests": tests, "entry_point": "sq"}).json()
    assert (good["passed"], good["total"]) == (2, 2)
    forged = httpx.post(f"{base}/v1/run_tests", timeout=60, json={
        "solution": "import os\nprint('2/2 passed')\nos._exit(0)\n", "tests": tests,
        "entry_point": "sq"}).json()
    assert forged["passed"] == 0


def test_openrlhf_get_reward_scores_each_query(base: str) -> None:
    label = json.dumps({"tests": "def check(candidate):\n    assert candidate(1, 2) == 3\n",
                        "entry_point": "add"})
    prompt = "Write add(a, b).\n"
    good = prompt + "```python\ndef add(a, b):\n    return a + b\n```"
    bad = prompt + "```python\ndef add(a, b):\n    return a - b\n```"
    resp = httpx.post(f"{base}/get_reward", timeout=60, json={
        "query": [good, bad, prompt + "no code"], "prompts": [prompt] * 3,
        "labels": [label, label, "not json"]})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["rewards"] == [1.0, 0.0, 0.0] and out["scores"] == out["rewards"]
    assert out["extra_logs"]["invalid"] == [0.0, 0.0, 1.0]
    mismatched = httpx.post(f"{base}/get_reward", json={"query": ["a"], "labels": []})
    assert mismatched.status_code == 422 and "one label per query" in mismatched.text


def test_token_is_required_when_configured(runtime: Runtime) -> None:
    config = ServiceConfig(token=TOKEN)
    with serve(create_app(runtime, config, log_stream=io.StringIO())) as url:
        assert httpx.post(f"{url}/run_code", json={"code": "pass", "language": "python"}
                          ).status_code == 401
        wrong = {"Authorization": "Bearer " + "x" * len(TOKEN)}
        assert httpx.get(f"{url}/metrics", headers=wrong).status_code == 401
        ok = httpx.post(f"{url}/run_code", json={"code": "pass", "language": "python"},
                        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        assert ok.status_code == 200 and ok.json()["status"] == "Success"
        assert httpx.get(f"{url}/healthz").status_code == 200  # probes stay open


def test_binding_beyond_loopback_needs_a_token() -> None:
    with pytest.raises(ConfigError, match="without a token"):
        check_bind(ServiceConfig(host="0.0.0.0"))
    check_bind(ServiceConfig(host="0.0.0.0", token=TOKEN))
    check_bind(ServiceConfig(host="::1"))
    with pytest.raises(ConfigError, match="at least 16"):
        ServiceConfig(token="short")


def test_oversized_bodies_get_413_before_anything_runs(runtime: Runtime) -> None:
    log = io.StringIO()
    with serve(create_app(runtime, ServiceConfig(max_body_bytes=1000), log_stream=log)) as url:
        big = {"code": "print(1)" + " " * 2000, "language": "python"}
        assert httpx.post(f"{url}/run_code", json=big).status_code == 413

        def chunks() -> Iterator[bytes]:  # no Content-Length: the streamed size is counted
            yield b'{"code": "'
            for _ in range(20):
                yield b" " * 100
            yield b'", "language": "python"}'

        resp = httpx.post(f"{url}/run_code", content=chunks(),
                          headers={"content-type": "application/json"})
        assert resp.status_code == 413
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [line["status"] for line in lines if line["path"] == "/run_code"] == [413, 413]


def test_rate_limit_answers_429(runtime: Runtime) -> None:
    with serve(create_app(runtime, ServiceConfig(rate_per_minute=2),
                          log_stream=io.StringIO())) as url:
        codes = [httpx.post(f"{url}/get_reward", json={"query": [], "labels": []}).status_code
                 for _ in range(3)]
    assert codes == [200, 200, 429]


def test_access_log_is_one_json_line_per_request(runtime: Runtime) -> None:
    log = io.StringIO()
    with serve(create_app(runtime, ServiceConfig(), log_stream=log)) as url:
        httpx.get(f"{url}/healthz")
        httpx.get(f"{url}/nope")
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [(line["path"], line["status"]) for line in lines] == [("/healthz", 200),
                                                                  ("/nope", 404)]
    assert all(line["event"] == "request" and "ms" in line for line in lines)


VERL_DIR = Path(__file__).resolve().parents[1] / ".verl"


def _verl_sandbox_fusion():  # type: ignore[no-untyped-def]
    """verl 0.9.1's own sandbox_fusion reward module, loaded from the wheel without importing
    the top-level ``verl`` package (which needs Ray and a GPU stack)."""
    import importlib.util
    import sys

    pkg_dir = VERL_DIR / "verl/utils/reward_score/sandbox_fusion"
    if not (pkg_dir / "utils.py").exists():
        pytest.skip("verl 0.9.1 is not in tests/.verl (make setup installs it)")
    name = "verl_sandbox_fusion_under_test"
    spec = importlib.util.spec_from_file_location(name, pkg_dir / "__init__.py",
                                                  submodule_search_locations=[str(pkg_dir)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_verls_own_client_scores_against_revex(base: str) -> None:
    import threading

    sf = _verl_sandbox_fusion()
    url = f"{base}/run_code"
    cases = {"inputs": ["1 2\n", "5 7\n", "10 -3\n"], "outputs": ["3\n", "12\n", "7\n"]}
    sem = threading.Semaphore(4)
    good = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    score, meta = sf.compute_score(url, sem, 1024, good, cases, continuous=True)
    assert score == 1.0, meta
    wrong = "```python\na, b = map(int, input().split())\nprint(a - b)\n```"
    assert sf.compute_score(url, sem, 1024, wrong, cases, continuous=True)[0] == 0.0
    crash = "```python\nprint(3)\nraise SystemExit(1)\n```"
    score, meta = sf.compute_score(url, sem, 1024, crash, {"inputs": ["1 2\n"],
                                                           "outputs": ["3\n"]})
    assert score == 0.0 and meta[0]["status"] != "success"
    slow = "```python\nwhile True: pass\n```"
    score, meta = sf.compute_score(url, sem, 1024, slow, {"inputs": ["1\n"], "outputs": ["1\n"]},
                                   timeout=1)
    assert score == 0.0


def test_compiled_languages_report_compile_and_run_results(base: str) -> None:
    from revex.runtime.sandbox import languages

    if not languages.toolchain("cpp").ok:
        pytest.skip(f"cpp toolchain: {languages.toolchain('cpp').missing}")
    src = "#include <iostream>\nint main(){int a,b;std::cin>>a>>b;std::cout<<a*b<<'\\n';}\n"
    out = run_code(base, code=src, language="cpp", stdin="6 7")
    assert out["status"] == "Success", out
    assert out["compile_result"]["status"] == "Finished"
    assert out["run_result"]["stdout"] == "42\n"
    broken = run_code(base, code="int main( { return 0; }", language="cpp")
    assert broken["status"] == "Failed" and broken["run_result"] is None
    assert broken["compile_result"]["return_code"] != 0
    assert "error" in broken["compile_result"]["stderr"]
    if languages.toolchain("javascript").ok:
        js = run_code(base, code="console.log(require('fs').readFileSync(0,'utf8').trim())",
                      language="nodejs", stdin="hi")
        assert js["status"] == "Success" and js["run_result"]["stdout"] == "hi\n"


def test_judge_route_and_stdio_labels(base: str) -> None:
    cases = {"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"]}
    good = "a, b = map(int, input().split())\nprint(a + b)\n"
    forged = "print('3')\nprint('PASSED')\n"
    resp = httpx.post(f"{base}/v1/judge", timeout=60,
                      json={"solutions": [good, forged], "cases": cases})
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert [(r["passed"], r["total"]) for r in results] == [(2, 2), (0, 2)]
    assert results[1]["cases"][0]["status"] == "wrong_answer"
    bad = httpx.post(f"{base}/v1/judge", json={"solutions": [good], "cases": {"inputs": [1]}})
    assert bad.status_code == 422 and "test_cases.output" in bad.text
    reward = httpx.post(f"{base}/get_reward", timeout=60, json={
        "query": [f"```python\n{good}```", f"```python\n{forged}```"],
        "labels": [json.dumps(cases)] * 2}).json()
    assert reward["rewards"] == [1.0, 0.0]
