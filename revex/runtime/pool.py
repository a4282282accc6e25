"""Where sandbox runs execute: a pool of workers behind one method, ``run_many(specs)``.

* :class:`LocalPool` runs specs on threads over one backend in this process (what
  :func:`revex.runtime.sandbox.run_many` always did).
* :class:`RayPool` spreads stateless runs over Ray actors, each owning its own sandbox backend
  and its own run directory (see :mod:`revex.runtime._ray_worker`). Specs with a workspace
  (episodes with journaled effects: their change set must be applied next to their journal)
  always run on the local backend.

Results cross from a worker as a JSON string that this side checks field by field
(:func:`result_from_wire`): nothing a worker or the code it ran built is unpickled here.

:func:`make_pool` turns ``Runtime(executor=...)`` (``"local"``, ``"ray:auto"``,
``"ray://host:port"``, ``"ray"`` for the Ray session already initialised or a new local one)
into a pool.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from revex.errors import ConfigError, RevexError, SandboxError
from revex.runtime.sandbox.base import ExecResult, ExecSpec, ExecStatus, SandboxBackend

__all__ = ["LocalPool", "Pool", "make_pool", "result_from_wire", "result_to_wire"]


@runtime_checkable
class Pool(Protocol):
    """Runs many specs; results keep the order of ``specs``. ``name`` is shown in reports."""

    name: str

    def run_many(self, specs: Sequence[ExecSpec], *, concurrency: int = 0) -> list[ExecResult]:
        ...

    def close(self) -> None: ...


class LocalPool:
    """Threads over one backend in this process. ``backend`` may be a zero-argument callable
    returning the backend, so a Runtime can choose its backend on first use."""

    name = "local"

    def __init__(self, backend: SandboxBackend | Callable[[], SandboxBackend]) -> None:
        self._backend = backend

    @property
    def backend(self) -> SandboxBackend:
        be = self._backend
        return be if isinstance(be, SandboxBackend) else be()

    def run_many(self, specs: Sequence[ExecSpec], *, concurrency: int = 0) -> list[ExecResult]:
        """Raises what the backend raises for the first failing spec, after the others ran."""
        import asyncio

        from revex.runtime.sandbox import arun_many

        return asyncio.run(arun_many(specs, concurrency=concurrency, backend=self.backend))

    def close(self) -> None:
        """Nothing to release: the backend belongs to whoever passed it in."""


# ---- the wire format ------------------------------------------------------------------------

_STR = ("stdout", "stderr", "backend", "message")
_OPT_INT = ("exit_code", "signal")
_FLOAT = ("cpu_s", "wall_s", "peak_memory_mb")
_BOOL = ("stdout_truncated", "stderr_truncated", "weak_isolation")
#: Errors a worker may report by name; anything else becomes a SandboxError.
_ERRORS: dict[str, type[RevexError]] = {"ConfigError": ConfigError, "SandboxError": SandboxError}


def result_to_wire(result: ExecResult) -> str:
    """Serialise a workspace-less result as JSON (worker side). Raises ``SandboxError`` for a
    result that carries a change set: those never leave the node that holds their files."""
    if result.changes or result.upper_dir is not None:
        result.discard()
        raise SandboxError("a pooled run produced a change set; runs with a workspace stay local")
    data: dict[str, Any] = {name: getattr(result, name) for name in _STR + _OPT_INT + _FLOAT
                            + _BOOL}
    data["status"] = result.status.value
    return json.dumps(data)


def result_from_wire(text: object, spec: ExecSpec) -> ExecResult:
    """Rebuild an :class:`ExecResult` from a worker's JSON, accepting only the expected field
    names and plain types, and output no longer than ``spec.limits.output_bytes`` allows.
    Raises ``SandboxError`` naming the first field that is wrong."""
    if not isinstance(text, str):
        raise SandboxError(f"a pool worker answered {type(text).__name__}, not a JSON string")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SandboxError(f"a pool worker answered malformed JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SandboxError("a pool worker answered JSON that is not an object")
    expected = {"status", *_STR, *_OPT_INT, *_FLOAT, *_BOOL}
    if set(data) != expected:
        raise SandboxError(f"a pool worker's result has fields {sorted(set(data) ^ expected)} "
                           "wrong (missing or unexpected)")
    try:
        status = ExecStatus(data["status"])
    except ValueError as exc:
        raise SandboxError(f"a pool worker reported an unknown status {data['status']!r}") from exc
    # Output is capped by characters at 4 bytes each: decoding can only shrink a byte count.
    cap = spec.limits.output_bytes * 4 + 4096
    for name in _STR:
        if not isinstance(data[name], str) or len(data[name]) > cap:
            raise SandboxError(f"a pool worker's result field {name} is not a str within limits")
    for name in _OPT_INT:
        if data[name] is not None and (type(data[name]) is not int):
            raise SandboxError(f"a pool worker's result field {name} is not an int or null")
    for name in _FLOAT:
        if type(data[name]) not in (int, float):
            raise SandboxError(f"a pool worker's result field {name} is not a number")
        data[name] = float(data[name])
    for name in _BOOL:
        if type(data[name]) is not bool:
            raise SandboxError(f"a pool worker's result field {name} is not a bool")
    data["status"] = status
    return ExecResult(**data)


def error_to_wire(exc: RevexError) -> str:
    """A worker's own failure (the backend could not run the spec) as JSON."""
    return json.dumps({"error": type(exc).__name__, "message": str(exc)})


def _wire_error(text: str) -> RevexError | None:
    """The exception a worker reported instead of a result, or None for a result."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if isinstance(data, dict) and set(data) == {"error", "message"}:
        cls = _ERRORS.get(str(data["error"]), SandboxError)
        return cls(f"pool worker: {data['message']}")
    return None


def plain_spec(spec: ExecSpec) -> ExecSpec:
    """A copy of ``spec`` made of builtin types only (the env may be any Mapping)."""
    return dataclasses.replace(spec, env=dict(spec.env),
                               files={str(k): bytes(v) for k, v in spec.files.items()})


def make_pool(executor: str | Pool | None, *, backend: Callable[[], SandboxBackend],
              backend_name: str | None = None) -> Pool:
    """The pool for ``Runtime(executor=...)``.

    ``None``/``"local"``: threads over ``backend()``. ``"ray"``: the Ray session this process
    already initialised (or a new local one). ``"ray:auto"``: join the cluster this node
    belongs to. ``"ray://host:port"``: a Ray client connection. ``backend_name`` is the backend
    each Ray worker selects (None: the strongest that works on its node).
    Raises ``ConfigError`` for another string, or when Ray is not installed.
    """
    if executor is None or executor == "local":
        return LocalPool(backend)
    if isinstance(executor, Pool):
        return executor
    if isinstance(executor, str) and (executor == "ray" or executor.startswith("ray:")):
        address = None if executor == "ray" else (
            "auto" if executor == "ray:auto" else executor)
        from revex.runtime.ray_pool import RayPool

        return RayPool(address=address, backend=backend_name, local_backend=backend)
    raise ConfigError(f"unknown executor {executor!r}; use 'local', 'ray', 'ray:auto', "
                      "'ray://host:port' or a Pool object")



def __getattr__(name: str) -> Any:
    # RayPool lives in its own module so that importing revex never imports Ray.
    if name == "RayPool":
        from revex.runtime.ray_pool import RayPool

        return RayPool
    raise AttributeError(name)
