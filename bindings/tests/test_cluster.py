"""Clusters across processes: three Python processes as the members of one cluster (the
kill of whichever leads, a restart that rejoins); `keel.connect` and `keel.Worker` against
`keel node` processes that run no workflows themselves (a worker killed mid-step)."""

from __future__ import annotations

import collections
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

import keel

from conftest import PROGRAM, Members, Processes, keel_nodes, log_lines, wait_until



def bodies(log: pathlib.Path) -> collections.Counter[tuple[str, int]]:
    """How many times each `(workflow, step)` body ran, by the program's log."""
    return collections.Counter(
        (parts[1], int(parts[2]))
        for parts in (line.split() for line in log_lines(log))
        if parts[0] == "body"
    )


def body_pids(log: pathlib.Path, workflow: str) -> list[int]:
    return [
        int(parts[3])
        for parts in (line.split() for line in log_lines(log))
        if parts[0] == "body" and parts[1] == workflow
    ]


def test_three_python_processes_form_a_cluster_that_survives_the_kill_of_its_leader(
    processes: Processes, tmp_path: pathlib.Path
) -> None:
    members = Members(processes, tmp_path)
    for node_id in (1, 2, 3):
        members.start(node_id)
    wait_until(lambda: all(members.ready(i) for i in (1, 2, 3)), "the members' launch")
    client = keel.connect(list(members.addresses.values()))
    # A kind only a member that does not lead registers runs there, leased to its worker.
    leader = client.leader_id()
    assert leader is not None
    follower = next(i for i in members.running if i != leader)
    assert client.start(f"only-{follower}", id="only").result(timeout=60) == (
        members.running[follower].pid
    )

    handles = [client.start("pipeline", 12, 0.1, id=f"p-{i}") for i in range(4)]
    wait_until(lambda: sum(bodies(members.log).values()) >= 8, "the first steps")
    leader = client.leader_id()
    assert leader in members.running, f"some member leads: {client.nodes()}"
    members.kill(leader)

    assert [h.result(timeout=90) for h in handles] == [sum(range(12))] * 4
    runs = bodies(members.log)
    assert {k for k in runs if k[0].startswith("p-")} == {
        (f"p-{w}", i) for w in range(4) for i in range(12)
    }
    # A completed step never runs again; only the step each workflow had in flight on the
    # killed leader may have run a second time.
    assert sum(runs.values()) - len(runs) <= len(handles), runs
    new_leader = client.leader_id()
    assert new_leader is not None and new_leader != leader

    # The killed member restarts from its data directory and rejoins: it follows the
    # leader, and a workflow started now completes.
    members.start(leader)
    wait_until(lambda: members.ready(leader, launches=2), "the restarted member's launch")
    wait_until(
        lambda: any(
            n.node_id == leader and n.role == "follower" and n.leader_id is not None
            for n in client.nodes()
        ),
        "the restarted member following the leader",
    )
    assert client.start("pipeline", 3, 0.0, id="after").result(timeout=60) == 3


@pytest.fixture
def nodes(processes: Processes, tmp_path: pathlib.Path) -> list[str]:
    """`keel node` processes that leave every workflow to remote workers."""
    return keel_nodes(processes, tmp_path, run_workflows=False)


def start_worker(
    processes: Processes, tmp_path: pathlib.Path, nodes: list[str], name: str
) -> subprocess.Popen[bytes]:
    """A `cluster_program.py worker` process, returned once it wrote its `worker ready`."""
    log = tmp_path / "log"
    before = log_lines(log).count("worker ready")
    worker = processes.start(
        [sys.executable, PROGRAM, "worker", ",".join(nodes), str(log)],
        tmp_path / f"{name}.out",
    )
    wait_until(lambda: log_lines(log).count("worker ready") > before, f"{name}'s start")
    return worker


def test_a_client_runs_workflows_on_keel_node_processes_through_a_python_worker(
    processes: Processes, tmp_path: pathlib.Path, nodes: list[str]
) -> None:
    start_worker(processes, tmp_path, nodes, "worker-a")
    client = keel.connect(nodes)
    # The worker declares its kinds in its session's hello; a start before that is refused.
    wait_until(lambda: _starts(client, "first"), "the worker's kinds declared")
    assert client.handle("first").result(timeout=60) == 3

    waiter = client.start("waiter", id="w-1")
    assert waiter.status() == "running"
    assert waiter.signal("go", "green")
    assert waiter.result(timeout=60) == "green"
    assert not waiter.signal("go", "late"), "a finished workflow takes no signal"

    doomed = client.start("waiter", id="w-2")
    assert doomed.cancel("no longer needed")
    with pytest.raises(keel.Cancelled):
        doomed.result(timeout=30)

    assert client.start("parent", 2, 0.0, id="parent").result(timeout=60) == 11
    listed = {w.id: w.status for w in client.list(kind="waiter")}
    assert listed == {"w-1": "completed", "w-2": "cancelled"}
    with pytest.raises(keel.NotFound):
        client.handle("no-such-workflow")


def _starts(client: keel.Client, id: str) -> bool:
    """Whether `pipeline(3 steps)` started as `id` (false while no worker declared it)."""
    try:
        client.start("pipeline", 3, 0.0, id=id)
        return True
    except keel.NotFound:
        return False


def test_a_running_worker_stops_on_ctrl_c(
    processes: Processes, tmp_path: pathlib.Path, nodes: list[str]
) -> None:
    worker = start_worker(processes, tmp_path, nodes, "worker-a")
    worker.send_signal(signal.SIGINT)
    # `run()` stops the worker and lets KeyboardInterrupt end the interpreter.
    assert worker.wait(20) != 0
    assert "KeyboardInterrupt" in (tmp_path / "worker-a.out").read_text()


def test_a_worker_killed_mid_step_loses_its_workflow_to_another_worker(
    processes: Processes, tmp_path: pathlib.Path, nodes: list[str]
) -> None:
    log = tmp_path / "log"
    first = start_worker(processes, tmp_path, nodes, "worker-a")
    client = keel.connect(nodes)
    wait_until(lambda: _starts(client, "warm-up"), "the worker's kinds declared")
    # Steps of 1 s each: the first worker is killed inside one.
    handle = client.start("pipeline", 4, 1.0, id="slow")
    wait_until(lambda: len(body_pids(log, "slow")) >= 2, "the slow workflow's second step")
    assert set(body_pids(log, "slow")) == {first.pid}
    second = start_worker(processes, tmp_path, nodes, "worker-b")
    processes.kill(first)

    assert handle.result(timeout=60) == sum(range(4))
    runs = bodies(log)
    assert sorted(i for (w, i) in runs if w == "slow") == [0, 1, 2, 3]
    # The step in flight at the kill ran again on the second worker; no completed one did.
    assert sum(n for (w, _), n in runs.items() if w == "slow") <= 5, runs
    assert body_pids(log, "slow")[-1] == second.pid


# The same kinds as cluster_program.py's, for a worker in this process: bodies append to
# `local_log` (set by the test) with this process's PID.
local_app = keel.App()
local_log: list[pathlib.Path] = []


@local_app.step(name="work")
def local_work(workflow: str, i: int, pause: float) -> int:
    with open(local_log[0], "a") as file:
        file.write(f"body {workflow} {i} {os.getpid()}\n")
    time.sleep(pause)
    return i


@local_app.workflow(name="pipeline")
def local_pipeline(ctx: keel.Context, steps: int, pause: float) -> int:
    return sum(local_work(ctx.workflow_id, i, pause) for i in range(steps))


def test_a_worker_stopped_in_process_gives_up_its_workflows_to_another_worker(
    processes: Processes, tmp_path: pathlib.Path, nodes: list[str]
) -> None:
    log = tmp_path / "log"
    local_log[:] = [log]
    client = keel.connect(nodes)
    with keel.Worker(local_app, nodes) as here:
        assert here.id is not None
        wait_until(lambda: _starts(client, "warm-up"), "the worker's kinds declared")
        handle = client.start("pipeline", 4, 1.0, id="handover")
        wait_until(lambda: len(body_pids(log, "handover")) >= 2, "the second step here")
        assert set(body_pids(log, "handover")) == {os.getpid()}
        other = start_worker(processes, tmp_path, nodes, "worker-b")
    # Stopped: its session and heartbeats end, so its lease runs out and the leader leases
    # the workflow to the other worker, which finishes it from the journal.
    assert handle.result(timeout=60) == sum(range(4))
    assert body_pids(log, "handover")[-1] == other.pid
    runs = bodies(log)
    assert sorted(i for (w, i) in runs if w == "handover") == [0, 1, 2, 3]
    assert sum(n for (w, _), n in runs.items() if w == "handover") <= 5, runs
