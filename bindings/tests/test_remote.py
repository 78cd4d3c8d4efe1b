"""Calls between clusters from Python: two single-node apps, each a cluster of its own,
``research`` calling ``writing`` with ``ctx.call_remote`` (sync and async), a failure there
raised here, a deadline that times the call out here and cancels it there, and a callee
with TLS and authentication that serves the caller's certificate and refuses another's."""

from __future__ import annotations

import pathlib
import subprocess
import time
from datetime import timedelta
from typing import Iterator

import pytest

import keel
from conftest import keel_binary


@pytest.fixture
def writing(tmp_path: pathlib.Path) -> Iterator[keel.App]:
    app = keel.App(
        tmp_path / "writing",
        cluster="writing",
        remotes={"research": keel.Remote(expose=["draft", "stuck"])},
    )

    @app.workflow(name="draft")
    def draft(ctx: keel.Context, topic: str, words: int) -> str:
        if words <= 0:
            raise ValueError("nothing to write")
        return f"a {words}-word draft on {topic}"

    @app.workflow(name="stuck")
    def stuck(ctx: keel.Context) -> None:
        ctx.wait_signal("never")

    app.launch()
    yield app
    app.close()


def research_app(tmp_path: pathlib.Path, writing: keel.App) -> keel.App:
    return keel.App(
        tmp_path / "research",
        cluster="research",
        remotes={"writers": keel.Remote(cluster="writing", addresses=[writing.address])},
    )


def test_a_workflow_calls_a_workflow_in_another_cluster(
    tmp_path: pathlib.Path, writing: keel.App
) -> None:
    research = research_app(tmp_path, writing)

    @research.workflow
    def brief(ctx: keel.Context, topic: str) -> str:
        text: str = ctx.call_remote("writers", "draft", topic, 300, type=str)
        return text.upper()

    @research.workflow
    async def brief_async(ctx: keel.AsyncContext, topic: str) -> str:
        text: str = await ctx.call_remote("writers", "draft", topic, 5)
        return text

    @research.workflow
    def empty(ctx: keel.Context) -> str:
        try:
            ctx.call_remote("writers", "draft", "nothing", 0)
        except keel.WorkflowFailed as failure:
            return f"failed there: {failure}"
        return "no failure"

    with research:
        assert research.start(brief, "raft").result(timeout=30) == "A 300-WORD DRAFT ON RAFT"
        assert research.start(brief_async, "paxos").result(timeout=30) == "a 5-word draft on paxos"
        assert "failed there" in research.start(empty).result(timeout=30)
        inbound = [w for w in writing.list() if w.id.startswith("@research.")]
        assert len(inbound) == 3, "one workflow there per call"


def test_a_deadline_times_the_call_out_and_cancels_it_there(
    tmp_path: pathlib.Path, writing: keel.App
) -> None:
    research = research_app(tmp_path, writing)

    @research.workflow
    def impatient(ctx: keel.Context) -> str:
        try:
            ctx.call_remote("writers", "stuck", deadline=timedelta(seconds=1))
        except keel.Timeout:
            return "timed out"
        return "answered"

    with research:
        assert research.start(impatient).result(timeout=30) == "timed out"
        for _ in range(100):
            inbound = [w for w in writing.list() if w.id.startswith("@research.")]
            if inbound and inbound[0].status == "cancelled":
                break
            time.sleep(0.1)
        assert [w.status for w in inbound] == ["cancelled"]


def test_a_remote_with_tls_and_auth_accepts_only_the_certificate_issued_for_the_caller(
    tmp_path: pathlib.Path,
) -> None:
    certs = tmp_path / "certs"
    subprocess.run(
        [str(keel_binary()), "certs", "--dir", str(certs), "--nodes", "1", "--remote", "research,intruder"],
        check=True,
        capture_output=True,
    )
    (certs / "tokens.toml").write_text("")
    writing = keel.App(
        tmp_path / "writing",
        cluster="writing",
        remotes={"research": keel.Remote(expose=["draft"])},
        ca=certs / "ca.pem",
        cert=certs / "node-1.pem",
        key=certs / "node-1.key",
        tokens=certs / "tokens.toml",
    )

    @writing.workflow(name="draft")
    def draft(ctx: keel.Context, topic: str) -> str:
        return f"a draft on {topic}"

    def research_as(name: str) -> keel.App:
        return keel.App(
            tmp_path / name,
            cluster="research",
            remotes={
                "writers": keel.Remote(
                    cluster="writing",
                    addresses=[writing.address],
                    ca=certs / "ca.pem",
                    cert=certs / f"remote-{name}.pem",
                    key=certs / f"remote-{name}.key",
                )
            },
        )

    with writing:
        for name, expected in [("research", "a draft on tls"), ("intruder", "refused")]:
            research = research_as(name)

            @research.workflow(name="brief")
            def brief(ctx: keel.Context, topic: str) -> str:
                try:
                    text: str = ctx.call_remote(
                        "writers", "draft", topic, deadline=timedelta(seconds=3)
                    )
                    return text
                except keel.Timeout:
                    return "refused"

            with research:
                assert research.start(brief, "tls").result(timeout=30) == expected, name
