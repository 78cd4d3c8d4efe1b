"""Stubs of the native module `keel._native` (Rust, PyO3): see bindings/src."""

import builtins
from asyncio import AbstractEventLoop
from os import PathLike
from typing import Any, Awaitable, Callable, Optional, Union, final

__all__ = [
    "BUILD_PROFILE",
    "NativeClient",
    "NativeContext",
    "NativeLink",
    "NativeNode",
    "NativeWorker",
    "reset_skipped_time",
    "skip_time",
    "skipped_time",
]

BUILD_PROFILE: str

def skip_time(seconds: float) -> None: ...
def reset_skipped_time() -> bool: ...
def skipped_time() -> float: ...

@final
class NativeContext:
    @property
    def workflow_id(self) -> str: ...
    def step(
        self,
        name: str,
        body: Callable[[str, int], tuple[int, Any]],
        policy: tuple[int, float, float, Optional[float]],
    ) -> bytes: ...
    def step_async(
        self,
        name: str,
        body: Callable[[str, int], Any],
        policy: tuple[int, float, float, Optional[float]],
        threaded: bool,
    ) -> Awaitable[bytes]: ...
    def sleep(self, duration_s: float) -> None: ...
    def sleep_async(self, duration_s: float) -> Awaitable[None]: ...
    def wait_signal(self, name: str, timeout_s: Optional[float] = None) -> Optional[bytes]: ...
    def wait_signal_async(
        self, name: str, timeout_s: Optional[float] = None
    ) -> Awaitable[Optional[bytes]]: ...
    def call(self, kind: str, input: bytes) -> bytes: ...
    def call_async(self, kind: str, input: bytes) -> Awaitable[bytes]: ...
    def call_remote(
        self, remote: str, kind: str, input: bytes, deadline_s: Optional[float] = None
    ) -> bytes: ...
    def call_remote_async(
        self, remote: str, kind: str, input: bytes, deadline_s: Optional[float] = None
    ) -> Awaitable[bytes]: ...
    def now_ms(self) -> int: ...
    def now_ms_async(self) -> Awaitable[int]: ...
    def random_u64(self) -> int: ...
    def random_u64_async(self) -> Awaitable[int]: ...

@final
class NativeNode:
    @staticmethod
    def launch(
        data_dir: Union[str, PathLike[str]],
        listen: Optional[str],
        kinds: list[tuple[str, str, bool]],
        runner: Callable[[str, NativeContext, bytes], Any],
        event_loop: Optional[AbstractEventLoop],
        timeout_s: float,
        node_id: Optional[int] = None,
        peers: Optional[dict[int, str]] = None,
        via: Optional[dict[int, str]] = None,
        ca: Optional[str] = None,
        cert: Optional[str] = None,
        key: Optional[str] = None,
        tokens: Optional[str] = None,
        insecure: bool = False,
        cluster: Optional[str] = None,
        remotes: Optional[
            dict[
                str,
                tuple[
                    Optional[str],
                    list[str],
                    list[str],
                    Optional[str],
                    tuple[Optional[str], Optional[str], Optional[str], Optional[str]],
                ],
            ]
        ] = None,
    ) -> NativeNode: ...
    @property
    def addr(self) -> str: ...
    @property
    def leader_id(self) -> Optional[int]: ...
    @property
    def runs_workflows(self) -> bool: ...
    def shutdown(self) -> None: ...
    def timers_due(self) -> int: ...
    def busy_workflows(self) -> int: ...

@final
class NativeLink:
    @staticmethod
    def start(target: str) -> NativeLink: ...
    @property
    def addr(self) -> str: ...
    def cut(self) -> None: ...
    def heal(self) -> None: ...
    def close(self) -> None: ...

@final
class NativeWorker:
    @staticmethod
    def start(
        endpoints: list[str],
        kinds: list[tuple[str, str, bool]],
        runner: Callable[[str, NativeContext, bytes], Any],
        event_loop: Optional[AbstractEventLoop],
        worker_id: Optional[int] = None,
        ca: Optional[str] = None,
        cert: Optional[str] = None,
        key: Optional[str] = None,
        token_file: Optional[str] = None,
    ) -> NativeWorker: ...
    @property
    def worker_id(self) -> int: ...
    def stop(self) -> None: ...

@final
class NativeClient:
    def __new__(
        cls,
        endpoints: list[str],
        ca: Optional[str] = None,
        cert: Optional[str] = None,
        key: Optional[str] = None,
        token_file: Optional[str] = None,
    ) -> NativeClient: ...
    def start(self, id: str, kind: str, input: bytes) -> bool: ...
    def start_async(self, id: str, kind: str, input: bytes) -> Awaitable[bool]: ...
    def get(self, id: str, wait_s: float = 0.0, journal: bool = False) -> dict[str, Any]: ...
    def get_async(self, id: str, wait_s: float = 0.0) -> Awaitable[dict[str, Any]]: ...
    def signal(self, id: str, name: str, payload: bytes) -> bool: ...
    def cancel(self, id: str, reason: str) -> bool: ...
    def list(
        self,
        kind: Optional[str] = None,
        status: Optional[str] = None,
        after: Optional[str] = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]: ...
    def members(self) -> builtins.list[tuple[str, Optional[dict[str, Any]]]]: ...
