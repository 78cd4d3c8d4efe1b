"""Keel: durable workflows in plain Python, on an embedded Raft-replicated log.

    import keel

    app = keel.App(data_dir="./keel-data")

    @app.step(retries=3)
    def fetch(url: str) -> str: ...

    @app.workflow
    def crawl(ctx: keel.Context, url: str) -> str:
        page = fetch(url)                 # journaled once
        ctx.sleep(3600)                   # a durable timer
        return page

    print(app.start(crawl, "https://example.com", id="c-1").result(timeout=60))

Every step's result, timer and signal is journaled in Keel's log before the workflow goes
on; after a crash the workflow resumes where it stopped, and no completed step runs again.
"""

from ._app import App, JournalEntry, WorkflowHandle, WorkflowInfo, kind_name
from ._codec import JsonSerializer, PickleSerializer, Serializer
from ._context import AsyncContext, Context, StepInfo, step_info
from ._errors import (
    Cancelled,
    InvalidRequest,
    KeelError,
    NonDeterminismError,
    NotFound,
    SerializationError,
    StepFailed,
    Timeout,
    Unavailable,
    WorkflowFailed,
)

__all__ = [
    "App",
    "AsyncContext",
    "Cancelled",
    "Context",
    "InvalidRequest",
    "JournalEntry",
    "JsonSerializer",
    "KeelError",
    "NonDeterminismError",
    "NotFound",
    "PickleSerializer",
    "SerializationError",
    "Serializer",
    "StepFailed",
    "StepInfo",
    "Timeout",
    "Unavailable",
    "WorkflowFailed",
    "WorkflowHandle",
    "WorkflowInfo",
    "kind_name",
    "step_info",
]
