"""`make demo`: the story Chanhub can tell today, on the embedded defaults.

Act 1, the chain. It starts the regtest node as a separate process (as an
operator would, through the harness), then, over bitcoind's JSON-RPC with the
client the hub uses: mines the faucet's first coins, funds Alice's address,
confirms it, has Alice pay Bob with a transaction signed here (not by the node's
wallet), confirms that, shows the node refusing a double spend of Alice's coin,
and prints heights and balances along the way.

Act 2, the hub. Every actor is its own process on loopback: the node, the hub
(`chanhubd`, started by `regtest.harness.start_hub`), Alice and Bob (client
processes running the SDK on their own stores, keys and chain view, driven from
here: `regtest.story`). The faucet funds both wallets; Alice opens a channel she
funds; the operator funds the hub's wallet and Bob, with no coins of his own, gets
inbound liquidity (`RequestInbound`: the hub opens a channel toward him);
Alice pays Bob 100 invoices; Bob refunds one; Alice's channel closes
cooperatively and Bob's by force, his delayed output swept back into his wallet
after `to_self_delay`. Every balance is checked to the satoshi against the chain,
with each fee (on chain and the hub's) accounted, then told in plain words.

Act 3, a breach on the hub, the same processes. Alice opens a second channel
and Bob asks for inbound again; Alice backs up her store while the whole channel
is hers (`regtest.cheat`, test-only), pays Bob, then publishes the backup's
commitment, revoked by that payment. The hub's own BOLT #5 watch (in chanhubd)
broadcasts the penalty, which takes the whole channel into the hub's wallet; the
demo checks the penalty, its fee and both wallets to the satoshi.

A check that fails ends the demo with one line and exit status 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from btclib.b32 import address_from_witness

from channel.chain import BitcoinRpc, RpcError, sat_to_btc
from channel.htlc import commitment_weight, weight_fee_sat
from channel.keys import pubkey_from_secret
from channel.scripts import hash160, p2wpkh, p2wpkh_script_code
from channel.spend import SpendableOutput, build_spend_tx
from channel.tx import OutPoint, Tx
from client.errors import ChanhubError
from hub.admin_transport import AdminTransport
from proto import admin_pb2
from protocol.driver.grpc_bridge import open_grpc_bridge
from protocol.routing import forwarding_fee_msat
from regtest import cheat
from regtest.harness import (
    CLIENT_PASSPHRASE,
    HarnessError,
    HubEndpoint,
    NodeEndpoint,
    drop_postgres_schema,
    free_port,
    hub_store_url,
    run_chanhub,
    start_hub,
    start_node,
    stop_hub,
    stop_node,
)
from regtest.story import ActorDied, ClientActor, find_exception, open_actors

FEERATE_PER_KW = 2_500  # 10 sat/vB: comfortably above the node's relay minimum

# Act 2's figures. Invoices of 5,000 sat: above the HTLC dust threshold at 2,500
# sat/kw, so ten in flight stay within the channels' dust exposure limit.
WALLET_SAT = 100_000_000  # 1 BTC from the faucet to each client
ALICE_CHANNEL_SAT = 1_000_000
HUB_WALLET_SAT = 100_000_000  # 1 BTC from the faucet to the hub's wallet
INBOUND_SAT = 1_000_000  # the channel the hub funds toward Bob (RequestInbound)
INVOICES = 100
INVOICE_MSAT = 5_000_000
IN_FLIGHT = 10
REFUNDED_INVOICE = 37  # the one Bob refunds (1-based)
# Act 3's figures: a small channel of Alice's, a payment that revokes its first state.
BREACH_CHANNEL_SAT = 500_000
BREACH_INBOUND_SAT = 400_000  # Bob's second inbound channel: the payment plus the hub's headroom
BREACH_PAYMENT_MSAT = 80_000_000
SWEEP_WAIT_S = 30.0  # real seconds for Bob's process to see the blocks and sweep


class DemoCheckFailed(Exception):
    """A figure of the story is not what the accounting says it must be."""


def check(ok: bool, what: str) -> None:
    if not ok:
        raise DemoCheckFailed(what)


class DemoKey:
    """A single-key P2WPKH wallet for one demo character."""

    def __init__(self, name: str) -> None:
        self.name = name
        # A fixed key per name keeps the demo's output the same from run to run.
        self.secret = hashlib.sha256(f"chanhub demo key: {name}".encode()).digest()
        self.pubkey = pubkey_from_secret(self.secret)
        self.script_pubkey = p2wpkh(self.pubkey)
        self.address = address_from_witness(0, hash160(self.pubkey), "regtest")


def say(text: str) -> None:
    print(text, flush=True)


def sat(amount_sat: int) -> str:
    return f"{amount_sat:,} sat"


def msat(amount_msat: int) -> str:
    return f"{amount_msat:,} msat"


def amount(amount_msat: int) -> str:
    """Whole satoshis as sat, anything finer as msat."""
    return sat(amount_msat // 1000) if amount_msat % 1000 == 0 else msat(amount_msat)


async def find_output(rpc: BitcoinRpc, txid: str, script_pubkey: bytes) -> tuple[int, int]:
    """(vout, amount_sat) of the output of `txid` paying `script_pubkey`."""
    decoded = await rpc.getrawtransaction_verbose(txid)
    for out in decoded["vout"]:
        if bytes.fromhex(out["scriptPubKey"]["hex"]) == script_pubkey:
            info = await rpc.gettxout(txid, int(out["n"]))
            assert info is not None
            return int(out["n"]), info.value_sat
    raise LookupError(f"{txid} pays nothing to that script")


async def chain_act(rpc: BitcoinRpc, endpoint: NodeEndpoint) -> str:
    """Act 1; returns the faucet address the later acts mine to."""
    alice, bob = DemoKey("alice"), DemoKey("bob")
    info = await rpc.getblockchaininfo()
    say(f"node up at {endpoint.url}: chain {info['chain']}, height {info['blocks']}")

    faucet = await rpc.getnewaddress()
    await rpc.generatetoaddress(101, faucet)
    say(
        f"mined 101 blocks to the faucet ({faucet}); height {await rpc.getblockcount()}, "
        f"spendable {sat_to_btc(await rpc.getbalance_sat())} BTC "
        "(coinbase outputs mature after 100 blocks)"
    )

    funding_txid = await rpc.sendtoaddress(alice.address, 150_000_000)
    mempool = await rpc.getrawmempool()
    say(f"faucet -> Alice ({alice.address}) 1.5 BTC: {funding_txid}")
    say(f"  in the mempool: {funding_txid in mempool} ({len(mempool)} transaction)")
    await rpc.generatetoaddress(1, faucet)
    vout, alice_coin_sat = await find_output(rpc, funding_txid, alice.script_pubkey)
    coin = await rpc.gettxout(funding_txid, vout)
    assert coin is not None
    say(
        f"  confirmed at height {await rpc.getblockcount()}: Alice holds "
        f"{sat_to_btc(alice_coin_sat)} BTC ({coin.confirmations} confirmation)"
    )

    alice_coin = SpendableOutput(
        outpoint=OutPoint(bytes.fromhex(funding_txid)[::-1], vout),
        amount_sat=alice_coin_sat,
        script_code=p2wpkh_script_code(alice.pubkey),
        signing_key=alice.secret,
        witness_suffix=(alice.pubkey,),
    )
    payment = build_spend_tx([alice_coin], bob.script_pubkey, FEERATE_PER_KW)
    (check,) = await rpc.testmempoolaccept([payment.serialize()])
    say(
        f"Alice -> Bob ({bob.address}), signed by Alice's own key: "
        f"testmempoolaccept allowed={check.allowed}, vsize {check.vsize}, "
        f"fee {check.fee_sat} sat"
    )
    payment_txid = await rpc.sendrawtransaction(payment.serialize())
    await rpc.generatetoaddress(1, faucet)
    bob_coin = await rpc.gettxout(payment_txid, 0)
    assert bob_coin is not None
    say(
        f"  confirmed at height {await rpc.getblockcount()}: Bob holds "
        f"{sat_to_btc(bob_coin.value_sat)} BTC; Alice's coin is spent: "
        f"{await rpc.gettxout(funding_txid, vout) is None}"
    )

    double_spend = build_spend_tx([alice_coin], alice.script_pubkey, FEERATE_PER_KW)
    try:
        await rpc.sendrawtransaction(double_spend.serialize())
    except RpcError as refusal:
        say(f"Alice tries to spend the same coin again: refused ({refusal.code}) "
            f"{refusal.message}")
    else:
        raise AssertionError("the node accepted a double spend")

    say(
        f"chain: height {await rpc.getblockcount()}, tip {await rpc.getbestblockhash()}, "
        f"faucet {sat_to_btc(await rpc.getbalance_sat())} BTC"
    )
    return faucet


# ---------------------------------------------------------------------------
# Act 2: the hub, every actor its own process


async def tx_fee_sat(rpc: BitcoinRpc, tx: Tx) -> int:
    """What `tx` pays the miners: its inputs (looked up on the chain) less its outputs."""
    spent = 0
    for txin in tx.inputs:
        previous = Tx.parse(await rpc.getrawtransaction(txin.outpoint.txid_hex()))
        spent += previous.outputs[txin.outpoint.index].amount_sat
    return spent - sum(out.amount_sat for out in tx.outputs)


async def spender_in_mempool(rpc: BitcoinRpc, txid: str, vout: int, *,
                             timeout_s: float = SWEEP_WAIT_S) -> Tx:
    """The mempool transaction spending `txid:vout`, waiting (real time, bounded) for
    the client process that broadcasts it."""
    outpoint = OutPoint(bytes.fromhex(txid)[::-1], vout)
    deadline = time.monotonic() + timeout_s
    while True:
        for candidate in await rpc.getrawmempool():
            tx = Tx.parse(await rpc.getrawtransaction(candidate))
            if any(txin.outpoint == outpoint for txin in tx.inputs):
                return tx
        if time.monotonic() > deadline:
            raise DemoCheckFailed(f"nothing spent {txid}:{vout} within {timeout_s:.0f} s")
        await trio.sleep(0.05)  # a real process broadcasts it: look again shortly


async def mine(rpc: BitcoinRpc, faucet: str, blocks: int, *actors: ClientActor) -> int:
    """Mine `blocks` and wait until each actor's own chain follower has seen them."""
    await rpc.generatetoaddress(blocks, faucet)
    height = await rpc.getblockcount()
    for actor in actors:
        await actor.call("sync", height=height)
    return height


@dataclass
class Ledger:
    """What each balance must be, from the story's own arithmetic."""

    base_fee_msat: int
    fee_ppm: int
    alice_msat: int = ALICE_CHANNEL_SAT * 1000
    alice_hub_msat: int = 0  # the hub's side of Alice's channel
    bob_msat: int = 0  # the hub funds Bob's channel: all of it is the hub's at first
    bob_hub_msat: int = INBOUND_SAT * 1000
    hub_fees_msat: int = 0

    def fee(self, amount_msat: int) -> int:
        return forwarding_fee_msat(amount_msat, base_msat=self.base_fee_msat,
                                   fee_ppm=self.fee_ppm)

    def alice_pays_bob(self, amount_msat: int) -> None:
        fee = self.fee(amount_msat)
        self.alice_msat -= amount_msat + fee
        self.alice_hub_msat += amount_msat + fee
        self.bob_hub_msat -= amount_msat
        self.bob_msat += amount_msat
        self.hub_fees_msat += fee

    def bob_pays_alice(self, amount_msat: int) -> None:
        fee = self.fee(amount_msat)
        self.bob_msat -= amount_msat + fee
        self.bob_hub_msat += amount_msat + fee
        self.alice_hub_msat -= amount_msat
        self.alice_msat += amount_msat
        self.hub_fees_msat += fee


async def check_channel(actor: ClientActor, channel_id: str, local_msat: int,
                        remote_msat: int) -> dict[str, Any]:
    (channel,) = [c for c in await actor.call("channels") if c["channel_id"] == channel_id]
    check((channel["local_msat"], channel["remote_msat"]) == (local_msat, remote_msat),
          f"{actor.name}'s channel holds {channel['local_msat']}/{channel['remote_msat']} "
          f"msat, the ledger says {local_msat}/{remote_msat}")
    return dict(channel)


async def check_wallet(actor: ClientActor, expected_sat: int, how: str) -> None:
    balance = await actor.call("wallet_balance")
    check(balance["confirmed_sat"] == expected_sat and balance["unconfirmed_sat"] == 0,
          f"{actor.name}'s wallet holds {balance['confirmed_sat']} sat confirmed "
          f"(+{balance['unconfirmed_sat']} unconfirmed); expected {expected_sat} = {how}")


async def hub_act(rpc: BitcoinRpc, node: NodeEndpoint, datadir: Path, faucet: str,
                  store: str) -> None:
    say("\n-- the hub: chanhubd, Alice and Bob, each its own process on loopback --")
    hub_dir = datadir / "hub"
    store_url = await trio.to_thread.run_sync(hub_store_url, hub_dir, store)
    hub = await trio.to_thread.run_sync(lambda: start_hub(
        hub_dir, node, store_url=store_url, options={"minimum_depth": "1"}))
    try:
        async with open_grpc_bridge() as bridge, await AdminTransport.connect(
                bridge, hub.target, credential_file=hub.admin_credential_file,
                cert_pem=hub.tls_cert_file.read_bytes()) as admin, open_actors(
                {"Alice": datadir / "alice", "Bob": datadir / "bob"},
                hub_target=hub.target, tls_cert_file=hub.tls_cert_file, rpc_url=node.url,
                cookie_file=node.cookie_file, passphrase=CLIENT_PASSPHRASE) as actors:
            wallets = await hub_story(rpc, hub, admin, store, faucet, actors["Alice"],
                                      actors["Bob"])
            await breach_act(rpc, admin, faucet, actors["Alice"], actors["Bob"],
                             datadir / "alice", wallets)
        await cli_epilogue(hub, datadir / "bob")
    finally:
        await trio.to_thread.run_sync(stop_hub, hub_dir)
        if store == "postgres":
            await trio.to_thread.run_sync(drop_postgres_schema, hub_dir)


async def cli_epilogue(hub: HubEndpoint, bob_dir: Path) -> None:
    """Bob's client process has stopped: the `chanhub` CLI (one process, one command)
    reads the same store and sees what the story did."""
    output = await trio.to_thread.run_sync(
        lambda: run_chanhub(bob_dir, hub, "--json", "history"))
    history = json.loads(output)
    received = [p for p in history if p["direction"] == "received"
                and p["state"] == "succeeded"]
    refunds = [p for p in history if p["direction"] == "sent" and p["refund_of_payment_id"]
               and p["state"] == "succeeded"]
    check(len(received) == INVOICES + 1 and len(refunds) == 1,
          f"`chanhub history` lists {len(received)} received and {len(refunds)} refunds")
    say(f"Bob's `chanhub --json history` (the CLI, run on his store now that his client "
        f"process has stopped): {len(received)} payments received (the {INVOICES} invoices "
        f"and act 3's), {len(refunds)} refund sent")


async def hub_wallet_sat(admin: AdminTransport, *, at_least_sat: int = 0) -> int:
    """The hub's confirmed wallet balance (what `chanhubctl wallet balance` shows),
    waiting (real time, bounded) until the hub's own follower reports `at_least_sat`."""
    deadline = time.monotonic() + SWEEP_WAIT_S
    while True:
        balance = await admin.call("GetWalletBalance", admin_pb2.GetWalletBalanceRequest())
        if balance.confirmed_sat >= at_least_sat and balance.unconfirmed_sat == 0:
            return int(balance.confirmed_sat)
        if time.monotonic() > deadline:
            raise DemoCheckFailed(f"the hub's wallet shows {balance.confirmed_sat} sat "
                                  f"(+{balance.unconfirmed_sat} unconfirmed), not "
                                  f"{at_least_sat} sat, after {SWEEP_WAIT_S:.0f} s")
        await trio.sleep(0.05)  # the hub's process follows the chain: look again shortly


async def new_mempool_tx(rpc: BitcoinRpc, known: set[str]) -> str:
    """A transaction that entered the mempool and is not in `known`, waiting (real time,
    bounded) for the process that broadcasts it."""
    deadline = time.monotonic() + SWEEP_WAIT_S
    while not (fresh := set(await rpc.getrawmempool()) - known):
        if time.monotonic() > deadline:
            raise DemoCheckFailed(f"no new transaction in the mempool in {SWEEP_WAIT_S:.0f} s")
        await trio.sleep(0.05)
    check(len(fresh) == 1, f"{len(fresh)} new transactions in the mempool, one expected")
    return fresh.pop()


@dataclass(frozen=True)
class Opened:
    """Alice's channel (she funds it) and Bob's (the hub funds it), both open."""

    alice_open: dict[str, Any]  # what `open` answered: the funding tx is out
    alice_channel: dict[str, Any]
    alice_funding_fee_sat: int
    order: dict[str, Any]  # Bob's RequestInbound order
    bob_channel: dict[str, Any]
    hub_funding_txid: str
    hub_funding_fee_sat: int
    height: int  # where both confirmed


async def open_two_channels(rpc: BitcoinRpc, faucet: str, alice: ClientActor,
                            alice_sat: int, bob: ClientActor, inbound_sat: int,
                            idempotency_key: str) -> Opened:
    """Alice opens a channel from her wallet; Bob asks the hub for `inbound_sat` of
    inbound liquidity (the hub funds a channel toward him); one block confirms both."""
    alice_open = await alice.call("open", amount_sat=alice_sat)
    alice_funding_fee_sat = await tx_fee_sat(
        rpc, Tx.parse(await rpc.getrawtransaction(alice_open["funding_txid"])))
    order: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        async def ask_inbound() -> None:
            order.update(await bob.call("request_inbound", amount_sat=inbound_sat,
                                        idempotency_key=idempotency_key))

        nursery.start_soon(ask_inbound)
        hub_funding_txid = await new_mempool_tx(rpc, {alice_open["funding_txid"]})
        height = await mine(rpc, faucet, 1, alice)
    hub_funding_fee_sat = await tx_fee_sat(
        rpc, Tx.parse(await rpc.getrawtransaction(hub_funding_txid)))
    alice_channel = await alice.call("wait_open", channel_id=alice_open["channel_id"])
    bob_channel = await bob.call("wait_open", channel_id=order["channel_id"])
    return Opened(alice_open, alice_channel, alice_funding_fee_sat, order, bob_channel,
                  hub_funding_txid, hub_funding_fee_sat, height)


async def hub_story(rpc: BitcoinRpc, hub: HubEndpoint, admin: AdminTransport, store: str,
                    faucet: str, alice: ClientActor, bob: ClientActor) -> Wallets:
    terms = alice.identity
    ledger = Ledger(terms.base_fee_msat, terms.fee_ppm)
    say(f"hub up at {hub.target} (pid {hub.pid}, {store} store), node id "
        f"{hub.hub_node_id.hex()[:16]}...; it keeps {msat(terms.base_fee_msat)} + "
        f"{terms.fee_ppm} ppm of each payment it forwards")
    for actor, whose in ((alice, "her"), (bob, "his")):
        check(actor.identity.hub_node_id == hub.hub_node_id,
              f"{actor.name} knows another hub")
        say(f"{actor.name} online (pid {actor.process.pid}), node id "
            f"{actor.node_id.hex()[:16]}..., with {whose} own store, keys, wallet and view "
            "of the chain")

    # Wallets from the faucet: Alice's and the hub's (Bob needs no coins to be paid)
    hub_address = (await admin.call("NewWalletAddress",
                                    admin_pb2.NewWalletAddressRequest())).address
    await rpc.sendtoaddress(hub_address, HUB_WALLET_SAT)
    await rpc.sendtoaddress(await alice.call("wallet_address"), WALLET_SAT)
    height = await mine(rpc, faucet, 1, alice, bob)
    await check_wallet(alice, WALLET_SAT, "the faucet's payment")
    check(await hub_wallet_sat(admin, at_least_sat=HUB_WALLET_SAT) == HUB_WALLET_SAT,
          "the hub's wallet holds more than the faucet paid it")
    await check_wallet(bob, 0, "nothing yet")
    say(f"the faucet pays Alice's wallet {sat_to_btc(WALLET_SAT)} BTC and the hub's "
        f"{sat_to_btc(HUB_WALLET_SAT)} BTC (to the address the operator's Admin API "
        f"gave, as `chanhubctl wallet address`); confirmed at height {height}")

    # Channels: Alice funds hers; the hub funds Bob's (inbound liquidity)
    opened = await open_two_channels(rpc, faucet, alice, ALICE_CHANNEL_SAT, bob, INBOUND_SAT,
                                     "demo inbound")
    alice_open, alice_channel, alice_funding_fee_sat = (
        opened.alice_open, opened.alice_channel, opened.alice_funding_fee_sat)
    order, bob_channel, height = opened.order, opened.bob_channel, opened.height
    hub_funding_txid, hub_funding_fee_sat = opened.hub_funding_txid, opened.hub_funding_fee_sat
    # The order completes at the hub once its side sees the channel open; Bob's side
    # may be a moment ahead of it, so the order may still read "funding" here.
    check(order["state"] in ("funding", "completed")
          and bob_channel["funding_txid"] == hub_funding_txid,
          f"Bob's inbound order is {order['state']}, his channel funded by "
          f"{bob_channel['funding_txid']}, not by the hub's {hub_funding_txid}")
    say(f"Alice opens a {sat(ALICE_CHANNEL_SAT)} channel with the hub from her wallet "
        f"(funding tx {alice_open['funding_txid'][:16]}..., fee {sat(alice_funding_fee_sat)})")
    say(f"Bob asks for inbound liquidity (RequestInbound, {sat(INBOUND_SAT)}): the hub opens "
        f"a channel toward him from its own wallet (funding tx {hub_funding_txid[:16]}..., "
        f"fee {sat(hub_funding_fee_sat)}, paid by the hub; the order costs Bob nothing)")
    say(f"  both channels open at height {height} (1 confirmation, seen by the hub and "
        "by each client's own chain follower)")
    await check_channel(alice, alice_channel["channel_id"], ledger.alice_msat,
                        ledger.alice_hub_msat)
    await check_channel(bob, bob_channel["channel_id"], ledger.bob_msat, ledger.bob_hub_msat)
    await check_wallet(alice, WALLET_SAT - ALICE_CHANNEL_SAT - alice_funding_fee_sat,
                       "the faucet's payment - the channel - the funding fee")
    check(await hub_wallet_sat(admin) == HUB_WALLET_SAT - INBOUND_SAT - hub_funding_fee_sat,
          "the hub's wallet is not the faucet's payment - Bob's channel - its funding fee")

    # 100 invoices
    invoices = await bob.call("invoices", count=INVOICES, amount_msat=INVOICE_MSAT,
                              description="demo invoice")
    paid = await alice.call("pay_many", invoices=invoices, key_prefix="demo",
                            in_flight=IN_FLIGHT)
    failed = [p for p in paid["payments"] if "error" in p]
    check(not failed, f"{len(failed)} of {INVOICES} payments failed, the first: "
          f"{failed[0]['error'] if failed else ''}")
    check(all(p["state"] == "succeeded" for p in paid["payments"]), "a payment not settled")
    for payment in paid["payments"]:
        check(payment["fee_msat"] == ledger.fee(INVOICE_MSAT),
              f"Alice's payment recorded a fee of {payment['fee_msat']} msat")
        ledger.alice_pays_bob(payment["amount_msat"])
    received = {p["payment_hash"]: p for p in await bob.call("payments")
                if p["direction"] == "received" and p["state"] == "succeeded"}
    check(len(received) == INVOICES and all(
        received[p["payment_hash"]]["amount_msat"] == INVOICE_MSAT for p in paid["payments"]),
        f"Bob received {len(received)} payments, not {INVOICES} of {INVOICE_MSAT} msat")
    say(f"Bob makes {INVOICES} invoices of {sat(INVOICE_MSAT // 1000)}; Alice pays them all "
        f"in {paid['seconds']:.1f} s ({INVOICES / paid['seconds']:.0f} payments/s, "
        f"{IN_FLIGHT} in flight): {sat(INVOICES * INVOICE_MSAT // 1000)} to Bob plus "
        f"{msat(ledger.hub_fees_msat)} of hub fees")
    await check_channel(alice, alice_channel["channel_id"], ledger.alice_msat,
                        ledger.alice_hub_msat)
    await check_channel(bob, bob_channel["channel_id"], ledger.bob_msat, ledger.bob_hub_msat)

    # One refund
    refunded = received[paid["payments"][REFUNDED_INVOICE - 1]["payment_hash"]]
    refund = await bob.call("refund", payment_id=refunded["payment_id"],
                            amount_msat=INVOICE_MSAT, payer_node_id=alice.node_id.hex(),
                            idempotency_key="demo refund")
    check(refund["state"] == "succeeded", f"the refund ended {refund['state']}")
    ledger.bob_pays_alice(INVOICE_MSAT)
    alice_events = [e["kind"] for e in await alice.call("events")]
    check("refund_received" in alice_events, "Alice's log has no refund_received")
    say(f"Bob refunds invoice {REFUNDED_INVOICE} in full ({sat(INVOICE_MSAT // 1000)}) to "
        f"Alice, paying the hub's {msat(ledger.fee(INVOICE_MSAT))} fee on it; Alice's "
        "event log says refund_received")
    alice_channel = await check_channel(alice, alice_channel["channel_id"], ledger.alice_msat,
                                        ledger.alice_hub_msat)
    bob_channel = await check_channel(bob, bob_channel["channel_id"], ledger.bob_msat,
                                      ledger.bob_hub_msat)
    say(f"  off chain now: Alice {msat(ledger.alice_msat)}, Bob {msat(ledger.bob_msat)}; "
        f"the hub earned {msat(ledger.hub_fees_msat)}")

    # Alice closes cooperatively
    closed = await alice.call("close", channel_id=alice_channel["channel_id"])
    check(closed["state"] == "closed", f"Alice's channel is {closed['state']} after close")
    closing_tx = await spender_in_mempool(rpc, alice_channel["funding_txid"],
                                          alice_channel["funding_vout"])
    await mine(rpc, faucet, 1, alice, bob)
    hub_out = ledger.alice_hub_msat // 1000
    amounts = [o.amount_sat for o in closing_tx.outputs]
    check(len(amounts) == 2 and hub_out in amounts,
          f"the closing tx pays {amounts}; the hub's side is {hub_out} sat")
    amounts.remove(hub_out)
    (alice_out,) = amounts
    closing_fee_sat = ledger.alice_msat // 1000 - alice_out
    # What the chain got: the agreed fee, plus the satoshi the two msat remainders make
    # when the balances are not whole satoshis (outputs are whole satoshis, rounded down).
    remainder_sat = (ledger.alice_msat % 1000 + ledger.alice_hub_msat % 1000) // 1000
    check(await tx_fee_sat(rpc, closing_tx) == closing_fee_sat + remainder_sat
          and 0 < closing_fee_sat <= weight_fee_sat(commitment_weight(0),
                                                    alice_channel["feerate_per_kw"]),
          f"the closing tx pays {[o.amount_sat for o in closing_tx.outputs]}; Alice's side "
          f"is {ledger.alice_msat // 1000} sat before the fee")
    alice_final_sat = WALLET_SAT - ALICE_CHANNEL_SAT - alice_funding_fee_sat + alice_out
    await check_wallet(alice, alice_final_sat,
                       "the faucet's payment - the channel - the funding fee + her close output")
    say(f"Alice closes cooperatively: closing tx {closing_tx.txid_hex()[:16]}... pays her "
        f"{sat(alice_out)} (her {sat(ledger.alice_msat // 1000)} less the "
        f"{sat(closing_fee_sat)} fee, hers as the funder) and the hub {sat(hub_out)}")

    # Bob closes by force
    forced = await bob.call("close", channel_id=bob_channel["channel_id"], force=True)
    check(forced["state"] == "failed", f"Bob's channel is {forced['state']} after a force close")
    commitment_tx = await spender_in_mempool(rpc, bob_channel["funding_txid"],
                                             bob_channel["funding_vout"])
    await mine(rpc, faucet, 1, alice, bob)
    # The hub funded the channel, so the commitment's fee comes out of the hub's side.
    commitment_fee_sat = weight_fee_sat(commitment_weight(0), bob_channel["feerate_per_kw"])
    to_local_sat = ledger.bob_msat // 1000
    to_remote_sat = ledger.bob_hub_msat // 1000 - commitment_fee_sat
    check(sorted(o.amount_sat for o in commitment_tx.outputs)
          == sorted([to_local_sat, to_remote_sat]),
          f"Bob's commitment pays {[o.amount_sat for o in commitment_tx.outputs]}, the ledger "
          f"says {to_local_sat} (his) and {to_remote_sat} (the hub's, less the "
          f"{commitment_fee_sat} sat commitment fee)")
    to_local_vout = next(i for i, o in enumerate(commitment_tx.outputs)
                         if o.amount_sat == to_local_sat and len(o.script_pubkey) == 34)
    to_remote_vout = next(i for i in range(len(commitment_tx.outputs)) if i != to_local_vout)
    # The hub's watch of the channel claims its output of Bob's commitment at once.
    hub_claim_tx = await spender_in_mempool(rpc, commitment_tx.txid_hex(), to_remote_vout)
    hub_claim_fee_sat = await tx_fee_sat(rpc, hub_claim_tx)
    delay = bob_channel["to_self_delay_blocks"]
    say(f"Bob force-closes: his commitment {commitment_tx.txid_hex()[:16]}... pays the hub "
        f"its {sat(to_remote_sat)} at once (less the {sat(commitment_fee_sat)} commitment "
        f"fee, the funder's); his own {sat(to_local_sat)} wait {delay} blocks")
    await mine(rpc, faucet, delay - 1, bob)  # the commitment is now `delay` deep
    sweep_tx = await spender_in_mempool(rpc, commitment_tx.txid_hex(), to_local_vout)
    await mine(rpc, faucet, 1, bob)
    sweep_fee_sat = await tx_fee_sat(rpc, sweep_tx)
    bob_final_sat = to_local_sat - sweep_fee_sat
    await check_wallet(bob, bob_final_sat, "his to_local - the sweep fee")
    say(f"  the hub's watch claims its {sat(to_remote_sat)} into its wallet at once "
        f"(claim tx {hub_claim_tx.txid_hex()[:16]}..., fee {sat(hub_claim_fee_sat)})")
    say(f"  {delay} blocks later Bob's own process sweeps it into his wallet: "
        f"{sat(sweep_tx.outputs[0].amount_sat)} after a {sat(sweep_fee_sat)} fee")

    hub_wallet_final_sat = (HUB_WALLET_SAT - INBOUND_SAT - hub_funding_fee_sat + hub_out
                            + to_remote_sat - hub_claim_fee_sat)
    check(await hub_wallet_sat(admin, at_least_sat=hub_wallet_final_sat)
          == hub_wallet_final_sat, "the hub's wallet is not the faucet's payment - Bob's "
          "channel - its funding fee + its output of Alice's close + its claim of Bob's "
          "commitment")
    # The story in figures; each sum is checked, so every satoshi is accounted for.
    alice_went = {"Bob, net of the refund": (INVOICES - 1) * INVOICE_MSAT,
                  "the hub in fees": INVOICES * ledger.fee(INVOICE_MSAT),
                  "the chain in funding and closing fees":
                  (alice_funding_fee_sat + closing_fee_sat) * 1000,
                  "rounding down to whole satoshis": ledger.alice_msat % 1000}
    bob_went = {"the hub's fee on the refund": ledger.fee(INVOICE_MSAT),
                "the chain in the sweep's fee": sweep_fee_sat * 1000,
                "rounding down to whole satoshis": ledger.bob_msat % 1000}
    check((WALLET_SAT - alice_final_sat) * 1000 == sum(alice_went.values()),
          f"Alice's figures do not add up: {alice_went}")
    check(bob_final_sat * 1000 == (INVOICES - 1) * INVOICE_MSAT - sum(bob_went.values()),
          f"Bob's figures do not add up: {bob_went}")
    hub_outputs_sat = hub_out + to_remote_sat
    check(hub_outputs_sat * 1000 == INBOUND_SAT * 1000 + ledger.hub_fees_msat
          - commitment_fee_sat * 1000 - ledger.alice_hub_msat % 1000
          - ledger.bob_hub_msat % 1000, f"the hub's outputs hold {hub_outputs_sat} sat")

    def went(spent: dict[str, int]) -> str:
        return "; ".join(f"{amount(v)} to {k}" for k, v in spent.items() if v)

    say("\nthe story in figures (each checked against the chain, to the satoshi):")
    say(f"  Alice: {sat(WALLET_SAT)} -> {sat(alice_final_sat)} in her wallet: "
        f"{went(alice_went)}")
    say(f"  Bob: nothing on chain -> {sat(bob_final_sat)} in his wallet: "
        f"{amount((INVOICES - 1) * INVOICE_MSAT)} from Alice, net of the refund, less "
        f"{went(bob_went)}")
    say(f"  the hub: its two close outputs hold {sat(hub_outputs_sat)}: the "
        f"{sat(INBOUND_SAT)} it put into Bob's channel plus {msat(ledger.hub_fees_msat)} of "
        f"fees earned, less the {sat(commitment_fee_sat)} commitment fee and what rounds "
        "below whole satoshis")
    say(f"  the hub's wallet: {sat(HUB_WALLET_SAT)} -> {sat(hub_wallet_final_sat)} (less "
        f"Bob's channel and its {sat(hub_funding_fee_sat)} funding fee, plus its output of "
        f"Alice's close and its {sat(to_remote_sat)} of Bob's commitment less the "
        f"{sat(hub_claim_fee_sat)} claim fee)")
    say(f"chain: height {await rpc.getblockcount()}")
    return Wallets(alice_final_sat, hub_wallet_final_sat)


# ---------------------------------------------------------------------------
# Act 3: a breach on the hub, every actor its own process


@dataclass(frozen=True)
class Wallets:
    """The wallets act 2 leaves (each checked against the chain), where act 3 begins."""

    alice_sat: int
    hub_sat: int


async def breach_act(rpc: BitcoinRpc, admin: AdminTransport, faucet: str, alice: ClientActor,
                     bob: ClientActor, alice_dir: Path, before: Wallets) -> None:
    """Alice backs up her store while her new channel holds all its funds, pays Bob,
    then publishes the backup's commitment (revoked by the payment); the hub's own
    watch (protocol/driver/enforce.py, in chanhubd) takes the whole channel."""
    say("\n-- a breach on the hub: Alice publishes an old commitment, the hub punishes --")
    terms = alice.identity
    fee = Ledger(terms.base_fee_msat, terms.fee_ppm).fee(BREACH_PAYMENT_MSAT)

    # Alice opens a second channel; Bob, his first closed, asks for inbound again.
    opened = await open_two_channels(rpc, faucet, alice, BREACH_CHANNEL_SAT, bob,
                                     BREACH_INBOUND_SAT, "demo breach inbound")
    alice_open, alice_channel = opened.alice_open, opened.alice_channel
    alice_funding_fee_sat, hub_funding_fee_sat = (opened.alice_funding_fee_sat,
                                                  opened.hub_funding_fee_sat)
    await check_channel(alice, alice_channel["channel_id"], BREACH_CHANNEL_SAT * 1000, 0)

    # The backup: her store now, while the whole channel is hers.
    backup = await trio.to_thread.run_sync(cheat.backup_client, alice_dir, "breach")
    (stored,) = [c for c in cheat.stored_commitments(backup, cheat.client_key_source())
                 if c.channel_id.hex() == alice_channel["channel_id"]]
    say(f"Alice opens a {sat(BREACH_CHANNEL_SAT)} channel (funding tx "
        f"{alice_open['funding_txid'][:16]}...) and backs up her store while all of it is "
        f"hers (commitment {stored.commitment_number}); Bob gets "
        f"{sat(BREACH_INBOUND_SAT)} of inbound again")

    # She pays: the backup's commitment is revoked.
    (invoice,) = await bob.call("invoices", count=1, amount_msat=BREACH_PAYMENT_MSAT,
                                description="demo breach")
    paid = await alice.call("pay", invoice=invoice, idempotency_key="demo breach")
    check(paid["state"] == "succeeded", f"Alice's payment ended {paid['state']}")
    await check_channel(alice, alice_channel["channel_id"],
                        (BREACH_CHANNEL_SAT * 1000 - BREACH_PAYMENT_MSAT - fee),
                        BREACH_PAYMENT_MSAT + fee)
    say(f"  then pays Bob {amount(BREACH_PAYMENT_MSAT)} (plus the hub's {msat(fee)} fee): "
        f"her side is {amount(BREACH_CHANNEL_SAT * 1000 - BREACH_PAYMENT_MSAT - fee)} now, "
        f"and she has signed away commitment {stored.commitment_number}")

    # The cheat: the backup's commitment, published (regtest/cheat.py, test-only).
    (sent,) = await cheat.publish_old_commitment(
        rpc, backup, cheat.client_key_source(),
        channel_id=bytes.fromhex(alice_channel["channel_id"]))
    assert sent.raw_tx is not None and sent.txid is not None
    revoked_tx = Tx.parse(sent.raw_tx)
    commitment_fee_sat = weight_fee_sat(commitment_weight(0), alice_channel["feerate_per_kw"])
    tried_sat = BREACH_CHANNEL_SAT - commitment_fee_sat
    check([o.amount_sat for o in revoked_tx.outputs] == [tried_sat],
          f"the revoked commitment pays {[o.amount_sat for o in revoked_tx.outputs]}, not "
          f"Alice's {tried_sat} sat alone")
    await mine(rpc, faucet, 1, bob)
    say(f"Alice publishes the backup's revoked commitment {sent.txid[:16]}... (it "
        f"confirms): it pays her {sat(tried_sat)} (the whole channel less the "
        f"{sat(commitment_fee_sat)} commitment fee) after {alice_channel['to_self_delay_blocks']}"
        " blocks, unless someone holding the revocation key takes it first")

    # The hub's watch sees a revoked commitment confirmed and takes its output.
    penalty_tx = await spender_in_mempool(rpc, sent.txid, 0)
    check(len(penalty_tx.outputs) == 1, f"the penalty has {len(penalty_tx.outputs)} outputs")
    penalty_fee_sat = await tx_fee_sat(rpc, penalty_tx)
    taken_sat = penalty_tx.outputs[0].amount_sat
    check(taken_sat == tried_sat - penalty_fee_sat,
          f"the penalty keeps {taken_sat} sat of {tried_sat} sat for a {penalty_fee_sat} fee")
    await mine(rpc, faucet, 1, alice, bob)
    check(await rpc.gettxout(penalty_tx.txid_hex(), 0) is not None, "the penalty did not confirm")
    hub_wallet_final_sat = (before.hub_sat - BREACH_INBOUND_SAT - hub_funding_fee_sat
                            + taken_sat)
    check(await hub_wallet_sat(admin, at_least_sat=hub_wallet_final_sat)
          == hub_wallet_final_sat, "the hub's wallet is not act 2's - Bob's new channel - "
          "its funding fee + the penalty's output")
    alice_final_sat = before.alice_sat - BREACH_CHANNEL_SAT - alice_funding_fee_sat
    await check_wallet(alice, alice_final_sat, "act 2's - the channel - its funding fee")
    say(f"  the hub's own watch punishes: penalty tx {penalty_tx.txid_hex()[:16]}... takes "
        f"the whole {sat(tried_sat)} into the hub's wallet ({sat(taken_sat)} after the "
        f"{sat(penalty_fee_sat)} penalty fee); Alice keeps nothing of the channel")
    say(f"  Alice tried to take back {amount(BREACH_PAYMENT_MSAT + fee)} she had paid, and "
        f"lost {amount(BREACH_CHANNEL_SAT * 1000 - BREACH_PAYMENT_MSAT - fee)} that was still "
        f"hers: her wallet {sat(before.alice_sat)} -> {sat(alice_final_sat)} (the "
        f"{sat(BREACH_CHANNEL_SAT)} channel and its {sat(alice_funding_fee_sat)} funding fee)")
    say(f"  the hub's wallet: {sat(before.hub_sat)} -> {sat(hub_wallet_final_sat)} (less "
        f"Bob's new {sat(BREACH_INBOUND_SAT)} channel and its {sat(hub_funding_fee_sat)} "
        f"funding fee, plus the penalty's {sat(taken_sat)}); Bob keeps his "
        f"{amount(BREACH_PAYMENT_MSAT)} in his open channel")
    say(f"chain: height {await rpc.getblockcount()}")


async def story(endpoint: NodeEndpoint, datadir: Path, store: str) -> None:
    async with endpoint.rpc() as rpc:
        faucet = await chain_act(rpc, endpoint)
        await hub_act(rpc, endpoint, datadir, faucet, store)


def known_failure(exc: BaseException) -> Exception | None:
    """The failed check (or dead process, or refused call) behind `exc`; None for
    anything else (a bug: its traceback is the report)."""
    return find_exception(exc, (DemoCheckFailed, ActorDied, HarnessError, RpcError,
                                ChanhubError))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m regtest.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datadir", type=Path, help="keep everything here (default: temporary)")
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite",
                        help="the hub's store (postgres: a schema of its own on "
                             "127.0.0.1:5432, dropped afterwards)")
    args = parser.parse_args(argv)
    datadir = args.datadir or Path(tempfile.mkdtemp(prefix="chanhub-demo-"))
    started = time.monotonic()
    endpoint = start_node(datadir / "node", port=free_port())
    try:
        trio.run(story, endpoint, datadir, args.store)
    except Exception as exc:
        failure = known_failure(exc)
        if failure is None:
            raise
        say(f"demo failed: {failure}")
        return 1
    finally:
        stop_node(datadir / "node")
        if args.datadir is None:
            shutil.rmtree(datadir, ignore_errors=True)
    say(f"node stopped; demo done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
