"""The call server that runs INSIDE the sandbox next to an untrusted solution.

Never imported by revex on the host: :mod:`revex.runtime.sandbox.harness` sends this file's
source as the sandboxed program. Stdlib only.

Protocol (newline-delimited JSON on the process's original stdin/stdout, which are moved to
private descriptors before the solution is loaded; fd 0 becomes /dev/null and fd 1 a copy of
stderr, so the solution's prints and input() never touch the channel):

  host -> {"solution": SOURCE}            server -> {"ready": true} | {"load_error": TEXT}
  host -> {"id": ID, "name": N, "args": [ENC...]}
  server -> {"id": ID, "ok": ENC} | {"id": ID, "exc": TYPE, "msg": TEXT}

ENC is the tagged plain-data encoding shared with the host's decoder: JSON null/bool/int/str/
list as themselves; {"$f": "nan"|"inf"|"-inf"}, {"$t": [...]} tuple, {"$s": [...]} set,
{"$fs": [...]} frozenset, {"$d": [[k, v], ...]} dict, {"$b": base64} bytes,
{"$c": [re, im]} complex. Only exact built-in types are encoded (``type(x) is int``), so an
object with a lying ``__eq__`` cannot be sent at all.
"""

import base64
import fcntl
import json
import math
import os

_MAX_DEPTH = 200


class _Unencodable(Exception):
    pass


def _enc(v, depth=0):
    if depth > _MAX_DEPTH:
        raise _Unencodable("value nested too deeply")
    t = type(v)
    if v is None or t is bool or t is int or t is str:
        return v
    if t is float:
        if math.isnan(v):
            return {"$f": "nan"}
        if math.isinf(v):
            return {"$f": "inf" if v > 0 else "-inf"}
        return v
    if t is list:
        return [_enc(x, depth + 1) for x in v]
    if t is tuple:
        return {"$t": [_enc(x, depth + 1) for x in v]}
    if t is set:
        return {"$s": [_enc(x, depth + 1) for x in v]}
    if t is frozenset:
        return {"$fs": [_enc(x, depth + 1) for x in v]}
    if t is dict:
        return {"$d": [[_enc(k, depth + 1), _enc(x, depth + 1)] for k, x in v.items()]}
    if t is bytes:
        return {"$b": base64.b64encode(v).decode()}
    if t is complex:
        return {"$c": [_enc(v.real, depth + 1), _enc(v.imag, depth + 1)]}
    raise _Unencodable("not plain data: " + t.__name__)


def _dec(v):
    if isinstance(v, list):
        return [_dec(x) for x in v]
    if not isinstance(v, dict):
        return v
    (tag, x), = v.items()
    if tag == "$f":
        return float(x)
    if tag == "$t":
        return tuple(_dec(i) for i in x)
    if tag == "$s":
        return {_dec(i) for i in x}
    if tag == "$fs":
        return frozenset(_dec(i) for i in x)
    if tag == "$d":
        return {_dec(k): _dec(i) for k, i in x}
    if tag == "$b":
        return base64.b64decode(x)
    if tag == "$c":
        return complex(_dec(x[0]), _dec(x[1]))
    raise ValueError("unknown tag " + tag)


def _safe_text(fn):
    try:
        text = fn()
        return text[:500] if type(text) is str else "?"
    except BaseException:  # the solution's __str__ may raise anything; the text is optional
        return "?"


def main():
    # Private channel: high, close-on-exec copies of the pipes; 0 and 1 are repointed.
    rfd = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 10)
    wfd = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 10)
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(2, 1)
    os.close(null)
    reader = os.fdopen(rfd, "rb")
    dumps, loads, write = json.dumps, json.loads, os.write

    def send(obj):
        data = (dumps(obj) + "\n").encode()
        while data:
            data = data[write(wfd, data):]

    first = reader.readline()
    if not first:
        os._exit(0)
    ns: dict = {"__name__": "__revex_solution__"}
    try:
        exec(compile(loads(first)["solution"], "<solution>", "exec"), ns)
    except BaseException as exc:  # any failure to load is reported, then the server ends
        send({"load_error": type(exc).__name__ + ": " + _safe_text(lambda e=exc: str(e))})
        os._exit(0)
    send({"ready": True})
    while True:
        line = reader.readline()
        if not line:
            os._exit(0)
        req = loads(line)
        try:
            fn = ns[req["name"]]
            value = fn(*[_dec(a) for a in req["args"]])
            reply = {"id": req["id"], "ok": _enc(value)}
        except BaseException as exc:  # SystemExit/KeyboardInterrupt too: a failed call
            name = _safe_text(lambda exc=exc: type(exc).__name__)
            if isinstance(exc, _Unencodable):
                name = "UnencodableResult"
            reply = {"id": req["id"], "exc": name, "msg": _safe_text(lambda exc=exc: str(exc))}
        send(reply)


if __name__ == "__main__":
    main()
