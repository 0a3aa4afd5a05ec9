"""The tower's store runs on SQLite and on PostgreSQL (the driver's store fixtures)."""

from tests.driver.conftest import postgres_url, store_url  # noqa: F401
