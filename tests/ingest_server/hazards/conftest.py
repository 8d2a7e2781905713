"""Fixtures for the hazard tests: a warnings database on SQLite or in a fresh PostgreSQL schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.postgres import fresh_schema


@pytest.fixture(params=["sqlite", "postgresql"])
def warnings_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[sa.Engine, str | None]]:
    """(engine, schema): a SQLite file, or PostgreSQL with a schema of the test's own."""
    if request.param == "sqlite":
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'index.sqlite'}")
        yield engine, None
        engine.dispose()
        return
    with fresh_schema(request.getfixturevalue("postgres_url"), "cvis_hz") as (engine, schema):
        yield engine, schema
