"""Disconnects and channel_reestablish (BOLT #2 "Message Retransmission").

On disconnect both sides forget every update no ``commitment_signed`` covers. On
reconnect each sends ``channel_reestablish`` with:

- ``next_commitment_number``: ``local_ctn + 1``, the commitment number of the next
  ``commitment_signed`` it expects;
- ``next_revocation_number``: ``remote_oldest_ctn``, the commitment number the next
  ``revoke_and_ack`` it expects revokes;
- ``your_last_per_commitment_secret``: the last secret received (zeros if none);
- ``my_current_per_commitment_point``: the point of its current commitment.

From the peer's numbers the receiver knows whether its last ``commitment_signed``
(``next_commitment_number == remote_ctn``, we retransmit the updates it covered and the
signature) and its last ``revoke_and_ack`` (``next_revocation_number == local_ctn - 1``)
were lost, and resends them "in the same relative order as initially transmitted".

Data loss protection: a peer whose numbers are ahead of anything we sent either lies or
we lost state. If its ``your_last_per_commitment_secret`` is a secret we can only have
revealed from a later state, we are the one behind: we fail the channel and must NOT
broadcast our (revoked!) commitment; the peer closes and we sweep with its
``my_current_per_commitment_point`` (static remote key makes that simple).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proto import peer_pb2
from protocol import closing, commitments, opening, rules, updates
from protocol.actions import HtlcFailed, Send
from protocol.book import LOCAL
from protocol.errors import Disposition, LocalProtocolError, RemoteProtocolError
from protocol.messages import ZERO32, wrap
from protocol.step import Step
from protocol.table import ChannelState

MAX_COMMITMENT_NUMBER = 2**48 - 1

if TYPE_CHECKING:
    from protocol.channel import Channel


def on_disconnected(ch: Channel) -> Step:
    d = ch.d
    if d.state in (ChannelState.AWAIT_ACCEPT, ChannelState.AWAIT_FUNDING_OUTPOINT,
                   ChannelState.AWAIT_FUNDING_CREATED, ChannelState.AWAIT_FUNDING_SIGNED):
        return []  # the table moves to FAILED: an unsigned channel is simply forgotten
    # Our own removals a disconnect reverts must not be lost (a preimage especially):
    # they are re-sent once the channel is reestablished.
    for h in d.book.htlcs.values():
        r = h.removal
        if h.offered_by is not LOCAL and r is not None and r.mark.remote_ctn is None:
            ch.resend_removals.append((h.htlc_id, r.preimage, r.reason))
    dropped = d.book.revert_uncommitted()
    d.closing_fee_sent_sat = d.closing_fee_received_sat = None
    return [HtlcFailed(h.htlc_id, h.payment_hash,
                       local_reason="disconnected before the HTLC was committed")
            for h in dropped]


def cmd_reconnected(ch: Channel) -> Step:
    d = ch.d
    events: Step = list(ch.pending_events)
    ch.pending_events = []
    last_secret = (ch.revocations.get_commitment_secret(d.remote_oldest_ctn - 1)
                   if d.remote_oldest_ctn > 0 else ZERO32)
    return [*events, Send(wrap(channel_reestablish=peer_pb2.ChannelReestablish(
        channel_id=ch.channel_id,
        next_commitment_number=d.local_ctn + 1,
        next_revocation_number=d.remote_oldest_ctn,
        your_last_per_commitment_secret=last_secret,
        my_current_per_commitment_point=ch.local_point(d.local_ctn))))]



def on_reestablish(ch: Channel, msg: peer_pb2.ChannelReestablish, height: int) -> Step:
    d = ch.d
    if msg.channel_id != d.channel_id:
        raise RemoteProtocolError("channel_reestablish for another channel", Disposition.WARN)
    nc, nr = msg.next_commitment_number, msg.next_revocation_number
    if nc > MAX_COMMITMENT_NUMBER or nr > MAX_COMMITMENT_NUMBER:
        # BOLT #3: commitment numbers are 48 bits; no secret exists beyond them.
        raise RemoteProtocolError(
            f"channel_reestablish commitment numbers ({nc}, {nr}) beyond 2**48 - 1")
    # Data loss protection first (BOLT #2: this check "takes precedence").
    if nr > d.local_ctn or nc > d.remote_ctn + 1:
        if nr > d.local_ctn and nr >= 1 and \
                msg.your_last_per_commitment_secret == ch.secrets.per_commitment_secret(nr - 1):
            # The proof is our own secret: we did lose data, whatever else the message
            # holds. So even with an unusable point we fail WITHOUT broadcasting (a
            # refusal would make the driver's fail() publish our revoked commitment);
            # only a valid compressed point is passed on to the sweep.
            point = msg.my_current_per_commitment_point
            usable = rules.valid_point(point)
            note = "" if usable or not point else \
                "; its my_current_per_commitment_point is not a valid point"
            return ch.fail_channel(
                f"peer proved a later state (next_revocation_number {nr} > {d.local_ctn}): "
                f"we lost data; waiting for the peer to close{note}",
                send_error=True, may_broadcast=False,
                remote_current_point=point if usable else None)
        raise RemoteProtocolError(
            f"channel_reestablish claims commitment numbers we never reached "
            f"(next_commitment_number {nc}, next_revocation_number {nr}) without proof")
    expected_secret = ch.secrets.per_commitment_secret(nr - 1) if nr >= 1 else ZERO32
    if msg.your_last_per_commitment_secret != expected_secret:
        raise RemoteProtocolError("your_last_per_commitment_secret is not our last secret")
    resend_commit = False
    if nc == d.remote_ctn and ch.awaiting_revocation():
        resend_commit = True
    elif nc != d.remote_ctn + 1:
        raise RemoteProtocolError(f"next_commitment_number {nc} but we last signed "
                                  f"{d.remote_ctn}")
    resend_revoke = False
    if nr == d.local_ctn - 1 and d.closing_fee_received_sat is None:
        resend_revoke = True
    elif nr != d.local_ctn:
        raise RemoteProtocolError(f"next_revocation_number {nr} but our commitment is "
                                  f"{d.local_ctn}")
    # Valid: retransmit.
    step: Step = []
    if nc == 1 and d.local_ctn == 0 and d.local_ready_sent:
        step.append(Send(opening.ready_message(ch)))
    commit_part = _retransmit_commitment(ch) if resend_commit else []
    revoke_part: Step = [Send(updates.revoke_message(ch))] if resend_revoke else []
    if d.last_sent_was_revoke:  # the RAA went out after the commitment_signed
        step += commit_part + revoke_part
    else:
        step += revoke_part + commit_part
    if d.local_shutdown_script is not None:
        step.append(Send(closing.shutdown_message(ch)))  # BOLT #2: MUST retransmit shutdown
    else:  # a shutdown we owed while our updates were pending: they are gone now
        step += closing.reply_shutdown_if_due(ch, link_up=True)
    step += _resend_removals(ch)
    if d.state is ChannelState.NEGOTIATING:
        step += closing.start_negotiation(ch, link_up=True)
    return step


def _retransmit_commitment(ch: Channel) -> Step:
    """The updates our outstanding commitment_signed covered, in their original order,
    then the same signature (RFC 6979 signing is deterministic)."""
    d = ch.d
    book = d.book
    items: list[tuple[int, peer_pb2.PeerMessage]] = []
    for h in book.htlcs.values():
        if h.add.origin is LOCAL and h.add.remote_ctn == d.remote_ctn:
            items.append((h.add.seq, updates.add_message(ch, h)))
        r = h.removal
        if r is not None and r.mark.origin is LOCAL and r.mark.remote_ctn == d.remote_ctn:
            items.append((r.mark.seq, updates.removal_message(ch, h)))
    for f in book.fee_updates:
        if f.mark.origin is LOCAL and f.mark.remote_ctn == d.remote_ctn:
            items.append((f.mark.seq, updates.fee_message(ch, f.feerate_per_kw)))
    items.sort(key=lambda item: item[0])
    commitment = ch.build_remote(d.remote_ctn)
    sigs = commitments.sign_remote(ch.static, ch.secrets, commitment)
    msg = wrap(commitment_signed=peer_pb2.CommitmentSigned(
        channel_id=ch.channel_id, signature=sigs.commitment_signature,
        htlc_signatures=list(sigs.htlc_signatures)))
    return [*(Send(m) for _, m in items), Send(msg)]


def _resend_removals(ch: Channel) -> Step:
    step: Step = []
    for h in ch.d.book.htlcs.values():  # policy failures a restart left unfailed
        rc = h.add.remote_ctn
        if h.policy_failure and h.removal is None and rc is not None \
                and rc <= ch.d.remote_oldest_ctn:
            step += updates.fail_back(ch, h)
    pending, ch.resend_removals = ch.resend_removals, []
    for htlc_id, preimage, reason in pending:
        try:
            step += updates.cmd_settle(ch, htlc_id, preimage, reason)
        except LocalProtocolError:  # cmd_settle refuses only with LocalProtocolError
            continue  # already settled by a retransmitted commitment, or gone
    return step

