"""Keel's Python package under the same workload as DBOS's steps10.py (see
benches/benches/python.rs): 10-step trivial workflows from concurrent threads, every step
journaled durably (fdatasync) before the next runs. Each thread starts a workflow and waits
for its result. By default the app is an embedded single node in this process; with
KEEL_PY_MEMBERS it is member KEEL_PY_NODE_ID of a three-process cluster, each step
acknowledged once a majority has it on disk.

Protocol: prints "ready" once the node serves (a cluster member: once the cluster formed,
and for the driver, once it leads); then each line on stdin holds a count, and the driver
runs that many workflows and answers "done <count>". End of input ends it. `steps10.py
member` is a cluster member that runs nothing of its own: it serves until end of input.

Environment: KEEL_PY_DATA_DIR (the app's data directory), KEEL_PEER_CONCURRENCY (threads);
KEEL_PY_MEMBERS (JSON: node id to address) and KEEL_PY_NODE_ID for a cluster.
"""

import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import keel

STEPS = 10
EXPECTED = sum(range(1, STEPS + 1))
CONCURRENCY = int(os.environ.get("KEEL_PEER_CONCURRENCY", "1"))
#: How long the driver waits to lead the cluster it formed.
LEAD_WAIT_S = 20


def make_app() -> keel.App:
    data_dir = os.environ["KEEL_PY_DATA_DIR"]
    members_text = os.environ.get("KEEL_PY_MEMBERS")
    if members_text is None:
        return keel.App(data_dir=data_dir)
    members = {int(k): v for k, v in json.loads(members_text).items()}
    node_id = int(os.environ["KEEL_PY_NODE_ID"])
    peers = {k: v for k, v in members.items() if k != node_id}
    return keel.App(data_dir=data_dir, node_id=node_id, listen=members[node_id], peers=peers)


app = make_app()


@app.step
def step(n: int) -> int:
    return n


@app.workflow
def steps10(ctx: keel.Context) -> int:
    total = 0
    for n in range(1, STEPS + 1):
        total += step(n)
    return total


def run(pool: ThreadPoolExecutor, count: int) -> None:
    remaining = [count]
    lock = threading.Lock()

    def driver() -> None:
        while True:
            with lock:
                if remaining[0] == 0:
                    return
                remaining[0] -= 1
            result = app.start(steps10).result(timeout=120)
            if result != EXPECTED:
                raise AssertionError(f"workflow returned {result}, not {EXPECTED}")

    for future in [pool.submit(driver) for _ in range(CONCURRENCY)]:
        future.result()


def lead() -> None:
    """As the driver of a cluster: waits until this member leads (the benchmark measures a
    leader in this process), or exits with why not. In a check run (`KEEL_PY_LEAD=any`, no
    timing) another member may lead: the workflows then go to it."""
    deadline = time.monotonic() + LEAD_WAIT_S
    while app.leader_id != app.node_id:
        if time.monotonic() > deadline:
            why = f"node {app.node_id} did not lead within {LEAD_WAIT_S} s: {app.leader_id} does"
            if os.environ.get("KEEL_PY_LEAD") == "any":
                print(f"{why}; a check run goes on", file=sys.stderr, flush=True)
                return
            sys.exit(why)
        time.sleep(0.01)


def main() -> None:
    app.launch()
    if len(sys.argv) > 1 and sys.argv[1] == "member":
        print("ready", flush=True)
        sys.stdin.read()
        app.close()
        return
    if app.node_id is not None:
        lead()
    print("ready", flush=True)
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        for line in sys.stdin:
            count = int(line)
            run(pool, count)
            print(f"done {count}", flush=True)
    app.close()


if __name__ == "__main__":
    main()
