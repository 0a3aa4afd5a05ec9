"""The one seam between the state machine and channel/ (BOLT #3 transactions).

Everything that builds, signs or verifies a transaction goes through here, so the rest
of protocol/ deals only in balances, HTLCs and commitment numbers. Signature failures
become ``RemoteProtocolError(CLOSE)`` here (BOLT #2: "if signature is not valid ...
MUST send a warning and close the connection, or send an error and fail the channel";
we fail the channel: a bad signature is never an accident).
"""

from __future__ import annotations

from channel import closing as ch_closing
from channel.commitment import (
    ChannelParty,
    ChannelStatic,
    Commitment,
    CommitmentSignatures,
    Side,
    build_commitment,
    commitment_fee_sat,
    finalize_holder_commitment,
    is_htlc_trimmed,
    sign_counterparty_commitment,
    verify_holder_commitment,
)
from channel.errors import InvalidSignature, TransactionError
from channel.keys import ChannelSecrets
from channel.tx import OutPoint, Tx
from protocol.book import Htlc, View
from protocol.errors import Disposition, RemoteProtocolError
from protocol.state import ChannelData


def make_static(d: ChannelData, secrets: ChannelSecrets) -> ChannelStatic:
    """The channel's fixed parameters once both sides' keys and the outpoint are known."""
    assert d.remote is not None
    return ChannelStatic(
        funding_outpoint=OutPoint(d.funding_txid, d.funding_output_index),
        funding_sat=d.funding_sat,
        local=ChannelParty(secrets.basepoints(), d.config.dust_limit_sat, d.config.to_self_delay),
        remote=ChannelParty(d.remote.basepoints, d.remote.dust_limit_sat, d.remote.to_self_delay),
        local_is_funder=d.local_is_funder,
    )


def funding_script_pubkey(static: ChannelStatic) -> bytes:
    return static.funding_script_pubkey


def build(static: ChannelStatic, owner: Side, commitment_number: int, point: bytes,
          view: View) -> Commitment:
    """BOLT #3 commitment ``commitment_number`` of ``owner`` for ``view``.

    The rules (``protocol.rules``) guarantee the funder can pay the fee of every
    commitment the book can produce; the two callers that build a new commitment
    (``updates.on_commitment_signed``, ``updates.sign_next_remote``) still turn a
    TransactionError into a protocol error with ``Disposition.CLOSE``, so a rule gap
    fails the channel instead of crashing its driver."""
    return build_commitment(
        static, owner, commitment_number, point, view.local_msat, view.remote_msat,
        [h.as_commitment_htlc() for h in view.htlcs], view.feerate_per_kw,
    )


def sign_remote(static: ChannelStatic, secrets: ChannelSecrets,
                commitment: Commitment) -> CommitmentSignatures:
    return sign_counterparty_commitment(static, secrets, commitment)


def verify_local(static: ChannelStatic, commitment: Commitment, signature: bytes,
                 htlc_signatures: tuple[bytes, ...]) -> None:
    """Check the peer's signatures of our commitment (BOLT #2 commitment_signed:
    "if signature is not valid for its local commitment transaction ... if any
    htlc_signature is not valid ... if num_htlcs is not equal to the number of HTLC
    outputs": fail the channel)."""
    if len(htlc_signatures) != len(commitment.htlc_outputs):
        raise RemoteProtocolError(
            f"commitment_signed carries {len(htlc_signatures)} HTLC signatures for "
            f"{len(commitment.htlc_outputs)} HTLC outputs", Disposition.CLOSE)
    try:
        verify_holder_commitment(static, commitment,
                                 CommitmentSignatures(signature, htlc_signatures))
    except (InvalidSignature, ValueError) as exc:
        raise RemoteProtocolError(f"invalid signature: {exc}", Disposition.CLOSE) from exc


def finalize_local(static: ChannelStatic, secrets: ChannelSecrets, commitment: Commitment,
                   remote_signature: bytes) -> Tx:
    return finalize_holder_commitment(static, secrets, commitment, remote_signature)


def commitment_fee_msat(static: ChannelStatic, owner: Side, htlcs: list[Htlc],
                        feerate_per_kw: int) -> int:
    return 1000 * commitment_fee_sat(static, owner, [h.as_commitment_htlc() for h in htlcs],
                                     feerate_per_kw)


def is_trimmed(static: ChannelStatic, owner: Side, htlc: Htlc, feerate_per_kw: int) -> bool:
    return is_htlc_trimmed(static, owner, htlc.as_commitment_htlc(), feerate_per_kw)


# -- cooperative close ---------------------------------------------------------------------


def closing_amounts_sat(static: ChannelStatic, view: View, fee_sat: int) -> tuple[int, int]:
    """Final balances in whole satoshis (BOLT #3: rounded down), fee taken from the funder."""
    local_sat, remote_sat = view.local_msat // 1000, view.remote_msat // 1000
    if static.local_is_funder:
        local_sat -= fee_sat
    else:
        remote_sat -= fee_sat
    if local_sat < 0 or remote_sat < 0:
        raise TransactionError("the funder cannot pay this closing fee")
    return local_sat, remote_sat


def build_closing(static: ChannelStatic, view: View, fee_sat: int, local_script: bytes,
                  remote_script: bytes) -> Tx:
    """The closing transaction we sign (``channel.closing.closing_tx_to_sign``: the same
    bytes the peer signs whatever the two dust limits; ``DustLimitConflict`` when our
    output is below the peer's limit only)."""
    local_sat, remote_sat = closing_amounts_sat(static, view, fee_sat)
    return ch_closing.closing_tx_to_sign(static, local_sat, remote_sat, local_script,
                                         remote_script)


def sign_closing(static: ChannelStatic, secrets: ChannelSecrets, tx: Tx) -> bytes:
    return ch_closing.sign_closing_tx(static, secrets, tx)


def verify_closing(static: ChannelStatic, view: View, fee_sat: int, local_script: bytes,
                   remote_script: bytes, signature: bytes) -> Tx:
    """The closing transaction the peer's ``signature`` signs at ``fee_sat``: ours, or
    ours without the peer's own output (BOLT #3: each signer drops outputs below its
    own dust limit and may drop its own; ``channel.closing``). A signature valid for
    neither fails the channel (BOLT #2 closing_signed)."""
    local_sat, remote_sat = closing_amounts_sat(static, view, fee_sat)
    try:
        return ch_closing.closing_tx_signed_by_peer(static, local_sat, remote_sat, local_script,
                                                    remote_script, signature)
    except (InvalidSignature, ValueError) as exc:
        raise RemoteProtocolError(f"invalid closing signature: {exc}", Disposition.CLOSE) from exc


def finalize_closing(static: ChannelStatic, tx: Tx, local_signature: bytes,
                     remote_signature: bytes) -> Tx:
    return ch_closing.finalize_closing_tx(static, tx, local_signature, remote_signature)
