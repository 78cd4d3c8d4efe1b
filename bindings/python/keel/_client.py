"""``keel.connect``: a client of a cluster — start workflows, read, signal and cancel them —
and the ``WorkflowHandle`` both a client and an ``App`` hand out. A client runs no
workflows."""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import uuid
from typing import Any, Callable, Optional, Sequence, Union

from . import _native
from ._codec import Codec, Serializer, _hints
from ._credentials import PathLike, credential_paths
from ._errors import Cancelled, KeelError, Timeout, WorkflowFailed
from ._time import Duration, seconds

#: Workflow statuses ``list`` and ``WorkflowHandle.status`` report.
STATUSES = ("running", "completed", "failed", "cancelled", "parked")

#: A workflow as clients name it: its kind name, or a function decorated with
#: ``@app.workflow`` (of any app).
Workflow = Union[str, Callable[..., Any]]


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
    """A workflow as ``list`` reports it."""

    id: str
    kind: str
    version: str
    status: str
    #: Durable calls journaled so far.
    journal_len: int


@dataclasses.dataclass(frozen=True)
class NodeStatus:
    """A cluster node as ``Client.nodes`` reports it."""

    address: str
    #: ``None`` when the node did not answer (then so are the rest).
    node_id: Optional[int]
    #: ``leader``, ``follower``, ``candidate``, ``learner``; ``unreachable``.
    role: str
    #: The leader this node knows of.
    leader_id: Optional[int]
    term: int


def workflow_kind(workflow: Workflow) -> str:
    """The kind name of ``workflow``: the string itself, or the kind a decorated function
    was registered as."""
    if isinstance(workflow, str):
        return workflow
    kind = getattr(workflow, "__keel_workflow__", None)
    if not isinstance(kind, str):
        raise KeelError(f"{workflow!r} is not a workflow: decorate it with @app.workflow")
    return kind


class Client:
    """A client of a Keel cluster (``keel node`` processes, or Python members): starts
    workflows by function or kind name and hands out their handles. Every blocking method
    has an ``_async`` form to await."""

    def __init__(
        self,
        native: Callable[[], _native.NativeClient],
        codec: Codec,
        return_hints: Optional[Callable[[str], Any]] = None,
    ) -> None:
        self._native_of = native
        self._codec = codec
        self._registered_hints = return_hints
        #: Return hints of the functions this client started, by kind.
        self._started_hints: dict[str, Any] = {}

    def _native(self) -> _native.NativeClient:
        return self._native_of()

    def _return_hint(self, kind: str) -> Any:
        if kind in self._started_hints:
            return self._started_hints[kind]
        return None if self._registered_hints is None else self._registered_hints(kind)

    def _prepare(self, workflow: Workflow, args: Sequence[Any]) -> tuple[str, bytes]:
        kind = workflow_kind(workflow)
        if not isinstance(workflow, str):
            self._started_hints.setdefault(kind, _hints(workflow).get("return"))
        return kind, self._codec.encode_args(args)

    def start(self, workflow: Workflow, *args: Any, id: Optional[str] = None) -> "WorkflowHandle":
        """Starts ``workflow(ctx, *args)`` as workflow ``id`` (a new UUID when not given). An
        ``id`` that exists returns that workflow; with another kind it raises
        ``keel.KeelError``. The cluster must know the kind (some node or worker runs it)."""
        kind, input = self._prepare(workflow, args)
        id = id or uuid.uuid4().hex
        native = self._native()
        if not native.start(id, kind, input):
            existing = native.get(id)["kind"]
            if existing != kind:
                raise KeelError(f"workflow {id} exists with kind {existing}, not {kind}")
        return WorkflowHandle(self, id, kind)

    async def start_async(
        self, workflow: Workflow, *args: Any, id: Optional[str] = None
    ) -> "WorkflowHandle":
        """``start`` to await."""
        kind, input = self._prepare(workflow, args)
        id = id or uuid.uuid4().hex
        native = await asyncio.to_thread(self._native)
        if not await native.start_async(id, kind, input):
            existing = (await native.get_async(id))["kind"]
            if existing != kind:
                raise KeelError(f"workflow {id} exists with kind {existing}, not {kind}")
        return WorkflowHandle(self, id, kind)

    def handle(self, id: str) -> "WorkflowHandle":
        """The workflow ``id`` (``keel.NotFound`` if there is none)."""
        info = self._native().get(id)
        return WorkflowHandle(self, id, info["kind"])

    async def handle_async(self, id: str) -> "WorkflowHandle":
        """``handle`` to await."""
        return await asyncio.to_thread(self.handle, id)

    def list(
        self,
        status: Optional[str] = None,
        kind: Optional[Workflow] = None,
        limit: int = 1000,
    ) -> list[WorkflowInfo]:
        """Workflows (of ``status`` and ``kind`` when given), by id, at most ``limit``."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status is one of {', '.join(STATUSES)}")
        kind_text = None if kind is None else workflow_kind(kind)
        return [
            WorkflowInfo(i["id"], i["kind"], i["version"], i["status"], i["journal_len"])
            for i in self._native().list(kind_text, status, None, limit)
        ]

    async def list_async(
        self,
        status: Optional[str] = None,
        kind: Optional[Workflow] = None,
        limit: int = 1000,
    ) -> "builtins.list[WorkflowInfo]":
        """``list`` to await."""
        return await asyncio.to_thread(self.list, status, kind, limit)


    def nodes(self) -> builtins.list[NodeStatus]:
        """Every node this client was given, as it answers now (which one leads)."""
        return [
            NodeStatus(addr, None, "unreachable", None, 0)
            if status is None
            else NodeStatus(
                addr, status["node_id"], status["role"], status["leader_id"], status["term"]
            )
            for addr, status in self._native().members()
        ]

    def leader_id(self) -> Optional[int]:
        """The id of the node that says it leads in the highest term; ``None`` during an
        election."""
        leaders = [n for n in self.nodes() if n.role == "leader"]
        return max(leaders, key=lambda n: n.term).node_id if leaders else None


class WorkflowHandle:
    """A workflow, by id: its result, status, signals, cancellation."""

    def __init__(self, client: Client, id: str, kind: Optional[str] = None) -> None:
        self._client = client
        self.id = id
        self.kind = kind

    def __repr__(self) -> str:
        return f"WorkflowHandle(id={self.id!r}, kind={self.kind!r})"

    def _decode_end(self, info: dict[str, Any], waited: Optional[float]) -> Any:
        status = info["status"]
        if status == "running":
            raise Timeout(f"workflow {self.id} did not finish within {waited} s")
        if status == "completed":
            hint = self._client._return_hint(info["kind"])
            return self._client._codec.decode(info["result"], hint)
        if status == "cancelled":
            raise Cancelled(f"workflow {self.id} was cancelled: {info['error']}")
        raise WorkflowFailed(f"workflow {self.id} failed", info["error"])

    def result(self, timeout: Optional[Duration] = None) -> Any:
        """Waits for the workflow's end: its value; ``keel.WorkflowFailed`` if it failed,
        ``keel.Cancelled`` if it was cancelled, ``keel.Timeout`` if ``timeout`` passed (a
        parked workflow has not ended: it waits for code that matches its journal)."""
        wait = float("inf") if timeout is None else seconds(timeout)
        info = self._client._native().get(self.id, wait)
        return self._decode_end(info, None if timeout is None else wait)

    async def result_async(self, timeout: Optional[Duration] = None) -> Any:
        """``result`` to await."""
        wait = float("inf") if timeout is None else seconds(timeout)
        native = await asyncio.to_thread(self._client._native)
        info = await native.get_async(self.id, wait)
        return self._decode_end(info, None if timeout is None else wait)

    def journal(self) -> list[JournalEntry]:
        """The workflow's journal: its durable calls so far, in order."""
        info = self._client._native().get(self.id, 0.0, True)
        return [JournalEntry(**entry) for entry in info["journal"]]

    def status(self) -> str:
        """``running``, ``completed``, ``failed``, ``cancelled``, or ``parked``: its code
        no longer matched its journal (``keel.NonDeterminismError`` in the run); it is
        retried whenever a node or worker with its kind takes it over, so deploying fixed
        code resumes it."""
        return str(self._client._native().get(self.id)["status"])

    async def status_async(self) -> str:
        """``status`` to await."""
        return await asyncio.to_thread(self.status)

    def signal(self, name: str, value: Any = None) -> bool:
        """Sends signal ``name`` with ``value``, exactly once. ``False`` when the workflow
        had finished (not delivered)."""
        payload = self._client._codec.encode(value)
        return bool(self._client._native().signal(self.id, name, payload))

    async def signal_async(self, name: str, value: Any = None) -> bool:
        """``signal`` to await."""
        return await asyncio.to_thread(self.signal, name, value)

    def cancel(self, reason: str = "cancelled by a client") -> bool:
        """Cancels the workflow and its running children; ``False`` if it had finished."""
        return bool(self._client._native().cancel(self.id, reason))

    async def cancel_async(self, reason: str = "cancelled by a client") -> bool:
        """``cancel`` to await."""
        return await asyncio.to_thread(self.cancel, reason)


def connect(
    addresses: Union[str, Sequence[str]],
    *,
    serializer: Optional[Serializer] = None,
    ca: Optional[PathLike] = None,
    cert: Optional[PathLike] = None,
    key: Optional[PathLike] = None,
    token_file: Optional[PathLike] = None,
) -> Client:
    """A client of the cluster at ``addresses`` (``host:port`` of some of its nodes: it finds
    the leader itself). Its values use ``serializer`` (JSON by default): the one the
    workflows' app uses.

    For a cluster with TLS, ``ca`` is the CA file to trust; for one with authentication, the
    client presents a certificate (``cert`` and ``key``, PEM files) or the bearer token held
    in ``token_file`` (never the token itself). Files are reread when they change. A refusal
    raises ``keel.PermissionDenied`` saying which credential was refused and why."""
    endpoints = [addresses] if isinstance(addresses, str) else list(addresses)
    if not endpoints:
        raise ValueError("connect needs the address of at least one node")
    native = _native.NativeClient(endpoints, *credential_paths(ca, cert, key, token_file))
    return Client(lambda: native, Codec(serializer))
