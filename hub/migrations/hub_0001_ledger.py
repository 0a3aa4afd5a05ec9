"""The hub's ledger: clients, forwards (one record per routed payment), the per-client
event log, settings (fee policy) and inbound orders.

Revision ID: hub_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "hub_0001"
down_revision = None
branch_labels = ("hub",)
depends_on = "driver_0001"


def upgrade() -> None:
    op.create_table(
        "hub_clients",
        sa.Column("node_id", sa.LargeBinary(33), primary_key=True),
        sa.Column("first_seen_unix", sa.BigInteger, nullable=False),
        sa.Column("last_seen_unix", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "hub_forwards",
        sa.Column("payment_id", sa.String(32), primary_key=True),
        sa.Column("payer_node_id", sa.LargeBinary(33), nullable=False),
        sa.Column("incoming_channel_key", sa.LargeBinary(16), nullable=False),
        sa.Column("incoming_htlc_id", sa.BigInteger, nullable=False),
        sa.Column("payee_node_id", sa.LargeBinary(33), nullable=True),
        sa.Column("outgoing_channel_key", sa.LargeBinary(16), nullable=True),
        sa.Column("outgoing_htlc_id", sa.BigInteger, nullable=True),
        sa.Column("payment_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("amount_in_msat", sa.BigInteger, nullable=False),
        sa.Column("amount_out_msat", sa.BigInteger, nullable=False),
        sa.Column("cltv_in", sa.BigInteger, nullable=False),
        sa.Column("cltv_out", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("payment_preimage", sa.LargeBinary(32), nullable=True),
        sa.Column("fee_msat", sa.BigInteger, nullable=False),
        sa.Column("failure_reason", sa.Integer, nullable=False),
        sa.Column("failure_message", sa.Text, nullable=False),
        sa.Column("failure_blob", sa.LargeBinary, nullable=True),
        sa.Column("created_at_unix", sa.BigInteger, nullable=False),
        sa.Column("resolved_at_unix", sa.BigInteger, nullable=False),
    )
    # One record per incoming HTLC that is still unresolved (an HTLC id can come back
    # after a reverted add, but never twice while in flight): enforced in the router.
    op.create_index("hub_forwards_incoming", "hub_forwards",
                    ["incoming_channel_key", "incoming_htlc_id"])
    op.create_index("hub_forwards_outgoing", "hub_forwards",
                    ["outgoing_channel_key", "outgoing_htlc_id"])
    op.create_index("hub_forwards_state", "hub_forwards", ["state"])
    op.create_index("hub_forwards_payer", "hub_forwards", ["payer_node_id"])
    op.create_index("hub_forwards_payee", "hub_forwards", ["payee_node_id"])
    op.create_table(
        "hub_events",
        sa.Column("client_node_id", sa.LargeBinary(33), primary_key=True),
        sa.Column("sequence", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("created_at_unix", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "hub_settings",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "hub_inbound_orders",
        sa.Column("order_id", sa.String(32), primary_key=True),
        sa.Column("client_node_id", sa.LargeBinary(33), nullable=False),
        sa.Column("idempotency_key", sa.String(64), nullable=False),
        sa.Column("request", sa.LargeBinary, nullable=False),
        sa.Column("state", sa.Integer, nullable=False),
        sa.Column("channel_key", sa.LargeBinary(16), nullable=True),
        sa.Column("failure_reason", sa.Text, nullable=False),
        sa.Column("created_at_unix", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("client_node_id", "idempotency_key",
                            name="hub_inbound_orders_idempotency"),
    )


def downgrade() -> None:
    for table in ("hub_inbound_orders", "hub_settings", "hub_events", "hub_forwards",
                  "hub_clients"):
        op.drop_table(table)
