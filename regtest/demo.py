"""`make demo`: the story Chanhub can tell today, on the embedded defaults.

Act 1, the chain. It starts the regtest node as a separate process (as an
operator would, through the harness), then, over bitcoind's JSON-RPC with the
client the hub uses: mines the faucet's first coins, funds Alice's address,
confirms it, has Alice pay Bob with a transaction signed here (not by the node's
wallet), confirms that, shows the node refusing a double spend of Alice's coin,
and prints heights and balances along the way.

Act 2, channels. Alice and Bob open channels directly with each other
(`regtest.twoparty`: two protocol/ state machines in this process, every
transaction judged by the node): payments off-chain, then the three ways a
channel ends: a cooperative close, a force close with the delayed sweep, and a
breach punished by a penalty. Later issues put the hub between them, with gRPC,
clients, invoices and a refund.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

import trio
from btclib.b32 import address_from_witness

from channel.chain import BitcoinRpc, RpcError, sat_to_btc
from channel.keys import pubkey_from_secret
from channel.scripts import hash160, p2wpkh, p2wpkh_script_code
from channel.spend import SpendableOutput, build_spend_tx
from channel.tx import OutPoint, Tx
from protocol import Broadcast, Channel
from regtest.harness import NodeEndpoint, free_port, start_node, stop_node
from regtest.twoparty import TwoPartyChannel

FEERATE_PER_KW = 2_500  # 10 sat/vB: comfortably above the node's relay minimum
CHANNEL_SAT = 1_000_000
TO_SELF_DELAY = 6  # blocks; short so the demo mines little (real channels use ~144)


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


async def find_output(rpc: BitcoinRpc, txid: str, script_pubkey: bytes) -> tuple[int, int]:
    """(vout, amount_sat) of the output of `txid` paying `script_pubkey`."""
    decoded = await rpc.getrawtransaction_verbose(txid)
    for out in decoded["vout"]:
        if bytes.fromhex(out["scriptPubKey"]["hex"]) == script_pubkey:
            info = await rpc.gettxout(txid, int(out["n"]))
            assert info is not None
            return int(out["n"]), info.value_sat
    raise LookupError(f"{txid} pays nothing to that script")


async def story(endpoint: NodeEndpoint) -> None:
    alice, bob = DemoKey("alice"), DemoKey("bob")
    async with endpoint.rpc() as rpc:
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
        await channel_story(rpc)


def show_balances(pair: TwoPartyChannel) -> str:
    alice_msat, bob_msat = pair.balances_msat()
    return f"Alice {alice_msat // 1000:,} sat, Bob {bob_msat // 1000:,} sat"


async def channel_story(rpc: BitcoinRpc) -> None:
    say("\n-- channels: Alice (funder, payer) and Bob (payee) --")
    coop = TwoPartyChannel(rpc, label="demo coop")
    funding_tx = await coop.open(CHANNEL_SAT)
    say(f"channel 1 open: {CHANNEL_SAT:,} sat in 2-of-2 output {funding_tx.txid_hex()}:0")
    for number, amount_sat in enumerate((120_000, 30_000, 5_000), start=1):
        coop.pay(amount_sat * 1000, f"demo {number}")
        say(f"  off-chain payment {number}: {amount_sat:,} sat -> {show_balances(coop)}")
    closing_tx, fee_sat = await coop.cooperative_close()
    say(
        f"  cooperative close {closing_tx.txid_hex()} confirmed: Bob gets "
        f"{value_to(closing_tx, coop.b.close_script):,} sat, Alice "
        f"{value_to(closing_tx, coop.a.close_script):,} sat (she paid the {fee_sat} sat fee)"
    )

    force = TwoPartyChannel(rpc, label="demo force", to_self_delay=TO_SELF_DELAY)
    await force.open(CHANNEL_SAT)
    force.pay(200_000_000, "demo force")
    say(f"channel 2 open and paid: {show_balances(force)}")
    commitment_tx = await force.force_close(force.a, "Bob stopped answering")
    say(f"  Alice force-closes: her commitment {commitment_tx.txid_hex()} confirmed")
    bob_sweep = force.sweep_to_remote(force.b, commitment_tx)
    await force.broadcast(bob_sweep)
    say(f"  Bob sweeps his {bob_sweep.outputs[0].amount_sat:,} sat at once")
    alice_sweep = force.sweep_to_local(force.a, commitment_tx)
    try:
        await force.broadcast(alice_sweep)
    except RpcError as refusal:
        say(f"  Alice's sweep before {TO_SELF_DELAY} blocks: refused ({refusal.message})")
    await force.mine(TO_SELF_DELAY - 1)
    await force.broadcast(alice_sweep)
    await force.mine(1)
    say(f"  after {TO_SELF_DELAY} blocks Alice sweeps {alice_sweep.outputs[0].amount_sat:,} sat")

    breach = TwoPartyChannel(rpc, label="demo breach", to_self_delay=TO_SELF_DELAY)
    await breach.open(CHANNEL_SAT)
    breach.pay(100_000_000, "demo breach 1")
    backup = copy.deepcopy(breach.a.snapshots[-1])
    breach.pay(600_000_000, "demo breach 2")
    say(f"channel 3 open and paid: {show_balances(breach)}; Alice kept an old backup")
    cheater = Channel.restore(backup)
    revoked = next(a for a in cheater.fail("restored a backup") if isinstance(a, Broadcast))
    revoked_tx = Tx.parse(revoked.raw_tx)
    await breach.broadcast(revoked_tx)
    await breach.mine(1)
    say(f"  Alice publishes her revoked commitment {revoked_tx.txid_hex()} (it confirms)")
    penalty = breach.penalty(breach.b, revoked_tx)
    await breach.broadcast(penalty)
    bob_own = breach.sweep_to_remote(breach.b, revoked_tx)
    await breach.broadcast(bob_own)
    await breach.mine(1)
    say(
        f"  Bob punishes: penalty takes Alice's {penalty.outputs[0].amount_sat:,} sat, "
        f"plus his own {bob_own.outputs[0].amount_sat:,} sat; Alice keeps nothing"
    )
    say(f"chain: height {await rpc.getblockcount()}")


def value_to(tx: Tx, script_pubkey: bytes) -> int:
    return sum(out.amount_sat for out in tx.outputs if out.script_pubkey == script_pubkey)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m regtest.demo", description=__doc__)
    parser.add_argument("--datadir", type=Path, help="keep the chain here (default: temporary)")
    args = parser.parse_args(argv)
    datadir = args.datadir or Path(tempfile.mkdtemp(prefix="chanhub-demo-"))
    endpoint = start_node(datadir, port=free_port())
    try:
        trio.run(story, endpoint)
    finally:
        stop_node(datadir)
        if args.datadir is None:
            shutil.rmtree(datadir, ignore_errors=True)
    say("node stopped; demo done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
