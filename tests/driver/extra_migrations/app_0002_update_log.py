"""A test table written in the same transaction as every channel snapshot (crash test).

Revision ID: app_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "app_0002"
down_revision = "app_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "app_update_log",
        sa.Column("channel_key", sa.LargeBinary(16), primary_key=True),
        sa.Column("update_id", sa.BigInteger, primary_key=True),
    )


def downgrade() -> None:
    op.drop_table("app_update_log")
