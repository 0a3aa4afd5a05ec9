"""The watchtower's store: registered clients, their sealed appointments, the breaches
found on chain, and small named values (the chain position and broadcaster state).

Revision ID: tower_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "tower_0001"
down_revision = None
branch_labels = ("tower",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tower_clients",
        sa.Column("node_id", sa.LargeBinary(33), primary_key=True),
        sa.Column("max_appointments", sa.BigInteger, nullable=False),
        sa.Column("registered_unix", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "tower_appointments",
        sa.Column("client_node_id", sa.LargeBinary(33),
                  sa.ForeignKey("tower_clients.node_id"), primary_key=True),
        sa.Column("locator", sa.LargeBinary(16), primary_key=True),
        sa.Column("nonce", sa.LargeBinary(12), nullable=False),
        sa.Column("encrypted_blob", sa.LargeBinary, nullable=False),
        sa.Column("stored_unix", sa.BigInteger, nullable=False),
    )
    op.create_index("tower_appointments_by_locator", "tower_appointments", ["locator"])
    op.create_table(
        "tower_meta",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tower_meta")
    op.drop_index("tower_appointments_by_locator", "tower_appointments")
    op.drop_table("tower_appointments")
    op.drop_table("tower_clients")
