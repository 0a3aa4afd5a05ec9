"""Store fixtures: every store test runs on SQLite (a file in tmp_path) and on the
PostgreSQL server of this machine (a fresh schema per test, dropped afterwards)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from protocol.driver.crypto import Passphrase
from protocol.driver.db import sqlite_url

POSTGRES_SERVER = os.environ.get("CHANHUB_TEST_POSTGRES",
                                 "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# scrypt at 2**10 in tests: the cost parameter is exercised, the seconds are not.
TEST_PASSPHRASE = Passphrase("correct horse battery staple", scrypt_n=2**10)


def postgres_schema_url(schema: str) -> str:
    return f"{POSTGRES_SERVER}?options=-csearch_path%3D{schema}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    schema = f"driver_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_SERVER, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield postgres_schema_url(schema)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "store.sqlite")
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url_pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two separate stores (one per party) of the same kind."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "a.sqlite"), sqlite_url(tmp_path / "b.sqlite")
        return
    schemas = [f"driver_test_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    admin = sa.create_engine(POSTGRES_SERVER, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for schema in schemas:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield postgres_schema_url(schemas[0]), postgres_schema_url(schemas[1])
    finally:
        with admin.connect() as conn:
            for schema in schemas:
                conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()
