"""``keel.Worker``: runs an app's workflows for a cluster of ``keel node`` processes (or
any cluster whose leader lacks the app's kinds), on the cluster's worker protocol: a session
with the leader, leases renewed by heartbeat, each run journaled through the leader. A
worker that dies loses its lease within seconds and its workflows move to another worker,
resuming from their journals."""

from __future__ import annotations

import atexit
import threading
from typing import TYPE_CHECKING, Optional, Sequence, Union

from . import _native
from ._credentials import PathLike, credential_paths

if TYPE_CHECKING:
    from ._app import App


#: Workers started and not stopped: a started worker works until stopped, whether or not
#: its caller keeps a reference.
_started_workers: "set[Worker]" = set()


@atexit.register
def _stop_started_workers() -> None:
    for worker in list(_started_workers):
        worker.stop()


class Worker:
    """A remote worker of ``app``'s workflow kinds for the cluster at ``addresses``.

    ``run()`` works until Ctrl-C (or ``stop()`` from another thread); ``start()`` works in
    the background until ``stop()`` or the end of a ``with`` block. The app's own node is not
    launched: the worker only runs workflows.

    For a cluster with TLS and authentication, ``ca`` is the CA file to trust, and the worker
    presents a certificate of the ``worker`` role (``cert`` and ``key``) or a worker token
    held in ``token_file``.
    """

    def __init__(
        self,
        app: "App",
        addresses: Union[str, Sequence[str]],
        *,
        id: Optional[int] = None,
        ca: Optional[PathLike] = None,
        cert: Optional[PathLike] = None,
        key: Optional[PathLike] = None,
        token_file: Optional[PathLike] = None,
    ) -> None:
        self.app = app
        self._credentials = credential_paths(ca, cert, key, token_file)
        self.addresses = [addresses] if isinstance(addresses, str) else list(addresses)
        if not self.addresses:
            raise ValueError("a worker needs the address of at least one node")
        self._requested_id = id
        self._native: Optional[_native.NativeWorker] = None
        self._stopped = threading.Event()
        self._lock = threading.Lock()

    @property
    def id(self) -> Optional[int]:
        """The worker's id once started (random unless given)."""
        return None if self._native is None else self._native.worker_id

    def start(self) -> "Worker":
        """Starts working in the background (once)."""
        self.app._check_process()
        with self._lock:
            if self._native is None:
                with self.app._lock:
                    kinds, loop = self.app._runner()
                self._native = _native.NativeWorker.start(
                    self.addresses, kinds, self.app._run, loop, self._requested_id, *self._credentials
                )
                self._stopped.clear()
                _started_workers.add(self)
        return self

    def run(self) -> None:
        """Works until ``stop()`` or Ctrl-C (``KeyboardInterrupt`` stops the worker, then
        propagates)."""
        self.start()
        try:
            self._stopped.wait()
        finally:
            self.stop()

    def stop(self) -> None:
        """Stops the worker and its runs; the leader leases their workflows again."""
        with self._lock:
            native, self._native = self._native, None
        _started_workers.discard(self)
        if native is not None:
            native.stop()
        self._stopped.set()

    def __enter__(self) -> "Worker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
