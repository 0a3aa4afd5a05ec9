"""A payee vanishes with an HTLC in flight: the hub times it out on chain, and the
payer's HTLC fails back off chain in time (issue 10, item 4).

Real processes on loopback: the node, chanhubd, and Alice and Bob as SDK client
processes (`regtest.story` actors). Bob holds the HTLC of Alice's payment (the actor's
test-only `hold` switch), then his process is killed (SIGKILL: he never answers
again). Blocks are mined on demand. At the outgoing HTLC's expiry plus the grace
(`OFFERED_HTLC_GRACE_BLOCKS`) the hub's watch goes on chain (GoOnChain: it force-closes
Bob's channel); its commitment confirms, its pre-signed HTLC-timeout confirms, and once
that claim is `ANTI_REORG_DELAY` deep the hub fails Alice's HTLC back off chain, below
her HTLC's expiry: her payment fails with a typed error, her channel stays open with
her balance back exactly. The hub's commitment, its HTLC-timeout and (after Bob's
to_self_delay) its sweeps into its wallet are checked to the satoshi against BOLT #3's
fees and the sweep feerate, and the hub's wallet through the Admin API."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio

from channel.chain import btc_to_sat
from channel.htlc import commitment_weight, htlc_timeout_fee_sat, weight_fee_sat
from channel.watch import ANTI_REORG_DELAY
from client import errors
from client.node import DEFAULT_CONFIG as CLIENT_CONFIG
from hub.admin_transport import AdminTransport
from proto import admin_pb2
from protocol.config import OFFERED_HTLC_GRACE_BLOCKS
from protocol.driver.grpc_bridge import open_grpc_bridge
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
from tests.fees import priced_fee_of_json

AMOUNT_MSAT = 30_000_000  # 30,000 sat, held by Bob, then timed out on chain
SCENARIO_TIMEOUT_S = 120
PROCESS_WAIT_S = 30.0  # the bound on a process seeing a block and acting on it
POLL_S = 0.05  # polling a real process (the node, the hub, an actor)


def sat(value_btc: object) -> int:
    return int(btc_to_sat(str(value_btc)))


async def within(what: str, probe: Any) -> Any:
    """``await probe()`` until it returns something truthy, at most PROCESS_WAIT_S."""
    deadline = time.monotonic() + PROCESS_WAIT_S
    while not (found := await probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {PROCESS_WAIT_S:.0f} s")
        await trio.sleep(POLL_S)
    return found


def test_a_payee_vanishes_and_the_hub_times_the_htlc_out_on_chain(
        node_process: NodeEndpoint, hub_process: HubEndpoint, tmp_path: Path) -> None:
    dirs = {"alice": tmp_path / "alice", "bob": tmp_path / "bob"}
    common: dict[str, Any] = dict(
        hub_target=hub_process.target, tls_cert_file=hub_process.tls_cert_file,
        rpc_url=node_process.url, cookie_file=node_process.cookie_file,
        passphrase=PASSPHRASE, scrypt_n=SCRYPT_N)

    async def scenario() -> None:
        async with open_grpc_bridge() as bridge, await AdminTransport.connect(
                bridge, hub_process.target,
                credential_file=hub_process.admin_credential_file,
                cert_pem=hub_process.tls_cert_file.read_bytes()) as admin, \
                open_actors(dirs, **common) as actors, node_process.rpc() as rpc:
            alice, bob = actors["alice"], actors["bob"]

            async def hub_wallet() -> tuple[int, int]:
                b = await admin.call("GetWalletBalance", admin_pb2.GetWalletBalanceRequest())
                return int(b.confirmed_sat), int(b.unconfirmed_sat)

            async def spender(txid: str, vout: int | None = None,
                              mined_since: int | None = None) -> dict[str, Any]:
                """The transaction spending output ``vout`` (any) of ``txid``: in the
                mempool, or (``mined_since``) in a block from that height on (a process
                may have sent it before the block the test mined next)."""
                def spends(tx: dict[str, Any]) -> bool:
                    return any(i.get("txid") == txid and vout in (None, i["vout"])
                               for i in tx["vin"])

                async def find() -> dict[str, Any] | None:
                    for candidate in await rpc.getrawmempool():
                        tx = await rpc.getrawtransaction_verbose(candidate)
                        if spends(tx):
                            return dict(tx)
                    if mined_since is not None:
                        for height in range(mined_since, await rpc.getblockcount() + 1):
                            block = await rpc.getblock(await rpc.getblockhash(height), 2)
                            for tx in block["tx"]:
                                if spends(tx):
                                    return dict(await rpc.getrawtransaction_verbose(
                                        tx["txid"]))
                    return None
                return dict(await within(f"a spender of {txid}:{vout}", find))

            async def mine_to(height: int) -> None:
                blocks = height - await rpc.getblockcount()
                assert blocks >= 0
                await rpc.generatetoaddress(blocks, faucet)

            faucet = await rpc.getnewaddress()
            await open_channels(node_process, alice, bob)
            [alice_channel] = await alice.call("channels")
            [bob_channel] = await bob.call("channels")
            feerate = int(bob_channel["feerate_per_kw"])  # Bob funded it: the opening rate
            hub_wallet_before, unconfirmed = await hub_wallet()
            assert unconfirmed == 0

            # Alice pays Bob; Bob holds the HTLC, then vanishes (kill -9)
            await bob.call("hold", on=True)
            [invoice] = await bob.call("invoices", count=1, amount_msat=AMOUNT_MSAT)
            pending = await alice.call("pay", invoice=invoice,
                                       idempotency_key="payee vanishes", wait=False)
            assert pending["state"] == "in_flight"
            await bob.call("wait_held", count=1)
            [bob_htlc] = (await bob.call("channels"))[0]["htlcs"]
            [alice_htlc] = (await alice.call("channels"))[0]["htlcs"]
            assert (bob_htlc["offered"], bob_htlc["amount_msat"]) == (False, AMOUNT_MSAT)
            assert alice_htlc["offered"] and alice_htlc["amount_msat"] == \
                AMOUNT_MSAT + pending["fee_msat"]
            expiry, alice_expiry = int(bob_htlc["cltv_expiry"]), int(alice_htlc["cltv_expiry"])
            bob.process.kill()
            await bob.process.wait()

            async def hub_height() -> int:
                info = await admin.call("GetInfo", admin_pb2.GetInfoRequest())
                return int(info.hub.block_height)

            async def funding_spenders() -> list[str]:
                return [t for t in await rpc.getrawmempool()
                        if any(i.get("txid") == bob_channel["funding_txid"]
                               for i in (await rpc.getrawtransaction_verbose(t))["vin"])]

            # one block before the hub's go-on-chain height (the outgoing expiry plus
            # the grace), the hub's follower at it: Bob's channel is not closed yet
            # (a look, as below at the depth)
            go_on_chain_height = expiry + OFFERED_HTLC_GRACE_BLOCKS
            await mine_to(go_on_chain_height - 1)

            async def hub_saw_it() -> bool:
                return await hub_height() >= go_on_chain_height - 1

            await within("the hub at the block before", hub_saw_it)
            assert await funding_spenders() == []
            # at that height the hub's watch force-closes Bob's channel
            await mine_to(go_on_chain_height)
            commitment = await spender(bob_channel["funding_txid"])
            [funding_in] = commitment["vin"]
            assert funding_in["vout"] == bob_channel["funding_vout"]
            # (the hub's commitment, not Bob's: below, its to_local output is swept by
            # the hub after the CSV delay Bob demanded of it)
            await mine_to(go_on_chain_height + 1)
            commitment_height = go_on_chain_height + 1
            [htlc_vout] = [o["n"] for o in commitment["vout"]
                           if sat(o["value"]) == AMOUNT_MSAT // 1000]
            # the HTLC-timeout, final since the expiry: out once the commitment is in
            timeout_tx = await spender(commitment["txid"], htlc_vout)
            assert timeout_tx["locktime"] == expiry  # BOLT #3: the HTLC's cltv_expiry
            await mine_to(commitment_height + 1)
            timeout_height = commitment_height + 1

            # buried ANTI_REORG_DELAY deep: Alice's HTLC is failed back off chain
            failback_height = timeout_height + ANTI_REORG_DELAY - 1

            async def payment_now() -> dict[str, Any]:
                [payment] = [p for p in await alice.call("payments")
                             if p["payment_id"] == pending["payment_id"]]
                return dict(payment)

            async def ended() -> dict[str, Any] | None:
                payment = await payment_now()
                return payment if payment["state"] != "in_flight" else None

            # one block short of the depth, the hub's follower at it: still in flight.
            # (A look, not a proof: the hub reports the height before its watch step
            # and the fail-back takes a commitment round with Alice, so a fail-back
            # one block early may not show yet; the exact depth is
            # tests/hub/test_failback_depth.py's, in process under the fake clock.)
            await mine_to(failback_height - 1)

            async def hub_at_depth_less_one() -> bool:
                return await hub_height() >= failback_height - 1

            await within("the hub one block short of the depth", hub_at_depth_less_one)
            assert (await payment_now())["state"] == "in_flight"
            await mine_to(failback_height)
            failed = await within("Alice's payment failed back", ended)
            assert failed["state"] == "failed"
            assert failback_height < alice_expiry  # before her own on-chain deadline
            # the outcome, typed, as the SDK gives it for the same key
            # (the hub's fail-back of a timed-out HTLC says temporary failure, BOLT #4)
            with pytest.raises(errors.PaymentTimedOut, match="temporary failure"):
                await alice.call("pay", invoice=invoice, idempotency_key="payee vanishes")
            [channel_now] = await alice.call("channels")
            assert channel_now["state"] == alice_channel["state"] == "normal"
            assert channel_now["htlcs"] == []
            assert (await alice.call("balance"))["channel_msat"] == ALICE_CHANNEL_SAT * 1000

            # The hub's commitment: its to_local (what it was pushed, less the HTLC it
            # offered), Bob's to_remote (he funded the channel: less the commitment's
            # BOLT #3 fee) and the HTLC output; the HTLC-timeout takes that output less
            # its BOLT #3 fee at the channel's feerate
            amount_sat = AMOUNT_MSAT // 1000
            commitment_fee_sat = weight_fee_sat(commitment_weight(1), feerate)
            hub_local_sat = BOB_PUSH_MSAT // 1000 - amount_sat
            values = sorted(sat(o["value"]) for o in commitment["vout"])
            assert values == sorted([
                hub_local_sat, amount_sat,
                BOB_CHANNEL_SAT - BOB_PUSH_MSAT // 1000 - commitment_fee_sat])
            assert sum(values) + commitment_fee_sat == BOB_CHANNEL_SAT
            [timeout_in] = timeout_tx["vin"]
            assert (timeout_in["txid"], timeout_in["vout"]) == (commitment["txid"], htlc_vout)
            [timeout_out] = timeout_tx["vout"]
            timed_out_sat = amount_sat - htlc_timeout_fee_sat(feerate)
            assert sat(timeout_out["value"]) == timed_out_sat

            # Bob's to_self_delay on the hub's outputs: the hub sweeps its to_local
            # and the HTLC-timeout's output into its wallet once each may be mined in
            # the next block (the to_local's since the block before, the HTLC-timeout
            # output's from this one: one sweep each, or one for both)
            delay = CLIENT_CONFIG.to_self_delay
            assert failback_height == commitment_height + delay == timeout_height + delay - 1
            [to_local_vout] = [o["n"] for o in commitment["vout"]
                               if sat(o["value"]) == hub_local_sat]
            to_local_sweep = await spender(commitment["txid"], to_local_vout,
                                           mined_since=failback_height)
            timeout_sweep = await spender(timeout_tx["txid"], 0, mined_since=failback_height)
            sweeps = {to_local_sweep["txid"]: to_local_sweep,
                      timeout_sweep["txid"]: timeout_sweep}
            await mine_to(failback_height + 1)
            swept_in = {(commitment["txid"], to_local_vout): hub_local_sat,
                        (timeout_tx["txid"], 0): timed_out_sat}
            paid_out = 0
            for sweep in sweeps.values():
                assert (await rpc.getrawtransaction_verbose(sweep["txid"]))["confirmations"] >= 1
                inputs = [(i["txid"], i["vout"]) for i in sweep["vin"]]
                assert all(i["sequence"] == delay for i in sweep["vin"])  # BIP68 CSV
                [out] = sweep["vout"]
                fee_sat = sum(swept_in[i] for i in inputs) - sat(out["value"])
                # at the sweep feerate (the node has no estimate: the fallback, the
                # channel's opening one), priced with the longest signatures
                # (tests/fees.py)
                assert fee_sat == priced_fee_of_json(sweep, feerate), (fee_sat, sweep)
                paid_out += sat(out["value"])
            assert sorted(i for s in sweeps.values()
                          for i in ((v["txid"], v["vout"]) for v in s["vin"])) == \
                sorted(swept_in)

            expected = hub_wallet_before + paid_out

            async def hub_wallet_has_it() -> bool:
                return await hub_wallet() == (expected, 0)

            await within(f"the hub's wallet at {expected} sat", hub_wallet_has_it)

    trio.run(lambda: _bounded(scenario))


async def _bounded(scenario: Any) -> None:
    with trio.fail_after(SCENARIO_TIMEOUT_S):  # real processes: a real-time bound
        await scenario()
