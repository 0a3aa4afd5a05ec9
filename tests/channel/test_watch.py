"""The channel watch (channel/watch) against the real regtest node.

Every transaction the watch produces goes through the node's validation
(``testmempoolaccept``, ``sendrawtransaction``, mining): a penalty of a revoked
commitment with HTLCs both ways, a split penalty over the weight limit, the
second-stage penalty, our force close (CSV and CLTV refused one block early),
the peer's force close with and without the preimage, reorgs (re-broadcast, the
funding reorged out, events reversed) and a fee bump accepted as a replacement.
``WatchDriver`` is what a hub or client driver does around the watch: feed it the
node's blocks (disconnects first on a reorg), send what it says.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from typing import Any

import pytest

from channel import scripts
from channel.chain.block import Block
from channel.commitment import (
    ChannelParty,
    ChannelStatic,
    CommitmentHtlc,
    Side,
    build_commitment,
    finalize_holder_htlc_tx,
    sign_counterparty_commitment,
)
from channel.keys import ChannelSecrets
from channel.shachain import RevocationStore
from channel.tx import OutPoint, Tx
from channel.watch import (
    Broadcast,
    ChannelClosedOnChain,
    ChannelWatch,
    ClaimConfirmed,
    ClaimUneconomical,
    FundingConfirmed,
    FundingDepthReached,
    GoOnChain,
    LocalCommitment,
    OutputLost,
    PreimageLearned,
    RemoteCommitment,
    Reversed,
    RevokedCommitment,
    WatchConfig,
    WatchOutput,
)
from channel.watch.claims import min_replacement_feerate
from regtest.node.errors import NodeRpcError
from tests.channel.test_consensus import (
    DEST,
    FEERATE,
    LOCAL_DELAY,
    PREIMAGE_OFFERED_BY_LOCAL,
    PREIMAGE_OFFERED_BY_REMOTE,
    REMOTE_DELAY,
    Channel,
    accepted,
    height,
    open_channel,
)


@pytest.fixture
def node(regtest_node: Any) -> Any:
    return regtest_node


def block_hash(node: Any, h: int) -> str:
    return str(node.call("getblockhash", h))


class WatchDriver:
    """Feeds one watch the node's chain and sends what it asks, as a driver would."""

    def __init__(self, node: Any, channel: Channel, *, tip_height: int | None = None,
                 config: WatchConfig | None = None) -> None:
        self.node = node
        self.channel = channel
        self.revocations = RevocationStore()
        tip = height(node) if tip_height is None else tip_height
        self.watch = ChannelWatch(channel.static, channel.local, self.revocations, DEST,
                                  config=config or WatchConfig(minimum_depth=1),
                                  tip_height=tip)
        self.hashes = {h: block_hash(node, h) for h in range(max(tip - 10, 0), tip + 1)}
        self.tip = tip
        self.outputs: list[WatchOutput] = []
        self.refused: list[tuple[Broadcast, str]] = []
        self.pending: dict[bytes, Tx] = {}
        self.start = tip
        self.chain: dict[int, list[Tx]] = {}  # every tx of the blocks synced, by height
        self.claimed: set[bytes] = set()  # txids of the watch's claims

    # -- channel data, as the state machine would hand it over ---------------------------

    def revoke_up_to(self, number: int) -> None:
        """The peer revealed its secrets for commitments 0..number (in order)."""
        lowest = self.revocations.lowest_index()
        start = 0 if lowest is None else 2**48 - 1 - lowest + 1
        for n in range(start, number + 1):
            self.revocations.add_commitment_secret(n, self.channel.remote.per_commitment_secret(n))

    def set_local(self, n: int) -> None:
        self.watch.set_local_commitment(local_commitment(self.channel, n))

    def set_remotes(self, *numbers: int) -> None:
        self.watch.set_remote_commitments([remote_commitment(self.channel, n) for n in numbers])

    def add_revoked(self, n: int) -> None:
        tx = self.channel.signed_remote_commitment(n)[1]
        self.watch.add_revoked_commitment(RevokedCommitment(
            n, tx.txid(), self.channel.remote_htlc_outputs(n), None, 0))

    # -- the chain -----------------------------------------------------------------------

    def sync(self, *, send: bool = True) -> list[WatchOutput]:
        node_tip = height(self.node)
        fork = min(self.tip, node_tip)
        while fork > 0 and self.hashes.get(fork) not in (None, block_hash(self.node, fork)):
            fork -= 1
        disconnected = [(h, self.hashes.pop(h)) for h in range(self.tip, fork, -1)
                        if h in self.hashes]
        for h, _ in disconnected:
            self.chain.pop(h, None)
        connected = []
        for h in range(fork + 1, node_tip + 1):
            bh = block_hash(self.node, h)
            block = Block.parse(bytes.fromhex(self.node.call("getblock", bh, 0)))
            connected.append((h, bh, list(block.txs[1:])))
            self.hashes[h] = bh
            self.chain[h] = list(block.txs[1:])
        self.tip = node_tip
        self.rebroadcast({tx.txid() for _, _, txs in connected for tx in txs})
        out = self.watch.chain_updated(disconnected, connected)
        self.outputs += out
        if send:
            self.send(out)
        return out

    def send(self, outputs: list[WatchOutput]) -> None:
        """Send each Broadcast; keep it, as channel.chain's Broadcaster does, and send
        it again after every block until it confirms (a reorg can drop it from the
        mempool: a CSV spend is not final one block lower)."""
        for o in outputs:
            if isinstance(o, Broadcast):
                if o.replaces is not None:
                    self.pending.pop(o.replaces, None)
                self.pending[o.tx.txid()] = o.tx
                if o.label not in ("funding", "closing"):
                    self.claimed.add(o.tx.txid())
                try:
                    self.node.call("sendrawtransaction", o.tx.serialize().hex())
                except NodeRpcError as exc:
                    self.refused.append((o, str(exc)))

    def rebroadcast(self, confirmed: set[bytes]) -> None:
        for txid in [t for t in self.pending if t in confirmed]:
            del self.pending[txid]
        in_mempool = set(self.node.call("getrawmempool"))
        for tx in self.pending.values():
            if tx.txid_hex() in in_mempool:
                continue
            try:
                self.node.call("sendrawtransaction", tx.serialize().hex())
            except NodeRpcError:
                continue  # not final yet, or its input was spent: the broadcaster waits

    # -- what is on the chain now ---------------------------------------------------------

    def confirmed(self) -> list[Tx]:
        return [tx for h in sorted(self.chain) for tx in self.chain[h]]

    def watch_closing(self) -> Tx | None:
        """The confirmed spend of the funding output, if any."""
        funding = self.channel.static.funding_outpoint
        return next((tx for tx in self.confirmed()
                     if any(i.outpoint == funding for i in tx.inputs)), None)

    def confirmed_ours(self) -> dict[bytes, Tx]:
        return {tx.txid(): tx for tx in self.confirmed() if tx.txid() in self.claimed}

    def known_outputs(self) -> dict[OutPoint, int]:
        return {OutPoint(tx.txid(), i): o.amount_sat for tx in self.confirmed()
                for i, o in enumerate(tx.outputs)}

    def mine(self, n: int = 1, *, send: bool = True) -> list[WatchOutput]:
        out: list[WatchOutput] = []
        for _ in range(n):
            self.node.mine(1)
            out += self.sync(send=send)
        return out

    def mine_empty(self, n: int = 1) -> list[WatchOutput]:
        """Blocks without the mempool's transactions (a congested chain)."""
        out: list[WatchOutput] = []
        for _ in range(n):
            self.node.call("generateblock", self.node.new_address(), [])
            out += self.sync()
        return out

    def invalidate_tip(self, *, forget_mempool: bool = True) -> list[WatchOutput]:
        self.node.call("invalidateblock", block_hash(self.node, height(self.node)))
        if forget_mempool:  # a node that lost its mempool: only a re-broadcast helps
            with self.node.store.transaction():
                self.node.mempool.clear()
        return self.sync()


def broadcasts(outputs: list[WatchOutput], label: str | None = None) -> list[Broadcast]:
    return [o for o in outputs if isinstance(o, Broadcast)
            and (label is None or o.label == label or o.label.startswith(label + " "))]


def events(outputs: list[WatchOutput], kind: type[Any]) -> list[Any]:
    return [o for o in outputs if isinstance(o, kind)]


def local_commitment(channel: Channel, n: int) -> LocalCommitment:
    """Our commitment n with the peer's signatures (commitment and HTLCs)."""
    lb, rb = channel.balances(n)
    point = channel.local.per_commitment_point(n)
    theirs_view = build_commitment(channel.remote_static, Side.REMOTE, n, point, rb, lb,
                                   channel.mirrored_htlcs(), FEERATE)
    sigs = sign_counterparty_commitment(channel.remote_static, channel.remote, theirs_view)
    return LocalCommitment(n, lb, rb, tuple(channel.htlcs), FEERATE,
                           sigs.commitment_signature, sigs.htlc_signatures)


def remote_commitment(channel: Channel, n: int) -> RemoteCommitment:
    lb, rb = channel.balances(n)
    return RemoteCommitment(n, channel.remote.per_commitment_point(n), lb, rb,
                            tuple(channel.htlcs), FEERATE)


def publish(node: Any, *txs: Tx) -> None:
    for tx in txs:
        node.call("sendrawtransaction", tx.serialize().hex())


def received_at_dest(node: Any, outputs: list[WatchOutput]) -> int:
    return sum(e.amount_sat for e in events(outputs, ClaimConfirmed))


def htlc_of(channel: Channel, offered_by: Side) -> CommitmentHtlc:
    return next(h for h in channel.htlcs if h.offered_by is offered_by)


# -- the revoked commitment: penalty, split, second stage ----------------------------------


def test_penalty_takes_to_local_and_htlcs_both_ways(node: Any) -> None:
    channel = open_channel(node)
    d = WatchDriver(node, channel)
    d.revoke_up_to(1)
    d.add_revoked(1)
    d.set_remotes(2)
    d.set_local(2)
    revoked, tx, _ = channel.signed_remote_commitment(1)
    publish(node, tx)
    out = d.mine()
    (closed,) = events(out, ChannelClosedOnChain)
    assert (closed.kind, closed.commitment_number) == ("revoked", 1)
    (penalty,) = broadcasts(out, "penalty")
    assert {i.outpoint.index for i in penalty.tx.inputs} == (
        {revoked.to_local_index} | {i for i, _ in revoked.htlc_outputs})
    assert penalty.deadline_height == closed.height + REMOTE_DELAY - 1
    assert broadcasts(out, "to_remote")
    assert d.refused == []
    out = d.mine()
    confirmed = {e.label for e in events(out, ClaimConfirmed)}
    assert confirmed == {"penalty", "to_remote"}
    # Everything the commitment paid is ours now, less fees.
    taken = received_at_dest(node, d.outputs)
    assert taken > sum(o.amount_sat for o in tx.outputs) - 5_000
    assert broadcasts(d.mine(3)) == []


def test_penalty_with_the_records_kept_by_the_driver(node: Any) -> None:
    """A driver that stores the Watch("revoked_commitment") records itself passes a
    lookup: the watch's JSON holds none of them, and the penalty still takes the HTLCs."""
    channel = open_channel(node)
    _, tx, _ = channel.signed_remote_commitment(1)
    records = {tx.txid(): RevokedCommitment(1, tx.txid(), channel.remote_htlc_outputs(1),
                                            None, 0)}
    d = WatchDriver(node, channel)
    d.watch = ChannelWatch(channel.static, channel.local, d.revocations, DEST,
                           tip_height=d.tip, revoked_lookup=records.get)
    d.revoke_up_to(1)
    assert d.watch.to_json()["revoked"] == []
    publish(node, tx)
    (penalty,) = broadcasts(d.mine(), "penalty")
    assert len(penalty.tx.inputs) == 3  # to_local and both HTLCs
    restored = ChannelWatch.from_json(json.loads(json.dumps(d.watch.to_json())),
                                      channel.local, d.revocations, records.get)
    assert restored.poll() == []
    d.mine()
    assert d.refused == []


def test_second_stage_penalty_takes_the_cheaters_htlc_tx(node: Any) -> None:
    channel = open_channel(node)
    d = WatchDriver(node, channel)
    d.revoke_up_to(1)
    d.add_revoked(1)
    theirs, tx, our_sigs = channel.signed_remote_commitment(1)
    # The cheater also confirms its HTLC-success for the HTLC we offered (it knows
    # the preimage), in the same block, before the watch sees anything.
    ours = htlc_of(channel, Side.LOCAL)
    pos, (index, _) = next((p, x) for p, x in enumerate(theirs.htlc_outputs)
                           if x[1].payment_hash == ours.payment_hash)
    success = finalize_holder_htlc_tx(channel.remote_static, channel.remote, theirs, index,
                                      our_sigs[pos], PREIMAGE_OFFERED_BY_LOCAL)
    publish(node, tx, success)
    out = d.mine()
    (learned,) = events(out, PreimageLearned)
    assert learned.payment_preimage == PREIMAGE_OFFERED_BY_LOCAL
    (penalty,) = broadcasts(out, "penalty")  # the commitment's outputs left
    assert OutPoint(tx.txid(), index) not in {i.outpoint for i in penalty.tx.inputs}
    assert len(penalty.tx.inputs) == 2  # to_local and the other HTLC
    (second,) = broadcasts(out, "penalty_second_stage")
    assert [i.outpoint for i in second.tx.inputs] == [OutPoint(success.txid(), 0)]
    assert second.deadline_height == height(node) + REMOTE_DELAY - 1
    assert d.refused == []
    out = d.mine()
    assert {e.label for e in events(out, ClaimConfirmed)} == {
        "penalty", "penalty_second_stage", "to_remote"}


class BigChannel(Channel):
    funding_sat: int = 0

    def balances(self, commitment_number: int) -> tuple[int, int]:
        local_msat = 500_000_000 + commitment_number * 10_000_000
        in_htlcs = sum(h.amount_msat for h in self.htlcs)
        return local_msat, self.funding_sat * 1000 - local_msat - in_htlcs


def big_preimage(htlc_id: int) -> bytes:
    return hashlib.sha256(b"htlc %d" % htlc_id).digest()


def open_big_channel(node: Any, funding_sat: int, htlcs: int) -> BigChannel:
    small = open_channel(node)
    local, remote = small.local, small.remote
    funding_spk = small.static.funding_script_pubkey
    txid_hex, vout = node.send_to_script(funding_spk, funding_sat)
    node.mine(1)
    static = ChannelStatic(OutPoint.from_display(txid_hex, vout), funding_sat,
                           small.static.local, small.static.remote, True)
    tip = height(node)
    many = [CommitmentHtlc(Side.LOCAL if i % 2 else Side.REMOTE, i, 3_000_000 + i * 1000,
                           hashlib.sha256(big_preimage(i)).digest(), tip + 40 + i % 7)
            for i in range(htlcs)]
    channel = BigChannel(node, local, remote, static, many)
    channel.funding_sat = funding_sat
    return channel


def test_penalty_over_the_weight_limit_is_split(node: Any) -> None:
    # BOLT #2's maximum, 483 HTLCs each way, still fits one penalty here (966 HTLC
    # inputs and to_local weigh 394,621 WU in the legacy format); past about 980
    # outputs one transaction would not be relayed.
    channel = open_big_channel(node, 20_000_000, 1_100)
    d = WatchDriver(node, channel)
    d.revoke_up_to(1)
    d.add_revoked(1)
    _, tx, _ = channel.signed_remote_commitment(1)
    publish(node, tx)
    out = d.mine()
    penalties = broadcasts(out, "penalty")
    assert len(penalties) == 2
    assert all(p.tx.weight() <= 400_000 for p in penalties)
    spent = [i.outpoint for p in penalties for i in p.tx.inputs]
    assert len(spent) == len(set(spent)) == 1_101  # every HTLC and to_local, once
    assert d.refused == []
    out = d.mine()
    assert len([e for e in events(out, ClaimConfirmed) if e.label == "penalty"]) == 2


def test_a_split_penalty_keeps_its_other_group_when_the_cheater_takes_an_htlc(
    node: Any,
) -> None:
    channel = open_big_channel(node, 20_000_000, 1_100)
    d = WatchDriver(node, channel)
    d.revoke_up_to(1)
    d.add_revoked(1)
    theirs, tx, our_sigs = channel.signed_remote_commitment(1)
    publish(node, tx)
    out = d.mine(send=False)  # the first group is held back
    first, second = broadcasts(out, "penalty")
    d.send([second, *broadcasts(out, "to_remote")])
    # The cheater's HTLC-success for an HTLC we offered, one the first group takes.
    in_first = {i.outpoint for i in first.tx.inputs}
    pos, (index, h) = next(
        (p, x) for p, x in enumerate(theirs.htlc_outputs)
        if x[1].offered_by is Side.REMOTE and OutPoint(tx.txid(), x[0]) in in_first)
    success = finalize_holder_htlc_tx(channel.remote_static, channel.remote, theirs, index,
                                      our_sigs[pos], big_preimage(h.htlc_id))
    # A block with only the cheater's transaction: the second group waits in the mempool.
    node.call("generateblock", node.new_address(), [success.serialize().hex()])
    out = d.sync()
    # Only the first group is signed again (without the output taken); the second
    # stays as it was: a regrouped one would conflict with it, pay less, be refused.
    (rest,) = broadcasts(out, "penalty")
    assert {i.outpoint for i in rest.tx.inputs} == in_first - {OutPoint(tx.txid(), index)}
    assert len(broadcasts(out, "penalty_second_stage")) == 1
    assert [e.payment_hash for e in events(out, PreimageLearned)] == [h.payment_hash]
    out = d.mine()
    assert second.tx.txid() in {e.txid for e in events(out, ClaimConfirmed)}
    d.mine()
    assert d.refused == []
    assert {e.label for e in events(d.outputs, ClaimConfirmed)} == {
        "penalty", "penalty_second_stage", "to_remote"}
    assert len([e for e in events(d.outputs, ClaimConfirmed) if e.label == "penalty"]) == 2


def test_a_penalty_that_would_be_one_heavy_tx_is_refused_by_the_node(node: Any) -> None:
    """The split matters: the same inputs in one transaction are not relayed."""
    channel = open_big_channel(node, 20_000_000, 1_100)
    d = WatchDriver(node, channel, config=WatchConfig(minimum_depth=1, max_tx_weight=10**7))
    d.revoke_up_to(1)
    d.add_revoked(1)
    _, tx, _ = channel.signed_remote_commitment(1)
    publish(node, tx)
    out = d.mine()
    (penalty,) = broadcasts(out, "penalty")
    assert penalty.tx.weight() > 400_000
    ((_, reason),) = d.refused
    assert "tx-size" in reason


# -- our own force close ----------------------------------------------------------------------


def test_own_close_sweeps_after_the_delay_and_htlc_txs_at_their_heights(node: Any) -> None:
    channel = open_channel(node)
    d = WatchDriver(node, channel)
    d.set_local(3)
    d.set_remotes(3)
    d.watch.add_preimage(PREIMAGE_OFFERED_BY_REMOTE)
    _, tx, _ = channel.signed_local_commitment(3)
    signed = d.watch.local_commitment_tx()
    assert signed is not None and signed.serialize() == tx.serialize()
    publish(node, tx)
    out = d.mine()
    confirmed_at = height(node)
    assert events(out, ChannelClosedOnChain)[0].kind == "local"
    assert len(broadcasts(out, "htlc_success")) == 1  # the preimage: at once
    assert broadcasts(out, "to_local") == []
    ours = htlc_of(channel, Side.LOCAL)
    # The state survives a restart in the middle (JSON, as the driver stores it).
    d.watch = ChannelWatch.from_json(json.loads(json.dumps(d.watch.to_json())),
                                     channel.local, d.revocations)
    out = d.mine(confirmed_at + LOCAL_DELAY - 1 - height(node))
    (sweep,) = broadcasts(out, "to_local")
    # One block earlier the node refuses it (CSV): take the tip back and ask.
    node.call("invalidateblock", block_hash(node, height(node)))
    assert "non-BIP68-final" in accepted(node, sweep.tx)[1]
    node.mine(1)
    assert accepted(node, sweep.tx)[0]
    d.sync()
    out = d.mine(ours.cltv_expiry - height(node))
    (timeout,) = broadcasts(out, "htlc_timeout")
    assert timeout.tx.locktime == ours.cltv_expiry
    out = d.mine()
    timeout_at = height(node)
    assert "htlc_timeout 0" in {e.label for e in events(out, ClaimConfirmed)}
    assert "htlc_success 0" in {e.label for e in events(d.outputs, ClaimConfirmed)}
    out = d.mine(timeout_at + LOCAL_DELAY - 1 - height(node))
    seconds = broadcasts(out, "second_stage")
    assert [b.label for b in seconds] == ["second_stage 0"]  # the timeout's; success swept
    assert d.refused == []
    d.mine()
    labels = {e.label for e in events(d.outputs, ClaimConfirmed)}
    assert labels == {"htlc_success 0", "htlc_timeout 0", "to_local", "second_stage 0"}
    assert events(d.outputs, Reversed) == []


# -- the peer's force close -----------------------------------------------------------------


def test_remote_close_claims_with_the_preimage_and_after_the_timeout(node: Any) -> None:
    channel = open_channel(node)
    d = WatchDriver(node, channel)
    d.set_local(4)
    d.set_remotes(4)
    d.watch.add_preimage(PREIMAGE_OFFERED_BY_REMOTE)
    _, tx, _ = channel.signed_remote_commitment(4)
    publish(node, tx)
    out = d.mine()
    assert events(out, ChannelClosedOnChain)[0].kind == "remote"
    assert [b.label for b in broadcasts(out)] == ["to_remote", "htlc_preimage 0"]
    ours = htlc_of(channel, Side.LOCAL)
    out = d.mine(ours.cltv_expiry - 1 - height(node))
    assert broadcasts(out, "htlc_timeout") == []
    out = d.mine()
    (reclaim,) = broadcasts(out, "htlc_timeout")
    assert reclaim.tx.locktime == ours.cltv_expiry
    d.mine()
    assert {e.label for e in events(d.outputs, ClaimConfirmed)} == {
        "to_remote", "htlc_preimage 0", "htlc_timeout 0"}
    assert d.refused == []


def test_remote_close_without_preimage_learns_it_from_the_peers_claim(node: Any) -> None:
    channel = open_channel(node)
    d = WatchDriver(node, channel)
    d.set_remotes(4)
    theirs, tx, our_sigs = channel.signed_remote_commitment(4)
    publish(node, tx)
    out = d.mine()
    assert [b.label for b in broadcasts(out)] == ["to_remote"]  # no preimage: no claim
    # The peer takes the HTLC we offered with its HTLC-success (it has the preimage).
    ours = htlc_of(channel, Side.LOCAL)
    pos, (index, _) = next((p, x) for p, x in enumerate(theirs.htlc_outputs)
                           if x[1].payment_hash == ours.payment_hash)
    publish(node, finalize_holder_htlc_tx(channel.remote_static, channel.remote, theirs,
                                          index, our_sigs[pos], PREIMAGE_OFFERED_BY_LOCAL))
    out = d.mine()
    (learned,) = events(out, PreimageLearned)
    assert learned.payment_hash == ours.payment_hash
    assert learned.payment_preimage == PREIMAGE_OFFERED_BY_LOCAL
    assert [e.label for e in events(out, OutputLost)] == ["htlc_timeout 0"]
    out = d.mine(ours.cltv_expiry + 2 - height(node))
    assert broadcasts(out, "htlc_timeout") == []  # nothing left to time out


# -- reorgs ----------------------------------------------------------------------------------------


def test_reorg_rebroadcasts_a_claim_and_reverses_its_event(node: Any) -> None:
    channel = open_channel(node)
    d = WatchDriver(node, channel)
    d.set_remotes(4)
    _, tx, _ = channel.signed_remote_commitment(4)
    publish(node, tx)
    (sweep,) = broadcasts(d.mine(), "to_remote")
    out = d.mine()
    (done,) = events(out, ClaimConfirmed)
    assert done.txid == sweep.tx.txid()
    out = d.invalidate_tip()  # the node forgot it too
    assert [r.event for r in events(out, Reversed)] == [done]
    (again,) = broadcasts(out, "to_remote")
    assert again.tx.txid() == sweep.tx.txid()  # the same transaction, sent again
    assert d.refused == []
    out = d.mine()
    assert events(out, ClaimConfirmed) == [dataclasses.replace(done, height=height(node))]

    # Deeper: the commitment itself leaves the chain; the watch sends it again.
    node.call("invalidateblock", block_hash(node, height(node) - 1))
    with node.store.transaction():
        node.mempool.clear()
    out = d.sync()
    assert {type(r.event) for r in events(out, Reversed)} == {ChannelClosedOnChain,
                                                              ClaimConfirmed}
    assert [b.tx.txid() for b in broadcasts(out, "closing")] == [tx.txid()]
    out = d.mine()
    assert events(out, ChannelClosedOnChain)
    assert broadcasts(out, "to_remote")  # from the mempool or sent again
    d.mine()
    assert d.refused == []


def test_an_event_moved_by_one_sync_step_is_reversed_then_reported_again(node: Any) -> None:
    channel = open_channel(node)
    d = WatchDriver(node, channel)
    d.set_remotes(4)
    _, tx, _ = channel.signed_remote_commitment(4)
    publish(node, tx)
    (closed,) = events(d.mine(), ChannelClosedOnChain)
    # One sync step: the block is replaced by an empty one, the close confirms above.
    node.call("invalidateblock", block_hash(node, closed.height))
    node.call("generateblock", node.new_address(), [])
    node.mine(1)
    out = d.sync()
    assert Reversed(closed) in out
    (again,) = events(out, ChannelClosedOnChain)
    assert again == dataclasses.replace(closed, height=closed.height + 1)


def test_funding_reorged_out_before_its_depth_is_sent_again(node: Any) -> None:
    channel = open_channel(node)  # mined the funding tx at the tip
    d = WatchDriver(node, channel, tip_height=height(node) - 1,
                    config=WatchConfig(minimum_depth=3))
    out = d.sync()
    (funded,) = events(out, FundingConfirmed)
    assert events(out, FundingDepthReached) == []
    out = d.invalidate_tip()
    assert [r.event for r in events(out, Reversed)] == [funded]
    (again,) = broadcasts(out, "funding")
    assert again.tx.txid() == channel.static.funding_outpoint.txid
    out = d.mine(3)
    assert len(events(out, FundingConfirmed)) == 1
    assert len(events(out, FundingDepthReached)) == 1
    assert d.refused == []


# -- fees ------------------------------------------------------------------------------------------


def test_penalty_is_bumped_as_its_deadline_nears_and_the_node_replaces_it(node: Any) -> None:
    channel = open_channel(node)
    d = WatchDriver(node, channel)
    d.revoke_up_to(1)
    d.add_revoked(1)
    _, tx, _ = channel.signed_remote_commitment(1)
    publish(node, tx)
    d.watch.set_feerate(300)
    (first,) = broadcasts(d.mine(), "penalty")
    bumps = [first]
    for _ in range(REMOTE_DELAY - 2):  # blocks that leave it out (a full mempool)
        bumps += broadcasts(d.mine_empty(), "penalty")
    assert len(bumps) >= 2
    for old, new in itertools.pairwise(bumps):
        assert new.replaces == old.tx.txid()
        assert {i.outpoint for i in new.tx.inputs} == {i.outpoint for i in old.tx.inputs}
        assert new.tx.outputs[0].amount_sat < old.tx.outputs[0].amount_sat
    assert d.refused == []  # every version accepted as a replacement of the last
    mempool = node.call("getrawmempool")
    assert bumps[-1].tx.txid_hex() in mempool and first.tx.txid_hex() not in mempool
    d.mine()
    assert "penalty" in {e.label for e in events(d.outputs, ClaimConfirmed)}


def test_replacement_rate_covers_the_incremental_relay_fee() -> None:
    assert min_replacement_feerate(253) == 503
    assert min_replacement_feerate(10_000) == 12_500


# -- pure: stuck HTLCs, uneconomical claims, config ------------------------------------------------


def fake_channel() -> Channel:
    local = ChannelSecrets.from_seed(b"\x01" * 32)
    remote = ChannelSecrets.from_seed(b"\x02" * 32)
    static = ChannelStatic(OutPoint(b"\x07" * 32, 0), 1_000_000,
                           ChannelParty(local.basepoints(), 546, REMOTE_DELAY),
                           ChannelParty(remote.basepoints(), 546, LOCAL_DELAY), True)
    htlcs = [CommitmentHtlc(Side.LOCAL, 0, 50_000_000, b"\x11" * 32, 150),
             CommitmentHtlc(Side.REMOTE, 0, 60_000_000,
                            hashlib.sha256(PREIMAGE_OFFERED_BY_REMOTE).digest(), 200)]
    return Channel(None, local, remote, static, htlcs)


def test_stuck_htlcs_go_on_chain_at_their_deadlines() -> None:
    channel = fake_channel()
    watch = ChannelWatch(channel.static, channel.local, RevocationStore(), DEST, tip_height=100)
    watch.set_local_commitment(local_commitment(channel, 2))
    watch.add_preimage(PREIMAGE_OFFERED_BY_REMOTE)
    seen: dict[int, list[GoOnChain]] = {}
    for h in range(101, 160):
        seen[h] = events(watch.block_connected(h, f"{h:064x}", []), GoOnChain)
    assert [(h, e.offered_by_us) for h, es in seen.items() for e in es] == [
        (152, True)]  # 150 + OFFERED_HTLC_GRACE_BLOCKS
    out: list[WatchOutput] = []
    for h in range(160, 190):
        out += watch.block_connected(h, f"{h:064x}", [])
    (fulfil,) = events(out, GoOnChain)
    assert (fulfil.offered_by_us, fulfil.deadline_height) == (False, 200 - 18)
    # Sticky: a reorg below the deadline does not take the decision back.
    assert events(watch.block_disconnected(189, f"{189:064x}"), Reversed) == []


def test_defaults_agree_with_the_state_machine() -> None:
    from protocol import config

    c = WatchConfig()
    assert c.offered_htlc_grace_blocks == config.OFFERED_HTLC_GRACE_BLOCKS
    assert c.fulfilled_htlc_deadline_blocks == config.FULFILLED_HTLC_DEADLINE_BLOCKS
    assert c.min_feerate_per_kw == config.MIN_FEERATE_PER_KW


def test_a_claim_not_worth_its_fee_is_left_alone_and_reported(node: Any) -> None:
    channel = open_channel(node)
    d = WatchDriver(node, channel)
    d.set_remotes(4)
    _, tx, _ = channel.signed_remote_commitment(4)
    publish(node, tx)
    d.watch.set_feerate(100_000_000)  # 100k sat/vB: the sweep pays it all... too much
    out = d.mine()
    # The top rate would eat it: the watch falls back to the estimate, then the floor.
    (sweep,) = broadcasts(out, "to_remote")
    assert sweep.tx.outputs[0].amount_sat > 0
    # An output of 600 sat: at the floor its fee leaves less than the dust limit.
    watch = ChannelWatch(channel.static, channel.local, RevocationStore(), DEST,
                         tip_height=height(node))
    poor = fake_poor_commitment(channel)
    watch.set_remote_commitments([poor])
    out = watch.block_connected(height(node) + 1, "00" * 32, [
        finalized_remote(channel, poor)])
    assert [e.label for e in events(out, ClaimUneconomical)] == ["to_remote"]
    assert broadcasts(out, "to_remote") == []


def fake_poor_commitment(channel: Channel) -> RemoteCommitment:
    """The peer's commitment 5 in which we own 600 sat (after the fee we pay)."""
    return RemoteCommitment(5, channel.remote.per_commitment_point(5), 2_410_000,
                            1_000_000_000 - 2_410_000, (), FEERATE)


def finalized_remote(channel: Channel, r: RemoteCommitment) -> Tx:
    from channel.commitment import finalize_holder_commitment

    ours = build_commitment(channel.static, Side.REMOTE, r.commitment_number,
                            r.per_commitment_point, r.local_msat, r.remote_msat, r.htlcs,
                            r.feerate_per_kw)
    sigs = sign_counterparty_commitment(channel.static, channel.local, ours)
    theirs = build_commitment(channel.remote_static, Side.LOCAL, r.commitment_number,
                              r.per_commitment_point, r.remote_msat, r.local_msat, (),
                              r.feerate_per_kw)
    return finalize_holder_commitment(channel.remote_static, channel.remote, theirs,
                                      sigs.commitment_signature)



# -- channel data arriving late, a frozen close, the JSON state ---------------------------------


def test_a_preimage_learned_after_the_close_is_claimed_at_once(node: Any) -> None:
    channel = open_channel(node)
    d = WatchDriver(node, channel)
    d.set_remotes(4)
    _, tx, _ = channel.signed_remote_commitment(4)
    publish(node, tx)
    assert [b.label for b in broadcasts(d.mine())] == ["to_remote"]
    # The upstream channel settled: the preimage reaches the watch between blocks.
    d.watch.add_preimage(PREIMAGE_OFFERED_BY_REMOTE)
    out = d.watch.poll()
    d.send(out)
    assert [b.label for b in broadcasts(out)] == ["htlc_preimage 0"]
    d.mine()
    assert "htlc_preimage 0" in {e.label for e in events(d.outputs, ClaimConfirmed)}
    assert d.refused == []


def test_commitments_are_frozen_once_a_close_is_seen(node: Any) -> None:
    channel = open_channel(node)
    d = WatchDriver(node, channel)
    d.set_local(3)
    _, tx, _ = channel.signed_local_commitment(3)
    publish(node, tx)
    d.mine()
    # A state machine that still moves on (a stale driver) must not change what the
    # confirmed commitment is resolved against, even across a reorg.
    d.set_local(5)
    d.set_remotes(5)
    assert d.watch.local is not None and d.watch.local.commitment_number == 3
    out = d.invalidate_tip(forget_mempool=False)
    assert events(out, Reversed)
    out = d.mine()
    assert [e.kind for e in events(out, ChannelClosedOnChain)] == ["local"]


def test_json_state_round_trips_and_refuses_malformed_data(node: Any) -> None:
    channel = open_channel(node)
    d = WatchDriver(node, channel)
    d.revoke_up_to(1)
    d.add_revoked(1)
    d.set_local(2)
    d.set_remotes(2)
    d.watch.add_preimage(PREIMAGE_OFFERED_BY_REMOTE)
    _, tx, _ = channel.signed_remote_commitment(1)
    publish(node, tx)
    d.mine()
    state = json.loads(json.dumps(d.watch.to_json()))
    restored = ChannelWatch.from_json(state, channel.local, d.revocations)
    assert restored.to_json() == state
    assert restored.poll() == []  # nothing new to say: same claims, same events
    with pytest.raises(ValueError, match="version"):
        ChannelWatch.from_json({**state, "version": 99}, channel.local, d.revocations)
    with pytest.raises(ValueError, match="malformed"):
        ChannelWatch.from_json({**state, "blocks": [[1, "x", ["zz"]]]}, channel.local,
                               d.revocations)
    broken = json.loads(json.dumps(state))
    del broken["reported"]
    with pytest.raises(ValueError, match="malformed"):
        ChannelWatch.from_json(broken, channel.local, d.revocations)


# -- many channels behind one listener --------------------------------------------------------


def test_watch_set_gives_each_watch_its_transactions(node: Any) -> None:
    from channel.watch.listener import WatchSet

    a, b = open_channel(node), open_channel(node)
    da, db = WatchDriver(node, a), WatchDriver(node, b)
    da.revoke_up_to(1)
    da.add_revoked(1)
    db.set_remotes(4)
    watches = WatchSet()
    watches.add("a", da.watch)
    watches.add("b", db.watch)
    # In one block: a's revoked commitment and the cheater's HTLC-success spending it
    # (parent and child), b's peer's latest commitment, and an unrelated payment.
    theirs, revoked, our_sigs = a.signed_remote_commitment(1)
    ours = htlc_of(a, Side.LOCAL)
    pos, (index, _) = next((p, x) for p, x in enumerate(theirs.htlc_outputs)
                           if x[1].payment_hash == ours.payment_hash)
    success = finalize_holder_htlc_tx(a.remote_static, a.remote, theirs, index, our_sigs[pos],
                                      PREIMAGE_OFFERED_BY_LOCAL)
    publish(node, revoked, success, b.signed_remote_commitment(4)[1])
    node.send_to_script(DEST, 50_000)
    node.mine(1)
    h = height(node)
    bh = block_hash(node, h)
    block = Block.parse(bytes.fromhex(node.call("getblock", bh, 0)))
    watches.block_connected(h, bh, block.txs[1:])
    out = watches.take_outputs()
    assert sorted(b.label for b in broadcasts(out["a"])) == [
        "penalty", "penalty_second_stage", "to_remote"]
    assert [e.kind for e in events(out["b"], ChannelClosedOnChain)] == ["remote"]
    assert [b.label for b in broadcasts(out["b"])] == ["to_remote"]
    # The unrelated payment is not kept.
    assert [k.tx for k in da.watch.blocks[h][1]] == [revoked, success]
    watches.block_disconnected(h, bh)
    out = watches.take_outputs()
    assert {type(r.event) for r in events(out["a"], Reversed)} == {ChannelClosedOnChain,
                                                                  PreimageLearned}
    assert watches.take_outputs() == {}


# -- the other closes: cooperative, a commitment we hold no data for --------------------------


def test_cooperative_close_is_reported_and_claims_nothing(node: Any) -> None:
    from channel.closing import build_closing_tx, finalize_closing_tx, sign_closing_tx

    channel = open_channel(node)
    d = WatchDriver(node, channel)
    d.set_local(3)
    d.set_remotes(3)
    remote_spk = scripts.p2wpkh(channel.remote.basepoints().payment_basepoint)
    tx = build_closing_tx(channel.static, 600_000, 399_000, DEST, remote_spk)
    remote_tx = build_closing_tx(channel.remote_static, 399_000, 600_000, remote_spk, DEST)
    signed = finalize_closing_tx(channel.static, tx, sign_closing_tx(channel.static,
                                                                     channel.local, tx),
                                 sign_closing_tx(channel.remote_static, channel.remote,
                                                 remote_tx))
    publish(node, signed)
    out = d.mine()
    assert [(e.kind, e.commitment_number) for e in events(out, ChannelClosedOnChain)] == [
        ("cooperative", -1)]
    assert broadcasts(out) == []
    assert broadcasts(d.mine(10)) == []


def test_a_commitment_we_hold_no_data_for_still_gives_us_to_remote(node: Any) -> None:
    """Data loss: the peer closes with a commitment newer than anything we have; with
    the static remote key our to_remote needs no per-commitment point."""
    channel = open_channel(node)
    d = WatchDriver(node, channel)
    d.set_remotes(4)
    _, tx, _ = channel.signed_remote_commitment(7)
    publish(node, tx)
    out = d.mine()
    assert [(e.kind, e.commitment_number) for e in events(out, ChannelClosedOnChain)] == [
        ("unknown", 7)]
    assert [b.label for b in broadcasts(out)] == ["to_remote"]
    d.mine()
    assert [e.label for e in events(d.outputs, ClaimConfirmed)] == ["to_remote"]
    assert d.refused == []
