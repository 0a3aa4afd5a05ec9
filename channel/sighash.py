"""BIP143 signature hashes (segwit v0), with per-transaction precomputation.

Theory of operation. A BIP143 digest is SHA256d of::

    version | hashPrevouts | hashSequence | outpoint | scriptCode | amount |
    nSequence | hashOutputs | locktime | sighash type

Only ``outpoint``, ``scriptCode``, ``amount`` and ``nSequence`` depend on the input
being signed; the three ``hash*`` fields depend on the whole transaction. They are
computed once in ``Bip143Precomputed`` and reused for every input (a penalty
transaction may spend hundreds of HTLC outputs). ``bip143_sighash`` supports every
sighash type; channel transactions use SIGHASH_ALL.

The HTLC second-stage transactions of a commitment all have one input and one
output; their shared work (the constant hashSequence of sequence 0, the shared
output script) is exploited in htlc.py, and tests check that path against this one,
and this one against btclib.
"""

from __future__ import annotations

import struct

from channel.tx import Tx, sha256d, varbytes, varint

SIGHASH_ALL = 0x01
SIGHASH_NONE = 0x02
SIGHASH_SINGLE = 0x03
SIGHASH_ANYONECANPAY = 0x80

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I32 = struct.Struct("<i")
_ZERO32 = bytes(32)


class Bip143Precomputed:
    """hashPrevouts, hashSequence and hashOutputs of one transaction."""

    __slots__ = ("hash_outputs", "hash_prevouts", "hash_sequence")

    def __init__(self, tx: Tx) -> None:
        self.hash_prevouts = sha256d(b"".join(i.outpoint.serialize() for i in tx.inputs))
        self.hash_sequence = sha256d(b"".join(_U32.pack(i.sequence) for i in tx.inputs))
        self.hash_outputs = sha256d(b"".join(o.serialize() for o in tx.outputs))


def bip143_sighash(
    tx: Tx,
    input_index: int,
    script_code: bytes,
    amount_sat: int,
    sighash_type: int = SIGHASH_ALL,
    precomputed: Bip143Precomputed | None = None,
) -> bytes:
    """BIP143 digest for input ``input_index`` spending ``amount_sat`` under
    ``script_code`` (the witness script for P2WSH; without its length prefix)."""
    base = sighash_type & 0x1F
    anyone_can_pay = bool(sighash_type & SIGHASH_ANYONECANPAY)
    pre = precomputed if precomputed is not None else Bip143Precomputed(tx)
    hash_prevouts = _ZERO32 if anyone_can_pay else pre.hash_prevouts
    if anyone_can_pay or base in (SIGHASH_SINGLE, SIGHASH_NONE):
        hash_sequence = _ZERO32
    else:
        hash_sequence = pre.hash_sequence
    if base not in (SIGHASH_SINGLE, SIGHASH_NONE):
        hash_outputs = pre.hash_outputs
    elif base == SIGHASH_SINGLE and input_index < len(tx.outputs):
        hash_outputs = sha256d(tx.outputs[input_index].serialize())
    else:
        hash_outputs = _ZERO32
    txin = tx.inputs[input_index]
    preimage = b"".join(
        (
            _I32.pack(tx.version),
            hash_prevouts,
            hash_sequence,
            txin.outpoint.serialize(),
            varbytes(script_code),
            _U64.pack(amount_sat),
            _U32.pack(txin.sequence),
            hash_outputs,
            _U32.pack(tx.locktime),
            _U32.pack(sighash_type),
        )
    )
    return sha256d(preimage)


def legacy_sighash(tx: Tx, input_index: int, script_code: bytes) -> bytes:
    """Pre-segwit SIGHASH_ALL digest (for wallet inputs such as BOLT #3 Appendix B's
    P2PKH funding input; channel outputs are all segwit)."""
    parts = [_I32.pack(tx.version), varint(len(tx.inputs))]
    for i, txin in enumerate(tx.inputs):
        parts.append(txin.outpoint.serialize())
        parts.append(varbytes(script_code) if i == input_index else b"\x00")
        parts.append(_U32.pack(txin.sequence))
    parts.append(varint(len(tx.outputs)))
    parts.extend(o.serialize() for o in tx.outputs)
    parts.append(_U32.pack(tx.locktime))
    parts.append(_U32.pack(SIGHASH_ALL))
    return sha256d(b"".join(parts))
