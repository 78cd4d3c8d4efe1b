"""DBOS's side of the recovery benchmark (benches/benches/python.rs), the same program as
benches/peers/keel_py/recover.py: `start` starts a 10-step workflow of 100 ms steps printing
`step N`; after a SIGKILL, `resume` only launches DBOS, which recovers the workflow by
itself (DBOS.launch() resumes this executor's pending workflows); `done` once it finished.

Environment: KEEL_PEER_DB_URL (DBOS's system database).
"""

import os
import sys
import time

from dbos import DBOS, SetWorkflowID

DBOS(
    config={
        "name": "keel-peer-recover",
        "system_database_url": os.environ["KEEL_PEER_DB_URL"],
        "log_level": "WARNING",
        "run_admin_server": False,
    }
)


@DBOS.step()
def slow_step(n: int) -> int:
    print(f"step {n}", flush=True)
    time.sleep(0.1)
    return n


@DBOS.workflow()
def slow10() -> int:
    return sum(slow_step(n) for n in range(1, 11))


def main() -> None:
    DBOS.launch()
    if sys.argv[1] == "start":
        with SetWorkflowID("recover"):
            handle = DBOS.start_workflow(slow10)
    else:
        handle = DBOS.retrieve_workflow("recover")
    handle.get_result()
    print("done", flush=True)
    DBOS.destroy()


if __name__ == "__main__":
    main()
