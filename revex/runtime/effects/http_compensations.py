"""Declared compensations and irreversible operations for HTTP endpoints.

HTTP semantics give an inverse for plain CRUD (POST → DELETE, PUT/PATCH → PUT the pre-image,
DELETE → recreate). Some operations have no such inverse: a payment is compensated by a refund,
an email cannot be unsent. Those are declared, in code::

    comp = Compensations()

    @comp.compensate("POST", "/payments", host="pay.example.com")
    def refund(ctx: CompensationContext) -> CompensationRequest:
        return CompensationRequest("POST", f"/payments/{ctx.response_json['id']}/refund")

    comp.irreversible("POST", "/emails", reason="sends an email")

or per service in TOML (a file given as ``compensations=``, or the ``[http]`` table of a
policy)::

    [services.payments]
    host = "127.0.0.1:8001"        # glob over "host" or "host:port"; omitted: any host
    idempotency_keys = true        # the server honours Idempotency-Key (safe to re-send)
    posts_create = true            # every POST creates a new resource and names it (below)
    full_representations = true    # a 2xx answer's body is what a GET of the resource returns

    [[services.payments.operations]]
    match = "POST /payments"
    compensate = "POST /payments/{response.id}/refund"
    verify = "GET /payments/{response.id}"    # optional read-back: undo is verified
    verify_json = { status = "refunded" }     # fields the compensated resource must show

    [[services.payments.operations]]
    match = "POST /emails"
    irreversible = true
    reason = "sends an email"

    [[services.payments.operations]]
    match = "DELETE /users/{id}"
    cascades = ["/memberships?userId={id}"]   # what the server deletes along with it

``posts_create`` is a trust declaration for speed: a POST to that service is not preceded by a
GET of its target (for a collection, a listing whose cost grows with its size; without the
declaration only collections revex has seen to be large skip it, and only a checked 201 with a
``Location`` is believed there: see :mod:`http_forward`); revex believes
that the resource the answer names (``Location``, else the id field of its body) did not exist
before, except the item the request body names by id, which is read first. What it gives up: a
server that replaces an existing resource on POST under another name would have it deleted by
the undo; a POST whose answer is lost (a crash, a timeout, a 5xx) has an unknown effect (rollback
refuses it without ``force``) instead of one found by comparing listings.

``full_representations`` declares that a 200 or 201 answer to PUT or PATCH (and a POST's answer
that names what it created) carries what a GET of that resource returns: it is kept as the state
the request left instead of a GET after it, where the answer has no strong ETag. A server that
answers something else gives a conflict on rollback (its GET does not show it), never a silent
overwrite.

A *cascade* declares what the server changes on its own along with a request revex reverses
itself (a DELETE of a user that deletes the user's memberships; HTTP cannot show that). Before
the request, each declared URL is read (a listing: every item it lists, by id; else the document
itself) and journaled as a pre-image; what changed is restored, and verified, on rollback.

The compensating request (and its read-back) is computed from the forward call's actual response
right after it returns and journaled in its DONE record, so undo after a commit or a crash needs
neither the registry nor the code that declared it. A compensation without a read-back cannot be
verified: its DONE record says ``undo_check: "none"`` and why.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from revex.errors import ConfigError
from revex.policies.engine import glob_match


@dataclass(frozen=True)
class CompensationContext:
    """What a compensator sees: the forward request and its actual response."""

    method: str
    url: str
    path_params: Mapping[str, str]
    request_json: Any
    status: int
    response_json: Any
    response_headers: Mapping[str, str]


@dataclass(frozen=True)
class ReadBack:
    """How to check that a compensation worked: GET ``url`` (a path on the same origin) and
    find ``expect`` in its JSON (every field of ``expect``, recursively; other fields free)."""

    url: str
    expect: Any


@dataclass(frozen=True)
class CompensationRequest:
    """The request that compensates a forward call; ``url`` may be a path on the same origin.
    Without ``read_back`` its undo cannot be verified (only its 2xx status is checked)."""

    method: str
    url: str
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    read_back: ReadBack | None = None


Compensator = Callable[[CompensationContext], CompensationRequest | None]


@dataclass(frozen=True)
class Operation:
    """One declared endpoint: compensable (``compensator``) or ``irreversible``."""

    name: str
    method: str
    path: str
    host: str | None = None
    compensator: Compensator | None = None
    irreversible: bool = False
    reason: str = ""
    cascades: tuple[str, ...] = ()

    def match(self, method: str, host: str, port: int | None, path: str
              ) -> dict[str, str] | None:
        if self.method != "*" and method.upper() != self.method:
            return None
        if self.host is not None and not _host_match(self.host, host, port):
            return None
        found = _path_regex(self.path).match(path)
        return found.groupdict() if found else None


class Compensations:
    """A registry of declared operations; first declared match wins."""

    def __init__(self) -> None:
        self.operations: list[Operation] = []
        self.keyed_hosts: list[str] = []
        self.creating_hosts: list[str] = []
        self.representing_hosts: list[str] = []

    def compensate(self, method: str, path: str, *, host: str | None = None,
                   name: str | None = None) -> Callable[[Compensator], Compensator]:
        """Decorator: declare ``fn(ctx) -> CompensationRequest | None`` as the compensation
        of ``method path`` (path may hold ``{var}`` segments)."""
        def register(fn: Compensator) -> Compensator:
            label = name or str(getattr(fn, "__name__", "compensation"))
            self.operations.append(Operation(label,
                                             method.upper(), path, host, fn))
            return fn
        return register

    def cascade(self, method: str, path: str, *urls: str, host: str | None = None) -> None:
        """Declare that ``method path`` makes the server change ``urls`` too (templates with
        ``path``'s ``{var}`` segments, e.g. ``"/memberships?userId={id}"``): they are read
        before the request and restored on rollback. Raises ConfigError for a template that
        names a variable ``path`` does not have."""
        _check_cascades(list(urls), path, f"cascade of {method.upper()} {path}")
        self.operations.append(Operation(f"{method.upper()} {path} cascades", method.upper(),
                                         path, host, cascades=tuple(urls)))

    def irreversible(self, method: str, path: str, *, host: str | None = None,
                     reason: str = "", name: str | None = None) -> None:
        """Declare ``method path`` as irreversible: denied unless a policy rule allows
        ``irreversible = true``, and never undone."""
        self.operations.append(Operation(name or f"{method.upper()} {path}", method.upper(),
                                         path, host, None, True, reason))

    def honours_idempotency_keys(self, host: str) -> None:
        """Declare that the server at ``host`` (glob) de-duplicates on Idempotency-Key."""
        self.keyed_hosts.append(host)

    def trust_posts_create(self, host: str) -> None:
        """Declare that every POST to the server at ``host`` (glob) creates a new resource and
        names it (``posts_create`` in the module doc: what that trust gives up)."""
        self.creating_hosts.append(host)

    def trust_full_representations(self, host: str) -> None:
        """Declare that the server at ``host`` (glob) answers a write with the resource's full
        representation (``full_representations`` in the module doc)."""
        self.representing_hosts.append(host)

    def extend(self, other: Compensations) -> None:
        self.operations.extend(other.operations)
        self.keyed_hosts.extend(other.keyed_hosts)
        self.creating_hosts.extend(other.creating_hosts)
        self.representing_hosts.extend(other.representing_hosts)

    def find(self, method: str, host: str, port: int | None, path: str
             ) -> tuple[Operation, dict[str, str]] | None:
        """The first declared compensable or irreversible operation matching."""
        for op in self.operations:
            if op.compensator is None and not op.irreversible:
                continue
            found = op.match(method, host, port, path)
            if found is not None:
                return op, found
        return None

    def cascades_for(self, method: str, host: str, port: int | None, path: str) -> list[str]:
        """The declared cascade URLs (relative, filled from the path) of a request."""
        out: list[str] = []
        for op in self.operations:
            found = op.match(method, host, port, path) if op.cascades else None
            if found is not None:
                out.extend(_fill_path(t, found) for t in op.cascades)
        return out

    def keys_honoured(self, host: str, port: int | None) -> bool:
        return any(_host_match(h, host, port) for h in self.keyed_hosts)

    def posts_create(self, host: str, port: int | None) -> bool:
        return any(_host_match(h, host, port) for h in self.creating_hosts)

    def full_representations(self, host: str, port: int | None) -> bool:
        return any(_host_match(h, host, port) for h in self.representing_hosts)

    # ---- TOML ---------------------------------------------------------------------------------

    @classmethod
    def load(cls, spec: Compensations | str | Path | Mapping[str, Any] | None) -> Compensations:
        """A registry from a registry, a TOML path, or a mapping (``{"services": {...}}``).

        Raises ConfigError naming the file and the service on a malformed declaration.
        """
        if isinstance(spec, Compensations):
            return spec
        out = cls()
        if spec is None:
            return out
        if isinstance(spec, str | Path):
            path = Path(spec)
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"cannot read compensations file {path}: {exc}") from exc
            out.add_mapping(data, str(path))
        else:
            out.add_mapping(spec, "<mapping>")
        return out

    def add_mapping(self, data: Mapping[str, Any], source: str) -> None:
        services = data.get("services", {})
        if not isinstance(services, dict):
            raise ConfigError(f"{source}: 'services' must be a table")
        for sname, service in services.items():
            where = f"{source}: services.{sname}"
            if not isinstance(service, dict):
                raise ConfigError(f"{where} must be a table")
            host = service.get("host")
            if service.get("idempotency_keys"):
                self.keyed_hosts.append(host or "*")
            if service.get("posts_create"):
                self.creating_hosts.append(host or "*")
            if service.get("full_representations"):
                self.representing_hosts.append(host or "*")
            for i, op in enumerate(service.get("operations", [])):
                self.operations.append(_operation(op, host, f"{where}.operations[{i}]"))


def _operation(op: Any, host: str | None, where: str) -> Operation:
    if not isinstance(op, dict) or not isinstance(op.get("match"), str):
        raise ConfigError(f"{where}: needs match = \"METHOD /path\"")
    unknown = set(op) - {"match", "compensate", "compensate_json", "irreversible", "reason",
                         "name", "cascades", "verify", "verify_json"}
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    method, _, path = op["match"].strip().partition(" ")
    if not path.startswith("/"):
        raise ConfigError(f"{where}: match must look like \"POST /payments\"")
    name = str(op.get("name") or op["match"])
    if "cascades" in op:
        cascades = op["cascades"]
        if not isinstance(cascades, list) or not all(isinstance(c, str) for c in cascades):
            raise ConfigError(f"{where}: cascades must be a list of URL templates, e.g. "
                              "cascades = [\"/memberships?userId={id}\"]")
        if op.get("irreversible") or "compensate" in op:
            raise ConfigError(f"{where}: cascades apply to requests revex reverses itself; "
                              "remove compensate/irreversible (a compensation must undo what "
                              "cascades itself)")
        _check_cascades(cascades, path.strip(), where)
        return Operation(name, method.upper(), path.strip(), host,
                         cascades=tuple(cascades))
    if op.get("irreversible"):
        return Operation(name, method.upper(), path.strip(), host, None, True,
                         str(op.get("reason", "")))
    template = op.get("compensate")
    if not isinstance(template, str) or " " not in template.strip():
        raise ConfigError(f"{where}: needs compensate = \"METHOD /path/{{response.id}}\" "
                          "or irreversible = true")
    cmethod, _, cpath = template.strip().partition(" ")
    body = op.get("compensate_json")
    verify = op.get("verify")
    if verify is not None:
        vmethod, _, vpath = str(verify).strip().partition(" ")
        if vmethod.upper() != "GET" or not vpath.strip().startswith("/") \
                or vpath.strip().startswith("//") or "verify_json" not in op:
            raise ConfigError(f"{where}: verify must look like \"GET /payments/{{response.id}}\" "
                              "(a path on the same server) with verify_json = {...}, the "
                              "fields the compensated resource must show")
        verify = vpath.strip()
    elif "verify_json" in op:
        raise ConfigError(f"{where}: verify_json needs verify = \"GET /path\"")
    return Operation(name, method.upper(), path.strip(), host,
                     TemplateCompensator(cmethod.upper(), cpath.strip(), body, verify,
                                         op.get("verify_json")))


@dataclass(frozen=True)
class TemplateCompensator:
    """A compensation from a template: ``{response.x.y}``, ``{request.x}``, ``{path.var}``."""

    method: str
    url: str
    body: Any = None
    verify: str | None = None
    verify_json: Any = None

    def __call__(self, ctx: CompensationContext) -> CompensationRequest | None:
        read_back = None if self.verify is None else \
            ReadBack(_fill(self.verify, ctx), _fill_obj(self.verify_json, ctx))
        return CompensationRequest(self.method, _fill(self.url, ctx),
                                   _fill_obj(self.body, ctx), read_back=read_back)


_FIELD = re.compile(r"\{(response|request|path)\.([A-Za-z0-9_.\-]+)\}")


def _fill(text: str, ctx: CompensationContext) -> str:
    def sub(m: re.Match[str]) -> str:
        root: Any = {"response": ctx.response_json, "request": ctx.request_json,
                     "path": dict(ctx.path_params)}[m.group(1)]
        for part in m.group(2).split("."):
            if isinstance(root, dict) and part in root:
                root = root[part]
            elif isinstance(root, list) and part.isdigit() and int(part) < len(root):
                root = root[int(part)]
            else:
                raise ConfigError(f"compensation template {text!r}: {m.group(0)} is not in "
                                  "the forward call's request/response")
        return str(root)
    return _FIELD.sub(sub, text)


def _fill_obj(obj: Any, ctx: CompensationContext) -> Any:
    if isinstance(obj, str):
        return _fill(obj, ctx)
    if isinstance(obj, dict):
        return {k: _fill_obj(v, ctx) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fill_obj(v, ctx) for v in obj]
    return obj


def _host_match(pattern: str, host: str, port: int | None) -> bool:
    candidates = [host] + ([f"{host}:{port}"] if port is not None else [])
    return any(glob_match([pattern.lower()], c.lower()) for c in candidates)


_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _fill_path(template: str, params: Mapping[str, str]) -> str:
    # a path segment of the request, quoted whole: it cannot add a query field or a segment
    return _VAR.sub(lambda m: quote(params[m.group(1)], safe=""),
                    template.replace("{path.", "{"))


def _check_cascades(cascades: list[str], path: str, where: str) -> None:
    have = set(_VAR.findall(path))
    for template in cascades:
        names = set(_VAR.findall(template.replace("{path.", "{")))
        if names - have or not template.startswith("/") or template.startswith("//"):
            raise ConfigError(
                f"{where}: cascades entry {template!r} must be a path on the same server "
                f"using only the variables of {path!r} ({', '.join(sorted(have)) or 'none'})")


def _path_regex(template: str) -> re.Pattern[str]:
    parts = []
    pos = 0
    for m in _VAR.finditer(template):
        parts.append(re.escape(template[pos:m.start()]))
        parts.append(f"(?P<{m.group(1)}>[^/]+)")
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("".join(parts).rstrip("/") + r"/?\Z")
