"""Bitcoin transaction model and serialization (BIP141 segwit form).

Theory of operation: channel/ builds the same few transaction shapes again and
again (commitment, HTLC-success/timeout, closing, penalty, sweeps), and signs
them through BIP143 sighashes (see sighash.py). A small value model with its own
serializer is faster and easier to reason about than a general library: there is
no script interpretation here, only bytes.

- ``OutPoint.txid`` is in internal (little-endian, wire) order, the order hashes
  come out of SHA256d; ``txid_hex()`` gives the reversed display order that
  bitcoind and block explorers print.
- ``Tx.serialize()`` writes the segwit form (marker 0x00, flag 0x01, then the
  witnesses after the outputs) when any input has a witness, else the legacy form.
  The txid is always the hash of the legacy form, so it does not change when
  witnesses are added.
- ``Tx`` and ``TxIn`` are mutable only so that witnesses can be attached to a
  built transaction; code in channel/ copies (``with_witnesses``) rather than
  mutate a transaction another object holds.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I32 = struct.Struct("<i")


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def varint(n: int) -> bytes:
    """Bitcoin CompactSize encoding of ``n``."""
    if n < 0xFD:
        return bytes((n,))
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    if n <= 0xFFFFFFFF:
        return b"\xfe" + n.to_bytes(4, "little")
    return b"\xff" + n.to_bytes(8, "little")


def varbytes(data: bytes) -> bytes:
    """``data`` prefixed with its CompactSize length."""
    return varint(len(data)) + data


@dataclass(frozen=True, slots=True)
class OutPoint:
    """A reference to output ``index`` of transaction ``txid`` (internal byte order)."""

    txid: bytes
    index: int

    def txid_hex(self) -> str:
        return self.txid[::-1].hex()

    def serialize(self) -> bytes:
        return self.txid + _U32.pack(self.index)

    @classmethod
    def from_display(cls, txid_hex: str, index: int) -> OutPoint:
        """Build from a display-order txid as bitcoind prints it."""
        return cls(bytes.fromhex(txid_hex)[::-1], index)


@dataclass(slots=True)
class TxIn:
    outpoint: OutPoint
    sequence: int
    script_sig: bytes = b""
    witness: list[bytes] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TxOut:
    amount_sat: int
    script_pubkey: bytes

    def serialize(self) -> bytes:
        return _U64.pack(self.amount_sat) + varbytes(self.script_pubkey)


@dataclass(slots=True)
class Tx:
    version: int
    inputs: list[TxIn]
    outputs: list[TxOut]
    locktime: int

    # -- serialization -------------------------------------------------------

    def _body(self) -> tuple[bytes, bytes]:
        ins = b"".join(
            i.outpoint.serialize() + varbytes(i.script_sig) + _U32.pack(i.sequence)
            for i in self.inputs
        )
        outs = b"".join(o.serialize() for o in self.outputs)
        return (
            varint(len(self.inputs)) + ins,
            varint(len(self.outputs)) + outs,
        )

    def has_witness(self) -> bool:
        return any(i.witness for i in self.inputs)

    def serialize_without_witness(self) -> bytes:
        ins, outs = self._body()
        return _I32.pack(self.version) + ins + outs + _U32.pack(self.locktime)

    def serialize(self) -> bytes:
        if not self.has_witness():
            return self.serialize_without_witness()
        ins, outs = self._body()
        wits = b"".join(
            varint(len(i.witness)) + b"".join(varbytes(w) for w in i.witness) for i in self.inputs
        )
        return _I32.pack(self.version) + b"\x00\x01" + ins + outs + wits + _U32.pack(self.locktime)

    def txid(self) -> bytes:
        """SHA256d of the legacy serialization, internal byte order."""
        return sha256d(self.serialize_without_witness())

    def txid_hex(self) -> str:
        return self.txid()[::-1].hex()

    def weight(self) -> int:
        """BIP141 weight: 3 x stripped size + total size."""
        return 3 * len(self.serialize_without_witness()) + len(self.serialize())

    def vsize(self) -> int:
        return (self.weight() + 3) // 4

    def copy(self) -> Tx:
        """A deep-enough copy: new input objects and witness lists."""
        return Tx(
            self.version,
            [TxIn(i.outpoint, i.sequence, i.script_sig, list(i.witness)) for i in self.inputs],
            list(self.outputs),
            self.locktime,
        )

    def with_witnesses(self, witnesses: Sequence[Sequence[bytes]]) -> Tx:
        """A copy of this transaction with ``witnesses[i]`` on input ``i``."""
        if len(witnesses) != len(self.inputs):
            raise ValueError("one witness per input is needed")
        tx = self.copy()
        for txin, wit in zip(tx.inputs, witnesses, strict=True):
            txin.witness = list(wit)
        return tx

    # -- parsing ---------------------------------------------------------------

    @classmethod
    def parse(cls, raw: bytes) -> Tx:
        """Parse a legacy or segwit serialization; the whole of ``raw`` must be used."""
        r = _Reader(raw)
        version = r.i32()
        segwit = r.peek(2) == b"\x00\x01"
        if segwit:
            r.take(2)
        inputs = []
        for _ in range(r.varint()):
            txid = r.take(32)
            index = r.u32()
            script_sig = r.take(r.varint())
            inputs.append(TxIn(OutPoint(txid, index), r.u32(), script_sig))
        outputs = []
        for _ in range(r.varint()):
            amount = r.u64()
            outputs.append(TxOut(amount, r.take(r.varint())))
        if segwit:
            for txin in inputs:
                txin.witness = [r.take(r.varint()) for _ in range(r.varint())]
        locktime = r.u32()
        if r.pos != len(raw):
            raise ValueError("trailing bytes after transaction")
        return cls(version, inputs, outputs, locktime)


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("truncated transaction")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def peek(self, n: int) -> bytes:
        return self.data[self.pos : self.pos + n]

    def u32(self) -> int:
        return int(_U32.unpack(self.take(4))[0])

    def i32(self) -> int:
        return int(_I32.unpack(self.take(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self.take(8))[0])

    def varint(self) -> int:
        first = self.take(1)[0]
        if first < 0xFD:
            return first
        size = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
        return int.from_bytes(self.take(size), "little")
