"""The examples run as their docstrings say: `agents_cluster.py` (three member processes, the
leader killed during agent A's call of agent B)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

from conftest import REPO


def test_the_agents_cluster_example_completes_the_call_once_after_its_leader_is_killed(
    tmp_path: pathlib.Path,
) -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "bindings" / "examples" / "agents_cluster.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    killed = re.search(r"killed node (\d), the leader", run.stdout)
    now = re.search(r"node (\d) leads now", run.stdout)
    assert killed and now and killed.group(1) != now.group(1), run.stdout
    assert "the editor's journal holds 1 call" in run.stdout
    assert "which is completed" in run.stdout
    steps = (tmp_path / "keel-cluster-data" / "steps.log").read_text().splitlines()
    names = [line.split(" (node")[0] for line in steps]
    assert names.count("write consensus protocols") == 1
    assert names.count("review") == 1
    assert len(names) - len(set(names)) <= 1, steps
