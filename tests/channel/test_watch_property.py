"""Property: whatever the other side does, the watched side ends with at least its
balance of the latest state, less the fees of its own transactions.

Each example runs on a fresh real regtest node: a channel at commitment 3 (0..2
revoked) with an HTLC each way; we know the preimage of the peer's HTLC, the peer
may know ours. Hypothesis draws the peer's close (a revoked commitment, its latest,
or none: then we force close) and an interleaving of blocks, blocks that leave the
mempool out, reorgs (with or without the mempool forgotten) and the peer's
greedy spends (its delayed outputs, its HTLC transactions and claims, each as soon
as the node takes them). Then the chain runs until every timelock has passed.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from channel import scripts
from channel.commitment import (
    Side,
    build_commitment,
    commitment_number_from_tx,
    finalize_holder_htlc_tx,
)
from channel.errors import TransactionError
from channel.sweep import (
    claim_htlc_after_timeout,
    claim_htlc_with_preimage,
    sweep_second_stage,
    sweep_to_local,
)
from channel.tx import OutPoint, Tx
from channel.watch import GoOnChain
from regtest.node import Node
from regtest.pytest_plugin import ManualClock
from tests.channel.test_consensus import (
    DEST,
    FEERATE,
    PREIMAGE_OFFERED_BY_LOCAL,
    PREIMAGE_OFFERED_BY_REMOTE,
    Channel,
    accepted,
    height,
    open_channel,
)
from tests.channel.test_watch import WatchDriver, events, htlc_of

PEER_DEST = scripts.p2wpkh(bytes.fromhex("03" + "22" * 32))
LATEST = 3


class Peer:
    """The other side, spending whatever the chain lets it, as early as it can."""

    def __init__(self, channel: Channel, knows_preimage: bool) -> None:
        self.channel = channel
        self.knows_preimage = knows_preimage
        self.published: dict[bytes, Tx] = {}

    def try_send(self, node: Any, tx: Tx) -> None:
        if accepted(node, tx)[0]:
            node.call("sendrawtransaction", tx.serialize().hex())
            self.published[tx.txid()] = tx

    def close(self, node: Any, number: int) -> None:
        self.try_send(node, self.channel.signed_remote_commitment(number)[1])

    def act(self, node: Any, closing: Tx | None, number: int, ours: bool) -> None:
        if closing is None:
            return
        builders = self._own_spends(closing, number) if not ours else self._claims(closing,
                                                                                 number)
        for build in builders:
            try:
                tx = build()
            except TransactionError:
                continue
            self.try_send(node, tx)
        for htlc_tx in [t for t in self.published.values()
                        if len(t.inputs) == 1 and t.inputs[0].outpoint.txid == closing.txid()
                        and t.inputs[0].sequence == 0]:
            try:
                self.try_send(node, sweep_second_stage(
                    self.channel.remote_static, self.channel.remote, htlc_tx, number,
                    PEER_DEST, FEERATE))
            except TransactionError:
                continue

    def _own_spends(self, tx: Tx, number: int) -> list[Any]:
        """On its own commitment: to_local after the delay, its HTLC transactions."""
        ch = self.channel
        theirs, _, our_sigs = ch.signed_remote_commitment(number)
        builders: list[Any] = [lambda: sweep_to_local(ch.remote_static, ch.remote, tx, number,
                                                      PEER_DEST, FEERATE)]
        for pos, (index, h) in enumerate(theirs.htlc_outputs):
            if h.offered_by is Side.LOCAL:  # its own offer: HTLC-timeout
                builders.append(lambda i=index, p=pos: finalize_holder_htlc_tx(
                    ch.remote_static, ch.remote, theirs, i, our_sigs[p]))
            elif self.knows_preimage:
                builders.append(lambda i=index, p=pos: finalize_holder_htlc_tx(
                    ch.remote_static, ch.remote, theirs, i, our_sigs[p],
                    PREIMAGE_OFFERED_BY_LOCAL))
        return builders

    def _claims(self, tx: Tx, number: int) -> list[Any]:
        """On our commitment: our HTLC by preimage, its own after the timeout."""
        ch = self.channel
        lb, rb = ch.balances(number)
        ours_view = build_commitment(ch.remote_static, Side.REMOTE, number,
                                     ch.local.per_commitment_point(number), rb, lb,
                                     ch.mirrored_htlcs(), FEERATE)
        point = ours_view.per_commitment_point
        builders: list[Any] = []
        for output in ours_view.htlc_outputs:
            if output[1].offered_by is Side.LOCAL:  # its own offer, back after timeout
                builders.append(lambda o=output: claim_htlc_after_timeout(
                    ch.remote_static, ch.remote, tx, point, o, PEER_DEST, FEERATE))
            elif self.knows_preimage:
                builders.append(lambda o=output: claim_htlc_with_preimage(
                    ch.remote_static, ch.remote, tx, point, o, PREIMAGE_OFFERED_BY_LOCAL,
                    PEER_DEST, FEERATE))
        return builders


def fees_of(txs: dict[bytes, Tx], known: dict[OutPoint, int]) -> int:
    total = 0
    for tx in txs.values():
        total += sum(known[i.outpoint] for i in tx.inputs) - sum(o.amount_sat
                                                                 for o in tx.outputs)
    return total


STEPS = st.lists(st.sampled_from(
    ["mine", "mine", "mine_empty", "reorg1", "reorg2", "forgetful_reorg", "peer_close",
     "force_close", "peer", "fee_spike", "fee_drop"]), max_size=20)


@settings(max_examples=40)
@given(close=st.sampled_from([0, 1, 2, LATEST, None]), knows_preimage=st.booleans(),
       steps=STEPS)
def test_honest_side_keeps_its_latest_balance(
    close: int | None, knows_preimage: bool, steps: list[str]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        datadir = Path(tmp) / "node"
        shutil.copytree(TEMPLATE, datadir)
        node = Node(datadir, clock=ManualClock())
        try:
            run_scenario(node, close, knows_preimage, steps)
        finally:
            node.close()


def run_scenario(node: Any, close: int | None, knows_preimage: bool, steps: list[str]) -> None:
    channel = open_channel(node)
    node.mine(2)
    d = WatchDriver(node, channel)
    d.revoke_up_to(LATEST - 1)
    for n in range(LATEST):
        d.add_revoked(n)
    d.set_local(LATEST)
    d.set_remotes(LATEST)
    d.watch.add_preimage(PREIMAGE_OFFERED_BY_REMOTE)
    peer = Peer(channel, knows_preimage)
    ours_tx = channel.signed_local_commitment(LATEST)[1]

    def closing() -> tuple[Tx | None, int, bool]:
        spend = d.watch_closing()
        if spend is None:
            return None, -1, False
        if spend.txid() == ours_tx.txid():
            return spend, LATEST, True
        return spend, commitment_number_from_tx(channel.static, spend), False

    def peer_turn() -> None:
        tx, number, ours = closing()
        peer.act(node, tx, number, ours)

    for step in steps:
        if step == "mine":
            d.mine()
        elif step == "mine_empty":
            d.mine_empty()
        elif step in ("reorg1", "reorg2", "forgetful_reorg") and height(node) > d.start + 2:
            depth = 2 if step == "reorg2" else 1
            node.call("invalidateblock", str(node.call("getblockhash", height(node) - depth + 1)))
            if step == "forgetful_reorg":
                with node.store.transaction():
                    node.mempool.clear()
            d.sync()
            d.mine(depth + 1)
        elif step == "peer_close" and close is not None:
            peer.close(node, close)
        elif step == "force_close":
            peer.try_send(node, ours_tx)  # the driver's Channel.fail(): our latest
        elif step == "peer":
            peer_turn()
        elif step == "fee_spike":
            d.watch.set_feerate(50_000)
        elif step == "fee_drop":
            d.watch.set_feerate(253)
        if events(d.outputs, GoOnChain) and d.watch_closing() is None:
            peer.try_send(node, ours_tx)  # the driver calls Channel.fail()
    if close is not None:
        peer.close(node, close)
    d.mine()
    if d.watch_closing() is None:
        peer.try_send(node, ours_tx)
    for _ in range(45):  # past every CLTV (tip + 30) and CSV delay
        peer_turn()
        d.mine()
    peer_turn()
    d.mine(2)

    assert d.watch_closing() is not None
    # Our balance in the latest state, with the HTLCs that are ours on chain.
    latest = build_commitment(channel.static, Side.LOCAL, LATEST,
                              channel.local.per_commitment_point(LATEST),
                              *channel.balances(LATEST), channel.htlcs, FEERATE)
    expected = latest.tx.outputs[latest.to_local_index].amount_sat  # type: ignore[index]
    expected += htlc_of(channel, Side.REMOTE).amount_msat // 1000
    if not knows_preimage:
        expected += htlc_of(channel, Side.LOCAL).amount_msat // 1000
    ours_confirmed = d.confirmed_ours()
    received = sum(o.amount_sat for t in ours_confirmed.values() for o in t.outputs
                   if o.script_pubkey == DEST)
    fees = fees_of(ours_confirmed, d.known_outputs())
    assert received + fees >= expected, (close, knows_preimage, steps, received, fees, expected)


TEMPLATE: Path = Path()


def setup_module() -> None:
    global TEMPLATE
    tmp = Path(tempfile.mkdtemp(prefix="watch-property-"))
    node = Node(tmp / "node", clock=ManualClock())
    try:
        node.mine(101)
    finally:
        node.close()
    TEMPLATE = tmp / "node"
