"""Received payments keep the payer's node id as the payer stated it in its packet
(version 2 packets), where ``Refund`` sends money back. Rows received before, and
payments from payers that do not state it, are NULL.

Revision ID: client_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "client_0002"
down_revision = "client_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("client_payments") as batch:  # SQLite cannot ALTER in place
        batch.add_column(sa.Column("payer_node_id", sa.LargeBinary(33), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("client_payments") as batch:
        batch.drop_column("payer_node_id")
