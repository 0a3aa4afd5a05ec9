"""Normal operation (BOLT #2 "Normal Operation"): updates, commitment_signed,
revoke_and_ack, from both directions.

Each function validates first (``protocol.rules``, signature checks through
``protocol.commitments``) and mutates only once nothing can fail any more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from channel.errors import ShachainError, TransactionError
from channel.keys import pubkey_from_secret
from proto import peer_pb2
from protocol import closing, rules
from protocol.actions import HtlcDeadline, HtlcFailed, HtlcFulfilled, HtlcReceived, Send, Watch
from protocol.book import LOCAL, REMOTE, Htlc, Mark, in_commitment
from protocol.commitments import sign_remote, verify_local
from protocol.config import (
    FULFILLED_HTLC_DEADLINE_BLOCKS,
    MAX_FAIL_REASON_BYTES,
    MAX_ONION_ROUTING_PACKET_BYTES,
    OFFERED_HTLC_GRACE_BLOCKS,
)
from protocol.errors import (
    AwaitingAcknowledgement,
    Disposition,
    LocalProtocolError,
    RemoteProtocolError,
)
from protocol.messages import wrap
from protocol.step import PERSIST, Step

if TYPE_CHECKING:
    from protocol.channel import Channel


def _local(problem: rules.Problem | None) -> None:
    if problem is not None:
        if problem.until_acknowledged:
            raise AwaitingAcknowledgement(problem.message)
        raise LocalProtocolError(problem.message)


def _remote(problem: rules.Problem | None) -> None:
    if problem is not None:
        raise RemoteProtocolError(problem.message, problem.disposition)


def add_message(ch: Channel, h: Htlc) -> peer_pb2.PeerMessage:
    return wrap(update_add_htlc=peer_pb2.UpdateAddHtlc(
        channel_id=ch.channel_id, id=h.htlc_id, amount_msat=h.amount_msat,
        payment_hash=h.payment_hash, cltv_expiry=h.cltv_expiry,
        onion_routing_packet=h.onion))


def removal_message(ch: Channel, h: Htlc) -> peer_pb2.PeerMessage:
    r = h.removal
    assert r is not None
    if r.preimage is not None:
        return wrap(update_fulfill_htlc=peer_pb2.UpdateFulfillHtlc(
            channel_id=ch.channel_id, id=h.htlc_id, payment_preimage=r.preimage))
    return wrap(update_fail_htlc=peer_pb2.UpdateFailHtlc(
        channel_id=ch.channel_id, id=h.htlc_id, reason=r.reason))


def fee_message(ch: Channel, feerate_per_kw: int) -> peer_pb2.PeerMessage:
    return wrap(update_fee=peer_pb2.UpdateFee(channel_id=ch.channel_id,
                                              feerate_per_kw=feerate_per_kw))


# -- commands -------------------------------------------------------------------------------


def cmd_add(ch: Channel, amount_msat: int, payment_hash: bytes, cltv_expiry: int, height: int,
            onion: bytes) -> Step:
    d = ch.d
    if d.local_shutdown_script is not None:
        raise LocalProtocolError("no new HTLC after our shutdown")
    if len(onion) > MAX_ONION_ROUTING_PACKET_BYTES:
        raise LocalProtocolError(f"onion_routing_packet above {MAX_ONION_ROUTING_PACKET_BYTES} "
                                 "bytes (BOLT #4)")
    _local(rules.add_problem(d, ch.static, LOCAL, d.book.next_local_htlc_id, amount_msat,
                             payment_hash, cltv_expiry, height))
    h = d.book.add_htlc(LOCAL, amount_msat, payment_hash, cltv_expiry, onion)
    return [htlc_deadline(h), Send(add_message(ch, h))]


def cmd_settle(ch: Channel, htlc_id: int, preimage: bytes | None, reason: bytes) -> Step:
    if len(reason) > MAX_FAIL_REASON_BYTES:
        raise LocalProtocolError(f"failure reason above {MAX_FAIL_REASON_BYTES} bytes")
    htlc, problem = rules.settle_problem(ch.d, LOCAL, htlc_id, preimage)
    _local(problem)
    assert htlc is not None
    ch.d.book.remove_htlc(htlc, preimage, reason)
    if preimage is None:
        return [Send(removal_message(ch, htlc))]
    return [htlc_deadline(htlc), Send(removal_message(ch, htlc))]


def htlc_deadline(h: Htlc) -> HtlcDeadline:
    """When to go on chain for ``h`` if the peer has not settled it (see
    ``HtlcDeadline``): ours, G blocks after its expiry; the peer's that we fulfilled,
    early enough before its expiry for the preimage to confirm."""
    if h.offered_by is LOCAL:
        return HtlcDeadline(h.htlc_id, True, h.payment_hash,
                            h.cltv_expiry + OFFERED_HTLC_GRACE_BLOCKS)
    return HtlcDeadline(h.htlc_id, False, h.payment_hash,
                        h.cltv_expiry - FULFILLED_HTLC_DEADLINE_BLOCKS)


def cmd_fee(ch: Channel, feerate_per_kw: int) -> Step:
    _local(rules.fee_problem(ch.d, ch.static, LOCAL, feerate_per_kw))
    ch.d.book.update_fee(LOCAL, feerate_per_kw)
    return [Send(fee_message(ch, feerate_per_kw))]


def cmd_commit(ch: Channel) -> Step:
    """BOLT #2 commitment_signed, sending: covers every update so far; only one
    unrevoked signature outstanding (the next point comes with revoke_and_ack)."""
    if ch.awaiting_revocation():
        raise LocalProtocolError("waiting for revoke_and_ack before signing again")
    if not ch.has_uncommitted_changes():
        raise LocalProtocolError("no update to commit (BOLT #2: MUST NOT send "
                                 "commitment_signed without updates)")
    return sign_next_remote(ch) + closing.reply_shutdown_if_due(ch)


def sign_next_remote(ch: Channel) -> Step:
    d = ch.d
    new_ctn = d.remote_ctn + 1
    current = in_commitment(REMOTE, d.remote_ctn)
    eligible = ch.remote_eligible

    def next_view(m: Mark) -> bool:
        return current(m) or (m.remote_ctn is None and eligible(m))

    try:
        commitment = ch.build_remote(new_ctn, d.book.view(next_view))
    except TransactionError as exc:  # unreachable while the rules hold; never a crash
        raise LocalProtocolError(f"the peer's next commitment cannot be built: {exc}; "
                                 "fail the channel", Disposition.CLOSE) from exc
    sigs = sign_remote(ch.static, ch.secrets, commitment)
    d.book.commit(REMOTE, new_ctn, eligible)
    d.remote_ctn = new_ctn
    d.remote_commit_txids[new_ctn] = commitment.txid
    ch.signed_remote[new_ctn] = commitment
    d.last_sent_was_revoke = False
    return [PERSIST, Send(wrap(commitment_signed=peer_pb2.CommitmentSigned(
        channel_id=ch.channel_id, signature=sigs.commitment_signature,
        htlc_signatures=list(sigs.htlc_signatures))))]


# -- received updates -------------------------------------------------------------------------


def on_add(ch: Channel, msg: peer_pb2.UpdateAddHtlc, height: int) -> Step:
    d = ch.d
    if d.remote_shutdown_script is not None:
        raise RemoteProtocolError("update_add_htlc after the peer's shutdown")
    _remote(rules.add_problem(d, ch.static, REMOTE, msg.id, msg.amount_msat, msg.payment_hash,
                              msg.cltv_expiry, height))
    candidate = Htlc(REMOTE, msg.id, msg.amount_msat, msg.payment_hash, msg.cltv_expiry,
                     b"", Mark(REMOTE, 0))
    policy = rules.policy_problem(d, ch.static, candidate, height)
    h = d.book.add_htlc(REMOTE, msg.amount_msat, msg.payment_hash, msg.cltv_expiry,
                        msg.onion_routing_packet)
    if policy is not None:
        h.policy_failure = policy.message
    return []


def on_fulfill(ch: Channel, msg: peer_pb2.UpdateFulfillHtlc, height: int) -> Step:
    htlc, problem = rules.settle_problem(ch.d, REMOTE, msg.id, msg.payment_preimage)
    _remote(problem)
    assert htlc is not None
    ch.d.book.remove_htlc(htlc, msg.payment_preimage, b"")
    if htlc.htlc_id in ch.reported_preimages:
        return []
    ch.reported_preimages.add(htlc.htlc_id)
    return [HtlcFulfilled(htlc.htlc_id, htlc.payment_hash, msg.payment_preimage)]


def on_fail(ch: Channel, msg: peer_pb2.UpdateFailHtlc, height: int) -> Step:
    htlc, problem = rules.settle_problem(ch.d, REMOTE, msg.id, None)
    _remote(problem)
    assert htlc is not None
    ch.d.book.remove_htlc(htlc, None, msg.reason)
    return []


def on_fee(ch: Channel, msg: peer_pb2.UpdateFee, height: int) -> Step:
    _remote(rules.fee_problem(ch.d, ch.static, REMOTE, msg.feerate_per_kw))
    ch.d.book.update_fee(REMOTE, msg.feerate_per_kw)
    return []


# -- commitment_signed / revoke_and_ack ---------------------------------------------------------


def on_commitment_signed(ch: Channel, msg: peer_pb2.CommitmentSigned, height: int) -> Step:
    """BOLT #2 commitment_signed, receiving: verify every signature of our next
    commitment, then (persist first!) revoke the previous one."""
    d = ch.d
    eligible = ch.local_eligible()
    if not d.book.pending(LOCAL, eligible):
        raise RemoteProtocolError("commitment_signed without any update")
    new_ctn = d.local_ctn + 1
    current = in_commitment(LOCAL, d.local_ctn)

    def next_view(m: Mark) -> bool:
        return current(m) or (m.local_ctn is None and eligible(m))

    try:
        commitment = ch.build_local(new_ctn, d.book.view(next_view))
    except TransactionError as exc:  # unreachable while the rules hold; never a crash
        raise RemoteProtocolError(f"commitment_signed for a commitment that cannot be "
                                  f"built: {exc}", Disposition.CLOSE) from exc
    verify_local(ch.static, commitment, msg.signature, tuple(msg.htlc_signatures))
    # Verified: from here on nothing can fail.
    d.book.commit(LOCAL, new_ctn, eligible)
    d.local_ctn = new_ctn
    d.local_commit_signature = msg.signature
    d.local_htlc_signatures = tuple(msg.htlc_signatures)
    d.last_sent_was_revoke = True
    events = _prune(ch)
    return [PERSIST, Send(revoke_message(ch)), *events]


def revoke_message(ch: Channel) -> peer_pb2.PeerMessage:
    """revoke_and_ack for our commitment ``local_ctn - 1`` (also used to retransmit)."""
    n = ch.d.local_ctn
    return wrap(revoke_and_ack=peer_pb2.RevokeAndAck(
        channel_id=ch.channel_id,
        per_commitment_secret=ch.secrets.per_commitment_secret(n - 1),
        next_per_commitment_point=ch.local_point(n + 1)))


def on_revoke_and_ack(ch: Channel, msg: peer_pb2.RevokeAndAck, height: int) -> Step:
    """BOLT #2 revoke_and_ack, receiving: the secret must match the point of the
    commitment it revokes and be consistent with the earlier ones (shachain)."""
    d = ch.d
    if not ch.awaiting_revocation():
        raise RemoteProtocolError("revoke_and_ack without an outstanding commitment_signed")
    try:
        point = pubkey_from_secret(msg.per_commitment_secret)
    except ValueError as exc:  # zero, or not below the curve order
        raise RemoteProtocolError(f"per_commitment_secret is not a valid secret: {exc}",
                                  Disposition.CLOSE) from exc
    if point != d.remote_current_point:
        raise RemoteProtocolError("per_commitment_secret does not match the "
                                  "per_commitment_point of the revoked commitment")
    if not rules.valid_point(msg.next_per_commitment_point):
        raise RemoteProtocolError("invalid next_per_commitment_point")
    revoked = d.remote_oldest_ctn
    # What a watcher needs to punish this commitment, taken before the points move on
    # and before ``_prune`` forgets its HTLCs (issue 11, finding 3).
    watch = revoked_watch(ch, revoked)
    try:
        ch.revocations.add_commitment_secret(revoked, msg.per_commitment_secret)
    except ShachainError as exc:  # the store is unchanged when it raises
        raise RemoteProtocolError(f"per_commitment_secret not derivable: {exc}",
                                  Disposition.CLOSE) from exc
    d.remote_secrets = ch.revocations.to_bytes()
    d.remote_oldest_ctn = revoked + 1
    d.remote_current_point = d.remote_next_point
    d.remote_next_point = msg.next_per_commitment_point
    d.remote_commit_txids.pop(revoked, None)
    ch.signed_remote.pop(revoked, None)
    # The Watch before the Persist: a driver that stores each Watch durably before the
    # next action never loses it, and the Persist is what forgets the HTLCs.
    step: Step = [watch, PERSIST]
    for h in list(d.book.htlcs.values()):
        if h.offered_by is REMOTE and h.add.remote_ctn == d.remote_oldest_ctn:
            if h.policy_failure:
                step += fail_back(ch, h)
            else:
                step.append(HtlcReceived(h.htlc_id, h.amount_msat, h.payment_hash,
                                         h.cltv_expiry, h.onion))
    step.extend(_prune(ch))
    return step


def revoked_watch(ch: Channel, commitment_number: int) -> Watch:
    """``Watch("revoked_commitment")`` for the peer's commitment ``commitment_number``
    (its oldest unrevoked one, about to be revoked): the commitment as we signed it."""
    commitment = ch.signed_remote.get(commitment_number)
    if commitment is None:  # after a restart: rebuilt from the book, still unpruned
        commitment = ch.build_remote(commitment_number)
    index = commitment.to_local_index
    return Watch(
        "revoked_commitment", commitment.txid, commitment_number=commitment_number,
        htlc_outputs=commitment.htlc_outputs, to_local_output_index=index,
        to_local_amount_sat=0 if index is None else commitment.tx.outputs[index].amount_sat,
        feerate_per_kw=commitment.feerate_per_kw)


def fail_back(ch: Channel, h: Htlc) -> Step:
    """Fail a peer's HTLC that broke our policy, now that it is irrevocably committed."""
    if h.removal is not None:
        return []
    ch.d.book.remove_htlc(h, None, h.policy_failure.encode())
    return [Send(removal_message(ch, h))]


def _prune(ch: Channel) -> Step:
    gone = ch.d.book.prune(ch.d.local_ctn, ch.d.remote_oldest_ctn)
    step: Step = []
    for h in gone:
        if h.offered_by is LOCAL:
            ch.reported_preimages.discard(h.htlc_id)
        if h.offered_by is LOCAL and h.removal is not None and not h.removal.fulfilled:
            step.append(HtlcFailed(h.htlc_id, h.payment_hash, reason=h.removal.reason))
    return step
