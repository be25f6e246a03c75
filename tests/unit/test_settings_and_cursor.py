"""Pure logic of the foundation: settings parsing, the list cursor, JSON-safe events."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from api.routes.jobs import decode_cursor, encode_cursor
from db.session import sqlalchemy_url
from traindepot.events import channel, json_safe
from traindepot.problems import SpecInvalid
from traindepot.settings import Settings


def test_allowed_paths_are_split_and_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINDEPOT_ALLOWED_PATHS", "/data/a, ~/b,")
    monkeypatch.setenv("HOME", "/home/someone")
    settings = Settings()
    assert settings.allowed_paths == [Path("/data/a"), Path("/home/someone/b")]


def test_missing_urls_name_the_variable() -> None:
    settings = Settings(database_url=None, redis_url=None)
    with pytest.raises(RuntimeError, match="TRAINDEPOT_DATABASE_URL"):
        settings.require_database_url()
    with pytest.raises(RuntimeError, match="TRAINDEPOT_REDIS_URL"):
        settings.require_redis_url()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
    ],
)
def test_database_urls_use_psycopg3(given: str, expected: str) -> None:
    assert sqlalchemy_url(given) == expected


def test_cursor_round_trip() -> None:
    created = datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC)
    job = SimpleNamespace(created_at=created, id=uuid.uuid4())
    cursor = decode_cursor(encode_cursor(job))  # type: ignore[arg-type]
    assert (cursor.created_at, cursor.id) == (job.created_at, job.id)


@pytest.mark.parametrize("bad", ["", "x", "bm90IGEgY3Vyc29y", "%%%"])
def test_bad_cursor_is_a_spec_problem_naming_the_parameter(bad: str) -> None:
    with pytest.raises(SpecInvalid) as info:
        decode_cursor(bad)
    assert info.value.problems[0].loc == ("query", "cursor")


def test_json_safe_replaces_non_finite_numbers() -> None:
    value = {"loss": math.nan, "grad_norm": math.inf, "ok": 1.5, "nested": [-math.inf, 2]}
    assert json_safe(value) == {"loss": None, "grad_norm": None, "ok": 1.5, "nested": [None, 2]}
    assert channel("abc") == "job:abc"
