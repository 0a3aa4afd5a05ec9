"""A hostile peer (DESIGN rule 4): party b is fed messages mutated from real ones.

A recorded history (opening, HTLCs both ways, fulfills, fails, a fee update, a
reconnect) gives a pool of genuine messages. Each example starts b in one of four
states with HTLCs in flight (``start``: a's add and commitment_signed on the wire; b
waiting for a's revoke_and_ack; the link reestablishing; closing negotiation) and sends
it a barrage: genuine messages replayed out of place or of the wrong type for the
state, bytes fields (signatures, secrets, points, hashes, channel ids) with a flipped
bit, truncated, extended or set to edge values, integer fields changed (amounts, ids,
cltv, feerates, commitment numbers, fees), random well-formed protobuf messages of
every type. Half the mutations start from what a genuinely has in flight: those reach
the deepest checks.

For every input ``handle()`` either returns actions or raises ``RemoteProtocolError``
(any other exception is a bug in ``protocol/``), and a refusal leaves b's snapshot byte
for byte as it was. A refused message is simply dropped (what a WARN's disconnect would
also do to it), so the barrage goes on from the same state. Afterwards the pair
reconnects and, unless the barrage got b to accept something the honest a never sent
(then a refusal on either side is the right ending, never another exception), the
honest pair still pays and closes. ``--hypothesis-show-statistics`` lists the refusals
reached.
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from hypothesis import event, given, settings
from hypothesis import strategies as st

from proto import peer_pb2
from protocol.actions import Action
from protocol.errors import Disposition, RemoteProtocolError
from protocol.table import ChannelState, LinkState
from tests.protocol.pair import ChannelPair, Party, hash_of, preimage_of

# The generator point, compressed: a valid point nobody's commitment point should be.
SECP256K1_G = bytes.fromhex(
    "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798") * 2
BODIES = [f.name for f in peer_pb2.PeerMessage.DESCRIPTOR.oneofs_by_name["body"].fields]
INT_LIMITS = {FieldDescriptor.TYPE_UINT32: 2**32 - 1, FieldDescriptor.TYPE_UINT64: 2**64 - 1}


class RecordingPair(ChannelPair):
    """Keeps a copy of every message delivered, in either direction."""

    recorded: list[peer_pb2.PeerMessage]

    def deliver_one(self, sender: Party) -> list[Action]:
        if not hasattr(self, "recorded"):
            self.recorded = []
        self.recorded.append(copy.deepcopy(sender.outbox[0]))
        return super().deliver_one(sender)


@functools.lru_cache(maxsize=1)
def base() -> tuple[ChannelPair, list[peer_pb2.PeerMessage]]:
    """The recorded history and the state the barrage starts from."""
    pair = RecordingPair()
    for n in range(3):
        pair.add("a", 5_000_000 + n, n)
    pair.add("b", 2_000_000, 10)
    pair.add("a", 600_000, 11)  # trimmed on both commitments
    pair.settle()
    pair.do("b", lambda c: c.fulfill_htlc(0, preimage_of(0)))
    pair.do("b", lambda c: c.fail_htlc(1, b"no route"))
    pair.do("a", lambda c: c.update_fee(1500))
    pair.settle()
    pair.disconnect()
    pair.reconnect()
    pair.settle()
    # In flight at the start of every example: committed HTLCs both ways, plus an add
    # and its commitment_signed that b has not received yet.
    pair.add("a", 7_000_000, 20)
    pair.do("a", lambda c: c.commit())
    pool = list(pair.recorded)
    pool += [copy.deepcopy(m) for m in pair.a.outbox]  # the add and commitment_signed
    return pair, pool


def scalar_fields(body: Any) -> list[FieldDescriptor]:
    return [f for f in body.DESCRIPTOR.fields if not f.is_repeated]


@st.composite
def mutated(draw: st.DrawFn, pool: list[peer_pb2.PeerMessage],
            live: list[peer_pb2.PeerMessage]) -> peer_pb2.PeerMessage:
    """A message derived from the history (``pool``) or, half of the time, from what a
    genuinely has in flight (``live``: the mutations that reach the deepest checks)."""
    how = draw(st.sampled_from(["replay", "flip", "resize", "special", "int", "int",
                                "random"]))
    if how == "random":
        return draw(random_message())
    source = live if live and draw(st.booleans()) else pool
    msg = copy.deepcopy(draw(st.sampled_from(source)))
    if how == "replay":
        return msg
    name = msg.WhichOneof("body")
    body = getattr(msg, name)
    if how == "int":
        ints = [f for f in scalar_fields(body) if f.type in INT_LIMITS]
        if not ints:
            return msg
        f = draw(st.sampled_from(ints))
        old = getattr(body, f.name)
        top = INT_LIMITS[f.type]
        value = draw(st.sampled_from([0, 1, old - 1, old + 1, old + 1000, 2 * old, 2**24,
                                      2**32 - 1, 2**48, 2**63, top]))
        setattr(body, f.name, min(max(value, 0), top))
        return msg
    byte_fields = [f for f in scalar_fields(body) if f.type == FieldDescriptor.TYPE_BYTES]
    sigs = list(getattr(body, "htlc_signatures", []))
    choices = [f.name for f in byte_fields] + (["htlc_signatures"] if sigs else [])
    if len(choices) > 1 and draw(st.integers(0, 5)):  # channel_id: the shallowest check
        choices = [c for c in choices if c not in ("channel_id", "temporary_channel_id")]
    if not choices:
        return msg
    field = draw(st.sampled_from(choices))
    if field == "htlc_signatures":
        i = draw(st.integers(0, len(sigs) - 1))
        value = sigs[i]
    else:
        value = getattr(body, field)
    if how == "special":  # same length, edge-case content: zero, all ones, G's x, ...
        size = len(value) or 33
        value = draw(st.sampled_from([bytes(size), b"\xff" * size, b"\x02" + bytes(size - 1),
                                      b"\x03" + b"\xff" * (size - 1), SECP256K1_G[:size]]))
    elif how == "flip" and value:
        pos = draw(st.integers(0, len(value) - 1))
        bit = draw(st.integers(0, 7))
        value = value[:pos] + bytes([value[pos] ^ (1 << bit)]) + value[pos + 1:]
    else:  # resize: truncate or extend
        if value and draw(st.booleans()):
            value = value[:draw(st.integers(0, len(value) - 1))]
        else:
            value = value + draw(st.binary(min_size=1, max_size=3))
    if field == "htlc_signatures":
        if draw(st.booleans()):
            body.htlc_signatures[i] = value
        elif draw(st.booleans()):
            del body.htlc_signatures[i]
        else:
            body.htlc_signatures.append(sigs[i])
    else:
        setattr(body, field, value)
    return msg


@st.composite
def random_message(draw: st.DrawFn) -> peer_pb2.PeerMessage:
    """A well-formed protobuf message of any type with arbitrary field values (byte
    fields mostly of the lengths the protocol uses, so they get past the shape check)."""
    pair, _ = base()
    name = draw(st.sampled_from([b for b in BODIES if b != "error"]))  # error: a legit close
    msg = peer_pb2.PeerMessage()
    body = getattr(msg, name)
    body.SetInParent()
    for f in body.DESCRIPTOR.fields:
        if not draw(st.integers(0, 4)):
            continue  # left at its default (absent)
        if f.name == "channel_id":
            value: Any = draw(st.sampled_from([pair.b.channel.channel_id, bytes(32),
                                               b"\x01" * 32]))
        elif f.type == FieldDescriptor.TYPE_BYTES:
            size = draw(st.sampled_from([32, 33, 64, 0, 1, 65]))
            value = draw(st.binary(min_size=size, max_size=size))
        elif f.type in INT_LIMITS:
            value = draw(st.one_of(st.integers(0, 2000), st.integers(0, INT_LIMITS[f.type])))
        elif f.type == FieldDescriptor.TYPE_BOOL:
            value = draw(st.booleans())
        else:
            continue
        if f.is_repeated:
            getattr(body, f.name).extend([value] * draw(st.integers(0, 3)))
        else:
            setattr(body, f.name, value)
    return msg


def as_bytes(snapshot: dict[str, Any]) -> bytes:
    return json.dumps(snapshot, sort_keys=True).encode()


def feed(pair: ChannelPair, msg: peer_pb2.PeerMessage) -> bool:
    """Deliver one hostile message to b; True when b accepted it and it changed b."""
    b = pair.b
    before, link = b.channel.snapshot(), b.channel.link
    try:
        actions = b.channel.handle(msg, height=pair.height)
    except RemoteProtocolError as exc:
        event(f"{msg.WhichOneof('body')}: {exc.message[:40]}")
        assert as_bytes(b.channel.snapshot()) == as_bytes(before), \
            f"refusal changed the state: {exc!r}"
        assert exc.message
        return False
    # Anything else than RemoteProtocolError propagates and fails the test.
    pair.apply(b, actions)  # rule-1 checks on whatever b does with it
    return b.channel.snapshot() != before or b.channel.link is not link


def honest_ending(pair: ChannelPair, deceived: bool) -> None:
    """Reconnect, then the honest pair pays and closes. When b accepted hostile input
    the two may disagree now: a refusal on either side is then the right ending."""
    try:
        if ChannelState.CLOSED not in (pair.a.channel.state, pair.b.channel.state):
            pair.disconnect()  # (a closed side has nothing to reestablish)
            pair.reconnect()
        pair.settle()
        if ChannelState.FAILED in (pair.a.channel.state, pair.b.channel.state):
            assert deceived, "an honest pair failed after refused hostile input"
            return
        pair.check_same_commitments()
        pair.check_invariants()
        if pair.a.channel.state is ChannelState.NORMAL:  # (not once shut down)
            htlc_id = pair.add("a", 3_000_000, 99)
            pair.settle()
            pair.do("b", lambda c: c.fulfill_htlc(htlc_id, preimage_of(99)))
            pair.settle()
        if pair.b.channel.d.local_shutdown_script is None and not \
                pair.b.channel.has_uncommitted_changes():
            pair.do("b", lambda c: c.shutdown())
        resolve_all(pair)
        assert pair.a.channel.state is ChannelState.CLOSED is pair.b.channel.state
        assert pair.a.broadcasts[-1].raw_tx == pair.b.broadcasts[-1].raw_tx
    except RemoteProtocolError as exc:
        assert deceived and exc.disposition is Disposition.CLOSE, exc


PHASES = ["a_pending", "b_awaiting_revocation", "reestablishing", "negotiating"]


@functools.cache
def start(phase: str) -> tuple[ChannelPair, tuple[peer_pb2.PeerMessage, ...]]:
    """b's state before the barrage, and the genuine messages a has in flight to it.

    - a_pending: a's add and commitment_signed on the wire;
    - b_awaiting_revocation: b signed too and waits for a's revoke_and_ack (on the wire);
    - reestablishing: the link came back, a's channel_reestablish on the wire;
    - negotiating: every HTLC settled, both shut down, a's closing_signed on the wire.
    """
    pair0, _ = base()
    pair = copy.deepcopy(pair0)
    if phase == "b_awaiting_revocation":
        pair.deliver_all()  # b revokes; a's answer stays on the wire
        pair.do("b", lambda c: c.commit())
        while pair.b.outbox:
            pair.deliver_one(pair.b)
        assert pair.b.channel.awaiting_revocation()
    elif phase == "reestablishing":
        pair.disconnect()
        pair.reconnect()
        assert pair.b.channel.link is LinkState.REESTABLISHING
    elif phase == "negotiating":
        pair.settle()
        resolve_all(pair)
        pair.do("b", lambda c: c.shutdown())
        pair.deliver_one(pair.b)
        while pair.a.outbox[0].WhichOneof("body") != "closing_signed":
            pair.deliver_one(pair.a)
        assert pair.b.channel.state is ChannelState.NEGOTIATING
    return pair, tuple(copy.deepcopy(m) for m in pair.a.outbox)


def resolve_all(pair: ChannelPair) -> None:
    for _ in range(5):
        for p in (pair.a, pair.b):
            for i, _, payment_hash, _ in p.channel.received_htlcs():
                n = next(k for k in (0, 1, 2, 10, 11, 20, 99)
                         if payment_hash == hash_of(preimage_of(k)))
                pair.do(p.name, lambda c, i=i, n=n: c.fulfill_htlc(i, preimage_of(n)))
        pair.settle()


@settings(max_examples=min(300, settings.default.max_examples))
@given(data=st.data(), phase=st.sampled_from(PHASES), genuine_first=st.booleans())
def test_hostile_peer_never_breaks_b(data: st.DataObject, phase: str,
                                     genuine_first: bool) -> None:
    pair0, in_flight = start(phase)
    pair = copy.deepcopy(pair0)
    pool = base()[1] + list(in_flight)
    if genuine_first and pair.a.outbox:  # sometimes the genuine next message went first
        pair.deliver_one(pair.a)
    live = list(in_flight[1:] if genuine_first else in_flight)
    barrage = data.draw(st.lists(mutated(pool, live), min_size=1, max_size=12),
                        label="barrage")
    deceived = False
    for msg in barrage:
        deceived |= feed(pair, msg)
    honest_ending(pair, deceived)
