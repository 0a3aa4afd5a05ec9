"""Block building blocks: header bytes, merkle roots, the coinbase, the PoW grind.

Hashes are held in display order (the byte-reversed double-SHA256 that RPC
prints) everywhere in the node, as btclib's `OutPoint.tx_id` and
`BlockHeader.hash` hold them; only the wire serialization reverses them.

Blocks are btclib `Block`/`Tx` objects; the header is also handled as its raw
80 bytes because grinding nonces and hashing the index are hot paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from btclib.block.block import Block
from btclib.block.block_header import BlockHeader
from btclib.hashes import hash256
from btclib.script.witness import Witness
from btclib.tx.out_point import OutPoint
from btclib.tx.tx import Tx
from btclib.tx.tx_in import TxIn
from btclib.tx.tx_out import TxOut

from regtest.node.params import POW_TARGET

WITNESS_COMMITMENT_PREFIX = bytes.fromhex("6a24aa21a9ed")
ZERO_HASH = b"\x00" * 32


@dataclass(frozen=True, slots=True)
class Header:
    """The six header fields, hashes in display order."""

    version: int
    prev: bytes
    merkle_root: bytes
    time: int
    bits: bytes  # as displayed, e.g. 207fffff
    nonce: int

    def serialize(self) -> bytes:
        return b"".join(
            [
                self.version.to_bytes(4, "little", signed=True),
                self.prev[::-1],
                self.merkle_root[::-1],
                self.time.to_bytes(4, "little"),
                self.bits[::-1],
                self.nonce.to_bytes(4, "little"),
            ]
        )

    @property
    def hash(self) -> bytes:
        return hash256(self.serialize())[::-1]

    @classmethod
    def parse(cls, data: bytes) -> Header:
        return cls(
            int.from_bytes(data[0:4], "little", signed=True),
            data[4:36][::-1],
            data[36:68][::-1],
            int.from_bytes(data[68:72], "little"),
            data[72:76][::-1],
            int.from_bytes(data[76:80], "little"),
        )

    def to_btclib(self) -> BlockHeader:
        return BlockHeader(
            self.version,
            self.prev,
            self.merkle_root,
            datetime.fromtimestamp(self.time, UTC),
            self.bits,
            self.nonce,
            check_validity=False,
        )


def header_of(block: Block) -> Header:
    h = block.header
    return Header(
        h.version, h.previous_block_hash, h.merkle_root, int(h.time.timestamp()), h.bits, h.nonce
    )


def target_from_bits(bits: bytes) -> int:
    exponent = bits[0]
    mantissa = int.from_bytes(bits[1:], "big")
    return mantissa << (8 * (exponent - 3))


def merkle_root(hashes: Sequence[bytes]) -> tuple[bytes, bool]:
    """Merkle root of display-order hashes, and Core's `mutated` flag (CVE-2012-2459)."""
    level = [h[::-1] for h in hashes]
    mutated = False
    while len(level) > 1:
        for i in range(0, len(level) - 1, 2):
            if level[i] == level[i + 1]:
                mutated = True
        if len(level) % 2:
            level.append(level[-1])
        level = [hash256(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return (level[0][::-1] if level else ZERO_HASH), mutated


def witness_commitment(wtxids: Sequence[bytes], nonce: bytes = ZERO_HASH) -> bytes:
    """BIP141 commitment: hash256(witness merkle root || nonce), coinbase wtxid = 0."""
    root, _ = merkle_root([ZERO_HASH, *wtxids[1:]])
    return hash256(root[::-1] + nonce)


def bip34_script_sig(height: int) -> bytes:
    """`CScript() << height << OP_0`, exactly as Core's miner writes it."""
    if height == 0:
        push = b"\x00"
    elif 1 <= height <= 16:
        push = bytes([0x50 + height])
    else:
        num = height.to_bytes((height.bit_length() + 8) // 8, "little")
        push = bytes([len(num)]) + num
    return push + b"\x00"


def build_coinbase(height: int, script_pub_key: bytes, value: int) -> Tx:
    """Core's coinbase (v27-29): version 2, height push + OP_0, value to the script."""
    tx_in = TxIn(
        OutPoint(check_validity=False),
        bip34_script_sig(height),
        0xFFFFFFFF,
        Witness([ZERO_HASH], check_validity=False),
        check_validity=False,
    )
    return Tx(
        2, 0, [tx_in], [TxOut(value, script_pub_key, check_validity=False)], check_validity=False
    )


def add_commitment(coinbase: Tx, wtxids: Sequence[bytes]) -> None:
    """Append the witness commitment output (always, as Core's miner does)."""
    commitment = witness_commitment(wtxids)
    coinbase.vout.append(TxOut(0, WITNESS_COMMITMENT_PREFIX + commitment, check_validity=False))


def find_commitment(coinbase: Tx) -> bytes | None:
    """The last output matching the BIP141 commitment pattern, as Core looks for it."""
    found = None
    for tx_out in coinbase.vout:
        script = tx_out.script_pub_key.script
        if len(script) >= 38 and script[:6] == WITNESS_COMMITMENT_PREFIX:
            found = script[6:38]
    return found


def grind(header: Header) -> Header:
    """Search nonces from 0 for one meeting the regtest target (two tries expected)."""
    prefix = header.serialize()[:76]
    nonce = 0
    while True:
        digest = hash256(prefix + nonce.to_bytes(4, "little"))
        if int.from_bytes(digest, "little") <= POW_TARGET:
            return Header(
                header.version, header.prev, header.merkle_root, header.time, header.bits, nonce
            )
        nonce += 1


def make_block(header: Header, transactions: list[Tx]) -> Block:
    return Block(header.to_btclib(), transactions, check_validity=False)


def serialize_block(block: Block) -> bytes:
    return block.serialize(include_witness=True, check_validity=False)


def parse_block(data: bytes) -> Block:
    return Block.parse(data, check_validity=False)
