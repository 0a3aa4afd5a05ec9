"""The driver's tables: channels (encrypted snapshots), watches, secrets, meta.

Revision ID: driver_0001
Revises: (root of the ``driver`` branch)
"""

import sqlalchemy as sa
from alembic import op

revision = "driver_0001"
down_revision = None
branch_labels = ("driver",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "driver_meta",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "driver_channels",
        sa.Column("channel_key", sa.LargeBinary(16), primary_key=True),
        sa.Column("peer_node_id", sa.LargeBinary(33), nullable=False),
        sa.Column("channel_id", sa.LargeBinary(32), nullable=False),
        sa.Column("update_id", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("snapshot", sa.LargeBinary, nullable=False),
        sa.UniqueConstraint("peer_node_id", "channel_id", name="uq_driver_channels_peer_id"),
    )
    op.create_index("ix_driver_channels_peer", "driver_channels", ["peer_node_id"])
    op.create_table(
        "driver_watches",
        sa.Column("watch_id", sa.Integer, primary_key=True, autoincrement=True),
        # No foreign key: a Watch may be stored in the same batch as (and before) the
        # first Persist of its channel.
        sa.Column("channel_key", sa.LargeBinary(16), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("txid", sa.LargeBinary(32), nullable=False),
        sa.Column("record", sa.Text, nullable=False),
        sa.UniqueConstraint("channel_key", "kind", "txid", name="uq_driver_watches"),
    )
    op.create_table(
        "driver_secrets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("blob", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("driver_secrets")
    op.drop_table("driver_watches")
    op.drop_index("ix_driver_channels_peer", "driver_channels")
    op.drop_table("driver_channels")
    op.drop_table("driver_meta")
