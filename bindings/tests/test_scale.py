"""Many waiting sync workflows, few threads: a `def` workflow waiting for a signal gives back
its thread (it unwinds and is replayed from its journal when woken)."""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import keel

WAITING = 10_000
#: Threads the process may hold beyond those it had before any workflow ran while every
#: workflow waits (blocking-pool threads idle out 2 s after their last run).
EXTRA_THREADS_MAX = 16


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.timeout(600)
def test_ten_thousand_sync_workflows_wait_at_once_on_few_threads(app: keel.App) -> None:
    @app.workflow
    def waits(ctx: keel.Context, i: int) -> int:
        value = ctx.wait_signal("go")
        assert isinstance(value, int)
        return i + value

    async def start_all() -> list[keel.WorkflowHandle]:
        limit = asyncio.Semaphore(256)

        async def start(i: int) -> keel.WorkflowHandle:
            async with limit:
                return await app.start_async(waits, i, id=f"w{i:05}")

        return await asyncio.gather(*(start(i) for i in range(WAITING)))

    app.launch()
    baseline = os_threads()
    handles = asyncio.run(start_all())
    deadline = time.monotonic() + 300
    while True:
        running = app.list(status="running", limit=WAITING + 1)
        if len(running) == WAITING and all(w.journal_len == 1 for w in running):
            break
        assert time.monotonic() < deadline, "not every workflow reached its wait"
        time.sleep(0.5)
    time.sleep(3)  # idle blocking-pool threads expire after 2 s
    extra = os_threads() - baseline
    assert extra <= EXTRA_THREADS_MAX, f"{extra} more threads for {WAITING} waits"

    with ThreadPoolExecutor(32) as pool:
        assert all(pool.map(lambda h: h.signal("go", 1), handles))
    while len(app.list(status="completed", limit=WAITING + 1)) < WAITING:
        assert time.monotonic() < deadline, "not every workflow finished"
        time.sleep(0.5)
    assert handles[1234].result(timeout=10) == 1235
