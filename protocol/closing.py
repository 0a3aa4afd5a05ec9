"""Cooperative close (BOLT #2 "Channel Close": shutdown, then closing_signed).

1. Either side sends ``shutdown`` once none of its updates is uncommitted; the other
   replies with its own as soon as the same holds for it. From then on no new HTLC.
2. When both shutdowns are exchanged and no HTLC and no pending update remain in any
   commitment (``drained``), the table's SHUTDOWN -> NEGOTIATING trigger fires.
3. The funder proposes a fee with ``closing_signed`` (fee + signature of the closing tx
   at that fee). Each answer is either the same fee (agreement: both now hold both
   signatures and broadcast) or a counter-proposal strictly between the two last
   proposals (BOLT #2: "MUST propose a value strictly between the received
   fee_satoshis and its previously-sent fee_satoshis"). We move halfway each round,
   so negotiation ends in about log2(gap) rounds.

Dust limits (BOLT #3): each side signs ``channel.closing.closing_tx_to_sign``, so with
different dust limits both still sign the same bytes. When an output is at or above its
owner's limit but below the other side's, no such transaction exists: its owner fails
the channel (our own output: before we sign anything; the peer's: we propose without
it, and a peer that will not give it up refuses), so the owner's commitment, which keeps
the output, is the one that goes on chain.

Every received closing signature is verified before anything depends on it; we persist
before sending our own signature of a closing tx.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from channel.closing import DustLimitConflict
from channel.errors import TransactionError
from proto import peer_pb2
from protocol import commitments
from protocol.actions import Broadcast, ChannelClosed, Send, Watch
from protocol.book import LOCAL
from protocol.config import (
    CLOSING_CONFIRM_DEADLINE_BLOCKS,
    CLOSING_WITNESS_WEIGHT,
    MIN_RELAY_FEE_SAT_PER_VBYTE,
    fee_upper_bound_sat,
)
from protocol.errors import Disposition, LocalProtocolError, RemoteProtocolError
from protocol.messages import wrap
from protocol.step import PERSIST, Step
from protocol.table import LinkState

if TYPE_CHECKING:
    from channel.tx import Tx
    from protocol.channel import Channel

def standard_script(script: bytes, *, anysegwit: bool) -> bool:
    """BOLT #2 shutdown: the scriptpubkey forms a node may close to. P2PKH, P2SH,
    P2WPKH and P2WSH always; with ``option_shutdown_anysegwit`` also any witness program
    of version 1 to 16 (OP_1..OP_16 and a single push of 2 to 40 bytes: P2TR among
    them). Without the option a v1+ output is refused: the peer's node may not relay it
    or the close could pay to a program nobody can spend yet."""
    n = len(script)
    if ((n == 25 and script[:3] == b"\x76\xa9\x14" and script[23:] == b"\x88\xac")
            or (n == 23 and script[:2] == b"\xa9\x14" and script[22:] == b"\x87")
            or (n == 22 and script[:2] == b"\x00\x14")
            or (n == 34 and script[:2] == b"\x00\x20")):
        return True
    return (anysegwit and 4 <= n <= 42 and 0x51 <= script[0] <= 0x60
            and script[1] == n - 2)


def _standard_script(ch: Channel, script: bytes) -> bool:
    return standard_script(script, anysegwit=ch.d.config.option_shutdown_anysegwit)


def shutdown_message(ch: Channel) -> peer_pb2.PeerMessage:
    assert ch.d.local_shutdown_script is not None
    return wrap(shutdown=peer_pb2.Shutdown(channel_id=ch.channel_id,
                                           scriptpubkey=ch.d.local_shutdown_script))


def _our_updates_pending(ch: Channel) -> bool:
    return ch.d.book.pending(LOCAL.other(), lambda m: m.origin is LOCAL)


def cmd_shutdown(ch: Channel) -> Step:
    d = ch.d
    if d.local_shutdown_script is not None:
        raise LocalProtocolError("shutdown already sent")
    if _our_updates_pending(ch):
        raise LocalProtocolError("commit pending updates first (BOLT #2: MUST NOT send "
                                 "shutdown with updates pending on the peer's commitment)")
    if not _standard_script(ch, d.close_script):
        raise LocalProtocolError("close_script is not a standard scriptpubkey (a segwit "
                                 "v1+ one needs option_shutdown_anysegwit)")
    d.local_shutdown_script = d.close_script
    return [PERSIST, Send(shutdown_message(ch))]


def reply_shutdown_if_due(ch: Channel, *, link_up: bool | None = None) -> Step:
    """Our shutdown answering the peer's, once our own updates are all committed."""
    d = ch.d
    up = ch.link is LinkState.UP if link_up is None else link_up
    if (d.remote_shutdown_script is None or d.local_shutdown_script is not None
            or _our_updates_pending(ch) or not up):
        return []
    d.local_shutdown_script = d.close_script
    return [PERSIST, Send(shutdown_message(ch))]


def on_shutdown(ch: Channel, msg: peer_pb2.Shutdown, height: int) -> Step:
    d = ch.d
    if msg.channel_id != d.channel_id:
        raise RemoteProtocolError("shutdown for another channel", Disposition.WARN)
    if not _standard_script(ch, msg.scriptpubkey):
        raise RemoteProtocolError("shutdown scriptpubkey is not standard (a segwit v1+ one "
                                  "needs option_shutdown_anysegwit)", Disposition.WARN)
    assert d.remote is not None
    upfront = d.remote.upfront_shutdown_script
    if upfront and msg.scriptpubkey != upfront:
        # BOLT #2: a node that sent a non-empty upfront_shutdown_script "MUST send"
        # that very script; the receiver "MUST fail the connection" otherwise.
        raise RemoteProtocolError("shutdown scriptpubkey differs from the "
                                  "upfront_shutdown_script committed at open",
                                  Disposition.WARN)
    if d.remote_shutdown_script is not None:
        if msg.scriptpubkey != d.remote_shutdown_script:
            raise RemoteProtocolError("shutdown repeated with a different scriptpubkey")
        return []  # retransmitted after a reconnect
    if ch.d.book.pending(LOCAL, lambda m: m.origin is not LOCAL):
        raise RemoteProtocolError("shutdown with its updates still uncommitted")
    d.remote_shutdown_script = msg.scriptpubkey
    return [PERSIST, *reply_shutdown_if_due(ch)]


def drained(ch: Channel) -> bool:
    d = ch.d
    return (d.local_shutdown_script is not None and d.remote_shutdown_script is not None
            and not d.book.htlcs and not d.book.fee_updates
            and not ch.awaiting_revocation())


def on_drained(ch: Channel) -> Step:
    return start_negotiation(ch, link_up=ch.link is LinkState.UP)


# -- fee negotiation ---------------------------------------------------------------------------


def max_fee_sat(ch: Channel) -> int:
    """BOLT #2 (legacy closing): at most the base fee of the final commitment, and no
    more than the funder has."""
    return min(fee_upper_bound_sat(ch.d.book.base_feerate_per_kw, 0), _funder_sat(ch))


def _closing_weight(ch: Channel, fee_sat: int) -> int:
    """The closing tx's weight at ``fee_sat``, its witness estimated from above. At a
    fee where our output conflicts with the peer's dust limit there is no transaction
    for us to sign; the one with our output kept gives the size."""
    try:
        tx = _closing_tx(ch, fee_sat)
    except DustLimitConflict as conflict:
        tx = conflict.as_we_would_build
    return 4 * len(tx.serialize_without_witness()) + CLOSING_WITNESS_WEIGHT


def min_fee_sat(ch: Channel, fee_sat: int) -> int:
    """The floor for a closing fee near ``fee_sat`` (issue 11, finding 5): what a node
    relays (``MIN_RELAY_FEE_SAT_PER_VBYTE`` of the closing tx's virtual size, Bitcoin
    Core's default ``minrelaytxfee``) and what we would pay ourselves at the lowest
    feerate we accept for any transaction of the channel (``min_feerate_per_kw``). A
    close below it would be signed, agreed and never confirm. Never above the
    ceiling: when both cannot hold, the ceiling wins and the close's confirmation
    deadline (``Watch.deadline_height``) leads to a force close."""
    weight = _closing_weight(ch, fee_sat)
    relay = MIN_RELAY_FEE_SAT_PER_VBYTE * -(-weight // 4)
    ours = ch.d.config.min_feerate_per_kw * weight // 1000
    return min(max(relay, ours), max_fee_sat(ch))


def ideal_fee_sat(ch: Channel) -> int:
    d = ch.d
    feerate = d.config.closing_feerate_per_kw or d.book.base_feerate_per_kw
    ideal = min(feerate * _closing_weight(ch, 0) // 1000, max_fee_sat(ch))
    return max(ideal, min_fee_sat(ch, ideal))


def _funder_sat(ch: Channel) -> int:
    v = ch.view_of(LOCAL, ch.d.local_ctn)
    return (v.local_msat if ch.d.local_is_funder else v.remote_msat) // 1000


def _closing_tx(ch: Channel, fee_sat: int) -> Tx:
    d = ch.d
    assert d.local_shutdown_script is not None and d.remote_shutdown_script is not None
    return commitments.build_closing(ch.static, ch.view_of(LOCAL, d.local_ctn), fee_sat,
                                     d.local_shutdown_script, d.remote_shutdown_script)


def _propose(ch: Channel, fee_sat: int) -> Step:
    """Our closing_signed at ``fee_sat``. No closing transaction we may sign (both
    outputs dust, or ours below the peer's dust limit only: ``DustLimitConflict``)
    fails the channel: our commitment goes on chain and pays our output. Reached from
    handle() and commands, so never raised."""
    try:
        tx = _closing_tx(ch, fee_sat)
    except TransactionError as exc:
        return ch.fail_channel(f"no cooperative close possible at {fee_sat} sat: {exc}",
                               send_error=True)
    sig = commitments.sign_closing(ch.static, ch.secrets, tx)
    ch.d.closing_fee_sent_sat = fee_sat
    return [PERSIST, Send(wrap(closing_signed=peer_pb2.ClosingSigned(
        channel_id=ch.channel_id, fee_satoshis=fee_sat, signature=sig)))]


def start_negotiation(ch: Channel, *, link_up: bool) -> Step:
    """The funder opens the negotiation (again, after a reconnect: BOLT #2 restarts it)."""
    if not ch.d.local_is_funder or not link_up:
        return []
    try:
        fee = ideal_fee_sat(ch)
    except TransactionError as exc:
        # No closing transaction exists (both outputs under the dust limit): the only
        # way out is our commitment. Reached from handle(), so never raised.
        return ch.fail_channel(f"no cooperative close possible: {exc}", send_error=True)
    return _propose(ch, fee)  # fails the channel too if our output conflicts (dust)


def on_closing_signed(ch: Channel, msg: peer_pb2.ClosingSigned, height: int) -> Step:
    d = ch.d
    fee = msg.fee_satoshis
    if msg.channel_id != d.channel_id:
        raise RemoteProtocolError("closing_signed for another channel", Disposition.WARN)
    if d.closing_txid:  # already agreed: only the peer's echo of the agreed fee is fine
        if fee != d.closing_fee_sent_sat:
            raise RemoteProtocolError("closing_signed after the close was agreed",
                                      Disposition.WARN)
        return []
    if fee > max_fee_sat(ch):
        raise RemoteProtocolError(f"closing fee {fee} sat above the final commitment fee",
                                  Disposition.WARN)
    try:
        floor = min_fee_sat(ch, fee)
    except TransactionError as exc:  # both outputs dust at this fee: no such close
        raise RemoteProtocolError(f"closing fee {fee} sat: {exc}", Disposition.WARN) from exc
    if fee < floor:
        raise RemoteProtocolError(f"closing fee {fee} sat below the relay floor {floor} sat",
                                  Disposition.WARN)
    sent, received = d.closing_fee_sent_sat, d.closing_fee_received_sat
    if sent is not None and received is not None and fee != sent:
        lo, hi = min(sent, received), max(sent, received)
        if not lo < fee < hi:
            raise RemoteProtocolError(
                f"closing fee {fee} not strictly between {lo} and {hi}", Disposition.WARN)
    assert d.local_shutdown_script is not None and d.remote_shutdown_script is not None
    # The variant the peer signed: if we agree, we sign that very transaction.
    tx = commitments.verify_closing(ch.static, ch.view_of(LOCAL, d.local_ctn), fee,
                                    d.local_shutdown_script, d.remote_shutdown_script,
                                    msg.signature)
    # Verified: now decide.
    d.closing_fee_received_sat = fee
    ours = sent if sent is not None else ideal_fee_sat(ch)
    if fee == sent:
        return _agree(ch, tx, fee, msg.signature, send=False, height=height)
    if abs(ours - fee) <= 1 or ours == fee:
        return _agree(ch, tx, fee, msg.signature, send=True, height=height)
    # Halfway, never below the floor: both ends are at or above it already.
    return _propose(ch, (ours + fee) // 2)


def _agree(ch: Channel, tx: Tx, fee: int, remote_sig: bytes, *, send: bool,
           height: int) -> Step:
    """Both signatures held: broadcast. The Watch (with the height by which the close
    must have confirmed, else ``Channel.fail()``) comes first, so that a driver
    storing each Watch before the next action never forgets to check it."""
    d = ch.d
    local_sig = commitments.sign_closing(ch.static, ch.secrets, tx)
    final = commitments.finalize_closing(ch.static, tx, local_sig, remote_sig)
    d.closing_txid = final.txid()
    d.closing_fee_sent_sat = fee
    step: Step = [Watch("closing", d.closing_txid,
                        deadline_height=height + CLOSING_CONFIRM_DEADLINE_BLOCKS), PERSIST]
    if send:
        step.append(Send(wrap(closing_signed=peer_pb2.ClosingSigned(
            channel_id=ch.channel_id, fee_satoshis=fee, signature=local_sig))))
    step += [Broadcast(final.serialize(), d.closing_txid, "cooperative close"),
             ChannelClosed(d.closing_txid, fee)]
    return step

