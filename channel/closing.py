"""The mutual close transaction (BOLT #3 "Closing Transaction", BOLT #2
"closing_signed").

Theory of operation. Once no HTLC is pending, both parties sign one transaction
spending the funding output straight to the scripts they gave in ``shutdown``:
version 2, locktime 0, input sequence 0xFFFFFFFF, outputs in BIP69 order. The
caller has already taken the negotiated fee from the funder's amount.

Dust (BOLT #3 "Closing Transaction", Requirements): each node offering a signature
"MUST remove any output below its own dust_limit_satoshis" and "MAY eliminate its
own output". So the transaction we sign drops outputs below OUR dust limit only,
and a peer's signature is good for one of two variants: that same transaction, or
that transaction without the peer's own output (it was dust to the peer, or the
peer gave it up). BOLT #2 (closing_signed): a signature valid for neither variant
fails the connection. The larger of the two limits is never applied: a peer with a
high dust limit could otherwise have our output dropped into the fee (issue 11). If
the peer's limit drops our output, its signature matches no variant we accept, and
the close fails (BOLT #3's "irreparable differences") rather than losing our output;
the latest commitment still pays it.
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
    raise InvalidSignature("closing signature does not verify for either closing variant")


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
