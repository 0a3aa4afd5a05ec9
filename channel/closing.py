"""The mutual close transaction (BOLT #3 "Closing Transaction", BOLT #2
"closing_signed").

Theory of operation. Once no HTLC is pending, both parties sign one transaction
spending the funding output straight to the scripts they gave in ``shutdown``:
version 2, locktime 0, input sequence 0xFFFFFFFF, outputs in BIP69 order. The
caller has already taken the negotiated fee from the funder's amount.

Dust (BOLT #3 "Closing Transaction", Requirements): each node offering a signature
"MUST remove any output below its own dust_limit_satoshis" and "MAY eliminate its
own output". Both parties know both dust limits (open_channel/accept_channel), so
each output falls in one of three cases, and both sides compute the same case:

- at or above both limits: kept by both;
- below its owner's own limit: its owner must remove it, and the other side accepts
  the owner eliminating its own output, whatever its own limit says: removed by both;
- at or above its owner's limit but below the other side's (only when the limits
  differ): the other side must remove it and its owner will not give it up. No
  transaction exists that both may sign (BOLT #3's "irreparable differences").

``closing_tx_to_sign`` is the transaction we offer a signature for: the first two
cases applied to both outputs. If OUR output is in the third case it raises
``DustLimitConflict``: we never sign our own output away because of the peer's dust
limit (issue 11: a peer with a high limit would otherwise have it dropped into the
fee); the caller fails the channel instead, and our own commitment, trimmed by our
own limit, still pays it. If the PEER's output is in the third case we must remove it
(below our limit), which leaves the peer the choice: give it up, or refuse and close
with its own commitment, which keeps it (what ``closing_tx_signed_by_peer`` does for
us on the other side).

``closing_tx_signed_by_peer`` checks a peer's signature against the two BOLT #3
variants (BOLT #2 closing_signed: a signature valid for neither fails the
connection): the transaction with outputs below OUR limit removed, and the same
without the peer's output. A peer following the rules above always signs one of
them unless our output is in the third case; then nothing matches, and the error
says why.
"""

from __future__ import annotations

import contextlib

from channel.commitment import ChannelStatic, funding_witness
from channel.errors import InvalidSignature, TransactionError
from channel.keys import ChannelSecrets
from channel.sighash import bip143_sighash
from channel.signing import sign, verify
from channel.tx import Tx, TxIn, TxOut


def build_closing_tx(
    static: ChannelStatic,
    local_amount_sat: int,
    remote_amount_sat: int,
    local_script_pubkey: bytes,
    remote_script_pubkey: bytes,
    *,
    omit_remote_output: bool = False,
) -> Tx:
    """Unsigned closing transaction (amounts after the fee) as we sign it: outputs
    below our own dust limit removed. ``omit_remote_output``: the variant in which the
    peer eliminated its own output."""
    if local_amount_sat < 0 or remote_amount_sat < 0:
        raise TransactionError("negative closing amount")
    if local_amount_sat + remote_amount_sat > static.funding_sat:
        raise TransactionError("closing amounts exceed the funding amount")
    dust = static.local.dust_limit_sat
    outputs = [
        TxOut(amount, spk)
        for amount, spk, keep in (
            (local_amount_sat, local_script_pubkey, True),
            (remote_amount_sat, remote_script_pubkey, not omit_remote_output),
        )
        if keep and amount >= dust  # BOLT #3: remove any output BELOW the dust limit
    ]
    if not outputs:
        raise TransactionError("both closing outputs are dust")
    outputs.sort(key=lambda o: (o.amount_sat, o.script_pubkey))
    return Tx(2, [TxIn(static.funding_outpoint, 0xFFFFFFFF)], outputs, 0)


class DustLimitConflict(TransactionError):
    """Our output is at or above our dust limit but below the peer's: the peer must
    remove it (BOLT #3) and we do not give it up, so no closing transaction both sides
    may sign exists at these amounts. ``as_we_would_build`` is the transaction with our
    output kept (by our own limit alone): its size, never something to sign."""

    def __init__(self, message: str, as_we_would_build: Tx) -> None:
        super().__init__(message)
        self.as_we_would_build = as_we_would_build


def dust_limit_conflict(static: ChannelStatic, local_amount_sat: int) -> str | None:
    """Why our output of ``local_amount_sat`` cannot be in a closing transaction both
    sides sign (the third case of the module docstring), or None."""
    our_dust, peer_dust = static.local.dust_limit_sat, static.remote.dust_limit_sat
    if our_dust <= local_amount_sat < peer_dust:
        return (f"our closing output of {local_amount_sat} sat is below the peer's dust "
                f"limit of {peer_dust} sat (the peer must remove it; we do not give it up)")
    return None


def closing_tx_to_sign(
    static: ChannelStatic,
    local_amount_sat: int,
    remote_amount_sat: int,
    local_script_pubkey: bytes,
    remote_script_pubkey: bytes,
) -> Tx:
    """The closing transaction we offer our signature for, the same bytes a peer
    following these rules signs (module docstring): outputs below our dust limit
    removed, and the peer's output also when it is below the PEER's dust limit (the
    peer removes it from what it signs). Raises ``DustLimitConflict`` when our output
    is at or above our limit but below the peer's."""
    omit_remote = remote_amount_sat < static.remote.dust_limit_sat
    conflict = dust_limit_conflict(static, local_amount_sat)
    if conflict is not None:
        raise DustLimitConflict(conflict, build_closing_tx(
            static, local_amount_sat, remote_amount_sat, local_script_pubkey,
            remote_script_pubkey, omit_remote_output=omit_remote))
    return build_closing_tx(static, local_amount_sat, remote_amount_sat, local_script_pubkey,
                            remote_script_pubkey, omit_remote_output=omit_remote)


def closing_tx_signed_by_peer(
    static: ChannelStatic,
    local_amount_sat: int,
    remote_amount_sat: int,
    local_script_pubkey: bytes,
    remote_script_pubkey: bytes,
    remote_signature: bytes,
) -> Tx:
    """The variant of the closing transaction that ``remote_signature`` signs: ours
    (``build_closing_tx``), or ours without the peer's output. Raises InvalidSignature
    when it signs neither (e.g. a peer whose dust limit dropped our output)."""
    variants = [
        build_closing_tx(static, local_amount_sat, remote_amount_sat, local_script_pubkey,
                         remote_script_pubkey)
    ]
    # Without the peer's output, ours may be dust too: then there is no such variant.
    with contextlib.suppress(TransactionError):
        variants.append(
            build_closing_tx(static, local_amount_sat, remote_amount_sat, local_script_pubkey,
                             remote_script_pubkey, omit_remote_output=True)
        )
    remote_funding_pubkey = static.remote.basepoints.funding_pubkey
    for tx in variants:
        if verify(remote_funding_pubkey, _sighash(static, tx), remote_signature):
            return tx
    conflict = dust_limit_conflict(static, local_amount_sat)
    raise InvalidSignature("closing signature does not verify for either closing variant"
                           + ("" if conflict is None else f": {conflict}"))


def _sighash(static: ChannelStatic, tx: Tx) -> bytes:
    return bip143_sighash(tx, 0, static.funding_script, static.funding_sat)


def sign_closing_tx(static: ChannelStatic, secrets: ChannelSecrets, tx: Tx) -> bytes:
    """Our 64-byte compact signature of the closing transaction."""
    return sign(secrets.funding_privkey, _sighash(static, tx))


def verify_closing_signature(static: ChannelStatic, tx: Tx, signature: bytes) -> None:
    """Check the peer's closing signature; raise InvalidSignature."""
    if not verify(static.remote.basepoints.funding_pubkey, _sighash(static, tx), signature):
        raise InvalidSignature("closing signature does not verify")


def finalize_closing_tx(
    static: ChannelStatic, tx: Tx, local_signature: bytes, remote_signature: bytes
) -> Tx:
    """The closing transaction with the 2-of-2 witness."""
    return tx.with_witnesses([funding_witness(static, local_signature, remote_signature)])
