"""alembic environment for the driver's store, run programmatically by
``protocol.driver.db.migrate``: the caller hands over an open connection (in a
transaction) through ``config.attributes["connection"]``; there is no alembic.ini and
no offline (SQL script) mode."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None)
with context.begin_transaction():
    context.run_migrations()
