"""Every language runs with Python's isolation: real toolchains in real nsjail runs.

Each isolation test is parametrized over the languages whose toolchain is installed; a language
without one is skipped with the reason ``revex doctor`` gives (never silently)."""

from __future__ import annotations

import os
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from revex.errors import ConfigError
from revex.runtime.sandbox import compile_cache, languages
from revex.runtime.sandbox.base import ExecResult, ExecSpec, ExecStatus, Limits, make_spec
from revex.runtime.sandbox.nsjail import NsjailBackend
from tests.judge.conftest import lang_param

LANGS = ["c", "cpp", "java", "javascript", "bash", "go", "rust"]


ALL = [lang_param(n) for n in LANGS]
COMPILED = [lang_param(n) for n in LANGS if n in languages.LANGUAGE_TABLE
            and languages.LANGUAGE_TABLE[n].compiled]

ADD = {
    "c": '#include <stdio.h>\nint main(){long a,b;scanf("%ld %ld",&a,&b);'
         'printf("%ld\\n",a+b);return 0;}',
    "cpp": '#include <bits/stdc++.h>\nint main(){long long a,b;std::cin>>a>>b;'
           'std::cout<<a+b<<"\\n";}',
    "java": 'import java.util.*;\npublic class Adder { public static void main(String[] x) {'
            ' Scanner s = new Scanner(System.in);'
            ' System.out.println(s.nextLong() + s.nextLong()); } }',
    "javascript": 'const v = require("fs").readFileSync(0, "utf8").trim().split(/\\s+/)'
                  '.map(Number); console.log(v[0] + v[1]);',
    "bash": "read a b; echo $((a+b))",
    "go": 'package main\nimport "fmt"\nfunc main(){var a,b int64;fmt.Scan(&a,&b);'
          'fmt.Println(a+b)}',
    "rust": 'use std::io::*;\nfn main(){let mut s=String::new();stdin().read_to_string(&mut s)'
            '.unwrap();let v:Vec<i64>=s.split_whitespace().map(|x|x.parse().unwrap()).collect();'
            'println!("{}",v[0]+v[1]);}',
}
FORK_BOMB = {
    "c": "#include <unistd.h>\nint main(){for(;;)fork();}",
    "cpp": "#include <unistd.h>\nint main(){for(;;)fork();}",
    "java": "public class Main { public static void main(String[] a) throws Exception {"
            " for (;;) { try { new ProcessBuilder(\"/bin/sleep\", \"100\").start(); }"
            " catch (Exception e) {} new Thread(() -> { try { Thread.sleep(100000); }"
            " catch (Exception e) {} }).start(); } } }",
    "javascript": "const cp = require('child_process');"
                  " for (;;) { try { cp.spawn('/bin/sleep', ['100']); } catch (e) {} }",
    "bash": "f() { f | f & }; f; sleep 100",
    "go": 'package main\nimport "os/exec"\nfunc main(){for{exec.Command("/bin/sleep","100")'
          '.Start()}}',
    "rust": 'fn main(){loop{let _=std::process::Command::new("/bin/sleep").arg("100").spawn();}}',
}
MEMORY_BOMB = {
    "c": "#include <stdlib.h>\n#include <string.h>\nint main(){for(;;){char*p=malloc(1<<24);"
         "if(!p)return 3;memset(p,1,1<<24);}}",
    "cpp": "#include <vector>\n#include <cstring>\nint main(){std::vector<char*> v;for(;;){"
           "char*p=new char[1<<24];std::memset(p,1,1<<24);v.push_back(p);}}",
    "java": "import java.util.*;\npublic class Main { public static void main(String[] a) {"
            " List<long[]> l = new ArrayList<>(); for (;;) l.add(new long[1 << 20]); } }",
    "javascript": "const a = []; for (;;) a.push(new Array(1 << 20).fill(1.5));",
    "bash": "x=aaaaaaaaaaaaaaaa; while :; do x=$x$x; done",
    "go": 'package main\nfunc main(){var l [][]byte;for{b:=make([]byte,1<<24);for i:=range b'
          '{b[i]=1};l=append(l,b)}}',
    "rust": "fn main(){let mut v=Vec::new();loop{v.push(vec![1u8;1<<24]);}}",
}
BUSY = {
    "c": "int main(){volatile unsigned long i=0;for(;;)i++;}",
    "cpp": "int main(){volatile unsigned long i=0;for(;;)i++;}",
    "java": "public class Main { public static void main(String[] a) {"
            " long i = 0; while (true) { i++; if (i == -1) System.out.println(i); } } }",
    "javascript": "let i = 0; for (;;) { i++; }",
    "bash": "while :; do :; done",
    "go": "package main\nfunc main(){i:=0;for{i++}}",
    "rust": "fn main(){let mut i:u64=0;loop{i=std::hint::black_box(i+1);}}",
}


def write_attempt(lang: str, paths: list[str]) -> str:
    """A program that tries to create each path and prints ``wrote P`` for each success."""
    quoted = ", ".join(f'"{p}"' for p in paths)
    template = {
        "c": "#include <stdio.h>\nint main(){const char*p[]={QUOTED};for(int i=0;i<COUNT;i++){"
             "FILE*f=fopen(p[i],\"w\");if(f&&fputs(\"x\",f)>=0&&fclose(f)==0)"
             "printf(\"wrote %s\\n\",p[i]);}return 0;}",
        "cpp": "#include <cstdio>\nint main(){const char*p[]={QUOTED};for(int i=0;i<COUNT;i++){"
               "FILE*f=std::fopen(p[i],\"w\");if(f&&std::fputs(\"x\",f)>=0&&std::fclose(f)==0)"
               "std::printf(\"wrote %s\\n\",p[i]);}}",
        "java": "import java.nio.file.*;\npublic class Main { public static void main(String[] a)"
                " { for (String p : new String[]{QUOTED}) { try { Files.writeString(Path.of(p), "
                "\"x\"); System.out.println(\"wrote \" + p); } catch (Exception e) {} } } }",
        "javascript": "for (const p of [QUOTED]) { try { require('fs').writeFileSync(p, 'x');"
                      " console.log('wrote ' + p); } catch (e) {} }",
        "bash": "for p in SPACED; do echo x 2>/dev/null > \"$p\" && echo \"wrote $p\"; done",
        "go": 'package main\nimport ("fmt";"os")\nfunc main(){for _,p:=range []string{QUOTED}{'
              'if os.WriteFile(p,[]byte("x"),0644)==nil{fmt.Println("wrote",p)}}}',
        "rust": 'fn main(){for p in [QUOTED]{if std::fs::write(p,"x").is_ok(){'
                'println!("wrote {}",p);}}}',
    }[lang]
    return (template.replace("QUOTED", quoted).replace("COUNT", str(len(paths)))
            .replace("SPACED", " ".join(paths)))


@pytest.fixture(scope="module")
def be() -> NsjailBackend:
    return NsjailBackend()


def descendants() -> set[int]:
    """Processes below this test process (nsjail runs are its children)."""
    out: set[int] = set()
    todo = [os.getpid()]
    while todo:
        pid = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            for k in kids:
                if k not in out:
                    out.add(k)
                    todo.append(k)
    return out


def run(be: NsjailBackend, lang: str, code: str, **kw: object) -> ExecResult:
    return be.run(make_spec(code, language=lang, **kw))  # type: ignore[arg-type]


@pytest.mark.parametrize("lang", ALL)
def test_language_reads_stdin_and_prints(be: NsjailBackend, lang: str) -> None:
    r = run(be, lang, ADD[lang], stdin="40 2\n", limits=languages.default_limits(lang))
    assert r.status is ExecStatus.OK, (r.status, r.stderr, r.message)
    assert r.stdout == "42\n" and r.backend == "nsjail"


@pytest.mark.parametrize("lang", ALL)
def test_fork_bomb_is_contained_and_reaped(be: NsjailBackend, lang: str) -> None:
    before = descendants()
    start = time.monotonic()
    r = run(be, lang, FORK_BOMB[lang], limits=Limits(wall_s=3, cpu_s=3, pids=16,
                                                    memory_mb=1024 if lang == "java" else 256))
    assert r.status is not ExecStatus.OK and r.status is not ExecStatus.SANDBOX_ERROR, r
    assert time.monotonic() - start < 20  # wall_s plus the compile, not a hung host
    assert descendants() <= before  # nothing of the run survives it
    again = run(be, lang, ADD[lang], stdin="1 2", limits=languages.default_limits(lang))
    assert again.status is ExecStatus.OK and again.stdout == "3\n"


@pytest.mark.parametrize("lang", ALL)
def test_memory_bomb_is_reported_as_memory(be: NsjailBackend, lang: str) -> None:
    r = run(be, lang, MEMORY_BOMB[lang], limits=Limits(wall_s=10, cpu_s=10, memory_mb=192))
    assert r.status is ExecStatus.MEMORY, (r.status, r.exit_code, r.signal, r.stderr[-500:])
    assert r.peak_memory_mb <= 192 + 16


@pytest.mark.parametrize("lang", ALL)
def test_busy_loop_times_out(be: NsjailBackend, lang: str) -> None:
    start = time.monotonic()
    r = run(be, lang, BUSY[lang], limits=Limits(wall_s=2, cpu_s=1,
                                               memory_mb=1024 if lang == "java" else 512))
    assert r.status is ExecStatus.TIMEOUT, (r.status, r.stderr[-500:])
    assert r.wall_s < 4 and time.monotonic() - start < 30


@pytest.mark.parametrize("lang", ALL)
def test_writes_outside_the_workspace_fail_and_leave_the_host_untouched(
        be: NsjailBackend, lang: str, tmp_path: object) -> None:
    token = secrets.token_hex(6)
    outside = [f"/usr/revex-{token}", f"/etc/revex-{token}", f"/revex-{token}",
               f"/input/revex-{token}", f"/build/revex-{token}", f"/workspace/../revex-{token}"]
    r = run(be, lang, write_attempt(lang, [*outside, f"/tmp/ok-{token}"]),
            limits=languages.default_limits(lang))
    assert r.status is ExecStatus.OK, (r.status, r.stderr[-500:])
    assert r.stdout.splitlines() == [f"wrote /tmp/ok-{token}"]  # only its private /tmp
    for path in (f"/usr/revex-{token}", f"/etc/revex-{token}", f"/revex-{token}",
                 f"/tmp/ok-{token}"):
        assert not os.path.exists(path)  # the host never sees it
    for entry in os.listdir(compile_cache.cache_root()):  # nor does the compile cache
        assert not os.path.exists(os.path.join(compile_cache.cache_root(), entry,
                                               f"revex-{token}"))


CONNECT = {
    "c": "#include <stdio.h>\n#include <sys/socket.h>\n#include <netinet/in.h>\n"
         "#include <arpa/inet.h>\nint main(){int s=socket(AF_INET,SOCK_STREAM,0);"
         "struct sockaddr_in a={0};a.sin_family=AF_INET;a.sin_port=htons(PORT);"
         "a.sin_addr.s_addr=inet_addr(\"127.0.0.1\");"
         "if(connect(s,(struct sockaddr*)&a,sizeof a)==0)puts(\"connected\");return 0;}",
    "java": "public class Main { public static void main(String[] a) { try {"
            " new java.net.Socket(\"127.0.0.1\", PORT); System.out.println(\"connected\");"
            " } catch (Exception e) {} } }",
    "javascript": "const s = require('net').connect(PORT, '127.0.0.1', () => {"
                  " console.log('connected'); s.end(); }); s.on('error', () => {});",
    "bash": "(exec 3<>/dev/tcp/127.0.0.1/PORT) 2>/dev/null && echo connected; true",
    "go": 'package main\nimport ("fmt";"net")\nfunc main(){if _,e:=net.Dial("tcp",'
          '"127.0.0.1:PORT");e==nil{fmt.Println("connected")}}',
    "rust": 'fn main(){if std::net::TcpStream::connect("127.0.0.1:PORT").is_ok(){'
            'println!("connected");}}',
}
CONNECT["cpp"] = CONNECT["c"]


@pytest.mark.parametrize("lang", ALL)
def test_no_network_reaches_the_host(be: NsjailBackend, lang: str) -> None:
    import socket

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        srv.settimeout(0.1)
        port = srv.getsockname()[1]
        r = run(be, lang, CONNECT[lang].replace("PORT", str(port)),
                limits=languages.default_limits(lang))
        assert r.status is ExecStatus.OK, (r.status, r.stderr[-500:])
        assert "connected" not in r.stdout
        with pytest.raises(OSError):  # socket.timeout: nothing ever connected
            srv.accept()


@pytest.mark.parametrize("lang", COMPILED)
def test_compile_error_reports_the_compilers_message_and_is_cached(
        be: NsjailBackend, lang: str) -> None:
    bad = ADD[lang].replace("(", "((", 1) + f"\n// {secrets.token_hex(4)}"
    if lang == "rust" or lang == "go":
        bad = bad.replace("// ", "/* ") + " */"
    first = run(be, lang, bad)
    assert first.status is ExecStatus.COMPILE_ERROR and first.stderr.strip(), first
    assert "compilation failed" in first.message
    second = run(be, lang, bad)
    assert second.status is ExecStatus.COMPILE_ERROR and second.stderr == first.stderr
    assert "cached" in second.message


class CountingBackend(NsjailBackend):
    """The real nsjail backend, counting the compile runs it is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.compiles = 0
        self._count_lock = threading.Lock()

    def run(self, spec: ExecSpec) -> ExecResult:
        if spec.argv is not None and spec.workspace is not None:
            with self._count_lock:
                self.compiles += 1
        return super().run(spec)


@pytest.mark.parametrize("lang", COMPILED)
def test_source_compiles_once_for_many_concurrent_runs(lang: str) -> None:
    be = CountingBackend()
    src = ADD[lang] + f"\n// {secrets.token_hex(4)}"
    lang_obj, tc = languages.require(lang)
    key = compile_cache.cache_key(src, lang_obj, tc, make_spec(src, language=lang))
    entry = os.path.join(compile_cache.cache_root(), key)
    assert not os.path.exists(entry)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: run(be, lang, src, stdin=f"{i} 1",
                                              limits=languages.default_limits(lang)), range(4)))
    assert [r.stdout for r in results] == ["1\n", "2\n", "3\n", "4\n"], [
        (r.status, r.exit_code, r.signal, r.stderr[-300:], r.message) for r in results]
    run(be, lang, src, stdin="5 5", limits=languages.default_limits(lang))
    assert be.compiles == 1
    assert key not in compile_cache._locks  # no lock left behind per source
    for base, _, files in os.walk(entry):  # output the host keeps: never setuid, ours
        for name in files:
            st = os.lstat(os.path.join(base, name))
            assert st.st_uid == os.geteuid() and not st.st_mode & 0o7000


def test_compile_cannot_read_host_files(be: NsjailBackend) -> None:
    r = run(be, "c", '#include "/etc/passwd"\nint main(){return 0;}')
    assert r.status is ExecStatus.COMPILE_ERROR and "No such file" in r.stderr


def test_compile_runs_under_compile_limits(be: NsjailBackend) -> None:
    # The preprocessor reading an endless file: the compile sandbox, not the host, pays.
    start = time.monotonic()
    r = run(be, "c", f'#include "/dev/zero"\n// {secrets.token_hex(4)}',
            compile_limits=Limits(wall_s=3, cpu_s=3, memory_mb=128))
    assert r.status is ExecStatus.COMPILE_ERROR, (r.status, r.message)
    assert "ran out of" in r.message and time.monotonic() - start < 15


def test_missing_toolchain_is_a_config_error_naming_why() -> None:
    missing = [n for n in languages.LANGUAGE_TABLE if not languages.toolchain(n).ok]
    if not missing:
        pytest.skip("every toolchain is installed here")
    with pytest.raises(ConfigError, match="not available here"):
        NsjailBackend().run(make_spec("x", language=missing[0]))


def test_unknown_language_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown language 'cobol'"):
        make_spec("x", language="cobol")


def test_python_is_not_routed_through_the_language_layer() -> None:
    assert not languages.needs_build(make_spec("print(1)"))
    assert not languages.needs_build(make_spec("echo 1", language="bash"))
    assert languages.needs_build(make_spec("int main(){}", language="c"))


def test_doctor_lists_every_language_with_version_or_reason(be: NsjailBackend) -> None:
    from revex.doctor import _language_checks

    rows = {name: (ok, why) for name, ok, why in _language_checks()}
    for lang in languages.supported():
        assert f"language {lang}" in rows
    for name in languages.LANGUAGE_TABLE:
        ok, why = rows[f"language {name}"]
        tc = languages.toolchain(name)
        assert ok == tc.ok, why  # installed toolchains also pass the sandbox probe
        assert (tc.version in why) if tc.ok else (why == tc.missing)


def test_java_finds_the_main_class_with_a_package_or_without_public(be: NsjailBackend) -> None:
    tag = secrets.token_hex(3)
    pkg = (f"package judge.t{tag};\nimport java.util.*;\npublic final class Solver {{"
           " public static void main(String[] a) { System.out.println(\"pkg\"); } }")
    hidden = (f"class Helper{tag} {{ static int two() {{ return 2; }} }}\n"
              "class Entry { public static void main(String[] a) {"
              f" System.out.println(Helper{tag}.two()); }} }}")
    lim = languages.default_limits("java")
    if not languages.toolchain("java").ok:
        pytest.skip(f"java toolchain missing: {languages.toolchain('java').missing}")
    assert run(be, "java", pkg, limits=lim).stdout == "pkg\n"
    assert run(be, "java", hidden, limits=lim).stdout == "2\n"


def test_prune_keeps_the_most_recently_used_entries(tmp_path: object) -> None:
    root = str(tmp_path)
    for i in range(5):
        path = os.path.join(root, f"{i:064x}")
        os.mkdir(path)
        os.utime(path, (1000 + i, 1000 + i))
    os.mkdir(os.path.join(root, ".stage-x"))  # not an entry: left alone
    assert compile_cache.prune(root, 2) == 3
    assert sorted(os.listdir(root)) == [".stage-x", f"{3:064x}", f"{4:064x}"]


def _output(tmp: str, entries: dict[str, str]) -> ExecResult:
    """A compile result whose upper dir holds ``entries`` (name -> kind), as hostile output."""
    from revex.runtime.sandbox.base import FileChange

    upper = os.path.join(tmp, "upper")
    os.makedirs(upper, exist_ok=True)
    changes = []
    for name, kind in entries.items():
        path = os.path.join(upper, name)
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "symlink":
            os.symlink("/etc/passwd", path)
        elif kind == "setuid":
            with open(path, "wb") as f:
                f.write(b"\x7fELF")
            os.chmod(path, 0o4755)
        else:
            with open(path, "wb") as f:
                f.write(b"data")
        changes.append(FileChange(name, "symlink" if kind == "symlink" else "file"))
    return ExecResult(status=ExecStatus.OK, changes=changes, upper_dir=upper)


def test_hostile_compile_output_is_copied_safely(tmp_path: object) -> None:
    from revex.errors import SandboxError

    tmp = str(tmp_path)
    stage = os.path.join(tmp, "stage")
    os.mkdir(stage)
    result = _output(tmp, {"main": "setuid", "pipe": "fifo", "link": "symlink",
                           "Data.class": "file"})
    compile_cache._copy_output(result, stage)  # a FIFO must not block the host
    assert sorted(os.listdir(stage)) == ["Data.class", "main"]
    assert os.stat(os.path.join(stage, "main")).st_mode & 0o7777 == 0o755  # setuid dropped
    bad = _output(os.path.join(tmp, "b"), {"..evil": "file"})
    bad.changes[0] = type(bad.changes[0])("../evil", "file")
    with pytest.raises(SandboxError, match="unsafe name"):
        compile_cache._copy_output(bad, stage)


def test_run_many_and_runtime_run_take_language(tmp_path: object) -> None:
    from revex import Runtime
    from revex.runtime.sandbox import run_many

    specs = [make_spec(ADD[lang], language=lang, stdin="2 2", limits=languages.default_limits(
        lang)) for lang in ("c", "javascript", "bash")
        if lang in languages.NATIVE or languages.toolchain(lang).ok]
    results = run_many(specs, concurrency=2, backend=NsjailBackend())
    assert [r.stdout for r in results] == ["4\n"] * len(specs)
    with Runtime(state_dir=os.path.join(str(tmp_path), "state"), audit=None) as rt:
        r = rt.run(ADD["c"], language="c", stdin="20 22")
        assert r.status is ExecStatus.OK and r.stdout == "42\n"


def test_javascript_recursion_is_deep_and_overflow_is_a_clean_error(be: NsjailBackend) -> None:
    if not languages.toolchain("javascript").ok:
        pytest.skip(f"javascript toolchain missing: {languages.toolchain('javascript').missing}")
    rec = "function f(n){return n==0?0:1+f(n-1);} console.log(f(%d));"
    deep = run(be, "javascript", rec % 50_000)
    assert deep.status is ExecStatus.OK and deep.stdout == "50000\n"
    over = run(be, "javascript", rec % 10_000_000)
    assert over.status is ExecStatus.FAILED and "RangeError" in over.stderr  # not a SIGSEGV
