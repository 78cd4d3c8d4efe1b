"""Keel's exceptions: every one a ``keel.KeelError`` but the internal ``_Suspend``."""

from __future__ import annotations

import json
import traceback
from typing import Optional


class KeelError(Exception):
    """Anything Keel raises."""


class Timeout(KeelError, TimeoutError):
    """A wait ran past its timeout."""


class NotFound(KeelError, LookupError):
    """No workflow has that id, or no node runs that kind."""


class InvalidRequest(KeelError, ValueError):
    """The request is malformed or over a limit; the same request would fail again."""


class PermissionDenied(KeelError, PermissionError):
    """The cluster refused the caller's credentials (none given, a token it does not hold, a
    certificate of another CA) or the caller's role may not make the call. Nothing was done;
    the message says which credential was refused and why."""


class Unavailable(KeelError):
    """The node or cluster could not be reached, or did not answer in time."""


class SerializationError(KeelError, TypeError):
    """A value cannot be serialized or deserialized; nothing was journaled."""


class Cancelled(KeelError):
    """The workflow was cancelled, or this run was superseded by a newer one: it stops at
    its next durable call, which raises this."""


class NonDeterminismError(KeelError):
    """The workflow's code asks for another durable call than its journal records at that
    position (the code changed under a running workflow)."""


class _Failure(KeelError):
    """A failure carried over from other code: the original exception's type name,
    message and traceback text."""

    def __init__(self, message: str, detail: Optional[str] = None) -> None:
        self.error_type, self.error_message, self.error_traceback = _parse_failure(detail)
        text = message if detail is None else f"{message}: {self.error_type}: {self.error_message}"
        super().__init__(text)


class StepFailed(_Failure):
    """A step still failing after its retries."""


class WorkflowFailed(_Failure):
    """A workflow (or a child workflow it called) that ended failed."""


class _Suspend(BaseException):
    """Internal: unwinds a workflow run that gives back its thread (at a wait that is not
    resolved yet, or when its journal must be read again). Do not catch it; a run that does
    is stopped at its next durable call anyway."""


def failure_text(error: BaseException) -> str:
    """The journaled form of a failure: JSON with the type name, message and traceback."""
    return json.dumps(
        {
            "type": type(error).__name__,
            "message": str(error),
            "traceback": "".join(traceback.format_exception(error)),
        },
        ensure_ascii=False,
    )


def _parse_failure(detail: Optional[str]) -> tuple[str, str, str]:
    if detail is None:
        return ("", "", "")
    try:
        parsed = json.loads(detail)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and {"type", "message", "traceback"} <= parsed.keys():
        return (str(parsed["type"]), str(parsed["message"]), str(parsed["traceback"]))
    return ("Error", detail, "")


_NATIVE_KINDS: dict[str, type[BaseException]] = {
    "KeelError": KeelError,
    "Timeout": Timeout,
    "NotFound": NotFound,
    "InvalidRequest": InvalidRequest,
    "Unavailable": Unavailable,
    "PermissionDenied": PermissionDenied,
    "Cancelled": Cancelled,
    "NonDeterminismError": NonDeterminismError,
    "_Suspend": _Suspend,
}


def native_error(kind: str, message: str, detail: Optional[str]) -> BaseException:
    """Builds the exception the native module raises (called from Rust)."""
    if kind == "StepFailed":
        return StepFailed(message, detail)
    if kind == "WorkflowFailed":
        return WorkflowFailed(message, detail)
    return _NATIVE_KINDS.get(kind, KeelError)(message)
