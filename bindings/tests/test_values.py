"""Values: JSON by default, read back into the hinted types; the first run sees exactly what
a replay will; other serializers are opt-in and tagged in the journal."""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

import pydantic

import keel


@dataclasses.dataclass
class Page:
    url: str
    words: int
    tags: list[str]


@dataclasses.dataclass
class Report:
    pages: list[Page]
    best: Optional[Page]


def test_dataclasses_round_trip_through_arguments_steps_and_results(app: keel.App) -> None:
    @app.step
    def fetch(url: str) -> Page:
        return Page(url, len(url), ["a"])

    @app.workflow
    def crawl(ctx: keel.Context, urls: list[str]) -> Report:
        pages = [fetch(u) for u in urls]
        assert all(isinstance(p, Page) for p in pages)
        return Report(pages, max(pages, key=lambda p: p.words))

    report = app.start(crawl, ["x.io", "longer.io"]).result(timeout=10)
    assert isinstance(report, Report) and isinstance(report.best, Page)
    assert report.best.url == "longer.io"
    assert [p.words for p in report.pages] == [4, 9]


def test_the_first_run_sees_the_decoded_value_a_replay_would(app: keel.App) -> None:
    seen: list[object] = []

    @app.step
    def unhinted():  # type: ignore[no-untyped-def]
        return {"pair": (1, 2)}

    @app.workflow
    def looks(ctx: keel.Context) -> None:
        seen.append(unhinted())
        ctx.sleep(0.01)

    app.start(looks).result(timeout=10)
    assert seen == [{"pair": [1, 2]}, {"pair": [1, 2]}], "a tuple is a JSON list on every run"


def test_values_are_plain_json_in_the_journal(app: keel.App) -> None:
    @app.workflow
    def echo(ctx: keel.Context, value: dict[str, int]) -> dict[str, int]:
        return value

    handle = app.start(echo, {"a": 1})
    handle.result(timeout=10)
    info = app._client().get(handle.id)
    assert json.loads(info["result"]) == {"a": 1}


def test_a_pickle_serializer_is_opt_in_and_tags_its_values(data_dir: object) -> None:
    import pathlib

    assert isinstance(data_dir, pathlib.Path)
    app = keel.App(data_dir=data_dir, serializer=keel.PickleSerializer())

    @app.workflow
    def keeps(ctx: keel.Context, value: frozenset[int]) -> frozenset[int]:
        return value

    with app:
        handle = app.start(keeps, frozenset({3, 4}))
        assert handle.result(timeout=10) == frozenset({3, 4})
        assert app._client().get(handle.id)["result"].startswith(b"\x00pickle\x00")


class Answer(pydantic.BaseModel):
    text: str
    score: float


def test_pydantic_models_round_trip_by_type_hint(app: keel.App) -> None:
    @app.step
    def ask(question: str) -> Answer:
        return Answer(text=question.upper(), score=0.5)

    @app.workflow
    def answers(ctx: keel.Context, question: str) -> Answer:
        answer = ask(question)
        assert isinstance(answer, Answer)
        return answer

    result = app.start(answers, "why").result(timeout=10)
    assert result == Answer(text="WHY", score=0.5)
