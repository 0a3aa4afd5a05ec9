"""Single-signature spends of channel outputs: the shared mechanics of penalty.py
and sweep.py (BOLT #5).

Theory of operation. Every BOLT #5 claim spends one or more outputs, each
unlocked by one signature plus a few fixed witness items (``1`` for the revocation
branch of to_local, the revocation pubkey for an HTLC, a preimage, an empty item),
into one output we choose. ``SpendableOutput`` describes one such input; the fee
comes from the transaction's weight with the largest DER signature (72 bytes plus
the sighash byte), rounded up to a whole satoshi, so the real fee rate is never
below the one asked for. All
inputs are signed with SIGHASH_ALL over one ``Bip143Precomputed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from channel import scripts
from channel.commitment import CommitmentHtlc
from channel.errors import TransactionError
from channel.sighash import Bip143Precomputed, bip143_sighash
from channel.signing import sign, witness_signature
from channel.tx import OutPoint, Tx, TxIn, TxOut

#: Largest strict-DER ECDSA signature plus the sighash-type byte.
MAX_WITNESS_SIGNATURE_SIZE = 73

#: Below this a claim is not worth relaying (Bitcoin Core's dust threshold for a
#: P2PKH output; P2WSH/P2WPKH thresholds are lower, so this is the safe bound).
CLAIM_DUST_LIMIT_SAT = 546

#: nSequence that keeps nLockTime enforced without signalling RBF opt-out issues.
SEQUENCE_LOCKTIME_ENABLED = 0xFFFFFFFE
SEQUENCE_FINAL = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class SpendableOutput:
    """One input of a claim: where it is, how much, and how to unlock it.

    ``witness_suffix`` follows the signature in the witness (for P2WSH it ends with
    the witness script). ``script_code`` is what BIP143 signs (the witness script
    for P2WSH, the P2PKH-style code for P2WPKH). ``signing_key`` is a 32-byte secret.
    """

    outpoint: OutPoint
    amount_sat: int
    script_code: bytes
    signing_key: bytes
    witness_suffix: tuple[bytes, ...]
    sequence: int = SEQUENCE_FINAL
    description: str = ""


def build_spend_tx(
    outputs: Sequence[SpendableOutput],
    destination_script_pubkey: bytes,
    feerate_per_kw: int,
    locktime: int = 0,
    dust_limit_sat: int = CLAIM_DUST_LIMIT_SAT,
) -> Tx:
    """Sign a version-2 transaction spending ``outputs`` to one destination."""
    if not outputs:
        raise TransactionError("nothing to spend")
    if len({o.outpoint for o in outputs}) != len(outputs):
        # Bitcoin refuses it anyway (duplicate inputs); say so here, with the cause.
        raise TransactionError("one output is spent twice in one claim")
    total_sat = sum(o.amount_sat for o in outputs)
    tx = Tx(
        version=2,
        inputs=[TxIn(o.outpoint, o.sequence) for o in outputs],
        outputs=[TxOut(total_sat, destination_script_pubkey)],
        locktime=locktime,
    )
    for txin, o in zip(tx.inputs, outputs, strict=True):
        txin.witness = [b"\x00" * MAX_WITNESS_SIGNATURE_SIZE, *o.witness_suffix]
    fee_sat = -(-feerate_per_kw * tx.weight() // 1000)  # rounded up: never below the rate
    amount_sat = total_sat - fee_sat
    if amount_sat < dust_limit_sat:
        raise TransactionError(
            f"claim of {total_sat} sat leaves {amount_sat} sat after a {fee_sat} sat fee"
        )
    tx.outputs = [TxOut(amount_sat, destination_script_pubkey)]
    precomputed = Bip143Precomputed(tx)
    for i, (txin, o) in enumerate(zip(tx.inputs, outputs, strict=True)):
        digest = bip143_sighash(tx, i, o.script_code, o.amount_sat, precomputed=precomputed)
        txin.witness = [witness_signature(sign(o.signing_key, digest)), *o.witness_suffix]
    return tx


def checked_htlc_output(
    tx: Tx, output_index: int, witness_script: bytes, htlc: CommitmentHtlc,
    *, txid: bytes | None = None,
) -> tuple[OutPoint, int]:
    """The outpoint and amount of ``tx``'s output ``output_index``, after checking that
    it is this HTLC's: its script pays ``witness_script`` and its amount is the HTLC's
    (BOLT #3: amount_msat rounded down to the satoshi). The amount is what tells two
    HTLCs of one script apart when their indexes are mixed up; two of one script
    and one amount are interchangeable outputs, kept apart by their distinct indexes.
    ``txid`` is ``tx.txid()`` when the caller has it: hashing a commitment with a
    thousand outputs once per HTLC made a penalty quadratic."""
    if not 0 <= output_index < len(tx.outputs):
        raise TransactionError(
            f"transaction {tx.txid_hex()} has no output {output_index} (htlc {htlc.htlc_id})"
        )
    out = tx.outputs[output_index]
    if out.script_pubkey != scripts.p2wsh(witness_script):
        raise TransactionError(
            f"output {output_index} of {tx.txid_hex()} is not htlc {htlc.htlc_id}'s script"
        )
    if out.amount_sat != htlc.amount_msat // 1000:
        raise TransactionError(
            f"output {output_index} of {tx.txid_hex()} pays {out.amount_sat} sat, "
            f"htlc {htlc.htlc_id} is {htlc.amount_msat} msat"
        )
    return OutPoint(tx.txid() if txid is None else txid, output_index), out.amount_sat
