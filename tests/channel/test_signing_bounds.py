"""Strict DER (BIP66, as Bitcoin Core's IsValidSignatureEncoding) at its boundaries:
the shortest (8 bytes) and longest (72 bytes) encodings, one byte beyond each, and a
length byte that points past the end."""

from __future__ import annotations

import pytest

from channel.signing import compact_signature, der_signature

SHORTEST = bytes.fromhex("3006020101020101")  # r = 1, s = 1
HIGH = b"\x80" + b"\x11" * 31  # top bit set: DER needs a leading zero byte
LONGEST = b"\x30\x46" + b"\x02\x21\x00" + HIGH + b"\x02\x21\x00" + HIGH


def test_shortest_and_longest_strict_der() -> None:
    assert compact_signature(SHORTEST) == (1).to_bytes(32, "big") * 2
    assert len(LONGEST) == 72
    assert compact_signature(LONGEST) == HIGH + HIGH
    assert der_signature(HIGH + HIGH) == LONGEST
    assert der_signature((1).to_bytes(32, "big") * 2) == SHORTEST


@pytest.mark.parametrize(
    "der",
    [
        SHORTEST[:-1],  # 7 bytes
        b"\x30\x47" + LONGEST[2:] + b"\x00",  # 73 bytes (trailing data)
        bytes.fromhex("3006020301010102"),  # r's length runs into the last byte
        bytes.fromhex("3006020401010101"),  # r's length runs past the end
        bytes.fromhex("3006020101020201"),  # s's length runs past the end
        bytes.fromhex("3106020101020101"),  # not a SEQUENCE
        bytes.fromhex("3007020101020101"),  # wrong total length
        bytes.fromhex("3006030101020101"),  # r not an INTEGER
        bytes.fromhex("3006020101030101"),  # s not an INTEGER
        bytes.fromhex("3006020181020101"),  # r negative
        bytes.fromhex("300702020001020101"),  # r not minimal
        b"\x30\x27\x02\x22\x00\x80" + b"\x11" * 32 + b"\x02\x01\x01",  # r of 34 bytes
        b"\x30\x26\x02\x21\x01" + b"\x11" * 32 + b"\x02\x01\x01",  # 33 bytes, no zero pad
    ],
)
def test_not_strict_der_is_refused(der: bytes) -> None:
    with pytest.raises(ValueError, match="strict DER"):
        compact_signature(der)
