"""A payee reveals the preimage on chain, and the hub settles with the payer off chain.

Real processes on loopback: the node, chanhubd, and Alice and Bob as SDK client
processes (`regtest.story` actors). Bob holds the HTLC of Alice's payment (the actor's
test-only `hold` switch: the receipt is durable, the preimage goes to his channel's
watch, no fulfill goes to the hub), then force-closes his channel. His commitment
confirms with the HTLC output; his watch claims it at once with the preimage
(HTLC-success); the hub's watch reads the preimage in that transaction and fulfills
Alice's HTLC off chain: her payment succeeds and her channel pays the amount and the
hub's fee, exactly. Every output of Bob's commitment and of his HTLC-success is
checked to the satoshi against the channel's balances and BOLT #3's fees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from channel.chain import btc_to_sat
from channel.htlc import commitment_weight, htlc_success_fee_sat, weight_fee_sat
from protocol.routing import forwarding_fee_msat
from regtest.harness import HubEndpoint, NodeEndpoint
from regtest.story import open_actors
from tests.e2e.test_payments_e2e import (
    ALICE_CHANNEL_SAT,
    BOB_CHANNEL_SAT,
    BOB_PUSH_MSAT,
    PASSPHRASE,
    SCRYPT_N,
    open_channels,
)

AMOUNT_MSAT = 30_000_000  # 30,000 sat, held by Bob, then claimed on chain
SCENARIO_TIMEOUT_S = 120
POLL_S = 0.05  # polling the node's mempool (a real process), within the deadline


def sat(value_btc: object) -> int:
    return int(btc_to_sat(str(value_btc)))


def test_a_payee_claims_on_chain_and_the_payer_is_settled_off_chain(
        node_process: NodeEndpoint, hub_process: HubEndpoint, tmp_path: Path) -> None:
    dirs = {"alice": tmp_path / "alice", "bob": tmp_path / "bob"}
    common: dict[str, Any] = dict(
        hub_target=hub_process.target, tls_cert_file=hub_process.tls_cert_file,
        rpc_url=node_process.url, cookie_file=node_process.cookie_file,
        passphrase=PASSPHRASE, scrypt_n=SCRYPT_N)

    async def spender_of(rpc: Any, txid: str, vout: int | None = None) -> dict[str, Any]:
        """The mempool transaction spending output ``vout`` (any) of ``txid``; waits."""
        while True:
            for candidate in await rpc.getrawmempool():
                tx = await rpc.getrawtransaction_verbose(candidate)
                if any(i.get("txid") == txid and vout in (None, i["vout"])
                       for i in tx["vin"]):
                    return dict(tx)
            await trio.sleep(POLL_S)

    async def scenario() -> None:
        async with open_actors(dirs, **common) as actors, node_process.rpc() as rpc:
            alice, bob = actors["alice"], actors["bob"]
            await open_channels(node_process, alice, bob)
            [bob_channel] = await bob.call("channels")
            fee_msat = forwarding_fee_msat(AMOUNT_MSAT, base_msat=alice.identity.base_fee_msat,
                                           fee_ppm=alice.identity.fee_ppm)
            assert (await alice.call("balance"))["channel_msat"] == ALICE_CHANNEL_SAT * 1000

            await bob.call("hold", on=True)
            [invoice] = await bob.call("invoices", count=1, amount_msat=AMOUNT_MSAT)
            outcome: dict[str, Any] = {}

            async def pay() -> None:
                outcome.update(await alice.call("pay", invoice=invoice,
                                                idempotency_key="claimed on chain"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pay)
                [held] = await bob.call("wait_held", count=1)
                assert held["channel_id"] == bob_channel["channel_id"]
                # Bob goes on chain with the HTLC in his commitment
                closed = await bob.call("close", channel_id=bob_channel["channel_id"],
                                        force=True)
                commitment = await spender_of(rpc, closed["funding_txid"])
                faucet = await rpc.getnewaddress()
                await rpc.generatetoaddress(1, faucet)
                [htlc_vout] = [o["n"] for o in commitment["vout"]
                               if sat(o["value"]) == AMOUNT_MSAT // 1000]
                # Bob's HTLC-success (the hub claims its to_remote beside it)
                success = await spender_of(rpc, commitment["txid"], htlc_vout)
                assert not outcome  # Bob fulfilled nothing off chain: still in flight
                await rpc.generatetoaddress(1, faucet)
            # the hub read the preimage on chain and fulfilled Alice's HTLC off chain
            assert (outcome["state"], outcome["amount_msat"], outcome["fee_msat"]) == \
                ("succeeded", AMOUNT_MSAT, fee_msat)
            assert outcome["payment_hash"] == held["payment_hash"]
            assert (await alice.call("balance"))["channel_msat"] == \
                ALICE_CHANNEL_SAT * 1000 - AMOUNT_MSAT - fee_msat

            # Bob's commitment: his to_local (he funded it: less the commitment's fee),
            # the hub's to_remote (what it was pushed, less the HTLC it offered), and
            # the HTLC output; his HTLC-success takes that output less its BOLT #3 fee
            feerate = int(bob_channel["feerate_per_kw"])
            amount_sat = AMOUNT_MSAT // 1000
            values = sorted(sat(o["value"]) for o in commitment["vout"])
            commitment_fee_sat = weight_fee_sat(commitment_weight(1), feerate)
            assert values == sorted([
                BOB_CHANNEL_SAT - BOB_PUSH_MSAT // 1000 - commitment_fee_sat,
                BOB_PUSH_MSAT // 1000 - amount_sat, amount_sat])
            assert sum(values) + commitment_fee_sat == BOB_CHANNEL_SAT
            [spent] = success["vin"]
            assert sat(commitment["vout"][spent["vout"]]["value"]) == amount_sat
            [claimed] = success["vout"]
            assert sat(claimed["value"]) == amount_sat - htlc_success_fee_sat(feerate)
            for txid in (commitment["txid"], success["txid"]):
                assert (await rpc.getrawtransaction_verbose(txid))["confirmations"] >= 1

    trio.run(lambda: _bounded(scenario))


async def _bounded(scenario: Any) -> None:
    with trio.fail_after(SCENARIO_TIMEOUT_S):  # real processes: a real-time bound
        await scenario()
