"""Keel's Python package under the same workload as DBOS's steps10.py (see
benches/benches/python.rs): 10-step trivial workflows from concurrent threads, on an
embedded single node in this process, every step journaled durably (fdatasync) before the
next runs. Each thread starts a workflow and waits for its result.

Protocol: prints "ready" once the node serves; then each line on stdin holds a count, and
the driver runs that many workflows and answers "done <count>". End of input ends it.

Environment: KEEL_PY_DATA_DIR (the app's data directory), KEEL_PEER_CONCURRENCY (threads).
"""

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import keel

STEPS = 10
EXPECTED = sum(range(1, STEPS + 1))
CONCURRENCY = int(os.environ["KEEL_PEER_CONCURRENCY"])

app = keel.App(data_dir=os.environ["KEEL_PY_DATA_DIR"])


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


def main() -> None:
    app.launch()
    print("ready", flush=True)
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        for line in sys.stdin:
            count = int(line)
            run(pool, count)
            print(f"done {count}", flush=True)
    app.close()


if __name__ == "__main__":
    main()
