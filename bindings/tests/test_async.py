"""Async workflows: awaited durable calls, `asyncio.gather` journaled in call order (also
across a SIGKILL), `def` steps through `ctx.run`, and the awaitable client calls."""

from __future__ import annotations

import asyncio
import pathlib
import signal
import time

import pytest

import keel

from test_process import run_program, wait_for_line


def test_gathered_steps_are_journaled_in_the_order_they_were_called(app: keel.App) -> None:
    finished: list[str] = []

    @app.step
    async def slow(x: int) -> int:
        await asyncio.sleep(0.3)
        finished.append("slow")
        return x * 10

    @app.step
    async def fast(x: int) -> int:
        finished.append("fast")
        return x + 1

    @app.workflow
    async def both(ctx: keel.AsyncContext, x: int) -> list[int]:
        return list(await asyncio.gather(slow(x), fast(x)))

    handle = app.start(both, 4)
    assert handle.result(timeout=20) == [40, 5]
    assert finished == ["fast", "slow"], "the fast body finished first"
    names = [(e.seq, e.name) for e in handle.journal()]
    assert [n.rsplit(".", 1)[-1] for _, n in names] == ["slow", "fast"]
    assert [s for s, _ in names] == [0, 1]


def test_async_workflows_sleep_wait_call_children_and_draw_journaled_values(
    app: keel.App,
) -> None:
    @app.step
    def blocking(x: int) -> str:
        time.sleep(0.05)
        return f"b{x}"

    @app.workflow
    async def child(ctx: keel.AsyncContext, x: int) -> int:
        await ctx.sleep(0.05)
        return x * 2

    @app.workflow
    async def parent(ctx: keel.AsyncContext, x: int) -> list[object]:
        ran = await ctx.run(blocking, x)
        doubled = await ctx.call(child, x)
        signal_value = await ctx.wait_signal("go", timeout=10)
        draws = (await ctx.now(), await ctx.random(), await ctx.uuid())
        return [ran, doubled, signal_value, draws[0].year > 2000, 0 <= draws[1] < 1]

    handle = app.start(parent, 3)
    handle.signal("go", {"ok": True})
    assert handle.result(timeout=20) == ["b3", 6, {"ok": True}, True, True]


def test_a_def_step_called_directly_from_async_code_raises(app: keel.App) -> None:
    @app.step
    def plain() -> int:
        return 1

    @app.workflow
    async def misuses(ctx: keel.AsyncContext) -> str:
        try:
            plain()
        except keel.KeelError as error:
            return "ctx.run" if "ctx.run" in str(error) else str(error)
        return "called"

    assert app.start(misuses).result(timeout=10) == "ctx.run"


def test_an_async_step_in_a_sync_workflow_raises(app: keel.App) -> None:
    @app.step
    async def coroutine_step() -> int:
        return 1

    @app.workflow
    def sync(ctx: keel.Context) -> str:
        try:
            coroutine_step()
        except keel.KeelError as error:
            return "refused" if "async step" in str(error) else str(error)
        return "ran"

    assert app.start(sync).result(timeout=10) == "refused"


async def test_the_client_has_awaitable_forms(app: keel.App) -> None:
    @app.workflow
    async def echo(ctx: keel.AsyncContext, value: str) -> str:
        return value

    handle = await app.start_async(echo, "hi", id="echo")
    assert await handle.result_async(timeout=10) == "hi"
    with pytest.raises(keel.KeelError, match="event loop"):
        handle.result(timeout=1)


def test_gather_is_replayed_in_order_after_sigkill_between_its_steps(
    tmp_path: pathlib.Path,
) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "log"
    first = run_program("gather", data_dir, log)
    try:
        # The fast step's body ran; the slow one (1 s) is still running: neither is
        # journaled (the fast record waits for the slow one's position).
        wait_for_line(log, "body fast b")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    assert "body slow a" not in log.read_text().splitlines()
    second = run_program("gather", data_dir, log)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert "result ['slow a', 'fast b', 'slow c', 'fast d']" in out
    journal = "['__main__.slow', '__main__.fast', '', '__main__.slow', '__main__.fast']"
    assert out.strip().endswith(journal), out
    bodies = [line for line in log.read_text().splitlines() if line.startswith("body ")]
    # The fast body ran before the kill and once more after it (its outcome had not been
    # journaled: at least once); every other body ran once.
    assert bodies.count("body fast b") == 2
    others = sorted(b for b in bodies if b != "body fast b")
    assert others == ["body fast d", "body slow a", "body slow c"]
