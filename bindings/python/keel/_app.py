"""``keel.App``: durable workflows and steps on an embedded node in this process."""

from __future__ import annotations

import asyncio
import builtins
import atexit
import dataclasses
import functools
import inspect
import os
import threading
import weakref
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar, Union, overload

from . import _native
from ._client import Client, WorkflowHandle, WorkflowInfo, Workflow, workflow_kind
from ._codec import Codec, Serializer, _hints
from ._context import AsyncContext, Context, _current_context
from ._credentials import PathLike, credential_paths
from ._errors import KeelError, NotFound, _Suspend, failure_text
from ._time import Duration, seconds

F = TypeVar("F", bound=Callable[..., Any])

def kind_name(fn: Callable[..., Any]) -> str:
    """A function's default kind name: its module and qualified name (never ``hash()``,
    which differs between processes)."""
    return f"{fn.__module__}.{fn.__qualname__}"


@dataclasses.dataclass(frozen=True)
class Remote:
    """Another Keel cluster this app's workflows call (``ctx.call_remote(alias, ...)``) or
    that calls them: its ``cluster`` name (default: the alias it is given under), the
    ``addresses`` of its nodes (``host:port``; needed to call it), and the workflow kinds
    of this app it may start (``expose``; none by default).

    When the other cluster authenticates, this app presents what it issued: ``ca`` (PEM, its
    CA: calls go over TLS), and a client certificate of the ``remote`` role (``cert`` and
    ``key``, ``keel certs --remote NAME``) or a ``token_file``. When this app authenticates,
    ``principal`` is the name its credentials for the other cluster carry (default: the
    alias)."""

    cluster: Optional[str] = None
    addresses: Sequence[str] = ()
    expose: Sequence[str] = ()
    principal: Optional[str] = None
    ca: Optional[PathLike] = None
    cert: Optional[PathLike] = None
    key: Optional[PathLike] = None
    token_file: Optional[PathLike] = None

    def _native(
        self,
    ) -> tuple[
        Optional[str],
        list[str],
        list[str],
        Optional[str],
        tuple[Optional[str], Optional[str], Optional[str], Optional[str]],
    ]:
        def path(value: Optional[PathLike]) -> Optional[str]:
            return None if value is None else os.fspath(value)

        files = (path(self.ca), path(self.cert), path(self.key), path(self.token_file))
        return (self.cluster, list(self.addresses), list(self.expose), self.principal, files)


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


class App:
    """Durable workflows on an embedded node: no server, no database.

    The node launches on first use (or ``launch()``) in ``data_dir`` (created if missing)
    and stops on ``close()``, at the end of a ``with`` block, or at interpreter exit.
    Workflows in flight when the process stopped resume as soon as it launches again.

    Alone, the app is a single-node cluster of its own. Given ``node_id``, ``listen`` and
    ``peers`` (the other members' ids and addresses), it is one member of a replicated
    cluster of Python processes: the members form the cluster themselves at their first
    launch, and a member that is restarted rejoins. Only the leader runs workflows; a member
    that is not the leader runs, as a remote worker, the kinds the leader lacks. Its launch
    waits until the cluster has formed (a majority of the members runs) and knows its kinds.

    With ``ca``, ``cert`` and ``key`` (PEM files: the CA, and this member's certificate of
    the ``node`` role, as ``keel certs`` issues them), every port of the node is TLS, the
    members authenticate each other by certificate, and every call needs a role; the app's
    own client and worker present the certificate, or the bearer token held in
    ``token_file``. ``tokens`` is a tokens file of bearer tokens the node accepts (other
    clients'). A node listening in plaintext on an address beyond loopback is refused unless
    ``insecure=True``.

    ``cluster`` names the cluster (``keel`` by default); ``remotes`` are the other clusters
    its workflows call durably with ``ctx.call_remote`` or that call it, by alias (see
    ``keel.Remote``). Calls between clusters travel in plaintext in this version.
    """

    def __init__(
        self,
        data_dir: Union[str, "os.PathLike[str]"] = "./keel-data",
        *,
        node_id: Optional[int] = None,
        listen: Optional[str] = None,
        peers: Optional[Mapping[int, str]] = None,
        serializer: Optional[Serializer] = None,
        timeout: Duration = 30.0,
        ca: Optional[PathLike] = None,
        cert: Optional[PathLike] = None,
        key: Optional[PathLike] = None,
        token_file: Optional[PathLike] = None,
        tokens: Optional[PathLike] = None,
        insecure: bool = False,
        cluster: Optional[str] = None,
        remotes: Optional[Mapping[str, Remote]] = None,
    ) -> None:
        if (node_id is None) != (peers is None) or (peers is not None and listen is None):
            raise ValueError("a cluster member is given node_id, listen and peers together")
        if (ca is None) != (cert is None) or (cert is None) != (key is None):
            raise ValueError("a node's TLS needs ca, cert and key together")
        if cert is None and (token_file is not None or tokens is not None):
            raise ValueError("tokens travel over TLS only: give ca, cert and key too")
        self._credentials = credential_paths(ca, cert, key, token_file)
        self._tokens = None if tokens is None else os.fspath(tokens)
        self._insecure = insecure
        self.cluster = cluster
        self.remotes = dict(remotes or {})
        self.data_dir = Path(data_dir)
        self.node_id = node_id
        self.listen = listen
        self.peers = None if peers is None else dict(peers)
        self.timeout = seconds(timeout)
        self._codec = Codec(serializer)
        self._workflows: dict[str, WorkflowSpec] = {}
        self._node: Optional[_native.NativeNode] = None
        self._native_client: Optional[_native.NativeClient] = None
        self._client_api = Client(self._client, self._codec, self._return_hint)
        #: Inside ``keel.testing.cluster``: the test cluster's client, used instead of a
        #: node of the app's own.
        self._test_client: Optional[_native.NativeClient] = None
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

    def _return_hint(self, kind: str) -> Any:
        spec = self._workflows.get(kind)
        return None if spec is None else spec.return_hint

    def _call_target(self, workflow: Workflow) -> tuple[str, Any]:
        """The kind and return hint of a child workflow: registered here, or named by kind
        (another member's or worker's), or a function registered with another app."""
        kind = workflow_kind(workflow)
        spec = self._workflows.get(kind)
        if spec is not None:
            return kind, spec.return_hint
        return kind, None if isinstance(workflow, str) else _hints(workflow).get("return")

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

    def _runner(self) -> tuple[list[tuple[str, str, bool]], Optional[asyncio.AbstractEventLoop]]:
        """The kinds to register (``(kind, version, is_async)``) and the event loop async
        ones run on (started here, once; called with the lock held)."""
        kinds = [(s.kind, s.version, s.is_async) for s in self._workflows.values()]
        if any(s.is_async for s in self._workflows.values()) and self._loop is None:
            self._loop = _EventLoopThread()
        return kinds, None if self._loop is None else self._loop.loop

    def launch(self) -> "App":
        """Starts the node (once) and waits until it is ready: alone, until it serves with
        its kinds declared; as a cluster member, until the cluster formed and knows them."""
        self._check_process()
        with self._lock:
            if self._test_client is not None:
                raise KeelError("inside keel.testing.cluster the app launches no node of its own")
            if self._node is None:
                kinds, loop = self._runner()
                self._node = _native.NativeNode.launch(
                    str(self.data_dir),
                    self.listen,
                    kinds,
                    self._run,
                    loop,
                    self.timeout,
                    self.node_id,
                    self.peers,
                    None,
                    *self._credentials[:3],
                    self._tokens,
                    self._insecure,
                    self.cluster,
                    {alias: remote._native() for alias, remote in self.remotes.items()},
                )
                endpoints = [self._node.addr, *(self.peers or {}).values()]
                self._native_client = _native.NativeClient(endpoints, *self._credentials)
                _open_apps.add(self)
        return self

    @property
    def address(self) -> str:
        """The node's ``host:port`` (launching it)."""
        self.launch()
        assert self._node is not None
        return self._node.addr

    @property
    def leader_id(self) -> Optional[int]:
        """The id of the cluster's leader as this node knows it (launching it); ``None``
        during an election."""
        self.launch()
        assert self._node is not None
        return self._node.leader_id

    def client(self) -> Client:
        """A client of this app's cluster (the same one ``start``, ``handle`` and ``list``
        use)."""
        return self._client_api

    def _attach(self, client: _native.NativeClient) -> None:
        """Talks to a test cluster (``keel.testing``) instead of launching a node."""
        with self._lock:
            if self._node is not None:
                raise KeelError(
                    "this app launched its own node; enter keel.testing.cluster(app) before "
                    "the app launches (or close it first)"
                )
            if self._test_client is not None:
                raise KeelError("this app is in a test cluster already")
            self._test_client = client

    def _detach(self) -> None:
        with self._lock:
            self._test_client = None

    def _client(self) -> _native.NativeClient:
        test_client = self._test_client
        if test_client is not None:
            return test_client
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

    def start(self, workflow: Workflow, *args: Any, id: Optional[str] = None) -> WorkflowHandle:
        """Starts ``workflow(ctx, *args)`` as workflow ``id`` (a new UUID when not given). An
        ``id`` that exists returns that workflow, also after a restart; with another kind it
        raises ``keel.KeelError``."""
        self._workflow_spec(workflow)
        return self._client_api.start(workflow, *args, id=id)

    async def start_async(
        self, workflow: Workflow, *args: Any, id: Optional[str] = None
    ) -> WorkflowHandle:
        """``start`` to await."""
        self._workflow_spec(workflow)
        return await self._client_api.start_async(workflow, *args, id=id)

    def handle(self, id: str) -> WorkflowHandle:
        """The workflow ``id`` (``keel.NotFound`` if there is none)."""
        return self._client_api.handle(id)

    async def handle_async(self, id: str) -> WorkflowHandle:
        """``handle`` to await."""
        return await self._client_api.handle_async(id)

    def list(
        self, status: Optional[str] = None, kind: Optional[Workflow] = None, limit: int = 1000
    ) -> "list[WorkflowInfo]":
        """Workflows (of ``status`` and ``kind`` when given), by id, at most ``limit``."""
        return self._client_api.list(status, kind, limit)

    async def list_async(
        self, status: Optional[str] = None, kind: Optional[Workflow] = None, limit: int = 1000
    ) -> "builtins.list[WorkflowInfo]":
        """``list`` to await."""
        return await self._client_api.list_async(status, kind, limit)
