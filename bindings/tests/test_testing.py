"""`keel.testing`: the in-process test cluster — a one-day timeout tested in about a second,
never-early timers under skipped time, a leader killed during a child call, a session and a
running workflow surviving a skipped day, a member restarted."""

from __future__ import annotations

import datetime
import pathlib
import threading
import time
from typing import Optional

import pytest

import keel
import keel.testing

DAY = datetime.timedelta(days=1)

app = keel.App(data_dir="unused-by-the-test-cluster")
bodies: list[str] = []
bodies_lock = threading.Lock()


@app.step
def record(name: str) -> str:
    with bodies_lock:
        bodies.append(name)
    return name


@app.workflow
def approval(ctx: keel.Context, request: str) -> str:
    """Waits a day for a human's approval, then gives up."""
    decision: Optional[str] = ctx.wait_signal("decision", timeout=DAY)
    return f"{request}: {decision or 'expired'}"


@app.workflow
def reminder(ctx: keel.Context, text: str) -> str:
    record(f"remind-before {text}")
    ctx.sleep(DAY)
    return record(f"remind-after {text}")


@app.workflow
def researcher(ctx: keel.Context, topic: str) -> str:
    notes = record(f"notes {topic}")
    ctx.sleep(DAY)
    return record(f"summary {notes}")


@app.workflow
def agent(ctx: keel.Context, topic: str) -> str:
    """Calls `researcher` as a child: the leader is killed while the child runs."""
    plan = record(f"plan {topic}")
    return f"{plan} -> {ctx.call(researcher, topic)}"


@app.workflow
def clock_reader(ctx: keel.Context) -> float:
    ctx.wait_signal("go")
    return ctx.now().timestamp()


@pytest.fixture(autouse=True)
def fresh_bodies() -> None:
    with bodies_lock:
        bodies.clear()


def test_a_one_day_timeout_is_tested_in_about_a_second() -> None:
    with keel.testing.cluster(app) as c:
        handle = app.start(approval, "deploy", id="approval-1")
        started = time.monotonic()
        c.advance(DAY)
        assert handle.result(timeout=5) == "deploy: expired"
        took = time.monotonic() - started
    # The whole test, launch included, took about 1 s here (debug build,
    # `pytest bindings/tests/test_testing.py --durations=5`); the bound leaves room for a
    # loaded CI.
    assert took < 2, f"skipping a day took {took:.2f} s"
    assert not pathlib.Path("unused-by-the-test-cluster").exists()


def test_a_timer_never_fires_before_its_due_time_on_the_skipped_clock() -> None:
    with keel.testing.cluster(app) as c:
        handle = app.start(reminder, "renew", id="reminder-1")
        c.advance(datetime.timedelta(hours=23, minutes=59))
        assert handle.status() == "running"
        assert [e.kind for e in handle.journal()] == ["step", "sleep"]
        assert handle.journal()[1].state == "pending"
        c.advance(datetime.timedelta(minutes=1))
        assert handle.result(timeout=5) == "remind-after renew"
    assert bodies == ["remind-before renew", "remind-after renew"]


def test_a_leader_killed_during_a_child_call_and_a_skipped_day_complete_the_call_once() -> None:
    started = time.monotonic()
    with keel.testing.cluster(app) as c:
        launched = time.monotonic()
        handle = app.start(agent, "tides", id="agent-1")
        # Settled: the child journaled its first step and sleeps for a day, the parent
        # waits for it.
        c.settle()
        assert [e.kind for e in app.handle("agent-1/1").journal()] == ["step", "sleep"]
        killed = c.kill_leader()
        assert killed not in c.running
        c.advance(DAY)
        assert handle.result(timeout=5) == "plan tides -> summary notes tides"
        child = app.handle("agent-1/1")
        assert child.status() == "completed"
        # A completed step never ran again; the killed member restarts and rejoins.
        assert bodies.count("plan tides") == 1
        assert bodies.count("notes tides") == 1
        # The bar for a user's test with a day-scale sleep and a leader kill (this
        # debug build, on a loaded machine, included): launch to result.
        took = time.monotonic() - started
        print(f"launch {launched - started:.2f} s, then {time.monotonic() - launched:.2f} s")
        assert took < 5, f"the test took {took:.2f} s"
        c.restart(killed)
        assert sorted(c.running) == [1, 2, 3]
        assert app.start(reminder, "again", id="reminder-2").status() == "running"


def test_a_client_session_and_a_running_workflow_survive_a_skipped_day() -> None:
    with keel.testing.cluster(app) as c:
        reader = app.start(clock_reader, id="clock")
        # The app's client spreads signals over 8 exactly-once sessions, registering each
        # at its first signal: all 8 are registered before the skip.
        for i in range(8):
            assert reader.signal(f"warm-up-{i}", i)
        before = time.time()
        c.advance(DAY)
        assert c.skipped >= DAY.total_seconds()
        assert reader.status() == "running"
        # Signals in the sessions registered a day earlier are applied, and the workflow
        # that waited through the day goes on, its clock following the skipped one.
        for i in range(8):
            assert reader.signal(f"after-{i}", i)
        assert reader.signal("go")
        assert reader.result(timeout=5) >= before + DAY.total_seconds()
    assert keel._native.skipped_time() == 0, "the block's end undid the skip"


def test_inside_the_block_the_app_launches_no_node_of_its_own() -> None:
    with keel.testing.cluster(app, nodes=1):
        with pytest.raises(keel.KeelError, match="no node of its own"):
            app.launch()


def test_a_partition_moves_leadership_to_the_majority_and_healing_rejoins_the_minority() -> None:
    with keel.testing.cluster(app) as c:
        handle = app.start(reminder, "fence", id="reminder-p")
        c.settle()
        old = c.leader_id()
        others = [n for n in c.running if n != old]
        c.partition([old], others)
        deadline = time.monotonic() + 20
        while (new := c.leader_id()) == old:
            assert time.monotonic() < deadline, "the majority never elected a leader"
            time.sleep(0.02)
        assert new in others
        c.heal()
        deadline = time.monotonic() + 20
        while not any(
            n.node_id == old and n.role == "follower" and n.leader_id == new
            for n in c.client.nodes()
        ):
            assert time.monotonic() < deadline, f"node {old} never followed: {c.client.nodes()}"
            time.sleep(0.02)
        c.advance(DAY)
        assert handle.result(timeout=5) == "remind-after fence"
    # The new leader replayed the journaled step: no body ran twice.
    assert bodies == ["remind-before fence", "remind-after fence"]
