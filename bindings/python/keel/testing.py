"""``keel.testing``: an in-process cluster for tests, with time skipping.

    import datetime, keel.testing

    def test_reminder_after_a_day():
        with keel.testing.cluster(app) as c:
            handle = app.start(remind, "renew the certificate")
            c.kill_leader()                           # a failover in the middle
            c.advance(datetime.timedelta(days=1))     # the day-long sleep fires now
            c.partition([1], [2, 3]); c.heal()        # Raft's links between members cut
            assert handle.result(timeout=5) == "reminded"

Inside the ``with`` block the app launches no node of its own: ``app.start``, its handles and
``app.list`` talk to the test cluster, whose members (``nodes``, three by default) run in
this process on loopback ports with their data in a temporary directory, whatever
``data_dir`` the app was given. Every member runs the app's workflows (only the leader runs
them at a time).

**Time skipping.** ``advance(span)`` waits until every running workflow waits (on a sleep,
a signal or a child), moves the clocks forward by ``span``, and returns once every timer that
came due within it has fired (sleeps, signal-wait timeouts, named timers, schedules) and the
workflows it woke have reached their next wait or their end. A timer never fires before its due time by the skipped clocks, and everything
timed from the log follows them (command stamps, ``ctx.now()``, retention; client sessions
expire by count, not time, so a skip leaves them be); Raft's
heartbeats and elections, workers' leases and step retries' pauses keep real time. A timer
a woken workflow sets afterwards counts from the skipped time. Skipped time is
process-wide: other nodes running in this process skip too, and it is undone when the block
ends unless one of them still runs (then it stays, with a warning: a node with a real data
directory would have stamped the skipped time into its log).
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import socket
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from . import _native
from ._client import Client
from ._errors import KeelError, Timeout
from ._time import Duration, seconds

if TYPE_CHECKING:
    from ._app import App

__all__ = ["TestCluster", "cluster", "free_ports"]

#: How often ``advance`` and ``leader_id`` look again.
_POLL_S = 0.005


def free_ports(count: int) -> list[int]:
    """``count`` loopback ports the kernel had free just now (bound to port 0, then
    released: another process may take one before it is used)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class TestCluster:
    """A cluster of in-process nodes running one app's workflows (see the module's docs)."""

    __test__ = False  # not a pytest test class

    def __init__(self, app: "App", nodes: int, timeout: float) -> None:
        if nodes < 1:
            raise ValueError("a test cluster has at least one node")
        self.app = app
        self.timeout = timeout
        self._dir = Path(tempfile.mkdtemp(prefix="keel-test-cluster-"))
        #: Each member's address, by node id (from 1).
        self.addresses = {
            i + 1: f"127.0.0.1:{port}" for i, port in enumerate(free_ports(nodes))
        }
        self._nodes: dict[int, _native.NativeNode] = {}
        #: The proxy each member dials a peer through, by (member, peer): cut to partition.
        self._links: dict[tuple[int, int], _native.NativeLink] = {}
        try:
            for i in self.addresses:
                for j in self.addresses:
                    if i != j:
                        self._links[i, j] = _native.NativeLink.start(self.addresses[j])
            self._native_client = _native.NativeClient(list(self.addresses.values()))
        except BaseException:
            self._close()
            raise
        #: A client of the cluster (the one the app uses inside the block).
        self.client = Client(lambda: self._native_client, app._codec, app._return_hint)

    # -- members -------------------------------------------------------------------------

    def _launch(self, node_id: int) -> _native.NativeNode:
        with self.app._lock:
            kinds, loop = self.app._runner()
        return _native.NativeNode.launch(
            str(self._dir / f"node-{node_id}"),
            self.addresses[node_id],
            kinds,
            self.app._run,
            loop,
            self.timeout,
            node_id,
            {i: a for i, a in self.addresses.items() if i != node_id},
            {j: link.addr for (i, j), link in self._links.items() if i == node_id},
        )

    def _launch_all(self) -> None:
        """Launches every member at once (each waits for the others to form the cluster)."""
        errors: list[BaseException] = []

        def launch(node_id: int) -> None:
            try:
                self._nodes[node_id] = self._launch(node_id)
            except BaseException as error:  # handed to the caller below
                errors.append(error)

        threads = [
            threading.Thread(target=launch, args=(i,), name=f"keel-test-node-{i}")
            for i in self.addresses
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]

    @property
    def running(self) -> list[int]:
        """The ids of the members that run now."""
        return sorted(self._nodes)

    def leader_id(self) -> int:
        """The leader's id, once a majority of the members knows it as leader and it runs
        (``keel.Timeout`` if not within the cluster's timeout). A leader cut off by a
        partition is not it once the majority's side elected another."""
        majority = len(self.addresses) // 2 + 1
        deadline = time.monotonic() + self.timeout
        while True:
            known = collections.Counter(node.leader_id for node in self._nodes.values())
            for leader, count in known.items():
                if leader is not None and leader in self._nodes and count >= majority:
                    return leader
            if time.monotonic() >= deadline:
                raise Timeout(f"no leader among nodes {self.running} within {self.timeout} s")
            time.sleep(_POLL_S)

    def kill(self, node_id: int) -> None:
        """Stops member ``node_id`` at once: its workflow runs are aborted wherever they
        are (as at a crash; what it acknowledged is on its disk), and it leaves the
        cluster until ``restart``."""
        node = self._nodes.pop(node_id, None)
        if node is None:
            raise KeelError(f"node {node_id} does not run")
        node.shutdown()

    def kill_leader(self) -> int:
        """Kills the member that leads; its id."""
        leader = self.leader_id()
        self.kill(leader)
        return leader

    def restart(self, node_id: int) -> None:
        """Starts member ``node_id`` again from its data directory; returns once it rejoined
        (the cluster knows its kinds)."""
        if node_id not in self.addresses:
            raise KeelError(f"node {node_id} is not a member")
        if node_id in self._nodes:
            raise KeelError(f"node {node_id} runs already")
        self._nodes[node_id] = self._launch(node_id)

    def partition(self, *sides: Iterable[int]) -> None:
        """Cuts the links between members on different ``sides`` (each an iterable of node
        ids; a member named on no side is a side of its own), both ways; links within a side
        stay (or become) open. Raft's traffic between members goes through these links; the
        app's client and the members' workers still reach every member."""
        side_of: dict[int, int] = {}
        for index, side in enumerate(sides):
            for node_id in side:
                if node_id not in self.addresses:
                    raise KeelError(f"node {node_id} is not a member")
                side_of[node_id] = index
        for node_id in self.addresses:
            side_of.setdefault(node_id, len(sides) + node_id)
        for (i, j), link in self._links.items():
            if side_of[i] == side_of[j]:
                link.heal()
            else:
                link.cut()

    def heal(self) -> None:
        """Ends every partition."""
        for link in self._links.values():
            link.heal()

    # -- time ----------------------------------------------------------------------------

    def settle(self) -> None:
        """Waits until the cluster is idle: the leader has taken over (applied everything
        committed before its term), every running workflow waits on a sleep, a signal or a
        child (or is parked), and no timer is due. ``keel.Timeout`` if it is not within the
        cluster's timeout (a step that takes longer, no majority)."""
        deadline = time.monotonic() + self.timeout
        while True:
            leader = self._nodes.get(self.leader_id())
            if (
                leader is not None
                and leader.runs_workflows
                and leader.busy_workflows() == 0
                and leader.timers_due() == 0
            ):
                return
            if time.monotonic() >= deadline:
                raise Timeout(f"the test cluster did not settle within {self.timeout} s")
            time.sleep(_POLL_S)

    def advance(self, span: Duration) -> None:
        """Lets the cluster settle (so workflows started just before have reached their
        sleeps and waits), moves the clocks ``span`` forward, and returns once every timer
        that came due has fired and the workflows it woke have reached their next wait or
        their end."""
        span_s = seconds(span)
        self.settle()
        _native.skip_time(span_s)
        self.settle()

    @property
    def skipped(self) -> float:
        """The time skipped in this process so far, in seconds."""
        return _native.skipped_time()

    # -- the block -----------------------------------------------------------------------

    def _close(self) -> None:
        for node_id in list(self._nodes):
            self.kill(node_id)
        for link in self._links.values():
            link.close()
        if not _native.reset_skipped_time():
            warnings.warn(
                "keel.testing: another Keel node runs in this process, so the time skipped "
                f"({_native.skipped_time():.0f} s) stays skipped: its clocks never run back",
                stacklevel=3,
            )
        shutil.rmtree(self._dir, ignore_errors=True)


@contextlib.contextmanager
def cluster(app: "App", nodes: int = 3, timeout: Duration = 30.0) -> Iterator[TestCluster]:
    """An in-process cluster of ``nodes`` members running ``app``'s workflows, for the
    ``with`` block; inside it the app talks to this cluster. ``timeout`` bounds the
    launch, ``leader_id`` and ``advance``."""
    test_cluster = TestCluster(app, nodes, seconds(timeout))
    try:
        test_cluster._launch_all()
        app._attach(test_cluster._native_client)
        try:
            yield test_cluster
        finally:
            app._detach()
    finally:
        test_cluster._close()
