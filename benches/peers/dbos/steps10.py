"""DBOS on PostgreSQL under Keel's workflow benchmark (see benches/benches/peers/driver.rs).

Runs 10-step trivial workflows from concurrent threads. Each thread calls the workflow
function; DBOS runs it durably in that thread, committing every step's output to
PostgreSQL before the next step runs, and the thread checks the result.

Protocol: prints "ready" once DBOS has launched; then each line on stdin holds a count,
and the driver runs that many workflows and answers "done <count>". End of input ends it.

Environment: KEEL_PEER_DB_URL (DBOS's system database), KEEL_PEER_CONCURRENCY (threads).
"""

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from dbos import DBOS

STEPS = 10
EXPECTED = sum(range(1, STEPS + 1))
CONCURRENCY = int(os.environ["KEEL_PEER_CONCURRENCY"])

DBOS(
    config={
        "name": "keel-peer-steps10",
        "system_database_url": os.environ["KEEL_PEER_DB_URL"],
        # One connection per thread and a few for DBOS's own work: no pool waits.
        "sys_db_pool_size": CONCURRENCY + 8,
        "log_level": "WARNING",
        # Its admin server would listen on every interface, one port for all processes.
        "run_admin_server": False,
    }
)


@DBOS.step()
def step(n: int) -> int:
    return n


@DBOS.workflow()
def steps10() -> int:
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
            result = steps10()
            if result != EXPECTED:
                raise AssertionError(f"workflow returned {result}, not {EXPECTED}")

    for future in [pool.submit(driver) for _ in range(CONCURRENCY)]:
        future.result()


def main() -> None:
    DBOS.launch()
    print("ready", flush=True)
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        for line in sys.stdin:
            count = int(line)
            run(pool, count)
            print(f"done {count}", flush=True)
    DBOS.destroy()


if __name__ == "__main__":
    main()
