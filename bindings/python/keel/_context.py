"""The context a workflow receives: its durable calls, each journaled once."""

from __future__ import annotations

import contextvars
import dataclasses
import datetime
import uuid as _uuid
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

from . import _native
from ._errors import KeelError, SerializationError, failure_text
from ._time import Duration, seconds

if TYPE_CHECKING:
    from ._app import App, StepSpec

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class StepInfo:
    """What a step's body knows about itself."""

    #: ``workflow_id/journal_position``: the same on every re-run of this step; hand it to
    #: the outside world so a side effect repeated by a re-run is recognised there.
    idempotency_key: str
    #: This attempt's number, from 1.
    attempt: int


_current_context: contextvars.ContextVar[Optional["Context"]] = contextvars.ContextVar(
    "keel_current_context", default=None
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


def current_context() -> Optional["Context"]:
    """The context of the workflow running on this thread, outside step bodies."""
    return _current_context.get()


class Context:
    """A workflow run's handle on its journal. Every method is a durable call: its outcome
    is journaled once, and a re-run of the workflow gets the journaled outcome back."""

    def __init__(self, native: _native.NativeContext, app: "App") -> None:
        self._native = native
        self._app = app

    @property
    def workflow_id(self) -> str:
        """This workflow's id."""
        return self._native.workflow_id

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

    def call(self, workflow: Callable[..., T], *args: Any) -> T:
        """Calls a child workflow and waits durably for its result (``keel.WorkflowFailed``
        when it fails). Its id is ``<this id>/<journal position>``."""
        spec = self._app._workflow_spec(workflow)
        data = self._app._codec.encode_args(args)
        value: T = self._app._codec.decode(self._native.call(spec.kind, data), spec.return_hint)
        return value

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

        policy = (spec.retries + 1, spec.backoff, spec.backoff_max, spec.timeout)
        data = self._native.step(spec.name, body, policy)
        return codec.decode(data, spec.return_hint)


