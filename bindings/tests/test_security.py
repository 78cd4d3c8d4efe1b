"""A cluster of `keel node` processes with TLS and authentication: `keel.connect` and
`keel.Worker` refused without the right credentials, with `keel.PermissionDenied` saying
why, and served with them (a certificate or a token file)."""

from __future__ import annotations

import pathlib
import subprocess

import pytest

import keel
from conftest import Members, Processes, keel_binary, keel_nodes, wait_until

WRITE_TOKEN = "python-write-token-0123"
WORKER_TOKEN = "python-worker-token-0123"

app = keel.App()


@app.step(name="greeting")
def greeting(name: str) -> str:
    return f"hello, {name}"


@app.workflow(name="greet")
def greet(ctx: keel.Context, name: str) -> str:
    return greeting(name)


def token_file(directory: pathlib.Path, name: str, token: str) -> pathlib.Path:
    path = directory / f"{name}.token"
    path.write_text(token + "\n")
    return path


@pytest.fixture
def certs(tmp_path: pathlib.Path) -> pathlib.Path:
    """The certificates directory, with a tokens file of one write and one worker token."""
    directory = tmp_path / "certs"
    directory.mkdir()
    (directory / "tokens.toml").write_text(
        f'[[token]]\nrole = "write"\nvalue = "{WRITE_TOKEN}"\n'
        f'[[token]]\nrole = "worker"\nvalue = "{WORKER_TOKEN}"\n'
    )
    return directory


def test_clients_and_workers_present_certificates_or_tokens_and_are_refused_without(
    processes: Processes, tmp_path: pathlib.Path, certs: pathlib.Path
) -> None:
    nodes = keel_nodes(processes, tmp_path, run_workflows=False, certs=certs)
    ca = certs / "ca.pem"

    anonymous = keel.connect(nodes, ca=ca)
    with pytest.raises(keel.PermissionDenied, match="no credentials"):
        anonymous.start("greet", "nobody", id="refused-1")
    reader = keel.connect(
        nodes, ca=ca, cert=certs / "client-read.pem", key=certs / "client-read.key"
    )
    with pytest.raises(keel.PermissionDenied, match="needs the write role"):
        reader.start("greet", "a reader", id="refused-2")
    stranger = keel.connect(nodes, ca=ca, token_file=token_file(tmp_path, "s", "x" * 20))
    with pytest.raises(keel.PermissionDenied, match="not in this node's tokens file"):
        stranger.start("greet", "a stranger", id="refused-3")
    with pytest.raises(ValueError, match="needs its key"):
        keel.connect(nodes, ca=ca, cert=certs / "client-read.pem")
    with pytest.raises(ValueError, match="over TLS only"):
        keel.connect(nodes, token_file=token_file(tmp_path, "w", WRITE_TOKEN))

    writer = keel.connect(nodes, ca=ca, token_file=token_file(tmp_path, "w", WRITE_TOKEN))
    worker_token = token_file(tmp_path, "worker", WORKER_TOKEN)
    with keel.Worker(app, nodes, ca=ca, token_file=worker_token):
        wait_until(lambda: _declared(writer), "the worker's kinds declared")
        assert writer.start("greet", "keel", id="served").result(timeout=60) == "hello, keel"
    # The read certificate may read what the writer started.
    assert reader.handle("served").result(timeout=10) == "hello, keel"


def _declared(client: keel.Client) -> bool:
    """Whether the cluster takes workflows of kind `greet` (its worker declared it)."""
    try:
        client.start("greet", "warm-up", id="warm-up")
    except keel.NotFound:
        return False
    return True


def test_an_app_with_a_node_certificate_serves_tls_and_refuses_anonymous_callers(
    tmp_path: pathlib.Path, certs: pathlib.Path
) -> None:
    subprocess.run([str(keel_binary()), "certs", "--dir", str(certs), "--nodes", "1"], check=True)
    ca = certs / "ca.pem"
    with pytest.raises(ValueError, match="needs ca, cert and key together"):
        keel.App(tmp_path / "bad", ca=ca)
    secured = keel.App(
        tmp_path / "app",
        ca=ca,
        cert=certs / "node-1.pem",
        key=certs / "node-1.key",
        tokens=certs / "tokens.toml",
    )

    @secured.workflow(name="double")
    def double(ctx: keel.Context, n: int) -> int:
        return 2 * n

    with secured:
        # The app's own client presents its node certificate, which may start workflows.
        assert secured.start("double", 21, id="own").result(timeout=30) == 42
        address = secured.address
        with pytest.raises(keel.PermissionDenied, match="no credentials"):
            keel.connect(address, ca=ca).start("double", 1, id="anonymous")
        writer = keel.connect(address, ca=ca, token_file=token_file(tmp_path, "w", WRITE_TOKEN))
        assert writer.start("double", 4, id="by-token").result(timeout=30) == 8


def test_python_members_with_node_certificates_form_a_tls_cluster_and_serve_clients(
    processes: Processes, tmp_path: pathlib.Path, certs: pathlib.Path
) -> None:
    subprocess.run([str(keel_binary()), "certs", "--dir", str(certs), "--nodes", "3"], check=True)
    members = Members(processes, tmp_path, certs)
    for node_id in (1, 2, 3):
        members.start(node_id)
    # Forming the cluster (init), the members' own workers and clients all present their
    # node certificates to each other.
    wait_until(lambda: all(members.ready(i) for i in (1, 2, 3)), "the members' launch")
    addresses = list(members.addresses.values())
    writer = keel.connect(
        addresses, ca=certs / "ca.pem", cert=certs / "client-write.pem", key=certs / "client-write.key"
    )
    assert writer.start("pipeline", 3, 0.0, id="tls-members").result(timeout=60) == 3
    with pytest.raises(keel.PermissionDenied, match="no credentials"):
        keel.connect(addresses, ca=certs / "ca.pem").start("pipeline", 1, 0.0, id="anonymous")
