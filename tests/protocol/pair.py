"""``ChannelPair``: two ``Channel`` state machines over an in-memory link (h11's
``ConnectionPair`` idea), with faults: messages can be held back (delay), lost with the
link (drop), delivered twice (duplicate), and a party can crash and restart from exactly
its last ``Persist``.

It also checks, as actions come out, the safety properties every test relies on:

- ``Persist.update_id`` strictly increases per party;
- rule 1: every message carrying a signature (funding_created, funding_signed,
  commitment_signed, closing_signed) or a revocation secret (revoke_and_ack) is sent
  only after a ``Persist`` whose snapshot already holds what it commits to or reveals
  (``check_persisted_before_send``); a fresh one needs a Persist earlier in its own
  action list, a retransmission one from when it was first sent;
- no persisted snapshot holds as current a commitment its party already revoked.
"""

from __future__ import annotations

import copy
import hashlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from channel.commitment import Side
from proto import peer_pb2
from protocol.actions import (
    Action,
    Broadcast,
    ChannelClosed,
    ChannelFailed,
    ChannelOpened,
    FundingNeeded,
    HtlcFailed,
    HtlcFulfilled,
    HtlcReceived,
    Persist,
    Send,
    Watch,
)
from protocol.channel import Channel
from protocol.config import LocalConfig
from protocol.errors import Disposition, RemoteProtocolError
from protocol.table import ChannelState, LinkState

CHAIN_HASH = hashlib.sha256(b"regtest").digest()
FUNDING_TXID = hashlib.sha256(b"funding").digest()
P2WPKH_A = b"\x00\x14" + b"\xaa" * 20
P2WPKH_B = b"\x00\x14" + b"\xbb" * 20
HEIGHT = 1000

SIGNED_KINDS = {"commitment_signed", "revoke_and_ack", "funding_created", "funding_signed",
                "closing_signed"}


def preimage_of(n: int) -> bytes:
    return hashlib.sha256(b"preimage" + n.to_bytes(8, "big")).digest()


def hash_of(preimage: bytes) -> bytes:
    return hashlib.sha256(preimage).digest()


def check_persisted_before_send(snap: dict[str, Any] | None, channel: Channel,
                                msg: peer_pb2.PeerMessage) -> None:
    """Rule 1 for one outgoing message: ``snap`` (the party's last executed Persist)
    must already hold what the message commits the party to or reveals, so that a
    crash right after sending loses nothing the peer can now use."""
    kind = msg.WhichOneof("body")
    if kind not in SIGNED_KINDS:
        return
    assert snap is not None, f"{kind} sent before any Persist"
    d = channel.d
    assert snap["local_ctn"] == d.local_ctn, f"{kind} before persist (local)"
    assert snap["remote_ctn"] == d.remote_ctn, f"{kind} before persist (remote)"
    body = getattr(msg, kind)
    txids = snap["remote_commit_txids"]
    if kind == "funding_created":  # we signed the fundee's commitment 0
        assert snap["funding_txid"] == body.funding_txid.hex(), "funding_created before persist"
        assert snap["funding_output_index"] == body.funding_output_index
        assert "0" in txids, "funding_created before its commitment was persisted"
    elif kind == "funding_signed":  # we signed the funder's commitment 0, hold ours
        assert snap["channel_id"] == body.channel_id.hex(), "funding_signed before persist"
        assert snap["local_commit_signature"] == d.local_commit_signature.hex() != "", \
            "funding_signed before the funder's signature was persisted"
        assert "0" in txids, "funding_signed before its commitment was persisted"
    elif kind == "commitment_signed":  # the peer's commitment remote_ctn, as signed
        signed = d.remote_commit_txids.get(d.remote_ctn)
        assert signed is not None and txids.get(str(d.remote_ctn)) == signed.hex(), \
            "commitment_signed before the signed commitment was persisted"
    elif kind == "revoke_and_ack":  # reveals the secret of local_ctn - 1
        n = snap["local_ctn"]
        assert n >= 1 and body.per_commitment_secret == \
            channel.secrets.per_commitment_secret(n - 1), \
            "revoke_and_ack reveals a secret the persisted state has not moved past"
        assert snap["local_commit_signature"] == d.local_commit_signature.hex(), \
            "revoke_and_ack before the new commitment's signature was persisted"
    elif kind == "closing_signed":  # our signature of the closing tx at this fee
        assert snap["closing_fee_sent_sat"] == body.fee_satoshis, \
            "closing_signed before the proposed fee was persisted"
        assert snap["local_shutdown_script"] is not None
        assert snap["remote_shutdown_script"] is not None


def check_watches_before_persist(actions: list[Action]) -> None:
    """A ``revoked_commitment`` Watch precedes the Persist of its list: that Persist
    forgets the revoked commitment's HTLCs, so a driver that stores each Watch before
    the next action must have stored it by then (issue 11, finding 3)."""
    persist_at = next((i for i, a in enumerate(actions) if isinstance(a, Persist)), None)
    for i, a in enumerate(actions):
        if isinstance(a, Watch) and a.kind == "revoked_commitment":
            assert persist_at is not None and i < persist_at, "revoked Watch after Persist"


@dataclass
class Party:
    name: str
    channel: Channel
    persisted: dict[str, Any] | None = None
    last_update_id: int = 0
    max_revoked: int = -1  # highest commitment number whose secret we sent
    events: list[Action] = field(default_factory=list)
    broadcasts: list[Broadcast] = field(default_factory=list)
    outbox: deque[peer_pb2.PeerMessage] = field(default_factory=deque)

    @property
    def d(self) -> Any:
        return self.channel.d


class ChannelPair:
    """Party ``a`` is the funder, ``b`` the fundee."""

    def __init__(self, *, funding_sat: int = 1_000_000, push_msat: int = 400_000_000,
                 feerate_per_kw: int = 1000, config_a: LocalConfig | None = None,
                 config_b: LocalConfig | None = None, open_channel: bool = True) -> None:
        self.height = HEIGHT
        cfg_a = config_a or LocalConfig()
        cfg_b = config_b or LocalConfig()
        self.a = Party("a", Channel.outbound(
            config=cfg_a, channel_seed=b"\x01" * 32, temporary_channel_id=b"\x07" * 32,
            chain_hash=CHAIN_HASH, close_script=P2WPKH_A))
        self.b = Party("b", Channel.inbound(
            config=cfg_b, channel_seed=b"\x02" * 32, chain_hash=CHAIN_HASH,
            close_script=P2WPKH_B))
        self.funding_sat = funding_sat
        self.errors: list[RemoteProtocolError] = []
        if open_channel:
            self.open(push_msat=push_msat, feerate_per_kw=feerate_per_kw)

    # -- plumbing ----------------------------------------------------------------------------

    def other(self, p: Party) -> Party:
        return self.b if p is self.a else self.a

    def party(self, name: str) -> Party:
        return self.a if name == "a" else self.b

    def apply(self, p: Party, actions: list[Action]) -> list[Action]:
        """Execute ``actions`` of party ``p``: queue sends, keep persists, check safety."""
        check_watches_before_persist(actions)
        for act in actions:
            if isinstance(act, Persist):
                assert act.update_id > p.last_update_id, "update_id must strictly increase"
                p.last_update_id = act.update_id
                p.persisted = copy.deepcopy(act.snapshot)
                assert act.snapshot["local_ctn"] > p.max_revoked, \
                    "persisted a commitment we already revoked as current"
            elif isinstance(act, Send):
                kind = act.message.WhichOneof("body")
                check_persisted_before_send(p.persisted, p.channel, act.message)
                if kind == "revoke_and_ack":
                    p.max_revoked = max(p.max_revoked, p.d.local_ctn - 1)
                p.outbox.append(act.message)
            elif isinstance(act, Broadcast):
                p.broadcasts.append(act)
            else:
                p.events.append(act)
        return actions

    def do(self, name: str, fn: Callable[[Channel], list[Action]]) -> list[Action]:
        p = self.party(name)
        return self.apply(p, fn(p.channel))

    def deliver_one(self, sender: Party) -> list[Action]:
        """Deliver the oldest message ``sender`` has in flight. A refused message must
        leave the receiver's snapshot unchanged; WARN drops the link (as a driver
        would), then the pair reconnects."""
        receiver = self.other(sender)
        msg = sender.outbox.popleft()
        before = receiver.channel.snapshot()
        try:
            actions = receiver.channel.handle(msg, height=self.height)
        except RemoteProtocolError as exc:
            assert receiver.channel.snapshot() == before, "refused input changed the state"
            self.errors.append(exc)
            if exc.disposition is Disposition.CLOSE:
                raise
            if exc.disposition is Disposition.WARN:
                self.disconnect()
                self.reconnect()
            return []
        return self.apply(receiver, actions)

    def deliver_all(self, max_steps: int = 100_000) -> None:
        for _ in range(max_steps):
            if self.a.outbox:
                self.deliver_one(self.a)
            elif self.b.outbox:
                self.deliver_one(self.b)
            else:
                return
        raise AssertionError("link never went quiet")

    def settle(self) -> None:
        """Deliver and commit until nothing is pending: quiescence."""
        for _ in range(1000):
            self.deliver_all()
            moved = False
            for p in (self.a, self.b):
                if p.channel.can_commit():
                    self.apply(p, p.channel.commit())
                    moved = True
            if not moved and not self.a.outbox and not self.b.outbox:
                if self.a.channel.link is not LinkState.UP:
                    self.reconnect()
                    continue
                return
        raise AssertionError("never quiescent")

    # -- faults ------------------------------------------------------------------------------

    def disconnect(self) -> None:
        self.a.outbox.clear()
        self.b.outbox.clear()
        for p in (self.a, self.b):
            if p.channel.link is not LinkState.DOWN:
                self.apply(p, p.channel.disconnected())

    def reconnect(self, *, exchange: bool = False) -> None:
        """Both send channel_reestablish; with ``exchange`` both are delivered at once
        (what they trigger, retransmissions included, stays in flight)."""
        for p in (self.a, self.b):
            if p.channel.link is LinkState.DOWN and p.channel.state not in (
                    ChannelState.FAILED, ChannelState.CLOSED):
                self.apply(p, p.channel.reconnected())
        if exchange:
            for p in (self.a, self.b):
                if p.outbox and p.outbox[0].WhichOneof("body") == "channel_reestablish":
                    self.deliver_one(p)

    def restart(self, name: str) -> None:
        """Crash ``name`` and rebuild it from its last Persist only; the link drops."""
        p = self.party(name)
        q = self.other(p)
        p.outbox.clear()
        q.outbox.clear()
        if q.channel.link is not LinkState.DOWN:  # the survivor sees the link drop
            self.apply(q, q.channel.disconnected())
        assert p.persisted is not None
        p.channel = Channel.restore(copy.deepcopy(p.persisted))
        assert p.channel.d.local_ctn > p.max_revoked

    def duplicate_front(self, sender: Party) -> None:
        """The link delivers ``sender``'s next message twice."""
        sender.outbox.insert(1, copy.deepcopy(sender.outbox[0]))

    # -- scenario helpers ----------------------------------------------------------------------

    def open(self, *, push_msat: int, feerate_per_kw: int) -> None:
        self.do("a", lambda c: c.open(funding_sat=self.funding_sat, push_msat=push_msat,
                                      feerate_per_kw=feerate_per_kw))
        self.deliver_one(self.a)  # open_channel
        acts = self.deliver_one(self.b)  # accept_channel
        assert any(isinstance(x, FundingNeeded) for x in acts)
        self.do("a", lambda c: c.funding_outpoint(FUNDING_TXID, 0))
        self.deliver_one(self.a)  # funding_created
        self.deliver_one(self.b)  # funding_signed
        self.do("a", lambda c: c.funding_confirmed())
        self.do("b", lambda c: c.funding_confirmed())
        self.deliver_all()
        assert self.a.channel.state is ChannelState.NORMAL
        assert self.b.channel.state is ChannelState.NORMAL
        assert any(isinstance(e, ChannelOpened) for e in self.a.events)

    def add(self, name: str, amount_msat: int, n: int, cltv_delta: int = 40) -> int:
        acts = self.do(name, lambda c: c.add_htlc(amount_msat, hash_of(preimage_of(n)),
                                                  self.height + cltv_delta, height=self.height))
        send = acts[-1]
        assert isinstance(send, Send)
        return int(send.message.update_add_htlc.id)

    def check_invariants(self) -> None:
        """Balances + HTLCs = capacity in every commitment either side can sign or hold;
        the funder always pays the fee."""
        for p in (self.a, self.b):
            ch = p.channel
            if ch.state in (ChannelState.FAILED, ChannelState.CLOSED):
                continue
            for owner in (Side.LOCAL, Side.REMOTE):
                v = ch.latest_view(owner)
                total = v.local_msat + v.remote_msat + sum(h.amount_msat for h in v.htlcs)
                assert total == self.funding_sat * 1000, (p.name, owner, total)
                assert v.local_msat >= 0 and v.remote_msat >= 0
            for c in (ch.build_local(ch.d.local_ctn), ch.build_remote(ch.d.remote_ctn)):
                out = sum(o.amount_sat for o in c.tx.outputs)
                assert out + c.fee_sat <= self.funding_sat
                v = ch.latest_view(c.owner)
                funder_msat = v.local_msat if ch.d.local_is_funder else v.remote_msat
                assert funder_msat >= c.fee_sat * 1000

    def check_same_commitments(self) -> None:
        """After quiescence both hold the same latest commitments (same txids)."""
        a, b = self.a.channel, self.b.channel
        assert a.d.local_ctn == b.d.remote_ctn and b.d.local_ctn == a.d.remote_ctn
        assert a.build_local(a.d.local_ctn).txid == b.build_remote(b.d.remote_ctn).txid
        assert b.build_local(b.d.local_ctn).txid == a.build_remote(a.d.remote_ctn).txid

    def events_of(self, name: str, kind: type) -> list[Any]:
        return [e for e in self.party(name).events if isinstance(e, kind)]


__all__ = ["ChannelClosed", "ChannelFailed", "HtlcFailed", "HtlcFulfilled", "HtlcReceived"]
