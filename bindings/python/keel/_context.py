"""The context a workflow receives: its durable calls, each journaled once."""

from __future__ import annotations

import contextvars
import dataclasses
import datetime
import uuid as _uuid
import inspect
from typing import (
    TYPE_CHECKING,
    Any,
    Awaitable,
    Callable,
    Optional,
    ParamSpec,
    TypeVar,
    Union,
    overload,
)

from . import _native
from ._errors import KeelError, SerializationError, failure_text
from ._time import Duration, seconds

if TYPE_CHECKING:
    from ._app import App, StepSpec

T = TypeVar("T")
P = ParamSpec("P")


@dataclasses.dataclass(frozen=True)
class StepInfo:
    """What a step's body knows about itself."""

    #: ``workflow_id/journal_position``: the same on every re-run of this step; hand it to
    #: the outside world so a side effect repeated by a re-run is recognised there.
    idempotency_key: str
    #: This attempt's number, from 1.
    attempt: int


_current_context: contextvars.ContextVar[Optional[Union["Context", "AsyncContext"]]] = (
    contextvars.ContextVar("keel_current_context", default=None)
)
_current_step: contextvars.ContextVar[Optional[StepInfo]] = contextvars.ContextVar(
    "keel_current_step", default=None
)


def step_info() -> StepInfo:
    """The running step's idempotency key and attempt (inside a step body only)."""
    info = _current_step.get()
    if info is None:
        raise KeelError("keel.step_info() is only available inside a step's body")
    return info


def current_context() -> Optional[Union["Context", "AsyncContext"]]:
    """The context of the workflow running here (this thread, or this task), outside step
    bodies."""
    return _current_context.get()


class _RunContext:
    """What both contexts hold: the run's native journal handle and its app."""

    def __init__(self, native: _native.NativeContext, app: "App") -> None:
        self._native = native
        self._app = app

    @property
    def workflow_id(self) -> str:
        """This workflow's id."""
        return self._native.workflow_id


class Context(_RunContext):
    """A workflow run's handle on its journal. Every method is a durable call: its outcome
    is journaled once, and a re-run of the workflow gets the journaled outcome back."""

    def sleep(self, duration: Duration) -> None:
        """Sleeps durably: never less than ``duration``, across restarts and failovers."""
        self._native.sleep(seconds(duration))

    def wait_signal(
        self, name: str, timeout: Optional[Duration] = None, type: Any = None
    ) -> Any:
        """Waits durably for signal ``name``: its value (read as ``type`` when given), or
        ``None`` when ``timeout`` passed first. A signal sent before the wait is kept for it."""
        payload = self._native.wait_signal(name, None if timeout is None else seconds(timeout))
        return None if payload is None else self._app._codec.decode(payload, type)

    @overload
    def call(self, workflow: Callable[..., T], *args: Any) -> T: ...

    @overload
    def call(self, workflow: str, *args: Any) -> Any: ...

    def call(self, workflow: Union[str, Callable[..., T]], *args: Any) -> Any:
        """Calls a child workflow and waits durably for its result (``keel.WorkflowFailed``
        when it fails). Its id is ``<this id>/<journal position>``. ``workflow`` is a
        function registered as a workflow, or a kind's name (run by whichever node or worker
        has it)."""
        kind, hint = self._app._call_target(workflow)
        data = self._app._codec.encode_args(args)
        return self._app._codec.decode(self._native.call(kind, data), hint)

    def call_remote(
        self,
        remote: str,
        kind: str,
        *args: Any,
        deadline: Optional[Duration] = None,
        type: Any = None,
    ) -> Any:
        """Calls workflow ``kind`` in the remote cluster ``remote`` (an alias of the app's
        ``remotes``) and waits durably for its result, read as ``type`` when given. The other
        cluster runs it at most once (exactly once if the call reaches it before
        ``deadline``, a day by default), however often either cluster fails over or the link
        between them is cut. Raises ``keel.WorkflowFailed`` when it fails there (or that
        cluster refuses the call) and ``keel.Timeout`` at the deadline (the call is then
        cancelled there)."""
        data = self._app._codec.encode_args(args)
        limit = None if deadline is None else seconds(deadline)
        return self._app._codec.decode(self._native.call_remote(remote, kind, data, limit), type)

    def now(self) -> datetime.datetime:
        """The wall-clock time (UTC), journaled: a re-run gets the same value."""
        ms = self._native.now_ms()
        return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc)

    def random(self) -> float:
        """A random float in [0, 1), journaled."""
        return (self._native.random_u64() >> 11) / float(1 << 53)

    def uuid(self) -> _uuid.UUID:
        """A random UUID (version 4), journaled."""
        high = self._native.random_u64()
        low = self._native.random_u64()
        return _uuid.UUID(int=(high << 64) | low, version=4)

    def _run_step(self, spec: "StepSpec", fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        codec = self._app._codec
        body = _sync_body(codec, fn, args, kwargs)
        data = self._native.step(spec.name, body, _policy(spec))
        return codec.decode(data, spec.return_hint)


def _policy(spec: "StepSpec") -> tuple[int, float, float, Optional[float]]:
    return (spec.retries + 1, spec.backoff, spec.backoff_max, spec.timeout)


def _sync_body(
    codec: Any, fn: Callable[..., Any], args: Any, kwargs: Any
) -> Callable[[str, int], tuple[int, Any]]:
    """A `def` step's body as the native side calls it: ``(0, bytes)`` for a value,
    ``(1, error text)`` for a failure to journal, ``(2, exception)`` for one to raise."""

    def body(key: str, attempt: int) -> tuple[int, Any]:
        step_token = _current_step.set(StepInfo(key, attempt))
        context_token = _current_context.set(None)
        try:
            value = fn(*args, **kwargs)
        except Exception as error:
            return (1, failure_text(error))
        finally:
            _current_context.reset(context_token)
            _current_step.reset(step_token)
        try:
            return (0, codec.encode(value))
        except SerializationError as error:
            return (2, error)

    return body


def _async_body(
    codec: Any, fn: Callable[..., Awaitable[Any]], args: Any, kwargs: Any
) -> Callable[[str, int], Awaitable[tuple[int, Any]]]:
    """An `async def` step's body: as `_sync_body`, awaited."""

    async def body(key: str, attempt: int) -> tuple[int, Any]:
        _current_step.set(StepInfo(key, attempt))
        _current_context.set(None)
        try:
            value = await fn(*args, **kwargs)
        except Exception as error:
            return (1, failure_text(error))
        try:
            return (0, codec.encode(value))
        except SerializationError as error:
            return (2, error)

    return body


V = TypeVar("V")


async def _decoded(pending: Awaitable[V], decode: Callable[[V], T]) -> T:
    return decode(await pending)


class AsyncContext(_RunContext):
    """The context of an ``async def`` workflow: every durable call returns an awaitable and
    takes its journal position when it is *called*, so calls gathered with
    ``asyncio.gather`` are journaled, and replayed, in the order the code made them (a fast
    call's record waits until every earlier one is journaled — and a sleep or child call
    made after a step starts once that step is journaled)."""

    def sleep(self, duration: Duration) -> Awaitable[None]:
        """Sleeps durably: never less than ``duration``."""
        return self._native.sleep_async(seconds(duration))

    def wait_signal(
        self, name: str, timeout: Optional[Duration] = None, type: Any = None
    ) -> Awaitable[Any]:
        """Waits durably for signal ``name``: its value, or ``None`` after ``timeout``."""
        pending = self._native.wait_signal_async(
            name, None if timeout is None else seconds(timeout)
        )
        codec = self._app._codec

        async def decoded() -> Any:
            payload = await pending
            return None if payload is None else codec.decode(payload, type)

        return decoded()

    def call(self, workflow: Union[str, Callable[..., Any]], *args: Any) -> Awaitable[Any]:
        """Calls a child workflow (a registered function or a kind's name) and waits durably
        for its result."""
        kind, hint = self._app._call_target(workflow)
        data = self._app._codec.encode_args(args)
        codec = self._app._codec
        return _decoded(self._native.call_async(kind, data), lambda v: codec.decode(v, hint))

    def call_remote(
        self,
        remote: str,
        kind: str,
        *args: Any,
        deadline: Optional[Duration] = None,
        type: Any = None,
    ) -> Awaitable[Any]:
        """Calls workflow ``kind`` in the remote cluster ``remote`` and waits durably for its
        result (see ``Context.call_remote``)."""
        data = self._app._codec.encode_args(args)
        limit = None if deadline is None else seconds(deadline)
        codec = self._app._codec
        pending = self._native.call_remote_async(remote, kind, data, limit)
        return _decoded(pending, lambda v: codec.decode(v, type))

    def run(self, step: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Awaitable[T]:
        """Runs a ``def`` step from async code, on a thread of its own (a ``def`` step
        called directly here would block the event loop, so that raises)."""
        spec = getattr(step, "__keel_step__", None)
        if spec is None:
            raise KeelError(f"{step!r} is not a step: decorate it with @app.step")
        if inspect.iscoroutinefunction(getattr(step, "__wrapped__", None)):
            raise KeelError(f"{spec.name} is an async step: await it directly")
        codec = self._app._codec
        body = _sync_body(codec, step.__wrapped__, args, kwargs)  # type: ignore[attr-defined]
        pending = self._native.step_async(spec.name, body, _policy(spec), True)
        return _decoded(pending, lambda v: codec.decode(v, spec.return_hint))

    def now(self) -> Awaitable[datetime.datetime]:
        """The wall-clock time (UTC), journaled."""
        return _decoded(
            self._native.now_ms_async(),
            lambda ms: datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc),
        )

    def random(self) -> Awaitable[float]:
        """A random float in [0, 1), journaled."""
        return _decoded(self._native.random_u64_async(), lambda v: (v >> 11) / float(1 << 53))

    def uuid(self) -> Awaitable[_uuid.UUID]:
        """A random UUID (version 4), journaled."""
        high = self._native.random_u64_async()
        low = self._native.random_u64_async()

        async def joined() -> _uuid.UUID:
            return _uuid.UUID(int=((await high) << 64) | (await low), version=4)

        return joined()

    def _run_step_async(
        self, spec: "StepSpec", fn: Callable[..., Awaitable[Any]], args: Any, kwargs: Any
    ) -> Awaitable[Any]:
        codec = self._app._codec
        body = _async_body(codec, fn, args, kwargs)
        pending = self._native.step_async(spec.name, body, _policy(spec), False)
        return _decoded(pending, lambda v: codec.decode(v, spec.return_hint))
