"""A test branch standing in for the hub's or the client's own tables.

Revision ID: app_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "app_0001"
down_revision = None
branch_labels = ("app",)
depends_on = "driver_0001"


def upgrade() -> None:
    op.create_table(
        "app_payments",
        sa.Column("payment_id", sa.Integer, primary_key=True),
        sa.Column("channel_key", sa.LargeBinary(16),
                  sa.ForeignKey("driver_channels.channel_key"), nullable=False),
        sa.Column("amount_msat", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("app_payments")
