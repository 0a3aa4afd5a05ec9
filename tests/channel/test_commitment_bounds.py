"""commitment.py at its boundaries: the 48-bit commitment number, value types that
stay immutable (issue 11, "Tests that notice when a check is lost")."""

from __future__ import annotations

import dataclasses

import pytest

from channel import scripts
from channel.commitment import (
    MAX_COMMITMENT_NUMBER,
    CommitmentHtlc,
    Side,
    build_commitment,
    commitment_number_from_tx,
    obscured_commitment_number,
)
from channel.errors import TransactionError
from channel.keys import ChannelSecrets
from channel.signing import is_compressed_pubkey_encoding
from tests.channel.test_channel_units import LOCAL, STATIC


def test_commitment_number_is_48_bits_and_round_trips() -> None:
    assert MAX_COMMITMENT_NUMBER == 2**48 - 1
    for number in (0, 1, 42, MAX_COMMITMENT_NUMBER):
        commitment = build_commitment(
            STATIC, Side.LOCAL, number, LOCAL.per_commitment_point(0), 600_000_000,
            400_000_000, [], 253,
        )
        assert commitment_number_from_tx(STATIC, commitment.tx) == number
        assert obscured_commitment_number(STATIC, number) < 2**48
    for wrong in (-1, MAX_COMMITMENT_NUMBER + 1):
        with pytest.raises(TransactionError, match="48 bits"):
            obscured_commitment_number(STATIC, wrong)
        with pytest.raises(TransactionError, match="48 bits"):
            build_commitment(STATIC, Side.LOCAL, wrong, LOCAL.per_commitment_point(0),
                             600_000_000, 400_000_000, [], 253)


def test_output_indexes_point_at_their_outputs() -> None:
    htlcs = [CommitmentHtlc(Side.LOCAL, 0, 5_000_000, b"\x01" * 32, 500),
             CommitmentHtlc(Side.REMOTE, 0, 7_000_000, b"\x02" * 32, 501)]
    for owner in (Side.LOCAL, Side.REMOTE):
        c = build_commitment(STATIC, owner, 7, LOCAL.per_commitment_point(7), 600_000_000,
                             388_000_000, htlcs, 253)
        assert c.to_local_index is not None and c.to_remote_index is not None
        outputs = c.tx.outputs
        assert outputs[c.to_local_index].script_pubkey == scripts.p2wsh(c.to_local_witness_script)
        assert outputs[c.to_remote_index].script_pubkey == scripts.p2wpkh(
            c.keys.remote_payment_pubkey)
        assert len({c.to_local_index, c.to_remote_index, *(i for i, _ in c.htlc_outputs)}) == 4
        for (index, h), wscript in zip(c.htlc_outputs, c.htlc_witness_scripts, strict=True):
            assert outputs[index].script_pubkey == scripts.p2wsh(wscript)
            assert outputs[index].amount_sat == h.amount_msat // 1000


def test_value_types_are_immutable() -> None:
    htlc = CommitmentHtlc(Side.LOCAL, 0, 1_000_000, b"\x00" * 32, 500)
    with pytest.raises(dataclasses.FrozenInstanceError):
        htlc.amount_msat = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        STATIC.local.dust_limit_sat = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        STATIC.funding_sat = 1  # type: ignore[misc]
    c = build_commitment(STATIC, Side.LOCAL, 1, LOCAL.per_commitment_point(1), 600_000_000,
                         400_000_000, [], 253)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.fee_sat = 0  # type: ignore[misc]


def test_channel_seed_is_at_least_32_bytes() -> None:
    assert ChannelSecrets.from_seed(b"\x01" * 32).basepoints() == LOCAL.basepoints()
    assert ChannelSecrets.from_seed(b"\x01" * 33).basepoints() != LOCAL.basepoints()
    with pytest.raises(ValueError, match="at least 32"):
        ChannelSecrets.from_seed(b"\x01" * 31)


def test_compressed_pubkey_encoding_is_33_bytes_with_02_or_03() -> None:
    point = LOCAL.basepoints().funding_pubkey
    assert is_compressed_pubkey_encoding(point)
    assert is_compressed_pubkey_encoding(b"\x03" + point[1:])
    for wrong in (b"\x04" + point[1:], point + b"\x00", point[:32], b"\x02" * 65, b"\x04" * 65):
        assert not is_compressed_pubkey_encoding(wrong), wrong.hex()


def test_a_funder_with_exactly_the_fee_pays_it() -> None:
    """BOLT #3 Fee Payment: the fee comes out of the funder's balance; exactly enough
    is enough (its output is then omitted as dust), one msat less is refused."""
    fee_sat = build_commitment(STATIC, Side.LOCAL, 1, LOCAL.per_commitment_point(1),
                               600_000_000, 400_000_000, [], 253).fee_sat
    exact = build_commitment(STATIC, Side.LOCAL, 1, LOCAL.per_commitment_point(1),
                             fee_sat * 1000, 400_000_000, [], 253)
    assert exact.fee_sat == fee_sat
    assert [o.amount_sat for o in exact.tx.outputs] == [400_000]
    with pytest.raises(TransactionError, match="cannot pay"):
        build_commitment(STATIC, Side.LOCAL, 1, LOCAL.per_commitment_point(1),
                         fee_sat * 1000 - 1, 400_000_000, [], 253)
