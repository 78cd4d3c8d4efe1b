"""README's Python quick start, run verbatim: install the package into a fresh venv, run the
example research agent, SIGKILL it during its durable sleep, run it again. The second run
must resume (not start over) and no completed step's body may run twice."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess

import pytest

from conftest import REPO


def quickstart_block() -> str:
    readme = (REPO / "README.md").read_text()
    marker = readme.index("<!-- python-quickstart")
    match = re.search(r"```sh\n(.*?)```", readme[marker:], re.S)
    assert match, "README's python-quickstart block is missing"
    return match.group(1)


@pytest.mark.timeout(900)
def test_the_readme_quick_start_resumes_after_sigkill_without_rerunning_steps(
    tmp_path: pathlib.Path,
) -> None:
    block = quickstart_block()
    assert "pip install ./bindings" in block and "kill -9" in block
    # The block runs where `./bindings` is this checkout's package; the wheel is built in the
    # dev profile (CI's build; the block itself is unchanged).
    (tmp_path / "bindings").symlink_to(REPO / "bindings")
    env = dict(os.environ, MATURIN_PEP517_ARGS="--profile dev --locked")
    env.pop("VIRTUAL_ENV", None)
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "starting research-raft" in out
    assert re.search(r"resuming research-raft \(\d+ calls journaled\)", out), out
    assert "# raft\n- notes on raft history" in out
    steps = (tmp_path / "keel-data" / "steps.log").read_text().splitlines()
    assert steps == [
        "plan raft",
        "search raft history",
        "search raft algorithms",
        "search raft failures",
        "draft raft",
    ], "every step ran exactly once across the kill"
