"""Hub tests: every store-backed test runs on SQLite and on this machine's PostgreSQL
(a fresh schema per test), the fixtures of tests/driver."""

from tests.driver.conftest import postgres_url, store_url, store_url_pair  # noqa: F401
