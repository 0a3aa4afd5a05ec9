"""Channel establishment (BOLT #2 "Channel Establishment", v1 flow).

    funder                                fundee
      open_channel        ------------>
                          <------------   accept_channel
      [wallet builds the funding tx; ``funding_outpoint()`` command]
      funding_created     ------------>   (signature of the fundee's commitment 0)
                          <------------   funding_signed (signature of the funder's)
      [funder broadcasts the funding tx; both wait for ``minimum_depth``]
      channel_ready       <----------->   channel_ready

The funding transaction is the caller's wallet's business: the funder gets a
``FundingNeeded`` event (script and amount) and answers with the outpoint; it must not
broadcast before ``FundingSigned`` (BOLT #2: "MUST NOT broadcast the funding transaction"
before receiving funding_signed), or its funds could be locked without a signed way out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from channel.keys import Basepoints
from channel.scripts import funding_script, p2wsh
from proto import peer_pb2
from protocol import closing, commitments, rules
from protocol.actions import ChannelOpened, FundingNeeded, FundingSigned, Send, Watch
from protocol.book import Book, everything
from protocol.config import fee_upper_bound_sat
from protocol.errors import Disposition, LocalProtocolError, RemoteProtocolError
from protocol.messages import channel_id_from_outpoint, wrap
from protocol.state import RemoteParams
from protocol.step import PERSIST, Step

if TYPE_CHECKING:
    from protocol.channel import Channel


def _our_params(ch: Channel) -> dict[str, object]:
    cfg = ch.d.config
    bp = ch.secrets.basepoints()
    return dict(
        dust_limit_satoshis=cfg.dust_limit_sat,
        max_htlc_value_in_flight_msat=cfg.max_htlc_value_in_flight_msat,
        channel_reserve_satoshis=cfg.channel_reserve_sat,
        htlc_minimum_msat=cfg.htlc_minimum_msat,
        to_self_delay=cfg.to_self_delay,
        max_accepted_htlcs=cfg.max_accepted_htlcs,
        funding_pubkey=bp.funding_pubkey,
        revocation_basepoint=bp.revocation_basepoint,
        payment_basepoint=bp.payment_basepoint,
        delayed_payment_basepoint=bp.delayed_payment_basepoint,
        htlc_basepoint=bp.htlc_basepoint,
        first_per_commitment_point=ch.local_point(0),
    )


def _their_params(msg: peer_pb2.OpenChannel | peer_pb2.AcceptChannel,
                  minimum_depth: int) -> RemoteParams:
    return RemoteParams(
        dust_limit_sat=msg.dust_limit_satoshis,
        max_htlc_value_in_flight_msat=msg.max_htlc_value_in_flight_msat,
        channel_reserve_sat=msg.channel_reserve_satoshis,
        htlc_minimum_msat=msg.htlc_minimum_msat,
        to_self_delay=msg.to_self_delay,
        max_accepted_htlcs=msg.max_accepted_htlcs,
        minimum_depth=minimum_depth,
        basepoints=Basepoints(msg.funding_pubkey, msg.revocation_basepoint,
                              msg.payment_basepoint, msg.delayed_payment_basepoint,
                              msg.htlc_basepoint),
        upfront_shutdown_script=msg.upfront_shutdown_script,
    )


def _check(problem: rules.Problem | None) -> None:
    if problem is not None:
        raise RemoteProtocolError(problem.message, Disposition.CLOSE)


def _check_upfront_script(ch: Channel, script: bytes) -> None:
    """BOLT #2 open_channel/accept_channel: an ``upfront_shutdown_script`` binds the
    close to that script (enforced in ``closing.on_shutdown``), so it must itself be
    one a shutdown may name; empty means none was committed."""
    if script and not closing.standard_script(
            script, anysegwit=ch.d.config.option_shutdown_anysegwit):
        raise RemoteProtocolError("upfront_shutdown_script is not a standard scriptpubkey",
                                  Disposition.CLOSE)


def cmd_open(ch: Channel, funding_sat: int, push_msat: int, feerate_per_kw: int) -> Step:
    d = ch.d
    cfg = d.config
    if push_msat < 0:
        raise LocalProtocolError("push_msat is negative")
    if not cfg.min_feerate_per_kw <= feerate_per_kw <= cfg.max_feerate_per_kw:
        raise LocalProtocolError(f"feerate_per_kw {feerate_per_kw} out of bounds")
    funder_msat = funding_sat * 1000 - push_msat
    # What the fundee will check (BOLT #2 open_channel, receiving node), with our reserve.
    problem = (rules.funding_problem(cfg, funding_sat, push_msat)
               or (None if funder_msat >= 1000 * fee_upper_bound_sat(feerate_per_kw, 0) else
                   rules.Problem("we could not pay the fee of the first commitment"))
               or rules.initial_reserve_problem(funding_sat, funder_msat, feerate_per_kw,
                                                cfg.channel_reserve_sat))
    if problem is not None:
        raise LocalProtocolError(problem.message)
    d.funding_sat, d.push_msat = funding_sat, push_msat
    d.book = Book(funding_sat * 1000 - push_msat, push_msat, feerate_per_kw)
    return [Send(wrap(open_channel=peer_pb2.OpenChannel(
        chain_hash=d.chain_hash, temporary_channel_id=d.temporary_channel_id,
        funding_satoshis=funding_sat, push_msat=push_msat, feerate_per_kw=feerate_per_kw,
        channel_flags=0, upfront_shutdown_script=b"", **_our_params(ch))))]  # type: ignore[arg-type]


def on_open_channel(ch: Channel, msg: peer_pb2.OpenChannel, height: int) -> Step:
    """BOLT #2 open_channel, receiving node requirements."""
    d = ch.d
    cfg = d.config
    if msg.chain_hash != d.chain_hash:
        raise RemoteProtocolError("open_channel for another chain")
    _check(rules.funding_problem(cfg, msg.funding_satoshis, msg.push_msat))
    _check_upfront_script(ch, msg.upfront_shutdown_script)
    their = _their_params(msg, cfg.minimum_depth)
    _check(rules.params_problem(cfg, msg.funding_satoshis, their, msg.feerate_per_kw,
                                msg.funding_satoshis * 1000 - msg.push_msat))
    if not rules.valid_point(msg.first_per_commitment_point):
        raise RemoteProtocolError("invalid first_per_commitment_point")
    d.temporary_channel_id = msg.temporary_channel_id
    d.funding_sat, d.push_msat = msg.funding_satoshis, msg.push_msat
    d.remote = their
    d.remote_current_point = msg.first_per_commitment_point
    d.book = Book(msg.push_msat, msg.funding_satoshis * 1000 - msg.push_msat, msg.feerate_per_kw)
    return [Send(wrap(accept_channel=peer_pb2.AcceptChannel(
        temporary_channel_id=d.temporary_channel_id, minimum_depth=cfg.minimum_depth,
        upfront_shutdown_script=b"", **_our_params(ch))))]  # type: ignore[arg-type]


def on_accept_channel(ch: Channel, msg: peer_pb2.AcceptChannel, height: int) -> Step:
    """BOLT #2 accept_channel, receiving node (the funder) requirements."""
    d = ch.d
    if msg.temporary_channel_id != d.temporary_channel_id:
        raise RemoteProtocolError("accept_channel for another temporary_channel_id",
                                  Disposition.WARN)
    if msg.minimum_depth > 144:  # a day of blocks: more is unreasonable (BOLT #2 MAY reject)
        raise RemoteProtocolError(f"minimum_depth {msg.minimum_depth} unreasonable")
    _check_upfront_script(ch, msg.upfront_shutdown_script)
    their = _their_params(msg, msg.minimum_depth)
    _check(rules.params_problem(d.config, d.funding_sat, their, d.book.base_feerate_per_kw,
                                d.book.local_base_msat))
    if not rules.valid_point(msg.first_per_commitment_point):
        raise RemoteProtocolError("invalid first_per_commitment_point")
    d.remote = their
    d.remote_current_point = msg.first_per_commitment_point
    script = p2wsh(funding_script(ch.secrets.basepoints().funding_pubkey, msg.funding_pubkey))
    return [FundingNeeded(script, d.funding_sat)]


def cmd_funding_outpoint(ch: Channel, funding_txid: bytes, output_index: int) -> Step:
    d = ch.d
    if len(funding_txid) != 32 or not 0 <= output_index < 0x10000:
        raise LocalProtocolError("bad funding outpoint")
    d.funding_txid, d.funding_output_index = funding_txid, output_index
    commitment = ch.build_remote(0, d.book.view(everything))
    sigs = commitments.sign_remote(ch.static, ch.secrets, commitment)
    d.channel_id = channel_id_from_outpoint(funding_txid, output_index)
    d.remote_commit_txids[0] = commitment.txid
    return [PERSIST, Send(wrap(funding_created=peer_pb2.FundingCreated(
        temporary_channel_id=d.temporary_channel_id, funding_txid=funding_txid,
        funding_output_index=output_index, signature=sigs.commitment_signature)))]


def on_funding_created(ch: Channel, msg: peer_pb2.FundingCreated, height: int) -> Step:
    """BOLT #2 funding_created: verify the funder's signature of our commitment 0, then
    sign theirs (persisting first)."""
    d = ch.d
    if msg.temporary_channel_id != d.temporary_channel_id:
        raise RemoteProtocolError("funding_created for another temporary_channel_id",
                                  Disposition.WARN)
    if msg.funding_output_index >= 0x10000:
        raise RemoteProtocolError("funding_output_index out of range")
    d.funding_txid, d.funding_output_index = msg.funding_txid, msg.funding_output_index
    try:
        local = ch.build_local(0, d.book.view(everything))
        commitments.verify_local(ch.static, local, msg.signature, ())
    except RemoteProtocolError:
        d.funding_txid, d.funding_output_index = b"", 0
        ch._static = None
        raise
    remote = ch.build_remote(0, d.book.view(everything))
    sigs = commitments.sign_remote(ch.static, ch.secrets, remote)
    d.channel_id = channel_id_from_outpoint(msg.funding_txid, msg.funding_output_index)
    d.local_commit_signature = msg.signature
    d.remote_commit_txids[0] = remote.txid
    return [funding_watch(ch), PERSIST,
            Send(wrap(funding_signed=peer_pb2.FundingSigned(
                channel_id=d.channel_id, signature=sigs.commitment_signature)))]


def funding_watch(ch: Channel) -> Watch:
    """What the driver must find on chain: the funder names the outpoint, nothing
    else proves it pays the 2-of-2 with the agreed amount (see ``Watch``)."""
    d = ch.d
    return Watch("funding", d.funding_txid, output_index=d.funding_output_index,
                 script_pubkey=ch.static.funding_script_pubkey, amount_sat=d.funding_sat)


def on_funding_signed(ch: Channel, msg: peer_pb2.FundingSigned, height: int) -> Step:
    d = ch.d
    if msg.channel_id != d.channel_id:
        raise RemoteProtocolError("funding_signed for another channel_id", Disposition.WARN)
    local = ch.build_local(0, d.book.view(everything))
    commitments.verify_local(ch.static, local, msg.signature, ())
    d.local_commit_signature = msg.signature
    return [funding_watch(ch), PERSIST, FundingSigned(d.funding_txid)]


def ready_message(ch: Channel) -> peer_pb2.PeerMessage:
    return wrap(channel_ready=peer_pb2.ChannelReady(
        channel_id=ch.channel_id, second_per_commitment_point=ch.local_point(1)))


def cmd_funding_confirmed(ch: Channel) -> Step:
    from protocol.table import LinkState

    d = ch.d
    if d.local_ready_sent:
        return []
    d.local_ready_sent = True
    # While disconnected, channel_reestablish retransmits it (next_commitment_number 1).
    return [PERSIST, *([Send(ready_message(ch))] if ch.link is LinkState.UP else [])]


def on_channel_ready(ch: Channel, msg: peer_pb2.ChannelReady, height: int) -> Step:
    """BOLT #2 channel_ready; "MUST ignore any redundant channel_ready" once open."""
    d = ch.d
    if msg.channel_id != d.channel_id:
        raise RemoteProtocolError("channel_ready for another channel_id", Disposition.WARN)
    if d.remote_ready_received:
        if msg.second_per_commitment_point != d.remote_next_point and d.local_ctn == 0:
            raise RemoteProtocolError("channel_ready repeated with a different point")
        return []
    if not rules.valid_point(msg.second_per_commitment_point):
        raise RemoteProtocolError("invalid second_per_commitment_point")
    d.remote_next_point = msg.second_per_commitment_point
    d.remote_ready_received = True
    return [PERSIST]


def both_ready(ch: Channel) -> bool:
    return ch.d.local_ready_sent and ch.d.remote_ready_received


def on_both_ready(ch: Channel) -> Step:
    return [ChannelOpened(ch.d.channel_id)]

