"""scripts.py at its boundaries: minimal pushes of script numbers (BIP62 MINIMALDATA;
to_self_delay and cltv_expiry go through them) and the direct-push limit."""

from __future__ import annotations

import pytest

from channel import scripts


@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        (0, b"\x00"),  # OP_0
        (1, b"\x51"),  # OP_1
        (5, b"\x55"),
        (16, b"\x60"),  # OP_16
        (17, b"\x01\x11"),
        (127, b"\x01\x7f"),
        (128, b"\x02\x80\x00"),  # top bit set: a zero byte keeps it positive
        (144, b"\x02\x90\x00"),
        (255, b"\x02\xff\x00"),
        (256, b"\x02\x00\x01"),
        (500_000, b"\x03\x20\xa1\x07"),
    ],
)
def test_push_int_is_minimal(n: int, encoded: bytes) -> None:
    assert scripts.push_int(n) == encoded


def test_push_int_refuses_negative_numbers() -> None:
    with pytest.raises(ValueError, match="negative"):
        scripts.push_int(-1)


def test_direct_push_limit_is_75_bytes() -> None:
    assert scripts.push(b"\x07" * 75) == b"\x4b" + b"\x07" * 75
    assert scripts.push(b"") == b"\x00"
    with pytest.raises(ValueError, match="too long"):
        scripts.push(b"\x07" * 76)


def test_small_delays_are_encoded_in_to_local() -> None:
    key = bytes.fromhex("02" + "33" * 32)
    for delay in (1, 5, 16, 17):
        script = scripts.to_local_script(key, delay, key)
        assert scripts.push_int(delay) + bytes((scripts.OP_CHECKSEQUENCEVERIFY,)) in script
