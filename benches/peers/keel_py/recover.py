"""Keel's side of the recovery benchmark (benches/benches/python.rs): `recover.py start`
starts a 10-step workflow whose steps take 100 ms each and prints `step N` as each body
runs; the benchmark SIGKILLs it after step 3 and runs `recover.py resume`, which only opens
the app: the node resumes the workflow by itself, and the time until the first resumed step
prints is what is measured. `done` once the workflow finished.

Environment: KEEL_PY_DATA_DIR (the app's data directory).
"""

import os
import sys
import time

import keel

app = keel.App(data_dir=os.environ["KEEL_PY_DATA_DIR"])


@app.step
def slow_step(n: int) -> int:
    print(f"step {n}", flush=True)
    time.sleep(0.1)
    return n


@app.workflow
def slow10(ctx: keel.Context) -> int:
    return sum(slow_step(n) for n in range(1, 11))


def main() -> None:
    with app:
        if sys.argv[1] == "start":
            handle = app.start(slow10, id="recover")
        else:
            handle = app.handle("recover")
        handle.result(timeout=120)
        print("done", flush=True)


if __name__ == "__main__":
    main()
