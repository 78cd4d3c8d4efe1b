"""A program the process tests run in a child interpreter: `python program.py MODE DATA_DIR
LOG`. Modes: `steps` (a five-step workflow with durable sleeps, to be killed and run again),
`gather` (an async workflow gathering a slow and a fast step twice, likewise), `interrupt`
(blocks in `result()` until Ctrl-C), `exit` (leaves its App open at exit)."""

from __future__ import annotations

import asyncio
import os
import sys

import keel

mode, data_dir, log = sys.argv[1], sys.argv[2], sys.argv[3]
app = keel.App(data_dir=data_dir)


def note(line: str) -> None:
    with open(log, "a") as file:
        file.write(line + "\n")
        file.flush()
        os.fsync(file.fileno())


@app.step
def work(i: int) -> int:
    note(f"body {i}")
    return i


@app.workflow
def job(ctx: keel.Context, n: int) -> int:
    total = 0
    for i in range(n):
        total += work(i)
        note(f"journaled {i}")  # workflow code: written again on every replay
        ctx.sleep(0.5)
    return total


@app.workflow
def forever(ctx: keel.Context) -> object:
    return ctx.wait_signal("never")


@app.step
async def slow(tag: str) -> str:
    await asyncio.sleep(1.0)
    note(f"body slow {tag}")
    return f"slow {tag}"


@app.step
async def fast(tag: str) -> str:
    note(f"body fast {tag}")
    return f"fast {tag}"


@app.workflow
async def gathered(ctx: keel.AsyncContext) -> list[str]:
    a, b = await asyncio.gather(slow("a"), fast("b"))
    note("gathered")  # workflow code: written again on every replay
    await ctx.sleep(1.0)
    c, d = await asyncio.gather(slow("c"), fast("d"))
    return [a, b, c, d]


if mode == "steps":
    handle = app.start(job, 5, id="job")
    note("started")
    print("result", handle.result(timeout=120), flush=True)
elif mode == "gather":
    handle = app.start(gathered, id="gathered")
    print("result", handle.result(timeout=120), [e.name for e in handle.journal()], flush=True)
elif mode == "interrupt":
    handle = app.start(forever, id="forever")
    note("waiting")
    handle.result()
elif mode == "exit":
    app.start(job, 1, id="short").result(timeout=60)
    app.start(forever, id="waits")  # a sync workflow waiting when the interpreter exits
    app.start(gathered, id="gathering")  # an async one in its slow step
    note("done")
    # No close(): the App is stopped at interpreter exit.
