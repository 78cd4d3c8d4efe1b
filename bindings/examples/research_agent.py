"""A research agent that survives being killed: a stand-in LLM plans searches, tools run them,
the agent cools down on a durable timer, waits for a reviewer's approval (a signal), and a
child workflow writes the report.

Run it, kill it with SIGKILL at any point, run it again: it resumes where it stopped, and no
step that completed runs again (each step's body appends a line to keel-data/steps.log).

    python bindings/examples/research_agent.py [topic]
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import keel

DATA_DIR = Path("keel-data")
app = keel.App(data_dir=DATA_DIR)


def log_step(line: str) -> None:
    """What a step body did, for you (and the README's test) to read."""
    print(f"  [step] {line}", flush=True)
    with open(DATA_DIR / "steps.log", "a") as file:
        file.write(line + "\n")


@dataclasses.dataclass
class Finding:
    query: str
    source: str
    summary: str


@app.step(retries=3, backoff=timedelta(seconds=1))
def plan(topic: str) -> list[str]:
    """The stand-in LLM: turns a topic into search queries."""
    log_step(f"plan {topic}")
    return [f"{topic} {aspect}" for aspect in ("history", "algorithms", "failures")]


@app.step(retries=3, backoff=timedelta(seconds=1), timeout=timedelta(seconds=30))
def search(query: str) -> Finding:
    """A stand-in search tool."""
    log_step(f"search {query}")
    time.sleep(0.2)  # the network
    return Finding(query, f"https://example.org/{query.replace(' ', '-')}", f"notes on {query}")


@app.step
def draft(topic: str, findings: list[Finding]) -> str:
    """The stand-in LLM again: writes the report from the findings."""
    log_step(f"draft {topic}")
    lines = [f"# {topic}"] + [f"- {f.summary} ({f.source})" for f in findings]
    return "\n".join(lines)


@app.workflow
def write_report(ctx: keel.Context, topic: str, findings: list[Finding]) -> str:
    """A child workflow: its own journal, its own id (`<parent>/<position>`)."""
    return draft(topic, findings)


@app.workflow
def research(ctx: keel.Context, topic: str) -> str:
    queries = plan(topic)
    findings = [search(q) for q in queries]
    ctx.sleep(timedelta(seconds=15))  # a cool-down on a durable timer
    approved = ctx.wait_signal("approve", timeout=timedelta(days=1))
    if not approved:
        return "the reviewer rejected the plan"
    return ctx.call(write_report, topic, findings)


def reviewer(handle: keel.WorkflowHandle) -> None:
    """Stands in for a human who approves the plan a little later (a signal sent before the
    workflow waits for it is kept until it does)."""
    time.sleep(1)
    handle.signal("approve", True)


def main() -> None:
    topic = sys.argv[1] if len(sys.argv) > 1 else "raft"
    with app:
        workflow_id = f"research-{topic}"
        existing = [w for w in app.list() if w.id == workflow_id]
        if existing:
            print(f"resuming {workflow_id} ({existing[0].journal_len} calls journaled)")
        else:
            print(f"starting {workflow_id}")
        handle = app.start(research, topic, id=workflow_id)
        print("(after its searches it cools down for 15 s: kill it then, and run it again)")
        threading.Thread(target=reviewer, args=(handle,), daemon=True).start()
        print(handle.result(timeout=120))


if __name__ == "__main__":
    main()
