"""A refund goes back to the payer without the payee naming it: the payer's node id rides
in the payee payload (version 2 packets); an old-format (version 1) packet still pays,
and its refund needs the destination named; a refund above what was received changes
nothing. A real hub in-process, SDK parties over memory links, the embedded node."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import trio
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

import client.node as client_node
from channel.keys import pubkey_from_secret
from client import errors, ledger
from client.node import ClientNode
from protocol.driver.db import Database, migrate, sqlite_url
from protocol.routing import PayeePayload, _ecdh
from regtest.node import Node
from tests.client.test_payments import setup
from tests.client.world import World


def build_v1_packet(*, payee_node_id: bytes, amount_to_forward_msat: int,
                    outgoing_cltv_value: int, payment_hash: bytes, payload: PayeePayload,
                    ephemeral_secret: bytes) -> bytes:
    """What a payer built before version 2 (docs/payment-format.md, version 1): 200
    bytes, no payer node id. Written from the document, not from the encoder."""
    ephemeral_pubkey = pubkey_from_secret(ephemeral_secret)
    header = (b"\x01" + payee_node_id + amount_to_forward_msat.to_bytes(8, "big")
              + outgoing_cltv_value.to_bytes(4, "big") + ephemeral_pubkey)
    flags = (1 if payload.payment_preimage else 0) | (2 if payload.refund_of_payment_hash else 0)
    plaintext = (bytes((flags,)) + payload.total_amount_msat.to_bytes(8, "big")
                 + (payload.payment_secret or bytes(32)) + (payload.payment_preimage or bytes(32))
                 + (payload.refund_of_payment_hash or bytes(32)))
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"chanhub/onion/v1",
               info=ephemeral_pubkey + payee_node_id + payment_hash).derive(
                   _ecdh(ephemeral_secret, payee_node_id))
    return header + ChaCha20Poly1305(key).encrypt(
        bytes(12), plaintext, b"chanhub/payee-payload/v1" + payment_hash + header)


def received(client: ClientNode) -> dict[str, Any]:
    return next(p for p in client.payments() if p["direction"] == ledger.RECEIVED)


def stored_rows(client: ClientNode) -> list[dict[str, Any]]:
    return client.db.read_sync(ledger.all_payments)


async def settle(world: World, *clients: ClientNode) -> None:
    for c in clients:
        await c.session.idle()
    await world.hub.drain()


async def test_refund_without_naming_anyone_reaches_the_payer_linked_to_the_original(
        regtest_node: Node, tmp_path: Path, autojump_clock: Any) -> None:
    world = World(regtest_node, tmp_path, sqlite_url(tmp_path / "hub.sqlite"))
    async with trio.open_nursery() as nursery:
        alice, bob = await setup(world, nursery)
        bolt11 = await bob.add_invoice(20_000_000, "refundable")
        sent = await alice.wait_payment(
            (await alice.pay(idempotency_key="buy", bolt11=bolt11))["payment_id"])
        assert sent["state"] == ledger.SUCCEEDED
        original = received(bob)
        assert original["payer_node_id"] == alice.node_id
        await settle(world, alice, bob)
        a0, b0 = alice.balance_msat(), bob.balance_msat()

        refund = await bob.refund(original["payment_id"], 5_000_000, idempotency_key="back")
        done = await bob.wait_payment(refund["payment_id"])
        assert done["state"] == ledger.SUCCEEDED, done["failure_message"]
        assert done["counterparty_node_id"] == alice.node_id
        assert done["refund_of_payment_id"] == original["payment_id"]
        await settle(world, alice, bob)
        assert alice.balance_msat() == a0 + 5_000_000
        assert bob.balance_msat() == b0 - 5_000_000 - done["fee_msat"]
        # Alice's side: a refund received, linked to the payment she made
        (back,) = [p for p in alice.payments() if p["direction"] == ledger.RECEIVED]
        assert back["refund_of_payment_id"] == sent["payment_id"]
        assert back["amount_msat"] == 5_000_000 and back["payer_node_id"] == bob.node_id
        refund_events = [e for e in await alice.events_after(0) if e.kind == "refund_received"]
        assert [(e.payment_id, e.amount_msat) for e in refund_events] == [
            (back["payment_id"], 5_000_000)]
        # durable: the stored rows say the same
        stored = {r["payment_id"]: r for r in stored_rows(bob)}
        assert stored[original["payment_id"]]["payer_node_id"] == alice.node_id
        assert stored[original["payment_id"]]["refunded_msat"] == 5_000_000
        nursery.cancel_scope.cancel()
    for c in (alice, bob):
        c.close()
    world.hub.close()


async def test_an_old_format_packet_still_pays_and_its_refund_needs_a_destination(
        regtest_node: Node, tmp_path: Path, autojump_clock: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(regtest_node, tmp_path, sqlite_url(tmp_path / "hub.sqlite"))
    async with trio.open_nursery() as nursery:
        alice, bob = await setup(world, nursery)
        with monkeypatch.context() as patch:  # Alice pays as an older payer would
            patch.setattr(client_node, "build_packet", build_v1_packet)
            started = await alice.pay(idempotency_key="old",
                                      bolt11=await bob.add_invoice(30_000_000, "old payer"))
            assert len(started["packet"]) == 200 and started["packet"][0] == 1
            sent = await alice.wait_payment(started["payment_id"])
        assert sent["state"] == ledger.SUCCEEDED, sent["failure_message"]
        original = received(bob)
        assert original["amount_msat"] == 30_000_000 and original["payer_node_id"] is None
        await settle(world, alice, bob)
        rows, b0 = stored_rows(bob), bob.balance_msat()
        events = await bob.events_after(0)

        with pytest.raises(errors.RefundDestinationUnknown):
            await bob.refund(original["payment_id"], 1_000_000, idempotency_key="unknown")
        assert stored_rows(bob) == rows and await bob.events_after(0) == events
        assert "unknown" not in bob._by_key and bob.balance_msat() == b0
        # named explicitly, it goes
        refund = await bob.refund(original["payment_id"], 1_000_000, idempotency_key="named",
                                  payer_node_id=alice.node_id)
        done = await bob.wait_payment(refund["payment_id"])
        assert done["state"] == ledger.SUCCEEDED, done["failure_message"]
        assert done["counterparty_node_id"] == alice.node_id
        nursery.cancel_scope.cancel()
    for c in (alice, bob):
        c.close()
    world.hub.close()


async def test_a_refund_above_what_was_received_is_refused_and_changes_nothing(
        regtest_node: Node, tmp_path: Path, autojump_clock: Any) -> None:
    world = World(regtest_node, tmp_path, sqlite_url(tmp_path / "hub.sqlite"))
    async with trio.open_nursery() as nursery:
        alice, bob = await setup(world, nursery)
        bolt11 = await bob.add_invoice(30_000_000, "small")
        await alice.wait_payment((await alice.pay(idempotency_key="buy", bolt11=bolt11))[
            "payment_id"])
        original = received(bob)
        # another payment: the hub's side of Alice's channel, above its reserve, can then
        # carry the whole refund back to her
        await alice.wait_payment((await alice.pay(
            idempotency_key="more", payee_node_id=bob.node_id, amount_msat=20_000_000))[
                "payment_id"])
        done = await bob.wait_payment((await bob.refund(
            original["payment_id"], 1_000_000, idempotency_key="part"))["payment_id"])
        assert done["state"] == ledger.SUCCEEDED, done["failure_message"]
        await settle(world, alice, bob)
        rows, events = stored_rows(bob), await bob.events_after(0)
        a0, b0 = alice.balance_msat(), bob.balance_msat()
        htlcs = [len(d.channel.d.book.htlcs) for d in bob.open_drivers()]

        for amount in (29_000_001, 30_000_000, 0, -1):  # 29,000,000 is what is left
            with pytest.raises(errors.RefundExceedsReceived):
                await bob.refund(original["payment_id"], amount, idempotency_key=f"x{amount}")
        with pytest.raises(errors.InvalidRequest):  # a destination that is this client
            await bob.refund(original["payment_id"], 1, idempotency_key="self",
                             payer_node_id=bob.node_id)
        with pytest.raises(errors.NotFound):  # a sent payment is not refundable
            await alice.refund(next(p["payment_id"] for p in alice.payments()
                                    if p["direction"] == ledger.SENT), 1, idempotency_key="s")
        await settle(world, alice, bob)
        assert stored_rows(bob) == rows and await bob.events_after(0) == events
        assert (alice.balance_msat(), bob.balance_msat()) == (a0, b0)
        assert [len(d.channel.d.book.htlcs) for d in bob.open_drivers()] == htlcs
        assert not any(k.startswith("x") or k == "self" for k in bob._by_key)
        # exactly what is left still goes
        rest = await bob.wait_payment((await bob.refund(
            original["payment_id"], 29_000_000, idempotency_key="rest"))["payment_id"])
        assert rest["state"] == ledger.SUCCEEDED, rest["failure_message"]
        nursery.cancel_scope.cancel()
    for c in (alice, bob):
        c.close()
    world.hub.close()


def test_the_migration_leaves_rows_received_before_it_null(tmp_path: Path) -> None:
    """A store made before client_0002: its received payment keeps NULL, and a new row
    takes a node id."""
    url = sqlite_url(tmp_path / "old.sqlite")
    engine = sa.create_engine(url)
    from alembic import command
    from alembic.config import Config

    from protocol.driver.db import MIGRATIONS
    with engine.begin() as conn:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.set_main_option("path_separator", "os")
        config.set_main_option("version_locations", f"{MIGRATIONS / 'versions'}:"
                                                    f"{client_node.MIGRATIONS}")
        config.attributes["connection"] = conn
        command.upgrade(config, "client_0001")
        columns = {c["name"] for c in sa.inspect(conn).get_columns("client_payments")}
        assert "payer_node_id" not in columns
        old_row = dict(payment_id="old", direction=ledger.RECEIVED, idempotency_key=None,
                       payment_hash=bytes(32), counterparty_node_id=None, amount_msat=1_000,
                       fee_msat=0, state=ledger.SUCCEEDED, payment_preimage=bytes(32),
                       bolt11=None, packet=None, channel_key=None, refund_of_payment_id=None,
                       refunded_msat=0, failure_code=0, failure_message="", created_unix=1,
                       resolved_unix=1)
        conn.execute(sa.table("client_payments", *(sa.column(k) for k in old_row))
                     .insert().values(**old_row))
    engine.dispose()
    with Database.open(url, lock_name=None, version_locations=[client_node.MIGRATIONS]) as db:
        with db.engine.begin() as conn:
            migrate(conn, [client_node.MIGRATIONS])  # idempotent: already at the heads
            ledger.payment_insert(dict(old_row, payment_id="new", payment_hash=bytes([1]) * 32,
                                       payer_node_id=pubkey_from_secret(bytes([7]) * 32)))(conn)
        rows = {r["payment_id"]: r for r in db.read_sync(ledger.all_payments)}
    assert rows["old"]["payer_node_id"] is None
    assert rows["new"]["payer_node_id"] == pubkey_from_secret(bytes([7]) * 32)
