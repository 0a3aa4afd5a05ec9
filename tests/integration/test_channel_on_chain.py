"""The three layers together on a real chain: protocol/ drives two parties, channel/
builds and signs their transactions, and the embedded regtest node judges every one of
them with its consensus rules.

One channel per test, opened for real (the funder's wallet pays the 2-of-2 funding
output, broadcast only after `funding_signed`), paid off-chain, then ended each of the
three ways a channel ends: a cooperative close, a force close with the delayed sweep,
and a breach punished by a penalty transaction.
"""

from __future__ import annotations

import copy
import hashlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pytest

from channel.commitment import commitment_number_from_tx
from channel.keys import pubkey_from_secret
from channel.penalty import build_penalty_tx
from channel.scripts import p2wpkh
from channel.sweep import sweep_to_local, sweep_to_remote
from channel.tx import Tx
from proto import peer_pb2
from protocol import (
    Action,
    Broadcast,
    Channel,
    ChannelClosed,
    ChannelOpened,
    FundingNeeded,
    FundingSigned,
    HtlcFulfilled,
    HtlcReceived,
    LocalConfig,
    Persist,
    Send,
)
from regtest.node import Node, NodeRpcError

FUNDING_SAT = 1_000_000
FEERATE_PER_KW = 2_500
TO_SELF_DELAY = 6  # short, so the test mines few blocks; both sides demand it
REGTEST_GENESIS = bytes.fromhex(
    "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
)[::-1]


def key(name: str) -> bytes:
    return hashlib.sha256(f"integration {name}".encode()).digest()


@dataclass
class Party:
    name: str
    channel: Channel
    wallet_script: bytes
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    events: list[Action] = field(default_factory=list)
    broadcasts: list[Broadcast] = field(default_factory=list)


class Link:
    """Two parties and the in-order message link between them."""

    def __init__(self, node: Node) -> None:
        self.node = node
        config = LocalConfig(to_self_delay=TO_SELF_DELAY, minimum_depth=1)
        self.a = Party(
            "a",
            Channel.outbound(
                config=config,
                channel_seed=key("a seed"),
                temporary_channel_id=key("temporary id"),
                chain_hash=REGTEST_GENESIS,
                close_script=p2wpkh(pubkey_from_secret(key("a close"))),
            ),
            p2wpkh(pubkey_from_secret(key("a wallet"))),
        )
        self.b = Party(
            "b",
            Channel.inbound(
                config=config,
                channel_seed=key("b seed"),
                chain_hash=REGTEST_GENESIS,
                close_script=p2wpkh(pubkey_from_secret(key("b close"))),
            ),
            p2wpkh(pubkey_from_secret(key("b wallet"))),
        )
        self.queue: deque[tuple[Party, peer_pb2.PeerMessage]] = deque()

    @property
    def height(self) -> int:
        return int(self.node.call("getblockcount"))

    def other(self, party: Party) -> Party:
        return self.b if party is self.a else self.a

    def run(self, party: Party, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.queue.append((self.other(party), action.message))
            elif isinstance(action, Persist):
                party.snapshots.append(copy.deepcopy(action.snapshot))
            elif isinstance(action, Broadcast):
                party.broadcasts.append(action)
            else:
                party.events.append(action)

    def pump(self) -> None:
        while self.queue:
            party, message = self.queue.popleft()
            self.run(party, party.channel.handle(message, height=self.height))

    def events(self, party: Party, kind: type) -> list[Any]:
        return [e for e in party.events if isinstance(e, kind)]

    def open(self) -> Tx:
        self.run(self.a, self.a.channel.open(
            funding_sat=FUNDING_SAT, push_msat=0, feerate_per_kw=FEERATE_PER_KW))
        self.pump()
        (needed,) = self.events(self.a, FundingNeeded)
        # The funder's wallet builds and signs the funding tx but keeps it until the
        # fundee has signed our first commitment: only then is broadcasting safe.
        with self.node.lock:
            wallet_tx, vout = self.node.wallet.create_spend(needed.script_pubkey, needed.amount_sat)
        funding_tx = Tx.parse(wallet_tx.serialize(include_witness=True))
        self.run(self.a, self.a.channel.funding_outpoint(funding_tx.txid(), vout))
        self.pump()
        (signed,) = self.events(self.a, FundingSigned)
        assert signed.funding_txid == funding_tx.txid()
        self.node.call("sendrawtransaction", funding_tx.serialize().hex())
        self.node.mine(1)
        for party in (self.a, self.b):
            self.run(party, party.channel.funding_confirmed())
        self.pump()
        assert self.events(self.a, ChannelOpened) and self.events(self.b, ChannelOpened)
        return funding_tx

    def pay(self, amount_msat: int, n: int) -> None:
        """A pays B: add, commit both ways, fulfill, commit both ways."""
        preimage = key(f"preimage {n}")
        actions = self.a.channel.add_htlc(
            amount_msat, hashlib.sha256(preimage).digest(), self.height + 40, height=self.height
        )
        self.run(self.a, actions)
        self.commit_both_ways(first=self.a)
        received = self.events(self.b, HtlcReceived)[-1]
        self.run(self.b, self.b.channel.fulfill_htlc(received.htlc_id, preimage))
        self.commit_both_ways(first=self.b)
        assert self.events(self.a, HtlcFulfilled)[-1].payment_preimage == preimage

    def commit_both_ways(self, *, first: Party) -> None:
        self.pump()
        self.run(first, first.channel.commit())
        self.pump()
        second = self.other(first)
        if second.channel.can_commit():
            self.run(second, second.channel.commit())
            self.pump()

    def broadcast(self, raw_tx: bytes) -> str:
        return str(self.node.call("sendrawtransaction", raw_tx.hex()))

    def value_paid_to(self, tx: Tx, script_pubkey: bytes) -> int:
        return sum(out.amount_sat for out in tx.outputs if out.script_pubkey == script_pubkey)


@pytest.fixture
def link(regtest_node: Node) -> Link:
    link = Link(regtest_node)
    link.open()
    return link


def test_cooperative_close_pays_each_side_its_balance(link: Link) -> None:
    link.pay(200_000_000, 1)
    link.pay(50_000_000, 2)
    link.run(link.a, link.a.channel.shutdown())
    link.pump()
    for _ in range(20):  # fee negotiation converges in a few rounds
        if link.events(link.a, ChannelClosed):
            break
        link.pump()
    (closed,) = link.events(link.a, ChannelClosed)
    (closing,) = link.a.broadcasts
    assert [b.raw_tx for b in link.b.broadcasts] == [closing.raw_tx]  # both agree
    txid = link.broadcast(closing.raw_tx)
    link.node.mine(1)
    assert link.node.call("getrawtransaction", txid, True)["confirmations"] == 1
    closing_tx = Tx.parse(closing.raw_tx)
    b_close = p2wpkh(pubkey_from_secret(key("b close")))
    a_close = p2wpkh(pubkey_from_secret(key("a close")))
    assert link.value_paid_to(closing_tx, b_close) == 250_000  # the payee pays no fee
    assert link.value_paid_to(closing_tx, a_close) == FUNDING_SAT - 250_000 - closed.fee_sat


def test_force_close_then_delayed_sweep(link: Link) -> None:
    link.pay(300_000_000, 1)
    link.run(link.a, link.a.channel.fail("operator asked for a force close"))
    (commitment,) = link.a.broadcasts
    link.broadcast(commitment.raw_tx)
    link.node.mine(1)
    commitment_tx = Tx.parse(commitment.raw_tx)
    a_channel, b_channel = link.a.channel, link.b.channel
    number = commitment_number_from_tx(a_channel.static, commitment_tx)

    # B's to_remote output is B's at once (static remote key).
    b_sweep = sweep_to_remote(
        b_channel.static, b_channel.secrets, commitment_tx, link.b.wallet_script, FEERATE_PER_KW
    )
    link.broadcast(b_sweep.serialize())
    assert 300_000 - 2_000 < b_sweep.outputs[0].amount_sat < 300_000  # less the sweep fee

    # A's to_local waits to_self_delay blocks: refused one block early, accepted on time.
    a_sweep = sweep_to_local(
        a_channel.static, a_channel.secrets, commitment_tx, number, link.a.wallet_script,
        FEERATE_PER_KW,
    )
    link.node.mine(TO_SELF_DELAY - 2)  # the commitment has TO_SELF_DELAY - 1 confirmations
    with pytest.raises(NodeRpcError) as early:
        link.broadcast(a_sweep.serialize())
    assert early.value.code == -26 and "non-BIP68-final" in early.value.message
    link.node.mine(1)
    link.broadcast(a_sweep.serialize())
    link.node.mine(1)
    commitment_fee = FUNDING_SAT - sum(out.amount_sat for out in commitment_tx.outputs)
    a_to_local = FUNDING_SAT - 300_000 - commitment_fee
    assert a_to_local - 2_000 < a_sweep.outputs[0].amount_sat < a_to_local


def test_breach_is_punished_by_the_penalty(link: Link) -> None:
    link.pay(100_000_000, 1)
    # A keeps a copy of its state now, pays B more, then "restores a backup": the
    # restored A holds a commitment it has since revoked, one that pays it more.
    old_snapshot = link.a.snapshots[-1]
    link.pay(400_000_000, 2)
    cheater = Channel.restore(copy.deepcopy(old_snapshot))
    revoked = next(
        action for action in cheater.fail("restored from backup")
        if isinstance(action, Broadcast)
    )
    revoked_tx = Tx.parse(revoked.raw_tx)
    # The chain cannot know the state is revoked: the old commitment is valid there.
    link.broadcast(revoked.raw_tx)
    link.node.mine(1)

    b_channel = link.b.channel
    number = commitment_number_from_tx(b_channel.static.mirrored(), revoked_tx)
    secret = b_channel.revocations.get_commitment_secret(number)
    penalty = build_penalty_tx(
        b_channel.static, b_channel.secrets, revoked_tx, secret, (), link.b.wallet_script,
        FEERATE_PER_KW,
    )
    link.broadcast(penalty.serialize())
    link.node.mine(1)
    # B took A's whole to_local; with B's to_remote it has everything but fees.
    a_to_local = FUNDING_SAT - 100_000 - revoked_tx_fee(revoked_tx)
    assert a_to_local - 2_000 < penalty.outputs[0].amount_sat < a_to_local
    b_sweep = sweep_to_remote(
        b_channel.static, b_channel.secrets, revoked_tx, link.b.wallet_script, FEERATE_PER_KW
    )
    link.broadcast(b_sweep.serialize())
    link.node.mine(1)

    # And the cheater's own delayed sweep can never confirm: the output is gone.
    cheat_sweep = sweep_to_local(
        cheater.static, cheater.secrets, revoked_tx, number, link.a.wallet_script,
        FEERATE_PER_KW,
    )
    link.node.mine(TO_SELF_DELAY)
    with pytest.raises(NodeRpcError) as spent:
        link.broadcast(cheat_sweep.serialize())
    assert spent.value.code == -25  # bad-txns-inputs-missingorspent


def revoked_tx_fee(tx: Tx) -> int:
    return FUNDING_SAT - sum(out.amount_sat for out in tx.outputs)
