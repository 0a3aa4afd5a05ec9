"""tx.py at its boundaries: CompactSize at each width change, both ways; vsize
rounding; a serialization with trailing bytes."""

from __future__ import annotations

import pytest

from channel.tx import OutPoint, Tx, TxIn, TxOut, _Reader, varint

CASES = [
    (0, "00"),
    (0xFC, "fc"),
    (0xFD, "fdfd00"),
    (0xFFFF, "fdffff"),
    (0x10000, "fe00000100"),
    (0xFFFFFFFF, "feffffffff"),
    (0x100000000, "ff0000000001000000"),
]


@pytest.mark.parametrize(("n", "encoded"), CASES)
def test_compact_size_both_ways(n: int, encoded: str) -> None:
    assert varint(n).hex() == encoded
    reader = _Reader(bytes.fromhex(encoded))
    assert reader.varint() == n
    assert reader.pos == len(encoded) // 2


def tx_with(n_outputs: int, witness_size: int = 71) -> Tx:
    witness = [b"\x02" * witness_size]
    return Tx(2, [TxIn(OutPoint(b"\x01" * 32, 0), 0xFFFFFFFF, b"", witness)],
              [TxOut(1_000, b"\x00\x14" + b"\x03" * 20)] * n_outputs, 0)


def test_vsize_rounds_weight_up() -> None:
    weights = set()
    for witness_size in range(70, 74):  # one witness byte is one weight unit
        tx = tx_with(2, witness_size)
        weights.add(tx.weight() % 4)
        assert tx.vsize() == -(-tx.weight() // 4)
    assert weights == {0, 1, 2, 3}


def test_trailing_bytes_are_refused() -> None:
    raw = tx_with(2).serialize()
    assert Tx.parse(raw).serialize() == raw
    with pytest.raises(ValueError, match="trailing"):
        Tx.parse(raw + b"\x00")
    with pytest.raises(ValueError, match="truncated"):
        Tx.parse(raw[:-1])


def test_value_types_are_frozen_and_secrets_are_32_bytes() -> None:
    import dataclasses

    from channel.signing import scalar_add, sign

    with pytest.raises(dataclasses.FrozenInstanceError):
        TxOut(1, b"").amount_sat = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        OutPoint(b"\x00" * 32, 0).index = 1  # type: ignore[misc]
    assert len(sign(b"\x01" * 32, b"\x02" * 32)) == 64
    for wrong in (b"\x01" * 31, b"\x01" * 33):
        with pytest.raises(ValueError, match="32 bytes"):
            sign(wrong, b"\x02" * 32)
        with pytest.raises(ValueError, match="32 bytes"):
            sign(b"\x01" * 32, wrong)
        with pytest.raises(ValueError, match="32 bytes"):
            scalar_add(wrong, b"\x02" * 32)
