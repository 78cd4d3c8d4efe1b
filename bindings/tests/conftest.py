"""Shared fixtures: an App in a fresh temporary data directory, closed after the test."""

from __future__ import annotations

import os
import pathlib
from typing import Iterator

import pytest

import keel

REPO = pathlib.Path(__file__).resolve().parents[2]


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
