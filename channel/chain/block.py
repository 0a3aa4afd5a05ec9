"""Bitcoin block parsing: an 80-byte header, then the transactions.

Theory of operation. The follower reads blocks as raw bytes (getblock verbosity
0) so that what listeners see is exactly what was mined, parsed with our own
`channel.tx.Tx`. `Tx.parse` wants one whole transaction, so `_tx_length` walks
the serialization (counts and lengths only, no copies) to find where each
transaction ends. A block is checked before it is believed: its header must hash
to the hash it was asked for, the transaction count must be used exactly, and
the merkle root over the txids must match the header. A node that answers with
other bytes (a bug, a corrupt disk, a man in the middle of a plain-HTTP RPC) gets
a `BlockParseError` rather than a wrong chain.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from channel.chain.rpc import ChainError
from channel.tx import Tx, sha256d

_HEADER = struct.Struct("<i32s32sIII")
HEADER_SIZE = 80


class BlockParseError(ChainError):
    """Bytes that are not the block (or header) they claim to be."""


@dataclass(frozen=True, slots=True)
class BlockHeader:
    version: int
    prev_hash: str  # display order, as bitcoind prints it
    merkle_root: bytes  # internal order
    time: int
    bits: int
    nonce: int
    hash: str  # display order

    @classmethod
    def parse(cls, raw: bytes) -> BlockHeader:
        if len(raw) != HEADER_SIZE:
            raise BlockParseError(f"a block header is 80 bytes, not {len(raw)}")
        version, prev, merkle, time, bits, nonce = _HEADER.unpack(raw)
        return cls(version, prev[::-1].hex(), merkle, time, bits, nonce, sha256d(raw)[::-1].hex())


@dataclass(frozen=True, slots=True)
class Block:
    header: BlockHeader
    txs: tuple[Tx, ...]

    @property
    def hash(self) -> str:
        return self.header.hash

    @property
    def prev_hash(self) -> str:
        return self.header.prev_hash

    @classmethod
    def parse(cls, raw: bytes, *, expected_hash: str | None = None) -> Block:
        header = BlockHeader.parse(raw[:HEADER_SIZE])
        if expected_hash is not None and header.hash != expected_hash:
            raise BlockParseError(f"asked for block {expected_hash}, got {header.hash}")
        pos = HEADER_SIZE
        count, pos = _read_varint(raw, pos)
        if count == 0:
            raise BlockParseError("a block has at least its coinbase")
        txs = []
        txids = []
        for _ in range(count):
            end = pos + _tx_length(raw, pos)
            try:
                tx = Tx.parse(raw[pos:end])
            except ValueError as exc:
                raise BlockParseError(f"block {header.hash}: {exc}") from exc
            txs.append(tx)
            txids.append(tx.txid())
            pos = end
        if pos != len(raw):
            raise BlockParseError(f"block {header.hash}: trailing bytes")
        if merkle_root(txids) != header.merkle_root:
            raise BlockParseError(f"block {header.hash}: merkle root does not match")
        return cls(header, tuple(txs))


def merkle_root(txids: list[bytes]) -> bytes:
    """Bitcoin's merkle root over internal-order txids (odd levels repeat the last)."""
    level = list(txids)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def _read_varint(raw: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(raw):
        raise BlockParseError("truncated block")
    first = raw[pos]
    if first < 0xFD:
        return first, pos + 1
    size = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
    if pos + 1 + size > len(raw):
        raise BlockParseError("truncated block")
    return int.from_bytes(raw[pos + 1 : pos + 1 + size], "little"), pos + 1 + size


def _skip(raw: bytes, pos: int, n: int) -> int:
    if pos + n > len(raw):
        raise BlockParseError("truncated block")
    return pos + n


def _tx_length(raw: bytes, start: int) -> int:
    """Length of the transaction serialized at `start` (legacy or BIP141 form)."""
    pos = _skip(raw, start, 4)  # version
    segwit = raw[pos : pos + 2] == b"\x00\x01"
    if segwit:
        pos += 2
    n_in, pos = _read_varint(raw, pos)
    for _ in range(n_in):
        pos = _skip(raw, pos, 36)
        script_len, pos = _read_varint(raw, pos)
        pos = _skip(raw, pos, script_len + 4)
    n_out, pos = _read_varint(raw, pos)
    for _ in range(n_out):
        pos = _skip(raw, pos, 8)
        script_len, pos = _read_varint(raw, pos)
        pos = _skip(raw, pos, script_len)
    if segwit:
        for _ in range(n_in):
            n_items, pos = _read_varint(raw, pos)
            for _ in range(n_items):
                item_len, pos = _read_varint(raw, pos)
                pos = _skip(raw, pos, item_len)
    return _skip(raw, pos, 4) - start
