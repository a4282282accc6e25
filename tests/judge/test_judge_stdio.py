"""stdin/stdout judging in every language: verdicts, per-case statuses and measurements, and
forgery attempts (fake verdict lines, early exit 0, result files) that must earn nothing."""

from __future__ import annotations

import secrets

import pytest

from revex.judge import CaseStatus, TestCases, judge
from revex.runtime.sandbox.base import Limits
from revex.runtime.sandbox.warm import WarmPythonBackend
from tests.judge.conftest import lang_param

LANGS = [lang_param(n) for n in ("python", "c", "cpp", "java", "javascript", "bash")]
CASES = TestCases.from_io({"inputs": ["1 2\n", "40 2\n", "-5 5\n"],
                           "outputs": ["3\n", "42\n", "0\n"]})

# One program per language and behaviour; SUM reads two integers and prints their sum.
PROGRAMS: dict[str, dict[str, str]] = {
    "python": {
        "SUM": "a, b = map(int, input().split())\nprint(a + b)",
        "FORGE": "print('PASSED')\nprint('All tests passed: 3/3')\nprint('ok')\n"
                 "import sys; sys.exit(0)",
        "EARLY": "import os; os._exit(0)\nprint(input())",
        "FILES": "import json, os\nfor p in ('/tmp/result.json', 'result.json', "
                 "'/workspace/result.json', '/input/result.json'):\n"
                 "    try:\n        open(p, 'w').write(json.dumps({'passed': True}))\n"
                 "    except OSError:\n        pass",
        "CRASH": "a, b = map(int, input().split())\nprint(a + b, flush=True)\n"
                 "raise SystemExit(3)",
        "SPIN": "while True:\n    pass",
    },
    "c": {
        "SUM": '#include <stdio.h>\nint main(){long a,b;scanf("%ld %ld",&a,&b);'
               'printf("%ld\\n",a+b);return 0;}',
        "FORGE": '#include <stdio.h>\nint main(){puts("PASSED");puts("All tests passed: 3/3");'
                 'return 0;}',
        "EARLY": "#include <stdlib.h>\nint main(){exit(0);}",
        "FILES": '#include <stdio.h>\nint main(){const char*p[]={"/tmp/result.json",'
                 '"result.json","/input/result.json"};for(int i=0;i<3;i++){FILE*f=fopen(p[i],'
                 '"w");if(f){fputs("{\\"passed\\": true}",f);fclose(f);}}return 0;}',
        "CRASH": '#include <stdio.h>\nint main(){long a,b;scanf("%ld %ld",&a,&b);'
                 'printf("%ld\\n",a+b);fflush(stdout);return 3;}',
        "SPIN": "int main(){volatile unsigned long i=0;for(;;)i++;}",
    },
    "cpp": {
        "SUM": '#include <iostream>\nint main(){long long a,b;std::cin>>a>>b;'
               'std::cout<<a+b<<"\\n";}',
        "FORGE": '#include <iostream>\nint main(){std::cout<<"PASSED\\nAll tests passed\\n";}',
        "EARLY": "#include <cstdlib>\nint main(){std::exit(0);}",
        "FILES": '#include <fstream>\nint main(){for(auto p:{"/tmp/result.json","result.json",'
                 '"/input/result.json"}){std::ofstream f(p);f<<"{\\"passed\\": true}";}}',
        "CRASH": '#include <iostream>\nint main(){long long a,b;std::cin>>a>>b;'
                 'std::cout<<a+b<<std::endl;return 3;}',
        "SPIN": "int main(){volatile unsigned long i=0;for(;;)i++;}",
    },
    "java": {
        "SUM": "import java.util.*;\npublic class Main { public static void main(String[] x) {"
               " Scanner s = new Scanner(System.in);"
               " System.out.println(s.nextLong() + s.nextLong()); } }",
        "FORGE": "public class Main { public static void main(String[] x) {"
                 " System.out.println(\"PASSED\"); System.out.println(\"All tests passed\");"
                 " System.exit(0); } }",
        "EARLY": "public class Main { public static void main(String[] x) { System.exit(0); } }",
        "FILES": "import java.nio.file.*;\npublic class Main { public static void main(String[]"
                 " x) { for (String p : new String[]{\"/tmp/result.json\", \"result.json\","
                 " \"/input/result.json\"}) { try { Files.writeString(Path.of(p),"
                 " \"{\\\"passed\\\": true}\"); } catch (Exception e) {} } } }",
        "CRASH": "import java.util.*;\npublic class Main { public static void main(String[] x)"
                 " { Scanner s = new Scanner(System.in);"
                 " System.out.println(s.nextLong() + s.nextLong()); System.exit(3); } }",
        "SPIN": "public class Main { public static void main(String[] a) { long i = 0;"
                " while (true) { i++; if (i == -1) System.out.println(i); } } }",
    },
    "javascript": {
        "SUM": 'const v = require("fs").readFileSync(0, "utf8").trim().split(/\\s+/)'
               '.map(Number); console.log(v[0] + v[1]);',
        "FORGE": 'console.log("PASSED"); console.log("All tests passed"); process.exit(0);',
        "EARLY": "process.exit(0);",
        "FILES": 'for (const p of ["/tmp/result.json", "result.json", "/input/result.json"])'
                 ' { try { require("fs").writeFileSync(p, "{\\"passed\\": true}"); }'
                 ' catch (e) {} }',
        "CRASH": 'const v = require("fs").readFileSync(0, "utf8").trim().split(/\\s+/)'
                 '.map(Number); console.log(v[0] + v[1]); process.exitCode = 3;',
        "SPIN": "for (;;) {}",
    },
    "bash": {
        "SUM": "read a b; echo $((a + b))",
        "FORGE": "echo PASSED; echo 'All tests passed'; exit 0",
        "EARLY": "exit 0",
        "FILES": "for p in /tmp/result.json result.json /input/result.json; do"
                 " echo '{\"passed\": true}' > $p 2>/dev/null; done; true",
        "CRASH": "read a b; echo $((a + b)); exit 3",
        "SPIN": "while :; do :; done",
    },
}


def limits(lang: str) -> Limits:
    return Limits(wall_s=3, cpu_s=2, memory_mb=1024 if lang == "java" else 256,
                  pids=128 if lang == "java" else 64)


@pytest.mark.parametrize("lang", LANGS)
def test_correct_solution_passes_every_case_with_time_and_memory(
        be: WarmPythonBackend, lang: str) -> None:
    r = judge(PROGRAMS[lang]["SUM"], CASES, language=lang, backend=be, limits=limits(lang))
    assert r.status is CaseStatus.PASSED and (r.passed, r.total) == (3, 3), r
    assert r.all_passed and r.pass_rate == 1.0 and r.language == lang
    for c in r.cases:
        assert c.time_s is not None and c.time_s > 0
        assert c.peak_memory_mb is not None and c.peak_memory_mb > 0


@pytest.mark.parametrize("behaviour", ["FORGE", "EARLY", "FILES"])
@pytest.mark.parametrize("lang", LANGS)
def test_forged_verdicts_earn_nothing(be: WarmPythonBackend, lang: str,
                                      behaviour: str) -> None:
    r = judge(PROGRAMS[lang][behaviour], CASES, language=lang, backend=be, limits=limits(lang))
    assert r.passed == 0 and r.status is CaseStatus.WRONG_ANSWER, r
    assert all(c.status is CaseStatus.WRONG_ANSWER for c in r.cases)


@pytest.mark.parametrize("lang", LANGS)
def test_right_output_then_nonzero_exit_is_a_runtime_error(
        be: WarmPythonBackend, lang: str) -> None:
    r = judge(PROGRAMS[lang]["CRASH"], CASES, language=lang, backend=be, limits=limits(lang))
    assert r.passed == 0 and r.status is CaseStatus.RUNTIME_ERROR, r
    assert "exit code 3" in r.cases[0].message


@pytest.mark.parametrize("lang", LANGS)
def test_busy_loop_is_a_timeout_and_stop_on_first_failure_skips_the_rest(
        be: WarmPythonBackend, lang: str) -> None:
    r = judge(PROGRAMS[lang]["SPIN"], CASES, language=lang, backend=be, limits=limits(lang),
              concurrency=1, stop_on_first_failure=True)
    assert r.status is CaseStatus.TIMEOUT, r
    assert [c.status for c in r.cases] == [CaseStatus.TIMEOUT, CaseStatus.SKIPPED,
                                           CaseStatus.SKIPPED]


@pytest.mark.parametrize("lang", [p for p in LANGS
                                  if p.values[0] in ("c", "cpp", "java")])  # type: ignore[attr-defined]
def test_compile_error_is_every_cases_status_with_the_compilers_message(
        be: WarmPythonBackend, lang: str) -> None:
    bad = PROGRAMS[lang]["SUM"].replace("(", "((", 1) + f"\n// {secrets.token_hex(4)}"
    r = judge(bad, CASES, language=lang, backend=be, limits=limits(lang), concurrency=3)
    assert r.status is CaseStatus.COMPILE_ERROR and r.passed == 0
    assert all(c.status is CaseStatus.COMPILE_ERROR for c in r.cases)
    assert "error" in r.cases[0].message


def test_solution_cannot_find_the_expected_output_anywhere(be: WarmPythonBackend) -> None:
    # It searches everything it can read (env, argv, files, /proc, inherited fds) for the
    # expected value and prints it if found. It finds nothing, so it earns nothing.
    token = secrets.token_hex(16)
    hunter = r"""
import os, re, sys
pat = re.compile(rb"[0-9a-f]{32}")
seen = [sys.stdin.buffer.read(), repr(os.environ).encode(), repr(sys.argv).encode()]
for root in ("/input", "/tmp", "/workspace", os.getcwd(), "/proc"):
    for base, dirs, files in os.walk(root):
        if base.count("/") > 4:
            dirs[:] = []
        for name in files:
            try:
                with open(os.path.join(base, name), "rb") as f:
                    seen.append(f.read(1 << 16))
            except OSError:
                pass
for fd in range(3, 256):
    try:
        seen.append(os.read(fd, 1 << 16))
    except OSError:
        pass
for blob in seen:
    for m in pat.findall(blob):
        print(m.decode())
        raise SystemExit(0)
print("nothing")
"""
    tc = TestCases.from_io({"inputs": ["hello\n"], "outputs": [token]})
    r = judge(hunter, tc, backend=be, limits=Limits(wall_s=20, cpu_s=20))
    assert r.status is CaseStatus.WRONG_ANSWER, r


def test_output_limit_and_memory_statuses(be: WarmPythonBackend) -> None:
    tc = TestCases.from_io({"inputs": ["1 2\n"], "outputs": ["3\n"]})
    flood = judge("while True: print('x' * 1000)", tc, backend=be,
                  limits=Limits(wall_s=5, output_bytes=10_000))
    assert flood.status is CaseStatus.OUTPUT_LIMIT
    hog = judge("x = bytearray(1 << 30)", tc, backend=be, limits=Limits(wall_s=5, memory_mb=128))
    assert hog.status is CaseStatus.MEMORY


def test_per_case_limits_override_the_sets(be: WarmPythonBackend) -> None:
    from revex.judge import Case

    tc = TestCases("stdio", (Case("1\n", "1\n"), Case("2\n", "2\n", Limits(wall_s=0.5))))
    r = judge("import time\nn = int(input())\ntime.sleep(n - 1)\nprint(n)", tc, backend=be,
              limits=Limits(wall_s=5))
    assert [c.status for c in r.cases] == [CaseStatus.PASSED, CaseStatus.TIMEOUT]


CHECKER = """
import sys
want = sorted(open('/input/answer.txt').read().split())
got = sorted(open('/input/output.txt').read().split())
n = int(open('/input/input.txt').read())
sys.exit(0 if got == want and len(got) == n else 1)
"""


@pytest.mark.parametrize("lang", [p for p in LANGS
                                  if p.values[0] in ("python", "cpp")])  # type: ignore[attr-defined]
def test_special_judge_accepts_any_valid_answer_and_runs_sandboxed(
        be: WarmPythonBackend, lang: str) -> None:
    from revex.judge import Compare

    tc = TestCases.from_io({"inputs": ["3\n"], "outputs": ["1 2 3\n"]},
                           compare=Compare(checker=CHECKER))
    any_order = {"python": "n = int(input())\nprint(*range(n, 0, -1))",
                 "cpp": "#include <cstdio>\nint main(){int n;scanf(\"%d\",&n);"
                        "for(int i=n;i>0;i--)printf(\"%d \",i);}"}
    assert judge(any_order[lang], tc, language=lang, backend=be).all_passed
    for bad in (PROGRAMS[lang]["FORGE"], PROGRAMS[lang]["EARLY"], PROGRAMS[lang]["FILES"]):
        r = judge(bad, tc, language=lang, backend=be)
        assert r.status is CaseStatus.WRONG_ANSWER, r


def test_a_broken_checker_is_not_the_solutions_fault(be: WarmPythonBackend) -> None:
    from revex.judge import Compare

    tc = TestCases.from_io({"inputs": ["3\n"], "outputs": ["3\n"]},
                           compare=Compare(checker="raise SystemExit(7)"))
    r = judge("print(3)", tc, backend=be)
    assert r.status is CaseStatus.SANDBOX_ERROR and "checker failed" in r.message
