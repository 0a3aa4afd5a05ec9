"""Payments end to end between real processes on loopback: the regtest node, chanhubd
(the real hub, `hub.app`) on SQLite and on PostgreSQL, and two clients, each its own
process running the SDK on its own store, keys, wallet and chain view
(`regtest.story` actors). A paid invoice; then each refusal with its typed error
(re-raised here from the client process) and nothing changed on either side: an
invoice paid twice, the same idempotency key twice, more than the balance, more than
the hub can carry to the payee, an expired invoice (by the payee's clock: refused at
the payee; by the payer's: refused before it leaves), a payee offline (the payment
fails back in seconds, and the invoice is still payable once the payee is back). And
an actor that cannot reach its hub is one clear error, not a hang.

The clients' clocks are their wall clocks; an invoice is made to expire by moving the
payee's clock forward (`advance_clock`), not by waiting. Deadlines are real time:
these are real processes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio

from client import errors
from hub.tls import load_or_create_tls
from protocol.routing import forwarding_fee_msat
from regtest.harness import HubEndpoint, NodeEndpoint, free_port
from regtest.story import ActorDied, ClientActor, open_actors, start_actor

PASSPHRASE = "chanhub e2e client"
SCRYPT_N = 2**10  # throwaway test stores: cheap key derivation
WALLET_SAT = 10_000_000
ALICE_CHANNEL_SAT = 1_000_000
BOB_CHANNEL_SAT = 200_000
BOB_PUSH_MSAT = 100_000_000  # what the hub can pay Bob
INVOICE_MSAT = 10_000_000
SCENARIO_TIMEOUT_S = 120
PAYEE_OFFLINE_FAILS_WITHIN_S = 15


@pytest.fixture(params=["sqlite", "postgres"])
def hub_store(request: pytest.FixtureRequest) -> str:
    """Every test here runs on both hub stores (PostgreSQL: a schema of its own)."""
    return str(request.param)


async def balances(alice: ClientActor, bob: ClientActor) -> tuple[int, int]:
    return ((await alice.call("balance"))["channel_msat"],
            (await bob.call("balance"))["channel_msat"])


async def succeeded(actor: ClientActor) -> list[str]:
    return sorted(p["payment_id"] for p in await actor.call("payments")
                  if p["state"] == "succeeded")


async def open_channels(node: NodeEndpoint, alice: ClientActor, bob: ClientActor) -> None:
    async with node.rpc() as rpc:
        faucet = await rpc.getnewaddress()
        for actor in (alice, bob):
            await rpc.sendtoaddress(await actor.call("wallet_address"), WALLET_SAT)
        await rpc.generatetoaddress(1, faucet)
        height = await rpc.getblockcount()
        for actor in (alice, bob):
            await actor.call("sync", height=height)
        opened = [await alice.call("open", amount_sat=ALICE_CHANNEL_SAT),
                  await bob.call("open", amount_sat=BOB_CHANNEL_SAT, push_msat=BOB_PUSH_MSAT)]
        await rpc.generatetoaddress(1, faucet)
        for actor, channel in zip((alice, bob), opened, strict=True):
            await actor.call("wait_open", channel_id=channel["channel_id"])


def test_a_paid_invoice_and_every_refusal_changes_nothing(
        node_process: NodeEndpoint, hub_process: HubEndpoint, tmp_path: Path) -> None:
    dirs = {"alice": tmp_path / "alice", "bob": tmp_path / "bob"}
    common: dict[str, Any] = dict(
        hub_target=hub_process.target, tls_cert_file=hub_process.tls_cert_file,
        rpc_url=node_process.url, cookie_file=node_process.cookie_file,
        passphrase=PASSPHRASE, scrypt_n=SCRYPT_N)

    async def scenario() -> None:
        async with open_actors(dirs, **common) as actors:
            alice, bob = actors["alice"], actors["bob"]
            await open_channels(node_process, alice, bob)
            fee = forwarding_fee_msat(INVOICE_MSAT, base_msat=alice.identity.base_fee_msat,
                                      fee_ppm=alice.identity.fee_ppm)
            start = await balances(alice, bob)
            assert start == (ALICE_CHANNEL_SAT * 1000,
                             BOB_CHANNEL_SAT * 1000 - BOB_PUSH_MSAT)

            # A paid invoice: the amount to Bob, the amount and the hub's fee from Alice
            invoice = (await bob.call("invoices", count=1, amount_msat=INVOICE_MSAT))[0]
            paid = await alice.call("pay", invoice=invoice, idempotency_key="first")
            assert (paid["state"], paid["amount_msat"], paid["fee_msat"]) == \
                ("succeeded", INVOICE_MSAT, fee)
            after_paid = (start[0] - INVOICE_MSAT - fee, start[1] + INVOICE_MSAT)
            assert await balances(alice, bob) == after_paid
            received = [p for p in await bob.call("payments") if p["direction"] == "received"]
            assert [(p["payment_hash"], p["amount_msat"]) for p in received] == \
                [(paid["payment_hash"], INVOICE_MSAT)]
            assert "invoice_paid" in [e["kind"] for e in await bob.call("events")]
            alice_done, bob_done = await succeeded(alice), await succeeded(bob)

            async def unchanged() -> None:
                assert await balances(alice, bob) == after_paid
                assert await succeeded(alice) == alice_done
                assert await succeeded(bob) == bob_done

            # The same invoice again, under a new key: refused before anything leaves
            with pytest.raises(errors.AlreadyPaid, match="already paid"):
                await alice.call("pay", invoice=invoice, idempotency_key="second")
            await unchanged()

            # The same key again: the earlier payment, not a second one; the same key
            # for another invoice: refused
            again = await alice.call("pay", invoice=invoice, idempotency_key="first")
            assert again["payment_id"] == paid["payment_id"]
            other = (await bob.call("invoices", count=1, amount_msat=INVOICE_MSAT))[0]
            with pytest.raises(errors.IdempotencyConflict, match="'first'"):
                await alice.call("pay", invoice=other, idempotency_key="first")
            await unchanged()

            # More than Alice has; more than the hub can carry to Bob (it fails back)
            too_big = (await bob.call("invoices", count=1,
                                      amount_msat=ALICE_CHANNEL_SAT * 1000))[0]
            with pytest.raises(errors.InsufficientBalance, match="cannot send"):
                await alice.call("pay", invoice=too_big, idempotency_key="too big")
            beyond_hub = (await bob.call("invoices", count=1,
                                         amount_msat=BOB_PUSH_MSAT + INVOICE_MSAT))[0]
            with pytest.raises(errors.NoLiquidity, match="liquidity"):
                await alice.call("pay", invoice=beyond_hub, idempotency_key="beyond hub")
            await unchanged()

            # An invoice expired by Bob's clock: the hub forwards it, Bob refuses it
            expiring = (await bob.call("invoices", count=1, amount_msat=INVOICE_MSAT,
                                       expiry_seconds=60))[0]
            await bob.call("advance_clock", seconds=120)
            with pytest.raises(errors.PaymentRefused, match="expired"):
                await alice.call("pay", invoice=expiring, idempotency_key="expired")
            await unchanged()
            # ... and by Alice's clock too: refused before anything leaves
            await alice.call("advance_clock", seconds=120)
            with pytest.raises(errors.InvoiceError, match="expired"):
                await alice.call("pay", invoice=expiring, idempotency_key="expired here")
            await unchanged()
            later = (await bob.call("invoices", count=1, amount_msat=INVOICE_MSAT))[0]

        # Bob offline (his process stopped): the payment fails back, typed, in seconds
        async with open_actors({"alice": dirs["alice"]}, **common) as actors:
            alice = actors["alice"]
            await alice.call("ready")
            started = time.monotonic()
            with pytest.raises(errors.PayeeOffline, match=r"offline|disabled"):
                await alice.call("pay", invoice=later, idempotency_key="bob offline")
            assert time.monotonic() - started < PAYEE_OFFLINE_FAILS_WITHIN_S
            assert (await alice.call("balance"))["channel_msat"] == after_paid[0]
            # Bob back: the same invoice is still his to be paid, under a new key
            bob = await start_actor("bob", dirs["bob"], **common)
            try:
                await bob.call("ready")
                assert (await bob.call("balance"))["channel_msat"] == after_paid[1]
                paid_later = await alice.call("pay", invoice=later,
                                              idempotency_key="bob back")
                assert paid_later["state"] == "succeeded"
                assert await balances(alice, bob) == (after_paid[0] - INVOICE_MSAT - fee,
                                                      after_paid[1] + INVOICE_MSAT)
            finally:
                await bob.stop()

    async def bounded() -> None:
        with trio.fail_after(SCENARIO_TIMEOUT_S):
            await scenario()

    trio.run(bounded)


def test_an_actor_that_cannot_reach_its_hub_is_one_clear_error(
        node_process: NodeEndpoint, tmp_path: Path) -> None:
    # A real certificate, pinned, of a hub that is not running
    load_or_create_tls(tmp_path / "tls.cert", tmp_path / "tls.key")

    async def start() -> None:
        with trio.fail_after(SCENARIO_TIMEOUT_S):
            await start_actor("carol", tmp_path / "carol", hub_target=f"127.0.0.1:{free_port()}",
                              tls_cert_file=tmp_path / "tls.cert", rpc_url=node_process.url,
                              cookie_file=node_process.cookie_file, passphrase=PASSPHRASE,
                              scrypt_n=SCRYPT_N)

    with pytest.raises(ActorDied) as died:
        trio.run(start)
    message = str(died.value)
    assert message.startswith("carol exited during start-up (code 1)"), message
    assert message.splitlines()[-1].startswith("error: hub: unavailable"), message
    assert "Traceback" not in message
