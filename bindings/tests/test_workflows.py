"""The sync workflow API on an embedded node: steps, timers, signals, child calls, journaled
values, handles and listing."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

import keel


def test_a_workflow_runs_steps_once_sleeps_waits_for_a_signal_and_calls_a_child(app: keel.App) -> None:
    bodies: list[str] = []

    @app.step(retries=3, backoff=timedelta(seconds=1), timeout=timedelta(minutes=2))
    def search(topic: str) -> list[str]:
        bodies.append(topic)
        return [f"{topic}-a", f"{topic}-b"]

    @app.workflow
    def summarize(ctx: keel.Context, pages: list[str]) -> str:
        return " & ".join(pages)

    @app.workflow
    def research(ctx: keel.Context, topic: str) -> str:
        pages = search(topic)
        ctx.sleep(timedelta(milliseconds=100))
        ok = ctx.wait_signal("approve", timeout=timedelta(days=1))
        summary = ctx.call(summarize, pages)
        return summary if ok else "rejected"

    handle = app.start(research, "raft", id="r-1")
    assert handle.status() == "running"
    # Sent at once, likely before the workflow waits: a signal is kept until its wait.
    assert handle.signal("approve", True) is True
    assert handle.result(timeout=10) == "raft-a & raft-b"
    assert handle.status() == "completed"
    assert bodies == ["raft"], "the step's body ran once although the workflow was replayed"
    kinds = {(w.id, w.kind, w.status) for w in app.list(status="completed")}
    assert kinds == {
        ("r-1", research.__module__ + "." + research.__qualname__, "completed"),
        ("r-1/3", summarize.__module__ + "." + summarize.__qualname__, "completed"),
    }


def test_steps_take_both_decorator_forms_and_are_plain_calls_outside_a_workflow(app: keel.App) -> None:
    @app.step
    def bare(x: int) -> int:
        return x + 1

    @app.step()
    def called(x: int) -> int:
        return x * 2

    assert bare(1) == 2 and called(2) == 4

    @app.workflow
    def both(ctx: keel.Context, x: int) -> int:
        return called(bare(x))

    assert app.start(both, 3).result(timeout=10) == 8


def test_default_kind_names_are_module_and_qualname_and_versions_are_kept(app: keel.App) -> None:
    @app.workflow
    def default(ctx: keel.Context) -> str:
        return "d"

    @app.workflow(name="named", version="7")
    def other(ctx: keel.Context) -> str:
        return "n"

    assert keel.kind_name(default) == f"{__name__}.{default.__qualname__}"
    assert "<locals>.default" in keel.kind_name(default)
    app.start(default, id="d").result(timeout=10)
    app.start(other, id="n").result(timeout=10)
    listed = {w.id: (w.kind, w.version) for w in app.list()}
    assert listed == {"d": (keel.kind_name(default), "1"), "n": ("named", "7")}


def test_a_step_is_retried_with_the_same_idempotency_key_then_fails_with_the_original_error(
    app: keel.App,
) -> None:
    keys: list[tuple[str, int]] = []

    @app.step(retries=2, backoff=0.01)
    def flaky(fail_times: int) -> str:
        info = keel.step_info()
        keys.append((info.idempotency_key, info.attempt))
        if info.attempt <= fail_times:
            raise ConnectionError(f"attempt {info.attempt} failed")
        return "ok"

    @app.workflow
    def recovers(ctx: keel.Context) -> str:
        return flaky(2)

    @app.workflow
    def gives_up(ctx: keel.Context) -> str:
        try:
            return flaky(5)
        except keel.StepFailed as error:
            return f"{error.error_type}|{error.error_message}|{'flaky' in error.error_traceback}"

    assert app.start(recovers, id="rec").result(timeout=10) == "ok"
    assert keys == [("rec/0", 1), ("rec/0", 2), ("rec/0", 3)]
    keys.clear()
    assert app.start(gives_up, id="gu").result(timeout=10) == "ConnectionError|attempt 3 failed|True"
    assert [k for k, _ in keys] == ["gu/0"] * 3, "retries=2: three attempts in all"


def test_a_sync_step_over_its_timeout_is_abandoned_and_counted_failed(app: keel.App) -> None:
    release = threading.Event()

    @app.step(retries=0, timeout=0.1)
    def stuck() -> str:
        release.wait(10)
        return "late"

    @app.workflow
    def waits(ctx: keel.Context) -> str:
        try:
            return stuck()
        except keel.StepFailed as error:
            return str(error)

    try:
        message = app.start(waits).result(timeout=10)
    finally:
        release.set()
    assert "ran longer than" in message


def test_journaled_values_are_the_same_on_every_replay(app: keel.App) -> None:
    seen: list[tuple[object, ...]] = []

    @app.workflow
    def draws(ctx: keel.Context) -> list[str]:
        values = (ctx.now(), ctx.random(), ctx.uuid())
        seen.append(values)
        ctx.sleep(0.05)  # suspends: the run is replayed from its journal after the sleep
        return [str(v) for v in values]

    result = app.start(draws).result(timeout=10)
    assert len(seen) == 2 and seen[0] == seen[1]
    assert result == [str(v) for v in seen[0]]
    assert 0.0 <= seen[0][1] < 1.0  # type: ignore[operator]


def test_starting_an_existing_id_returns_that_run_and_another_kind_is_refused(app: keel.App) -> None:
    runs: list[int] = []

    @app.workflow
    def once(ctx: keel.Context, n: int) -> int:
        runs.append(n)
        return n

    @app.workflow
    def different(ctx: keel.Context, n: int) -> int:
        return n

    first = app.start(once, 1, id="same")
    assert first.result(timeout=10) == 1
    again = app.start(once, 2, id="same")
    assert again.result(timeout=10) == 1 and runs == [1]
    with pytest.raises(keel.KeelError, match="exists with kind"):
        app.start(different, 3, id="same")


def test_signals_and_cancels_of_a_finished_workflow_return_false(app: keel.App) -> None:
    @app.workflow
    def quick(ctx: keel.Context) -> str:
        return "done"

    handle = app.start(quick)
    handle.result(timeout=10)
    assert handle.signal("late", {"x": 1}) is False
    assert handle.cancel() is False


def test_timeouts_take_seconds_or_timedeltas_and_raise_keel_timeout(app: keel.App) -> None:
    @app.workflow
    def waits(ctx: keel.Context) -> object:
        return ctx.wait_signal("never", timeout=0.2)

    @app.workflow
    def forever(ctx: keel.Context) -> object:
        return ctx.wait_signal("never")

    assert app.start(waits).result(timeout=timedelta(seconds=10)) is None
    handle = app.start(forever)
    for timeout in (0.1, 1, timedelta(milliseconds=100)):
        started = time.monotonic()
        with pytest.raises(keel.Timeout) as raised:
            handle.result(timeout=timeout)
        assert isinstance(raised.value, TimeoutError)
        assert time.monotonic() - started < 5
    with pytest.raises(TypeError):
        handle.result(timeout="soon")  # type: ignore[arg-type]


def test_a_cancelled_workflow_ends_cancelled_and_its_run_stops_at_the_next_durable_call(
    app: keel.App,
) -> None:
    in_step = threading.Event()
    release = threading.Event()
    after: list[str] = []

    @app.step
    def blocks() -> str:
        in_step.set()
        release.wait(10)
        return "x"

    @app.step
    def never() -> str:
        after.append("ran")
        return "y"

    @app.workflow
    def victim(ctx: keel.Context) -> str:
        try:
            # Cancelled while its body runs: journaling the body's result is refused.
            blocks()
            never()
        except keel.Cancelled:
            after.append("cancelled")
            raise
        return "finished"

    handle = app.start(victim)
    assert in_step.wait(10)
    assert handle.cancel("stop") is True
    release.set()
    with pytest.raises(keel.Cancelled):
        handle.result(timeout=10)
    assert handle.status() == "cancelled"
    deadline = time.monotonic() + 5
    while not after and time.monotonic() < deadline:
        time.sleep(0.01)
    assert after == ["cancelled"]


def test_a_step_body_may_use_the_client_blocking_calls(app: keel.App) -> None:
    @app.workflow
    def inner(ctx: keel.Context, n: int) -> int:
        return n * 3

    @app.step
    def starts_another(n: int) -> int:
        # A blocking call made inside a step's body, itself inside the workflow's wait.
        return int(app.start(inner, n, id=f"inner-{n}").result(timeout=10))

    @app.workflow
    def outer(ctx: keel.Context, n: int) -> int:
        return starts_another(n)

    assert app.start(outer, 5).result(timeout=20) == 15


async def test_an_app_is_an_async_context_manager(data_dir: object) -> None:
    import pathlib

    assert isinstance(data_dir, pathlib.Path)
    app = keel.App(data_dir=data_dir)

    @app.workflow
    def quick(ctx: keel.Context) -> str:
        return "ok"

    async with app:
        handle = await app.start_async(quick, id="q")
        assert await handle.result_async(timeout=10) == "ok"
        assert await handle.status_async() == "completed"
        assert await handle.signal_async("late") is False
        assert [w.id for w in await app.list_async()] == ["q"]
    with pytest.raises(keel.KeelError, match="closed"):
        app.list()
