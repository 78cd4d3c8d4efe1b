"""The Python process around an App: SIGKILL and restart, Ctrl-C, fork, interpreter exit,
reopening a data directory, and the `keel` program finding the App by its data directory."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Callable

import pytest

import keel

from conftest import keel_binary

PROGRAM = pathlib.Path(__file__).with_name("program.py")


def run_program(mode: str, data_dir: pathlib.Path, log: pathlib.Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(PROGRAM), mode, str(data_dir), str(log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(log: pathlib.Path, line: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and line in log.read_text().splitlines():
            return
        time.sleep(0.01)
    raise AssertionError(f"{line!r} never appeared in {log}")


def test_after_sigkill_the_workflow_resumes_and_no_completed_step_runs_again(
    tmp_path: pathlib.Path,
) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "log"
    first = run_program("steps", data_dir, log)
    try:
        # Step 1's result is journaled once the workflow code after it runs.
        wait_for_line(log, "journaled 1")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    assert first.returncode == -signal.SIGKILL
    second = run_program("steps", data_dir, log)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert out.strip() == "result 10"
    bodies = [line for line in log.read_text().splitlines() if line.startswith("body ")]
    assert bodies == [f"body {i}" for i in range(5)], "each step's body ran exactly once"


def test_ctrl_c_interrupts_a_blocked_result_call(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "log"
    process = run_program("interrupt", tmp_path / "data", log)
    try:
        wait_for_line(log, "waiting")
        time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=10)
    finally:
        process.kill()
    assert "KeyboardInterrupt" in err
    assert process.returncode != 0


def test_an_app_left_open_is_stopped_at_interpreter_exit(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "log"
    process = run_program("exit", tmp_path / "data", log)
    try:
        # Exits soon although a sync and an async workflow are mid-run, without a crash.
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert "done" in log.read_text().splitlines()
    assert "Fatal Python error" not in err and "panicked" not in err, err


def test_an_app_used_in_a_forked_child_raises(app: keel.App) -> None:
    app.launch()
    pid = os.fork()
    if pid == 0:
        try:
            app.list()
        except keel.KeelError as error:
            os._exit(0 if "forked" in str(error) else 2)
        os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_new_app_in_a_child_forked_after_keel_started_raises(
    app: keel.App, tmp_path: pathlib.Path
) -> None:
    app.launch()
    pid = os.fork()
    if pid == 0:
        try:
            keel.App(data_dir=tmp_path / "child").launch()
        except keel.KeelError as error:
            os._exit(0 if "forked" in str(error) else 2)
        os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_reopened_app_resumes_in_flight_workflows_on_its_recorded_address(
    data_dir: pathlib.Path,
) -> None:
    def build() -> tuple[keel.App, list[int], Callable[..., int]]:
        app = keel.App(data_dir=data_dir)
        ran: list[int] = []

        @app.step
        def record(n: int) -> int:
            ran.append(n)
            return n

        @app.workflow(name="resumable")
        def resumable(ctx: keel.Context) -> int:
            first = record(1)
            ctx.wait_signal("go")
            return first + record(2)

        return app, ran, resumable

    app, ran, resumable = build()
    app.start(resumable, id="w")
    deadline = time.monotonic() + 10
    while app._client().get("w")["journal_len"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    address = app.address
    app.close()
    assert ran == [1]
    assert (data_dir / "endpoints").read_text().strip() == address

    again, ran_again, _ = build()
    with again:
        assert again.address == address
        assert again.handle("w").signal("go") is True
        assert again.handle("w").result(timeout=10) == 3
    assert ran_again == [2], "step 1 was journaled before the restart and not run again"


def test_keel_status_finds_the_app_by_its_data_directory_and_shows_json(
    app: keel.App, data_dir: pathlib.Path
) -> None:
    @app.workflow
    def answer(ctx: keel.Context) -> dict[str, int]:
        return {"answer": 42}

    handle = app.start(answer, id="a-1")
    handle.result(timeout=10)
    shown = subprocess.run(
        [str(keel_binary()), "status", "a-1", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.returncode == 0, shown.stderr
    assert 'result: {"answer":42}' in shown.stdout


def test_keel_start_takes_a_json_array_of_arguments_for_a_python_workflow(
    app: keel.App, data_dir: pathlib.Path
) -> None:
    @app.workflow
    def adds(ctx: keel.Context, a: int, b: int) -> int:
        return a + b

    app.launch()
    started = subprocess.run(
        [
            str(keel_binary()),
            "start",
            keel.kind_name(adds),
            "--id",
            "from-cli",
            "--input",
            "[2, 3]",
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert started.returncode == 0, started.stderr
    assert app.handle("from-cli").result(timeout=10) == 5


def test_keel_status_names_a_data_directory_without_an_app(tmp_path: pathlib.Path) -> None:
    shown = subprocess.run(
        [str(keel_binary()), "status", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.returncode != 0
    assert "endpoints" in shown.stderr


pytestmark = pytest.mark.timeout(180)
