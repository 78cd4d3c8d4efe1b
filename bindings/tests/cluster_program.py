"""A program the cluster tests run in child interpreters.

- `python cluster_program.py member NODE_ID DATA_DIR LOG MEMBERS_JSON`: a member of a
  cluster of Python processes (`MEMBERS_JSON` maps every node id to its address); it writes
  `ready NODE_ID` to LOG once launched, then serves until killed.
- `python cluster_program.py worker ADDRESSES LOG`: a `keel.Worker` of this app for the
  cluster at the comma-separated ADDRESSES; writes `worker ready` and works (`run()`) until
  killed or interrupted.

With `KEEL_TEST_CERTS` (a `keel certs` directory) in the environment, a member runs TLS
with authentication, presenting `node-NODE_ID.pem`.

Each member also registers `only-NODE_ID`, a kind no other process has. Workflow kinds are
named explicitly (`pipeline`, ...), the same in every process and in the
tests that start them by name. Step bodies write `body WORKFLOW I PID` to LOG (appended and synced), so a test counts how many
times each ran across processes."""

from __future__ import annotations

import json
import os
import sys
import time

import keel

if sys.argv[1] == "member":
    NODE_ID, LOG = int(sys.argv[2]), sys.argv[4]
    MEMBERS = {int(k): v for k, v in json.loads(sys.argv[5]).items()}
    CERTS = os.environ.get("KEEL_TEST_CERTS")
    app = keel.App(
        sys.argv[3],
        node_id=NODE_ID,
        listen=MEMBERS[NODE_ID],
        peers={k: v for k, v in MEMBERS.items() if k != NODE_ID},
        timeout=60,
        ca=None if CERTS is None else os.path.join(CERTS, "ca.pem"),
        cert=None if CERTS is None else os.path.join(CERTS, f"node-{NODE_ID}.pem"),
        key=None if CERTS is None else os.path.join(CERTS, f"node-{NODE_ID}.key"),
    )
else:
    LOG = sys.argv[3]
    app = keel.App()  # never launched: its kinds run in the worker


def note(line: str) -> None:
    with open(LOG, "a") as file:
        file.write(line + "\n")
        file.flush()
        os.fsync(file.fileno())


@app.step(name="work")
def work(workflow: str, i: int, pause: float) -> int:
    note(f"body {workflow} {i} {os.getpid()}")
    time.sleep(pause)
    return i


@app.workflow(name="pipeline")
def pipeline(ctx: keel.Context, steps: int, pause: float) -> int:
    """`steps` steps, each pausing `pause` seconds in its body."""
    return sum(work(ctx.workflow_id, i, pause) for i in range(steps))


@app.workflow(name="child")
def child(ctx: keel.Context, steps: int, pause: float) -> int:
    return pipeline(ctx, steps, pause) * 10


@app.workflow(name="parent")
def parent(ctx: keel.Context, steps: int, pause: float) -> int:
    """Calls `child` and adds one: a child call spanning a failover."""
    return ctx.call(child, steps, pause) + 1


if sys.argv[1] == "member":

    @app.workflow(name=f"only-{NODE_ID}")
    def only_here(ctx: keel.Context) -> int:
        """A kind only this member registers: when another member leads, it runs here, in
        this member's remote worker."""
        return work(ctx.workflow_id, 0, 0.0) + os.getpid()


@app.workflow(name="waiter")
def waiter(ctx: keel.Context) -> str:
    """Waits for signal `go` and answers its value."""
    return str(ctx.wait_signal("go"))


if __name__ == "__main__":
    if sys.argv[1] == "member":
        app.launch()
        note(f"ready {NODE_ID}")
        while True:
            time.sleep(1)
    else:
        worker = keel.Worker(app, sys.argv[2].split(",")).start()
        note("worker ready")
        worker.run()  # until Ctrl-C (SIGINT), which stops the worker and propagates
