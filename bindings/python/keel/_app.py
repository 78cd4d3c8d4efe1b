"""``keel.App``: durable workflows and steps on an embedded node in this process."""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import functools
import inspect
import os
import threading
import uuid
import weakref
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar, Union, overload

from . import _native
from ._codec import Codec, Serializer, _hints
from ._context import AsyncContext, Context, _current_context
from ._errors import (
    Cancelled,
    KeelError,
    NotFound,
    Timeout,
    WorkflowFailed,
    _Suspend,
    failure_text,
)
from ._time import Duration, seconds

F = TypeVar("F", bound=Callable[..., Any])

#: Workflow statuses ``App.list`` and ``WorkflowHandle.status`` report.
STATUSES = ("running", "completed", "failed", "cancelled", "parked")


def kind_name(fn: Callable[..., Any]) -> str:
    """A function's default kind name: its module and qualified name (never ``hash()``,
    which differs between processes)."""
    return f"{fn.__module__}.{fn.__qualname__}"


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """A registered step: its journal name and retry policy (seconds)."""

    name: str
    retries: int
    backoff: float
    backoff_max: float
    timeout: Optional[float]
    return_hint: Any


@dataclasses.dataclass(frozen=True)
class WorkflowSpec:
    """A registered workflow kind."""

    kind: str
    version: str
    fn: Callable[..., Any]
    param_hints: tuple[Any, ...]
    return_hint: Any
    is_async: bool


@dataclasses.dataclass(frozen=True)
class JournalEntry:
    """One durable call in a workflow's journal."""

    seq: int
    #: ``step``, ``sleep``, ``signal`` or ``call``.
    kind: str
    #: The step's or signal's name, or the child's id.
    name: str
    #: ``pending``, ``done``, ``failed`` or ``timed-out``.
    state: str
    #: The journaled value's bytes (JSON text with the default serializer).
    value: bytes
    error: str
    attempts: int


@dataclasses.dataclass(frozen=True)
class WorkflowInfo:
    """A workflow as ``App.list`` reports it."""

    id: str
    kind: str
    version: str
    status: str
    #: Durable calls journaled so far.
    journal_len: int


def _signature_hints(fn: Callable[..., Any]) -> tuple[tuple[Any, ...], Any]:
    """The hints of ``fn``'s parameters after the context, and of its return value."""
    hints = _hints(fn)
    params = list(inspect.signature(fn).parameters.values())[1:]
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return tuple(hints.get(p.name) for p in positional), hints.get("return")


class _EventLoopThread:
    """The event loop async workflows run on: its own daemon thread, stopped on close."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="keel-workflows", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Cancels what still runs on the loop (the node stopped first: nothing of it is
        journaled), waits for it, and stops the loop."""

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(timeout=5)
        except (TimeoutError, RuntimeError):
            pass  # the loop is gone, or a task ignores cancellation: stop it anyway
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


_open_apps: "weakref.WeakSet[App]" = weakref.WeakSet()


@atexit.register
def _close_open_apps() -> None:
    for app in list(_open_apps):
        app.close()


class WorkflowHandle:
    """A workflow, by id: its result, status, signals, cancellation."""

    def __init__(self, app: "App", id: str, kind: Optional[str] = None) -> None:
        self._app = app
        self.id = id
        self.kind = kind

    def __repr__(self) -> str:
        return f"WorkflowHandle(id={self.id!r}, kind={self.kind!r})"

    def _decode_end(self, info: dict[str, Any], waited: Optional[float]) -> Any:
        status = info["status"]
        if status == "running":
            raise Timeout(f"workflow {self.id} did not finish within {waited} s")
        if status == "completed":
            spec = self._app._workflows.get(info["kind"])
            return self._app._codec.decode(info["result"], spec.return_hint if spec else None)
        if status == "cancelled":
            raise Cancelled(f"workflow {self.id} was cancelled: {info['error']}")
        raise WorkflowFailed(f"workflow {self.id} failed", info["error"])

    def result(self, timeout: Optional[Duration] = None) -> Any:
        """Waits for the workflow's end: its value; ``keel.WorkflowFailed`` if it failed,
        ``keel.Cancelled`` if it was cancelled, ``keel.Timeout`` if ``timeout`` passed (a
        parked workflow has not ended: it waits for code that matches its journal)."""
        wait = float("inf") if timeout is None else seconds(timeout)
        info = self._app._client().get(self.id, wait)
        return self._decode_end(info, None if timeout is None else wait)

    async def result_async(self, timeout: Optional[Duration] = None) -> Any:
        """``result`` to await."""
        wait = float("inf") if timeout is None else seconds(timeout)
        client = await asyncio.to_thread(self._app._client)
        info = await client.get_async(self.id, wait)
        return self._decode_end(info, None if timeout is None else wait)

    async def status_async(self) -> str:
        """``status`` to await."""
        return await asyncio.to_thread(self.status)

    async def signal_async(self, name: str, value: Any = None) -> bool:
        """``signal`` to await."""
        return await asyncio.to_thread(self.signal, name, value)

    async def cancel_async(self, reason: str = "cancelled by a client") -> bool:
        """``cancel`` to await."""
        return await asyncio.to_thread(self.cancel, reason)

    def journal(self) -> list[JournalEntry]:
        """The workflow's journal: its durable calls so far, in order."""
        info = self._app._client().get(self.id, 0.0, True)
        return [JournalEntry(**entry) for entry in info["journal"]]

    def status(self) -> str:
        """``running``, ``completed``, ``failed``, ``cancelled``, or ``parked``: its code
        no longer matched its journal (``keel.NonDeterminismError`` in the run); it is
        retried at every launch, so deploying fixed code resumes it."""
        return str(self._app._client().get(self.id)["status"])

    def signal(self, name: str, value: Any = None) -> bool:
        """Sends signal ``name`` with ``value``, exactly once. ``False`` when the workflow
        had finished (not delivered)."""
        payload = self._app._codec.encode(value)
        return bool(self._app._client().signal(self.id, name, payload))

    def cancel(self, reason: str = "cancelled by a client") -> bool:
        """Cancels the workflow and its running children; ``False`` if it had finished."""
        return bool(self._app._client().cancel(self.id, reason))


class App:
    """Durable workflows on an embedded node: no server, no database.

    The node launches on first use (or ``launch()``) in ``data_dir`` (created if missing)
    and stops on ``close()``, at the end of a ``with`` block, or at interpreter exit.
    Workflows in flight when the process stopped resume as soon as it launches again.
    """

    def __init__(
        self,
        data_dir: Union[str, "os.PathLike[str]"] = "./keel-data",
        *,
        listen: Optional[str] = None,
        serializer: Optional[Serializer] = None,
        timeout: Duration = 30.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.listen = listen
        self.timeout = seconds(timeout)
        self._codec = Codec(serializer)
        self._workflows: dict[str, WorkflowSpec] = {}
        self._node: Optional[_native.NativeNode] = None
        self._native_client: Optional[_native.NativeClient] = None
        self._pid = os.getpid()
        self._loop: Optional[_EventLoopThread] = None
        self._lock = threading.Lock()
        self._closed = False

    # -- registration --------------------------------------------------------------------

    @overload
    def workflow(self, fn: F) -> F: ...

    @overload
    def workflow(
        self, fn: None = None, *, name: Optional[str] = None, version: str = "1"
    ) -> Callable[[F], F]: ...

    def workflow(
        self, fn: Optional[F] = None, *, name: Optional[str] = None, version: str = "1"
    ) -> Union[F, Callable[[F], F]]:
        """Registers a workflow: a function whose first parameter is its ``Context``."""

        def register(fn: F) -> F:
            with self._lock:
                if self._node is not None:
                    raise KeelError("workflows are registered before the app launches")
                kind = name or kind_name(fn)
                if kind in self._workflows:
                    raise KeelError(f"workflow kind {kind!r} is registered twice")
                params, returns = _signature_hints(fn)
                self._workflows[kind] = WorkflowSpec(
                    kind, version, fn, params, returns, inspect.iscoroutinefunction(fn)
                )
            fn.__keel_workflow__ = kind  # type: ignore[attr-defined]
            return fn

        return register(fn) if fn is not None else register

    @overload
    def step(self, fn: F) -> F: ...

    @overload
    def step(
        self,
        fn: None = None,
        *,
        name: Optional[str] = None,
        retries: int = 3,
        backoff: Duration = 1.0,
        backoff_max: Duration = 60.0,
        timeout: Optional[Duration] = None,
    ) -> Callable[[F], F]: ...

    def step(
        self,
        fn: Optional[F] = None,
        *,
        name: Optional[str] = None,
        retries: int = 3,
        backoff: Duration = 1.0,
        backoff_max: Duration = 60.0,
        timeout: Optional[Duration] = None,
    ) -> Union[F, Callable[[F], F]]:
        """Registers a step: inside a workflow each call is journaled once (retried up to
        ``retries`` times after the first attempt, pausing ``backoff``, doubled each time up
        to ``backoff_max``); outside one it is a plain call. A ``timeout`` abandons an attempt
        that runs longer (its thread cannot be stopped) and counts it failed."""
        if retries < 0:
            raise ValueError("retries is not negative")

        def register(fn: F) -> F:
            spec = StepSpec(
                name or kind_name(fn),
                retries,
                seconds(backoff),
                seconds(backoff_max),
                None if timeout is None else seconds(timeout),
                _hints(fn).get("return"),
            )
            if inspect.iscoroutinefunction(fn):

                @functools.wraps(fn)
                def call_async(*args: Any, **kwargs: Any) -> Any:
                    context = _current_context.get()
                    if context is None:
                        return fn(*args, **kwargs)
                    if isinstance(context, AsyncContext):
                        return context._run_step_async(spec, fn, args, kwargs)
                    raise KeelError(
                        f"{spec.name} is an async step: await it in an async workflow"
                    )

                call_async.__keel_step__ = spec  # type: ignore[attr-defined]
                return call_async  # type: ignore[return-value]

            @functools.wraps(fn)
            def call(*args: Any, **kwargs: Any) -> Any:
                context = _current_context.get()
                if context is None:
                    return fn(*args, **kwargs)
                if isinstance(context, AsyncContext):
                    raise KeelError(
                        f"{spec.name} is a def step: run it from async code with "
                        f"`await ctx.run({fn.__name__}, ...)` (a direct call would block the "
                        "event loop)"
                    )
                return context._run_step(spec, fn, args, kwargs)

            call.__keel_step__ = spec  # type: ignore[attr-defined]
            return call  # type: ignore[return-value]

        return register(fn) if fn is not None else register

    def _workflow_spec(self, workflow: Union[str, Callable[..., Any]]) -> WorkflowSpec:
        if isinstance(workflow, str):
            kind: Optional[str] = workflow
        else:
            kind = getattr(workflow, "__keel_workflow__", None)
        spec = self._workflows.get(kind) if kind else None
        if spec is None:
            raise NotFound(f"{workflow!r} is not a workflow registered with this app")
        return spec

    # -- the node ------------------------------------------------------------------------

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            raise KeelError(
                "this keel.App was created in another process (it was forked): create the "
                "App in the process that uses it"
            )
        if self._closed:
            raise KeelError("this keel.App is closed")

    def launch(self) -> "App":
        """Starts the node (once) and waits until it serves with its kinds declared."""
        self._check_process()
        with self._lock:
            if self._node is None:
                kinds = [(s.kind, s.version, s.is_async) for s in self._workflows.values()]
                if any(s.is_async for s in self._workflows.values()) and self._loop is None:
                    self._loop = _EventLoopThread()
                self._node = _native.NativeNode.launch(
                    str(self.data_dir),
                    self.listen,
                    kinds,
                    self._run,
                    None if self._loop is None else self._loop.loop,
                    self.timeout,
                )
                self._native_client = _native.NativeClient([self._node.addr])
                _open_apps.add(self)
        return self

    @property
    def address(self) -> str:
        """The node's ``host:port`` (launching it)."""
        self.launch()
        assert self._node is not None
        return self._node.addr

    def _client(self) -> _native.NativeClient:
        self.launch()
        assert self._native_client is not None
        return self._native_client

    def close(self) -> None:
        """Stops the node; workflows in flight resume at the next launch."""
        with self._lock:
            node, self._node, self._native_client = self._node, None, None
            loop, self._loop = self._loop, None
            self._closed = True
        _open_apps.discard(self)
        if os.getpid() != self._pid:
            return
        if node is not None:
            node.shutdown()
        if loop is not None:
            loop.stop()

    def __enter__(self) -> "App":
        return self.launch()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> "App":
        return await asyncio.to_thread(self.launch)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.close)

    # -- the runner the engine calls -----------------------------------------------------

    def _run(self, kind: str, native: _native.NativeContext, data: bytes) -> Any:
        """One run of workflow ``kind`` (for an async kind: a coroutine that is one)."""
        spec = self._workflows[kind]
        if spec.is_async:
            return self._run_async(spec, native, data)
        context = Context(native, self)
        token = _current_context.set(context)
        try:
            args = self._codec.decode_args(data, spec.param_hints)
            value = spec.fn(context, *args)
            return (True, self._codec.encode(value))
        except _Suspend:
            return (False, "suspended")
        except BaseException as error:
            # Anything else the code raised (SystemExit included) fails the workflow.
            return (False, failure_text(error))
        finally:
            _current_context.reset(token)

    async def _run_async(
        self, spec: WorkflowSpec, native: _native.NativeContext, data: bytes
    ) -> tuple[bool, Any]:
        # This coroutine runs as its own task, in its own copy of the contextvars.
        context = AsyncContext(native, self)
        _current_context.set(context)
        try:
            args = self._codec.decode_args(data, spec.param_hints)
            value = await spec.fn(context, *args)
            return (True, self._codec.encode(value))
        except _Suspend:
            return (False, "suspended")
        except BaseException as error:
            # Anything else the code raised (a CancelledError included) fails the workflow.
            return (False, failure_text(error))

    # -- clients' calls ------------------------------------------------------------------

    def start(
        self, workflow: Callable[..., Any], *args: Any, id: Optional[str] = None
    ) -> WorkflowHandle:
        """Starts ``workflow(ctx, *args)`` as workflow ``id`` (a new UUID when not given). An
        ``id`` that exists returns that workflow, also after a restart; with another kind it
        raises ``keel.KeelError``."""
        spec = self._workflow_spec(workflow)
        input = self._codec.encode_args(args)
        id = id or uuid.uuid4().hex
        client = self._client()
        if not client.start(id, spec.kind, input):
            existing = client.get(id)["kind"]
            if existing != spec.kind:
                raise KeelError(f"workflow {id} exists with kind {existing}, not {spec.kind}")
        return WorkflowHandle(self, id, spec.kind)

    async def start_async(
        self, workflow: Callable[..., Any], *args: Any, id: Optional[str] = None
    ) -> WorkflowHandle:
        """``start`` to await."""
        spec = self._workflow_spec(workflow)
        input = self._codec.encode_args(args)
        id = id or uuid.uuid4().hex
        client = await asyncio.to_thread(self._client)
        if not await client.start_async(id, spec.kind, input):
            existing = (await client.get_async(id))["kind"]
            if existing != spec.kind:
                raise KeelError(f"workflow {id} exists with kind {existing}, not {spec.kind}")
        return WorkflowHandle(self, id, spec.kind)

    async def handle_async(self, id: str) -> WorkflowHandle:
        """``handle`` to await."""
        return await asyncio.to_thread(self.handle, id)

    async def list_async(
        self,
        status: Optional[str] = None,
        kind: Union[str, Callable[..., Any], None] = None,
        limit: int = 1000,
    ) -> "list[WorkflowInfo]":
        """``list`` to await."""
        return await asyncio.to_thread(self.list, status, kind, limit)

    def handle(self, id: str) -> WorkflowHandle:
        """The workflow ``id`` (``keel.NotFound`` if there is none)."""
        info = self._client().get(id)
        return WorkflowHandle(self, id, info["kind"])

    def list(
        self, status: Optional[str] = None, kind: Union[str, Callable[..., Any], None] = None,
        limit: int = 1000,
    ) -> list[WorkflowInfo]:
        """Workflows (of ``status`` and ``kind`` when given), by id, at most ``limit``."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status is one of {', '.join(STATUSES)}")
        if kind is None or isinstance(kind, str):
            kind_text = kind
        else:
            kind_text = self._workflow_spec(kind).kind
        return [
            WorkflowInfo(i["id"], i["kind"], i["version"], i["status"], i["journal_len"])
            for i in self._client().list(kind_text, status, None, limit)
        ]
