"""Two agents on a three-process cluster: agent A (the editor) calls agent B (the researcher)
through ``ctx.call``; while B works, the process that leads the cluster is killed (SIGKILL).
Another member takes over, B's call completes once, and A gets its answer.

    python bindings/examples/agents_cluster.py

One command runs it all: it starts three member processes of itself (``member N``), each
``keel.App(node_id=N, listen=..., peers=...)`` with its data in ``keel-cluster-data/N``; a
client starts the editor, kills the leader mid-call, prints what happened, and stops the
members. Each step's body appends a line to ``keel-cluster-data/steps.log``, so the summary
shows which ran once. Bounded: every wait has a deadline, every process it started is
killed by PID at the end, and a member also stops when the orchestrator's end closes its
standard input.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import keel
from keel.testing import free_ports  # loopback ports for the three members

DATA_DIR = Path("keel-cluster-data")
STEPS_LOG = DATA_DIR / "steps.log"
#: Seconds any one wait of the orchestrator may take.
WAIT_S = 60.0


def log_step(line: str) -> None:
    with open(STEPS_LOG, "a") as file:
        file.write(f"{line} (node {os.environ.get('KEEL_EXAMPLE_NODE', '?')})\n")
        file.flush()
        os.fsync(file.fileno())


def make_app() -> keel.App:
    """The member app of this process: ``member N MEMBERS_JSON`` on the command line."""
    if len(sys.argv) > 1 and sys.argv[1] == "member":
        node_id = int(sys.argv[2])
        members = {int(k): v for k, v in json.loads(sys.argv[3]).items()}
        return keel.App(
            DATA_DIR / str(node_id),
            node_id=node_id,
            listen=members[node_id],
            peers={k: v for k, v in members.items() if k != node_id},
            timeout=WAIT_S,
        )
    return keel.App()  # the orchestrator's: never launched (it uses keel.connect)


app = make_app()


@app.step(name="search")
def search(query: str) -> str:
    log_step(f"search {query}")
    time.sleep(0.5)  # the network: long enough for the leader to die inside the call
    return f"notes on {query}"


@app.step(name="write")
def write(topic: str, notes: list[str]) -> str:
    log_step(f"write {topic}")
    return f"{topic}: " + "; ".join(notes)


@app.workflow(name="researcher")
def researcher(ctx: keel.Context, topic: str) -> str:
    """Agent B: searches three aspects of a topic and writes them up."""
    notes = [search(f"{topic} {aspect}") for aspect in ("history", "methods", "open problems")]
    return write(topic, notes)


@app.step(name="review")
def review(report: str) -> str:
    log_step("review")
    return f"reviewed ({len(report)} characters)"


@app.workflow(name="editor")
def editor(ctx: keel.Context, topic: str) -> dict[str, str]:
    """Agent A: commissions a report from agent B, then reviews it."""
    report = ctx.call(researcher, topic)
    return {"report": report, "review": review(report)}


# -- the orchestrator ----------------------------------------------------------------------


def wait_for(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what} after {WAIT_S} s")
        time.sleep(0.02)


def steps_logged() -> list[str]:
    return STEPS_LOG.read_text().splitlines() if STEPS_LOG.exists() else []


def leader(client: keel.Client) -> Optional[int]:
    return client.leader_id()


def main() -> None:
    shutil.rmtree(DATA_DIR, ignore_errors=True)
    DATA_DIR.mkdir()
    members = {i + 1: f"127.0.0.1:{port}" for i, port in enumerate(free_ports(3))}
    processes: dict[int, subprocess.Popen[bytes]] = {}
    try:
        for node_id in members:
            out = open(DATA_DIR / f"member-{node_id}.out", "wb")
            processes[node_id] = subprocess.Popen(
                [sys.executable, __file__, "member", str(node_id), json.dumps(members)],
                env=dict(os.environ, KEEL_EXAMPLE_NODE=str(node_id)),
                stdin=subprocess.PIPE,  # closed when this process ends, however it ends
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            out.close()
        print(f"started members {sorted(members)} (PIDs {[p.pid for p in processes.values()]})")
        client = keel.connect(list(members.values()))
        wait_for("the cluster to form", lambda: leader(client) is not None)
        wait_for(
            "the members to declare their agents",
            lambda: _started(client, "editor", "consensus protocols"),
        )
        print(f"node {leader(client)} leads; editor-1 started: it calls the researcher")

        wait_for("the researcher's first search", lambda: len(steps_logged()) >= 1)
        killed = leader(client)
        assert killed is not None
        processes[killed].send_signal(signal.SIGKILL)
        processes[killed].wait(10)
        print(f"killed node {killed}, the leader, while the researcher was searching")

        result = client.handle("editor-1").result(timeout=WAIT_S)
        print(f"node {leader(client)} leads now; the editor finished: {result['review']}")
        print(f"  report: {result['report']}")
        calls = [e for e in client.handle("editor-1").journal() if e.kind == "call"]
        print(f"the editor's journal holds {len(calls)} call, of the researcher {calls[0].name}")
        researcher_run = client.handle(calls[0].name)
        print(f"  which is {researcher_run.status()}")

        bodies = collections.Counter(line.split(" (node")[0] for line in steps_logged())
        print("step bodies run (a completed step never runs again; the one in flight at")
        print("the kill may run a second time):")
        for line in steps_logged():
            print(f"  {line}")
        assert len(calls) == 1 and researcher_run.status() == "completed"
        assert sum(bodies.values()) - len(bodies) <= 1, "only the step in flight ran twice"
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(10)


def _started(client: keel.Client, kind: str, topic: str) -> bool:
    try:
        client.start(kind, topic, id="editor-1")
        return True
    except keel.NotFound:
        return False  # no member has declared the kind yet


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "member":
        app.launch()
        sys.stdin.read()  # serves until the orchestrator is gone (end of input)
        app.close()
    else:
        main()
