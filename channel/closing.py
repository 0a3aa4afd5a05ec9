"""The mutual close transaction (BOLT #3 "Closing Transaction", BOLT #2
"closing_signed").

Theory of operation. Once no HTLC is pending, both parties sign one transaction
spending the funding output straight to the scripts they gave in ``shutdown``:
version 2, locktime 0, input sequence 0xFFFFFFFF, outputs in BIP69 order. The
caller has already taken the negotiated fee from the funder's amount. An output
under the dust limit is omitted (its value goes to the fee). Both sides must
build the very same bytes, so the dust limit applied is the larger of the two
parties' limits unless the caller names one.
"""

from __future__ import annotations

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
    dust_limit_sat: int | None = None,
) -> Tx:
    """Unsigned closing transaction (amounts after the fee)."""
    if local_amount_sat < 0 or remote_amount_sat < 0:
        raise TransactionError("negative closing amount")
    if local_amount_sat + remote_amount_sat > static.funding_sat:
        raise TransactionError("closing amounts exceed the funding amount")
    dust = (
        max(static.local.dust_limit_sat, static.remote.dust_limit_sat)
        if dust_limit_sat is None
        else dust_limit_sat
    )
    outputs = [
        TxOut(amount, spk)
        for amount, spk in (
            (local_amount_sat, local_script_pubkey),
            (remote_amount_sat, remote_script_pubkey),
        )
        if amount >= dust
    ]
    if not outputs:
        raise TransactionError("both closing outputs are dust")
    outputs.sort(key=lambda o: (o.amount_sat, o.script_pubkey))
    return Tx(2, [TxIn(static.funding_outpoint, 0xFFFFFFFF)], outputs, 0)


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
