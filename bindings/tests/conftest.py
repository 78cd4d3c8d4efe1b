"""Shared fixtures: an App in a fresh temporary data directory, closed after the test; child
processes killed after the test; a cluster of `keel node` processes."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Callable, Iterator, Optional

import pytest

import keel
from keel.testing import free_ports

REPO = pathlib.Path(__file__).resolve().parents[2]
#: The program the cluster tests run in child interpreters.
PROGRAM = str(pathlib.Path(__file__).with_name("cluster_program.py"))


@pytest.fixture
def data_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "keel-data"


@pytest.fixture
def app(data_dir: pathlib.Path) -> Iterator[keel.App]:
    app = keel.App(data_dir=data_dir)
    yield app
    app.close()


def keel_binary() -> pathlib.Path:
    """The `keel` program the workspace built (`KEEL_BIN` overrides)."""
    path = pathlib.Path(os.environ.get("KEEL_BIN", REPO / "target" / "debug" / "keel"))
    assert path.exists(), f"{path} is missing: build it with `cargo build --bin keel`"
    return path


class Processes:
    """Child processes a test started, each killed (SIGKILL, by PID) when the test ends."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(
        self, args: list[str], log: pathlib.Path, env: Optional[dict[str, str]] = None
    ) -> subprocess.Popen[bytes]:
        out = open(log, "ab")
        process = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=None if env is None else {**os.environ, **env}
        )
        out.close()
        self.started.append(process)
        return process

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def kill_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                self.kill(process)


@pytest.fixture
def processes() -> Iterator[Processes]:
    started = Processes()
    yield started
    started.kill_all()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def log_lines(log: pathlib.Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def keel_nodes(
    processes: Processes,
    tmp_path: pathlib.Path,
    run_workflows: bool,
    certs: Optional[pathlib.Path] = None,
) -> list[str]:
    """A three-node cluster of `keel node` processes, initialized: their addresses. With
    `certs`, `keel certs` writes a CA and certificates there, the nodes run TLS with
    authentication (and the tokens file `certs/tokens.toml`, which may be empty), and the
    cluster is formed with the admin client certificate."""
    ports = free_ports(3)
    addresses = [f"127.0.0.1:{p}" for p in ports]
    env = dict(os.environ)
    if certs is not None:
        subprocess.run(
            [str(keel_binary()), "certs", "--dir", str(certs), "--nodes", "3"], check=True
        )
        tokens = certs / "tokens.toml"
        if not tokens.exists():
            tokens.write_text("")
        env.update(
            KEEL_CA=str(certs / "ca.pem"),
            KEEL_CERT=str(certs / "client-admin.pem"),
            KEEL_KEY=str(certs / "client-admin.key"),
        )
    for node_id, address in enumerate(addresses, start=1):
        config = tmp_path / f"node-{node_id}.toml"
        security = ""
        if certs is not None:
            security = (
                f'[tls]\ncert = "{certs / f"node-{node_id}.pem"}"\n'
                f'key = "{certs / f"node-{node_id}.key"}"\nca = "{certs / "ca.pem"}"\n'
                f'[auth]\ntokens = "{certs / "tokens.toml"}"\n'
            )
        config.write_text(
            f'node_id = {node_id}\nlisten = "{address}"\n'
            f'data_dir = "{tmp_path / f"node-{node_id}"}"\n'
            f"[scheduler]\nrun_workflows = {str(run_workflows).lower()}\n" + security
        )
        processes.start(
            [str(keel_binary()), "node", "--config", str(config)],
            tmp_path / f"node-{node_id}.out",
        )
    init = [str(keel_binary()), "init", "--cluster", ",".join(addresses)]
    deadline = time.monotonic() + 60
    while True:
        done = subprocess.run(init, capture_output=True, text=True, env=env)
        if done.returncode == 0 or "already part of a cluster" in done.stderr:
            break
        assert time.monotonic() < deadline, f"the keel nodes did not form a cluster: {done}"
        time.sleep(0.1)
    return addresses


class Members:
    """Three `cluster_program.py member` processes forming one cluster (with TLS and
    authentication when given a `keel certs` directory)."""

    def __init__(
        self, processes: Processes, tmp_path: pathlib.Path, certs: Optional[pathlib.Path] = None
    ) -> None:
        self.processes = processes
        self.tmp_path = tmp_path
        self.env = None if certs is None else {"KEEL_TEST_CERTS": str(certs)}
        self.log = tmp_path / "log"
        self.addresses = {i + 1: f"127.0.0.1:{p}" for i, p in enumerate(free_ports(3))}
        self.running: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, node_id: int) -> None:
        args = [
            sys.executable,
            PROGRAM,
            "member",
            str(node_id),
            str(self.tmp_path / f"member-{node_id}"),
            str(self.log),
            json.dumps(self.addresses),
        ]
        self.running[node_id] = self.processes.start(
            args, self.tmp_path / f"member-{node_id}.out", self.env
        )

    def kill(self, node_id: int) -> None:
        self.processes.kill(self.running.pop(node_id))

    def ready(self, node_id: int, launches: int = 1) -> bool:
        """Whether member `node_id` has launched `launches` times."""
        return log_lines(self.log).count(f"ready {node_id}") >= launches
