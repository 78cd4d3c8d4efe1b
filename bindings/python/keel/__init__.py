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

``keel.App(..., node_id=1, listen=..., peers={2: ..., 3: ...})`` makes the process one
member of a replicated cluster; ``keel.connect([addresses])`` is a client of a cluster;
``keel.Worker(app, [addresses]).run()`` runs an app's workflows for a cluster of ``keel
node`` processes.

Every step's result, timer and signal is journaled in Keel's log before the workflow goes
on; after a crash the workflow resumes where it stopped, and no completed step runs again.
"""

from ._app import App, Remote, kind_name
from ._client import Client, JournalEntry, NodeStatus, WorkflowHandle, WorkflowInfo, connect
from ._codec import JsonSerializer, PickleSerializer, Serializer
from ._context import AsyncContext, Context, StepInfo, step_info
from ._errors import (
    Cancelled,
    InvalidRequest,
    KeelError,
    NonDeterminismError,
    NotFound,
    PermissionDenied,
    SerializationError,
    StepFailed,
    Timeout,
    Unavailable,
    WorkflowFailed,
)
from ._worker import Worker

__all__ = [
    "App",
    "Remote",
    "AsyncContext",
    "Cancelled",
    "Client",
    "Context",
    "InvalidRequest",
    "JournalEntry",
    "JsonSerializer",
    "KeelError",
    "NodeStatus",
    "NonDeterminismError",
    "NotFound",
    "PermissionDenied",
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
    "Worker",
    "connect",
    "kind_name",
    "step_info",
]
