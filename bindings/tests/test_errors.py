"""Every bad input gets its exception, all under keel.KeelError, and nothing is journaled
for a value that cannot be serialized."""

from __future__ import annotations

import asyncio
from typing import Callable

import pytest

import keel


def test_a_workflow_that_raises_fails_with_the_original_type_message_and_traceback(
    app: keel.App,
) -> None:
    @app.workflow
    def broken(ctx: keel.Context) -> str:
        raise ValueError("bad input 42")

    handle = app.start(broken)
    with pytest.raises(keel.WorkflowFailed) as raised:
        handle.result(timeout=10)
    assert raised.value.error_type == "ValueError"
    assert raised.value.error_message == "bad input 42"
    assert "in broken" in raised.value.error_traceback
    assert handle.status() == "failed"


def test_a_failed_child_raises_workflow_failed_in_its_parent(app: keel.App) -> None:
    @app.workflow
    def child(ctx: keel.Context) -> str:
        raise KeyError("missing")

    @app.workflow
    def parent(ctx: keel.Context) -> str:
        try:
            return ctx.call(child)
        except keel.WorkflowFailed as error:
            return f"{error.error_type}:{error.error_message}"

    assert app.start(parent).result(timeout=10) == "KeyError:'missing'"


def test_unknown_ids_and_unregistered_functions_raise_not_found(app: keel.App) -> None:
    def stray(ctx: keel.Context) -> None: ...

    with pytest.raises(keel.NotFound):
        app.handle("no-such-workflow")
    with pytest.raises(keel.NotFound):
        app.start(stray)
    assert issubclass(keel.NotFound, keel.KeelError)


def test_values_that_cannot_be_serialized_raise_before_anything_is_journaled(
    app: keel.App,
) -> None:
    @app.step
    def returns_a_set() -> object:
        return {1, 2}

    @app.workflow
    def takes(ctx: keel.Context, value: object) -> str:
        return "ran"

    @app.workflow
    def bad_step(ctx: keel.Context) -> str:
        try:
            returns_a_set()
        except keel.SerializationError:
            return "refused"
        return "journaled"

    @app.workflow
    def bad_child_input(ctx: keel.Context) -> str:
        try:
            ctx.call(takes, object())
        except keel.SerializationError:
            return "refused"
        return "called"

    @app.workflow
    def waits(ctx: keel.Context) -> object:
        return ctx.wait_signal("s", timeout=5)

    @app.step
    def fine() -> str:
        return "fine"

    @app.workflow
    def goes_on(ctx: keel.Context) -> str:
        try:
            returns_a_set()
        except keel.SerializationError:
            pass
        return fine()  # takes the position the refused step gave back

    with pytest.raises(keel.SerializationError):
        app.start(takes, object(), id="never")
    with pytest.raises(keel.NotFound):
        app.handle("never")

    handle = app.start(bad_step)
    assert handle.result(timeout=10) == "refused"
    assert app._client().get(handle.id)["journal_len"] == 0, "the failed step left no entry"

    goes = app.start(goes_on)
    assert goes.result(timeout=10) == "fine"
    assert [e.state for e in goes.journal()] == ["done"]
    assert app.start(bad_child_input).result(timeout=10) == "refused"

    waiting = app.start(waits)
    with pytest.raises(keel.SerializationError):
        waiting.signal("s", float("nan"))
    waiting.signal("s", "fine")
    assert waiting.result(timeout=10) == "fine"


def test_registering_after_launch_is_refused(app: keel.App) -> None:
    app.launch()

    def late(ctx: keel.Context) -> None: ...

    with pytest.raises(keel.KeelError, match="before the app launches"):
        app.workflow(late)


def test_a_blocking_call_on_an_event_loop_thread_raises_instead_of_blocking_it(
    app: keel.App,
) -> None:
    @app.workflow
    def quick(ctx: keel.Context) -> int:
        return 1

    handle = app.start(quick)

    async def misuse() -> None:
        with pytest.raises(keel.KeelError, match="event loop"):
            handle.result(timeout=10)
        assert await handle.result_async(timeout=10) == 1

    asyncio.run(misuse())


def test_bad_durations_and_retry_counts_are_refused(app: keel.App) -> None:
    with pytest.raises(ValueError):
        app.step(retries=-1)
    with pytest.raises(ValueError):
        app.step(timeout=-1)(lambda: None)
    with pytest.raises(TypeError):
        app.step(backoff="1s")(lambda: None)  # type: ignore[arg-type]


def test_a_bad_listen_address_is_refused_clearly(tmp_path: object) -> None:
    import pathlib

    assert isinstance(tmp_path, pathlib.Path)
    with pytest.raises(keel.InvalidRequest, match="host:port"):
        keel.App(data_dir=tmp_path / "d", listen="nowhere").launch()


def test_changed_code_parks_a_workflow_until_fixed_code_resumes_it(data_dir: object) -> None:
    import pathlib
    import time

    assert isinstance(data_dir, pathlib.Path)
    seen: list[str] = []

    def build(first_step: str) -> tuple[keel.App, Callable[..., object]]:
        app = keel.App(data_dir=data_dir)

        @app.step(name=first_step)
        def first() -> str:
            return first_step

        @app.workflow(name="changing")
        def changing(ctx: keel.Context) -> object:
            try:
                first()
            except keel.NonDeterminismError as error:
                seen.append(str(error))
                raise
            return ctx.wait_signal("go")

        return app, changing

    def wait_until(app: keel.App, done: Callable[[keel.WorkflowInfo], bool]) -> None:
        deadline = time.monotonic() + 20
        while not any(done(w) for w in app.list()):
            assert time.monotonic() < deadline, app.list()
            time.sleep(0.02)

    app, changing = build("original")
    with app:
        app.start(changing, id="c")
        wait_until(app, lambda w: w.journal_len == 2)
    app, _ = build("renamed")
    with app:
        wait_until(app, lambda w: w.status == "parked")
        assert app.handle("c").status() == "parked"
        assert [w.id for w in app.list(status="parked")] == ["c"]
    assert seen and '"original"' in seen[0] and '"renamed"' in seen[0]
    app, _ = build("original")
    with app:
        handle = app.handle("c")
        assert handle.signal("go", "resumed") is True
        assert handle.result(timeout=20) == "resumed"
