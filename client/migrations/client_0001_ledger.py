"""The client's ledger: invoices, payments (one record each, sent or received),
its durable gapless event log, and small named values (the hub's event cursor).

Revision ID: client_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "client_0001"
down_revision = None
branch_labels = ("client",)
depends_on = "driver_0001"


def upgrade() -> None:
    op.create_table(
        "client_invoices",
        sa.Column("payment_hash", sa.LargeBinary(32), primary_key=True),
        sa.Column("bolt11", sa.Text, nullable=False),
        sa.Column("preimage_blob", sa.LargeBinary, nullable=False),  # sealed
        sa.Column("amount_msat", sa.BigInteger, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("paid_msat", sa.BigInteger, nullable=False),
        sa.Column("paid_payment_id", sa.String(32), nullable=True),
        sa.Column("created_unix", sa.BigInteger, nullable=False),
        sa.Column("expires_unix", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "client_payments",
        sa.Column("payment_id", sa.String(32), primary_key=True),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=True, unique=True),
        sa.Column("payment_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("counterparty_node_id", sa.LargeBinary(33), nullable=True),
        sa.Column("amount_msat", sa.BigInteger, nullable=False),
        sa.Column("fee_msat", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("payment_preimage", sa.LargeBinary(32), nullable=True),
        sa.Column("bolt11", sa.Text, nullable=True),
        sa.Column("packet", sa.LargeBinary, nullable=True),
        sa.Column("channel_key", sa.LargeBinary(16), nullable=True),
        sa.Column("refund_of_payment_id", sa.String(32), nullable=True),
        sa.Column("refunded_msat", sa.BigInteger, nullable=False),
        sa.Column("failure_code", sa.Integer, nullable=False),
        sa.Column("failure_message", sa.Text, nullable=False),
        sa.Column("created_unix", sa.BigInteger, nullable=False),
        sa.Column("resolved_unix", sa.BigInteger, nullable=False),
    )
    op.create_index("client_payments_hash", "client_payments", ["payment_hash", "direction"])
    op.create_table(
        "client_events",
        sa.Column("sequence", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("payment_id", sa.String(32), nullable=True),
        sa.Column("amount_msat", sa.BigInteger, nullable=False),
        sa.Column("created_unix", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "client_meta",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for table in ("client_meta", "client_events", "client_payments", "client_invoices"):
        op.drop_table(table)
