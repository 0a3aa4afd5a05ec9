"""HTLC second-stage transactions and the fee and dust rules around them
(BOLT #3 "HTLC-timeout and HTLC-success Transactions", "Fees", "Trimmed Outputs",
"Appendix A: Expected Weights"; legacy, non-anchor format).

Theory of operation. An HTLC output of a commitment pays the commitment's owner
only through a second-stage transaction that both parties pre-sign: HTLC-timeout
for an HTLC the owner offered (valid from ``cltv_expiry``, its locktime), and
HTLC-success for one the owner received (locktime 0, needs the preimage). Either
pays ``htlc amount - fee`` into the same revocable, CSV-delayed script as
to_local, so the owner is still punishable if the commitment was revoked. Both
have version 2, one input with sequence 0 and one output.

Their fees are fixed by weight (663 for timeout, 703 for success, times
``feerate_per_kw / 1000``, rounded down), and an HTLC whose amount would not cover
``dust_limit + that fee`` is trimmed from the commitment (its amount goes to fees).

Fast path. For signing and verifying commitment_signed, ``HtlcSighasher`` computes
the BIP143 digest of every HTLC transaction of one commitment without building a
``Tx``: the constant parts (version, hashSequence of a single 0 sequence, the
shared output script, sighash type) are assembled once per commitment, and each
HTLC costs three SHA256d of short strings. Tests check it against sighash.py.
"""

from __future__ import annotations

import struct
from hashlib import sha256 as _sha256

from channel import scripts
from channel.errors import TransactionError
from channel.sighash import SIGHASH_ALL
from channel.signing import witness_signature
from channel.tx import OutPoint, Tx, TxIn, TxOut, sha256d, varbytes

#: BOLT #3 Appendix A weights (non-anchor). The commitment weighs 724 plus 172
#: per untrimmed HTLC output; the HTLC transactions have fixed expected weights.
COMMITMENT_BASE_WEIGHT = 724
COMMITMENT_HTLC_OUTPUT_WEIGHT = 172
HTLC_TIMEOUT_WEIGHT = 663
HTLC_SUCCESS_WEIGHT = 703

#: The version of every commitment and HTLC transaction (needed for BIP68/CSV).
CHANNEL_TX_VERSION = 2

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def weight_fee_sat(weight: int, feerate_per_kw: int) -> int:
    """BOLT #3 fee: feerate_per_kw * weight / 1000, rounded down."""
    return feerate_per_kw * weight // 1000


def htlc_timeout_fee_sat(feerate_per_kw: int) -> int:
    return weight_fee_sat(HTLC_TIMEOUT_WEIGHT, feerate_per_kw)


def htlc_success_fee_sat(feerate_per_kw: int) -> int:
    return weight_fee_sat(HTLC_SUCCESS_WEIGHT, feerate_per_kw)


def commitment_weight(num_untrimmed_htlcs: int) -> int:
    return COMMITMENT_BASE_WEIGHT + COMMITMENT_HTLC_OUTPUT_WEIGHT * num_untrimmed_htlcs


def htlc_is_trimmed(
    amount_msat: int, offered: bool, dust_limit_sat: int, feerate_per_kw: int
) -> bool:
    """True if the HTLC is trimmed from the owner's commitment.

    ``offered`` is from the commitment owner's point of view: an offered HTLC
    would be claimed with an HTLC-timeout, a received one with an HTLC-success.
    """
    fee = htlc_timeout_fee_sat(feerate_per_kw) if offered else htlc_success_fee_sat(feerate_per_kw)
    return amount_msat // 1000 < dust_limit_sat + fee


def build_htlc_tx(
    commitment_txid: bytes,
    output_index: int,
    htlc_amount_sat: int,
    offered: bool,
    cltv_expiry: int,
    second_stage_script_pubkey: bytes,
    feerate_per_kw: int,
) -> Tx:
    """Unsigned HTLC-timeout (``offered``) or HTLC-success transaction.

    ``second_stage_script_pubkey`` is P2WSH of the commitment's to_local script
    (revocationpubkey, owner's delayed key, to_self_delay).
    """
    fee = htlc_timeout_fee_sat(feerate_per_kw) if offered else htlc_success_fee_sat(feerate_per_kw)
    if htlc_amount_sat <= fee:
        raise TransactionError("HTLC amount does not cover its second-stage fee (trim it)")
    return Tx(
        version=CHANNEL_TX_VERSION,
        inputs=[TxIn(OutPoint(commitment_txid, output_index), sequence=0)],
        outputs=[TxOut(htlc_amount_sat - fee, second_stage_script_pubkey)],
        locktime=cltv_expiry if offered else 0,
    )


def htlc_tx_witness(
    remote_signature: bytes,
    local_signature: bytes,
    witness_script: bytes,
    payment_preimage: bytes | None,
) -> list[bytes]:
    """Witness of an HTLC-success (with preimage) or HTLC-timeout (without):
    ``0 <remotehtlcsig> <localhtlcsig> <preimage or empty> <witness_script>``.

    The leading empty item feeds OP_CHECKMULTISIG's extra pop; the signatures
    follow the key order of ``2 <remote> <local> 2`` inside the script.
    """
    return [
        b"",
        witness_signature(remote_signature),
        witness_signature(local_signature),
        payment_preimage if payment_preimage is not None else b"",
        witness_script,
    ]


class HtlcSighasher:
    """BIP143 digests of all HTLC transactions spending one commitment."""

    __slots__ = ("_out_script", "_prefix", "_success_fee", "_timeout_fee", "_txid")

    _HASH_SEQUENCE_ZERO = sha256d(b"\x00\x00\x00\x00")
    _SIGHASH_TYPE = _U32.pack(SIGHASH_ALL)

    def __init__(
        self, commitment_txid: bytes, second_stage_script_pubkey: bytes, feerate_per_kw: int
    ) -> None:
        self._txid = commitment_txid
        self._out_script = varbytes(second_stage_script_pubkey)
        self._timeout_fee = htlc_timeout_fee_sat(feerate_per_kw)
        self._success_fee = htlc_success_fee_sat(feerate_per_kw)
        self._prefix = _U32.pack(CHANNEL_TX_VERSION)

    def sighash(
        self,
        output_index: int,
        witness_script: bytes,
        htlc_amount_sat: int,
        offered: bool,
        cltv_expiry: int,
    ) -> bytes:
        if offered:
            fee = self._timeout_fee
            locktime = cltv_expiry
        else:
            fee = self._success_fee
            locktime = 0
        outpoint = self._txid + _U32.pack(output_index)
        return _sha256(
            _sha256(
                b"".join(
                    (
                        self._prefix,
                        _sha256(_sha256(outpoint).digest()).digest(),  # hashPrevouts
                        self._HASH_SEQUENCE_ZERO,
                        outpoint,
                        varbytes(witness_script),
                        _U64.pack(htlc_amount_sat),
                        b"\x00\x00\x00\x00",  # nSequence
                        _sha256(  # hashOutputs
                            _sha256(_U64.pack(htlc_amount_sat - fee) + self._out_script).digest()
                        ).digest(),
                        _U32.pack(locktime),
                        self._SIGHASH_TYPE,
                    )
                )
            ).digest()
        ).digest()


def second_stage_script_pubkey(
    revocation_pubkey: bytes, to_self_delay: int, local_delayed_pubkey: bytes
) -> bytes:
    return scripts.p2wsh(
        scripts.to_local_script(revocation_pubkey, to_self_delay, local_delayed_pubkey)
    )
