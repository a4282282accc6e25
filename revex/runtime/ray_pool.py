"""Stateless sandbox runs spread over Ray actors.

Each actor (:class:`SandboxWorker`) owns one sandbox backend and one private run directory on
its node. The trusted side sends it an :class:`ExecSpec` (plain data it built itself) and gets
back a JSON string, checked field by field by :func:`revex.runtime.pool.result_from_wire`.

An actor that dies mid-run (node lost, process killed, out of memory) fails its in-flight calls
with ``RayActorError``; the pool replaces the actor and runs each such spec once more, on
another actor. A spec whose second try also loses its actor gets a ``sandbox_error`` result.
An actor whose call is still pending ``wall_s + grace_s`` after it was sent (stopped,
deadlocked, its node cut off) is killed and handled the same way. Every spec therefore yields
exactly one result. Runs are stateless (no workspace), so a retried
run has nothing to double; specs with a workspace always run on the local backend.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from revex.errors import ConfigError, RevexError, SandboxError
from revex.runtime.pool import (
    LocalPool,
    _wire_error,
    error_to_wire,
    plain_spec,
    result_from_wire,
    result_to_wire,
)
from revex.runtime.sandbox.base import ExecResult, ExecSpec, ExecStatus, SandboxBackend

_PREFIX = "revex-ray-worker-"
#: Longest an actor may take to start (process, imports, the backend's probe) before a call
#: waiting on it counts as hung.
_START_S = 120.0


def _sweep_dead_workers() -> None:
    """Remove the run directories of actors on this node whose process is gone."""
    base = tempfile.gettempdir()
    for name in os.listdir(base):
        pid = name[len(_PREFIX):].split("-", 1)[0]
        if not name.startswith(_PREFIX) or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


class SandboxWorker:
    """The body of one Ray actor: a backend chosen on its node and a private run directory.

    Thread-safe (the actor serves ``per_actor`` calls at once). Never raises from :meth:`run`:
    a failure of the backend itself comes back as an error record.
    """

    def __init__(self, backend: str | None) -> None:
        from revex.runtime.sandbox import select_backend

        # One directory per actor: its run directories and nothing else. The jailed user
        # must traverse it to reach its own run directory, hence 0711. The name carries the
        # pid so that a later actor on this node removes what a killed one left behind.
        _sweep_dead_workers()
        self.state_dir = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-")
        os.chmod(self.state_dir, 0o711)
        tempfile.tempdir = self.state_dir  # this process serves only this actor
        self._lock = threading.Lock()
        self._running = 0
        self._backend: SandboxBackend | None = None
        self._error: RevexError | None = None
        try:
            self._backend = select_backend(backend)
        except RevexError as exc:  # reported per run, so it is not mistaken for a dead actor
            self._error = exc

    def run(self, spec: ExecSpec) -> str:
        with self._lock:
            self._running += 1
        try:
            if self._error is not None:
                return error_to_wire(self._error)
            assert self._backend is not None
            if spec.workspace is not None:
                return error_to_wire(ConfigError("runs with a workspace stay on the node that "
                                                 "holds the episode's journal"))
            return result_to_wire(self._backend.run(spec))
        except RevexError as exc:
            return error_to_wire(exc)
        except Exception as exc:  # the worker boundary: a bug here must not kill the actor
            return error_to_wire(SandboxError(f"{type(exc).__name__}: {exc}"))
        finally:
            with self._lock:
                self._running -= 1

    def running(self) -> int:
        """How many runs are in progress (tests use it to kill an actor mid-run)."""
        return self._running

    def pid(self) -> int:
        return os.getpid()

    def where(self) -> str:
        """This actor's run directory."""
        return self.state_dir

    def close(self) -> None:
        close = getattr(self._backend, "close", None)
        if close is not None:
            close()
        shutil.rmtree(self.state_dir, ignore_errors=True)
        _sweep_dead_workers()  # what actors killed on this node since left behind


@dataclass
class PoolStats:
    """What happened in one pool's lifetime: runs sent, retried after an actor died, and
    given up (reported as ``sandbox_error``)."""

    submitted: int = 0
    retried: int = 0
    lost_actor: int = 0
    hung_actors: int = 0
    replaced_actors: list[str] = field(default_factory=list)


class RayPool:
    """A pool of ``actors`` Ray actors, each serving ``per_actor`` runs at once.

    ``address``: passed to ``ray.init`` when Ray is not initialised yet (None: a new local
    Ray; ``"auto"``: the cluster of this node; ``"ray://host:port"``: a Ray client). ``backend``:
    the backend name each actor selects on its node. ``local_backend``: runs specs that have a
    workspace. ``retries``: how often a spec whose actor died is sent again (0 or 1).
    ``grace_s``: an actor whose call is still pending ``wall_s + grace_s`` after it was sent
    (stopped, deadlocked, its node partitioned) is killed and replaced, like a dead one.
    Raises ``ConfigError`` when Ray is not installed or an argument is out of range,
    ``SandboxError`` when no Ray cluster answers at ``address``.
    """

    name = "ray"

    def __init__(self, *, address: str | None = None, backend: str | None = None,
                 actors: int = 0, per_actor: int = 2, retries: int = 1,
                 local_backend: SandboxBackend | Callable[[], SandboxBackend] | None = None,
                 grace_s: float = 60.0) -> None:
        try:
            import ray as ray_module
        except ImportError as exc:
            raise ConfigError("the Ray pool needs Ray: pip install 'revex[ray]'") from exc
        if retries not in (0, 1) or per_actor < 1 or actors < 0 or grace_s <= 0:
            raise ConfigError("RayPool needs retries 0 or 1, per_actor >= 1, actors >= 0 and "
                              "grace_s > 0")
        self.grace_s = grace_s
        ray: Any = ray_module  # typed loosely: the pool must type-check where Ray is absent
        self._ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError) as exc:
                where = address or "a new local instance"
                raise SandboxError(f"cannot reach a Ray cluster at {where}: {exc}; start one "
                                   "with `ray start --head` or pass executor='ray' for a local "
                                   "one") from exc
        n = actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
        # One extra concurrency slot so running()/close() answer while every run slot is busy.
        self._cls = ray.remote(num_cpus=1, max_concurrency=per_actor + 1)(SandboxWorker)
        self._backend_name = backend
        self.per_actor = per_actor
        self.retries = retries
        self.actors: list[Any] = [self._cls.remote(backend) for _ in range(n)]
        # One probe call per actor: until it answers, the actor is starting (its process, the
        # import of revex, the backend's probe run), which no run's deadline should count.
        self._ready: list[Any] = [a.pid.remote() for a in self.actors]
        self._created = [time.monotonic()] * n
        self._local = LocalPool(local_backend) if local_backend is not None else None
        self.stats = PoolStats()

    def run_many(self, specs: Sequence[ExecSpec], *, concurrency: int = 0) -> list[ExecResult]:
        """Run ``specs``; results keep order. Specs with a workspace run on the local backend.

        Raises the first ``SandboxError``/``ConfigError`` a worker's backend reported (after
        every other spec finished), ``ConfigError`` for workspace specs without a local backend.
        """
        results: list[ExecResult | None] = [None] * len(specs)
        errors: list[BaseException] = []
        local = [i for i, s in enumerate(specs) if s.workspace is not None]
        thread = None
        if local:
            if self._local is None:
                raise ConfigError("specs with a workspace need RayPool(local_backend=...)")
            thread = threading.Thread(target=self._run_local,
                                      args=(self._local, specs, local, results, errors))
            thread.start()
        remote = [i for i, s in enumerate(specs) if s.workspace is None]
        try:
            self._run_remote(specs, remote, results, errors, concurrency)
        finally:
            if thread is not None:
                thread.join()
        if errors:
            raise errors[0]
        return [r for r in results if r is not None]

    @staticmethod
    def _run_local(pool: LocalPool, specs: Sequence[ExecSpec], idx: list[int],
                   results: list[ExecResult | None], errors: list[BaseException]) -> None:
        try:
            for i, r in zip(idx, pool.run_many([specs[i] for i in idx]), strict=True):
                results[i] = r
        except RevexError as exc:
            errors.append(exc)

    def _run_remote(self, specs: Sequence[ExecSpec], idx: list[int],
                    results: list[ExecResult | None], errors: list[BaseException],
                    concurrency: int) -> None:
        ray = self._ray
        # Never more in flight than the actors have slots: every call starts when sent, so a
        # call still pending wall_s + grace_s after it was sent means a hung actor.
        capacity = len(self.actors) * self.per_actor
        limit = min(concurrency, capacity) if concurrency else capacity
        queue: deque[tuple[int, int]] = deque((i, 0) for i in idx)
        pending: dict[Any, tuple[int, int, int, Any]] = {}  # ref -> (spec, try, slot, actor)
        deadline: dict[Any, float] = {}
        budget: dict[Any, float] = {}
        load = [0] * len(self.actors)
        wire = {i: plain_spec(specs[i]) for i in idx}
        while queue or pending:
            while queue and len(pending) < limit:
                i, attempt = queue.popleft()
                slot = min(range(len(self.actors)), key=load.__getitem__)
                actor = self.actors[slot]
                load[slot] += 1
                ref = actor.run.remote(wire[i])
                pending[ref] = (i, attempt, slot, actor)
                budget[ref] = specs[i].limits.wall_s + self.grace_s
                deadline[ref] = time.monotonic() + budget[ref]
                self.stats.submitted += 1
            wait_s = max(0.05, min(deadline.values()) - time.monotonic())
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=wait_s)
            if not ready:
                self._kill_hung(pending, deadline, budget)
            for ref in ready:
                i, attempt, slot, actor = pending.pop(ref)
                del deadline[ref], budget[ref]
                load[slot] -= 1
                try:
                    text = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    self._replace(slot, actor)
                    if attempt < self.retries:
                        self.stats.retried += 1
                        queue.append((i, attempt + 1))
                    else:
                        self.stats.lost_actor += 1
                        results[i] = ExecResult(
                            status=ExecStatus.SANDBOX_ERROR, backend="ray",
                            message=f"the Ray worker running this spec died "
                                    f"({attempt + 1} tries): {type(exc).__name__}")
                    continue
                except ray.exceptions.RayError as exc:  # e.g. the call could not be sent
                    errors.append(SandboxError(f"Ray failed this run: {type(exc).__name__}"))
                    continue
                err = _wire_error(text) if isinstance(text, str) else None
                if err is not None:
                    errors.append(err)
                    continue
                try:
                    results[i] = result_from_wire(text, specs[i])
                except SandboxError as exc:
                    errors.append(exc)

    def _kill_hung(self, pending: dict[Any, tuple[int, int, int, Any]],
                   deadline: dict[Any, float], budget: dict[Any, float]) -> None:
        """Kill (and replace) each started actor with a call past its deadline; its calls
        then fail with RayActorError and take the retry path."""
        now = time.monotonic()
        for ref, (_, _, slot, actor) in pending.items():
            if deadline[ref] > now:
                continue
            starting = (self.actors[slot] is actor and now - self._created[slot] < _START_S
                        and not self._ray.wait([self._ready[slot]], timeout=0)[0])
            if starting:
                deadline[ref] = now + budget[ref]  # the clock starts once the actor is up
                continue
            if self.actors[slot] is actor:
                self.stats.hung_actors += 1
                self._replace(slot, actor)
            deadline[ref] = now + self.grace_s  # its failure is on the way

    def _replace(self, slot: int, dead: Any) -> None:
        """Start a new actor in ``slot`` unless an earlier failure already replaced it."""
        if self.actors[slot] is dead:
            self._ray.kill(dead, no_restart=True)
            self.actors[slot] = self._cls.remote(self._backend_name)
            self._ready[slot] = self.actors[slot].pid.remote()
            self._created[slot] = time.monotonic()
            self.stats.replaced_actors.append(str(dead._actor_id.hex()))

    def close(self) -> None:
        """Close every actor's backend, remove the actors, and shut Ray down if this pool
        started it. Idempotent."""
        ray = self._ray
        actors, self.actors = self.actors, []
        for actor in actors:
            # A dead actor has nothing left to close; kill() below removes the rest.
            with contextlib.suppress(ray.exceptions.RayError, TimeoutError):
                ray.get(actor.close.remote(), timeout=30)
            ray.kill(actor, no_restart=True)
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
            self._owns_ray = False
